"""A peer's outage seen from Atrium's outbound federation queue.

Two servers federate over TLS on loopback: Atrium (the sender, ``A``) and a peer (``B``:
another Atrium by default, ``--peer synapse`` for Synapse from this venv).  The peer is
frozen (SIGSTOP on its processes) while a user of A sends ``--messages`` (10,000) to-device
messages to a user of B and changes its device's display name every ``--device-every``
messages (device-list updates, sent to the servers that share a room with the user); both are
queued for B by A (durably: architecture invariant 6, "a dead server costs a row in a
table, not memory").  Measured:

* RSS of A's gunicorn worker (``/proc/<pid>/status`` VmRSS) before the outage and at its
  peak while the messages queue up: the growth, target <= 10 MB;
* after SIGCONT (and one request from B to A, which tells A that B is back, as any real
  traffic would), the catch-up time until B's user has every message exactly once and in
  the order sent (read from B's ``/sync``), and whether B sees the last device name.

With ``--rooms`` the messages are room messages instead: a public room on A that bob (on B)
joined; while B is frozen alice sends ``--messages`` ``m.room.message`` into it (A's RSS growth
as above); after B resumes, the catch-up is timed twice: until bob's ``/sync`` holds the last
message, and until bob's ``/messages`` (B backfilling from A where it must) holds every
message exactly once and in order.  ``--mirror`` adds the mirrored scenario side by side with
``--mirror-messages`` (default 500) each way: Atrium sending to a frozen Synapse, and Synapse
sending to a frozen Atrium (Synapse's catch-up, the figure to beat).

Bounded in time (``--deadline``); stops what it started, by PID.  Usage::

    .venv/bin/python bench/federation_outage.py [--peer atrium|synapse] [--messages 10000]
    .venv/bin/python bench/federation_outage.py --rooms [--peer synapse] [--mirror]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atrium.demo import RunningServer, start_server  # noqa: E402
from atrium.tls import make_ca  # noqa: E402

EVENT_TYPE = "org.atrium.bench.outage"
OFF = {"per_second": 1_000_000, "burst_count": 1_000_000}
ATRIUM_OVERRIDES: dict[str, Any] = {
    "bcrypt_rounds": 4, "log_level": "WARNING",
    "rc_message": OFF, "rc_registration": OFF,
    "rc_login": {"address": OFF, "account": OFF, "failed_attempts": OFF},
    "rc_joins": {"local": OFF, "remote": OFF},
    "rc_invites": {"per_room": OFF, "per_user": OFF},
    "rc_federation": {"window_size": 1000, "sleep_limit": 1_000_000, "sleep_delay": 0,
                      "reject_limit": 1_000_000, "concurrent": 1000},
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Client:
    """One keep-alive HTTPS connection to a server's client API, as one user."""

    def __init__(self, base_url: str, ca_path: str, login: dict[str, Any]):
        host, port = base_url.split("://", 1)[1].split(":")
        self.ctx = ssl.create_default_context(cafile=ca_path)
        self.host, self.port = host, int(port)
        self.user_id: str = login["user_id"]
        self.device_id: str = login["device_id"]
        self.token: str = login["access_token"]
        self.conn: http.client.HTTPSConnection | None = None

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, Any]:
        if query:
            path += "?" + urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                        timeout=timeout)
            try:
                self.conn.timeout = timeout
                if self.conn.sock is not None:
                    self.conn.sock.settimeout(timeout)
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, j = self.call(method, path, body, **kw)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status} {j}")
        return j


def _q(s: str) -> str:
    return quote(s, safe="")


def _start_peer(kind: str, directory: Path, ca: Any) -> Any:
    if kind == "synapse":
        from tests.interop.synapse_tls import start_synapse  # noqa: PLC0415

        return start_synapse(directory, free_port(), ca, log_level="WARNING")
    return start_server(directory, free_port(), ca, overrides=ATRIUM_OVERRIDES)


def _peer_pids(peer: Any) -> list[int]:
    return peer.pids()


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _try_shared_room(alice: Client, bob: Client) -> str | None:
    """A room both users are in, so device-list updates of alice go to B; None when the
    servers cannot do that yet (remote invites/joins are Federation II)."""
    try:
        room = alice.ok("POST", "/_matrix/client/v3/createRoom",
                        {"preset": "public_chat"})["room_id"]
        server = alice.user_id.split(":", 1)[1]
        bob.ok("POST", f"/_matrix/client/v3/join/{_q(room)}", {}, timeout=30,
               query={"server_name": server, "via": server})
        return room
    except (RuntimeError, OSError) as e:
        print(f"  no shared room ({str(e)[:160]}): device-list updates are measured only "
              f"as queued writes, not their delivery", flush=True)
        return None


