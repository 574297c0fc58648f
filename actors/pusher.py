"""The push sender (push-gateway-api ``POST /_matrix/push/v1/notify``): one PusherActor per
local user with pushers, under the "pushers" supervisor.

A ``PushWake`` (sent by the push evaluator after it wrote notifications for the user) makes
the actor read what each of the user's pushers has not yet sent from ``event_push_actions``
(after the pusher's ``last_stream_ordering``) and POST it to the pusher's gateway, one
notification per request, with a timeout.  Progress is stored after each delivery, so the
mailbox is only a doorbell: a dropped wake or a restarted actor loses nothing — the next wake
(or the start-up sweep) resumes from the store.

Failures (a connection error, a timeout, a certificate that does not verify, a non-2xx
answer) back off per pusher, exponentially from ``backoff_base`` to ``backoff_max``; the
retry is a scheduled ``PushRetry`` tell, and wakes during a backoff are ignored.  After
``max_attempts`` failures on one notification it is skipped.  A pushkey the gateway lists in
``rejected`` loses this user's pusher (as Synapse does; another account's pusher with the
same key is told by its own push).  The HTTP call blocks only this user's actor
(gevent-patched ``requests``), never a room write.

What a notification carries (push-gateway-api, and what Synapse sends, which Sygnal and the
clients read): event id, room id, type, sender, ``prio``, ``counts.unread`` (Synapse's
badge: rooms invited to plus unread notifications of joined rooms; left out when zero, as
the spec says of counts), for member events ``membership`` and ``user_is_target``, the
content, the sender's display name and the room's name (its ``m.room.name``, else its
canonical alias, else the other members as Synapse names them) and canonical alias, all from
the room's current state — or, for an invite from a server whose room we do not hold, from
the invite's stripped state.  ``prio`` is ``high`` when the actions set a sound or a
highlight or the event is encrypted (its effect is unknown), else ``low``.  The
``event_id_only`` format sends only ids, counts and ``prio``; devices carry the tweaks
(none for ``event_id_only``).

HTTPS to gateways verifies certificates (the system's and certifi's roots, plus the files
of ``federation_custom_ca_list`` if any); ``use_insecure_ssl_client_just_for_testing_do_not_use``
turns verification off, for test set-ups only.
"""
from __future__ import annotations

import json
import logging
import ssl
import time
from functools import lru_cache
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gevent
import requests
import urllib3
from requests.adapters import HTTPAdapter

from atrium.errors import MatrixError
from protocol.push_rules import tweaks
from store import push as push_store
from store.database import Database
from store.events import EventStore
from store.pushers import Pusher, PusherStore
from supervision import SupervisedActor, Supervisor, SupervisionError, Tracer, message

log = logging.getLogger(__name__)

EVENT_ID_ONLY = "event_id_only"
MAX_RESPONSE_BYTES = 64 * 1024   # a gateway's answer is a short list of pushkeys
Post = Callable[[str, dict[str, Any], float], tuple[int, Any]]


@message
class PushWake:
    """New notifications may be waiting for this user's pushers."""


@message
class PushRetry:
    """A backoff ended: try the failing pushers again."""


def trust_context(ca_files: Sequence[str]) -> ssl.SSLContext:
    """Certificate verification against the system's roots, certifi's and ``ca_files``."""
    ctx = ssl.create_default_context()
    try:
        import certifi  # noqa: PLC0415
        ctx.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError):
        pass
    for path in ca_files:
        ctx.load_verify_locations(cafile=path)
    return ctx


