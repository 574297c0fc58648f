// Atrium's operator console (/_atrium/console) in Debian's headless Chromium, driven by
// playwright-core: a non-admin is turned away, the admin logs in, sees a room's actor in the
// supervision tree and the busiest rooms, draws that room's trace and a request's trace as
// sequence diagrams, and unparks a parked room with its button.
//
//   node console_flow.mjs BASE_URL ADMIN PASSWORD USER USER_PASSWORD ROOM_ID REQUEST_ID PARKED_ROOM_ID
//
// Prints JSON ({ok, steps, console}) and exits non-zero on any failure. CHROMIUM (default
// /usr/bin/chromium) names the browser; playwright never downloads one.
import { chromium } from "playwright-core";

const [base, admin, password, user, userPassword, roomId, requestId, parkedId] = process.argv.slice(2);
if (!parkedId) {
  process.stderr.write("usage: node console_flow.mjs BASE ADMIN PW USER USER_PW ROOM_ID REQUEST_ID PARKED_ROOM_ID\n");
  process.exit(3);
}
const HARD_TIMEOUT_MS = 90000;
const STEP_MS = 15000;
const results = { ok: false, steps: [], console: [] };
let browser;
let page;

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

const css = (s) => JSON.stringify(s);  // a value inside an attribute selector
const treeRow = (key) => `table.actors[data-supervisor="rooms"] tr[data-key=${css(key)}]`;

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
  page.on("pageerror", (err) => results.console.push(`pageerror: ${err.message}`.slice(0, 500)));
  return { version: browser.version() };
});

await step("open the console", async () => {
  const resp = await page.goto(`${base}/_atrium/console`);
  if (resp.status() !== 200) throw new Error(`status ${resp.status()}`);
  await page.waitForSelector("#login-form", { state: "visible" });
  return { csp: resp.headers()["content-security-policy"] };
});

await step("a non-admin is told so", async () => {
  await page.fill("#login-user", user);
  await page.fill("#login-password", userPassword);
  await page.click("#login-submit");
  await page.waitForFunction(() => /not a server admin/.test(document.querySelector("#login-error").textContent));
  if (await page.isVisible("#console-view")) throw new Error("console shown to a non-admin");
  const stored = await page.evaluate(() => sessionStorage.length);
  if (stored !== 0) throw new Error("a non-admin token was kept");
  return await page.textContent("#login-error");
});

await step("the admin logs in", async () => {
  await page.fill("#login-user", admin);
  await page.fill("#login-password", password);
  await page.click("#login-submit");
  await page.waitForSelector("#console-view", { state: "visible" });
  const who = await page.textContent("#who");
  if (!who.startsWith(`@${admin}:`)) throw new Error(`who = ${who}`);
  if (!(await page.isVisible("#fault-panel"))) throw new Error("fault panel hidden though enabled");
  return { who };
});

await step("the room's actor is in the supervision tree", async () => {
  const row = page.locator(treeRow(roomId));
  await row.waitFor();
  const state = await row.getAttribute("data-state");
  const cells = await row.locator("td").allTextContents();
  return { state, cells };
});

await step("the room is among the busiest", async () => {
  await page.locator(`#busiest tr[data-key=${css(roomId)}]`).waitFor();
  return (await page.locator("#busiest tbody tr").allTextContents()).slice(0, 5);
});

await step("the room's trace is drawn", async () => {
  await page.locator(`#busiest tr[data-key=${css(roomId)}] a.room`).click();
  await page.locator("#sequence g.msg[data-type=Send]").first().waitFor();
  const lanes = await page.locator("#sequence g.lane").evaluateAll((gs) => gs.map((g) => g.dataset.lane));
  if (!lanes.includes("web") || !lanes.includes(`rooms/${roomId}`)) throw new Error(`lanes ${lanes}`);
  const outcomes = await page.locator("#sequence g.msg").evaluateAll((gs) => gs.map((g) => g.dataset.outcome));
  const title = await page.locator("#sequence g.msg[data-type=Send] title").first().textContent();
  return { lanes, outcomes, summary: await page.textContent("#trace-summary"), title };
});

await step("a request's trace by its id", async () => {
  await page.selectOption("#trace-mode", "trace");
  await page.fill("#trace-target", requestId);
  await page.click("#trace-form button[type=submit]");
  await page.waitForFunction((id) => {
    const gs = [...document.querySelectorAll("#sequence g.msg")];
    return gs.length > 0 && gs.every((g) => g.dataset.trace === id);
  }, requestId);
  const types = await page.locator("#sequence g.msg").evaluateAll((gs) => gs.map((g) => `${g.dataset.type}:${g.dataset.outcome}`));
  if (!types.includes("Send:ok")) throw new Error(`messages ${types}`);
  return { types };
});

await step("the parked room shows its time left", async () => {
  const row = page.locator(`${treeRow(parkedId)}[data-state=parked]`);
  await row.waitFor();
  const left = await row.locator(".time-left").textContent();
  if (!/\d+ s left/.test(left)) throw new Error(`time left: ${left}`);
  await page.locator(`#failing tr[data-key=${css(parkedId)}][data-state=parked]`).waitFor();
  return { left, failing: await page.locator(`#failing tr[data-key=${css(parkedId)}]`).textContent() };
});

await step("Unpark", async () => {
  await page.locator(`${treeRow(parkedId)} button.unpark`).click();
  // the tree drops the entry (nothing pending) or shows it running again
  await page.waitForFunction((sel) => {
    const row = document.querySelector(sel);
    return !row || row.dataset.state !== "parked";
  }, treeRow(parkedId));
  return await page.textContent("#status");
});

await step("log out", async () => {
  await page.click("#logout");
  await page.waitForSelector("#login-form", { state: "visible" });
  const stored = await page.evaluate(() => sessionStorage.length);
  if (stored !== 0) throw new Error("token still stored");
});

const csp = results.console.filter((line) => /Content Security Policy|Refused to/.test(line));
if (csp.length) {
  results.error = `CSP violations: ${csp.join(" | ")}`;
  await finish(1);
}
const errors = results.console.filter((line) => line.startsWith("pageerror"));
if (errors.length) {
  results.error = `page errors: ${errors.join(" | ")}`;
  await finish(1);
}
results.ok = true;
await finish(0);
