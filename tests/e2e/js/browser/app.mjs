// The whole Hydrogen web client (login screen, room list, timeline, composer) mounted from
// hydrogen-view-sdk, pointed at the homeserver given as ?hs=URL. Bundled by esbuild in
// tests/e2e/test_browser_client.py; served with Hydrogen's service worker (authenticated media) at /sw.js; no olm (plain rooms only).
import {
  Platform, createNavigation, createRouter, RootViewModel, FeatureSet,
} from "hydrogen-view-sdk";

async function main() {
  const hs = new URLSearchParams(location.search).get("hs");
  const container = document.getElementById("app");
  const platform = new Platform({
    container,
    assetPaths: { downloadSandbox: "download-sandbox.html", serviceWorker: "sw.js" },
    config: { defaultHomeServer: hs },
    options: { development: true },
  });
  const navigation = createNavigation();
  platform.setNavigation(navigation);
  await platform.init();
  const urlRouter = createRouter({ navigation, history: platform.history });
  urlRouter.attach();
  const vm = new RootViewModel({
    platform, urlRouter, navigation, features: await FeatureSet.load(platform.settingsStorage),
  });
  await vm.load();
  platform.createAndMountRootView(vm);
  window.__hydrogenReady = true;
}

main().catch((err) => {
  window.__hydrogenError = String(err?.stack ?? err);
  console.error(err);
});