def run(args: argparse.Namespace) -> int:
    work = Path(args.dir or tempfile.mkdtemp(prefix="atrium-outage-"))
    work.mkdir(parents=True, exist_ok=True)
    ca = make_ca(work, name="Atrium outage bench CA")
    started: list[Any] = []
    deadline = time.monotonic() + args.deadline
    result: dict[str, Any] = {"peer": args.peer, "messages": args.messages}
    try:
        a: RunningServer = start_server(work / "a", free_port(), ca,
                                        overrides=ATRIUM_OVERRIDES)
        started.append(a)
        b = _start_peer(args.peer, work / "b", ca)
        started.append(b)
        print(f"A = Atrium {a.server_name} (master {a.pid}); B = {args.peer} "
              f"{b.server_name} (pids {_peer_pids(b)})", flush=True)
        alice = Client(a.base_url, ca.cert_path, a.register("alice", "bench-pass-a"))
        bob = Client(b.base_url, ca.cert_path, b.register("bob", "bench-pass-b"))
        [worker] = a.worker_pids()

        # warm-up: keys fetched, connection made, B known to be up
        bob.ok("GET", "/_matrix/client/v3/sync", query={"timeout": "0"})
        since = bob.ok("GET", "/_matrix/client/v3/sync", query={"timeout": "0"})["next_batch"]
        alice.ok("PUT", f"/_matrix/client/v3/sendToDevice/{EVENT_TYPE}/{uuid.uuid4().hex}",
                 {"messages": {bob.user_id: {bob.device_id: {"seq": -1}}}})
        t0 = time.monotonic()
        while True:
            j = bob.ok("GET", "/_matrix/client/v3/sync",
                       query={"since": since, "timeout": "2000"})
            since = j["next_batch"]
            if any(e.get("type") == EVENT_TYPE for e in j.get("to_device", {}).get("events", [])):
                break
            if time.monotonic() - t0 > 60:
                raise RuntimeError("warm-up to-device message did not arrive in 60 s")
        result["warmup_delivery_s"] = round(time.monotonic() - t0, 3)
        room = _try_shared_room(alice, bob)
        result["shared_room"] = room is not None

        time.sleep(2)
        rss_before = rss_kb(worker)
        peak = [rss_before]
        sampling = threading.Event()

        def sampler() -> None:
            while not sampling.wait(0.1):
                peak[0] = max(peak[0], rss_kb(worker))

        threading.Thread(target=sampler, daemon=True).start()

        _signal_all(_peer_pids(b), signal.SIGSTOP)
        print(f"B stopped; queueing {args.messages} to-device messages "
              f"(+ a device rename every {args.device_every}) …", flush=True)
        t_queue = time.monotonic()
        last_name = None
        for i in range(args.messages):
            alice.ok("PUT", f"/_matrix/client/v3/sendToDevice/{EVENT_TYPE}/q{i}",
                     {"messages": {bob.user_id: {bob.device_id: {"seq": i}}}})
            if args.device_every and i % args.device_every == args.device_every - 1:
                last_name = f"bench device {i}"
                alice.ok("PUT", f"/_matrix/client/v3/devices/{_q(alice.device_id)}",
                         {"display_name": last_name})
            if time.monotonic() > deadline:
                raise RuntimeError(f"deadline reached after queueing {i + 1} messages")
        queue_s = time.monotonic() - t_queue
        time.sleep(2)
        rss_after = rss_kb(worker)
        sampling.set()
        peak[0] = max(peak[0], rss_after)
        result.update(queue_s=round(queue_s, 1),
                      queue_rate=round(args.messages / queue_s, 1),
                      rss_before_mb=round(rss_before / 1024, 1),
                      rss_after_mb=round(rss_after / 1024, 1),
                      rss_peak_mb=round(peak[0] / 1024, 1),
                      rss_growth_mb=round((peak[0] - rss_before) / 1024, 1))
        print(f"  queued in {queue_s:.1f} s; A worker RSS {rss_before / 1024:.1f} -> peak "
              f"{peak[0] / 1024:.1f} MB (+{(peak[0] - rss_before) / 1024:.1f})", flush=True)

        # B comes back; its first request to A tells A so (spec: a server hearing from a
        # destination may retry it at once)
        _signal_all(_peer_pids(b), signal.SIGCONT)
        t_back = time.monotonic()
        bob.call("GET", f"/_matrix/client/v3/profile/{_q(alice.user_id)}", timeout=30)
        seqs: list[int] = []
        last_arrival = t_back
        while len(seqs) < args.messages and time.monotonic() < deadline:
            j = bob.ok("GET", "/_matrix/client/v3/sync",
                       query={"since": since, "timeout": "5000"}, timeout=60)
            since = j["next_batch"]
            got = [e["content"]["seq"] for e in j.get("to_device", {}).get("events", [])
                   if e.get("type") == EVENT_TYPE and e["content"].get("seq", -1) >= 0]
            if got:
                seqs += got
                last_arrival = time.monotonic()
        # a duplicate would show in the next syncs
        for _ in range(3):
            j = bob.ok("GET", "/_matrix/client/v3/sync", query={"since": since, "timeout": "500"})
            since = j["next_batch"]
            seqs += [e["content"]["seq"] for e in j.get("to_device", {}).get("events", [])
                     if e.get("type") == EVENT_TYPE and e["content"].get("seq", -1) >= 0]
        catchup = last_arrival - t_back
        complete = len(seqs) >= args.messages
        exact = seqs == list(range(args.messages))
        result.update(catchup_s=round(catchup, 2), received=len(seqs),
                      distinct=len(set(seqs)), in_order_exactly_once=exact)
        print(f"  B resumed: {len(seqs)} received ({len(set(seqs))} distinct) in "
              f"{catchup:.2f} s; exactly once and in order: {exact}", flush=True)
        if last_name is not None and room is not None:
            j = bob.ok("POST", "/_matrix/client/v3/keys/query",
                       {"device_keys": {alice.user_id: []}})
            seen = j.get("device_keys", {}).get(alice.user_id, {}).get(alice.device_id, {})
            result["device_name_seen_by_b"] = seen.get("unsigned", {}).get(
                "device_display_name")
            result["device_name_expected"] = last_name
        _report(result, args)
        ok = complete and exact and result["rss_growth_mb"] <= args.rss_target_mb
        return 0 if ok else 1
    except RuntimeError as e:
        print(f"federation_outage: {e}", file=sys.stderr, flush=True)
        _report(result, args)
        return 2
    finally:
        for s in reversed(started):
            s.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"data kept in {work}")


