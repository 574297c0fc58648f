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
