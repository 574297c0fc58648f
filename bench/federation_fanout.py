"""Fan-out of room messages from one Atrium to many servers (issue 14, "Fan-out").

``--servers`` (default 20) small Atrium instances and one sending Atrium ``S`` run on
loopback over TLS (``atrium/demo.py:start_server``, certificates from a throwaway CA). A user
of S creates a public room; one user of every other server joins it through S (over
federation: make_join / send_join). Two phases on S, one sequential client sending
``--messages`` ``m.room.message`` each:

* **local**: a room whose members are all on S (nothing to send to other servers);
* **fan-out**: the room shared with the ``--servers`` destinations; every destination's
  user long-polls ``/sync`` and records when each message arrives.

Reported per phase: messages/s (the sender's 200s over wall time), **server CPU per
message** of S (utime + stime of its gunicorn master and worker, ``/proc``, from the first
send until the last destination holds the last message, divided by the messages: the send
and every transaction to every destination) and, for fan-out, the latency from the start of
each send until the **last** destination's ``/sync`` holds it: p50 / p99 / max, plus
messages missing or duplicated at any destination. The destinations share the machine's
cores with S, so msg/s is a floor; CPU per message is the steadier figure.

Bounded in time (``--deadline``); every server is stopped by PID at the end.  Usage::

    .venv/bin/python bench/federation_fanout.py [--servers 20] [--messages 300]
    .venv/bin/python bench/federation_fanout.py --servers 5 --messages 100   # a quick run
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from atrium.demo import RunningServer, start_server  # noqa: E402
from atrium.tls import make_ca  # noqa: E402
from federation_outage import ATRIUM_OVERRIDES, Client, _q, free_port  # noqa: E402
from harness import cpu_seconds, pct, rss_mb  # noqa: E402

PASSWORD = "bench-fanout-pass"
FILTER = json.dumps({"room": {"timeline": {"limit": 1000, "types": ["m.room.message"]},
                              "state": {"types": []}, "ephemeral": {"types": []}},
                     "presence": {"types": []}, "account_data": {"types": []}})
SMALL = {**ATRIUM_OVERRIDES,
         "federation": {"min_retry_interval": "1s", "max_retry_interval": "10s"}}


class Receiver(threading.Thread):
    """A destination's user long-polling /sync; arrival time of each ``seq`` of one tag."""

    def __init__(self, client: Client, room_id: str, tag: str, since: str):
        super().__init__(daemon=True)
        self.client, self.room_id, self.tag, self.since = client, room_id, tag, since
        self.arrived: dict[int, float] = {}
        self.duplicates = 0
        self.stop_flag = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                j = self.client.ok("GET", "/_matrix/client/v3/sync", query={
                    "since": self.since, "timeout": "2000", "filter": FILTER}, timeout=60)
            except (RuntimeError, OSError) as e:
                self.error = str(e)[:200]
                time.sleep(0.5)
                continue
            now = time.monotonic()
            self.since = j["next_batch"]
            room = j.get("rooms", {}).get("join", {}).get(self.room_id, {})
            for ev in room.get("timeline", {}).get("events", []):
                c = ev.get("content", {})
                if c.get("tag") == self.tag:
                    if c["seq"] in self.arrived:
                        self.duplicates += 1
                    else:
                        self.arrived[c["seq"]] = now


def _sync_token(client: Client) -> str:
    return client.ok("GET", "/_matrix/client/v3/sync",
                     query={"timeout": "0", "filter": FILTER})["next_batch"]


def _send_phase(sender: Client, room_id: str, tag: str, n: int, server: RunningServer,
                receivers: list[Receiver], deadline: float) -> dict[str, Any]:
    pids = server.pids()
    cpu0 = cpu_seconds(pids)
    starts: dict[int, float] = {}
    t0 = time.monotonic()
    for i in range(n):
        starts[i] = time.monotonic()
        sender.ok("PUT", f"/_matrix/client/v3/rooms/{_q(room_id)}/send/m.room.message/"
                         f"{tag}-{i}", {"msgtype": "m.text", "body": f"{tag} {i}",
                                        "tag": tag, "seq": i})
        if time.monotonic() > deadline:
            raise RuntimeError(f"deadline reached after {i + 1} sends")
    send_s = time.monotonic() - t0
    out: dict[str, Any] = {"messages": n, "send_s": round(send_s, 2),
                           "msg_per_s": round(n / send_s, 1)}
    if receivers:
        # wait (bounded) until every destination holds every message
        limit = min(deadline, time.monotonic() + 120)
        while time.monotonic() < limit and any(len(r.arrived) < n for r in receivers):
            time.sleep(0.05)
    cpu = cpu_seconds(pids) - cpu0
    out["cpu_ms_per_msg"] = round(cpu * 1000 / n, 2)
    if receivers:
        lat = []
        missing = 0
        for i in range(n):
            got = [r.arrived.get(i) for r in receivers]
            if any(t is None for t in got):
                missing += 1
                continue
            lat.append((max(got) - starts[i]) * 1000)   # type: ignore[type-var]
        out.update(missing_somewhere=missing,
                   duplicates=sum(r.duplicates for r in receivers),
                   last_dest_p50_ms=round(pct(lat, 50), 1) if lat else None,
                   last_dest_p99_ms=round(pct(lat, 99), 1) if lat else None,
                   last_dest_max_ms=round(max(lat), 1) if lat else None,
                   delivery_tail_s=round(time.monotonic() - t0 - send_s, 2))
    return out


