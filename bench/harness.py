"""What the benchmarks share: starting Atrium (and Synapse) on loopback, reading a
process tree's CPU and RSS from /proc, a keep-alive HTTP client, percentiles."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import synapse_peer  # noqa: E402

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
OFF = {"per_second": 1_000_000, "burst_count": 1_000_000}


# ----------------------------------------------------------------------------- /proc


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def thread_cpu_ns(pids: list[int]) -> dict[tuple[int, int], int]:
    """(pid, tid) → nanoseconds on CPU, from ``/proc/PID/task/TID/schedstat`` (clock ticks
    of 10 ms make a 0.2 % idle load read as 0.1 % or 0.3 %); {} where the kernel has none."""
    out: dict[tuple[int, int], int] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            out[(pid, int(tid))] = ns
    return out


def cpu_seconds_between(before: dict[tuple[int, int], int],
                        after: dict[tuple[int, int], int]) -> float:
    """CPU seconds spent between two :func:`thread_cpu_ns` samples, thread by thread: a
    thread that started meanwhile counts in full, one that exited meanwhile (an idle
    thread-pool worker) counts nothing for its last moments, never a negative amount."""
    return sum(ns - before.get(key, 0) for key, ns in after.items()
               if ns >= before.get(key, 0)) / 1e9


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads, also exited ones), in ticks."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A server under test: where it listens, which processes are it, how to stop it."""

    name: str
    base_url: str
    pids: Callable[[], list[int]]        # every process of the server (CPU)
    main_pid: Callable[[], int]          # the process that holds the rooms (RSS)
    register: Callable[..., dict[str, Any]]
    stop: Callable[[], None]
    idle_rooms: Callable[[str], int | None] = lambda token: None  # live room actors


@contextmanager
def alone(server: Server, servers: list[Server]) -> Iterator[None]:
    """Measure ``server`` with the others stopped (SIGSTOP, SIGCONT after): an idle server
    still runs timers and background jobs (Synapse's client-IP batches, presence, caches),
    CPU the measured one would otherwise share on a 2-core machine."""
    others = [pid for s in servers if s is not server for pid in s.pids()]
    for pid in others:
        _signal(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def start_atrium(workdir: Path, idle_timeout: str) -> Server:
    from atrium.cli import register_user

    workdir.mkdir(parents=True, exist_ok=True)
    secret = "bench-secret"
    config = {
        "server_name": "bench.local", "public_baseurl": "http://127.0.0.1/",
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "atrium.db")}},
        "signing_key_path": str(workdir / "signing.key"),
        "media_store_path": str(workdir / "media"),
        "registration_shared_secret": secret, "bcrypt_rounds": 4,
        "rc_message": OFF, "rc_registration": OFF,
        "rc_login": {"address": OFF, "account": OFF, "failed_attempts": OFF},
        "rc_joins": {"local": OFF, "remote": OFF},
        "rc_invites": {"per_room": OFF, "per_user": OFF}, "rc_admin_redaction": OFF,
        "actors": {"idle_timeout": idle_timeout},
        "log_level": "WARNING",
    }
    cfg_path = workdir / "homeserver.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = dict(os.environ, ATRIUM_CONFIG=str(cfg_path), ATRIUM_BIND=f"127.0.0.1:{port}")
    log = open(workdir / "server.log", "ab")
    # --timeout: the master must not take the worker for hung after a SIGSTOP (alone())
    proc = subprocess.Popen([GUNICORN, "-c", str(ROOT / "gunicorn.conf.py"), "-k", "gevent",
                             "--timeout", "3600", "web:app"], cwd=str(ROOT), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def pids() -> list[int]:
        return [proc.pid, *children_of(proc.pid)]

    def worker() -> int:
        kids = children_of(proc.pid)
        return kids[0] if kids else proc.pid

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def idle_rooms(token: str) -> int | None:
        body = http_json("GET", base, "/_atrium/admin/v1/actors?limit=1", token)
        return int(body["rooms"]["stats"]["children"])

    wait_ready(base, proc, workdir / "server.log")
    return Server("Atrium", base, pids, worker,
                  lambda u, p, admin=False: register_user(base, secret, u, p, admin=admin),
                  stop, idle_rooms)


def start_synapse(workdir: Path) -> Server:
    s = synapse_peer.start(workdir, free_port())
    return Server(f"Synapse {synapse_peer.synapse_version()}", s.base_url,
                  lambda: [s.process.pid, *children_of(s.process.pid)],
                  lambda: s.process.pid, s.register, s.stop)


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); log: {log}")
        try:
            http_json("GET", base, "/_matrix/client/versions", None)
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.1)
    raise RuntimeError(f"server not ready within {timeout}s; log: {log}")


# ----------------------------------------------------------------------------- HTTP


def http_json(method: str, base: str, path: str, token: str | None, body: Any = None,
              timeout: float = 30) -> Any:
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


class Client:
    """One user on one keep-alive connection (http.client: cheap on the client's CPU)."""

    def __init__(self, base: str, token: str, tag: str) -> None:
        host, port = base.split("//", 1)[1].split(":")
        self.host, self.port, self.token, self.tag = host, int(port), token, tag
        self.conn: http.client.HTTPConnection | None = None
        self.n = 0

    def request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}",
                   "Content-Type": "application/json"}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, payload, headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def send(self, room_id: str) -> tuple[int, float]:
        self.n += 1
        path = (f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/"
                f"{self.tag}-{self.n}")
        t0 = time.perf_counter()
        status, _ = self.request("PUT", path, {"msgtype": "m.text",
                                               "body": f"bench message {self.n}"})
        return status, time.perf_counter() - t0

    def create_room(self, preset: str | None = None) -> str:
        status, data = self.request("POST", "/_matrix/client/v3/createRoom",
                                    {"preset": preset} if preset else {})
        if status != 200:
            raise RuntimeError(f"createRoom: {status} {data[:200]!r}")
        return json.loads(data)["room_id"]

    def join(self, room_id: str) -> None:
        status, data = self.request("POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
                                    {})
        if status != 200:
            raise RuntimeError(f"join: {status} {data[:200]!r}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# ----------------------------------------------------------------------------- phases


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]
