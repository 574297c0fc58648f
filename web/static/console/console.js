// Atrium's operator console (docs/console.md). Plain ES module, no framework: logs in with
// the client API, keeps the admin's token in sessionStorage, and polls the admin API
// (/_atrium/admin/v1) every few seconds. The DOM is built with createElement and
// textContent only: room ids and error texts are never parsed as HTML.
import { drawSequence, fmtMs } from "./sequence.js";

const ADMIN = "/_atrium/admin/v1";
const CLIENT = "/_matrix/client/v3";
const TOKEN_KEY = "atrium.console.token";
const REFRESH_MS = 3000;
const ACTOR_ROWS = 500;
const STATE_ORDER = { parked: 0, restarting: 1, starting: 2, stopping: 3, running: 4 };

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY);
let info = null;
let refreshTimer = null;
let refreshing = false;
let trace = null;             // {mode, target, limit} of the diagram on show
const collapsed = new Set();  // supervisors the operator folded
const lastJson = {};          // per panel: the data last drawn (skip identical redraws)

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.errcode = body?.errcode ?? null;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/** h("td", {class: "x", title: "..."}, child, "text", ...) */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const enc = encodeURIComponent;
const errText = (err) => (err.errcode ? `${err.errcode}: ${err.message}` : err.message);

