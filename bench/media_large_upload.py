"""Benchmark: upload and download one large file (default 200 MB) through the media
repository while watching the server worker's RSS (``/proc/PID/status``) and the latency of
small concurrent requests (``GET /_matrix/client/versions``).

    .venv/bin/python bench/media_large_upload.py                 # starts its own gunicorn
    .venv/bin/python bench/media_large_upload.py --url http://127.0.0.1:8008 \\
        --token TOKEN --pid WORKER_PID

Targets: worker RSS stays within 50 MB of idle; small requests keep their latency.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHUNK = 1024 * 1024


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def worker_pid(master: int, timeout: float = 10.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                            return int(d)
                except (OSError, ValueError, IndexError):
                    pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn worker not found")


def start_server(tmp: str, size_mb: int) -> tuple[subprocess.Popen, str, str]:
    from store.accounts import hash_token, now_ms
    from store.database import open_database

    port = _free_port()
    db = {"name": "sqlite3", "args": {"database": os.path.join(tmp, "bench.db")}}
    cfg = {"server_name": "localhost", "database": db, "log_level": "WARNING",
           "media_store_path": os.path.join(tmp, "media"),
           "signing_key_path": os.path.join(tmp, "signing.key"),
           "max_upload_size": f"{size_mb + 10}M"}
    path = os.path.join(tmp, "homeserver.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    env = {**os.environ, "ATRIUM_CONFIG": path, "ATRIUM_BIND": f"127.0.0.1:{port}"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "web:app"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, "server.log"), "wb"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"{url}/_matrix/client/versions", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    token = "bench_token"
    d = open_database(db["name"], db["args"])

    def _add(txn: Any) -> None:
        txn.execute("INSERT INTO users (name, creation_ts) VALUES (?, ?)",
                    ("@bench:localhost", now_ms()))
        txn.execute("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts)"
                    " VALUES (?,?,?,?)", (hash_token(token), "@bench:localhost", "B", now_ms()))

    d.run("bench_user", _add, write=True)
    d.close()
    return proc, url, token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe:
    """Samples RSS and small-request latency in background threads until stopped."""

    def __init__(self, url: str, pid: int, clients: int = 4) -> None:
        self.url, self.pid, self.clients = url, pid, clients
        self.rss: list[float] = []
        self.lat: list[float] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Probe":
        self._threads = [threading.Thread(target=self._rss_loop, daemon=True)]
        self._threads += [threading.Thread(target=self._lat_loop, daemon=True)
                          for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _rss_loop(self) -> None:
        while not self._stop.is_set():
            self.rss.append(rss_mb(self.pid))
            time.sleep(0.02)

    def _lat_loop(self) -> None:
        s = requests.Session()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            s.get(f"{self.url}/_matrix/client/versions", timeout=30)
            self.lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def _lat_line(name: str, xs: list[float]) -> str:
    return (f"{name:<22} n={len(xs):<5} p50={statistics.median(xs):6.2f} ms  "
            f"p95={_pct(xs, 0.95):6.2f} ms  p99={_pct(xs, 0.99):6.2f} ms  max={max(xs):7.2f} ms")


def make_file(path: str, size_mb: int) -> str:
    h = hashlib.sha256()
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for i in range(size_mb):
            b = block[i % 7:] + block[:i % 7]  # cheap, not all-identical chunks
            h.update(b)
            f.write(b)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--pid", type=int, help="server worker pid (with --url)")
    ap.add_argument("--size-mb", type=int, default=200)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="atrium-bench-")
    proc = None
    if args.url:
        url, token, pid = args.url.rstrip("/"), args.token, args.pid
        if not (token and pid):
            sys.exit("--url needs --token and --pid")
    else:
        proc, url, token = start_server(tmp, args.size_mb)
        pid = worker_pid(proc.pid)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        src = os.path.join(tmp, "big.bin")
        digest = make_file(src, args.size_mb)
        # warm up: import paths, one small upload and download
        r = requests.post(f"{url}/_matrix/media/v3/upload", data=b"warm", headers=auth)
        mid = r.json()["content_uri"].rsplit("/", 1)[1]
        requests.get(f"{url}/_matrix/client/v1/media/download/localhost/{mid}", headers=auth)
        time.sleep(1)
        with Probe(url, pid) as idle:
            time.sleep(3)
        idle_rss = statistics.median(idle.rss)

        with Probe(url, pid) as up:
            t0 = time.perf_counter()
            with open(src, "rb") as f:
                r = requests.post(f"{url}/_matrix/media/v3/upload", data=f,
                                  params={"filename": "big.bin"},
                                  headers={**auth, "Content-Type": "application/octet-stream"})
            up_s = time.perf_counter() - t0
        r.raise_for_status()
        mid = r.json()["content_uri"].rsplit("/", 1)[1]

        with Probe(url, pid) as down:
            t0 = time.perf_counter()
            h = hashlib.sha256()
            n = 0
            with requests.get(f"{url}/_matrix/client/v1/media/download/localhost/{mid}",
                              headers=auth, stream=True) as r:
                r.raise_for_status()
                for chunk in r.iter_content(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
            down_s = time.perf_counter() - t0
        assert h.hexdigest() == digest, "downloaded bytes differ"

        mb = args.size_mb
        print(f"file: {mb} MB, sha256 match: {h.hexdigest() == digest} ({n} bytes)")
        print(f"upload:   {up_s:6.2f} s ({mb / up_s:7.1f} MB/s)")
        print(f"download: {down_s:6.2f} s ({mb / down_s:7.1f} MB/s)")
        print(f"worker RSS idle (median): {idle_rss:7.1f} MB")
        print(f"worker RSS peak during upload:   {max(up.rss):7.1f} MB "
              f"(+{max(up.rss) - idle_rss:.1f} MB)")
        print(f"worker RSS peak during download: {max(down.rss):7.1f} MB "
              f"(+{max(down.rss) - idle_rss:.1f} MB)")
        print(_lat_line("/versions idle", idle.lat))
        print(_lat_line("/versions in upload", up.lat))
        print(_lat_line("/versions in download", down.lat))
        ok = max(up.rss + down.rss) - idle_rss <= 50
        print(f"target RSS within 50 MB of idle: {'PASS' if ok else 'FAIL'}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