def run(args: argparse.Namespace) -> int:
    work = Path(args.dir or tempfile.mkdtemp(prefix="atrium-fanout-"))
    work.mkdir(parents=True, exist_ok=True)
    ca = make_ca(work, name="Atrium fan-out bench CA")
    started: list[RunningServer] = []
    deadline = time.monotonic() + args.deadline
    result: dict[str, Any] = {"servers": args.servers, "messages": args.messages}
    receivers: list[Receiver] = []
    try:
        s = start_server(work / "s", free_port(), ca, overrides=SMALL, wait=False)
        started.append(s)
        dests = []
        for i in range(args.servers):
            dests.append(start_server(work / f"d{i:02d}", free_port(), ca, overrides=SMALL,
                                      wait=False))
            started.append(dests[-1])
        for srv in started:
            srv.wait_ready(max(30.0, deadline - time.monotonic()))
        print(f"S = {s.server_name} (pids {s.pids()}); {len(dests)} destinations up",
              flush=True)
        alice = Client(s.base_url, ca.cert_path, s.register("alice", PASSWORD))
        local_bob = Client(s.base_url, ca.cert_path, s.register("bob", PASSWORD))
        logins = [(d, d.register("bob", PASSWORD)) for d in dests]
        users = [Client(d.base_url, ca.cert_path, login) for d, login in logins]

        def fresh(i: int) -> Client:     # one connection per thread
            d, login = logins[i]
            return Client(d.base_url, ca.cert_path, login)

        # phase 1: a room of S's own users only
        local_room = alice.ok("POST", "/_matrix/client/v3/createRoom",
                              {"preset": "public_chat"})["room_id"]
        local_bob.ok("POST", f"/_matrix/client/v3/join/{_q(local_room)}", {})
        _send_phase(alice, local_room, "warm", 20, s, [], deadline)
        result["local"] = _send_phase(alice, local_room, "local", args.messages, s, [],
                                      deadline)
        print(f"  local: {result['local']}", flush=True)

        # phase 2: the room shared with every destination
        room = alice.ok("POST", "/_matrix/client/v3/createRoom",
                        {"preset": "public_chat"})["room_id"]
        t_join = time.monotonic()
        for u in users:
            u.ok("POST", f"/_matrix/client/v3/join/{_q(room)}", {}, timeout=60,
                 query={"server_name": s.server_name, "via": s.server_name})
        result["joins_s"] = round(time.monotonic() - t_join, 2)
        tag = "fan"
        receivers = [Receiver(fresh(i), room, tag, _sync_token(u)) for i, u in enumerate(users)]
        for r in receivers:
            r.start()
        # warm-up: every destination has had a transaction from S
        warm = [Receiver(fresh(i), room, "warmfan", _sync_token(u))
                for i, u in enumerate(users)]
        for r in warm:
            r.start()
        _send_phase(alice, room, "warmfan", 5, s, warm, deadline)
        for r in warm:
            r.stop_flag.set()
        result["rss_sender_mb"] = round(rss_mb(s.worker_pids()), 1)
        result["fanout"] = _send_phase(alice, room, tag, args.messages, s, receivers,
                                       deadline)
        print(f"  fan-out to {len(dests)}: {result['fanout']}", flush=True)
        errors = [r.error for r in receivers if r.error]
        if errors:
            result["receiver_errors"] = errors[:3]
        _report(result, args)
        fan = result["fanout"]
        return 0 if fan.get("missing_somewhere") == 0 and fan.get("duplicates") == 0 else 1
    except RuntimeError as e:
        print(f"federation_fanout: {e}", file=sys.stderr, flush=True)
        _report(result, args)
        return 2
    finally:
        for r in receivers:
            r.stop_flag.set()
        for srv in reversed(started):
            srv.stop()
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            print(f"data kept in {work}")


def _report(result: dict[str, Any], args: argparse.Namespace) -> None:
    loc, fan = result.get("local", {}), result.get("fanout", {})
    print(f"\n| measure (sender S, {result['servers']} destinations, "
          f"{result['messages']} messages) | local room | fan-out |\n|---|---|---|")
    rows = [
        ("messages/s (sequential client)", loc.get("msg_per_s"), fan.get("msg_per_s")),
        ("S CPU ms per message (send + transactions)", loc.get("cpu_ms_per_msg"),
         fan.get("cpu_ms_per_msg")),
        ("send start -> last destination's /sync, p50 ms", "", fan.get("last_dest_p50_ms")),
        ("send start -> last destination's /sync, p99 ms", "", fan.get("last_dest_p99_ms")),
        ("send start -> last destination's /sync, max ms", "", fan.get("last_dest_max_ms")),
        ("messages missing at some destination", "", fan.get("missing_somewhere")),
        ("duplicates seen by destinations", "", fan.get("duplicates")),
        ("joins of all destinations (s)", "", result.get("joins_s")),
        ("S worker RSS (MB)", "", result.get("rss_sender_mb")),
    ]
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=20, help="destination servers")
    p.add_argument("--messages", type=int, default=300, help="messages per phase")
    p.add_argument("--deadline", type=float, default=900.0, help="whole run, seconds")
    p.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", help="write the results here")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
