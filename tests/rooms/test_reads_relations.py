"""GET /relations (filters, recursion, pagination, visibility) and bundled aggregations
(m.replace edits with the spec's validity rules, m.reference, redactions)."""
from tests.rooms.conftest import user
from tests.rooms.reads_helpers import (V1, V3, get, join, leave, messages, q, relate, text)


def _rel(client, room_id, eid, *parts, status=200, **params):
    path = "/".join([f"{V1}/rooms/{room_id}/relations/{q(eid)}", *parts])
    return get(client, path, status=status, **params)


def _ids(r):
    return [e["event_id"] for e in r["chunk"]]


def _room(app):
    alice, bob = user(app, "alice"), user(app, "bob")
    room_id = alice.create_room(preset="public_chat")
    join(bob, room_id)
    return alice, bob, room_id


def _edit(client, room_id, target, body, etype="m.room.message", new_content=True):
    content = {"msgtype": "m.text", "body": f"* {body}",
               "m.relates_to": {"rel_type": "m.replace", "event_id": target}}
    if new_content:
        content["m.new_content"] = {"msgtype": "m.text", "body": body}
    return client.send(room_id, content, etype=etype)["event_id"]


def test_relations_filters_order_and_recursion(app):
    alice, bob, room_id = _room(app)
    root = text(alice, room_id, "root")
    t1 = relate(bob, room_id, root, "m.thread", "t1")
    ref = relate(alice, room_id, root, "m.reference", "ref")
    t2 = relate(alice, room_id, root, "m.thread", "t2")
    react = bob.send(room_id, {"m.relates_to": {"rel_type": "m.annotation", "event_id": root,
                                                "key": "👍"}}, etype="m.reaction")["event_id"]
    edit_t1 = _edit(bob, room_id, t1, "t1 edited")
    ref_of_ref = relate(bob, room_id, ref, "m.reference", "deeper")
    deep = relate(alice, room_id, ref_of_ref, "m.reference", "deepest")
    too_deep = relate(alice, room_id, deep, "m.reference", "too deep")
    assert _ids(_rel(alice, room_id, root)) == [react, t2, ref, t1]
    assert _ids(_rel(alice, room_id, root, dir="f")) == [t1, ref, t2, react]
    assert _ids(_rel(alice, room_id, root, "m.thread")) == [t2, t1]
    assert _ids(_rel(alice, room_id, root, "m.annotation", "m.reaction")) == [react]
    assert _ids(_rel(alice, room_id, root, "m.annotation", "m.room.message")) == []
    rec = _rel(alice, room_id, root, recurse="true")
    assert rec["recursion_depth"] == 3
    assert _ids(rec) == [deep, ref_of_ref, edit_t1, react, t2, ref, t1]
    assert too_deep not in _ids(rec)
    assert _ids(_rel(alice, room_id, root, "m.reference", recurse="true")) == [
        deep, ref_of_ref, ref]
    flat = _rel(alice, room_id, root, recurse="false")
    assert "recursion_depth" in flat and edit_t1 not in _ids(flat)
    assert "recursion_depth" not in _rel(alice, room_id, root)


def test_relations_pagination_exactly_once(app):
    alice, bob, room_id = _room(app)
    root = text(alice, room_id, "root")
    kids = [relate(alice if i % 2 else bob, room_id, root, "m.thread", f"r{i}")
            for i in range(7)]
    text(alice, room_id, "unrelated")
    for direction, expect in (("b", list(reversed(kids))), ("f", kids)):
        got, frm = [], None
        while True:
            r = _rel(alice, room_id, root, "m.thread", limit=2, dir=direction,
                     **{"from": frm})
            got.extend(_ids(r))
            if frm is not None:
                assert r["prev_batch"] == frm
            if "next_batch" not in r:
                break
            frm = r["next_batch"]
        assert got == expect


