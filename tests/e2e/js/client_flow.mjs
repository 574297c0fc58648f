// A new user's first session with Atrium, driven by the real matrix-js-sdk (37.x, Node 20).
//
//   node client_flow.mjs BASE_URL USER1 PASSWORD1 USER2 PASSWORD2 [TIMEOUT_SECONDS]
//
// USER1/USER2 are localparts or full user ids of existing accounts. The script logs both in,
// starts both clients (initial sync, then the live sync loop), and walks through: create a
// room, invite, join, messages both ways seen through each client's live timeline, typing,
// read receipts, displayname, media upload + authenticated download, redaction, history
// pagination with scrollback from a fresh login, and logout. It prints one JSON object on
// stdout ({ok, steps: [{name, ok, ms, detail|error}], ...}) and exits 0 only if every step
// passed; 1 on a failed step, 2 on the hard timeout, 3 on bad arguments.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const [baseUrl, user1, pass1, user2, pass2, timeoutArg] = process.argv.slice(2);
if (!baseUrl || !user1 || !pass1 || !user2 || !pass2) {
  process.stderr.write("usage: node client_flow.mjs BASE_URL USER1 PASSWORD1 USER2 PASSWORD2 [TIMEOUT_SECONDS]\n");
  process.exit(3);
}
const HARD_TIMEOUT_MS = (Number(timeoutArg) || 90) * 1000;
const WAIT_MS = 15000; // one expected sync delivery

// The SDK logs a lot at debug level; keep warnings, on stderr so stdout stays pure JSON.
logger.setLevel?.("warn");
for (const level of ["trace", "debug", "info", "log", "warn", "error"]) {
  const orig = console[level];
  console[level] = (...args) => process.stderr.write(`[${level}] ${args.map(String).join(" ")}\n`);
  void orig;
}

const results = { ok: false, base_url: baseUrl, sdk_version: null, steps: [], unsupported: [] };
const clients = [];

function finish(code) {
  for (const c of clients) {
    try { c.stopClient(); } catch { /* already stopped */ }
  }
  process.stdout.write(JSON.stringify(results, null, 2) + "\n");
  process.exit(code);
}

const hardTimer = setTimeout(() => {
  results.error = `hard timeout after ${HARD_TIMEOUT_MS} ms`;
  finish(2);
}, HARD_TIMEOUT_MS);
void hardTimer;

async function step(name, fn) {
  const t0 = Date.now();
  try {
    const value = await fn();
    const detail = value instanceof sdk.MatrixClient ? { user_id: value.getUserId(), device_id: value.getDeviceId() } : value;
    results.steps.push({ name, ok: true, ms: Date.now() - t0, detail: detail ?? null });
    return value;
  } catch (err) {
    const error = {
      message: String(err?.message ?? err),
      errcode: err?.errcode ?? err?.data?.errcode,
      http_status: err?.httpStatus,
      data: err?.data,
    };
    results.steps.push({ name, ok: false, ms: Date.now() - t0, error });
    results.error = `${name}: ${error.message}`;
    finish(1);
    throw err; // unreachable
  }
}

// A step for an optional module: a 404 M_UNRECOGNIZED (the spec's answer for an endpoint the
// server does not implement) is recorded in results.unsupported instead of failing.
async function optionalStep(name, fn) {
  return step(name, async () => {
    try {
      return await fn();
    } catch (err) {
      if (err?.httpStatus === 404 && err?.errcode === "M_UNRECOGNIZED") {
        results.unsupported.push(name);
        return { unsupported: true };
      }
      throw err;
    }
  });
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

// Resolve when `emitter` emits `event` with args satisfying `pred` (returning a truthy value).
function waitFor(emitter, event, pred, what, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, handler);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    function handler(...args) {
      let value;
      try { value = pred(...args); } catch (err) { value = undefined; }
      if (value) {
        clearTimeout(timer);
        emitter.removeListener(event, handler);
        resolve(value);
      }
    }
    emitter.on(event, handler);
  });
}

