"""End to end: the media repository served by a real ``gunicorn -k gevent web:app``, driven
by matrix-nio's AsyncClient and plain HTTP (requests / http.client for raw paths)."""
from __future__ import annotations

import asyncio
import http.client
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml
from PIL import Image

from store.accounts import hash_token, now_ms
from store.database import open_database
from store.testing import database_config, drop_schema

ROOT = Path(__file__).resolve().parents[2]
SERVER = "localhost"
MAX = 2 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base: str, token: str, user_id: str) -> None:
        self.base = base
        self.token = token
        self.user_id = user_id
        self.auth = {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("media_e2e")
    db_cfg, schema = database_config(str(tmp))
    cfg = {"server_name": SERVER, "database": db_cfg, "bcrypt_rounds": 4,
           "media_store_path": str(tmp / "media"), "signing_key_path": str(tmp / "signing.key"),
           "max_upload_size": MAX, "log_level": "WARNING"}
    (tmp / "homeserver.yaml").write_text(yaml.safe_dump(cfg))
    port = _free_port()
    env = {**os.environ, "ATRIUM_CONFIG": str(tmp / "homeserver.yaml"),
           "ATRIUM_BIND": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "web:app"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "server.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if requests.get(f"{base}/_matrix/client/versions", timeout=1).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not start: " + (tmp / "server.log").read_text())
        token, user_id = "e2e_media_token", f"@media:{SERVER}"
        db = open_database(db_cfg["name"], db_cfg["args"])

        def _add(txn: Any) -> None:
            txn.execute("INSERT INTO users (name, creation_ts, admin) VALUES (?,?,0)",
                        (user_id, now_ms()))
            txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                        " VALUES (?,?,?,?)", (hash_token(token), user_id, "E2E", now_ms()))

        db.run("e2e_user", _add, write=True)
        db.close()
        yield Server(base, token, user_id)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_schema(schema)


def nio_upload(server: Server, data: bytes, content_type: str, filename: str) -> str:
    from nio import AsyncClient, UploadResponse

    async def go() -> str:
        client = AsyncClient(server.base, server.user_id, device_id="E2E")
        client.access_token = server.token
        client.user_id = server.user_id
        try:
            resp, _ = await client.upload(lambda *_: io.BytesIO(data), content_type=content_type,
                                          filename=filename, filesize=len(data))
            assert isinstance(resp, UploadResponse), resp
            return resp.content_uri
        finally:
            await client.close()

    uri = asyncio.run(go())
    assert uri.startswith(f"mxc://{SERVER}/")
    return uri.rsplit("/", 1)[1]


def _image(fmt: str, size: tuple[int, int] = (1200, 900), frames: int = 1) -> bytes:
    imgs = [Image.new("RGB", size, (30 * i, 90, 160)) for i in range(frames)]
    buf = io.BytesIO()
    kw = {"save_all": True, "append_images": imgs[1:], "duration": 40} if frames > 1 else {}
    imgs[0].save(buf, fmt, **kw)
    return buf.getvalue()


def test_nio_upload_then_byte_identical_download_on_both_families(server: Server) -> None:
    data = os.urandom(1_500_000)
    mid = nio_upload(server, data, "application/octet-stream", "random.bin")
    r = requests.get(f"{server.base}/_matrix/client/v1/media/download/{SERVER}/{mid}",
                     headers=server.auth)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Disposition"] == 'attachment; filename="random.bin"'
    r = requests.get(f"{server.base}/_matrix/media/v3/download/{SERVER}/{mid}/x.bin")
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Disposition"] == 'attachment; filename="x.bin"'


@pytest.mark.parametrize("fmt,ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                       ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_thumbnails_have_the_requested_dimensions(server: Server, fmt: str, ctype: str) -> None:
    mid = nio_upload(server, _image(fmt), ctype, f"pic.{fmt.lower()}")
    for w, h, method, size in ((32, 32, "crop", (32, 32)), (96, 96, "crop", (96, 96)),
                               (320, 240, "scale", (320, 240)), (640, 480, "scale", (640, 480)),
                               (800, 600, "scale", (800, 600))):
        r = requests.get(f"{server.base}/_matrix/client/v1/media/thumbnail/{SERVER}/{mid}",
                         params={"width": w, "height": h, "method": method}, headers=server.auth)
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == size
        assert r.headers["Content-Disposition"].startswith("inline")


def test_animated_gif_thumbnail(server: Server) -> None:
    mid = nio_upload(server, _image("GIF", (300, 300), frames=5), "image/gif", "a.gif")
    url = f"{server.base}/_matrix/client/v1/media/thumbnail/{SERVER}/{mid}"
    r = requests.get(url, params={"width": 96, "height": 96, "method": "crop",
                                  "animated": "true"}, headers=server.auth)
    assert r.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).n_frames == 5


