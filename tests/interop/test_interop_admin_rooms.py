"""The rooms half of the admin API answers as Synapse's does: the same calls, in the same
order, to a real Synapse and to Atrium; the status codes, errcodes, key sets of the answers
and their booleans must agree (values differ: ids, times)."""
from __future__ import annotations

import time
from typing import Any

import requests

from tests.interop.helpers import q

A1, A2, V3 = "/_synapse/admin/v1", "/_synapse/admin/v2", "/_matrix/client/v3"


def _calls() -> list[tuple[str, str, Any]]:
    """(method, path, body); ``{r}`` is a room made for the script, ``{n}`` an unknown one."""
    r, n = "{r}", "{n}"
    return [
        ("GET", f"{A1}/rooms?limit=1&order_by=name", None),
        ("GET", f"{A1}/rooms?search_term=admroom&dir=b&order_by=joined_members", None),
        ("GET", f"{A1}/rooms?order_by=colour", None),
        ("GET", f"{A1}/rooms?search_term=", None),
        ("GET", f"{A1}/rooms/{r}", None),
        ("GET", f"{A1}/rooms/{n}", None),
        ("GET", f"{A1}/rooms/{r}/members", None),
        ("GET", f"{A1}/rooms/{n}/members", None),
        ("GET", f"{A1}/rooms/{r}/state?type=m.room.name", None),
        ("GET", f"{A1}/rooms/{r}/forward_extremities", None),
        ("GET", f"{A1}/rooms/{r}/messages?dir=b&limit=2", None),
        ("GET", f"{A1}/rooms/{r}/block", None),
        ("PUT", f"{A1}/rooms/{n}/block", {"block": "yes"}),
        ("PUT", f"{A1}/rooms/{n}/block", {"block": True}),
        ("GET", f"{A1}/rooms/{n}/block", None),
        ("GET", f"{A2}/rooms/{r}/delete_status", None),
        ("GET", f"{A2}/rooms/delete_status/nosuchid", None),
        ("POST", f"{A1}/purge_history/{r}", {}),
        ("POST", f"{A1}/purge_history/{r}", {"purge_up_to_ts": "soon"}),
        ("GET", f"{A1}/purge_history_status/nosuchid", None),
        ("DELETE", f"{A2}/rooms/{r}", {"block": "yes"}),
        ("DELETE", f"{A2}/rooms/{r}", {"purge": False}),
    ]


def _shape(v: Any) -> Any:
    """The keys (recursively into the first element of lists) and the booleans."""
    if isinstance(v, dict):
        if "errcode" in v:
            return {"errcode": v["errcode"]}
        return {k: _shape(x) for k, x in v.items() if k not in ("start", "end")}
    if isinstance(v, list):
        return [_shape(v[0])] if v else []
    return v if isinstance(v, bool) else None


def _run(peers: Any, server: Any) -> list[tuple[int, Any]]:
    admin = server.register("admroomroot", "pw-admin", admin=True)
    member = server.register("admroommember", "pw-user")
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {admin['access_token']}"
    verify = peers.ca.cert_path

    def call(method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return s.request(method, server.base_url + path, json=body, timeout=30,
                         verify=verify, headers=headers)

    room = call("POST", f"{V3}/createRoom", {"name": "admroom one", "preset": "public_chat"},
                member["access_token"]).json()["room_id"]
    call("PUT", f"{V3}/rooms/{q(room)}/send/m.room.message/t1",
         {"msgtype": "m.text", "body": "hi"}, member["access_token"])
    unknown = f"!nosuchroom:{server.server_name}"
    r = call("GET", f"{A1}/rooms", token=member["access_token"])
    out = [(r.status_code, _shape(r.json()))]
    for method, path, body in _calls():
        r = call(method, path.replace("{r}", q(room)).replace("{n}", q(unknown)), body)
        out.append((r.status_code, _shape(r.json())))
    delete_id = r.json().get("delete_id")
    for _ in range(100):   # the delete runs in the background on both
        st = call("GET", f"{A2}/rooms/delete_status/{delete_id}")
        if st.json().get("status") in ("complete", "failed"):
            break
        time.sleep(0.1)
    out.append((st.status_code, _shape(st.json())))
    return out


def test_admin_rooms_api_answers_as_synapse(peers):
    want = _run(peers, peers.synapse)
    got = _run(peers, peers.atrium)
    calls = [("GET", "rooms as a non-admin", None)] + _calls() + [("GET", "delete_status", 0)]
    diffs = [f"{m} {p}: synapse {w} / atrium {g}"
             for (m, p, _), w, g in zip(calls, want, got) if w != g]
    assert not diffs, "\n".join(diffs)