// Poll until fn() returns a truthy value (the SDK stores some objects just after emitting).
async function eventually(fn, what, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    let value;
    try { value = fn(); } catch { value = undefined; }
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function login(user, password, deviceName) {
  const anon = sdk.createClient({ baseUrl });
  const res = await anon.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user },
    password,
    initial_device_display_name: deviceName,
  });
  check(res.access_token && res.user_id && res.device_id, `login response incomplete: ${JSON.stringify(res)}`);
  const client = sdk.createClient({
    baseUrl, accessToken: res.access_token, userId: res.user_id, deviceId: res.device_id,
    timelineSupport: true,
  });
  clients.push(client);
  return client;
}

async function start(client, opts = {}) {
  const prepared = waitFor(client, sdk.ClientEvent.Sync,
    (state) => state === "PREPARED" || state === "SYNCING", `${client.getUserId()} initial sync`, 30000);
  const failed = new Promise((_, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      if (state === "ERROR") reject(new Error(`sync error: ${data?.error?.message ?? "unknown"}`));
    });
  });
  await client.startClient({ initialSyncLimit: 10, ...opts });
  await Promise.race([prepared, failed]);
}

// The next live timeline event in roomId on `client` matching pred.
function nextTimelineEvent(client, roomId, pred, what) {
  return waitFor(client, sdk.RoomEvent.Timeline,
    (event, room, toStartOfTimeline, _removed, data) =>
      room?.roomId === roomId && !toStartOfTimeline && data?.liveEvent !== false && pred(event) ? event : null,
    what);
}

function bodyIs(body) {
  return (ev) => ev.getType() === "m.room.message" && ev.getContent().body === body;
}

try {
  const pkg = await import("matrix-js-sdk/package.json", { with: { type: "json" } }).catch(() => null);
  results.sdk_version = pkg?.default?.version ?? null;
} catch { /* informational only */ }

const versions = await step("versions", async () => {
  const anon = sdk.createClient({ baseUrl });
  const v = await anon.getVersions();
  check(Array.isArray(v.versions) && v.versions.length > 0, "no versions advertised");
  const flows = await anon.loginFlows();
  check(flows.flows.some((f) => f.type === "m.login.password"), "m.login.password not offered");
  return { versions: v.versions, login_flows: flows.flows.map((f) => f.type) };
});
void versions;

const alice = await step("login user1", async () => login(user1, pass1, "js-sdk alice"));
const bob = await step("login user2", async () => login(user2, pass2, "js-sdk bob"));
const aliceId = alice.getUserId();
const bobId = bob.getUserId();
results.user1 = aliceId;
results.user2 = bobId;

await step("whoami", async () => {
  const w = await alice.whoami();
  check(w.user_id === aliceId, `whoami said ${w.user_id}`);
  check(w.device_id === alice.getDeviceId(), `whoami device ${w.device_id} != ${alice.getDeviceId()}`);
  return w;
});

await step("startClient (initial sync) user1", async () => start(alice));
await step("startClient (initial sync, lazy-loaded members) user2", async () =>
  start(bob, { lazyLoadMembers: true }));

let roomId;
await step("createRoom", async () => {
  const res = await alice.createRoom({ name: "js-sdk room", topic: "made by client_flow.mjs", preset: sdk.Preset.PrivateChat });
  roomId = res.room_id;
  check(typeof roomId === "string" && roomId.startsWith("!"), `bad room id ${roomId}`);
  // the creator's client learns about the room from its own sync
  const room = await eventually(() => alice.getRoom(roomId), "the new room in user1's sync", WAIT_MS);
  await eventually(() => room.name === "js-sdk room" && room.getMyMembership() === "join",
    "room name and membership in user1's client").catch(() => null);
  check(room.name === "js-sdk room", `room name in client is ${JSON.stringify(room.name)}`);
  check(room.getMyMembership() === "join", `creator membership ${room.getMyMembership()}`);
  return { room_id: roomId };
});
results.room_id = roomId;

