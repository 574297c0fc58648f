"""``log_config`` (atrium/log_config.py): a Synapse-style YAML logging config writes the
access lines and the rest to a rotating file and as JSON; Synapse's own class and logger
names work unchanged; a bad file is one line naming the key, never a traceback."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from atrium.config import ConfigError
from atrium.log_config import apply, configure_logging, path_of
from tests.web.conftest import auth_headers
from web.app import runtime_of

ROOT = Path(__file__).resolve().parents[2]
V3 = "/_matrix/client/v3"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """dictConfig changes process-wide state: put every logger back as it was."""
    root = logging.getLogger()
    saved = {name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
             for name, lg in logging.Logger.manager.loggerDict.items()
             if isinstance(lg, logging.Logger)}
    root_saved = (root.handlers[:], root.level)
    yield
    for lg in [root] + [lg for lg in logging.Logger.manager.loggerDict.values()
                        if isinstance(lg, logging.Logger)]:
        before = root_saved[0] if lg is root else saved.get(lg.name, ([],))[0]
        for h in lg.handlers[:]:
            if h not in before:
                lg.removeHandler(h)
                h.close()
    for name, (handlers, level, propagate, disabled) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.level, lg.propagate, lg.disabled = level, propagate, disabled
    root.handlers[:] = root_saved[0]
    root.setLevel(root_saved[1])


def synapse_style(tmp_path: Path) -> dict[str, Any]:
    """A log config as Synapse's docs write one: its sample's precise format with
    ``%(request)s``, its structured-logging formatter, its buffering handler and filter, a
    ``synapse`` logger and ``synapse.storage.SQL``."""
    return {
        "version": 1,
        "formatters": {
            "precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                                  "%(request)s - %(message)s"},
            "structured": {"class": "synapse.logging.TerseJsonFormatter"},
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter",
                                "request": ""}},
        "handlers": {
            "file": {"class": "logging.handlers.RotatingFileHandler", "formatter": "precise",
                     "filename": str(tmp_path / "homeserver.log"), "maxBytes": 4000,
                     "backupCount": 2, "encoding": "utf8"},
            "buffer": {"class": "synapse.logging.handlers.PeriodicallyFlushingMemoryHandler",
                       "target": "file", "capacity": 10, "flushLevel": 30, "period": 0.2},
            "json": {"class": "logging.handlers.TimedRotatingFileHandler",
                     "formatter": "structured", "filename": str(tmp_path / "homeserver.json"),
                     "when": "midnight", "backupCount": 3, "filters": ["context"]},
        },
        "loggers": {"synapse": {"level": "INFO", "handlers": ["json"]},
                    "synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["buffer"]},
        "disable_existing_loggers": True,
    }


def write_config(tmp_path: Path, cfg: Any, name: str = "log.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg) if not isinstance(cfg, str) else cfg, encoding="utf-8")
    return path


def _flush_all() -> None:
    for lg in [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]:
        for h in lg.handlers:
            h.flush()


def _login(client: Any, user: str) -> dict[str, Any]:
    body: dict[str, Any] = {"username": user, "password": "pw",
                            "auth": {"type": "m.login.dummy"}}
    r = client.post(f"{V3}/register", json=body)
    if r.status_code == 401:
        body["auth"]["session"] = r.json["session"]
        r = client.post(f"{V3}/register", json=body)
    assert r.status_code == 200, r.json
    return r.json


def test_a_synapse_log_config_writes_a_rotating_file_and_json(make_app, tmp_path):
    path = write_config(tmp_path, synapse_style(tmp_path))
    app = make_app(log_config=str(path))
    config = runtime_of(app).config
    assert path_of(config) == str(path)
    configure_logging(config)
    client = app.test_client()
    alice = _login(client, "alice")
    h = auth_headers(alice["access_token"])
    rids = []
    for i in range(40):
        r = client.get(f"{V3}/account/whoami?access_token={alice['access_token']}",
                       headers={"X-Request-Id": f"req-{i}"})
        assert r.status_code == 200
        rids.append(r.headers["X-Request-Id"])
    client.get(f"{V3}/sync?timeout=0", headers=h)
    logging.getLogger("web.anything").warning("a warning with ?token=hush")
    _flush_all()

    # the rotating text file: Synapse's format, the request id where it says %(request)s
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("homeserver.log"))
    assert files == ["homeserver.log", "homeserver.log.1", "homeserver.log.2"], files
    text = "".join((tmp_path / f).read_text() for f in files)
    assert " - atrium.access - " in text and " - req-39 - 127.0.0.1 - @alice:" in text
    assert alice["access_token"] not in text and "hush" not in text
    assert all(os.path.getsize(tmp_path / f) <= 4000 + 600 for f in files)

    # the JSON file: Atrium's loggers (what 'synapse' stands for), one object a line
    events = [json.loads(line)
              for line in (tmp_path / "homeserver.json").read_text().splitlines()]
    access = [e for e in events if e["namespace"] == "atrium.access"]
    assert [e["request"] for e in access if "/whoami" in e["uri"]] == rids
    sync = next(e for e in access if "/sync" in e["uri"])
    assert sync["status"] == 200 and sync["user_id"] == alice["user_id"]
    assert sync["device_id"] == alice["device_id"] and sync["method"] == "GET"
    assert isinstance(sync["duration_ms"], float) and isinstance(sync["time"], float)
    assert sync["level"] == "INFO" and sync["ip_address"] == "127.0.0.1"
    assert any(e["namespace"] == "web.anything" and "token=<redacted>" in e["log"]
               for e in events)
    assert alice["access_token"] not in json.dumps(events)


def test_the_default_handler_gives_way_to_the_files_root(tmp_path, capfd):
    from atrium.logs import request_id_var, setup_logging

    setup_logging("INFO")
    cfg = {"version": 1, "formatters": {"f": {"format": "%(request_id)s|%(message)s"}},
           "handlers": {"f": {"class": "logging.FileHandler", "formatter": "f",
                              "filename": str(tmp_path / "only.log")}},
           "root": {"level": "INFO", "handlers": ["f"]}}
    apply(str(write_config(tmp_path, cfg)))
    token = request_id_var.set("rid-7")
    try:
        logging.getLogger("atrium.x").info("to the file only")
    finally:
        request_id_var.reset(token)
    _flush_all()
    assert (tmp_path / "only.log").read_text() == "rid-7|to the file only\n"
    assert "to the file only" not in capfd.readouterr().err


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("version: 1\nhandlers: [unclosed\n", "is not valid YAML (line"),
    ("- a list\n", "must hold a mapping"),
    ("formatters: {}\n", "must say 'version: 1'"),
    ({"version": 1, "handlers": {"r": {"class": "synapse.logging.RemoteHandler"}}},
     "handlers.r names synapse.logging.RemoteHandler, which has no counterpart"),
    ({"version": 1, "handlers": {"h": {"class": "logging.NoSuchHandler"}}},
     "Unable to configure handler 'h'"),
    ({"version": 1, "handlers": {"h": {"class": "logging.FileHandler",
                                       "filename": "/nonexistent/dir/x.log"}}},
     "Unable to configure handler 'h'"),
])
def test_a_bad_log_config_is_one_line_naming_the_key(tmp_path, content, message):
    path = tmp_path / "missing.yaml" if content is None else write_config(tmp_path, content)
    root = logging.getLogger()
    before = root.handlers[:]
    with pytest.raises(ConfigError) as e:
        apply(str(path))
    text = str(e.value)
    assert text.startswith("config key 'log_config': ") and message in text, text
    assert "\n" not in text
    assert all(h in root.handlers for h in before)   # the old handlers still log


def test_log_config_must_be_a_path(make_app):
    app = make_app(log_config=["not", "a", "path"])
    with pytest.raises(ConfigError, match="config key 'log_config' must be the path"):
        configure_logging(runtime_of(app).config)


def test_a_relative_path_is_relative_to_the_config_file(tmp_path):
    from atrium.config import parse_config

    config = parse_config({"server_name": "x.test", "log_config": "logs/log.yaml"},
                          str(tmp_path / "conf" / "homeserver.yaml"))
    assert path_of(config) == str(tmp_path / "conf" / "logs" / "log.yaml")


def test_the_server_stops_at_start_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "log.yaml").write_text("version: 1\nhandlers: {h: {class: nope.Nope}}\n")
    config = tmp_path / "homeserver.yaml"
    config.write_text(yaml.safe_dump({
        "server_name": "x.test", "log_config": "log.yaml",
        "database": {"name": "sqlite3", "args": {"database": str(tmp_path / "db.sqlite")}},
        "signing_key_path": str(tmp_path / "signing.key")}))
    proc = subprocess.run([sys.executable, "-c", "import web; web.app"], cwd=str(ROOT),
                          env=dict(os.environ, ATRIUM_CONFIG=str(config)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("atrium: ")]
    assert len(lines) == 1 and lines[0].startswith("atrium: config key 'log_config': "), \
        proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_reads_the_file_without_configuring_anything(tmp_path):
    from atrium.config import parse_config
    from atrium.log_config import check

    good = write_config(tmp_path, synapse_style(tmp_path), "good.yaml")
    write_config(tmp_path, "version: 2\n", "bad.yaml")
    root = logging.getLogger()
    before = root.handlers[:]
    check(parse_config({"server_name": "x.test", "log_config": str(good)},
                       str(tmp_path / "homeserver.yaml")))
    assert root.handlers == before and not (tmp_path / "homeserver.log").exists()
    with pytest.raises(ConfigError, match="must say 'version: 1'"):
        check(parse_config({"server_name": "x.test", "log_config": "bad.yaml"},
                           str(tmp_path / "homeserver.yaml")))
