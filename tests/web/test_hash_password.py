"""``python -m atrium hash-password``: prompts twice, honours ``bcrypt_rounds``, reads a piped
password, and prints a hash the server's login accepts (the README's forgotten-password
recipe, run against a real app)."""
from __future__ import annotations

import getpass
import io
import subprocess
import sys

import yaml

from atrium.cli import main
from tests.web.conftest import register_via_dummy
from web.app import runtime_of
from web.uia import check_password

LOGIN = "/_matrix/client/v3/login"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _config(tmp_path, **raw):
    p = tmp_path / "homeserver.yaml"
    p.write_text(yaml.safe_dump({"server_name": "cli.test", **raw}), encoding="utf-8")
    return str(p)


def _prompts(monkeypatch, *answers):
    asked = []
    it = iter(answers)

    def fake(prompt=""):
        asked.append(prompt)
        return next(it)

    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr(getpass, "getpass", fake)
    return asked


def test_prompts_twice_and_uses_bcrypt_rounds(tmp_path, monkeypatch, capsys):
    asked = _prompts(monkeypatch, "correct horse", "correct horse")
    assert main(["hash-password", "-c", _config(tmp_path, bcrypt_rounds=5)]) == 0
    assert asked == ["Password: ", "Confirm password: "]
    out = capsys.readouterr().out.strip()
    assert out.startswith("$2b$05$") and "\n" not in out
    assert check_password("correct horse", out) and not check_password("wrong", out)


def test_mismatch_or_empty_prints_no_hash(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path, bcrypt_rounds=4)
    _prompts(monkeypatch, "one", "two")
    assert main(["hash-password", "-c", cfg]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "do not match" in err
    _prompts(monkeypatch, "")
    assert main(["hash-password", "-c", cfg]) == 2
    assert capsys.readouterr().out == ""


def test_piped_password_and_option(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path, bcrypt_rounds=4)
    monkeypatch.setattr("sys.stdin", io.StringIO("from a pipe\n"))
    assert main(["hash-password", "-c", cfg]) == 0
    assert check_password("from a pipe", capsys.readouterr().out.strip())
    assert main(["hash-password", "-c", cfg, "-p", "ünïcode"]) == 0
    assert check_password("ünïcode", capsys.readouterr().out.strip())


def test_bad_or_missing_config(tmp_path, capsys):
    assert main(["hash-password", "-c", _config(tmp_path, bcrypt_rounds=2), "-p", "x"]) == 2
    assert "bcrypt_rounds" in capsys.readouterr().err
    assert main(["hash-password", "-c", str(tmp_path / "none.yaml"), "-p", "x"]) == 2
    assert not (tmp_path / "none.yaml").exists()


def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "atrium", "hash-password", "-c",
                        _config(tmp_path, bcrypt_rounds=4)], input="piped\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("$2b$04$"), r.stderr


def test_forgotten_admin_password_recipe(make_app, tmp_path, monkeypatch, capsys):
    """The README recipe: hash a new password, write it into users.password_hash, log in."""
    app = make_app()
    client = app.test_client()
    assert register_via_dummy(client, "admin", "forgotten").status_code == 200
    monkeypatch.setattr("sys.stdin", io.StringIO("new secret\n"))
    assert main(["hash-password", "-c", _config(tmp_path, bcrypt_rounds=4)]) == 0
    new_hash = capsys.readouterr().out.strip()
    runtime_of(app).db.run("reset", lambda txn: txn.execute(
        "UPDATE users SET password_hash = ? WHERE name = ?", (new_hash, "@admin:test.local")),
        write=True)

    def login(password):
        return client.post(LOGIN, json={"type": "m.login.password", "password": password,
                                        "identifier": {"type": "m.id.user", "user": "admin"}})

    assert login("new secret").status_code == 200
    assert login("forgotten").status_code == 403