await step("invite, seen by invitee's sync", async () => {
  const invited = waitFor(bob, sdk.RoomMemberEvent.Membership,
    (ev, member) => member.roomId === roomId && member.userId === bobId && member.membership === "invite",
    "invite in user2's sync");
  await alice.invite(roomId, bobId);
  await invited;
  const room = await eventually(() => bob.getRoom(roomId), "the invited room in user2's client");
  check(room && room.getMyMembership() === "invite", `invitee sees membership ${room?.getMyMembership()}`);
  const inviter = room.getMember(bobId)?.events?.member?.getSender();
  check(inviter === aliceId, `invite sender is ${inviter}`);
  return { invite_room_name: room.name };
});

await step("join, seen by inviter's sync", async () => {
  const joinedSeen = waitFor(alice, sdk.RoomMemberEvent.Membership,
    (ev, member) => member.roomId === roomId && member.userId === bobId && member.membership === "join",
    "user2's join in user1's sync");
  const joinedOwn = waitFor(bob, sdk.RoomEvent.MyMembership,
    (room, membership) => room.roomId === roomId && membership === "join", "own join in user2's sync");
  await bob.joinRoom(roomId);
  await Promise.all([joinedSeen, joinedOwn]);
  const room = bob.getRoom(roomId);
  check(room.name === "js-sdk room", `joiner sees room name ${JSON.stringify(room.name)}`);
  check(room.currentState.getStateEvents("m.room.topic", "")?.getContent()?.topic === "made by client_flow.mjs",
    "joiner does not see the topic");
  return { joined_members: room.getJoinedMemberCount() };
});

const sent = {};
await step("message user1 -> user2 (live timeline)", async () => {
  const seen = nextTimelineEvent(bob, roomId, bodyIs("hello from alice"), "alice's message at bob");
  const echo = nextTimelineEvent(alice, roomId, bodyIs("hello from alice"), "alice's own echo");
  const res = await alice.sendTextMessage(roomId, "hello from alice");
  const [ev] = await Promise.all([seen, echo]);
  check(ev.getId() === res.event_id, `bob saw ${ev.getId()}, send returned ${res.event_id}`);
  check(ev.getSender() === aliceId, `sender ${ev.getSender()}`);
  check(typeof ev.getTs() === "number" && ev.getTs() > 0, "no origin_server_ts");
  sent.alice = ev;
  return { event_id: res.event_id };
});

await step("message user2 -> user1 (live timeline)", async () => {
  const seen = nextTimelineEvent(alice, roomId, bodyIs("hi alice, bob here"), "bob's message at alice");
  const res = await bob.sendMessage(roomId, { msgtype: "m.text", body: "hi alice, bob here",
    format: "org.matrix.custom.html", formatted_body: "hi <b>alice</b>, bob here" });
  const ev = await seen;
  check(ev.getId() === res.event_id, `alice saw ${ev.getId()}, send returned ${res.event_id}`);
  check(ev.getContent().formatted_body === "hi <b>alice</b>, bob here", "formatted_body lost");
  sent.bob = ev;
  return { event_id: res.event_id };
});

await step("typing notifications", async () => {
  const started = waitFor(alice, sdk.RoomMemberEvent.Typing,
    (ev, member) => member.roomId === roomId && member.userId === bobId && member.typing, "bob typing");
  await bob.sendTyping(roomId, true, 20000);
  await started;
  const stopped = waitFor(alice, sdk.RoomMemberEvent.Typing,
    (ev, member) => member.roomId === roomId && member.userId === bobId && !member.typing, "bob stopped typing");
  await bob.sendTyping(roomId, false, 0);
  await stopped;
  return null;
});

