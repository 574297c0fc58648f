"""Benchmark: /sync wake-ups, idle long-polls and initial sync, optionally side by side with
Synapse.

    .venv/bin/python bench/sync_wake.py [--synapse] [--idle 1000] [--rooms 100 --messages 50]
    .venv/bin/python bench/sync_wake.py --url http://127.0.0.1:8008 --secret SECRET --pid PID

Without ``--url`` it starts Atrium itself (``gunicorn -k gevent web:app``, SQLite, rate
limits off; bench/harness.py's launcher) and, with ``--synapse``, Synapse from the scratch
venv of bench/synapse_peer.py with the same settings; both stay up for the whole run and
are measured one at a time, phase by phase (the wake phases ``--rounds`` times, alternating
between the servers), since this machine's speed drifts within minutes; the server not
being measured is stopped meanwhile (SIGSTOP/SIGCONT), so its timers and background jobs
take no CPU from the one that is.  Users come from
the shared-secret registration API.  Phases:

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
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness as rs  # noqa: E402
from profiling import profile  # noqa: E402
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

def wake_latency(server: rs.Server, syncers: int, wakes: int, profile_s: float = 0
                 ) -> dict[str, Any]:
    sender, *members = register_many(server, f"w{syncers}_", syncers + 1)
    room = sender.json("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})[
        "room_id"]
    pool = gevent.pool.Pool(16)
    pool.map(lambda c: c.json("POST", f"/_matrix/client/v3/join/{quote(room)}", {}), members)
    sent_at: dict[str, float] = {}
    acked_at: dict[str, float] = {}
    arrivals: list[tuple[str, float]] = []
    send_ms: list[float] = []
    seen = [0] * len(members)
    want = [0]  # messages every syncer must hold before the next send
    all_seen = gevent.event.Event()  # set by the syncer that completes a message (no polling)
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
                    arrivals.append((tag, got))
                    seen[i] += 1
                    if min(seen) >= want[0]:
                        all_seen.set()

    greenlets = [gevent.spawn(syncer, i, c) for i, c in enumerate(members)]
    gevent.sleep(1.0 + syncers * 0.01)  # everyone long-polling
    spy = None
    if profile_s:  # the sends and wake-ups only, not the set-up
        spy = gevent.spawn(profile, server.main_pid(), profile_s,
                           Path(tempfile.gettempdir()) / f"sync-wake-{os.getpid()}")
    cpu0 = rs.cpu_seconds(server.pids())
    for k in range(wakes):
        tag = f"wake {k}"
        want[0] = k + 1
        all_seen.clear()
        sent_at[tag] = t_send = time.perf_counter()
        sender.json("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/w{k}",
                    {"msgtype": "m.text", "body": tag})
        acked_at[tag] = time.perf_counter()
        send_ms.append((acked_at[tag] - t_send) * 1000)
        if min(seen) < k + 1:
            all_seen.wait(10)
        gevent.sleep(0.02)
    cpu_ms = (rs.cpu_seconds(server.pids()) - cpu0) * 1000 / wakes
    stop = True
    if spy is not None:
        say(spy.get())
    sender.json("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/end",
                {"msgtype": "m.text", "body": "end"})
    gevent.joinall(greenlets, timeout=10)
    for c in [sender, *members]:
        c.close()
    latencies = [(got - sent_at[tag]) * 1000 for tag, got in arrivals]
    # from the send's 200: a syncer may hold its answer before the sender reads its 200
    # (the wake-up happens right after the commit), which counts as 0
    after_ack = [max(0.0, (got - acked_at[tag]) * 1000) for tag, got in arrivals]
    return {"syncers": syncers, "wakes": wakes, "missing": syncers * wakes - len(latencies),
            "latencies": latencies, "after_ack": after_ack, "send_ms": send_ms,
            "cpu_ms": [cpu_ms]}


def wake_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles over the samples of every round of one wake phase."""
    lat = [v for r in rounds for v in r["latencies"]]
    ack = [v for r in rounds for v in r["after_ack"]]
    send = [v for r in rounds for v in r["send_ms"]]
    cpu = [v for r in rounds for v in r["cpu_ms"]]
    return {"syncers": rounds[0]["syncers"], "rounds": len(rounds),
            "wakes": sum(r["wakes"] for r in rounds), "samples": len(lat),
            "missing": sum(r["missing"] for r in rounds),
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "ack_p50_ms": pct(ack, 50), "ack_p99_ms": pct(ack, 99),
            "send_p50_ms": pct(send, 50), "send_p99_ms": pct(send, 99),
            "cpu_ms_per_wake": statistics.mean(cpu),
            # one round's bad moment should show as such
            "round_p99_ms": [round(pct(r["latencies"], 99), 1) for r in rounds],
            "max_ms": max(lat) if lat else None}


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
    fine0, ticks0, t0 = (rs.thread_cpu_ns(server.pids()), rs.cpu_seconds(server.pids()),
                         time.monotonic())
    gevent.sleep(window)
    fine1, ticks1, t1 = (rs.thread_cpu_ns(server.pids()), rs.cpu_seconds(server.pids()),
                         time.monotonic())
    spent = rs.cpu_seconds_between(fine0, fine1) if fine0 and fine1 else ticks1 - ticks0
    cpu = spent / (t1 - t0) * 100
    early = sum(g.dead for g in held)
    gevent.killall(held, block=False)
    for c in conns:
        c.close()
    return {"idle_syncs": n, "rss_mb": rss, "rss_before_mb": rss_before,
            "cpu_pct": cpu, "returned_early": early}


