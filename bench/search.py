"""Benchmark: message search (POST /search) over a large history, side by side with Synapse.

One command::

    .venv/bin/python bench/search.py [--synapse] [--messages 100000] [--rooms 200]

For each server in turn (never both at once: they share the machine's cores), on a fresh
SQLite database: 8 writers create ``--rooms`` public rooms between them, a searcher joins
all of them, and the writers send ``--messages`` ``m.room.message`` events over keep-alive
HTTP (8 threads, bounded by ``--seed-time-cap``).  The bodies are 6–16 words drawn from a
deterministic vocabulary of 5,000 made-up words with Zipf frequencies (s = 1.07), the same
on both servers.  Once the last message is searchable, the searcher runs ``--queries``
searches one after another (after 20 unmeasured ones), half ``order_by: rank`` and half
``recent``, default limit (10):

* 40 %: one word of frequency rank 100–4,999 (a typical content word: up to a few hundred
  matches),
* 20 %: one word of rank 10–99 (thousands of matches),
* 10 %: one word of rank 0–9 (tens of thousands of matches: the worst case),
* 30 %: two words of rank 10–1,999 (ANDed).

Reported per server: seeding rate, time until the last message was found, search latency
p50 / p99 (client side, all queries and per kind), and the mean ``count``.  Atrium's
targets (issue 16): p50 <= 50 ms, p99 <= 200 ms.  Synapse 1.163 runs from the project venv
when it has matrix-synapse (else bench/synapse_peer.py's scratch venv).
"""
from __future__ import annotations

import argparse
import json
import os
import random
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


def use_project_synapse() -> None:
    """Let bench/synapse_peer.py run the Synapse installed in this venv (if any) instead of
    installing one into a scratch venv: a cache dir whose synapse-venv is this venv."""
    import importlib.util

    if "ATRIUM_BENCH_CACHE" in os.environ or importlib.util.find_spec("synapse") is None:
        return
    cache = Path(tempfile.gettempdir()) / "atrium-bench-project-synapse"
    cache.mkdir(exist_ok=True)
    link = cache / "synapse-venv"
    if not link.exists():
        link.symlink_to(Path(sys.prefix))
    os.environ["ATRIUM_BENCH_CACHE"] = str(cache)


use_project_synapse()

from harness import Client, Server, pct, start_atrium, start_synapse  # noqa: E402

WRITERS = 8
VOCAB = 5000
TARGET_P50, TARGET_P99 = 50.0, 200.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vocabulary(seed: int) -> list[str]:
    rnd = random.Random(seed)
    cons, vow = "bcdfghjklmnprstvwz", "aeiou"
    words: dict[str, None] = {}
    while len(words) < VOCAB:
        n = rnd.randint(2, 4)
        words["".join(rnd.choice(cons) + rnd.choice(vow) for _ in range(n))] = None
    return list(words)


class Corpus:
    def __init__(self, seed: int) -> None:
        self.words = vocabulary(seed)
        self.weights = [1 / (i + 1) ** 1.07 for i in range(VOCAB)]
        self.rnd = random.Random(seed + 1)

    def body(self, rnd: random.Random) -> str:
        return " ".join(rnd.choices(self.words, self.weights, k=rnd.randint(6, 16)))

    def queries(self, n: int, seed: int) -> list[tuple[str, str, str]]:
        """(kind, term, order) × n."""
        rnd = random.Random(seed)
        out = []
        for i in range(n):
            r = rnd.random()
            if r < 0.4:
                kind, term = "content word", self.words[rnd.randrange(100, VOCAB)]
            elif r < 0.6:
                kind, term = "common word", self.words[rnd.randrange(10, 100)]
            elif r < 0.7:
                kind, term = "top-10 word", self.words[rnd.randrange(0, 10)]
            else:
                kind = "two words"
                term = f"{self.words[rnd.randrange(10, 2000)]} {self.words[rnd.randrange(10, 2000)]}"
            out.append((kind, term, "rank" if i % 2 == 0 else "recent"))
        return out


def search(c: Client, term: str, order: str) -> tuple[float, dict[str, Any]]:
    body = {"search_categories": {"room_events": {"search_term": term, "order_by": order}}}
    t0 = time.perf_counter()
    status, data = c.request("POST", "/_matrix/client/v3/search", body)
    dt = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"search {term!r}: {status} {data[:200]!r}")
    return dt, json.loads(data)["search_categories"]["room_events"]


