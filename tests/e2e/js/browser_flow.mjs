// Hydrogen (hydrogen-view-sdk's full app) in Debian's headless Chromium, driven by
// playwright-core: log in through the login screen, open a room from the room list, see a
// message another user sent, send one back through the composer.
//
//   node browser_flow.mjs PAGE_URL HOMESERVER_URL USER PASSWORD ROOM_NAME EXPECTED_TEXT REPLY_TEXT
//
// Prints JSON ({ok, steps, console}) and exits non-zero on any failure. CHROMIUM (default
// /usr/bin/chromium) names the browser; playwright never downloads one.
import { chromium } from "playwright-core";

const [pageUrl, hs, user, password, roomName, expected, reply] = process.argv.slice(2);
if (!reply) {
  process.stderr.write("usage: node browser_flow.mjs PAGE_URL HS USER PASSWORD ROOM_NAME EXPECTED REPLY\n");
  process.exit(3);
}
const HARD_TIMEOUT_MS = 90000;
const STEP_MS = 20000;
const results = { ok: false, steps: [], console: [] };
let browser;

async function finish(code) {
  try { await browser?.close(); } catch { /* closing anyway */ }
  process.stdout.write(JSON.stringify(results, null, 2) + "\n");
  process.exit(code);
}
setTimeout(() => { results.error = `hard timeout after ${HARD_TIMEOUT_MS} ms`; finish(2); }, HARD_TIMEOUT_MS);

async function step(name, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    results.steps.push({ name, ok: true, ms: Date.now() - t0, detail: detail ?? null });
  } catch (err) {
    results.steps.push({ name, ok: false, ms: Date.now() - t0, error: String(err?.message ?? err) });
    results.error = `${name}: ${err?.message ?? err}`;
    try { results.page_text = (await page.innerText("body")).slice(0, 3000); } catch { /* no page */ }
    await finish(1);
  }
}

let page;
await step("launch chromium", async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") results.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 500));
  });
  page.on("requestfailed", (req) => results.console.push(`requestfailed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`.slice(0, 500)));
  page.on("pageerror", (err) => results.console.push(`pageerror: ${err.message}`.slice(0, 500)));
  return { version: browser.version() };
});

await step("open Hydrogen", async () => {
  await page.goto(`${pageUrl}?hs=${encodeURIComponent(hs)}`);
  await page.waitForFunction(() => window.__hydrogenReady || window.__hydrogenError);
  const error = await page.evaluate(() => window.__hydrogenError);
  if (error) throw new Error(`Hydrogen failed to start: ${error}`);
});

await step("log in through the login screen", async () => {
  // the homeserver field is prefilled from config.defaultHomeServer; Hydrogen queries its
  // login flows and then shows the password form
  const hsField = page.locator("#homeserver");
  await hsField.waitFor();
  if ((await hsField.inputValue()) !== hs) await hsField.fill(hs);
  await page.locator("#username").waitFor();
  await page.fill("#username", user);
  await page.fill("#password", password);
  await page.locator("form button[type=submit], form .button-action.primary").first().click();
  // the session view (room list) appears once the first sync has been stored
  await page.locator(".LeftPanel, .RoomList").first().waitFor({ timeout: 45000 });
});

await step("open the room from the room list", async () => {
  const tile = page.locator(".RoomList li", { hasText: roomName }).first();
  await tile.waitFor();
  await tile.click();
  await page.locator(".Timeline, .RoomView").first().waitFor();
});

await step("see the other user's message in the timeline", async () => {
  await page.locator(".Timeline", { hasText: expected }).first().waitFor();
});

await step("send a reply through the composer", async () => {
  const input = page.locator(".MessageComposer textarea, .MessageComposer input").first();
  await input.fill(reply);
  await input.press("Enter");
  // the local echo turns into a sent event (no longer pending)
  await page.locator(".Timeline .Timeline_message:not(.unsent)", { hasText: reply }).first().waitFor();
});

results.ok = true;
await finish(0);
