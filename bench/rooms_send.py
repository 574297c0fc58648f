"""Benchmark: message sends over HTTP against a running Atrium, optionally side by side with
Synapse.

One command::

    .venv/bin/python bench/rooms_send.py [--synapse] [--duration 10] [--rooms 10000]

It starts Atrium (``gunicorn -k gevent web:app``, SQLite, rate limits off, a short
``actors.idle_timeout``) on a free loopback port — and with ``--synapse`` Synapse 1.163.x
from PyPI in a scratch venv outside the repo (``bench/synapse_peer.py``), same settings —
and drives each over plain HTTP/1.1 keep-alive connections:

1. one client sending sequentially into one room;
2. 8 clients sending concurrently into one room;
3. 8 clients sending concurrently into 8 rooms (one each);

For each: messages/s, send latency p50/p99 (client side), server CPU ms per message (the
``utime + stime`` delta of the server's processes in ``/proc/PID/stat`` over the phase,
divided by the messages sent).  Then memory: the server's RSS when idle (after start-up and
user registration), after creating ``--rooms`` rooms (8 clients in parallel), and — Atrium
only — after those room actors were passivated (the admin API's ``rooms`` supervisor has no
children left).  Prints a side-by-side table with the targets and the Atrium/Synapse ratios.

Both servers log at WARNING (request logging off) so the numbers are the servers', not their
log handlers'.  ``--profile`` runs py-spy (from the scratch venv; never the project venv)
against the Atrium worker during phase 2 and prints where the time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import synapse_peer  # noqa: E402
from harness import (Client, Server, cpu_seconds, pct, rss_mb,  # noqa: E402
                     start_atrium, start_synapse)
from profiling import profile  # noqa: E402

CLIENTS = 8
TARGETS = {  # Atrium's targets on this 2-core machine with SQLite (issue 4)
    "seq_rate": 300.0,
    "one_room_rate": 600.0,
    "cpu_ms": 2.0,
    "idle_rss_mb": 80.0,
    "after_rss_over_idle_mb": 50.0,
}


@dataclass
class PhaseResult:
    messages: int
    errors: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_msg: float
    error_sample: list[str] = field(default_factory=list)




def run_phase(server: Server, pairs: list[tuple[Client, str]], duration: float,
              max_per_client: int = 100_000) -> PhaseResult:
    """Every (client, room) pair sends sequentially in its own thread for ``duration`` s."""
    for c, room in pairs:                   # warm-up: connections, caches, actors
        for _ in range(10):
            c.send(room)
    latencies: list[list[float]] = [[] for _ in pairs]
    errors: list[list[str]] = [[] for _ in pairs]
    barrier = threading.Barrier(len(pairs) + 1)
    stop_at = [0.0]

    def worker(i: int, c: Client, room: str) -> None:
        barrier.wait()
        for _ in range(max_per_client):
            if time.perf_counter() >= stop_at[0]:
                return
            try:
                status, dt = c.send(room)
            except Exception as e:  # noqa: BLE001
                errors[i].append(repr(e))
                continue
            if status == 200:
                latencies[i].append(dt)
            else:
                errors[i].append(str(status))

    threads = [threading.Thread(target=worker, args=(i, c, r), daemon=True)
               for i, (c, r) in enumerate(pairs)]
    for t in threads:
        t.start()
    pids = server.pids()
    cpu0 = cpu_seconds(pids)
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - cpu0
    lat = [x for xs in latencies for x in xs]
    errs = [e for es in errors for e in es]
    n = len(lat)
    return PhaseResult(n, len(errs), elapsed, n / elapsed, pct(lat, 50) * 1000,
                       pct(lat, 99) * 1000, cpu * 1000 / max(n, 1), errs[:5])


def create_rooms(clients: list[Client], total: int, time_cap: float) -> tuple[int, float]:
    """``total`` rooms from all clients in parallel (bounded by ``time_cap`` seconds)."""
    quota = [total // len(clients) + (i < total % len(clients)) for i in range(len(clients))]
    made = [0] * len(clients)
    deadline = time.monotonic() + time_cap

    def worker(i: int, c: Client) -> None:
        for _ in range(quota[i]):
            if time.monotonic() > deadline:
                return
            c.create_room()
            made[i] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i, c), daemon=True)
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(made), time.monotonic() - t0


# ----------------------------------------------------------------------------- driver


def bench(server: Server, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"server": server.name}
    admin = server.register("benchadmin", "pw-bench-admin", admin=True)
    logins = [server.register(f"bench{i}", f"pw-bench-{i}") for i in range(CLIENTS)]
    time.sleep(2)
    res["idle_rss_mb"] = rss_mb([server.main_pid()])
    res["idle_rss_all_mb"] = rss_mb(server.pids())
    say(f"{server.name}: idle RSS {res['idle_rss_mb']:.1f} MB "
        f"(all processes {res['idle_rss_all_mb']:.1f} MB)")

    clients = [Client(server.base_url, lg["access_token"], f"c{i}")
               for i, lg in enumerate(logins)]
    shared = clients[0].create_room("public_chat")
    for c in clients[1:]:
        c.join(shared)
    own_rooms = [c.create_room() for c in clients]

    seq = Client(server.base_url, logins[0]["access_token"], "seq")
    res["sequential"] = run_phase(server, [(seq, own_rooms[0])], args.duration)
    say(f"{server.name}: sequential {fmt(res['sequential'])}")
    spy_thread = None
    if args.profile and server.name == "Atrium":
        spy_out: list[str] = []
        spy_thread = threading.Thread(target=lambda: spy_out.append(profile(
            server.main_pid(), max(3, args.duration - 2), workdir / "pyspy-one-room")))
        spy_thread.start()
    res["one_room"] = run_phase(server, [(c, shared) for c in clients], args.duration)
    say(f"{server.name}: 8 clients, 1 room {fmt(res['one_room'])}")
    if spy_thread is not None:
        spy_thread.join()
        res["profile_one_room"] = spy_out[0] if spy_out else ""
    res["eight_rooms"] = run_phase(server, list(zip(clients, own_rooms)), args.duration)
    say(f"{server.name}: 8 clients, 8 rooms {fmt(res['eight_rooms'])}")

    if args.rooms > 0:
        cpu0 = cpu_seconds(server.pids())
        made, secs = create_rooms(clients, args.rooms, args.rooms_time_cap)
        res["rooms_created"] = made
        res["rooms_seconds"] = secs
        res["create_cpu_ms_per_room"] = (cpu_seconds(server.pids()) - cpu0) * 1000 / max(made, 1)
        res["after_create_rss_mb"] = rss_mb([server.main_pid()])
        say(f"{server.name}: created {made} rooms in {secs:.1f}s; RSS now "
            f"{res['after_create_rss_mb']:.1f} MB")
        live = server.idle_rooms(admin["access_token"])
        if live is not None:
            deadline = time.monotonic() + args.passivation_wait
            while live and time.monotonic() < deadline:
                time.sleep(1)
                live = server.idle_rooms(admin["access_token"])
            time.sleep(2)
            res["live_room_actors_after_wait"] = live
            res["passivated_rss_mb"] = rss_mb([server.main_pid()])
            say(f"{server.name}: {live} room actors left; RSS "
                f"{res['passivated_rss_mb']:.1f} MB")
    for c in [*clients, seq]:
        c.close()
    return res


def fmt(r: PhaseResult) -> str:
    return (f"{r.messages} msgs in {r.seconds:.1f}s = {r.rate:.0f}/s, p50 {r.p50_ms:.1f} ms, "
            f"p99 {r.p99_ms:.1f} ms, CPU {r.cpu_ms_per_msg:.2f} ms/msg, errors {r.errors}"
            + (f" {r.error_sample}" if r.errors else ""))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def table(results: list[dict[str, Any]]) -> str:
    a = results[0]
    s = results[1] if len(results) > 1 else None
    rows: list[tuple[str, str, str, str, str]] = []

    def num(v: Any, f: str) -> str:
        return "-" if v is None else format(v, f)

    def add(label: str, av: Any, sv: Any, f: str, target: str = "",
            better_high: bool = True) -> None:
        ratio = ""
        if s is not None and isinstance(av, (int, float)) and isinstance(sv, (int, float)) \
                and av and sv:
            ratio = f"{(av / sv) if better_high else (sv / av):.1f}x"
        rows.append((label, num(av, f), num(sv, f) if s is not None else "", ratio, target))

    for key, label in (("sequential", "1 client, sequential"), ("one_room", "8 clients, 1 room"),
                       ("eight_rooms", "8 clients, 8 rooms")):
        ar, sr = a[key], (s[key] if s else None)
        tgt = {"sequential": f">= {TARGETS['seq_rate']:.0f}",
               "one_room": f">= {TARGETS['one_room_rate']:.0f}"}.get(key, "")
        add(f"{label}: msg/s", ar.rate, sr.rate if sr else None, ".0f", tgt)
        add(f"{label}: p50 ms", ar.p50_ms, sr.p50_ms if sr else None, ".1f", "",
            better_high=False)
        add(f"{label}: p99 ms", ar.p99_ms, sr.p99_ms if sr else None, ".1f", "",
            better_high=False)
        add(f"{label}: CPU ms/msg", ar.cpu_ms_per_msg, sr.cpu_ms_per_msg if sr else None,
            ".2f", f"<= {TARGETS['cpu_ms']:.0f}", better_high=False)
        add(f"{label}: errors", ar.errors, sr.errors if sr else None, "d")
    add("RSS idle, MB (server process)", a["idle_rss_mb"], s and s["idle_rss_mb"], ".1f",
        f"<= {TARGETS['idle_rss_mb']:.0f}", better_high=False)
    add("RSS idle, MB (all processes)", a["idle_rss_all_mb"], s and s["idle_rss_all_mb"],
        ".1f", "", better_high=False)
    if "rooms_created" in a:
        add("rooms created", a["rooms_created"], s and s.get("rooms_created"), "d")
        add("rooms created per s", a["rooms_created"] / a["rooms_seconds"],
            s and s.get("rooms_created", 0) / max(s.get("rooms_seconds", 1), 1e-9), ".1f")
        add("createRoom CPU ms/room", a["create_cpu_ms_per_room"],
            s and s.get("create_cpu_ms_per_room"), ".1f", "", better_high=False)
        add("RSS after creating rooms, MB", a["after_create_rss_mb"],
            s and s.get("after_create_rss_mb"), ".1f", "", better_high=False)
        if "passivated_rss_mb" in a:
            add("RSS after passivation, MB", a["passivated_rss_mb"], None, ".1f",
                f"<= {a['idle_rss_mb'] + TARGETS['after_rss_over_idle_mb']:.0f}")
            add("room actors live after wait", a["live_room_actors_after_wait"], None, "d")
    head = ("metric", a["server"], s["server"] if s else "", "ratio" if s else "", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join((c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in
                      enumerate(zip(r, widths))) for r in rows]
    if s is not None:
        out.append("ratio: how many times better Atrium is (throughput: Atrium/Synapse; "
                   "latency, CPU, memory: Synapse/Atrium)")
    return "\n".join(out)


def verdict(a: dict[str, Any]) -> list[str]:
    checks = [
        ("sequential >= 300 msg/s", a["sequential"].rate >= TARGETS["seq_rate"]),
        ("8 clients in one room >= 600 msg/s", a["one_room"].rate >= TARGETS["one_room_rate"]),
        ("<= 2 ms server CPU per message (every phase)",
         max(a[k].cpu_ms_per_msg for k in ("sequential", "one_room", "eight_rooms"))
         <= TARGETS["cpu_ms"]),
        ("idle RSS <= 80 MB", a["idle_rss_mb"] <= TARGETS["idle_rss_mb"]),
    ]
    if "passivated_rss_mb" in a:
        checks.append(("RSS after passivation <= idle + 50 MB",
                       a["passivated_rss_mb"] <= a["idle_rss_mb"]
                       + TARGETS["after_rss_over_idle_mb"]))
    return [f"  {'PASS' if ok else 'MISS'}  {name}" for name, ok in checks]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synapse", action="store_true", help="also run against Synapse")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per send phase")
    p.add_argument("--rooms", type=int, default=10_000, help="rooms to create (0: skip)")
    p.add_argument("--synapse-rooms", type=int, default=None,
                   help="rooms to create on Synapse (default: --rooms)")
    p.add_argument("--rooms-time-cap", type=float, default=1800.0,
                   help="stop creating rooms after this many seconds")
    p.add_argument("--idle-timeout", default="5s", help="Atrium actors.idle_timeout")
    p.add_argument("--passivation-wait", type=float, default=120.0)
    p.add_argument("--profile", action="store_true",
                   help="py-spy the Atrium worker during '8 clients, 1 room'")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the scratch data directory")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="atrium-bench-"))
    results: list[dict[str, Any]] = []
    try:
        server = start_atrium(workdir / "atrium", args.idle_timeout)
        try:
            results.append(bench(server, args, workdir))
        finally:
            server.stop()
        if args.synapse:
            synapse_peer.ensure_venv()
            server = start_synapse(workdir / "synapse")
            try:
                sargs = argparse.Namespace(**vars(args))
                if args.synapse_rooms is not None:
                    sargs.rooms = args.synapse_rooms
                results.append(bench(server, sargs, workdir))
            finally:
                server.stop()
    finally:
        if args.keep:
            say(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"rooms_send: {CLIENTS} clients, {args.duration:.0f}s per phase, SQLite, rate limits "
          f"off, {os.cpu_count()} cores")
    print(table(results))
    print()
    print("Atrium targets:")
    print("\n".join(verdict(results[0])))
    if "profile_one_room" in results[0]:
        print()
        print("py-spy, Atrium worker, 8 clients in one room:")
        print(results[0]["profile_one_room"])
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: (asdict(v) if isinstance(v, PhaseResult) else v) for k, v in r.items()}
             for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