def seed(server: Server, args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    writers = [Client(server.base_url, server.register(f"writer{i}", f"pw-w-{i}")
                      ["access_token"], f"w{i}") for i in range(WRITERS)]
    searcher = Client(server.base_url, server.register("searcher", "pw-searcher")
                      ["access_token"], "s")
    rooms: list[list[str]] = [[] for _ in writers]
    t0 = time.monotonic()
    for i in range(args.rooms):
        room = writers[i % WRITERS].create_room("public_chat")
        rooms[i % WRITERS].append(room)
        searcher.join(room)
    say(f"{server.name}: {args.rooms} rooms created and joined in "
        f"{time.monotonic() - t0:.1f}s")
    quota = [args.messages // WRITERS + (i < args.messages % WRITERS) for i in range(WRITERS)]
    sent = [0] * WRITERS
    errors: list[str] = []
    deadline = time.monotonic() + args.seed_time_cap

    def work(i: int) -> None:
        rnd = random.Random(1000 + i)
        c, mine = writers[i], rooms[i]
        for k in range(quota[i]):
            if time.monotonic() > deadline:
                return
            c.n += 1
            path = (f"/_matrix/client/v3/rooms/{mine[k % len(mine)]}/send/m.room.message/"
                    f"seed-{i}-{k}")
            status, data = c.request("PUT", path, {"msgtype": "m.text", "body": corpus.body(rnd)})
            if status == 200:
                sent[i] += 1
            elif len(errors) < 5:
                errors.append(f"{status} {data[:100]!r}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(WRITERS)]
    for t in threads:
        t.start()
    last_report = t0
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            say(f"{server.name}: {sum(sent)} messages sent ({sum(sent) / (last_report - t0):.0f}/s)")
    secs = time.monotonic() - t0
    n = sum(sent)
    say(f"{server.name}: {n} messages in {secs:.1f}s ({n / secs:.0f}/s), errors {errors}")
    # the marker: a word no generated body contains, sent last
    writers[0].request("PUT", f"/_matrix/client/v3/rooms/{rooms[0][0]}/send/m.room.message/"
                              "marker", {"msgtype": "m.text", "body": "zzmarkerzz"})
    t1 = time.monotonic()
    while time.monotonic() - t1 < args.index_wait_cap:
        _, res = search(searcher, "zzmarkerzz", "recent")
        if res["results"]:
            break
        time.sleep(0.5)
    index_wait = time.monotonic() - t1
    say(f"{server.name}: the last message was searchable after {index_wait:.1f}s")
    for c in writers:
        c.close()
    return {"messages": n, "seed_seconds": secs, "seed_errors": errors,
            "index_wait_s": index_wait, "searcher": searcher}


def measure(server: Server, args: argparse.Namespace, corpus: Corpus,
            searcher: Client) -> dict[str, Any]:
    for kind, term, order in corpus.queries(20, args.seed + 99):   # warm-up
        search(searcher, term, order)
    lat: dict[str, list[float]] = {}
    counts: list[int] = []
    t_end = time.monotonic() + args.query_time_cap
    for kind, term, order in corpus.queries(args.queries, args.seed + 7):
        if time.monotonic() > t_end:
            break
        dt, res = search(searcher, term, order)
        for key in ("all", kind, f"order {order}"):
            lat.setdefault(key, []).append(dt * 1000)
        counts.append(int(res.get("count", 0)))
    out = {k: {"n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in lat.items()}
    out["mean_count"] = sum(counts) / max(1, len(counts))
    say(f"{server.name}: search p50 {out['all']['p50_ms']:.1f} ms, "
        f"p99 {out['all']['p99_ms']:.1f} ms over {out['all']['n']} queries")
    return out


def run(server: Server, args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    seeded = seed(server, args, corpus)
    searcher = seeded.pop("searcher")
    res = {"server": server.name, **seeded, "search": measure(server, args, corpus, searcher)}
    searcher.close()
    return res


def table(results: list[dict[str, Any]]) -> str:
    kinds = ["all", "order rank", "order recent", "content word", "common word",
             "top-10 word", "two words"]
    head = ["metric"] + [r["server"] for r in results]
    rows = [["messages", *[str(r["messages"]) for r in results]],
            ["seeding msg/s", *[f"{r['messages'] / r['seed_seconds']:.0f}" for r in results]],
            ["last message searchable after, s",
             *[f"{r['index_wait_s']:.1f}" for r in results]]]
    for k in kinds:
        for p in ("p50_ms", "p99_ms"):
            rows.append([f"{k}: {p.replace('_ms', '')} ms",
                         *[f"{r['search'][k][p]:.1f}" if k in r["search"] else "-"
                           for r in results]])
    rows.append(["mean count", *[f"{r['search']['mean_count']:.0f}" for r in results]])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synapse", action="store_true", help="also run against Synapse")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--rooms", type=int, default=200)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--seed-time-cap", type=float, default=1800.0,
                   help="stop sending after this many seconds (per server)")
    p.add_argument("--index-wait-cap", type=float, default=300.0)
    p.add_argument("--query-time-cap", type=float, default=600.0)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep", action="store_true", help="keep the scratch data directory")
    args = p.parse_args(argv)
    corpus = Corpus(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="atrium-bench-search-"))
    results: list[dict[str, Any]] = []
    try:
        server = start_atrium(workdir / "atrium", "5m")
        try:
            results.append(run(server, args, corpus))
        finally:
            server.stop()
        if args.synapse:
            server = start_synapse(workdir / "synapse")
            try:
                results.append(run(server, args, corpus))
            finally:
                server.stop()
    finally:
        if args.keep:
            say(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"search: {args.messages} messages in {args.rooms} rooms, {args.queries} queries, "
          f"SQLite, {os.cpu_count()} cores")
    print(table(results))
    a = results[0]["search"]["all"]
    print()
    print("Atrium targets:")
    print(f"  {'PASS' if a['p50_ms'] <= TARGET_P50 else 'MISS'}  p50 <= {TARGET_P50:.0f} ms")
    print(f"  {'PASS' if a['p99_ms'] <= TARGET_P99 else 'MISS'}  p99 <= {TARGET_P99:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
