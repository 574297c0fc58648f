"""web/sync_endpoint.py serves /sync in front of Flask: what every Flask route gives a
response (request id, CORS and cache headers, the spec's error bodies, the access token
from a header or the query, the r0 alias, 405 for a wrong method, the CORS pre-flight) must
hold for it too, and its parked requests must not hold Flask's per-request objects."""
import logging

import gevent

from tests.sync.conftest import V, user


def _get(app, path, headers=None, query=None, method="GET"):
    return app.test_client().open(path, method=method, headers=headers or {},
                                  query_string=query)


def test_answer_headers_match_the_flask_routes(app):
    alice = user(app, "alice")
    sync = _get(app, f"{V}/sync", alice.h, {"timeout": "0"})
    other = _get(app, f"{V}/account/whoami", alice.h)
    assert sync.status_code == other.status_code == 200
    for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
                 "Access-Control-Allow-Headers", "Access-Control-Expose-Headers",
                 "Cache-Control", "Content-Type"):
        assert sync.headers[name] == other.headers[name], name
    assert sync.headers["X-Request-Id"]
    assert int(sync.headers["Content-Length"]) == len(sync.get_data())
    assert "next_batch" in sync.get_json()


def test_client_request_id_is_echoed_and_unsafe_ones_replaced(app):
    alice = user(app, "alice")
    ok = _get(app, f"{V}/sync", {**alice.h, "X-Request-Id": "my-req.1"}, {"timeout": "0"})
    assert ok.headers["X-Request-Id"] == "my-req.1"
    bad = _get(app, f"{V}/sync", {**alice.h, "X-Request-Id": "no spaces <or> quotes\""},
               {"timeout": "0"})
    assert bad.headers["X-Request-Id"] != "no spaces <or> quotes\""
    assert bad.headers["X-Request-Id"].isalnum()


def test_auth_errors(app):
    alice = user(app, "alice")
    missing = _get(app, f"{V}/sync")
    assert missing.status_code == 401 and missing.get_json()["errcode"] == "M_MISSING_TOKEN"
    assert missing.headers["Access-Control-Allow-Origin"] == "*"
    unknown = _get(app, f"{V}/sync", {"Authorization": "Bearer nope"})
    assert unknown.status_code == 401
    assert unknown.get_json() == {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown access token",
                                  "soft_logout": False}
    scheme = _get(app, f"{V}/sync", {"Authorization": "Basic abc"})
    assert scheme.status_code == 401 and scheme.get_json()["errcode"] == "M_MISSING_TOKEN"
    token = alice.h["Authorization"].split(" ", 1)[1]
    by_query = _get(app, f"{V}/sync", query={"access_token": token, "timeout": "0"})
    assert by_query.status_code == 200 and "next_batch" in by_query.get_json()


def test_parameter_errors(app):
    alice = user(app, "alice")
    for query, errcode in [({"timeout": "soon"}, "M_INVALID_PARAM"),
                           ({"timeout": "-1"}, "M_INVALID_PARAM"),
                           ({"full_state": "maybe"}, "M_INVALID_PARAM"),
                           ({"set_presence": ""}, "M_INVALID_PARAM"),
                           ({"filter": "{not json"}, "M_INVALID_PARAM"),
                           ({"since": "garbage"}, "M_INVALID_PARAM")]:
        r = _get(app, f"{V}/sync", alice.h, query)
        assert r.status_code == 400, (query, r.get_data())
        assert r.get_json()["errcode"] == errcode, query
        assert set(r.get_json()) >= {"errcode", "error"}


def test_methods_aliases_and_preflight(app):
    alice = user(app, "alice")
    assert _get(app, f"{V}/sync", alice.h, method="POST").status_code == 405
    assert _get(app, f"{V}/sync", alice.h, method="POST").get_json()["errcode"] == \
        "M_UNRECOGNIZED"
    pre = _get(app, f"{V}/sync", method="OPTIONS")
    assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "*"
    r0 = _get(app, "/_matrix/client/r0/sync", alice.h, {"timeout": "0"})
    assert r0.status_code == 200 and "next_batch" in r0.get_json()
    slash = _get(app, f"{V}/sync/", alice.h, {"timeout": "0"})
    assert slash.status_code == 200
    # a longer path is not /sync
    assert _get(app, f"{V}/syncx", alice.h).status_code == 404


def test_access_log_redacts_a_query_token(app, caplog):
    alice = user(app, "alice")
    token = alice.h["Authorization"].split(" ", 1)[1]
    with caplog.at_level(logging.INFO, logger="atrium.access"):
        _get(app, f"{V}/sync", query={"access_token": token, "timeout": "0"})
    lines = [r.getMessage() for r in caplog.records if "/sync" in r.getMessage()]
    assert lines and all(token not in line for line in lines)
    # the endpoint drops the query before its wait: the line names the path only
    assert any('/sync HTTP/1.1" 200 ' in line for line in lines), lines


def test_a_crash_inside_is_a_500_with_a_matrix_body(app, monkeypatch):
    alice = user(app, "alice")
    import web.sync_endpoint as endpoint

    def boom(*a, **k):
        raise RuntimeError("broken")

    monkeypatch.setattr(endpoint, "get_sync", boom)
    r = _get(app, f"{V}/sync", alice.h)
    assert r.status_code == 500
    assert r.get_json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}


def test_a_parked_sync_holds_no_flask_request(app, monkeypatch):
    """While it waits, no Flask request context exists for it."""
    from flask import has_request_context

    import web.sync as sync_mod

    alice = user(app, "alice")
    since = alice.sync()["next_batch"]
    seen = []
    real = sync_mod.sync_wait

    def spy(*a, **k):
        seen.append(has_request_context())
        return real(*a, **k)

    monkeypatch.setattr(sync_mod, "sync_wait", spy)
    g = gevent.spawn(_get, app, f"{V}/sync", alice.h, {"since": since, "timeout": "200"})
    g.join(5)
    assert g.value.status_code == 200
    assert seen == [False]


def test_actor_messages_of_a_sync_carry_its_request_id(app):
    from web.app import runtime_of

    alice = user(app, "alice")
    r = _get(app, f"{V}/sync", {**alice.h, "X-Request-Id": "sync-trace-7"}, {"timeout": "0"})
    assert r.status_code == 200
    records = runtime_of(app).parts["tracer"].by_trace("sync-trace-7")
    assert any(rec.message_type == "SyncStarted" for rec in records), records


def test_an_answer_json_cannot_hold_is_a_500_with_a_matrix_body(app, monkeypatch):
    alice = user(app, "alice")
    import web.sync_endpoint as endpoint

    monkeypatch.setattr(endpoint, "get_sync", lambda *a, **k: (lambda: {"x": object()}))
    r = _get(app, f"{V}/sync", alice.h)
    assert r.status_code == 500
    assert r.get_json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    assert r.headers["Access-Control-Allow-Origin"] == "*"