def initial_sync(server: rs.Server, rooms: int, messages: int, runs: int = 3
                 ) -> dict[str, Any]:
    localpart = f"initial{int(time.time())}"
    login = server.register(localpart, "pw")
    owner = Conn(server.base_url, login["access_token"])
    senders = [Conn(server.base_url, owner.token) for _ in range(8)]
    room_ids: list[str] = [""] * rooms

    def create(k: int) -> None:  # one connection per greenlet: never two requests on one
        for i in range(k, rooms, 8):
            room_ids[i] = senders[k].json("POST", "/_matrix/client/v3/createRoom", {
                "name": f"room {i}", "creation_content": {"org.atrium.bench": i}})["room_id"]

    gevent.joinall([gevent.spawn(create, k) for k in range(8)], raise_error=True)
    t0 = time.monotonic()

    def fill(k: int) -> None:
        c = senders[k]
        for room in room_ids[k::8]:
            for m in range(messages):
                c.json("PUT", f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/"
                       f"i{m}", {"msgtype": "m.text", "body": f"message {m}"})

    gevent.joinall([gevent.spawn(fill, k) for k in range(8)], raise_error=True)
    fill_s = time.monotonic() - t0
    gevent.sleep(1)
    times, size = [], 0
    for _ in range(runs):
        # a fresh device each time, as a new client would: a server may keep a finished
        # /sync answer for a repeat of the same request (Synapse does, for minutes)
        device = Conn(server.base_url, "")
        device.token = device.json("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "password": "pw",
            "identifier": {"type": "m.id.user", "user": localpart}})["access_token"]
        t = time.perf_counter()
        data = device.call("GET", "/_matrix/client/v3/sync?timeout=0")
        times.append((time.perf_counter() - t) * 1000)
        device.close()
        body = json.loads(data)
        size = len(data)
        assert len(body["rooms"]["join"]) >= rooms
    for c in [owner, *senders]:
        c.close()
    return {"rooms": rooms, "messages": messages, "fill_s": fill_s,
            "initial_sync_ms": statistics.median(times), "first_ms": times[0],
            "response_kb": size / 1024}


