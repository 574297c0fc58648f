"""The spec's error model on every path: JSON errcode + error, the spec's status codes."""
import pytest
from flask import jsonify

from atrium.errors import MatrixError
from tests.foundation.conftest import add_user_with_token
from web.http import json_body


@pytest.fixture
def app(make_app):
    app = make_app(serve_server_wellknown=True, public_baseurl="https://m.test.local")

    @app.post("/_test/echo")
    def echo():
        return jsonify(json_body())

    @app.get("/_test/boom")
    def boom():
        raise RuntimeError("secret internals")

    @app.get("/_test/matrix")
    def matrix():
        raise MatrixError(403, "M_FORBIDDEN", "nope", extra_field=1)

    return app


@pytest.fixture
def client(app):
    return app.test_client()


def _err(resp, status, errcode):
    assert resp.status_code == status, resp.data
    body = resp.get_json()
    assert body["errcode"] == errcode
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_unknown_endpoint_is_404_unrecognized(client):
    _err(client.get("/_matrix/client/v3/does/not/exist"), 404, "M_UNRECOGNIZED")
    _err(client.get("/anything"), 404, "M_UNRECOGNIZED")


def test_bad_method_is_405_unrecognized(client):
    _err(client.delete("/_matrix/client/versions"), 405, "M_UNRECOGNIZED")


@pytest.mark.parametrize("data", [b"{not json", b"{\"a\": NaN}", b"\xff\xfe"])
def test_bad_json_is_400_not_json(client, data):
    _err(client.post("/_test/echo", data=data, content_type="application/json"), 400,
         "M_NOT_JSON")


@pytest.mark.parametrize("data", [b"[1,2]", b"\"str\"", b"null", b"1", b'{"a": 1e400}',
                                  b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}",
                                  b'{"a": ' * 5000 + b"1" + b"}" * 5000])
def test_valid_json_of_the_wrong_shape_is_400_bad_json(client, data):
    # JSON that parses but is not an object (or is nested absurdly deep): M_BAD_JSON
    _err(client.post("/_test/echo", data=data, content_type="application/json"), 400,
         "M_BAD_JSON")


@pytest.mark.parametrize("data", [b'{"a": "\\ud800"}', b'{"\\udfff": 1}',
                                  b'{"a": [{"b": "x\\udc00"}]}'])
def test_lone_surrogates_are_400_invalid_param(client, data):
    # parses, but is not Unicode: nothing could store, hash or sign it
    _err(client.post("/_test/echo", data=data, content_type="application/json"), 400,
         "M_INVALID_PARAM")


def test_empty_body_is_not_json(client):
    _err(client.post("/_test/echo", data=b""), 400, "M_NOT_JSON")


def test_body_over_limit_is_413(client):
    big = b'{"a": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    _err(client.post("/_test/echo", data=big, content_type="application/json"), 413,
         "M_TOO_LARGE")


def test_valid_json_round_trips(client):
    r = client.post("/_test/echo", json={"a": [1, {"b": None}]})
    assert r.status_code == 200 and r.get_json() == {"a": [1, {"b": None}]}


def test_unexpected_exception_is_json_500_without_traceback(client):
    r = client.get("/_test/boom")
    body = _err(r, 500, "M_UNKNOWN")
    assert "secret internals" not in r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)
    assert body["error"] == "Internal server error"


def test_matrix_error_carries_extra_fields(client):
    body = _err(client.get("/_test/matrix"), 403, "M_FORBIDDEN")
    assert body["extra_field"] == 1


def test_cors_headers_everywhere_and_preflight(client):
    r = client.options("/_matrix/client/v3/login")
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert "PUT" in r.headers["Access-Control-Allow-Methods"]
    r = client.get("/_matrix/client/v3/nothing")
    assert r.headers["Access-Control-Allow-Origin"] == "*"


def test_versions_and_well_known(client):
    v = client.get("/_matrix/client/versions").get_json()
    assert "v1.11" in v["versions"] and "r0.6.1" in v["versions"]
    assert client.get("/.well-known/matrix/client").get_json() == {
        "m.homeserver": {"base_url": "https://m.test.local"}}
    # as Synapse: the host of public_baseurl, port 443 unless it names one
    assert client.get("/.well-known/matrix/server").get_json() == {"m.server": "m.test.local:443"}


