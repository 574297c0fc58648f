"""URL previews (``GET /_matrix/client/v1/media/preview_url`` and the legacy media path)
against loopback HTTP servers the test starts: OpenGraph pages, a plain title, an image
(stored as local media and served back), redirects (one to a blacklisted address, which is
never contacted), an oversized body (declared and chunked), a slow server, the caches (per
URL in memory, by URL and ``ts`` in the table), host names resolved to allowed and
blacklisted addresses, the URL blacklist, bad input and the config's start-up checks."""
from __future__ import annotations

import io
import ssl
from typing import Any
from urllib.parse import quote

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from PIL import Image

from atrium.config import ConfigError, parse_config
from tests.media.conftest import make_env

PREVIEW = "/_matrix/client/v1/media/preview_url"
LEGACY = "/_matrix/media/v3/preview_url"


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png(64, 48)
OG_PAGE = b"""<!doctype html><html><head>
<meta property="og:title" content="An OpenGraph title">
<meta property="og:description" content="What the page says about itself">
<meta property="og:image" content="/img.png">
<meta property="og:site_name" content="Loopback">
<title>Not this one</title></head><body><p>Body text</p></body></html>"""
PLAIN_PAGE = """<html><head><meta charset="iso-8859-1"><title>Plain page \xe9t\xe9</title>
</head><body><nav>Skip the menu</nav><h1>Heading</h1><p>First paragraph of the page.</p>
<script>var ignored = 1;</script><footer>Skip the footer</footer></body></html>""".encode(
    "latin-1")