class _TrustAdapter(HTTPAdapter):
    """HTTPS with our own SSL context (extra trust roots); requests still asks for
    ``CERT_REQUIRED`` and urllib3 still matches the host name."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._ctx
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def make_http_post(*, verify: bool = True, ca_files: Sequence[str] = ()) -> Post:
    """A ``Post`` over one pooled ``requests`` session: JSON out, (status, parsed body or
    None) back; redirects are not followed, answers past ``MAX_RESPONSE_BYTES`` are not
    parsed.  ``verify=False`` skips certificate checks (the insecure testing key);
    ``ca_files`` are extra trust roots."""
    session = requests.Session()
    if not verify:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    elif ca_files:
        session.mount("https://", _TrustAdapter(trust_context(ca_files)))

    def post(url: str, payload: dict[str, Any], timeout: float) -> tuple[int, Any]:
        # ``verify`` per request: requests lets REQUESTS_CA_BUNDLE override a session's
        with session.post(url, json=payload, timeout=timeout, allow_redirects=False,
                          stream=True, verify=verify) as r:
            raw = r.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
            status = r.status_code
        body = None
        if len(raw) <= MAX_RESPONSE_BYTES:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        return status, body

    return post


def http_post(url: str, payload: dict[str, Any], timeout: float) -> tuple[int, Any]:
    """The default ``Post``: certificates verified against the usual roots."""
    return _default_post()(url, payload, timeout)


@lru_cache(maxsize=1)
def _default_post() -> Post:
    return make_http_post()


@dataclass
class PusherDeps:
    db: Database
    pushers: PusherStore
    events: EventStore
    post: Post = http_post
    timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_max: float = 600.0
    max_attempts: int = 12
    batch: int = 50
    # (delay_s, user_id, message) → a handle with .kill(); set by the wiring
    schedule: Callable[[float, str, Any], Any] | None = None
    clock: Callable[[], float] = time.time
    #: store/remote_invites.py: invites to rooms this server does not hold (optional)
    remote_invites: Any = None
    #: called with the user id after the sender removed one of their pushers
    pushers_removed: Callable[[str], None] | None = None


class PusherActor(SupervisedActor):
    domain_errors = (MatrixError,)

    def __init__(self, user_id: str, deps: PusherDeps) -> None:
        super().__init__()
        self.user_id = user_id
        self.deps = deps
        self.failures: dict[tuple[str, str], tuple[int, float]] = {}  # → (attempts, retry_at)
        self.sent = 0
        self._timer: Any = None

    def handle(self, msg: Any) -> Any:
        if isinstance(msg, (PushWake, PushRetry)):
            return self._deliver_pending()
        raise TypeError(f"PusherActor: unknown message {type(msg).__name__}")

    def on_stop(self) -> None:
        pass  # a pending retry timer restarts the actor when it fires

    # ------------------------------------------------------------------ delivering
    def _deliver_pending(self) -> int:
        now = self.deps.clock()
        sent = 0
        for p in self.deps.pushers.for_user(self.user_id):
            if p.kind != "http":
                continue
            key = (p.app_id, p.pushkey)
            attempts, retry_at = self.failures.get(key, (0, 0.0))
            if now < retry_at:
                continue
            sent += self._drain(p, attempts)
        self._schedule_retry()
        return sent

    def _drain(self, p: Pusher, attempts: int) -> int:
        d = self.deps
        key = (p.app_id, p.pushkey)
        position = p.last_stream_ordering
        sent = 0
        while True:
            pending = push_store.pending_for_user(d.db, self.user_id, position, d.batch)
            if not pending:
                return sent
            for n in pending:
                outcome = self._send(p, n)
                if outcome == "rejected":
                    log.info("push gateway rejected %s/%s of %s: pusher removed", *key,
                             self.user_id)
                    d.pushers.delete(self.user_id, p.app_id, p.pushkey)
                    self.failures.pop(key, None)
                    if d.pushers_removed is not None:
                        d.pushers_removed(self.user_id)
                    return sent
                if outcome == "failed":
                    attempts += 1
                    now = d.clock()
                    if attempts >= d.max_attempts:
                        log.warning("push to %s/%s: giving up on %s", *key, n["event_id"])
                        position = n["stream_ordering"]
                        d.pushers.progress(self.user_id, *key, position=position,
                                           success_ts=None, failing_since=int(now * 1000))
                        attempts = 0
                    else:
                        d.pushers.progress(self.user_id, *key, position=None, success_ts=None,
                                           failing_since=p.failing_since_ts or int(now * 1000))
                    delay = min(d.backoff_max, d.backoff_base * 2 ** max(0, attempts - 1))
                    self.failures[key] = (attempts, now + delay)
                    return sent
                position = n["stream_ordering"]
                attempts = 0
                self.failures.pop(key, None)
                d.pushers.progress(self.user_id, *key, position=position,
                                   success_ts=int(d.clock() * 1000), failing_since=None)
                sent += 1
                self.sent += 1

    def _send(self, p: Pusher, n: dict[str, Any]) -> str:
        """POST one notification: 'ok', 'rejected' (our pushkey) or 'failed'."""
        url = p.data.get("url")
        if not isinstance(url, str):
            return "rejected"
        payload = self._payload(p, n)
        if payload is None:  # the event is gone: nothing to tell
            return "ok"
        try:
            status, body = self.deps.post(url, payload, self.deps.timeout)
        except Exception as e:  # noqa: BLE001 - refused, timeout, bad certificate, bad URL
            log.warning("push to %s failed: %s: %s", url, type(e).__name__, e)
            return "failed"
        if not 200 <= status < 300:
            log.warning("push to %s: HTTP %s", url, status)
            return "failed"
        rejected = body.get("rejected") if isinstance(body, dict) else None
        if isinstance(rejected, list) and p.pushkey in rejected:
            return "rejected"
        return "ok"

    def _payload(self, p: Pusher, n: dict[str, Any]) -> dict[str, Any] | None:
        """The body of ``/notify`` for one pusher (None: the event cannot be found)."""
        d = self.deps
        ev, state = self._event_and_state(n)
        if ev is None:
            return None
        tw = tweaks(n["actions"])
        high = ev.get("type") == "m.room.encrypted" or bool(tw.get("highlight")) \
            or bool(tw.get("sound"))
        remote = [] if d.remote_invites is None else [
            room_id for room_id, row in d.remote_invites.latest(self.user_id, 2**63).items()
            if row.membership == "invite"]
        unread = push_store.total_unread(d.db, self.user_id, remote)
        device: dict[str, Any] = {
            "app_id": p.app_id, "pushkey": p.pushkey, "pushkey_ts": p.pushkey_ts // 1000,
            "data": {k: v for k, v in p.data.items() if k != "url"}}
        note: dict[str, Any] = {"event_id": n["event_id"], "room_id": n["room_id"]}
        if p.data.get("format") != EVENT_ID_ONLY:
            if tw:
                device["tweaks"] = tw
            note.update(self._describe(ev, state))
        note["prio"] = "high" if high else "low"
        note["counts"] = {"unread": unread} if unread else {}
        note["devices"] = [device]
        return {"notification": note}

    def _describe(self, ev: dict[str, Any], state: "_State") -> dict[str, Any]:
        """The event-related fields of a full-format notification."""
        out: dict[str, Any] = {"type": ev.get("type"), "sender": ev.get("sender")}
        if ev.get("type") == "m.room.member" and isinstance(ev.get("state_key"), str):
            out["membership"] = (ev.get("content") or {}).get("membership")
            out["user_is_target"] = ev["state_key"] == self.user_id
        content = ev.get("content")
        if isinstance(content, dict) and content:
            out["content"] = content
        sender = ev.get("sender")
        dn = state.content("m.room.member", sender).get("displayname") \
            if isinstance(sender, str) else None
        if isinstance(dn, str) and dn:
            out["sender_display_name"] = dn
        name = state.content("m.room.name").get("name")
        alias = state.content("m.room.canonical_alias").get("alias")
        alias = alias if isinstance(alias, str) and alias.startswith("#") else None
        if not (isinstance(name, str) and name):
            name = alias or state.members_name()
        if name:
            out["room_name"] = name
        if alias:
            out["room_alias"] = alias
        return out

    def _event_and_state(self, n: dict[str, Any]) -> tuple[dict[str, Any] | None, "_State"]:
        """The notified event and what describes its room: the room's current state, or for
        an invite to a room this server does not hold, the invite's stripped state."""
        se = self.deps.events.get_event(n["event_id"])
        if se is not None:
            ev = dict(se.event)
            if se.redacted_by is not None:
                ev["content"] = {}
            return ev, _CurrentState(self.deps, n["room_id"], self.user_id, ev.get("sender"))
        ri = self.deps.remote_invites
        row = next((r for r in ri.rows(self.user_id) if r.event_id == n["event_id"]), None) \
            if ri is not None else None
        if row is not None:
            return row.event, _StrippedState(row.stripped_state)
        return None, _StrippedState([])

    def _schedule_retry(self) -> None:
        if self._timer is not None:
            try:
                self._timer.kill(block=False)
            except Exception:  # noqa: BLE001 - already finished
                pass
            self._timer = None
        if not self.failures or self.deps.schedule is None:
            return
        due = min(at for _, at in self.failures.values())
        delay = max(0.01, due - self.deps.clock())
        self._timer = self.deps.schedule(delay, self.user_id, PushRetry())