def _report(result: dict[str, Any], args: argparse.Namespace) -> None:
    growth = result.get("rss_growth_mb")
    print("\n| measure | value | target |\n|---|---|---|")
    rows = [
        ("peer", result.get("peer"), ""),
        ("to-device messages queued while B was stopped", result.get("messages"), ""),
        ("queueing rate (msg/s, client API of A)", result.get("queue_rate"), ""),
        ("A worker RSS before / peak (MB)",
         f"{result.get('rss_before_mb')} / {result.get('rss_peak_mb')}", ""),
        ("A worker RSS growth (MB)", growth,
         f"<= {args.rss_target_mb} " + ("PASS" if growth is not None
                                         and growth <= args.rss_target_mb else "MISS")),
        ("catch-up after B resumed (s)", result.get("catchup_s"), ""),
        ("received / distinct", f"{result.get('received')} / {result.get('distinct')}", ""),
        ("exactly once, in order", result.get("in_order_exactly_once"), "True"),
        ("shared room (device-list updates delivered)", result.get("shared_room"), ""),
        ("B sees A's last device name", result.get("device_name_seen_by_b"),
         result.get("device_name_expected", "")),
    ]
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- --rooms

ROOM_EVENT = "org.atrium.bench.outage.room"


def _start(kind: str, directory: Path, ca: Any) -> Any:
    if kind == "synapse":
        from tests.interop.synapse_tls import start_synapse  # noqa: PLC0415

        return start_synapse(directory, free_port(), ca, log_level="WARNING",
                             extra={"federation": {"destination_min_retry_interval": "1s",
                                                   "destination_max_retry_interval": "10s"}})
    return start_server(directory, free_port(), ca, overrides={
        **ATRIUM_OVERRIDES, "federation": {"min_retry_interval": "1s",
                                           "max_retry_interval": "10s"}})


def _room_pid(kind: str, server: Any) -> int:
    """The process that holds the rooms: Atrium's gunicorn worker, Synapse's one process."""
    return server.worker_pids()[0] if kind == "atrium" else server.pid


