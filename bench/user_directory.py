"""Benchmark: the user directory (POST /user_directory/search) over 10,000 users, side by
side with Synapse.

One command::

    .venv/bin/python bench/user_directory.py [--synapse] [--users 10000]

For each server in turn, on a fresh SQLite database with the directory's default settings
(``search_all_users: false``): ``--users`` users are registered through the shared-secret
admin API (8 threads) with display names "First Last" (100 first names × 100 last names,
localparts ``first.last<n>``); the first half join 50 public rooms (100 members each), the
second half are in no public room; a searcher shares 10 private rooms with 10 users of the
second half each.  So most users match some query but only those in public rooms or
sharing a room with the searcher may be found.  When the last joined user is findable, the
searcher runs ``--queries`` searches one after another (after 20 unmeasured ones), limit
10: a first-name prefix of 2–4 letters (30 %), a whole first name (30 %), a last name
(20 %), "first last-prefix" (10 %), a localpart prefix "first.la" (10 %).

Reported: registration and join rates, search p50 / p99 (client side) overall and per kind,
mean results per search.  Atrium's target (issue 16): p50 <= 20 ms.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search import say, use_project_synapse  # noqa: E402

use_project_synapse()

import synapse_peer  # noqa: E402
from harness import Client, Server, free_port, pct, start_atrium, start_synapse  # noqa: E402

THREADS = 8
TARGET_P50 = 20.0
FIRST = ("Olivia Liam Emma Noah Amelia Oliver Ava Elijah Sophia Lucas Isabella Mason Mia Levi "
         "Charlotte Ethan Harper James Evelyn Aiden Abigail Logan Emily Jackson Elizabeth "
         "Sebastian Sofia Mateo Avery Jack Ella Owen Scarlett Theodore Grace Henry Chloe Wyatt "
         "Victoria Samuel Riley Carter Aria Julian Lily Grayson Aubrey Leo Zoey Jayden Penelope "
         "Gabriel Layla Isaac Nora Lincoln Camila Anthony Hannah Hudson Addison Dylan Eleanor "
         "Ezra Stella Thomas Natalie Charles Zoe Christopher Leah Jaxon Hazel Maverick Violet "
         "Josiah Aurora Isaiah Savannah Andrew Audrey Elias Brooklyn Joshua Bella Nathan Claire "
         "Caleb Skylar Ryan Lucy Adrian Paisley Miles Everly Eli Anna Nolan Caroline Ivy").split()
LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
        "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
        "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott "
        "Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell "
        "Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes "
        "Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson "
        "Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James "
        "Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross "
        "Foster Jimenez").split()


def name(i: int) -> tuple[str, str]:
    first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
    return f"{first.lower()}.{last.lower()}{i}", f"{first} {last}"


def _conn(base: str) -> http.client.HTTPConnection:
    host, port = base.split("//", 1)[1].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=120)


def register(conn: http.client.HTTPConnection, secret: str, localpart: str,
             displayname: str) -> str:
    """Shared-secret registration (nonce + HMAC) with a display name; the access token."""
    path = "/_synapse/admin/v1/register"
    conn.request("GET", path)
    r = conn.getresponse()
    nonce = json.loads(r.read())["nonce"]
    password = "pw-" + localpart
    mac = hmac.new(secret.encode(), b"\x00".join(
        p.encode() for p in (nonce, localpart, password, "notadmin")), hashlib.sha1).hexdigest()
    body = {"nonce": nonce, "username": localpart, "password": password, "admin": False,
            "mac": mac, "displayname": displayname}
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"register {localpart}: {r.status} {data[:200]!r}")
    return json.loads(data)["access_token"]


def parallel(n: int, fn: Callable[[int, int], None], deadline: float) -> int:
    """``fn(thread, i)`` for i in range(n) over THREADS threads; how many ran."""
    done = [0] * THREADS
    errors: list[str] = []

    def work(t: int) -> None:
        for i in range(t, n, THREADS):
            if time.monotonic() > deadline or len(errors) > 20:
                return
            try:
                fn(t, i)
                done[t] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        say(f"  {len(errors)} errors, e.g. {errors[:2]}")
    return sum(done)


def seed(server: Server, secret: str, args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.seed_time_cap
    conns = [_conn(server.base_url) for _ in range(THREADS)]
    tokens: list[str | None] = [None] * args.users
    t0 = time.monotonic()

    def reg(t: int, i: int) -> None:
        lp, dn = name(i)
        tokens[i] = register(conns[t], secret, lp, dn)

    n = parallel(args.users, reg, deadline)
    reg_s = time.monotonic() - t0
    say(f"{server.name}: {n} users registered in {reg_s:.1f}s ({n / reg_s:.0f}/s)")
    searcher = Client(server.base_url, register(conns[0], secret, "searcher", "The Searcher"),
                      "s")
    clients = [Client(server.base_url, tok, f"u{i}") if tok else None
               for i, tok in enumerate(tokens)]
    half = args.users // 2
    public = []
    for r in range(0, half, 100):
        c = clients[r]
        if c is not None:
            public.append((r, c.create_room("public_chat")))
    private = []
    for k in range(10):
        members = [half + k * 10 + j for j in range(10) if half + k * 10 + j < args.users]
        status, data = searcher.request("POST", "/_matrix/client/v3/createRoom", {
            "preset": "private_chat", "invite": [f"@{name(i)[0]}:{server_name(server)}"
                                                 for i in members]})
        if status == 200:
            private.append((json.loads(data)["room_id"], members))
    joins = [(i, room) for r, room in public for i in range(r + 1, min(r + 100, half))
             if clients[i] is not None]
    joins += [(i, room) for room, members in private for i in members if clients[i] is not None]
    t0 = time.monotonic()
    last: list[int] = []

    def join(t: int, k: int) -> None:
        i, room = joins[k]
        clients[i].join(room)   # type: ignore[union-attr]
        last.append(i)

    nj = parallel(len(joins), join, deadline)
    join_s = time.monotonic() - t0
    say(f"{server.name}: {nj} joins in {join_s:.1f}s ({nj / max(join_s, 1e-9):.0f}/s)")
    for c in clients:
        if c is not None:
            c.close()
    t1 = time.monotonic()
    target = name(last[-1])[0] if last else "nobody"
    while time.monotonic() - t1 < args.index_wait_cap:
        if any(r["user_id"].startswith("@" + target + ":")
               for r in find(searcher, "@" + target)[1]["results"]):
            break
        time.sleep(0.5)
    wait = time.monotonic() - t1
    say(f"{server.name}: the last joined user was findable after {wait:.1f}s")
    for c in conns:
        c.close()
    return {"users": n, "register_s": reg_s, "joins": nj, "join_s": join_s,
            "directory_wait_s": wait, "searcher": searcher}


def server_name(server: Server) -> str:
    return "bench.local"


def find(c: Client, term: str, limit: int = 10) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    status, data = c.request("POST", "/_matrix/client/v3/user_directory/search",
                             {"search_term": term, "limit": limit})
    dt = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"user_directory {term!r}: {status} {data[:200]!r}")
    return dt, json.loads(data)


def queries(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        r = rnd.random()
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        if r < 0.3:
            out.append(("first-name prefix", first[:rnd.randint(2, 4)].lower()))
        elif r < 0.6:
            out.append(("first name", first))
        elif r < 0.8:
            out.append(("last name", last))
        elif r < 0.9:
            out.append(("first last-prefix", f"{first} {last[:3]}"))
        else:
            out.append(("localpart prefix", f"{first.lower()}.{last[:2].lower()}"))
    return out


def measure(server: Server, searcher: Client, args: argparse.Namespace) -> dict[str, Any]:
    for _, term in queries(20, args.seed + 1):
        find(searcher, term)
    lat: dict[str, list[float]] = {}
    found = []
    t_end = time.monotonic() + args.query_time_cap
    for kind, term in queries(args.queries, args.seed):
        if time.monotonic() > t_end:
            break
        dt, res = find(searcher, term)
        for key in ("all", kind):
            lat.setdefault(key, []).append(dt * 1000)
        found.append(len(res["results"]))
    out: dict[str, Any] = {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                           for k, v in lat.items()}
    out["mean_results"] = sum(found) / max(1, len(found))
    say(f"{server.name}: directory p50 {out['all']['p50_ms']:.1f} ms, "
        f"p99 {out['all']['p99_ms']:.1f} ms over {out['all']['n']} queries")
    return out


def run(server: Server, secret: str, args: argparse.Namespace) -> dict[str, Any]:
    seeded = seed(server, secret, args)
    searcher = seeded.pop("searcher")
    res = {"server": server.name, **seeded, "search": measure(server, searcher, args)}
    searcher.close()
    return res


def table(results: list[dict[str, Any]]) -> str:
    kinds = ["all", "first-name prefix", "first name", "last name", "first last-prefix",
             "localpart prefix"]
    head = ["metric"] + [r["server"] for r in results]
    rows = [["users", *[str(r["users"]) for r in results]],
            ["registrations/s", *[f"{r['users'] / r['register_s']:.0f}" for r in results]],
            ["joins/s", *[f"{r['joins'] / max(r['join_s'], 1e-9):.0f}" for r in results]],
            ["last join findable after, s", *[f"{r['directory_wait_s']:.1f}" for r in results]]]
    for k in kinds:
        for p in ("p50_ms", "p99_ms"):
            rows.append([f"{k}: {p.replace('_ms', '')} ms",
                         *[f"{r['search'][k][p]:.1f}" if k in r["search"] else "-"
                           for r in results]])
    rows.append(["mean results per search",
                 *[f"{r['search']['mean_results']:.1f}" for r in results]])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synapse", action="store_true", help="also run against Synapse")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--seed-time-cap", type=float, default=1800.0,
                   help="stop registering / joining after this many seconds (per server)")
    p.add_argument("--index-wait-cap", type=float, default=300.0)
    p.add_argument("--query-time-cap", type=float, default=300.0)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="atrium-bench-userdir-"))
    results: list[dict[str, Any]] = []
    try:
        server = start_atrium(workdir / "atrium", "5m")
        try:
            results.append(run(server, "bench-secret", args))
        finally:
            server.stop()
        if args.synapse:
            sdir = workdir / "synapse"
            synapse_peer.ensure_venv()
            cfg = synapse_peer.write_config(sdir, free_port())
            raw = yaml.safe_load(cfg.read_text())
            raw["bcrypt_rounds"] = 4    # as Atrium's bench config: registration, not hashing
            cfg.write_text(yaml.safe_dump(raw))
            server = start_synapse(sdir)
            try:
                results.append(run(server, raw["registration_shared_secret"], args))
            finally:
                server.stop()
    finally:
        if args.keep:
            say(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"user_directory: {args.users} users, {args.queries} queries, SQLite, "
          f"{os.cpu_count()} cores")
    print(table(results))
    a = results[0]["search"]["all"]
    print()
    print("Atrium target:")
    print(f"  {'PASS' if a['p50_ms'] <= TARGET_P50 else 'MISS'}  p50 <= {TARGET_P50:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