function ago(epochSeconds) {
  if (!epochSeconds) return "–";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 1) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function status(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

// -- login / logout --------------------------------------------------------------------

function showLogin(message = "") {
  stopRefresh();
  info = null;
  $("console-view").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("server").textContent = "";
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  status("");
}

function forgetToken() {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

async function logout(message = "") {
  if (token) {
    try { await api("POST", `${CLIENT}/logout`, {}); } catch { /* gone already */ }
  }
  forgetToken();
  for (const k of Object.keys(lastJson)) delete lastJson[k];
  showLogin(message);
}

async function login(ev) {
  ev.preventDefault();
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    const answer = await api("POST", `${CLIENT}/login`, {
      type: "m.login.password", identifier: { type: "m.id.user", user }, password,
      initial_device_display_name: "Atrium console",
    });
    token = answer.access_token;
    try {
      info = await api("GET", `${ADMIN}/console`);
    } catch (err) {
      if (err.status === 403) {  // logged in, but not an admin: end that session again
        await logout(`${answer.user_id} is not a server admin (${errText(err)}).`);
        return;
      }
      throw err;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login-password").value = "";
    showConsole();
  } catch (err) {
    forgetToken();
    $("login-error").textContent = err.status === 403
      ? `Wrong user or password (${errText(err)}).` : `Login failed: ${errText(err)}`;
  } finally {
    $("login-submit").disabled = false;
  }
}

function showConsole() {
  $("login-view").hidden = true;
  $("console-view").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = info.user_id;
  $("server").textContent = info.server_name;
  $("fault-panel").hidden = !info.fault_injection;
  startRefresh();
}

// -- polling ---------------------------------------------------------------------------

function startRefresh() {
  stopRefresh();
  refresh();
  refreshTimer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
}

function stopRefresh() {
  if (refreshTimer !== null) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function refresh() {
  if (refreshing || !token) return;
  refreshing = true;
  try {
    const [actors, busiest, failing] = await Promise.all([
      api("GET", `${ADMIN}/actors?limit=${ACTOR_ROWS}`),
      api("GET", `${ADMIN}/rooms/busiest?limit=10`),
      api("GET", `${ADMIN}/rooms/failing?limit=10`),
    ]);
    drawIfChanged("tree", actors, drawTree);
    drawIfChanged("busiest", busiest, drawBusiest);
    drawIfChanged("failing", failing, drawFailing);
    if (trace && $("trace-live").checked) await loadTrace(trace, { quiet: true });
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    if (err.status === 401) {
      forgetToken();
      showLogin(`Session ended (${errText(err)}). Please log in again.`);
    } else {
      status(`refresh failed: ${errText(err)}`, true);
    }
  } finally {
    refreshing = false;
  }
}

function drawIfChanged(panel, data, draw) {
  const json = JSON.stringify(data);
  if (lastJson[panel] === json) return;
  lastJson[panel] = json;
  draw(data);
}

// Parked rows count down between polls: each holds its deadline in data-deadline.
function tick() {
  for (const node of document.querySelectorAll("[data-deadline]")) {
    const left = Number(node.dataset.deadline) - Date.now();
    node.textContent = left > 0 ? `${Math.ceil(left / 1000)} s left` : "park over";
  }
}

function timeLeft(row) {
  if (row.state !== "parked" || row.retry_after_ms === undefined) return null;
  return h("span", { class: "time-left", dataset: { deadline: Date.now() + row.retry_after_ms } },
    `${Math.ceil(row.retry_after_ms / 1000)} s left`);
}

async function unpark(supervisor, key, button) {
  button.disabled = true;
  try {
    const answer = await api("POST", `${ADMIN}/actors/${enc(supervisor)}/${enc(key)}/unpark`, {});
    status(answer.unparked ? `unparked ${key}` : `${key} was not parked`);
  } catch (err) {
    status(`unpark failed: ${errText(err)}`, true);
  }
  await refresh();
}

function unparkButton(supervisor, key) {
  const button = h("button", { type: "button", class: "unpark", dataset: { key, supervisor } }, "Unpark");
  button.addEventListener("click", () => unpark(supervisor, key, button));
  return button;
}

function roomLink(roomId, max = 0) {
  const text = max && roomId.length > max ? `${roomId.slice(0, max - 1)}…` : roomId;
  return h("a", {
    href: "#trace", class: "room", title: `${roomId}: show this room's trace`,
    onclick: (ev) => { ev.preventDefault(); pickRoom(roomId); },
  }, text);
}

// -- the supervision tree ----------------------------------------------------------------

const STAT_NAMES = ["handled", "domain_errors", "failed", "crashes", "restarts", "parks",
  "rejected_full", "rejected_parked", "timeouts", "spawned", "passivated"];

function drawTree(actors) {
  const tree = $("tree");
  const nodes = [];
  let total = 0;
  for (const [name, { stats, children }] of Object.entries(actors)) {
    total += stats.children;
    const limits = info?.supervisors?.[name];
    const details = h("details", { class: "supervisor", dataset: { supervisor: name } });
    details.open = !collapsed.has(name);
    details.addEventListener("toggle", () => {
      if (details.open) collapsed.delete(name); else collapsed.add(name);
    });
    const states = Object.entries(stats.by_state).map(([s, n]) => `${n} ${s}`).join(", ") || "no actors";
    details.append(h("summary", {},
      h("strong", {}, name), ` — ${stats.children} actors (${states}), mailboxes ${stats.pending}`,
      stats.faults_armed ? h("span", { class: "badge refused" }, `${stats.faults_armed} faults armed`) : null,
      stats.stopped ? h("span", { class: "badge error" }, "stopped") : null));
    details.append(h("p", { class: "stats" }, ...STAT_NAMES.map((k) =>
      h("span", { class: `stat${stats[k] && ["failed", "crashes", "parks", "timeouts", "rejected_full"].includes(k) ? " hot" : ""}` },
        `${k.replace("_", " ")} `, h("b", {}, String(stats[k] ?? 0)))),
    limits ? h("span", { class: "dim" }, ` · limits: mailbox ${limits.max_mailbox}, ${limits.max_restarts} restarts in ${limits.restart_window_ms / 1000} s, park ${limits.park_duration_ms / 1000} s`) : null));
    if (children.length) details.append(actorTable(name, children, stats.children));
    nodes.push(details);
  }
  tree.replaceChildren(...nodes);
  $("tree-meta").textContent = `${total} live actors; parked and restarting first. Refreshes every ${REFRESH_MS / 1000} s.`;
  tick();
}

function actorTable(supervisor, children, total) {
  const rows = [...children].sort((a, b) =>
    (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) || b.pending - a.pending
    || b.recent_messages - a.recent_messages || a.key.localeCompare(b.key));
  const body = h("tbody", {}, ...rows.map((r) => h("tr", { dataset: { key: r.key, state: r.state }, class: `state-${r.state}` },
    h("td", { class: "key" }, supervisor === "rooms" ? roomLink(r.key) : r.key),
    h("td", {}, h("span", { class: `badge state ${r.state}` }, r.state), " ", timeLeft(r)),
    h("td", { class: "num" }, String(r.pending)),
    h("td", { class: "num" }, String(r.restarts)),
    h("td", { class: "num", title: "incarnation" }, String(r.incarnation)),
    h("td", { class: "num" }, String(r.recent_messages)),
    h("td", { class: "dim" }, ago(r.last_message_at)),
    h("td", { class: "error-text", title: r.last_error ?? "" },
      r.last_error ? `${r.last_error_outcome}: ${r.last_error}` : "",
      r.last_error_at ? h("span", { class: "dim" }, ` (${ago(r.last_error_at)})`) : null),
    h("td", {}, r.state === "parked" ? unparkButton(supervisor, r.key) : null))));
  const table = h("table", { class: "actors", dataset: { supervisor } },
    h("thead", {}, h("tr", {}, ...["Key", "State", "Mailbox", "Restarts", "Inc.", "Recent msgs",
      "Last message", "Last failure", ""].map((t) => h("th", {}, t)))), body);
  const more = total - children.length;
  return more > 0 ? h("div", {}, table, h("p", { class: "dim" }, `… and ${more} more not shown`)) : table;
}

// -- busiest and failing rooms -----------------------------------------------------------

function windowText(w) {
  return w.since ? `over the last ${w.records} traced messages (since ${ago(w.since)})` : "no traced messages yet";
}

function drawBusiest(data) {
  $("busiest-meta").textContent = `Ranked by messages ${windowText(data.window)}, then mailbox depth.`;
  $("busiest").tBodies[0].replaceChildren(...data.rooms.map((r) => h("tr", { dataset: { key: r.room_id } },
    h("td", { class: "key" }, roomLink(r.room_id, 26)),
    h("td", { class: "num" }, String(r.recent_messages)),
    h("td", { class: "num" }, String(r.pending)),
    h("td", {}, h("span", { class: `badge state ${r.state}` }, r.state)),
    h("td", { class: "num" }, String(r.restarts)))));
  if (!data.rooms.length) $("busiest").tBodies[0].append(h("tr", {}, h("td", { colspan: 5, class: "dim" }, "no room traffic")));
}

function drawFailing(data) {
  $("failing-meta").textContent = `Parked first, then crashes and failed messages ${windowText(data.window)}.`;
  $("failing").tBodies[0].replaceChildren(...data.rooms.map((r) => h("tr", { dataset: { key: r.room_id, state: r.state } },
    h("td", { class: "key" }, roomLink(r.room_id, 18)),
    h("td", {}, h("span", { class: `badge state ${r.state}` }, r.state), " ", timeLeft(r)),
    h("td", { class: "num" }, String(r.recent_failures)),
    h("td", { class: "num" }, String(r.failed_messages)),
    h("td", { class: "num" }, String(r.restarts)),
    h("td", { class: "error-text", title: r.last_error ?? "" }, r.last_error ?? ""),
    h("td", {}, r.state === "parked" ? unparkButton("rooms", r.room_id) : null))));
  if (!data.rooms.length) $("failing").tBodies[0].append(h("tr", {}, h("td", { colspan: 7, class: "dim" }, "no failing rooms")));
  tick();
}

// -- traces ------------------------------------------------------------------------------

function pickRoom(roomId) {
  $("trace-mode").value = "room";
  $("trace-target").value = roomId;
  if (info?.fault_injection && !$("fault-room").value) $("fault-room").value = roomId;
  showTrace();
  $("trace-panel").scrollIntoView({ behavior: "smooth", block: "start" });
}

function showTrace(ev) {
  ev?.preventDefault();
  const target = $("trace-target").value.trim();
  if (!target) return;
  const limit = Math.min(500, Math.max(1, Number($("trace-limit").value) || 40));
  trace = { mode: $("trace-mode").value, target, limit };
  loadTrace(trace);
}

async function loadTrace(t, { quiet = false } = {}) {
  const url = t.mode === "room"
    ? `${ADMIN}/rooms/${enc(t.target)}/traces?format=sequence&limit=${t.limit}`
    : `${ADMIN}/traces/${enc(t.target)}?format=sequence`;
  let seq;
  try {
    seq = await api("GET", url);
  } catch (err) {
    if (!quiet) $("trace-summary").textContent = `Could not load the trace: ${errText(err)}`;
    return;
  }
  if (trace !== t) return;  // another trace was asked for meanwhile
  if (quiet && lastJson.trace === JSON.stringify(seq)) return;
  lastJson.trace = JSON.stringify(seq);
  const what = t.mode === "room" ? `room ${t.target}` : `trace ${t.target}`;
  if (!seq.messages.length) {
    $("trace-summary").textContent = `${what}: no messages in the trace buffer (unknown, idle, or fallen out of the ring).`;
    $("trace-view").replaceChildren();
    $("trace-legend").hidden = true;
    return;
  }
  const failed = seq.messages.filter((m) => m.outcome && m.outcome !== "ok" && m.outcome !== "domain_error").length;
  $("trace-summary").textContent = `${what}: ${seq.messages.length} messages between ${seq.participants.length} participants over ${fmtMs(seq.span_ms)}`
    + (seq.started_at ? `, from ${new Date(seq.started_at * 1000).toLocaleTimeString()}` : "")
    + (failed ? ` — ${failed} failed` : "");
  $("trace-legend").hidden = false;
  $("trace-view").replaceChildren(drawSequence(seq, {
    onPick: (m) => {
      $("trace-mode").value = "trace";
      $("trace-target").value = m.trace_id;
      showTrace();
    },
  }));
}

// -- fault injection ---------------------------------------------------------------------

async function armFault(ev) {
  ev.preventDefault();
  const room = $("fault-room").value.trim();
  const body = { kind: $("fault-kind").value, count: Number($("fault-count").value), delay_ms: Number($("fault-delay").value) };
  try {
    const answer = await api("POST", `${ADMIN}/rooms/${enc(room)}/fault`, body);
    $("fault-result").textContent = `${answer.key}: ${answer.armed} × ${answer.kind} armed. The room's next messages will fail.`;
  } catch (err) {
    $("fault-result").textContent = `Could not arm: ${errText(err)}`;
  }
  refresh();
}

async function clearFault() {
  const room = $("fault-room").value.trim();
  if (!room) return;
  try {
    const answer = await api("DELETE", `${ADMIN}/actors/rooms/${enc(room)}/fault`);
    $("fault-result").textContent = `${answer.key}: cleared ${answer.cleared} pending faults.`;
  } catch (err) {
    $("fault-result").textContent = `Could not clear: ${errText(err)}`;
  }
  refresh();
}

// -- start -------------------------------------------------------------------------------

async function start() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("trace-form").addEventListener("submit", showTrace);
  $("fault-form").addEventListener("submit", armFault);
  $("fault-clear").addEventListener("click", clearFault);
  setInterval(tick, 1000);
  if (!token) { showLogin(); return; }
  try {
    info = await api("GET", `${ADMIN}/console`);
    showConsole();
  } catch (err) {
    forgetToken();
    showLogin(err.status === 401 ? "" : `Could not resume the session: ${errText(err)}`);
  }
}

start();