def test_server_well_known_off_by_default(make_app):
    c = make_app().test_client()
    _err(c.get("/.well-known/matrix/server"), 404, "M_NOT_FOUND")


def test_missing_and_unknown_tokens(app, client):
    _err(client.get("/_matrix/client/v3/capabilities"), 401, "M_MISSING_TOKEN")
    body = _err(client.get("/_matrix/client/v3/capabilities",
                           headers={"Authorization": "Bearer nope"}), 401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is False
    _err(client.get("/_matrix/client/v3/capabilities?access_token=nope"), 401, "M_UNKNOWN_TOKEN")
    _err(client.get("/_matrix/client/v3/capabilities", headers={"Authorization": "Basic x"}),
         401, "M_MISSING_TOKEN")


def test_expired_token_is_soft_logout(app, client):
    add_user_with_token(app, "@old:test.local", "tok-old", expires_ts=1)
    body = _err(client.get("/_matrix/client/v3/capabilities",
                           headers={"Authorization": "Bearer tok-old"}), 401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is True


def test_capabilities_with_token_and_r0_alias(app, client):
    add_user_with_token(app, "@a:test.local", "tok-a")
    h = {"Authorization": "Bearer tok-a"}
    for prefix in ("v3", "r0"):
        caps = client.get(f"/_matrix/client/{prefix}/capabilities", headers=h).get_json()
        rv = caps["capabilities"]["m.room_versions"]
        assert rv["default"] == "12"
        assert set(rv["available"]) == {str(i) for i in range(1, 13)}
    caps = client.get("/_matrix/client/v3/capabilities?access_token=tok-a").get_json()
    assert caps["capabilities"]["m.change_password"]["enabled"] is True


def test_supervision_errors_map_to_matrix_errors(app, client):
    se = pytest.importorskip("supervision.errors")
    cases = {
        "full": (lambda: se.MailboxFull("!r:x", 5, retry_after_ms=1500), 429, "M_LIMIT_EXCEEDED"),
        "parked": (lambda: se.ActorParked("!r:x", retry_after_ms=1500), 503, "M_UNKNOWN"),
        "timeout": (lambda: se.AskTimeout("!r:x", 2.0), 504, "M_UNKNOWN"),
        "failed": (lambda: se.ActorFailed("!r:x", KeyError("secret")), 500, "M_UNKNOWN"),
    }
    for name, (make, _, _) in cases.items():
        def view(make=make):
            raise make()
        app.add_url_rule(f"/_test/sup/{name}", f"sup_{name}", view)
    for name, (_, status, errcode) in cases.items():
        r = client.get(f"/_test/sup/{name}")
        body = _err(r, status, errcode)
        assert "secret" not in r.get_data(as_text=True)
        if status in (429, 503):
            assert body["retry_after_ms"] == 1500


def test_request_id_is_returned_and_client_ids_are_sanitised(client):
    r = client.get("/_matrix/client/versions", headers={"X-Request-Id": "my-req.1"})
    assert r.headers["X-Request-Id"] == "my-req.1"
    r = client.get("/_matrix/client/versions", headers={"X-Request-Id": "bad id <script>"})
    assert r.headers["X-Request-Id"] != "bad id <script>"
    assert len(r.headers["X-Request-Id"]) == 12


def test_url_rules_build_urls_only_when_asked(app):
    """web/app.py LazyBuilderRule: werkzeug's generated URL builders are made on first use
    (matching never needs them); url_for still works, with extra values as a query."""
    from flask import url_for

    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == "console"
                and "filename" in r.arguments)
    assert rule._build_unknown.__name__ == "build"   # the lazy stand-in, not compiled yet
    with app.test_request_context():
        assert url_for("console", filename="console.js") == "/_atrium/console/console.js"
        assert url_for("console", filename="a.js", x="1") == "/_atrium/console/a.js?x=1"
    assert rule._build_unknown.__name__ != "build"   # compiled once, then kept
    assert app.test_client().get("/_atrium/console/console.js").status_code == 200