def _seqs(events: list[dict[str, Any]], tag: str) -> list[int]:
    return [e["content"]["seq"] for e in events
            if e.get("type") == "m.room.message" and e.get("content", {}).get("tag") == tag]


def _all_messages(client: Client, room: str, tag: str, n: int) -> list[int]:
    """Every seq of ``tag`` in the room's /messages, oldest first (backwards from now, back to
    seq 0 or the room's start)."""
    out: list[int] = []
    query = {"dir": "b", "limit": "1000"}
    # no bound on pages but the room's start: a server that backfills answers short pages
    # (Synapse: at most one backfill request, ≤100 events, per page) and even empty ones with
    # an ``end`` while it is still fetching
    for _ in range(10 * n + 100):
        j = client.ok("GET", f"/_matrix/client/v3/rooms/{_q(room)}/messages", query=query,
                      timeout=120)
        chunk = j.get("chunk", [])
        out += _seqs(chunk, tag)
        if not j.get("end") or (not chunk and j["end"] == query.get("from")) or 0 in out or any(
                e.get("type") == "m.room.create" for e in chunk):
            break
        query["from"] = j["end"]
    out.reverse()
    return out


def room_outage(sender_kind: str, peer_kind: str, n: int, work: Path, ca: Any,
                deadline: float) -> dict[str, Any]:
    """One run: A (``sender_kind``) sends ``n`` room messages while B (``peer_kind``) is
    frozen; A's RSS growth and B's catch-up."""
    result: dict[str, Any] = {"sender": sender_kind, "peer": peer_kind, "messages": n}
    started: list[Any] = []
    tag = uuid.uuid4().hex[:8]
    try:
        a = _start(sender_kind, work / f"{sender_kind}-a", ca)
        started.append(a)
        b = _start(peer_kind, work / f"{peer_kind}-b", ca)
        started.append(b)
        print(f"A = {sender_kind} {a.server_name}; B = {peer_kind} {b.server_name} "
              f"(pids {b.pids()})", flush=True)
        alice = Client(a.base_url, ca.cert_path, a.register("alice", "bench-pass-a"))
        bob = Client(b.base_url, ca.cert_path, b.register("bob", "bench-pass-b"))
        room = alice.ok("POST", "/_matrix/client/v3/createRoom",
                        {"preset": "public_chat"})["room_id"]
        bob.ok("POST", f"/_matrix/client/v3/join/{_q(room)}", {}, timeout=60,
               query={"server_name": a.server_name, "via": a.server_name})
        since = bob.ok("GET", "/_matrix/client/v3/sync", query={"timeout": "0"})["next_batch"]
        alice.ok("PUT", f"/_matrix/client/v3/rooms/{_q(room)}/send/m.room.message/warm",
                 {"msgtype": "m.text", "body": "warm-up", "tag": "warm", "seq": -1})
        t0 = time.monotonic()
        while True:
            j = bob.ok("GET", "/_matrix/client/v3/sync", query={"since": since,
                                                                "timeout": "2000"})
            since = j["next_batch"]
            tl = j.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
            if _seqs(tl.get("events", []), "warm"):
                break
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the warm-up message did not reach B in 60 s")
        pid = _room_pid(sender_kind, a)
        time.sleep(2)
        rss_before = rss_kb(pid)
        peak = [rss_before]
        sampling = threading.Event()

        def sampler() -> None:
            while not sampling.wait(0.1):
                peak[0] = max(peak[0], rss_kb(pid))

        threading.Thread(target=sampler, daemon=True).start()
        b_pids = b.pids()
        _signal_all(b_pids, signal.SIGSTOP)
        try:
            t_queue = time.monotonic()
            for i in range(n):
                alice.ok("PUT", f"/_matrix/client/v3/rooms/{_q(room)}/send/m.room.message/"
                                f"{tag}-{i}",
                         {"msgtype": "m.text", "body": f"outage {i}", "tag": tag, "seq": i})
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deadline reached after sending {i + 1} messages")
            queue_s = time.monotonic() - t_queue
            time.sleep(2)
        finally:
            sampling.set()
        peak[0] = max(peak[0], rss_kb(pid))
        result.update(send_rate=round(n / queue_s, 1),
                      rss_before_mb=round(rss_before / 1024, 1),
                      rss_peak_mb=round(peak[0] / 1024, 1),
                      rss_growth_mb=round((peak[0] - rss_before) / 1024, 1))
        print(f"  sent {n} at {n / queue_s:.0f}/s while B was frozen; A RSS "
              f"+{(peak[0] - rss_before) / 1024:.1f} MB", flush=True)

        _signal_all(b_pids, signal.SIGCONT)
        t_back = time.monotonic()
        bob.call("GET", f"/_matrix/client/v3/profile/{_q(alice.user_id)}", timeout=30)
        last_seen = None
        while time.monotonic() < deadline and last_seen is None:
            j = bob.ok("GET", "/_matrix/client/v3/sync", query={"since": since,
                                                                "timeout": "5000"}, timeout=60)
            since = j["next_batch"]
            tl = j.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
            if n - 1 in _seqs(tl.get("events", []), tag):
                last_seen = time.monotonic() - t_back
        result["catchup_last_in_sync_s"] = round(last_seen, 2) if last_seen else None
        got: list[int] = []
        while time.monotonic() < deadline:
            got = _all_messages(bob, room, tag, n)
            if len(got) >= n:
                break
            time.sleep(2)
        result.update(catchup_all_in_messages_s=round(time.monotonic() - t_back, 2)
                      if len(got) >= n else None,
                      received=len(got), distinct=len(set(got)),
                      in_order_exactly_once=got == list(range(n)))
        print(f"  B resumed: last message in /sync after {result['catchup_last_in_sync_s']} s, "
              f"{len(got)} in /messages after {result['catchup_all_in_messages_s']} s; "
              f"exactly once in order: {result['in_order_exactly_once']}", flush=True)
    except RuntimeError as e:
        result["error"] = str(e)[:300]
        print(f"  {sender_kind} -> {peer_kind}: {e}", flush=True)
    finally:
        for srv in reversed(started):
            srv.stop()
    return result