def test_relations_visibility_and_errors(app):
    alice, bob, room_id = _room(app)
    root = text(alice, room_id, "root")
    relate(alice, room_id, root, "m.thread", "seen")
    leave(bob, room_id)
    late = text(alice, room_id, "after bob left")
    relate(alice, room_id, late, "m.thread", "unseen")
    assert len(_ids(_rel(bob, room_id, root))) == 1
    assert _rel(bob, room_id, late, status=404)["errcode"] == "M_NOT_FOUND"
    # bob does not get replies he may not see to a root he may see
    relate(alice, room_id, root, "m.thread", "later reply")
    assert len(_ids(_rel(bob, room_id, root))) == 1
    mallory = user(app, "mallory")
    _rel(mallory, room_id, root, status=404)
    assert _rel(alice, room_id, root, status=400, dir="sideways")["errcode"] == "M_INVALID_PARAM"
    assert _rel(alice, room_id, root, status=400, recurse="maybe")["errcode"] == \
        "M_INVALID_PARAM"
    assert _rel(alice, room_id, root, status=400, **{"from": "x1"})["errcode"] == \
        "M_INVALID_PARAM"


def test_edit_bundling_follows_validity_rules(app):
    alice, bob, room_id = _room(app)
    orig = text(alice, room_id, "original")
    e1 = _edit(alice, room_id, orig, "first edit")
    e2 = _edit(alice, room_id, orig, "second edit")
    _edit(bob, room_id, orig, "not yours")                         # other sender
    _edit(alice, room_id, orig, "wrong type", etype="org.example.msg")
    _edit(alice, room_id, orig, "no new content", new_content=False)
    _edit(alice, room_id, e1, "edit of an edit")                  # target is itself an edit
    edits = {e["event_id"]: e for e in _rel(alice, room_id, orig, "m.replace")["chunk"]}
    latest = max((edits[e1], edits[e2]), key=lambda e: (e["origin_server_ts"], e["event_id"]))

    def bundled(client):
        chunk = messages(client, room_id, dir="b", limit=50)["chunk"]
        ev = next(e for e in chunk if e["event_id"] == orig)
        return ev["unsigned"].get("m.relations", {}).get("m.replace")

    assert bundled(alice)["event_id"] == latest["event_id"]
    assert bundled(bob)["content"]["m.new_content"] == latest["content"]["m.new_content"]
    # the original's own content is never replaced
    assert get(alice, f"{V3}/rooms/{room_id}/event/{q(orig)}")["content"]["body"] == "original"
    single = get(alice, f"{V3}/rooms/{room_id}/context/{q(orig)}", limit=0)["event"]
    assert single["content"]["body"] == "original"
    assert single["unsigned"]["m.relations"]["m.replace"]["event_id"] == latest["event_id"]
    # redacting the latest edit falls back to the other one
    other = e1 if latest["event_id"] == e2 else e2
    alice.req("PUT", f"{V3}/rooms/{room_id}/redact/{q(latest['event_id'])}/r1", {})
    assert bundled(alice)["event_id"] == other
    # a redacted original gets no m.replace bundle at all
    alice.req("PUT", f"{V3}/rooms/{room_id}/redact/{q(orig)}/r2", {})
    assert bundled(alice) is None


def test_reference_bundle_and_state_events_get_none(app):
    alice, bob, room_id = _room(app)
    orig = text(alice, room_id, "cite me")
    r1 = relate(bob, room_id, orig, "m.reference")
    r2 = relate(alice, room_id, orig, "m.reference")
    chunk = messages(alice, room_id, dir="b", limit=10)["chunk"]
    ev = next(e for e in chunk if e["event_id"] == orig)
    assert ev["unsigned"]["m.relations"]["m.reference"] == {
        "chunk": [{"event_id": r1}, {"event_id": r2}]}
    bob.req("PUT", f"{V3}/rooms/{room_id}/redact/{q(r1)}/x", {})
    chunk = messages(alice, room_id, dir="b", limit=10)["chunk"]
    ev = next(e for e in chunk if e["event_id"] == orig)
    assert ev["unsigned"]["m.relations"]["m.reference"] == {"chunk": [{"event_id": r2}]}
    assert all("m.relations" not in e["unsigned"] for e in chunk if "state_key" in e)
