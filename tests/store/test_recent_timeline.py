"""store/recent_timeline.py: the newest timeline events of active rooms answer exactly what
the store's timeline query answers, or say they cannot (None)."""
import random

from store.recent_timeline import RecentTimeline


def test_answers_ranges_above_the_floor_newest_first():
    r = RecentTimeline(start=10, per_room=4)
    for so in (11, 13, 14):
        r.add("!a", f"$a{so}", so)
    r.add("!b", "$b12", 12)
    assert r.ids("!a", 10, 14, 10) == [("$a14", 14), ("$a13", 13), ("$a11", 11)]
    assert r.ids("!a", 11, 14, 10) == [("$a14", 14), ("$a13", 13)]
    assert r.ids("!a", 10, 13, 1) == [("$a13", 13)]
    assert r.ids("!a", 14, 14, 10) == []
    assert r.ids("!a", 9, 14, 10) is None          # below start-up: the store knows
    assert r.ids("!c", 10, 14, 10) == []           # no event since start-up
    assert r.ids("!c", 5, 14, 10) is None


def test_dropping_old_entries_raises_the_floor():
    r = RecentTimeline(start=0, per_room=3)
    for so in range(1, 6):
        r.add("!a", f"$e{so}", so)
    assert r.ids("!a", 2, 5, 10) == [("$e5", 5), ("$e4", 4), ("$e3", 3)]
    assert r.ids("!a", 1, 5, 10) is None           # $e2 was dropped


def test_an_evicted_room_moves_the_horizon_for_rooms_without_a_tail():
    r = RecentTimeline(start=0, rooms=2, per_room=8)
    r.add("!a", "$a1", 1)
    r.add("!b", "$b2", 2)
    r.add("!c", "$c3", 3)                          # evicts !a (newest entry 1)
    assert r.ids("!a", 0, 3, 10) is None           # !a's $a1 is no longer known
    assert r.ids("!a", 1, 3, 10) == []
    r.add("!a", "$a4", 4)                          # a new tail for !a: floor = horizon
    assert r.ids("!a", 1, 4, 10) == [("$a4", 4)]
    assert r.ids("!a", 0, 4, 10) is None


def test_matches_the_store_query_on_random_histories():
    rng = random.Random(7)
    answered = 0
    for _ in range(200):
        start = rng.randint(0, 5)
        r = RecentTimeline(start=start, rooms=3, per_room=rng.randint(1, 6))
        truth: dict[str, list[tuple[str, int]]] = {}
        for so in range(start + 1, start + 40):
            room = rng.choice("abcde")
            if rng.random() < 0.2:
                continue  # a position another room's failed write used, or an outlier
            truth.setdefault(room, []).append((f"${room}{so}", so))
            if rng.random() < 0.1:
                r.skip(room, so)
            else:
                r.add(room, f"${room}{so}", so)
        for _ in range(30):
            room = rng.choice("abcdef")
            lo = rng.randint(0, start + 40)
            hi = rng.randint(lo, start + 40)
            limit = rng.randint(1, 8)
            got = r.ids(room, lo, hi, limit)
            if got is None:
                continue
            answered += 1
            want = [e for e in reversed(truth.get(room, [])) if lo < e[1] <= hi][:limit]
            assert got == want, (room, lo, hi, limit)
    assert answered > 1000  # most ranges are answered from memory


def test_an_event_not_kept_drops_the_tail_and_raises_the_horizon():
    r = RecentTimeline(start=0)
    r.add("!a", "$a1", 1)
    r.skip("!a", 2)                                # nobody waits on !a now
    assert r.ids("!a", 0, 2, 10) is None
    assert r.ids("!b", 1, 2, 10) is None           # !b could be the skipped one
    assert r.ids("!b", 2, 5, 10) == []
    r.add("!a", "$a3", 3)                          # watched again: a new tail above 2
    assert r.ids("!a", 2, 3, 10) == [("$a3", 3)]
    assert r.ids("!a", 1, 3, 10) is None
