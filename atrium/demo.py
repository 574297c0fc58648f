"""``python -m atrium demo`` (``make demo``): three federating Atrium servers on loopback.

Each server is a real ``gunicorn -k gevent web:app`` subprocess (the project's
``gunicorn.conf.py``, configured through ``ATRIUM_CONFIG`` / ``ATRIUM_BIND`` exactly as in
production) with its own folder, SQLite database, signing key and a TLS certificate from one
throwaway demo CA (:mod:`atrium.tls`), served on the federation listener itself.  Server
names carry their port (``localhost:8481``…): the server-server API's discovery rules contact
such a name directly at that host and port, with no well-known or SRV lookup.  Each trusts
the demo CA (``federation_custom_ca_list``), may talk to loopback
(``federation_ip_range_blacklist: []``) and fetches keys from the servers themselves
(``trusted_key_servers: []``).

:func:`start_server` and :class:`RunningServer` are also what the interop tests
(``tests/interop``) and ``bench/federation_outage.py`` use to start an Atrium over TLS.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import yaml

from atrium.tls import CertificateAuthority, issue_cert, load_ca, make_ca

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORTS = (8481, 8482, 8483)
USERS = ("alice", "bob", "carol")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0


@dataclass
class RunningServer:
    """An Atrium gunicorn subprocess serving HTTPS on ``base_url``."""

    server_name: str
    base_url: str
    directory: Path
    config_path: Path
    log_path: Path
    shared_secret: str
    ca_path: str
    process: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master), from /proc."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                out.append(int(d))
        return out

    def pids(self) -> list[int]:
        """Master first, then its workers."""
        return [self.pid, *self.worker_pids()]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until it answers over HTTPS; stops it and raises RuntimeError (with the end of
        its log) if it exits or does not answer in time."""
        try:
            wait_ready(self.base_url, self.ca_path, timeout,
                       alive=lambda: self.process.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.server_name}: {e}\n{self.log()[-4000:]}") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def register(self, username: str, password: str, *, admin: bool = False) -> dict[str, Any]:
        return register_user_tls(self.base_url, self.shared_secret, username, password,
                                 self.ca_path, admin=admin)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to the master (a graceful stop of its worker); SIGKILL to its process
        group if it has not exited within ``timeout``."""
        if self.process.poll() is not None:
            return
        try:
            # a SIGSTOPped server (benchmarks) must run again to handle the SIGTERM
            os.kill(self.pid, signal.SIGCONT)
            for pid in self.worker_pids():
                os.kill(pid, signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


def register_user_tls(base_url: str, secret: str, username: str, password: str,
                      ca_path: str | None, *, admin: bool = False,
                      timeout: float = 30.0) -> dict[str, Any]:
    """Shared-secret registration (``/_synapse/admin/v1/register``) over HTTPS, trusting
    ``ca_path``; the login it returns.  Works against Atrium and Synapse alike."""
    import requests

    from atrium.cli import registration_mac

    verify: Any = ca_path if ca_path else True
    endpoint = base_url.rstrip("/") + "/_synapse/admin/v1/register"
    r = requests.get(endpoint, timeout=timeout, verify=verify)
    r.raise_for_status()
    nonce = r.json()["nonce"]
    r = requests.post(endpoint, timeout=timeout, verify=verify, json={
        "nonce": nonce, "username": username, "password": password, "admin": admin,
        "mac": registration_mac(secret, nonce, username, password, admin)})
    if r.status_code != 200:
        raise RuntimeError(f"registration of {username} failed: {r.status_code} {r.text[:300]}")
    return r.json()


def server_config(directory: Path, server_name: str, port: int, ca_path: str,
                  cert_path: str, key_path: str, *, secret: str,
                  database: dict[str, Any] | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Atrium config of one federating loopback server."""
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"https://localhost:{port}/",
        "database": database or {"name": "sqlite3",
                                 "args": {"database": str(directory / "homeserver.db")}},
        "signing_key_path": str(directory / "signing.key"),
        "media_store_path": str(directory / "media"),
        "registration_shared_secret": secret,
        "enable_registration": False,
        "tls_certificate_path": cert_path,
        "tls_private_key_path": key_path,
        "federation_custom_ca_list": [ca_path],
        "federation_verify_certificates": True,
        "federation_ip_range_blacklist": [],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "allow_public_rooms_over_federation": True,
    }
    config.update(overrides or {})
    return config