class Site:
    """A loopback web site whose answers and hit counts the tests control."""

    def __init__(self, host: str) -> None:
        self.hits: dict[str, int] = {}
        self.hosts: list[str] = []
        self.version = 1
        self.server = WSGIServer((host, 0), self.app, log=None, error_log=None)
        self.server.start()
        self.base = f"http://{host}:{self.server.server_port}"

    def app(self, environ: dict[str, Any], start: Any) -> Any:
        path = environ["PATH_INFO"]
        self.hits[path] = self.hits.get(path, 0) + 1
        self.hosts.append(environ.get("HTTP_HOST", ""))
        html = [("Content-Type", "text/html; charset=utf-8")]
        if path == "/og.html":
            start("200 OK", html)
            return [OG_PAGE]
        if path in ("/plain.html", "/counted.html"):
            start("200 OK", [("Content-Type", "text/html")])
            if path == "/counted.html":
                return [f"<title>Version {self.version}</title>".encode()]
            return [PLAIN_PAGE]
        if path in ("/img.png", "/photo"):
            headers = [("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))]
            if path == "/photo":
                headers.append(("Content-Disposition", 'inline; filename="sunset.png"'))
            start("200 OK", headers)
            return [PNG]
        if path == "/og-bad-image.html":
            start("200 OK", html)
            return [f'<meta property="og:title" content="Bad image">'
                    f'<meta property="og:image" content="{environ["X_BAD_TARGET"]}">'.encode()]
        if path == "/redirect-bad":
            start("302 Found", [("Location", environ["X_BAD_TARGET"])])
            return [b""]
        if path == "/redirect-ok":
            start("301 Moved", [("Location", "/og.html")])
            return [b""]
        if path == "/loop":
            start("302 Found", [("Location", "/loop")])
            return [b""]
        if path == "/big":
            body = b"x" * (2 * 1024 * 1024)
            start("200 OK", html + [("Content-Length", str(len(body)))])
            return [body]
        if path == "/big-chunked":
            start("200 OK", html)
            return (b"<p>" + b"y" * 65536 for _ in range(40))
        if path == "/slow":
            gevent.sleep(3)
            start("200 OK", html)
            return [b"<title>too late</title>"]
        if path == "/text.txt":
            start("200 OK", [("Content-Type", "text/plain")])
            return [b"plain text"]
        if path == "/notype":
            start("200 OK", [])
            return [b"<title>no type</title>"]
        start("404 Not Found", html)
        return [b"<title>nope</title>"]


@pytest.fixture(scope="module")
def sites():
    good, bad = Site("127.0.0.1"), Site("127.0.0.2")
    target = f"{bad.base}/secret"
    inner = good.app
    good.app = lambda env, start: inner({**env, "X_BAD_TARGET": target}, start)
    good.server.application = good.app
    yield good, bad
    good.server.stop()
    bad.server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from make_env(
        tmp_path_factory.mktemp("preview"), url_preview_enabled=True,
        url_preview_ip_range_blacklist=["127.0.0.0/8", "::1/128", "10.0.0.0/8"],
        url_preview_ip_range_whitelist=["127.0.0.1/32"], max_spider_size="1M",
        url_preview_url_blacklist=[{"hostname": "blocked.example"}, {"path": "^/private/"}])


@pytest.fixture(scope="module")
def alice(env):
    return {"Authorization": f"Bearer {env.make_user('alice')}"}


def preview(env, headers, url, status=200, path=PREVIEW, **query):
    qs = f"url={quote(url, safe='')}" + "".join(f"&{k}={v}" for k, v in query.items())
    r = env.client.get(f"{path}?{qs}", headers=headers)
    assert r.status_code == status, r.get_data(as_text=True)
    return r.get_json()


def test_an_opengraph_page_and_its_image(env, alice, sites):
    good, _ = sites
    og = preview(env, alice, f"{good.base}/og.html")
    assert og["og:title"] == "An OpenGraph title"
    assert og["og:description"] == "What the page says about itself"
    assert og["og:site_name"] == "Loopback"
    assert og["og:image"].startswith("mxc://media.test/")
    assert og["og:image:type"] == "image/png" and og["matrix:image:size"] == len(PNG)
    assert (og["og:image:width"], og["og:image:height"]) == (64, 48)
    # the image is local media now, served like any upload
    media_id = og["og:image"].rsplit("/", 1)[1]
    r = env.client.get(f"/_matrix/client/v1/media/download/media.test/{media_id}",
                       headers=alice)
    assert r.status_code == 200 and r.data == PNG


def test_a_plain_page_and_the_legacy_path(env, alice, sites):
    good, _ = sites
    og = preview(env, alice, f"{good.base}/plain.html", path=LEGACY)
    assert og["og:title"] == "Plain page été"
    assert og["og:description"] == "Heading\n\nFirst paragraph of the page."
    assert "og:image" not in og


def test_an_image_url_previews_as_the_image(env, alice, sites):
    good, _ = sites
    og = preview(env, alice, f"{good.base}/photo")
    assert og["og:image"].startswith("mxc://media.test/")
    assert og["og:description"] == "sunset.png"
    assert (og["og:image:width"], og["og:image:height"], og["og:image:type"]) == \
        (64, 48, "image/png")


def test_a_blacklisted_address_is_never_contacted(env, alice, sites):
    good, bad = sites
    r = preview(env, alice, f"{bad.base}/direct", status=403)
    assert r["errcode"] == "M_UNKNOWN"
    r = preview(env, alice, f"{good.base}/redirect-bad", status=403)
    assert r["errcode"] == "M_UNKNOWN"
    assert good.hits.get("/redirect-bad") == 1
    assert bad.hits == {}          # nothing was fetched from it, directly or redirected
    # a page's image on a blacklisted address: the page previews without it
    og = preview(env, alice, f"{good.base}/og-bad-image.html")
    assert og == {"og:title": "Bad image"}
    # an IPv4-mapped IPv6 spelling of a blacklisted address is blacklisted too
    port = bad.server.server_port
    assert preview(env, alice, f"http://[::ffff:127.0.0.2]:{port}/x",
                   status=403)["errcode"] == "M_UNKNOWN"
    assert bad.hits == {}


def test_host_names_are_checked_on_every_address(env, alice, sites):
    good, bad = sites
    fetcher = env.runtime.parts["url_preview"].fetcher
    table = {"good.example": ["127.0.0.1"], "evil.example": ["127.0.0.2"],
             "mixed.example": ["127.0.0.1", "127.0.0.2"]}

    def resolve(host, port, *args):
        return [(2, 1, 6, "", (a, port)) for a in table.get(host, [])]

    old, fetcher.resolve = fetcher.resolve, resolve
    try:
        port = good.server.server_port
        og = preview(env, alice, f"http://good.example:{port}/plain.html?v=host")
        assert og["og:title"] == "Plain page été"
        assert good.hosts[-1] == f"good.example:{port}"   # the name, on a checked address
        for name in ("evil.example", "mixed.example", "unknown.example"):
            r = preview(env, alice, f"http://{name}:{port}/plain.html", status=502)
            assert r["errcode"] == "M_UNKNOWN"
        assert bad.hits == {}
    finally:
        fetcher.resolve = old


def test_https_goes_to_the_checked_address_with_the_name_for_tls(env, alice, tmp_path):
    from atrium.tls import issue_cert, make_ca

    ca = make_ca(tmp_path / "ca")
    leaf = issue_cert(ca, tmp_path / "leaf", ["secure.example"])
    site = Site.__new__(Site)
    site.hits, site.hosts, site.version = {}, [], 1
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(leaf.cert_path, leaf.key_path)
    site.server = WSGIServer(("127.0.0.1", 0), site.app, log=None, error_log=None,
                             ssl_context=tls)
    site.server.start()
    fetcher = env.runtime.parts["url_preview"].fetcher
    port = site.server.server_port

    def resolve(host, p, *args):
        return [(2, 1, 6, "", ("127.0.0.1", p))] if host.endswith(".example") else []

    old = fetcher.resolve, fetcher.ca_file
    fetcher.resolve, fetcher.ca_file = resolve, ca.cert_path
    try:
        og = preview(env, alice, f"https://secure.example:{port}/plain.html")
        assert og["og:title"] == "Plain page été"
        assert site.hosts == [f"secure.example:{port}"]
        # the certificate is checked against the name asked for, not the address
        r = preview(env, alice, f"https://other.example:{port}/plain.html", status=502)
        assert r["errcode"] == "M_UNKNOWN" and site.hits == {"/plain.html": 1}
    finally:
        fetcher.resolve, fetcher.ca_file = old
        site.server.stop()


def test_redirects_are_followed_within_bounds(env, alice, sites):
    good, _ = sites
    og = preview(env, alice, f"{good.base}/redirect-ok")
    assert og["og:title"] == "An OpenGraph title"
    assert preview(env, alice, f"{good.base}/loop", status=502)["errcode"] == "M_UNKNOWN"
    assert good.hits["/loop"] == 11


def test_oversized_bodies_are_cut_off(env, alice, sites):
    good, _ = sites
    for path in ("/big", "/big-chunked"):
        r = preview(env, alice, good.base + path, status=502)
        assert r["errcode"] == "M_TOO_LARGE", path


def test_a_slow_server_times_out(env, alice, sites):
    good, _ = sites
    fetcher = env.runtime.parts["url_preview"].fetcher
    old, fetcher.timeout = fetcher.timeout, 0.3
    try:
        started = gevent.get_hub().loop.now()
        r = preview(env, alice, f"{good.base}/slow", status=502)
        assert r["errcode"] == "M_UNKNOWN"
        assert gevent.get_hub().loop.now() - started < 2
    finally:
        fetcher.timeout = old


def test_other_answers(env, alice, sites):
    good, _ = sites
    assert preview(env, alice, f"{good.base}/text.txt", status=502)["errcode"] == "M_UNKNOWN"
    assert preview(env, alice, f"{good.base}/missing", status=502)["errcode"] == "M_UNKNOWN"
    assert preview(env, alice, f"{good.base}/notype") == {}
    # the URL blacklist: nothing resolved, nothing fetched
    assert preview(env, alice, "http://blocked.example/", status=403)["errcode"] == \
        "M_UNKNOWN"
    assert preview(env, alice, f"{good.base}/private/page", status=403)["errcode"] == \
        "M_UNKNOWN"
    assert "/private/page" not in good.hits


def test_answers_are_cached_per_url_and_ts(env, alice, sites):
    good, _ = sites
    previewer = env.runtime.parts["url_preview"]
    url = f"{good.base}/counted.html"
    t0 = previewer.now_ms()
    assert preview(env, alice, url)["og:title"] == "Version 1"
    assert preview(env, alice, url)["og:title"] == "Version 1"
    previewer._memory.clear()                       # as after a restart: the table answers
    assert preview(env, alice, url)["og:title"] == "Version 1"
    assert good.hits["/counted.html"] == 1
    # two hours later the page has changed: fetched again
    good.version = 2
    real_ms, real_clock = previewer.now_ms, previewer.clock
    previewer.now_ms = lambda: real_ms() + 2 * 3600 * 1000
    previewer.clock = lambda: real_clock() + 2 * 3600
    try:
        assert preview(env, alice, url)["og:title"] == "Version 2"
        assert good.hits["/counted.html"] == 2
        # the preview as of an earlier time is the one fetched then
        assert preview(env, alice, url, ts=t0 + 1000)["og:title"] == "Version 1"
        assert preview(env, alice, url)["og:title"] == "Version 2"
        assert good.hits["/counted.html"] == 2
    finally:
        previewer.now_ms, previewer.clock = real_ms, real_clock


def test_failures_are_remembered_briefly(env, alice, sites):
    good, _ = sites
    url = f"{good.base}/missing-twice"
    preview(env, alice, url, status=502)
    preview(env, alice, url, status=502)
    assert good.hits["/missing-twice"] == 1


@pytest.mark.parametrize("query,status,errcode", [
    ("", 400, "M_MISSING_PARAM"),
    ("url=", 400, "M_MISSING_PARAM"),
    ("url=ftp%3A%2F%2Fexample.org%2F", 400, "M_INVALID_PARAM"),
    ("url=file%3A%2F%2F%2Fetc%2Fpasswd", 400, "M_INVALID_PARAM"),
    ("url=http%3A%2F%2F", 400, "M_INVALID_PARAM"),
    ("url=http%3A%2F%2Fexample.org%3A99999%2F", 400, "M_INVALID_PARAM"),
    ("url=http%3A%2F%2Fexample.org%2F&ts=soon", 400, "M_INVALID_PARAM"),
])
def test_bad_input(env, alice, query, status, errcode):
    r = env.client.get(f"{PREVIEW}?{query}", headers=alice)
    assert r.status_code == status and r.get_json()["errcode"] == errcode, r.get_json()


def test_needs_a_token(env):
    r = env.client.get(f"{PREVIEW}?url=http%3A%2F%2Fexample.org%2F")
    assert r.status_code == 401 and r.get_json()["errcode"] == "M_MISSING_TOKEN"


def test_off_by_default(tmp_path):
    for e in make_env(tmp_path):
        token = {"Authorization": f"Bearer {e.make_user('bob')}"}
        r = e.client.get(f"{PREVIEW}?url=http%3A%2F%2Fexample.org%2F", headers=token)
        assert r.status_code == 404 and r.get_json()["errcode"] == "M_UNRECOGNIZED"
        assert e.runtime.parts["url_preview"] is None


def test_config_requires_an_ip_blacklist():
    base = {"server_name": "x.test"}
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "url_preview_enabled": True})
    assert "'url_preview_ip_range_blacklist'" in str(e.value) and "\n" not in str(e.value)
    for bad in ({"url_preview_ip_range_blacklist": ["not-a-range"]},
                {"url_preview_ip_range_blacklist": [], "url_preview_url_blacklist": "x"},
                {"url_preview_ip_range_blacklist": [],
                 "url_preview_url_blacklist": [{"colour": "red"}]},
                {"url_preview_ip_range_blacklist": [], "max_spider_size": "lots"}):
        with pytest.raises(ConfigError):
            parse_config({**base, "url_preview_enabled": True, **bad})
    cfg = parse_config({**base, "url_preview_enabled": True,
                        "url_preview_ip_range_blacklist": ["10.0.0.0/8"]}).url_preview
    # always blocked, and the IPv6 spellings of an IPv4 range
    assert {"0.0.0.0/32", "::/128", "::a00:0/104", "2002:a00::/24"} <= \
        set(cfg.ip_range_blacklist)
    assert cfg.max_spider_size == 10 * 1024 * 1024
