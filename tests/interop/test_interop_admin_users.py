"""The users half of the admin API answers as Synapse's does: the same calls, in the same
order, to a real Synapse and to Atrium; the status codes, errcodes and the key sets of the
answers must agree (values differ: ids, times, tokens)."""
from __future__ import annotations

import time
from typing import Any

import requests

from tests.interop.helpers import q

A1, A2 = "/_synapse/admin/v1", "/_synapse/admin/v2"


def _calls(server_name: str) -> list[tuple[str, str, Any]]:
    """(method, path, body) of the script; ``{u}`` is a plain user made for it."""
    u, new = "{u}", f"@adm_new:{server_name}"
    later = int(time.time() * 1000) + 86_400_000
    return [
        ("GET", f"{A2}/users?limit=1&order_by=name", None),
        ("GET", f"{A2}/users/{u}", None),
        ("GET", f"{A2}/users/@nobody:{server_name}", None),
        ("GET", f"{A2}/users?order_by=password", None),
        ("PUT", f"{A2}/users/{q(new)}", {"password": "pw-1", "displayname": "N",
                                          "threepids": [{"medium": "email",
                                                         "address": "n@example.org"}]}),
        ("PUT", f"{A2}/users/{q(new)}", {"admin": "yes"}),
        ("PUT", f"{A2}/users/{q(new)}", {"displayname": "M", "locked": True}),
        ("PUT", f"{A2}/users/{q(new)}", {"deactivated": True, "locked": True}),
        ("GET", f"{A1}/whois/{u}", None),
        ("GET", f"{A2}/users/{u}/devices", None),
        ("GET", f"{A2}/users/{u}/devices/NOSUCHDEVICE", None),
        ("POST", f"{A2}/users/{u}/delete_devices", {}),
        ("GET", f"{A1}/users/{u}/joined_rooms", None),
        ("GET", f"{A1}/users/{u}/override_ratelimit", None),
        ("POST", f"{A1}/users/{u}/override_ratelimit", {"messages_per_second": 5}),
        ("POST", f"{A1}/users/{u}/override_ratelimit", {"burst_count": -1}),
        ("GET", f"{A1}/users/{u}/override_ratelimit", None),
        ("DELETE", f"{A1}/users/{u}/override_ratelimit", None),
        ("POST", f"{A1}/users/{u}/shadow_ban", {}),
        ("DELETE", f"{A1}/users/{u}/shadow_ban", {}),
        ("POST", f"{A1}/users/{u}/login", {"valid_until_ms": later}),
        ("POST", f"{A1}/users/{u}/login", {"valid_until_ms": "soon"}),
        ("POST", f"{A1}/reset_password/{u}", {"new_password": "pw-2", "logout_devices": False}),
        ("POST", f"{A1}/reset_password/{u}", {}),
        ("POST", f"{A1}/registration_tokens/new", {"token": "admtok", "uses_allowed": 2}),
        ("GET", f"{A1}/registration_tokens/admtok", None),
        ("PUT", f"{A1}/registration_tokens/admtok", {"expiry_time": later}),
        ("PUT", f"{A1}/registration_tokens/admtok", {"uses_allowed": -1}),
        ("GET", f"{A1}/registration_tokens?valid=true", None),
        ("DELETE", f"{A1}/registration_tokens/admtok", None),
        ("DELETE", f"{A1}/registration_tokens/admtok", None),
        ("GET", f"{A1}/users/{u}/pushers", None),
        ("GET", f"{A1}/users/@nobody:{server_name}/pushers", None),
        ("GET", f"{A1}/users/{u}/accountdata", None),
        ("GET", f"{A1}/username_available?username=admplain", None),
        ("GET", f"{A1}/username_available?username=adm_free", None),
        ("GET", f"{A1}/username_available?username=_adm", None),
        ("GET", f"{A1}/statistics/users/media?order_by=media_length&dir=b", None),
        ("GET", f"{A1}/statistics/users/media?order_by=size", None),
        ("POST", f"{A1}/user/{u}/redact", {"rooms": "all"}),
        ("POST", f"{A1}/user/{u}/redact", {"rooms": [], "limit": -1}),
        ("GET", f"{A1}/user/redact_status/nosuchid", None),
        ("POST", f"{A1}/deactivate/{u}", {"erase": "yes"}),
        ("POST", f"{A1}/deactivate/{u}", {"erase": True}),
        ("GET", f"{A2}/users/{u}", None),
    ]


def _shape(v: Any) -> Any:
    """What must agree: the keys (recursively into the first element of lists) and the
    booleans; whois's devices are keyed differently (docs/admin_api.md)."""
    if isinstance(v, dict):
        if "errcode" in v:
            return {"errcode": v["errcode"]}
        return {k: _shape(x) for k, x in v.items() if k != "devices" or not isinstance(x, dict)}
    if isinstance(v, list):
        return [_shape(v[0])] if v else []
    return v if isinstance(v, bool) else None   # flags must agree too


def _run(peers: Any, server: Any) -> list[tuple[int, Any]]:
    admin = server.register("admroot", "pw-admin", admin=True)
    user = server.register("admplain", "pw-user")
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {admin['access_token']}"
    r = requests.get(f"{server.base_url}{A2}/users", verify=peers.ca.cert_path, timeout=30,
                     headers={"Authorization": f"Bearer {user['access_token']}"})
    out = [(r.status_code, _shape(r.json()))]
    for method, path, body in _calls(server.server_name):
        path = path.replace("{u}", q(user["user_id"]))
        # verify per request: a session's own setting loses to REQUESTS_CA_BUNDLE
        r = s.request(method, server.base_url + path, json=body, timeout=30,
                      verify=peers.ca.cert_path)
        out.append((r.status_code, _shape(r.json())))
    return out


def test_admin_users_api_answers_as_synapse(peers):
    want = _run(peers, peers.synapse)
    got = _run(peers, peers.atrium)
    calls = [("GET", "users as a non-admin", None)] + _calls("x")
    diffs = [f"{m} {p}: synapse {w} / atrium {g}"
             for (m, p, _), w, g in zip(calls, want, got) if w != g]
    assert not diffs, "\n".join(diffs)
