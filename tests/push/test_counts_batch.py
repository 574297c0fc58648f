"""store/push.py reads the counts of many (user, room) pairs in a few statements per room;
each answer must equal the per-user definition: the notification rows after the user's read
position (the later of their read receipts and own events; a threaded receipt reads only
its thread, an unthreaded one every thread), plus the evaluated rows not written yet."""
import random

from store import push as push_store

ROOMS = ("!r1:t", "!r2:t")
USERS = [f"@u{i}:t" for i in range(12)]
THREADS = ("main", "$root1", "$root2")


def _reference(rows, receipts, own, pending, user, room):
    reads: dict[str, int] = {}
    for (r, rtype, u, thread), pos in receipts.items():
        if r == room and u == user and rtype in push_store.READ_RECEIPTS:
            reads[thread] = max(reads.get(thread, -1), pos)
    for (u, r, thread), pos in own.items():
        if u == user and r == room:
            reads[thread] = max(reads.get(thread, -1), pos)
    p_rows, p_own = pending.get((user, room), ((), ()))
    for thread, pos in p_own:
        reads[thread] = max(reads.get(thread, -1), pos)
    base = reads.get("", -1)
    counted = {(ev, so, th, hl) for (u, ev), (r, so, th, hl) in rows.items()
               if u == user and r == room}
    counted |= {(ev, so, th, hl) for ev, so, th, hl in p_rows}
    per_thread: dict[str, list[int]] = {}
    for ev, so, th, hl in counted:
        if so > max(base, reads.get(th, -1)):
            cell = per_thread.setdefault(th, [0, 0])
            cell[0] += 1
            cell[1] += int(hl)
    return push_store._shape_counts(per_thread)


def _fill(db, rng):
    rows, receipts, own = {}, {}, {}
    so = 0
    events = []
    for _ in range(60):
        so += 1
        events.append((f"$e{so}", rng.choice(ROOMS), so, rng.choice(THREADS)))
    for ev, room, so, thread in events:
        for user in rng.sample(USERS, rng.randint(0, len(USERS))):
            rows[(user, ev)] = (room, so, thread, rng.random() < 0.3)
    for user in USERS:
        for room in ROOMS:
            for thread in ("", *THREADS):
                if rng.random() < 0.35:
                    rtype = rng.choice(("m.read", "m.read.private", "m.fully_read"))
                    receipts[(room, rtype, user, thread)] = rng.randint(0, so)
            if rng.random() < 0.3:
                own[(user, room, rng.choice(THREADS))] = rng.randint(0, so)

    def write(txn):
        txn.executemany(
            "INSERT INTO event_push_actions (user_id, event_id, room_id, stream_ordering,"
            " thread_id, actions, highlight, ts) VALUES (?, ?, ?, ?, ?, '[]', ?, 0)",
            [(u, ev, r, s, th, int(hl)) for (u, ev), (r, s, th, hl) in rows.items()])
        txn.executemany(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id,"
            " event_stream_ordering, ts, stream_id) VALUES (?, ?, ?, ?, '$x', ?, 0, 1)",
            [(*k, pos) for k, pos in receipts.items()])
        txn.executemany(
            "INSERT INTO event_push_own (user_id, room_id, thread_id, stream_ordering)"
            " VALUES (?, ?, ?, ?)", [(*k, pos) for k, pos in own.items()])

    db.run("fill", write, write=True)
    # evaluated but "not written yet": some rows new, some already stored (counted once)
    pending = {}
    for user in rng.sample(USERS, 6):
        room = rng.choice(ROOMS)
        new = [(f"$p{user}{k}", so + 1 + k, rng.choice(THREADS), rng.random() < 0.5)
               for k in range(rng.randint(0, 3))]
        stored = [(ev, s, th, hl) for (u, ev), (r, s, th, hl) in rows.items()
                  if u == user and r == room][:2]
        own_new = [(rng.choice(THREADS), so + 2)] if rng.random() < 0.3 else []
        pending[(user, room)] = (new + stored, own_new)
    return rows, receipts, own, pending


def test_batched_counts_equal_the_per_user_definition(db, monkeypatch):
    monkeypatch.setattr(push_store, "COUNT_CHUNK", 5)  # several chunks per room
    for seed in range(4):
        rng = random.Random(seed)
        db.run("clear", lambda t: [t.execute(f"DELETE FROM {table}") for table in
                                   ("event_push_actions", "receipts", "event_push_own")],
               write=True)
        rows, receipts, own, pending = _fill(db, rng)
        wanted = sorted((u, r) for u in USERS for r in ROOMS)
        got = db.run("counts", lambda t: push_store._counts_many(t, wanted, pending))
        for user, room in wanted:
            assert got[(user, room)] == _reference(rows, receipts, own, pending, user, room), \
                (seed, user, room)
        one_user, one_room = wanted[3]
        alone = db.run("one", lambda t: push_store._counts_txn(
            t, one_user, one_room, pending.get((one_user, one_room), ((), ()))))
        assert alone == got[(one_user, one_room)]