def run_all(servers: list[rs.Server], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every phase on every server, phase by phase and server after server (the wake
    phases ``--rounds`` times, alternating), so that the figures compared were measured
    minutes apart at most: this machine's speed drifts by tens of percent over a run."""
    outs: list[dict[str, Any]] = [{"server": s.name} for s in servers]
    for server in servers:
        say(f"{server.name}: idle RSS {rs.rss_mb([server.main_pid()]):.1f} MB")
    for n in args.syncers:
        rounds: list[list[dict[str, Any]]] = [[] for _ in servers]
        for r in range(args.rounds):
            for i, server in enumerate(servers):
                say(f"{server.name}: wake latency, {n} syncers (round {r + 1})")
                profile_s = args.profile if (n == max(args.syncers) and r == 0
                                             and server.name.startswith("Atrium")) else 0
                with rs.alone(server, servers):
                    rounds[i].append(wake_latency(server, n, args.wakes, profile_s))
        for i, server in enumerate(servers):
            outs[i][f"wake{n}"] = wake_summary(rounds[i])
            say(f"  {server.name}: {outs[i][f'wake{n}']}")
    for i, server in enumerate(servers):
        if args.idle:
            say(f"{server.name}: {args.idle} idle long-polls")
            with rs.alone(server, servers):
                outs[i]["idle"] = idle_syncs(server, args.idle, args.idle_window)
            say(f"  {outs[i]['idle']}")
    for i, server in enumerate(servers):
        if args.rooms:
            say(f"{server.name}: initial sync, {args.rooms} rooms x {args.messages} messages")
            with rs.alone(server, servers):
                outs[i]["initial"] = initial_sync(server, args.rooms, args.messages)
            say(f"  {outs[i]['initial']}")
    return outs


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: label, Atrium, Synapse, format, absolute target (or None), judged (5x applies)
Row = tuple[str, "float | None", "float | None", str, "float | None", bool]


def rows(a: dict[str, Any], b: dict[str, Any] | None, syncers: list[int]) -> list[Row]:
    """The table's rows; lower is better everywhere."""
    def get(r: dict[str, Any] | None, *path: str) -> float | None:
        for k in path:
            if not isinstance(r, dict) or k not in r:
                return None
            r = r[k]
        return float(r)  # type: ignore[arg-type]

    out: list[Row] = []
    for n in syncers:
        w = f"wake{n}"
        t50 = TARGETS["wake8_p50"] if n == 8 else None
        t99 = TARGETS["wake8_p99"] if n == 8 else None
        out += [(f"wake p50, {n} syncers, from send start (ms)", get(a, w, "p50_ms"),
                 get(b, w, "p50_ms"), ".1f", t50, True),
                (f"wake p99, {n} syncers, from send start (ms)", get(a, w, "p99_ms"),
                 get(b, w, "p99_ms"), ".1f", t99, True),
                (f"wake p50, {n} syncers, from the send's 200 (ms)", get(a, w, "ack_p50_ms"),
                 get(b, w, "ack_p50_ms"), ".1f", None, True),
                (f"wake p99, {n} syncers, from the send's 200 (ms)", get(a, w, "ack_p99_ms"),
                 get(b, w, "ack_p99_ms"), ".1f", None, True),
                (f"  (the send itself, p50, {n} syncers, ms)", get(a, w, "send_p50_ms"),
                 get(b, w, "send_p50_ms"), ".1f", None, False),
                (f"  (server CPU per message, {n} syncers, ms)", get(a, w, "cpu_ms_per_wake"),
                 get(b, w, "cpu_ms_per_wake"), ".1f", None, False)]
    if "idle" in a:
        n = a["idle"]["idle_syncs"]
        cost = (lambda r: None if r is None or "idle" not in r else
                r["idle"]["rss_mb"] - r["idle"]["rss_before_mb"])
        out += [(f"{n} idle syncs: RSS added (MB)", cost(a), cost(b), ".1f",
                 TARGETS["idle_rss_mb"], True),
                (f"  ({n} idle syncs: server RSS in all, MB)", get(a, "idle", "rss_mb"),
                 get(b, "idle", "rss_mb"), ".1f", None, False),
                (f"{n} idle syncs: server CPU (%)", get(a, "idle", "cpu_pct"),
                 get(b, "idle", "cpu_pct"), ".2f", TARGETS["idle_cpu_pct"], True)]
    if "initial" in a:
        i = a["initial"]
        out += [(f"initial sync, {i['rooms']} rooms x {i['messages']} msgs (ms)",
                 get(a, "initial", "initial_sync_ms"), get(b, "initial", "initial_sync_ms"),
                 ".0f", None, True)]
    return out


def table(results: list[dict[str, Any]], syncers: list[int]) -> str:
    """Atrium, Synapse, ratio (Synapse / Atrium: how many times better), target, verdict:
    PASS when the absolute target (if any) holds and the ratio is at least 5."""
    a = results[0]
    b = results[1] if len(results) > 1 else None
    lines = [f"{'':52}{'Atrium':>10}{'Synapse':>10}{'ratio':>8}  target         verdict"]
    for label, av, bv, f, target, judged in rows(a, b, syncers):
        ratio = None
        if av is not None and bv is not None:
            ratio = bv / av if av > 0 else float("inf") if bv > 0 else 1.0
        strict = "CPU" in label  # "< 5 % CPU"
        want = [] if target is None else [f"{'<' if strict else '<='} {target:g}"]
        if b is not None and judged:
            want.append(">= 5x")
        ok = (av is not None
              and (target is None or (av < target if strict else av <= target))
              and (b is None or not judged or (ratio or 0) >= 5))
        verdict = ("PASS" if ok else "MISS") if want else ""
        lines.append(f"{label:52}{_num(av, f):>10}{_num(bv, f):>10}"
                     f"{_num(ratio, '.1f') + ('x' if ratio is not None else ''):>8}  "
                     f"{' & '.join(want):15}{verdict}")
    return "\n".join(lines)


def _num(v: float | None, f: str) -> str:
    if v is None:
        return "-"
    return "inf" if v == float("inf") else format(v, f)


def start_synapse(workdir: Path) -> rs.Server:
    """bench/synapse_peer.py's Synapse, with bcrypt at 4 rounds like the Atrium we start
    (registering 1,000 users at Synapse's default 12 rounds takes minutes)."""
    import yaml

    synapse_peer.ensure_venv()
    port = rs.free_port()
    config = synapse_peer.write_config(workdir, port)
    raw = yaml.safe_load(config.read_text())
    raw["bcrypt_rounds"] = 4
    config.write_text(yaml.safe_dump(raw))
    s = synapse_peer.start(workdir, port)  # keeps our key: it only updates its own
    return rs.Server(f"Synapse {synapse_peer.synapse_version()}", s.base_url,
                     lambda: [s.process.pid, *rs.children_of(s.process.pid)],
                     lambda: s.process.pid, s.register, s.stop)


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
    p.add_argument("--wakes", type=int, default=30, help="messages per wake round")
    p.add_argument("--rounds", type=int, default=3,
                   help="wake rounds per phase and server, alternating between the servers")
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--idle-window", type=float, default=10.0)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--messages", type=int, default=50)
    p.add_argument("--profile", type=float, default=0, metavar="S",
                   help="py-spy the server for S s during the largest wake phase")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory (databases, server logs)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="atrium-sync-bench-"))
    results = []
    servers: list[rs.Server] = []
    try:
        # both servers up for the whole run (an idle one costs ~1 % of a core), measured
        # one at a time
        servers.append(external(args) if args.url
                       else rs.start_atrium(workdir / "atrium", "5m"))
        if args.synapse:
            servers.append(start_synapse(workdir / "synapse"))
        results = run_all(servers, args)
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - stop the others anyway
                say(f"stopping {server.name}: {e}")
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"sync_wake: SQLite, rate limits off, {os.cpu_count()} cores; client in-process "
          "(gevent + http.client)")
    print(table(results, args.syncers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