class _State:
    """The room state a notification is described from."""

    def content(self, etype: str, skey: str = "") -> dict[str, Any]:
        raise NotImplementedError

    def members_name(self) -> str | None:
        return None


class _StrippedState(_State):
    """An invite's stripped state (Synapse reads the sender's name and the room's name from
    it; members are not listed there)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._by_key = {(e.get("type"), e.get("state_key", "")): e for e in events
                        if isinstance(e, dict)}

    def content(self, etype: str, skey: str = "") -> dict[str, Any]:
        c = (self._by_key.get((etype, skey)) or {}).get("content")
        return c if isinstance(c, dict) else {}


class _CurrentState(_State):
    """What a push reads of the room's current state: its name, canonical alias and the
    sender's member event (one query, one event fetch), and members only when needed."""

    KEYS = (("m.room.name", ""), ("m.room.canonical_alias", ""))

    def __init__(self, deps: PusherDeps, room_id: str, user_id: str, sender: Any) -> None:
        self.deps, self.room_id, self.user_id = deps, room_id, user_id
        self._sender = sender
        self._contents: dict[tuple[str, str], dict[str, Any]] | None = None

    def content(self, etype: str, skey: str = "") -> dict[str, Any]:
        if self._contents is None:  # first use (an event_id_only push never gets here)
            self._contents = self._load()
        return self._contents.get((etype, skey), {})

    def _load(self) -> dict[tuple[str, str], dict[str, Any]]:
        wanted = list(self.KEYS)
        if isinstance(self._sender, str):
            wanted.append(("m.room.member", self._sender))
        where = " OR ".join("(type = ? AND state_key = ?)" for _ in wanted)
        ids = self.deps.db.run("push_state", lambda t: {(ty, k): e for ty, k, e in t.query(
            f"SELECT type, state_key, event_id FROM current_state WHERE room_id = ?"
            f" AND ({where})", (self.room_id, *[x for key in wanted for x in key]))})
        stored = self.deps.events.get_events(ids.values())
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for key, eid in ids.items():
            se = stored.get(eid)
            c = se.event.get("content") if se is not None and se.redacted_by is None else None
            if isinstance(c, dict):
                out[key] = c
        return out

    def members_name(self) -> str | None:
        """Synapse's name of a room without name or alias, as it pushes it: the other
        joined and invited members in the order they arrived — "A", "A and B", "A and 3
        others" — and nothing for a room of two or one the user is invited to."""
        def _q(t: Any) -> tuple[str | None, int, list[str]]:
            mine = t.query_value(
                "SELECT membership FROM current_state WHERE room_id = ? AND type ="
                " 'm.room.member' AND state_key = ?", (self.room_id, self.user_id))
            others = t.query_value(
                "SELECT COUNT(*) FROM current_state WHERE room_id = ? AND type ="
                " 'm.room.member' AND membership IN ('join', 'invite') AND state_key <> ?",
                (self.room_id, self.user_id), default=0)
            first = [eid for (eid,) in t.query(
                "SELECT s.event_id FROM current_state s JOIN events e ON e.event_id ="
                " s.event_id WHERE s.room_id = ? AND s.type = 'm.room.member' AND"
                " s.membership IN ('join', 'invite') AND s.state_key <> ?"
                " ORDER BY e.stream_ordering LIMIT 2", (self.room_id, self.user_id))]
            return mine, int(others or 0), first

        mine, others, first = self.deps.db.run("push_members_name", _q)
        if mine == "invite" or others < 2:
            return None
        names = []
        stored = self.deps.events.get_events(first)
        for se in (stored[eid] for eid in first if eid in stored):
            dn = (se.event.get("content") or {}).get("displayname")
            names.append(dn if isinstance(dn, str) and dn else se.event.get("state_key"))
        if len(names) < 2:
            return None
        if others == 2:
            return f"{names[0]} and {names[1]}"
        return f"{names[0]} and {others - 1} others"


