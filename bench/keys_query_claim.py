"""Benchmark: ``POST /keys/query`` and ``POST /keys/claim`` for 100 users × 3 devices.

    .venv/bin/python bench/keys_query_claim.py [--users 100] [--devices 3] [--reps 30]
    ATRIUM_TEST_DB=postgres .venv/bin/python bench/keys_query_claim.py   # on PostgreSQL

Starts Atrium (``gunicorn -k gevent web:app``, rate limits off) over a fresh database on the
engine named by ``ATRIUM_TEST_DB`` (SQLite by default; PostgreSQL as in the test suite), then:

1. registers ``--users`` users (shared-secret API) and logs each in ``--devices - 1`` more
   times; every device uploads real ed25519-signed device keys, ``--otks`` signed one-time
   keys and a fallback key;
2. times, over ``--reps`` requests each (after 3 warm-ups), on one keep-alive connection:
   - ``/keys/query`` for all users (every device of every user: 300 device keys);
   - ``/keys/query`` for one user (3 devices — what a client does on a device-list change);
   - ``/keys/claim`` of one one-time key for every device of every user (300 claims in one
     request, each deleting a key);
   - ``/keys/claim`` for one user's 3 devices;
3. prints ms per request (mean, p50, p99) and PASS/MISS against the target (< 100 ms).

The client runs on the same 2 cores as the server: numbers are upper bounds.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness as rs  # noqa: E402
from protocol.signing import (encode_verify_key_base64, generate_signing_key,  # noqa: E402
                              get_verify_key, sign_json)
from store.testing import database_config, drop_schema, test_engine  # noqa: E402

TARGET_MS = 100.0
OFF = {"per_second": 100000, "burst_count": 100000}


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, base: str, token: str) -> None:
        host, port = base.split("//", 1)[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.conn.request(method, path, json.dumps(body) if body is not None else None,
                          {"Authorization": f"Bearer {self.token}",
                           "Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data)


def start(workdir: Path) -> tuple[str, subprocess.Popen, str | None, str]:
    secret = "bench-secret"
    dbcfg, schema = database_config(str(workdir))
    config = {
        "server_name": "bench.local", "public_baseurl": "http://127.0.0.1/",
        "database": dbcfg, "signing_key_path": str(workdir / "signing.key"),
        "media_store_path": str(workdir / "media"), "registration_shared_secret": secret,
        "bcrypt_rounds": 4, "rc_message": OFF, "rc_registration": OFF,
        "rc_login": {"address": OFF, "account": OFF, "failed_attempts": OFF},
        "log_level": "WARNING",
    }
    cfg = workdir / "homeserver.yaml"
    cfg.write_text(yaml.safe_dump(config))
    port = rs.free_port()
    env = dict(os.environ, ATRIUM_CONFIG=str(cfg), ATRIUM_BIND=f"127.0.0.1:{port}")
    log = open(workdir / "server.log", "ab")
    proc = subprocess.Popen([rs.GUNICORN, "-c", str(ROOT / "gunicorn.conf.py"), "-k", "gevent",
                             "web:app"], cwd=str(ROOT), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    rs.wait_ready(base, proc, workdir / "server.log")
    return base, proc, schema, secret


def device_upload(user_id: str, device_id: str, otks: int) -> dict[str, Any]:
    sk = generate_signing_key(device_id)
    keys = sign_json({"user_id": user_id, "device_id": device_id,
                      "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                      "keys": {f"curve25519:{device_id}": "c" * 43,
                               f"ed25519:{device_id}": encode_verify_key_base64(
                                   get_verify_key(sk))}}, user_id, sk)
    one_time = {f"signed_curve25519:{i:06d}": sign_json({"key": f"{device_id}{i:039d}"},
                                                        user_id, sk)
                for i in range(otks)}
    fallback = {"signed_curve25519:FB": sign_json({"key": "f" * 43, "fallback": True},
                                                  user_id, sk)}
    return {"device_keys": keys, "one_time_keys": one_time, "fallback_keys": fallback}


def timed(conn: Conn, path: str, body: Any, reps: int, check: Any) -> list[float]:
    for _ in range(3):
        check(conn.call("POST", path, body))
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        r = conn.call("POST", path, body)
        out.append((time.perf_counter() - t) * 1000)
        check(r)
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--otks", type=int, default=50)
    args = ap.parse_args(argv)
    from atrium.cli import register_user

    workdir = Path(tempfile.mkdtemp(prefix="atrium-keys-bench-"))
    base, proc, schema, secret = start(workdir)
    try:
        t0 = time.perf_counter()
        devices: dict[str, list[tuple[str, str]]] = {}  # user → [(device, token)]
        for i in range(args.users):
            name = f"kb{i:03d}"
            login = register_user(base, secret, name, "pw", admin=False)
            user_id = login["user_id"]
            devices[user_id] = [(login["device_id"], login["access_token"])]
            for _ in range(args.devices - 1):
                r = rs.http_json("POST", base, "/_matrix/client/v3/login", None, {
                    "type": "m.login.password", "password": "pw",
                    "identifier": {"type": "m.id.user", "user": name}})
                devices[user_id].append((r["device_id"], r["access_token"]))
        for user_id, devs in devices.items():
            for device_id, token in devs:
                Conn(base, token).call("POST", "/_matrix/client/v3/keys/upload",
                                       device_upload(user_id, device_id, args.otks))
        n_dev = sum(len(d) for d in devices.values())
        print(f"engine {test_engine()}: {args.users} users × {args.devices} devices "
              f"({n_dev} devices, {n_dev * args.otks} one-time keys) set up in "
              f"{time.perf_counter() - t0:.1f} s")

        first = next(iter(devices))
        conn = Conn(base, devices[first][0][1])
        all_users = {u: [] for u in devices}
        one_user = {first: []}
        claim_all = {u: {d: "signed_curve25519" for d, _ in devs} for u, devs in devices.items()}
        claim_one = {first: claim_all[first]}

        def q_all(r: Any) -> None:
            assert sum(len(v) for v in r["device_keys"].values()) == n_dev

        def q_one(r: Any) -> None:
            assert len(r["device_keys"][first]) == args.devices

        def c_all(r: Any) -> None:
            assert sum(len(v) for v in r["one_time_keys"].values()) == n_dev

        def c_one(r: Any) -> None:
            assert len(r["one_time_keys"][first]) == args.devices

        rows = [
            (f"/keys/query  {args.users} users, {n_dev} devices",
             timed(conn, "/_matrix/client/v3/keys/query", {"device_keys": all_users},
                   args.reps, q_all)),
            (f"/keys/query  1 user, {args.devices} devices",
             timed(conn, "/_matrix/client/v3/keys/query", {"device_keys": one_user},
                   args.reps, q_one)),
            (f"/keys/claim  {n_dev} devices",
             timed(conn, "/_matrix/client/v3/keys/claim", {"one_time_keys": claim_all},
                   min(args.reps, args.otks // 2), c_all)),
            (f"/keys/claim  1 user, {args.devices} devices",
             timed(conn, "/_matrix/client/v3/keys/claim", {"one_time_keys": claim_one},
                   args.reps, c_one)),
        ]
        print(f"\n{'request':<40} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8}  target")
        ok = True
        for label, ms in rows:
            mean = statistics.mean(ms)
            verdict = "PASS" if pct(ms, 50) < TARGET_MS else "MISS"
            ok &= verdict == "PASS"
            print(f"{label:<40} {mean:8.1f} {pct(ms, 50):8.1f} {pct(ms, 99):8.1f}  "
                  f"< {TARGET_MS:.0f} {verdict}")
        return 0 if ok else 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        drop_schema(schema)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
