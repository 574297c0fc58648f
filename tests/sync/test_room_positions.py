"""web/sync_caches.py RoomPositions: a bounded map of the most recently active rooms' latest
event positions; what it answers is what the store would answer, or it says it cannot."""
from web.sync_caches import RoomPositions


def _store(rows):
    """heal(lo, hi): (room, max position) for events in (lo, hi] of ``rows``."""
    def heal(lo, hi):
        out = {}
        for room, pos in rows:
            if lo < pos <= hi:
                out[room] = max(out.get(room, 0), pos)
        return list(out.items())
    return heal


def test_answers_moved_rooms_from_the_floor_on():
    rows = []
    pos = RoomPositions(10, _store(rows))
    for p, room in [(11, "!a"), (12, "!b"), (13, "!a")]:
        rows.append((room, p))
        pos.note(room, [p], [p] if room == "!b" else [])
    moved = pos.moved_since(11, 13)
    assert moved("!a") and moved("!b") and not moved("!c")
    assert not pos.moved_since(13, 13)("!a")
    assert pos.moved_since(9, 13) is None           # before boot: the store answers
    assert pos.members_moved(["!b"], 11) is True
    assert pos.members_moved(["!a"], 11) is False


def test_dropping_rooms_raises_the_floor_and_never_hides_an_event():
    rows = []
    pos = RoomPositions(0, _store(rows), max_rooms=3)
    for p in range(1, 11):                           # rooms r1..r10, one event each
        rows.append((f"!r{p}", p))
        pos.note(f"!r{p}", [p], [p])
    assert pos.floor == 7                            # r1..r7 were dropped, r7 last
    assert pos.moved_since(6, 10) is None            # r7 moved after 6: cannot answer
    assert pos.members_moved(["!r7"], 6) is None
    moved = pos.moved_since(7, 10)
    assert [r for r in (f"!r{p}" for p in range(1, 11)) if moved(r)] == ["!r8", "!r9", "!r10"]
    # a dropped room that gets a new event is known again
    rows.append(("!r1", 11))
    pos.note("!r1", [11])
    assert pos.moved_since(10, 11)("!r1")


def test_a_test_outliving_a_burst_of_other_rooms_answers_yes_for_what_it_forgot():
    rows = []
    pos = RoomPositions(0, _store(rows), max_rooms=2)
    rows.append(("!old", 1))
    pos.note("!old", [1])
    moved = pos.moved_since(0, 1)
    assert moved("!old") and not moved("!never")
    for p in range(2, 6):                            # a burst pushes "!old" out
        rows.append((f"!b{p}", p))
        pos.note(f"!b{p}", [p])
    assert moved("!old")                             # still true (and now for all)
    assert moved("!never")                           # unknown: the range query decides


def test_healing_from_the_store_keeps_the_bound():
    rows = [(f"!h{p}", p) for p in range(1, 8)]      # committed, never noted (other writer)
    pos = RoomPositions(0, _store(rows), max_rooms=3)
    assert pos.moved_since(0, 7) is None             # the heal pushed out rooms after 0
    assert pos.floor == 4 and pos.hwm == 7
    moved = pos.moved_since(4, 7)
    assert [r for r, _ in rows if moved(r)] == ["!h5", "!h6", "!h7"]