@pytest.mark.parametrize("ctype,body", [("text/html", b"<script>alert(1)</script>"),
                                        ("image/svg+xml", b"<svg onload='alert(1)'/>")])
def test_html_and_svg_are_sandboxed_attachments(server: Server, ctype: str, body: bytes) -> None:
    mid = nio_upload(server, body, ctype, "evil")
    for url, h in ((f"{server.base}/_matrix/client/v1/media/download/{SERVER}/{mid}",
                    server.auth),
                   (f"{server.base}/_matrix/media/v3/download/{SERVER}/{mid}", {})):
        r = requests.get(url, headers=h)
        assert r.status_code == 200
        assert r.headers["Content-Security-Policy"].startswith("sandbox; default-src 'none';")
        assert "script-src 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Content-Disposition"] == 'attachment; filename="evil"'
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cross-Origin-Resource-Policy"] == "cross-origin"


@pytest.mark.parametrize("path", [
    "/_matrix/media/v3/download/localhost/../../../../etc/passwd",
    "/_matrix/media/v3/download/localhost/..%2F..%2F..%2Fetc%2Fpasswd",
    "/_matrix/media/v3/download/localhost/%2E%2E",
    "/_matrix/media/v3/download/..%2F..%2Fetc/passwd",
    "/_matrix/client/v1/media/download/localhost/..%2f..%2fhomeserver.yaml",
    "/_matrix/media/v3/thumbnail/localhost/..%252F..%252Fetc?width=32&height=32",
    "/_matrix/media/v3/download/localhost/abc%00def",
])
def test_path_traversal_is_refused(server: Server, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.base.rsplit(":", 1)[1]))
    conn.request("GET", path, headers=server.auth)  # sent raw, no client normalisation
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status in (400, 404)
    assert b"root:" not in body and b"server_name" not in body


def test_oversize_uploads_are_refused(server: Server) -> None:
    url = f"{server.base}/_matrix/media/v3/upload"
    r = requests.post(url, data=b"x" * (MAX + 1), headers=server.auth)
    assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(MAX // 65536 + 2):
            yield b"y" * 65536

    try:
        r = requests.post(url, data=chunks(), headers=server.auth)
        assert r.status_code == 413 and r.json()["errcode"] == "M_TOO_LARGE"
    except (requests.ConnectionError, requests.Timeout):
        pass  # the server may close while the client is still sending: still refused
    r = requests.get(f"{server.base}/_matrix/client/v1/media/config", headers=server.auth)
    assert r.json() == {"m.upload.size": MAX}


def test_async_upload_flow(server: Server) -> None:
    r = requests.post(f"{server.base}/_matrix/media/v1/create", headers=server.auth)
    assert r.status_code == 200 and r.json()["unused_expires_at"] > now_ms()
    mid = r.json()["content_uri"].rsplit("/", 1)[1]
    dl = f"{server.base}/_matrix/client/v1/media/download/{SERVER}/{mid}"
    r = requests.get(dl, params={"timeout_ms": 100}, headers=server.auth)
    assert r.status_code == 504 and r.json()["errcode"] == "M_NOT_YET_UPLOADED"
    put = f"{server.base}/_matrix/media/v3/upload/{SERVER}/{mid}"
    r = requests.put(put, data=b"async!", params={"filename": "a.txt"},
                     headers={**server.auth, "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {}
    r = requests.put(put, data=b"again", headers={**server.auth, "Content-Type": "text/plain"})
    assert r.status_code == 409 and r.json()["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"
    r = requests.get(dl, headers=server.auth)
    assert r.content == b"async!" and r.headers["Content-Type"] == "text/plain; charset=utf-8"
