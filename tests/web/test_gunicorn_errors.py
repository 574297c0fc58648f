"""gunicorn's own error answers (before the app sees a request) are Matrix JSON errors."""
from __future__ import annotations

import json
import socket

from gunicorn import util

from web.gunicorn_errors import error_response, install


def _parse(raw: bytes) -> tuple[str, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return lines[0], headers, json.loads(body)


def test_error_response_is_a_matrix_error():
    status, headers, body = _parse(error_response(414, "URI Too Long", "<script>x</script>"))
    assert status == "HTTP/1.1 414 URI Too Long"
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close" and headers["Access-Control-Allow-Origin"] == "*"
    assert body == {"errcode": "M_TOO_LARGE", "error": "<script>x</script>"}
    assert _parse(error_response(400, "Bad Request", "Invalid header"))[2]["errcode"] \
        == "M_BAD_JSON"
    assert _parse(error_response(500, "Internal Server Error", ""))[2] == {
        "errcode": "M_UNKNOWN", "error": "Internal Server Error"}


def test_install_replaces_gunicorn_write_error(app):   # building an app installs it
    install()
    assert getattr(util.write_error, "atrium", False)
    a, b = socket.socketpair()
    try:
        util.write_error(a, 431, "Request Header Fields Too Large", "Error parsing headers")
        a.close()
        raw = b.recv(65536)
    finally:
        b.close()
    status, headers, body = _parse(raw)
    assert status.startswith("HTTP/1.1 431") and body["errcode"] == "M_TOO_LARGE"
