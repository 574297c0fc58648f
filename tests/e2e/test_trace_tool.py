"""The actor-trace tool end to end: ``python -m atrium.trace_cli`` against a real
``gunicorn -k gevent web:app`` (admin API) and over the server's trace JSONL file.

A send made with an ``X-Request-Id`` header shows up under that trace id as the room actor's
``Send`` with its wait/run timings and outcome ``ok``; a send into a room with an injected
crash shows outcome ``crash``; the room's recent traffic lists the sends with their trace
ids; non-admins are refused.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from atrium.trace_cli import main as trace_main
from rooms_server import BASE_OVERRIDES, ROOT, Client


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = trace_main(list(argv), out=out)
    return status, out.getvalue()


def test_trace_tool_shows_sends_crashes_and_room_traffic(
        start_atrium: Callable[..., Any], tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("ATRIUM_ADMIN_TOKEN", raising=False)
    jsonl = tmp_path / "trace.jsonl"
    server = start_atrium(**BASE_OVERRIDES, trace={"jsonl_path": str(jsonl)})
    admin = Client(server.base_url, server.register("admin", "pw-admin", admin=True))
    user = Client(server.base_url, server.register("plain", "pw-plain"))
    room = admin.create_room(preset="public_chat")
    url, token = server.base_url, admin.token

    ok = admin.send(room, "hello", request_id="trace-ok-1")
    assert ok.status == 200, ok.body

    # one request's trace, through the real command line
    proc = subprocess.run(
        [sys.executable, "-m", "atrium.trace_cli", "--url", url, "--token", token,
         "trace", "trace-ok-1"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert re.match(r"trace trace-ok-1: \d+ messages over [\d.]+ ms\n", text), text
    # (other actors may appear in the same trace, e.g. the sender's user actor)
    line = next(ln for ln in text.splitlines() if f"→ rooms/{room}" in ln)
    assert "ask" in line and "Send" in line and line.rstrip().endswith("ok"), line
    wait, run = re.search(r"wait ([\d.]+)\s+run ([\d.]+)", line).groups()  # type: ignore[union-attr]
    assert 0 <= float(wait) < 5_000 and 0 < float(run) < 5_000, line
    assert "PUT" in line and "/send/m.room.message/" in line, line  # who sent it

    # the same trace as JSON
    status, out = run_cli("--url", url, "--token", token, "--json", "trace", "trace-ok-1")
    assert status == 0
    records = [r for r in json.loads(out)["records"] if r["to"].startswith("rooms/")]
    assert [(r["type"], r["kind"], r["outcome"], r["to"]) for r in records] == \
        [("Send", "ask", "ok", f"rooms/{room}")]
    r = records[0]
    assert r["enqueued_at"] <= r["started_at"] <= r["ended_at"]

    # a crashed message shows outcome crash (and the request got a JSON 500)
    admin.fault(room, 1)
    bad = admin.send(room, "boom", request_id="trace-crash-1")
    assert bad.status == 500 and bad.body["errcode"] == "M_UNKNOWN", bad.body
    status, out = run_cli("--url", url, "--token", token, "trace", "trace-crash-1")
    assert status == 0
    line = next(ln for ln in out.splitlines() if f"→ rooms/{room}" in ln)
    assert "Send" in line and "  crash  " in line, out
    again = admin.send(room, "after the crash", request_id="trace-ok-2")
    assert again.status == 200, again.body

    # the room's recent traffic lists the sends, oldest first, with their trace ids
    status, out = run_cli("--url", url, "--token", token, "room", room, "--limit", "20")
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"{room}: last "), out
    order = [tid for ln in lines[1:] for tid in ("trace-ok-1", "trace-crash-1", "trace-ok-2")
             if ln.strip().startswith(tid)]
    assert order == ["trace-ok-1", "trace-crash-1", "trace-ok-2"], out
    assert sum("Send" in ln for ln in lines[1:]) >= 3
    status, out = run_cli("--url", url, "--token", token, "room", room, "--limit", "1")
    assert status == 0 and len(out.splitlines()) == 2, out

    # the supervisors and their actors
    status, out = run_cli("--url", url, "--token", token, "actors")
    assert status == 0
    assert out.startswith("rooms:") or "\nrooms:" in out, out
    assert room in out and "crashes 1" in out and "restarts 1" in out, out

    # offline, from the server's JSONL file
    status, out = run_cli("--jsonl", str(jsonl), "trace", "trace-crash-1")
    assert status == 0 and "Send" in out and "  crash  " in out, out
    status, out = run_cli("--jsonl", str(jsonl), "room", room)
    assert status == 0 and "trace-ok-1" in out and "trace-ok-2" in out, out

    # unknown trace ids say so; non-admins and bad input are refused
    status, out = run_cli("--url", url, "--token", token, "trace", "no-such-trace")
    assert status == 0 and "no records" in out, out
    status, _ = run_cli("--url", url, "--token", user.token, "trace", "trace-ok-1")
    assert status == 1
    status, _ = run_cli("--url", url, "--token", "", "trace", "trace-ok-1")
    assert status == 2
    status, _ = run_cli("--url", url, "--token", token, "room", room, "--limit", "0")
    assert status == 2
    status, _ = run_cli("--jsonl", str(jsonl), "actors")
    assert status == 2
    status, _ = run_cli("--jsonl", str(tmp_path / "missing.jsonl"), "trace", "x")
    assert status == 1
