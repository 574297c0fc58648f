"""Benchmark: /sync wake-ups, idle long-polls and initial sync, optionally side by side with
Synapse.

    .venv/bin/python bench/sync_wake.py [--synapse] [--idle 1000] [--rooms 100 --messages 50]
    .venv/bin/python bench/sync_wake.py --url http://127.0.0.1:8008 --secret SECRET --pid PID

Without ``--url`` it starts Atrium itself (``gunicorn -k gevent web:app``, SQLite, rate
limits off; bench/rooms_send.py's launcher) and, with ``--synapse``, Synapse from the scratch
venv of bench/synapse_peer.py with the same settings.  Users come from the shared-secret
registration API.  Phases:

1. wake latency: N syncers (8, then 100) long-poll ``/sync`` in one room; a sender posts
   ``--wakes`` messages one at a time; for each (syncer, message) the time from the start of
   the send request to the syncer holding the response — p50 / p99;
2. idle: ``--idle`` users each hold one long-polling /sync (60 s timeout) with nothing
   happening; the server's RSS and CPU% (``/proc``) over a ``--idle-window`` s window;
3. initial sync: a user in ``--rooms`` rooms of ``--messages`` messages each; the time of a
   full initial /sync (median of 3).

The client is one gevent process on plain http.client keep-alive connections, so on a 2-core
machine it competes with the server for CPU: the numbers are upper bounds.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote, urlencode  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import rooms_send as rs  # noqa: E402
import synapse_peer  # noqa: E402

TARGETS = {"wake8_p50": 10.0, "wake8_p99": 50.0, "idle_rss_mb": 100.0, "idle_cpu_pct": 5.0}
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 20},
                                   "state": {"lazy_load_members": True}},
                          "presence": {"types": []}})


class Conn:
    """One keep-alive connection for one user."""

    def __init__(self, base: str, token: str) -> None:
        host, port = base.split("//", 1)[1].split(":")
        self.host, self.port, self.token = host, int(port), token
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                self.conn.request(method, path, payload, headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"{method} {path[:80]}: {r.status} {data[:200]!r}")
                return data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None) -> Any:
        return json.loads(self.call(method, path, body))

    def sync(self, since: str | None, timeout_ms: int) -> bytes:
        q = {"timeout": str(timeout_ms), "filter": SYNC_FILTER, "set_presence": "offline"}
        if since:
            q["since"] = since
        return self.call("GET", "/_matrix/client/v3/sync?" + urlencode(q),
                         timeout=timeout_ms / 1000 + 30)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def register_many(server: rs.Server, prefix: str, n: int) -> list[Conn]:
    pool = gevent.pool.Pool(16)
    stamp = int(time.time())
    logins = pool.map(lambda i: server.register(f"{prefix}{stamp}x{i}", "pw"), range(n))
    return [Conn(server.base_url, login["access_token"]) for login in logins]


def pct(values: list[float], p: float) -> float:
    return rs.pct(values, p)


# ------------------------------------------------------------------------------ phases

def wake_latency(server: rs.Server, syncers: int, wakes: int) -> dict[str, float]:
    sender, *members = register_many(server, f"w{syncers}_", syncers + 1)
    room = sender.json("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})[
        "room_id"]
    pool = gevent.pool.Pool(16)
    pool.map(lambda c: c.json("POST", f"/_matrix/client/v3/join/{quote(room)}", {}), members)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    send_ms: list[float] = []
    seen = [0] * len(members)
    stop = False

    def syncer(i: int, c: Conn) -> None:
        since = json.loads(c.sync(None, 0))["next_batch"]
        while not stop:
            data = c.sync(since, 30_000)
            got = time.perf_counter()
            body = json.loads(data)
            since = body["next_batch"]
            joined = body.get("rooms", {}).get("join", {}).get(room)
            for ev in (joined or {}).get("timeline", {}).get("events", []):
                tag = ev.get("content", {}).get("body", "")
                if tag in sent_at:
                    latencies.append((got - sent_at[tag]) * 1000)
                    seen[i] += 1

    greenlets = [gevent.spawn(syncer, i, c) for i, c in enumerate(members)]
    gevent.sleep(1.0 + syncers * 0.01)  # everyone long-polling
    for k in range(wakes):
        tag = f"wake {k}"
        sent_at[tag] = t_send = time.perf_counter()
        sender.json("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/w{k}",
                    {"msgtype": "m.text", "body": tag})
        send_ms.append((time.perf_counter() - t_send) * 1000)
        deadline = time.monotonic() + 10
        while min(seen) < k + 1 and time.monotonic() < deadline:
            gevent.sleep(0.002)
        gevent.sleep(0.02)
    stop = True
    sender.json("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/end",
                {"msgtype": "m.text", "body": "end"})
    gevent.joinall(greenlets, timeout=10)
    for c in [sender, *members]:
        c.close()
    return {"syncers": syncers, "wakes": wakes, "samples": len(latencies),
            "missing": syncers * wakes - len(latencies),
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "send_p50_ms": pct(send_ms, 50)}


def idle_syncs(server: rs.Server, n: int, window: float) -> dict[str, float]:
    conns = register_many(server, "idle", n)
    pool = gevent.pool.Pool(32)
    tokens = pool.map(lambda c: json.loads(c.sync(None, 0))["next_batch"], conns)
    gevent.sleep(2)
    rss_before = rs.rss_mb([server.main_pid()])
    held = [gevent.spawn(c.sync, t, 60_000) for c, t in zip(conns, tokens)]
    gevent.sleep(5)  # all parked
    if any(g.dead for g in held):
        raise RuntimeError("an idle sync returned early")
    rss = rs.rss_mb([server.main_pid()])
    cpu0, t0 = rs.cpu_seconds(server.pids()), time.monotonic()
    gevent.sleep(window)
    cpu = (rs.cpu_seconds(server.pids()) - cpu0) / (time.monotonic() - t0) * 100
    early = sum(g.dead for g in held)
    gevent.killall(held, block=False)
    for c in conns:
        c.close()
    return {"idle_syncs": n, "rss_mb": rss, "rss_before_mb": rss_before,
            "cpu_pct": cpu, "returned_early": early}


def initial_sync(server: rs.Server, rooms: int, messages: int) -> dict[str, float]:
    (owner,) = register_many(server, "initial", 1)
    senders = [Conn(server.base_url, owner.token) for _ in range(8)]
    room_ids = gevent.pool.Pool(8).map(
        lambda i: senders[i % 8].json("POST", "/_matrix/client/v3/createRoom",
                                      {"name": f"room {i}", "creation_content":
                                       {"org.atrium.bench": i}})["room_id"], range(rooms))
    t0 = time.monotonic()

    def fill(k: int) -> None:
        c = senders[k]
        for room in room_ids[k::8]:
            for m in range(messages):
                c.json("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/"
                       f"i{m}", {"msgtype": "m.text", "body": f"message {m}"})

    gevent.joinall([gevent.spawn(fill, k) for k in range(8)], raise_error=True)
    fill_s = time.monotonic() - t0
    times, size = [], 0
    for _ in range(3):
        t = time.perf_counter()
        data = owner.call("GET", "/_matrix/client/v3/sync?timeout=0")
        times.append((time.perf_counter() - t) * 1000)
        body = json.loads(data)
        size = len(data)
        assert len(body["rooms"]["join"]) >= rooms
    return {"rooms": rooms, "messages": messages, "fill_s": fill_s,
            "initial_sync_ms": statistics.median(times), "first_ms": times[0],
            "response_kb": size / 1024}


def run_all(server: rs.Server, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"server": server.name}
    say(f"{server.name}: idle RSS {rs.rss_mb([server.main_pid()]):.1f} MB")
    for n in args.syncers:
        say(f"{server.name}: wake latency, {n} syncers")
        out[f"wake{n}"] = wake_latency(server, n, args.wakes)
        say(f"  {out[f'wake{n}']}")
    if args.idle:
        say(f"{server.name}: {args.idle} idle long-polls")
        out["idle"] = idle_syncs(server, args.idle, args.idle_window)
        say(f"  {out['idle']}")
    if args.rooms:
        say(f"{server.name}: initial sync, {args.rooms} rooms x {args.messages} messages")
        out["initial"] = initial_sync(server, args.rooms, args.messages)
        say(f"  {out['initial']}")
    return out


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def table(results: list[dict[str, Any]], syncers: list[int]) -> str:
    rows = []
    for n in syncers:
        rows.append((f"wake p50 / p99, {n} syncers (ms)",
                     [f"{r[f'wake{n}']['p50_ms']:.1f} / {r[f'wake{n}']['p99_ms']:.1f}"
                      if f"wake{n}" in r else "-" for r in results]))
    if "idle" in results[0]:
        rows.append((f"{results[0]['idle']['idle_syncs']} idle syncs: RSS MB (before)",
                     [f"{r['idle']['rss_mb']:.1f} ({r['idle']['rss_before_mb']:.1f})"
                      if "idle" in r else "-" for r in results]))
        rows.append(("idle syncs: server CPU %",
                     [f"{r['idle']['cpu_pct']:.2f}" if "idle" in r else "-" for r in results]))
    if "initial" in results[0]:
        i = results[0]["initial"]
        rows.append((f"initial sync, {i['rooms']} rooms x {i['messages']} msgs (ms)",
                     [f"{r['initial']['initial_sync_ms']:.0f}" if "initial" in r else "-"
                      for r in results]))
    width = max(len(label) for label, _ in rows) + 2
    head = " " * width + "".join(f"{r['server'][:24]:>26}" for r in results)
    return "\n".join([head] + [label.ljust(width) + "".join(f"{v:>26}" for v in vals)
                               for label, vals in rows])


def external(args: argparse.Namespace) -> rs.Server:
    from atrium.cli import register_user

    pid = args.pid or 0
    return rs.Server("Atrium (external)", args.url.rstrip("/"),
                     lambda: [pid, *rs.children_of(pid)] if pid else [],
                     lambda: pid,
                     lambda u, p, admin=False: register_user(args.url, args.secret, u, p,
                                                             admin=admin),
                     lambda: None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running Atrium (default: start one)")
    p.add_argument("--secret", help="its registration_shared_secret")
    p.add_argument("--pid", type=int, help="its worker pid (RSS/CPU)")
    p.add_argument("--synapse", action="store_true", help="also run against Synapse")
    p.add_argument("--syncers", type=int, nargs="+", default=[8, 100])
    p.add_argument("--wakes", type=int, default=30)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--idle-window", type=float, default=10.0)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--messages", type=int, default=50)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="atrium-sync-bench-"))
    results = []
    try:
        if args.url:
            results.append(run_all(external(args), args))
        else:
            server = rs.start_atrium(workdir / "atrium", "5m")
            try:
                results.append(run_all(server, args))
            finally:
                server.stop()
        if args.synapse:
            synapse_peer.ensure_venv()
            server = rs.start_synapse(workdir / "synapse")
            try:
                results.append(run_all(server, args))
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"sync_wake: SQLite, rate limits off, {os.cpu_count()} cores; client in-process "
          "(gevent + http.client)")
    print(table(results, args.syncers))
    a = results[0]
    print()
    print("Atrium targets:")
    if "wake8" in a:
        print(f"  wake p50 <= {TARGETS['wake8_p50']} ms with 8 syncers: "
              f"{a['wake8']['p50_ms']:.1f}")
        print(f"  wake p99 <= {TARGETS['wake8_p99']} ms with 8 syncers: "
              f"{a['wake8']['p99_ms']:.1f}")
    if "idle" in a:
        print(f"  {a['idle']['idle_syncs']} idle syncs <= {TARGETS['idle_rss_mb']} MB: "
              f"{a['idle']['rss_mb']:.1f};  < {TARGETS['idle_cpu_pct']}% CPU: "
              f"{a['idle']['cpu_pct']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
