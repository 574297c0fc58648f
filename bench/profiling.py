"""py-spy sampling of a server process (from the scratch venv) and a readable summary of
where the time goes, grouped by area of the code."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import synapse_peer  # noqa: E402



# ----------------------------------------------------------------------------- profiling


def profile(pid: int, seconds: float, out: Path) -> str:
    """py-spy (scratch venv) on ``pid`` for ``seconds``; a summary of where time goes."""
    spy = synapse_peer.VENV / "bin" / "py-spy"
    if not spy.exists():
        synapse_peer.ensure_venv()
    raw = out.with_suffix(".txt")
    # --gil: only the thread holding the GIL is sampled, i.e. where Python CPU time goes
    rate = os.environ.get("ATRIUM_SPY_RATE", "200")  # samples per second
    subprocess.run([str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", rate,
                    "--gil", "--format", "raw", "-o", str(raw), "--nonblocking"],
                   capture_output=True, check=False)
    if not raw.exists():
        return "py-spy produced nothing (ptrace not permitted?)"
    return summarize_collapsed(raw.read_text())


#: (path prefix of a frame's file as py-spy prints it, area); first match wins
AREAS = (
    ("actors/", "actors/ (RoomActor, UserActor, push evaluator)"),
    ("protocol/", "protocol/ (build, hash, sign, auth, push rules)"),
    ("store/", "store/ (SQL)"), ("supervision/", "supervision/"),
    ("web/", "web/ (handlers, auth)"), ("atrium/", "atrium/"),
    ("sqlite3/", "sqlite3 module"), ("nacl/", "PyNaCl (ed25519)"),
    ("canonicaljson", "canonical JSON"), ("json/", "json"),
    ("werkzeug/", "Flask/Werkzeug"), ("flask/", "Flask/Werkzeug"),
    ("gunicorn/", "gunicorn HTTP"), ("pykka/", "pykka"),
    ("gevent/threadpool", "gevent thread pool hand-off"),
    ("gevent/_threading", "gevent thread pool hand-off"),
    ("gevent/_socketcommon", "gevent sockets (send/recv)"), ("gevent/", "gevent hub/other"),
    ("logging/", "logging"), ("typing", "typing (isinstance on generics)"),
)
_PROJECT = ("actors/", "protocol/", "store/", "supervision/", "web/", "atrium/")


def _path(frame: str) -> str:
    """``func (path/file.py:123)`` → ``path/file.py``."""
    inner = frame.rpartition("(")[2].rstrip(")")
    return inner.rpartition(":")[0] or inner


def _area(frame: str) -> str:
    path = _path(frame)
    for prefix, area in AREAS:
        if path.startswith(prefix) or f"/{prefix}" in path:
            return area
    return "other (stdlib)"


def summarize_collapsed(text: str, top: int = 25) -> str:
    """Self time by area, then inclusive and self sample shares per function, from
    py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            inclusive[_short(f)] += n
        own[_short(frames[-1])] += n
        areas[_area(frames[-1])] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples (GIL holder only)", "", "self time by area:"]
    lines += [f"  {100 * n / total:5.1f}%  {a}" for a, n in areas.most_common()]
    lines += ["", "self time (top functions):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive time (top Atrium functions):"]
    shown = [(f, n) for f, n in inclusive.most_common() if _path(f).startswith(_PROJECT)]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in shown[:top * 2]]
    return "\n".join(lines)


def _short(frame: str) -> str:
    return frame.replace(str(ROOT) + "/", "").replace(
        "/root/.pyenv/versions/3.11.7/lib/python3.11/", "stdlib/")
