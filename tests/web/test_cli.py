"""``python -m atrium check-config`` and the argument/config paths of ``register`` (the
exchange with a live server is in tests/e2e/test_accounts_nio.py)."""
from __future__ import annotations

import yaml

from atrium.cli import main


def _config(tmp_path, **raw):
    p = tmp_path / "homeserver.yaml"
    p.write_text(yaml.safe_dump({"server_name": "cli.test", **raw}), encoding="utf-8")
    return str(p)


def test_check_config_valid(tmp_path, capsys):
    assert main(["check-config", "-c", _config(tmp_path)]) == 0
    assert "is valid" in capsys.readouterr().out


def test_check_config_bad_key_is_one_line(tmp_path, capsys):
    assert main(["check-config", "-c", _config(tmp_path, bcrypt_rounds="lots")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bcrypt_rounds" in err and "\n" not in err


def test_check_config_missing_file(tmp_path, capsys):
    assert main(["check-config", "-c", str(tmp_path / "none.yaml")]) == 2
    assert not (tmp_path / "none.yaml").exists()  # never writes a default


def test_check_config_warns_about_unverifiable_registration(tmp_path, capsys):
    assert main(["check-config", "-c", _config(tmp_path, enable_registration=True)]) == 0
    assert "warning" in capsys.readouterr().err


def test_register_without_secret(tmp_path, capsys):
    assert main(["register", "-u", "a", "-p", "b", "-c", _config(tmp_path)]) == 2
    assert "registration_shared_secret" in capsys.readouterr().err


def test_register_unreachable_server(tmp_path, capsys):
    cfg = _config(tmp_path, registration_shared_secret="x")
    assert main(["register", "-u", "a", "-p", "b", "-c", cfg,
                 "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


class _Tty:
    """stdin as a terminal (getpass is replaced, so nothing is read from it)."""

    def isatty(self) -> bool:
        return True


def test_register_prompts_twice_on_a_terminal(tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path, registration_shared_secret="x")
    answers = iter(["one", "two"])
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["register", "-u", "a", "-c", cfg, "--url", "http://127.0.0.1:9"]) == 2
    assert "passwords do not match" in capsys.readouterr().err
    answers = iter(["same", "same"])
    assert main(["register", "-u", "a", "-c", cfg, "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_register_with_a_closed_stdin_is_one_line(tmp_path, capsys, monkeypatch):
    import io

    cfg = _config(tmp_path, registration_shared_secret="x")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["register", "-u", "a", "-c", cfg]) == 2
    assert capsys.readouterr().err == "atrium: no password given (stdin closed)\n"
    assert main(["register", "-c", cfg]) == 2
    assert capsys.readouterr().err == "atrium: no user name given (stdin closed)\n"


def test_register_finds_the_server_where_it_listens(tmp_path, capsys, monkeypatch):
    """Without --url: ATRIUM_BIND, else a public_baseurl on this machine, else the
    listeners (port 9 answers nothing: the message names the URL tried)."""
    monkeypatch.delenv("ATRIUM_BIND", raising=False)
    cfg = _config(tmp_path, registration_shared_secret="x",
                  public_baseurl="https://matrix.example.org/",
                  listeners=[{"port": 9, "type": "http", "bind_addresses": ["127.0.0.1"]}])
    assert main(["register", "-u", "a", "-p", "b", "-c", cfg]) == 1
    assert "cannot reach http://127.0.0.1:9:" in capsys.readouterr().err
    monkeypatch.setenv("ATRIUM_BIND", "19")
    assert main(["register", "-u", "a", "-p", "b", "-c", cfg]) == 1
    assert "cannot reach http://127.0.0.1:19:" in capsys.readouterr().err
    monkeypatch.setenv("ATRIUM_BIND", "nonsense")
    assert main(["register", "-u", "a", "-p", "b", "-c", cfg]) == 2
    assert "ATRIUM_BIND must be" in capsys.readouterr().err
    monkeypatch.delenv("ATRIUM_BIND")
    cfg = _config(tmp_path, registration_shared_secret="x", public_baseurl="http://localhost:29/")
    assert main(["register", "-u", "a", "-p", "b", "-c", cfg]) == 1
    assert "cannot reach http://localhost:29:" in capsys.readouterr().err


def test_trace_finds_the_server_as_register_does(tmp_path, monkeypatch):
    from atrium.trace_cli import _default_url

    monkeypatch.delenv("ATRIUM_BIND", raising=False)
    cfg = _config(tmp_path, listeners=[{"port": 9, "type": "http",
                                        "bind_addresses": ["127.0.0.1"]}])
    assert _default_url(cfg) == "http://127.0.0.1:9"
    monkeypatch.setenv("ATRIUM_BIND", "19")
    assert _default_url(cfg) == "http://127.0.0.1:19"
    monkeypatch.delenv("ATRIUM_BIND")
    assert _default_url(str(tmp_path / "absent.yaml")) == "http://127.0.0.1:8008"
    # the command itself: no --url, the server found through the config, one line on failure
    monkeypatch.setenv("ATRIUM_CONFIG", cfg)
    assert main(["trace", "--token", "t", "actors"]) == 1


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """``python -m atrium check-config | head -0``: exit 141 (as coreutils), no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = _config(tmp_path, media_store_path=str(tmp_path / "m"))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        p = subprocess.run([sys.executable, "-m", "atrium", "check-config", "-c", cfg],
                           stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
                           cwd=str(Path(__file__).resolve().parents[2]))
    finally:
        os.close(write)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
