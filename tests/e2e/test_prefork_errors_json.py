"""Errors gunicorn answers before the app sees the request (request line too long,
malformed or too many headers) come back as Matrix JSON errors from a real
``gunicorn -k gevent web:app``, not as gunicorn's HTML pages."""
from __future__ import annotations

import json
import socket
import time


def _raw(server, payload: bytes, wait: float = 5.0) -> bytes:
    host, port = server.base_url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        return data


def _answer(raw: bytes) -> tuple[int, str, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    ctype = [h for h in head.decode("latin1").split("\r\n")
             if h.lower().startswith("content-type:")]
    return status, ctype[0].split(":", 1)[1].strip() if ctype else "", json.loads(body)


def test_prefork_errors_are_matrix_json(atrium_server):
    cases = [
        (b"GET /_matrix/client/versions?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
         414),
        (b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n"
         + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
        (b"GET /_matrix/client/versions HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ]
    for payload, expected in cases:
        status, ctype, body = _answer(_raw(atrium_server, payload))
        assert status == expected, (payload[:60], status, body)
        assert ctype == "application/json"
        assert body["errcode"].startswith("M_") and isinstance(body["error"], str)