def start_server(directory: str | os.PathLike[str], port: int, ca: CertificateAuthority, *,
                 server_name: str | None = None, database: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None,
                 ready_timeout: float = READY_TIMEOUT, wait: bool = True) -> RunningServer:
    """Start one Atrium over TLS on ``127.0.0.1:port`` (server name ``localhost:port``
    unless given), in its own process group; wait until it answers
    ``/_matrix/client/versions`` over HTTPS (unless ``wait`` is false: then call
    :meth:`RunningServer.wait_ready`, e.g. after starting others).  An existing config in ``directory`` is kept
    (its secret, key and database: a restart continues where it stopped)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    server_name = server_name or f"localhost:{port}"
    config_path = d / "homeserver.yaml"
    if config_path.exists():
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        config.update(overrides or {})
    else:
        leaf = issue_cert(ca, d, [server_name], stem="tls")
        config = server_config(d, server_name, port, ca.cert_path, leaf.cert_path,
                               leaf.key_path, secret=secrets.token_urlsafe(24),
                               database=database, overrides=overrides)
    # it holds the registration secret: owner-only, like the keys
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(config, sort_keys=False))
    log_path = d / "server.log"
    env = dict(os.environ, ATRIUM_CONFIG=str(config_path), ATRIUM_BIND=f"127.0.0.1:{port}",
               PYTHONDONTWRITEBYTECODE="1")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
             "-k", "gevent", "web:app"],
            cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    server = RunningServer(config["server_name"], f"https://localhost:{port}", d, config_path,
                           log_path, config.get("registration_shared_secret") or "",
                           ca.cert_path, proc)
    if wait:
        server.wait_ready(ready_timeout)
    return server


def wait_ready(base_url: str, ca_path: str | None, timeout: float,
               alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``/_matrix/client/versions`` until it answers 200; RuntimeError otherwise."""
    import requests

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited during start-up")
        try:
            r = requests.get(base_url + "/_matrix/client/versions", timeout=2,
                             verify=ca_path or True)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"not ready within {timeout:.0f}s ({last})")


# ----------------------------------------------------------------------------- the demo


def _login(base_url: str, ca_path: str, user: str, password: str) -> dict[str, Any]:
    import requests

    r = requests.post(base_url + "/_matrix/client/v3/login", verify=ca_path, timeout=30,
                      json={"type": "m.login.password", "password": password,
                            "identifier": {"type": "m.id.user", "user": user}})
    r.raise_for_status()
    return r.json()


def _user(server: RunningServer, localpart: str, known: dict[str, Any]) -> dict[str, Any]:
    """Register the demo user, or log in with the password of an earlier run."""
    import requests

    password = known.get("password") or secrets.token_urlsafe(9)
    try:
        login = server.register(localpart, password)
    except RuntimeError:
        if not known.get("password"):
            raise
        login = _login(server.base_url, server.ca_path, localpart, password)
    requests.put(f"{server.base_url}/_matrix/client/v3/profile/"
                 f"{quote(login['user_id'], safe='')}/displayname",
                 json={"displayname": localpart.capitalize()}, verify=server.ca_path,
                 headers={"Authorization": f"Bearer {login['access_token']}"}, timeout=30)
    return {"user_id": login["user_id"], "password": password,
            "access_token": login["access_token"], "base_url": server.base_url}


