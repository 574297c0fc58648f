"""Helpers for the rooms "what must be shown" end-to-end tests (crash isolation, kill -9,
trace tool): a small HTTP client per user, a launcher that (re)starts gunicorn on an
existing config (same data dir, same database), and percentile maths.

The servers themselves come from ``tests/e2e/conftest.py`` (``start_atrium``); the launcher
here exists because a restart after ``kill -9`` must reuse the first server's config file
verbatim (a fresh ``start_atrium`` would make a fresh database).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
C = "/_matrix/client/v3"
ADMIN = "/_atrium/admin/v1"
GENEROUS = {"per_second": 10_000, "burst_count": 10_000}

#: config overrides every test here wants: generous limits, fault injection on
BASE_OVERRIDES: dict[str, Any] = {
    "enable_fault_injection": True,
    "rc_message": GENEROUS,
    "rc_joins": {"local": GENEROUS, "remote": GENEROUS},
    "rc_invites": {"per_room": GENEROUS, "per_user": GENEROUS},
    "log_level": "WARNING",
}


def q(s: str) -> str:
    """Percent-encode one path segment (room and event ids contain ``!``, ``$``, ``/``…)."""
    return quote(s, safe="")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    seconds: float


class Client:
    """One logged-in user talking to a server over a keep-alive HTTP session."""

    def __init__(self, base_url: str, login: dict[str, Any]) -> None:
        self.base_url = base_url
        self.user_id: str = login["user_id"]
        self.token: str = login["access_token"]
        self.device_id: str = login.get("device_id", "")
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {self.token}"
        self._txn = 0

    def call(self, method: str, path: str, body: Any = None, *, params: Any = None,
             headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
        t0 = time.perf_counter()
        r = self.s.request(method, self.base_url + path, json=body, params=params,
                           headers=headers, timeout=timeout)
        dt = time.perf_counter() - t0
        try:
            data: Any = r.json()
        except ValueError:
            data = r.text
        return Reply(r.status_code, data, dict(r.headers), dt)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        rep = self.call(method, path, body, **kw)
        assert rep.status == 200, (method, path, rep.status, rep.body)
        return rep.body

    def create_room(self, **body: Any) -> str:
        return self.ok("POST", f"{C}/createRoom", body or {"preset": "public_chat"})["room_id"]

    def join(self, room_id: str) -> None:
        self.ok("POST", f"{C}/join/{q(room_id)}", {})

    def next_txn(self, prefix: str = "t") -> str:
        self._txn += 1
        return f"{prefix}{self._txn}"

    def send(self, room_id: str, text: str, *, txn: str | None = None,
             request_id: str | None = None, timeout: float = 30.0) -> Reply:
        txn = txn or self.next_txn()
        headers = {"X-Request-Id": request_id} if request_id else None
        return self.call("PUT", f"{C}/rooms/{q(room_id)}/send/m.room.message/{q(txn)}",
                         {"msgtype": "m.text", "body": text}, headers=headers,
                         timeout=timeout)

    def event(self, room_id: str, event_id: str) -> Reply:
        return self.call("GET", f"{C}/rooms/{q(room_id)}/event/{q(event_id)}")

    def messages_ids(self, room_id: str, *, page: int = 100,
                     max_pages: int = 200) -> list[str] | None:
        """Every event id in the room, newest first, by paging /messages backwards; ``None``
        if this server has no /messages route (404 ``M_UNRECOGNIZED``)."""
        ids: list[str] = []
        frm: str | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"dir": "b", "limit": page}
            if frm:
                params["from"] = frm
            rep = self.call("GET", f"{C}/rooms/{q(room_id)}/messages", params=params)
            if rep.status == 404 and isinstance(rep.body, dict) \
                    and rep.body.get("errcode") == "M_UNRECOGNIZED":
                return None
            assert rep.status == 200, ("/messages", rep.status, rep.body)
            body = rep.body
            chunk = body.get("chunk", [])
            ids.extend(e["event_id"] for e in chunk)
            frm = body.get("end")
            if not chunk or not frm:
                return ids
        if max_pages == 1:
            return ids          # just the newest page was asked for
        raise AssertionError("too many /messages pages")

    def actors(self) -> dict[str, Any]:
        return self.ok("GET", f"{ADMIN}/actors", params={"limit": 10_000})

    def room_child(self, room_id: str) -> dict[str, Any] | None:
        for c in self.actors()["rooms"]["children"]:
            if c["key"] == room_id:
                return c
        return None

    def fault(self, room_id: str, count: int, kind: str = "crash") -> Any:
        return self.ok("POST", f"{ADMIN}/rooms/{q(room_id)}/fault",
                       {"kind": kind, "count": count})


@dataclass
class Launched:
    """A gunicorn started by :func:`launch` (own process group, so it can be killed whole)."""

    base_url: str
    process: subprocess.Popen
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                kill_group(self.process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.get(base_url + "/_matrix/client/versions", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {base_url} not ready within {timeout}s")


def launch(config_path: str, log_path: Path) -> Launched:
    """Start ``gunicorn -k gevent web:app`` on an existing config and a free port."""
    port = free_port()
    env = dict(os.environ, ATRIUM_CONFIG=str(config_path), ATRIUM_BIND=f"127.0.0.1:{port}",
               PYTHONDONTWRITEBYTECODE="1")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [GUNICORN, "-c", str(ROOT / "gunicorn.conf.py"), "-k", "gevent", "web:app"],
            cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    launched = Launched(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(launched.base_url, proc)
    except RuntimeError as e:
        kill_group(proc)
        raise RuntimeError(f"{e}\n{launched.log()[-4000:]}") from None
    return launched


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL gunicorn's whole process group (master and worker), and reap the master."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def group_pids(pgid: int) -> list[int]:
    """Live pids in a process group (from /proc), e.g. gunicorn's master and worker."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick
