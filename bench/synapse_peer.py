"""Synapse as a benchmark peer: install it in a scratch venv outside the repo, configure it
(SQLite, loopback, rate limits off), start it, register users.

Synapse never enters the project's venv: it lives in ``$ATRIUM_BENCH_CACHE`` (default
``~/.cache/atrium-bench``) as ``synapse-venv``, created with ``python3 -m venv`` and
``pip install matrix-synapse==1.163.*`` on first use.  Nothing here copies Synapse code; it
only runs Synapse's published entry points (``synapse.app.homeserver``).

Standalone use (leaves a server running until Ctrl-C)::

    .venv/bin/python bench/synapse_peer.py [--port 8448] [--dir /tmp/synapse-peer]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CACHE = Path(os.environ.get("ATRIUM_BENCH_CACHE", Path.home() / ".cache" / "atrium-bench"))
VENV = CACHE / "synapse-venv"
SYNAPSE_SPEC = os.environ.get("ATRIUM_BENCH_SYNAPSE", "matrix-synapse==1.163.*")
OFF = {"per_second": 1_000_000, "burst_count": 1_000_000}

#: every rc_* key Synapse reads; each gets a limit that is never reached
RATE_LIMITS: dict[str, Any] = {
    "rc_message": OFF,
    "rc_registration": OFF,
    "rc_registration_token_validity": OFF,
    "rc_login": {"address": OFF, "account": OFF, "failed_attempts": OFF},
    "rc_joins": {"local": OFF, "remote": OFF},
    "rc_joins_per_room": OFF,
    "rc_invites": {"per_room": OFF, "per_user": OFF, "per_issuer": OFF},
    "rc_third_party_invite": OFF,
    "rc_room_creation": OFF,
    "rc_admin_redaction": OFF,
    "rc_3pid_validation": OFF,
    "rc_presence": {"per_user": OFF},
    "rc_delayed_event_mgmt": OFF,
    "rc_reports": OFF,
    "rc_media_create": OFF,
    "rc_profile": OFF,
    "rc_user_directory": OFF,
    "rc_key_requests": OFF,
    "rc_federation": {"window_size": 1000, "sleep_limit": 1_000_000, "sleep_delay": 0,
                      "reject_limit": 1_000_000, "concurrent": 1_000_000},
}


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(quiet: bool = False) -> Path:
    """Create the scratch venv and install Synapse (and py-spy) into it if missing."""
    py = python()
    check = [str(py), "-c", "import synapse, sys; sys.stdout.write(synapse.__version__)"]
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode == 0:
            return py
    CACHE.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not quiet:
        print(f"installing {SYNAPSE_SPEC} into {VENV} …", file=sys.stderr, flush=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", SYNAPSE_SPEC, "py-spy"],
                   check=True)
    subprocess.run(check, check=True, capture_output=True)
    return py


def synapse_version() -> str:
    r = subprocess.run([str(python()), "-c", "import synapse; print(synapse.__version__)"],
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


@dataclass
class SynapseServer:
    base_url: str
    server_name: str
    shared_secret: str
    directory: Path
    process: subprocess.Popen

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def log(self) -> str:
        try:
            return (self.directory / "homeserver.log").read_text(errors="replace")
        except OSError:
            return ""

    def register(self, username: str, password: str, *, admin: bool = False) -> dict[str, Any]:
        """Shared-secret registration (the same HMAC protocol Atrium serves)."""
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from atrium.cli import register_user

        return register_user(self.base_url, self.shared_secret, username, password,
                             admin=admin)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def write_config(directory: Path, port: int, server_name: str = "bench.local",
                 log_level: str = "WARNING") -> Path:
    """Generate Synapse's config in ``directory``, then make it a loopback SQLite server
    with rate limits off, quiet logs and no outside contact."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "homeserver.yaml"
    if not config.exists():
        subprocess.run([str(python()), "-m", "synapse.app.homeserver",
                        "--server-name", server_name, "--config-path", str(config),
                        "--data-directory", str(directory), "--generate-config",
                        "--report-stats=no"], check=True, capture_output=True, cwd=directory)
    raw = yaml.safe_load(config.read_text())
    raw.update({
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "tls": False, "x_forwarded": False,
                       "resources": [{"names": ["client"], "compress": False}]}],
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_metrics": False,
        "report_stats": False,
        "log_config": str(directory / "log.yaml"),
        **RATE_LIMITS,
    })
    config.write_text(yaml.safe_dump(raw))
    (directory / "log.yaml").write_text(yaml.safe_dump({
        "version": 1,
        "formatters": {"p": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "p",
                              "filename": str(directory / "homeserver.log")}},
        "root": {"level": log_level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }))
    return config


def start(directory: Path, port: int, *, ready_timeout: float = 120.0) -> SynapseServer:
    """Start Synapse on 127.0.0.1:``port`` (own process group) and wait until it answers."""
    import requests

    ensure_venv()
    config = write_config(directory, port)
    raw = yaml.safe_load(config.read_text())
    out = open(directory / "stdout.log", "ab")
    proc = subprocess.Popen([str(python()), "-m", "synapse.app.homeserver", "-c", str(config)],
                            cwd=str(directory), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = SynapseServer(f"http://127.0.0.1:{port}", raw["server_name"],
                           raw["registration_shared_secret"], directory, proc)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"synapse exited with {proc.returncode}; see {directory}")
        try:
            if requests.get(server.base_url + "/_matrix/client/versions",
                            timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"synapse not ready within {ready_timeout}s; see {directory}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run Synapse (scratch venv) on loopback.")
    p.add_argument("--port", type=int, default=8448)
    p.add_argument("--dir", default="/tmp/synapse-peer")
    args = p.parse_args(argv)
    server = start(Path(args.dir), args.port)
    print(f"synapse {synapse_version()} at {server.base_url} (dir {args.dir}); Ctrl-C stops")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