await step("read receipts", async () => {
  const room = alice.getRoom(roomId);
  const got = waitFor(alice, sdk.RoomEvent.Receipt,
    (ev, r) => r.roomId === roomId && r.getEventReadUpTo(bobId, true) === sent.alice.getId(),
    "bob's read receipt at alice");
  const bobsCopy = bob.getRoom(roomId).findEventById(sent.alice.getId());
  check(bobsCopy, "bob's client lost alice's message");
  await bob.sendReadReceipt(bobsCopy);
  await got;
  // the real (server-sent) receipt; the SDK's per-event cache prefers the synthetic one that
  // bob's own later message implies, so ask for the real one explicitly
  const real = room.getReadReceiptForUserId(bobId, true, sdk.ReceiptType.Read);
  check(real?.eventId === sent.alice.getId(), `real receipt points at ${real?.eventId}`);
  check(typeof real.data?.ts === "number" && real.data.ts > 0, `receipt has no ts: ${JSON.stringify(real.data)}`);
  // and the read marker (m.fully_read) through /read_markers
  await bob.setRoomReadMarkers(roomId, sent.alice.getId());
  return { receipt: real.data };
});

await step("set displayname, seen in room member and profile", async () => {
  const renamed = waitFor(alice, sdk.RoomMemberEvent.Name,
    (ev, member) => member.roomId === roomId && member.userId === bobId && member.name === "Bob the Builder",
    "bob's new displayname at alice");
  await bob.setDisplayName("Bob the Builder");
  await renamed;
  const profile = await alice.getProfileInfo(bobId);
  check(profile.displayname === "Bob the Builder", `profile says ${JSON.stringify(profile)}`);
  const own = bob.getUser(bobId);
  return { profile, own_user_displayname: own?.displayName ?? null };
});

await step("upload media and download it back", async () => {
  const bytes = new Uint8Array(3000);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + 7) & 0xff;
  const up = await alice.uploadContent(new Blob([bytes], { type: "application/octet-stream" }),
    { name: "blob.bin", type: "application/octet-stream" });
  check(up.content_uri?.startsWith("mxc://"), `content_uri ${up.content_uri}`);
  // authenticated media (v1.11): /_matrix/client/v1/media/download with the token
  const url = bob.mxcUrlToHttp(up.content_uri, undefined, undefined, undefined, false, true, true);
  check(url && url.includes("/_matrix/client/v1/media/download/"), `download url ${url}`);
  const res = await fetch(url, { headers: { Authorization: `Bearer ${bob.getAccessToken()}` } });
  check(res.ok, `download HTTP ${res.status}`);
  const back = new Uint8Array(await res.arrayBuffer());
  check(back.length === bytes.length && back.every((b, i) => b === bytes[i]), `downloaded ${back.length} bytes, differing`);
  // and as an m.file message the other side receives
  const seen = nextTimelineEvent(bob, roomId, (ev) => ev.getContent().url === up.content_uri, "the file message at bob");
  await alice.sendMessage(roomId, { msgtype: "m.file", body: "blob.bin", url: up.content_uri,
    info: { size: bytes.length, mimetype: "application/octet-stream" } });
  await seen;
  // a thumbnail URL for a non-image must not crash anything; just check the media config
  const cfg = await alice.http.authedRequest("GET", "/media/config", undefined, undefined,
    { prefix: "/_matrix/client/v1" });
  return { content_uri: up.content_uri, bytes: back.length, content_type: res.headers.get("content-type"),
    upload_size: cfg["m.upload.size"] ?? null };
});

await step("redact a message, seen by the other side", async () => {
  const target = bob.getRoom(roomId).findEventById(sent.bob.getId());
  check(target, "bob's message missing in bob's client");
  const redacted = waitFor(alice, sdk.RoomEvent.Redaction,
    (ev, room) => room.roomId === roomId && ev.event.redacts === sent.bob.getId() || ev.getContent()?.redacts === sent.bob.getId(),
    "the redaction at alice");
  await bob.redactEvent(roomId, sent.bob.getId(), undefined, { reason: "oops" });
  await redacted;
  const atAlice = alice.getRoom(roomId).findEventById(sent.bob.getId());
  check(atAlice?.isRedacted(), "alice's copy is not redacted");
  check(atAlice.getContent().body === undefined, "redacted content still has a body");
  // the server's copy is redacted too
  const fromServer = await alice.fetchRoomEvent(roomId, sent.bob.getId());
  check(Object.keys(fromServer.content ?? {}).length === 0, `server still returns content ${JSON.stringify(fromServer.content)}`);
  check(fromServer.unsigned?.redacted_because?.type === "m.room.redaction", "no unsigned.redacted_because");
  return null;
});

await step("lazy-loaded members: loadMembersIfNeeded (GET /members)", async () => {
  const room = bob.getRoom(roomId);
  await room.loadMembersIfNeeded();
  const members = room.getJoinedMembers().map((m) => m.userId).sort();
  check(JSON.stringify(members) === JSON.stringify([aliceId, bobId].sort()), `joined members ${members}`);
  return { members };
});

await step("room state: topic change seen live, GET state event", async () => {
  const seen = waitFor(bob, sdk.RoomStateEvent.Events,
    (ev) => ev.getRoomId() === roomId && ev.getType() === "m.room.topic" && ev.getContent().topic === "new topic",
    "the topic change at bob");
  await alice.setRoomTopic(roomId, "new topic");
  await seen;
  const topic = await bob.getStateEvent(roomId, "m.room.topic", "");
  check(topic.topic === "new topic", `GET state said ${JSON.stringify(topic)}`);
  return null;
});

await step("edit (m.replace) and reaction (m.annotation), relations API", async () => {
  const target = sent.alice.getId();
  const edited = nextTimelineEvent(bob, roomId, (ev) => ev.getRelation()?.rel_type === "m.replace", "the edit at bob");
  await alice.sendMessage(roomId, { msgtype: "m.text", body: "* hello from alice (edited)",
    "m.new_content": { msgtype: "m.text", body: "hello from alice (edited)" },
    "m.relates_to": { rel_type: "m.replace", event_id: target } });
  await edited;
  await eventually(() => bob.getRoom(roomId).findEventById(target)?.getContent().body === "hello from alice (edited)",
    "bob's client to apply the edit");
  const reacted = nextTimelineEvent(alice, roomId, (ev) => ev.getType() === "m.reaction", "the reaction at alice");
  await bob.sendEvent(roomId, "m.reaction", { "m.relates_to": { rel_type: "m.annotation", event_id: target, key: "👍" } });
  await reacted;
  const rel = await alice.relations(roomId, target, "m.annotation", "m.reaction");
  check(rel.events.length === 1 && rel.events[0].getContent()["m.relates_to"].key === "👍",
    `relations returned ${rel.events.length} events`);
  const fromServer = await alice.fetchRoomEvent(roomId, target);
  const replace = fromServer.unsigned?.["m.relations"]?.["m.replace"];
  check(replace?.event_id, `no unsigned m.relations.m.replace on the edited event: ${JSON.stringify(fromServer.unsigned)}`);
  return { replace: replace.event_id };
});

await step("thread reply and the /threads list", async () => {
  const root = sent.alice.getId();
  const got = nextTimelineEvent(bob, roomId, (ev) => ev.getContent().body === "in a thread", "the thread reply at bob")
    .catch(() => null); // with thread support off the SDK still puts it in the main timeline
  const res = await bob.sendMessage(roomId, { msgtype: "m.text", body: "in a thread",
    "m.relates_to": { rel_type: "m.thread", event_id: root, is_falling_back: true,
      "m.in_reply_to": { event_id: root } } });
  void got;
  const list = await alice.createThreadListMessagesRequest(roomId, null, 10, sdk.Direction.Backward, sdk.ThreadFilterType.All);
  check(list.chunk.some((e) => e.event_id === root), `thread root not in /threads: ${JSON.stringify(list.chunk.map((e) => e.event_id))}`);
  const rootEv = list.chunk.find((e) => e.event_id === root);
  const summary = rootEv.unsigned?.["m.relations"]?.["m.thread"];
  check(summary?.count === 1 && summary.latest_event?.event_id === res.event_id,
    `thread summary ${JSON.stringify(summary)}`);
  const rel = await alice.relations(roomId, root, "m.thread");
  check(rel.events.some((e) => e.getId() === res.event_id), "thread reply missing from /relations");
  return { count: summary.count };
});

await step("event context (GET /context, jump to event)", async () => {
  const room = alice.getRoom(roomId);
  const tl = await alice.getEventTimeline(room.getUnfilteredTimelineSet(), sent.alice.getId());
  check(tl && tl.getEvents().some((e) => e.getId() === sent.alice.getId()), "event not in its context timeline");
  return { events: tl.getEvents().length };
});

await step("account data and room tags, seen through own sync", async () => {
  const gotGlobal = waitFor(alice, sdk.ClientEvent.AccountData,
    (ev) => ev.getType() === "org.atrium.test" && ev.getContent().n === 1, "global account data in sync");
  await alice.setAccountData("org.atrium.test", { n: 1 });
  await gotGlobal;
  const gotTag = waitFor(alice, sdk.RoomEvent.Tags,
    (ev, room) => room.roomId === roomId && room.tags["m.favourite"]?.order === 0.5, "the room tag in sync");
  await alice.setRoomTag(roomId, "m.favourite", { order: 0.5 });
  await gotTag;
  return null;
});

await step("alias and directory", async () => {
  const alias = `#jsroom:${aliceId.split(":").slice(1).join(":")}`;
  await alice.createAlias(alias, roomId);
  const res = await bob.getRoomIdForAlias(alias);
  check(res.room_id === roomId, `alias resolves to ${res.room_id}`);
  const pub = await bob.publicRooms({ limit: 10 });
  check(Array.isArray(pub.chunk), "publicRooms has no chunk");
  return { alias, servers: res.servers };
});

await step("devices: list and rename", async () => {
  const devs = await alice.getDevices();
  check(devs.devices.some((d) => d.device_id === alice.getDeviceId()), "own device not listed");
  await alice.setDeviceDetails(alice.getDeviceId(), { display_name: "renamed by js-sdk" });
  const again = await alice.getDevices();
  const mine = again.devices.find((d) => d.device_id === alice.getDeviceId());
  check(mine.display_name === "renamed by js-sdk", `display_name ${mine.display_name}`);
  return { devices: again.devices.length };
});

await optionalStep("user directory search", async () => {
  const res = await alice.searchUserDirectory({ term: "jsbob" });
  check(res.results.some((u) => u.user_id === bobId), `user directory did not find ${bobId}`);
  return { found: res.results.length };
});

await optionalStep("search", async () => {
  // bob's earlier message was redacted above: a redacted message must not be found
  const gone = await alice.searchRoomEvents({ term: "bob" });
  check(!gone.results.some((r) => r.context.getEvent().getContent().body?.includes("bob here")),
    "a redacted message was found");
  await bob.sendTextMessage(roomId, "the zanzibar archipelago, said bob");
  const res = await alice.searchRoomEvents({ term: "zanzibar" });
  check(res.results.some((r) => r.context.getEvent().getContent().body?.includes("zanzibar")),
    "search did not find the message just sent");
  return { count: res.count ?? res.results.length };
});

await step("space hierarchy walk (GET /hierarchy)", async () => {
  const server = alice.getUserId().split(":").slice(1).join(":");
  const space = await alice.createRoom({ name: "js space", preset: "public_chat",
    creation_content: { type: "m.space" } });
  const child = await alice.createRoom({ name: "js child", preset: "public_chat" });
  await alice.sendStateEvent(space.room_id, "m.space.child", { via: [server] }, child.room_id);
  const res = await alice.getRoomHierarchy(space.room_id, 10, 2, false);
  const ids = res.rooms.map((r) => r.room_id);
  check(ids[0] === space.room_id && ids.includes(child.room_id),
    `hierarchy of the space: ${JSON.stringify(ids)}`);
  const entry = res.rooms.find((r) => r.room_id === child.room_id);
  check(entry.name === "js child", `child summary: ${JSON.stringify(entry)}`);
  return { rooms: ids.length };
});