class PushSender:
    """The supervisor over PusherActors and the doorbell the evaluator rings."""

    def __init__(self, deps: PusherDeps, tracer: Tracer, *, mailbox: int = 20,
                 ask_timeout: float = 30.0, idle_timeout: float | None = 300.0,
                 restart_delay: float = 1.0, max_restarts: int = 3,
                 restart_window: float = 60.0, park_duration: float = 60.0) -> None:
        self.deps = deps
        self._spawn_later = gevent.spawn_later
        if deps.schedule is None:
            deps.schedule = self._schedule
        if deps.pushers_removed is None:
            deps.pushers_removed = self.pushers_changed
        self.supervisor = Supervisor(
            "pushers", lambda user_id: PusherActor(user_id, deps), tracer=tracer,
            max_mailbox=mailbox, ask_timeout=ask_timeout, idle_timeout=idle_timeout,
            restart_delay=restart_delay, max_restarts=max_restarts,
            restart_window=restart_window, park_duration=park_duration)
        self.users: set[str] = deps.pushers.users_with_pushers()

    def wake(self, user_id: str, _position: int = 0) -> None:
        """Evaluator hook: the user has new notifications (ignored without pushers)."""
        if user_id in self.users:
            self._tell(user_id, PushWake())

    def pushers_changed(self, user_id: str) -> None:
        if self.deps.pushers.for_user(user_id):
            self.users.add(user_id)
        else:
            self.users.discard(user_id)

    def wake_all(self) -> None:
        """Start-up: every user with pushers catches up from the store."""
        for user_id in list(self.users):
            self._tell(user_id, PushWake())

    def _tell(self, user_id: str, msg: Any) -> None:
        try:
            self.supervisor.tell(user_id, msg)
        except SupervisionError as e:  # full: a wake is already queued; parked: later
            log.debug("push wake for %s refused: %s", user_id, e)

    def _schedule(self, delay: float, user_id: str, msg: Any) -> Any:
        return self._spawn_later(delay, self._tell, user_id, msg)

    def stop(self) -> None:
        self.supervisor.stop_all()
