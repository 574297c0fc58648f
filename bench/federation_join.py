"""Joining a large room over federation: Atrium next to Synapse (issue 14, "Joining a
room with 1,000 members' state and 10,000 events of history").

A Synapse ``R`` (the resident server, from the test venv, TLS on loopback:
``tests/interop/synapse_tls.py``) gets a public room with ``--members`` joined users (each
registered with the shared-secret admin API and joined through the client API, rate limits
off, ``--workers`` at once) and ``--events`` messages of history. Then, one at a time:

* a user of **Atrium** ``A`` joins it through R (``POST /join/{roomId}?via=R``);
* a user of a second **Synapse** ``S2`` does the same.

Measured for each joining server: the join request's own time; **time to first usable
/sync** (from the start of the join until an initial ``/sync`` — timeline limit 20,
lazy-loaded members — lists the room under ``join`` with its timeline); the time until the
joining server's ``/joined_members`` shows every member (a partial-state join gets the full
state in the background); the RSS of the joining server's process that holds the rooms
(Atrium's gunicorn worker, Synapse's one process) before the join and at its peak until the
full state is in. Atrium joins first, then S2 (the room then also holds A's join).

Building 1,000 members and 10,000 events on Synapse takes minutes; both are parameters and
the report prints what ran.  Bounded in time (``--deadline``); stops what it started by PID::

    .venv/bin/python bench/federation_join.py [--members 1000] [--events 10000]
    .venv/bin/python bench/federation_join.py --members 100 --events 1000   # a quick run
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from atrium.demo import start_server  # noqa: E402
from atrium.tls import make_ca  # noqa: E402
from federation_outage import ATRIUM_OVERRIDES, Client, _q, free_port, rss_kb  # noqa: E402

PASSWORD = "bench-join-pass"
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 20},
                                   "state": {"lazy_load_members": True}},
                          "presence": {"types": []}})


class Peak(threading.Thread):
    """The peak RSS (kB) of one process, sampled every 100 ms until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, rss_kb(pid), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, rss_kb(self.pid))


def build_room(resident: Any, ca_path: str, members: int, events: int, workers: int,
               deadline: float) -> tuple[str, dict[str, Any]]:
    """A public room on ``resident`` with ``members`` joined users and ``events`` messages."""
    t0 = time.monotonic()
    owner = Client(resident.base_url, ca_path, resident.register("owner", PASSWORD))
    room = owner.ok("POST", "/_matrix/client/v3/createRoom",
                    {"preset": "public_chat", "name": "large room"})["room_id"]

    def member(i: int) -> Client:
        c = Client(resident.base_url, ca_path, resident.register(f"m{i:05d}", PASSWORD))
        c.ok("POST", f"/_matrix/client/v3/join/{_q(room)}", {}, timeout=120)
        return c

    with ThreadPoolExecutor(workers) as pool:
        clients = []
        for c in pool.map(member, range(members - 1)):
            clients.append(c)
            if time.monotonic() > deadline:
                raise RuntimeError(f"deadline reached building members ({len(clients)})")
    t_members = time.monotonic() - t0
    print(f"  {members} members in {t_members:.0f} s", flush=True)
    senders = [owner] + clients[:workers - 1]

    def send_share(k: int) -> int:
        c, done = senders[k], 0
        for i in range(k, events, len(senders)):
            c.ok("PUT", f"/_matrix/client/v3/rooms/{_q(room)}/send/m.room.message/h{i}",
                 {"msgtype": "m.text", "body": f"history {i}"})
            done += 1
            if time.monotonic() > deadline:
                break
        return done

    t1 = time.monotonic()
    with ThreadPoolExecutor(len(senders)) as pool:
        sent = sum(pool.map(send_share, range(len(senders))))
    t_events = time.monotonic() - t1
    print(f"  {sent} events in {t_events:.0f} s", flush=True)
    if sent < events:
        raise RuntimeError(f"deadline reached sending history ({sent} of {events})")
    return room, {"members": members, "events": sent, "build_members_s": round(t_members),
                  "build_events_s": round(t_events)}