def run_rooms(args: argparse.Namespace) -> int:
    work = Path(args.dir or tempfile.mkdtemp(prefix="atrium-outage-rooms-"))
    work.mkdir(parents=True, exist_ok=True)
    ca = make_ca(work, name="Atrium outage bench CA")
    deadline = time.monotonic() + args.deadline
    runs = [("atrium", args.peer, args.messages)]
    if args.mirror:
        runs += [("atrium", "synapse", args.mirror_messages),
                 ("synapse", "atrium", args.mirror_messages)]
    results = []
    try:
        for i, (sender, peer, n) in enumerate(runs):
            results.append(room_outage(sender, peer, n, work / f"run{i}", ca, deadline))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"data kept in {work}")
    print("\n| room messages, B frozen | " + " | ".join(
        f"{r['sender']} -> {r['peer']}, {r['messages']}" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name, k in (("send rate while B frozen (msg/s)", "send_rate"),
                    ("A RSS before / peak (MB)", None),
                    ("A RSS growth (MB)", "rss_growth_mb"),
                    ("catch-up: last message in B's /sync (s)", "catchup_last_in_sync_s"),
                    ("catch-up: all in B's /messages (s)", "catchup_all_in_messages_s"),
                    ("received / distinct", None),
                    ("exactly once, in order", "in_order_exactly_once"),
                    ("error", "error")):
        if k is None and name.startswith("A RSS"):
            cells = [f"{r.get('rss_before_mb')} / {r.get('rss_peak_mb')}" for r in results]
        elif k is None:
            cells = [f"{r.get('received')} / {r.get('distinct')}" for r in results]
        else:
            cells = [str(r.get(k, "")) for r in results]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(target: Atrium's RSS growth <= {args.rss_target_mb} MB for "
          f"{args.messages} messages; its catch-up a fifth of Synapse's)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    first = results[0]
    ok = first.get("in_order_exactly_once") and \
        (first.get("rss_growth_mb") or 0) <= args.rss_target_mb
    return 0 if ok else (2 if "error" in first else 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", choices=["atrium", "synapse"], default="atrium")
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--device-every", type=int, default=100,
                   help="rename alice's device every N messages (0: never)")
    p.add_argument("--deadline", type=float, default=600.0, help="whole run, seconds")
    p.add_argument("--rss-target-mb", type=float, default=10.0)
    p.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--rooms", action="store_true",
                   help="room messages (a room shared with B) instead of to-device messages")
    p.add_argument("--mirror", action="store_true",
                   help="with --rooms: also Atrium -> frozen Synapse and Synapse -> frozen "
                        "Atrium with --mirror-messages each")
    p.add_argument("--mirror-messages", type=int, default=500)
    args = p.parse_args(argv)
    return run_rooms(args) if args.rooms else run(args)


if __name__ == "__main__":
    raise SystemExit(main())