def _usage(directory: Path, ca_path: str, users: list[dict[str, Any]]) -> str:
    lines = [f"Atrium federation demo: {len(users)} servers on loopback, data in {directory}",
             ""]
    for u in users:
        lines.append(f"  {u['base_url']:<24} {u['user_id']:<24} password {u['password']}")
        lines.append(f"  {'':<24} access token {u['access_token']}")
    a, b = users[0], users[1 % len(users)]
    lines += [
        "",
        f"Clients must trust the demo CA {ca_path}",
        "  (curl --cacert …, REQUESTS_CA_BUNDLE=… for Python clients, SSL_CERT_FILE=…).",
        "Log in with any Matrix client at the base URLs above, or try a remote profile "
        f"lookup ({a['user_id']} asks {b['user_id'].split(':', 1)[1]} about "
        f"{b['user_id']}):",
        f"  curl --cacert {ca_path} -H 'Authorization: Bearer {a['access_token']}' \\",
        f"       '{a['base_url']}/_matrix/client/v3/profile/{b['user_id']}'",
        "The servers' keys, as another server sees them:",
        f"  curl --cacert {ca_path} '{a['base_url']}/_matrix/key/v2/query/"
        f"{b['user_id'].split(':', 1)[1]}'",
        f"Logs: {directory}/<server>/server.log.  Ctrl-C stops all {len(users)}.",
    ]
    return "\n".join(lines)


def run(directory: Path, ports: Sequence[int], *, out: Any = sys.stdout,
        stop_after: float | None = None) -> int:
    """Start the servers, create one user on each, print how to use them, then wait for
    Ctrl-C / SIGTERM (or ``stop_after`` seconds) and stop them all by PID."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key = directory / "ca.pem", directory / "ca.key"
    ca = load_ca(ca_pem, ca_key) if ca_pem.exists() and ca_key.exists() \
        else make_ca(directory, name="Atrium demo CA")
    state_path = directory / "demo.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}

    stopping = {"sig": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stopping["sig"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    servers: list[RunningServer] = []
    try:
        users = []
        for i, port in enumerate(ports):
            name = f"localhost:{port}"
            print(f"starting {name} …", file=out, flush=True)
            server = start_server(directory / f"server-{port}", port, ca)
            servers.append(server)
            if stopping["sig"] is not None:
                return 130
            localpart = USERS[i] if i < len(USERS) else f"user{i + 1}"
            users.append(_user(server, localpart, state.get(name, {})))
            state[name] = {"password": users[-1]["password"]}
        state_path.write_text(json.dumps(state, indent=2))
        os.chmod(state_path, 0o600)
        print("\n" + _usage(directory, ca.cert_path, users), file=out, flush=True)
        deadline = None if stop_after is None else time.monotonic() + stop_after
        while stopping["sig"] is None:
            dead = [s for s in servers if s.process.poll() is not None]
            if dead:
                print(f"{dead[0].server_name} exited ({dead[0].process.returncode}); see "
                      f"{dead[0].log_path}; stopping the others", file=out, flush=True)
                return 1
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return 0
    except (RuntimeError, OSError) as e:
        print(f"atrium demo: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if servers:
            print(f"stopping {len(servers)} server(s): pids "
                  f"{', '.join(str(s.pid) for s in servers)}", file=out, flush=True)
        for s in servers:
            s.stop()
        for s, handler in old.items():
            signal.signal(s, handler)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m atrium demo")
    p.description = "three federating Atrium servers on loopback, with TLS from a demo CA"
    p.add_argument("--dir", help="where the servers keep their data (default: a new "
                                 "temporary folder, removed on exit unless --keep); an "
                                 "existing demo folder is reused")
    p.add_argument("--ports", default=",".join(map(str, DEFAULT_PORTS)),
                   help="comma-separated ports, one server each (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return p


def main(args: argparse.Namespace) -> int:
    try:
        ports = [int(p) for p in str(args.ports).split(",") if p.strip()]
    except ValueError:
        print(f"atrium demo: --ports must be comma-separated numbers (got {args.ports!r})",
              file=sys.stderr)
        return 2
    if not ports or len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        print("atrium demo: --ports needs distinct ports in 1..65535", file=sys.stderr)
        return 2
    temporary = args.dir is None
    directory = Path(args.dir or tempfile.mkdtemp(prefix="atrium-demo-")).resolve()
    try:
        return run(directory, ports)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
