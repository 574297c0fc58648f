"""Request bodies the WSGI server cannot read (bad or cut-off chunked encoding, a client that
resets mid-body) and event content a strict room version cannot hold: 400 with a Matrix
error, never a 500 and never a traceback in the log.  A real gunicorn, because its body
reader is what raises."""
from __future__ import annotations

import json
import socket
import time

import requests

V3 = "/_matrix/client/v3"


def _raw(server, payload: bytes, *, half_close: bool = True, wait: float = 5.0) -> bytes:
    host, port = server.base_url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
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
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].strip().endswith(b"}"):
                break
        return data


def _status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():  # a chunked response: take the first chunk
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return status, json.loads(body)


def _head(token: str, path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def test_bad_and_truncated_chunked_bodies_get_400(atrium_server):
    token = atrium_server.register("bodies1", "pw")["access_token"]
    path = f"{V3}/createRoom"
    bad_size = _head(token, path, "Transfer-Encoding: chunked\r\n") + b"zz\r\n{}\r\n0\r\n\r\n"
    status, body = _status_and_body(_raw(atrium_server, bad_size))
    assert status == 400 and body["errcode"] == "M_NOT_JSON", body
    cut = _head(token, path, "Transfer-Encoding: chunked\r\n") + b"40\r\n{\"name\": \"x"
    status, body = _status_and_body(_raw(atrium_server, cut))
    assert status == 400 and body["errcode"] == "M_NOT_JSON", body
    upload = (f"POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
              f"{token}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
              ).encode() + b"zz\r\nhello\r\n0\r\n\r\n"
    status, body = _status_and_body(_raw(atrium_server, upload))
    assert status == 400 and body["errcode"] == "M_UNKNOWN", body


def test_client_reset_mid_body_is_not_a_server_error(atrium_server):
    token = atrium_server.register("bodies2", "pw")["access_token"]
    host, port = atrium_server.base_url.split("//", 1)[1].split(":")
    for _ in range(3):
        s = socket.create_connection((host, int(port)))
        s.sendall(_head(token, f"{V3}/createRoom", "Content-Length: 500\r\n") + b'{"name"')
        time.sleep(0.2)  # the handler is reading the body now
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # linger 0: a reset
    time.sleep(0.5)
    r = requests.get(f"{atrium_server.base_url}{V3}/account/whoami",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200
    log = atrium_server.log()
    assert "Traceback" not in log and "unhandled error" not in log


def test_create_content_a_strict_room_version_cannot_hold_is_400(atrium_server):
    token = atrium_server.register("bodies3", "pw")["access_token"]
    for content in ({"org.example": 97.5}, {"org.example": 2 ** 60}):
        r = requests.post(f"{atrium_server.base_url}{V3}/createRoom",
                          headers={"Authorization": f"Bearer {token}"},
                          json={"room_version": "12", "creation_content": content}, timeout=10)
        assert r.status_code == 400, r.text
        assert r.json()["errcode"] == "M_BAD_JSON"
    assert "unhandled error" not in atrium_server.log()