def measure_join(label: str, server: Any, rss_pid: int, ca_path: str, room: str,
                 via: str, members: int, deadline: float) -> dict[str, Any]:
    user = Client(server.base_url, ca_path, server.register(f"joiner{label}", PASSWORD))
    time.sleep(1)
    rss_before = rss_kb(rss_pid)
    peak = Peak(rss_pid)
    peak.start()
    out: dict[str, Any] = {"server": label}

    def left() -> float:
        return max(5.0, deadline - time.monotonic())

    try:
        t0 = time.monotonic()
        user.ok("POST", f"/_matrix/client/v3/join/{_q(room)}", {}, timeout=left(),
                query={"server_name": via, "via": via})
        out["join_request_s"] = round(time.monotonic() - t0, 2)
        while True:
            j = user.ok("GET", "/_matrix/client/v3/sync",
                        query={"timeout": "0", "filter": SYNC_FILTER}, timeout=left())
            r = j.get("rooms", {}).get("join", {}).get(room)
            if r is not None and r.get("timeline", {}).get("events"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the room never showed in /sync")
            time.sleep(0.2)
        out["first_usable_sync_s"] = round(time.monotonic() - t0, 2)
        while True:
            status, jm = user.call("GET", f"/_matrix/client/v3/rooms/{_q(room)}/joined_members",
                                   timeout=left())
            n = len(jm.get("joined", {})) if status == 200 and isinstance(jm, dict) else 0
            if n >= members + 1:
                break
            if time.monotonic() > deadline:
                out["members_seen"] = n
                raise RuntimeError(f"{label}: only {n} of {members + 1} members known")
            time.sleep(0.5)
        out["full_state_s"] = round(time.monotonic() - t0, 2)
        time.sleep(1)
    finally:
        peak.done.set()
        peak.join(2)
        out.update(rss_before_mb=round(rss_before / 1024, 1),
                   rss_peak_mb=round(peak.peak / 1024, 1),
                   rss_growth_mb=round((peak.peak - rss_before) / 1024, 1))
    print(f"  {label}: {out}", flush=True)
    return out


def run(args: argparse.Namespace) -> int:
    from tests.interop.synapse_tls import start_synapse  # noqa: PLC0415

    work = Path(args.dir or tempfile.mkdtemp(prefix="atrium-fedjoin-"))
    work.mkdir(parents=True, exist_ok=True)
    ca = make_ca(work, name="Atrium join bench CA")
    started: list[Any] = []
    deadline = time.monotonic() + args.deadline
    result: dict[str, Any] = {}
    syn_extra = {"bcrypt_rounds": 4}
    try:
        resident = start_synapse(work / "r", free_port(), ca, log_level="WARNING",
                                 extra=syn_extra, wait=False)
        started.append(resident)
        atrium = start_server(work / "a", free_port(), ca,
                              overrides={**ATRIUM_OVERRIDES, "federation": {
                                  "request_timeout": "300s"}}, wait=False)
        started.append(atrium)
        s2 = start_synapse(work / "s2", free_port(), ca, log_level="WARNING",
                           extra=syn_extra, wait=False)
        started.append(s2)
        for srv in started:
            srv.wait_ready(120)
        print(f"R = Synapse {resident.server_name}; A = Atrium {atrium.server_name}; "
              f"S2 = Synapse {s2.server_name}", flush=True)
        room, built = build_room(resident, ca.cert_path, args.members, args.events,
                                 args.workers, deadline)
        result.update(built)
        [worker] = atrium.worker_pids()
        # one after the other; the other joiner keeps running (freezing it would stall the
        # second join: its join event is in the room's state and its key must be fetched)
        for label, server, rss_pid in (("atrium", atrium, worker), ("synapse", s2, s2.pid)):
            try:
                result[label] = measure_join(label, server, rss_pid, ca.cert_path, room,
                                             resident.server_name, args.members, deadline)
            except (RuntimeError, OSError) as e:
                result[label] = {"error": str(e)[:300]}
                print(f"  {label}: {e}", flush=True)
        _report(result, args)
        return 0 if all("error" not in result.get(k, {}) for k in ("atrium", "synapse")) else 1
    except RuntimeError as e:
        print(f"federation_join: {e}", file=sys.stderr, flush=True)
        _report(result, args)
        return 2
    finally:
        for srv in reversed(started):
            srv.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"data kept in {work}")


def _report(result: dict[str, Any], args: argparse.Namespace) -> None:
    a, s = result.get("atrium", {}), result.get("synapse", {})
    print(f"\n| joining a room of {result.get('members')} members / {result.get('events')} "
          f"events on Synapse | Atrium | Synapse | Synapse / Atrium |\n|---|---|---|---|")

    def ratio(k: str) -> str:
        x, y = a.get(k), s.get(k)
        return f"{y / x:.1f}x" if isinstance(x, (int, float)) and isinstance(y, (int, float)) \
            and x > 0 else ""

    for name, k in (("join request (s)", "join_request_s"),
                    ("start of join -> first usable /sync (s)", "first_usable_sync_s"),
                    ("start of join -> all members known (s)", "full_state_s"),
                    ("RSS before (MB)", "rss_before_mb"), ("RSS peak (MB)", "rss_peak_mb"),
                    ("RSS growth (MB)", "rss_growth_mb")):
        print(f"| {name} | {a.get(k, a.get('error', ''))} | {s.get(k, s.get('error', ''))} "
              f"| {ratio(k)} |")
    print(f"(room built in {result.get('build_members_s')} s for members, "
          f"{result.get('build_events_s')} s for events)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=8, help="clients building the room at once")
    p.add_argument("--deadline", type=float, default=3600.0, help="whole run, seconds")
    p.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", help="write the results here")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