await step("jump to date (GET /timestamp_to_event)", async () => {
  const res = await alice.timestampToEvent(roomId, Date.now() + 60000, sdk.Direction.Backward);
  check(typeof res.event_id === "string" && res.event_id.startsWith("$"), `answer: ${JSON.stringify(res)}`);
  check(res.origin_server_ts <= Date.now() + 60000, "the event is after the timestamp");
  return { event_id: res.event_id };
});

await step("unread notification counts (from sync)", async () => {
  const room = bob.getRoom(roomId);
  const before = room.getUnreadNotificationCount(sdk.NotificationCountType.Total);
  const counted = waitFor(room, sdk.RoomEvent.UnreadNotifications, // emitted on the Room, not re-emitted by the client
    () => room.getUnreadNotificationCount(sdk.NotificationCountType.Total) > 0, "a positive unread count at bob")
    .catch(() => null);
  await alice.sendTextMessage(roomId, "count me");
  await counted;
  const after = room.getUnreadNotificationCount(sdk.NotificationCountType.Total);
  check(after > 0, `unread count stayed ${after} (was ${before})`);
  return { before, after };
});

const N = 25;
await step(`send ${N} messages for history`, async () => {
  let last;
  const lastSeen = nextTimelineEvent(bob, roomId, bodyIs(`history ${N - 1}`), "the last history message at bob");
  for (let i = 0; i < N; i++) last = await alice.sendTextMessage(roomId, `history ${i}`);
  await lastSeen;
  return { last_event_id: last.event_id };
});

await step("paginate history with scrollback (fresh login, initialSyncLimit 5)", async () => {
  const carol = await login(user1, pass1, "js-sdk alice second device");
  await start(carol, { initialSyncLimit: 5 });
  const room = carol.getRoom(roomId);
  check(room, "room missing from the fresh login's sync");
  const live = () => room.getLiveTimeline().getEvents();
  const initial = live().length;
  check(initial > 0 && initial <= 12, `initial timeline has ${initial} events`);
  let rounds = 0;
  while (room.getLiveTimeline().getPaginationToken(sdk.EventTimeline.BACKWARDS) !== null && rounds < 20) {
    await carol.scrollback(room, 10);
    rounds++;
    if (live().some((ev) => ev.getType() === "m.room.create")) break;
  }
  const events = live();
  const types = events.map((e) => e.getType());
  check(types[0] === "m.room.create", `oldest event after scrollback is ${types[0]}`);
  const bodies = events.filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body);
  const history = bodies.filter((b) => b?.startsWith("history "));
  check(history.length === N, `saw ${history.length} of ${N} history messages`);
  check(history.every((b, i) => b === `history ${i}`), `history out of order: ${history.join(", ")}`);
  check(events.some((e) => e.getId() === sent.alice.getId()), "the first message is missing from history");
  const redacted = events.find((e) => e.getId() === sent.bob.getId());
  check(redacted?.isRedacted(), "the redacted message is not redacted in paginated history");
  // no duplicate event ids across the sync/pagination seam
  const ids = events.map((e) => e.getId());
  check(new Set(ids).size === ids.length, "duplicate events in the timeline");
  await carol.logout(true);
  return { initial_events: initial, rounds, total_events: events.length };
});

await step("leave room, seen by the other side", async () => {
  const left = waitFor(alice, sdk.RoomMemberEvent.Membership,
    (ev, member) => member.roomId === roomId && member.userId === bobId && member.membership === "leave",
    "bob's leave at alice");
  await bob.leave(roomId);
  await left;
  return null;
});

await step("logout", async () => {
  for (const c of [alice, bob]) {
    const token = c.getAccessToken();
    await c.logout(true);
    const res = await fetch(`${baseUrl}/_matrix/client/v3/account/whoami`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    check(res.status === 401, `whoami after logout: HTTP ${res.status}`);
    const body = await res.json();
    check(body.errcode === "M_UNKNOWN_TOKEN", `errcode after logout ${body.errcode}`);
  }
  return null;
});

results.ok = true;
finish(0);
