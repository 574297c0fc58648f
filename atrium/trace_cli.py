"""Actor-trace tool: show what the actors did for one request, or a room's recent traffic.

Against a live server (admin access token required; the admin API renders the text)::

    python -m atrium.trace_cli --url http://127.0.0.1:8008 --token ADMIN_TOKEN trace TRACE_ID
    python -m atrium.trace_cli --url ... --token ... room '!room:example.org' --limit 20
    python -m atrium.trace_cli --url ... --token ... actors

Offline, from the JSONL file a server writes when ``trace.jsonl_path`` is configured::

    python -m atrium.trace_cli --jsonl trace.jsonl trace TRACE_ID
    python -m atrium.trace_cli --jsonl trace.jsonl room '!room:example.org' --limit 20

The trace id of a request is its request id: the ``X-Request-Id`` header the client sent, or
the id in the server's log lines.  ``--json`` prints the admin API's JSON instead of text.
The token may also come from ``ATRIUM_ADMIN_TOKEN``.  Exit status: 0 ok, 1 server or
file error, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence, TextIO
from urllib.parse import quote

ADMIN = "/_atrium/admin/v1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atrium trace",
        description="Render Atrium actor traces: one request's messages with timings and "
                    "outcomes, or a room's recent traffic.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", help="base URL of a running server (default: where `python -m "
                                   "atrium register` finds it: ATRIUM_BIND, the config's "
                                   "public_baseurl or listeners, else http://127.0.0.1:8008)")
    src.add_argument("--jsonl", metavar="FILE", help="read records from a trace JSONL file")
    p.add_argument("-c", "--config", help="config file to find the server by (default: "
                                          "$ATRIUM_CONFIG or ./homeserver.yaml, if present)")
    p.add_argument("--token", default=os.environ.get("ATRIUM_ADMIN_TOKEN"),
                   help="an admin user's access token (default: $ATRIUM_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="one request's actor messages")
    t.add_argument("trace_id")
    r = sub.add_parser("room", help="a room's recent actor traffic")
    r.add_argument("room_id")
    r.add_argument("--limit", type=int, default=50)
    sub.add_parser("actors", help="supervisors and their actors (live server only)")
    return p


def _fetch(args: argparse.Namespace, path: str, params: dict[str, Any]) -> tuple[int, str]:
    import requests

    if not args.json:
        params = dict(params, format="text")
    r = requests.get(args.url.rstrip("/") + path, params=params, timeout=args.timeout,
                     headers={"Authorization": f"Bearer {args.token}"})
    if r.status_code != 200:
        try:
            body = r.json()
            detail = f"{body.get('errcode', '')}: {body.get('error', '')}"
        except ValueError:
            detail = r.text[:200]
        return 1, f"error: {r.status_code} {detail}"
    if args.json:
        return 0, json.dumps(r.json(), indent=2, sort_keys=False)
    return 0, r.text.rstrip("\n")


def _render_actors(body: dict[str, Any]) -> str:
    lines = []
    for name, info in body.items():
        s = info.get("stats", {})
        lines.append(f"{name}: {s.get('children', 0)} actors {s.get('by_state', {})}  "
                     f"handled {s.get('handled', 0)}  crashes {s.get('crashes', 0)}  "
                     f"restarts {s.get('restarts', 0)}  parks {s.get('parks', 0)}  "
                     f"rejected_full {s.get('rejected_full', 0)}  "
                     f"timeouts {s.get('timeouts', 0)}")
        for c in info.get("children", []):
            extra = f"  retry_after_ms {c['retry_after_ms']}" if "retry_after_ms" in c else ""
            lines.append(f"  {c.get('key')}  {c.get('state')}  pending {c.get('pending')}  "
                         f"incarnation {c.get('incarnation')}  restarts {c.get('restarts')}"
                         f"{extra}")
    return "\n".join(lines) if lines else "no supervisors"


def _live(args: argparse.Namespace) -> tuple[int, str]:
    import requests

    if not args.token:
        return 2, "error: --token (or ATRIUM_ADMIN_TOKEN) is required with --url"
    try:
        if args.command == "trace":
            return _fetch(args, f"{ADMIN}/traces/{quote(args.trace_id, safe='')}", {})
        if args.command == "room":
            return _fetch(args, f"{ADMIN}/rooms/{quote(args.room_id, safe='')}/traces",
                          {"limit": args.limit})
        r = requests.get(args.url.rstrip("/") + f"{ADMIN}/actors", timeout=args.timeout,
                         headers={"Authorization": f"Bearer {args.token}"})
        if r.status_code != 200:
            return 1, f"error: {r.status_code} {r.text[:200]}"
        body = r.json()
        return 0, json.dumps(body, indent=2) if args.json else _render_actors(body)
    except requests.RequestException as e:
        return 1, f"error: cannot reach {args.url}: {e}"


def _offline(args: argparse.Namespace) -> tuple[int, str]:
    from supervision.render import render_recent, render_trace
    from supervision.tracer import load_jsonl

    if args.command == "actors":
        return 2, "error: 'actors' needs a live server (--url)"
    try:
        records = load_jsonl(args.jsonl)
    except (OSError, ValueError, KeyError) as e:
        return 1, f"error: cannot read {args.jsonl}: {e}"
    if args.command == "trace":
        chosen = [r for r in records if r.trace_id == args.trace_id]
        if args.json:
            return 0, json.dumps({"trace_id": args.trace_id,
                                  "records": [r.to_dict() for r in chosen]}, indent=2)
        return 0, render_trace(chosen, args.trace_id)
    key = args.room_id
    chosen = [r for r in records if key in (r.key, r.recipient, r.sender)][-args.limit:]
    if args.json:
        return 0, json.dumps({"room_id": key, "records": [r.to_dict() for r in chosen]},
                             indent=2)
    return 0, render_recent(chosen, key)


def _default_url(path: str | None) -> str | None:
    """The server as the other CLI commands find it (atrium/cli.py ``server_url``); None
    after printing why a named config cannot be read."""
    from atrium.cli import server_url
    from atrium.config import ConfigError, config_path_from_env, load_config

    path = path or config_path_from_env()
    if not os.path.exists(path):
        return server_url(None)
    try:
        return server_url(load_config(path, write_default=False, warn=False))
    except ConfigError as e:
        print(f"atrium: {e}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point; returns the exit status (``python -m atrium trace`` can delegate here)."""
    out = out or sys.stdout
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: usage errors (2) and --help (0)
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "limit", 1) < 1:
        print("error: --limit must be >= 1", file=sys.stderr)
        return 2
    if not args.url and not args.jsonl:
        args.url = _default_url(args.config)
        if args.url is None:
            return 2
    status, text = _live(args) if args.url else _offline(args)
    print(text, file=out if status == 0 else sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
