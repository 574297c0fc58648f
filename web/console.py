"""The operator's console: a small web page at ``/_atrium/console`` served by Atrium itself
from ``web/static/console/`` (plain HTML, CSS and ES modules: no build step, no CDN).

- ``GET /_atrium/console`` — the page (``index.html``)
- ``GET /_atrium/console/{file}`` — its scripts and style sheet

The page logs in with ``POST /_matrix/client/v3/login`` and then talks only to Atrium's
admin API (web/admin.py), with the admin's access token; the files themselves are public
(they hold no data).  The set of files is read once at start-up: any other name, including
``..`` tricks, is the JSON 404 ``M_UNRECOGNIZED`` every unknown path gets.  Every file goes
out with a strict Content-Security-Policy (scripts and styles from this origin only, no
inline code, no framing), ``X-Frame-Options: DENY`` and ``nosniff``.  See docs/console.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, Response

from atrium.errors import MatrixError

STATIC = Path(__file__).resolve().parent / "static" / "console"
PREFIX = "/_atrium/console"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def load_files(folder: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """``name -> (content, content type)`` of the console's files (top level only)."""
    files: dict[str, tuple[bytes, str]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            kind = TYPES.get(path.suffix)
            if kind is not None and path.is_file():
                files[path.name] = (path.read_bytes(), kind)
    return files


def register(app: Flask, runtime: Any) -> None:  # noqa: ARG001 - same shape as every area
    files = load_files()

    def serve(filename: str = "index.html") -> Any:
        """GET /_atrium/console and GET /_atrium/console/{file}"""
        found = files.get(filename)
        if found is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        content, kind = found
        return Response(content, content_type=kind, headers=HEADERS)

    # one endpoint, "console", for the page and its files: public, like any static file
    app.add_url_rule(PREFIX, endpoint="console", view_func=serve, methods=["GET"])
    app.add_url_rule(f"{PREFIX}/<path:filename>", endpoint="console", view_func=serve,
                     methods=["GET"])
