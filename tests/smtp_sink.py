"""A real SMTP server on loopback for the e-mail tests: aiosmtpd (PyPI, test-only) in a
child process, so its asyncio loop never meets the tests' gevent-patched sockets.

``SmtpSink(directory)`` starts it and learns its port; every message received is written to
``directory`` as ``N.eml`` with ``N.json`` beside it (envelope sender and recipients, whether
the session was under TLS, who authenticated).  Options: ``starttls=(cert, key)`` offers
STARTTLS, ``implicit_tls=(cert, key)`` speaks TLS from the first byte, ``auth=(user, pwd)``
demands AUTH (and refuses any other login), ``refuse=True`` answers every RCPT with 550.

Run as a script (what :class:`SmtpSink` does): ``python -m tests.smtp_sink DIR [options]``;
it prints its port on stdout and stops when its stdin closes.
"""
from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class SmtpSink:
    def __init__(self, directory: str, *, starttls: tuple[str, str] | None = None,
                 implicit_tls: tuple[str, str] | None = None,
                 auth: tuple[str, str] | None = None, refuse: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "tests.smtp_sink", str(self.directory)]
        if starttls:
            args += ["--starttls", *starttls]
        if implicit_tls:
            args += ["--implicit-tls", *implicit_tls]
        if auth:
            args += ["--auth", f"{auth[0]}:{auth[1]}"]
        if refuse:
            args.append("--refuse")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the SMTP sink did not start: {line!r}")
        self.port = int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def clear(self) -> None:
        for p in self.directory.iterdir():
            p.unlink()

    def received(self) -> list[tuple[EmailMessage, dict[str, Any]]]:
        """Every message so far, oldest first: (parsed message, envelope facts)."""
        out = []
        for meta in sorted(self.directory.glob("*.json"), key=lambda p: int(p.stem)):
            raw = meta.with_suffix(".eml").read_bytes()
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            out.append((msg, json.loads(meta.read_text())))
        return out

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[EmailMessage,
                                                                         dict[str, Any]]]:
        """At least ``count`` messages, waiting up to ``timeout`` seconds."""
        import gevent

        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if len(got) >= count or time.monotonic() > deadline:
                assert len(got) >= count, f"{len(got)} of {count} messages arrived"
                return got
            gevent.sleep(0.02)


def text_of(msg: EmailMessage) -> str:
    """The plain-text part of a received message."""
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


# ---------------------------------------------------------------------------- the child

def _main() -> None:
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--starttls", nargs=2)
    ap.add_argument("--implicit-tls", nargs=2)
    ap.add_argument("--auth")
    ap.add_argument("--refuse", action="store_true")
    opts = ap.parse_args()
    out = Path(opts.directory)
    counter = iter(range(1, 1_000_000))

    class Handler:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              rcpt_options: Any) -> str:
            if opts.refuse:
                return "550 5.1.1 no such user here"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            n = next(counter)
            (out / f"{n}.eml.tmp").write_bytes(envelope.original_content or envelope.content)
            os.replace(out / f"{n}.eml.tmp", out / f"{n}.eml")
            facts = {"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                     "tls": session.ssl is not None
                     or server.transport.get_extra_info("ssl_object") is not None,
                     "login": (session.auth_data.login.decode()
                               if isinstance(session.auth_data, LoginPassword) else None)}
            (out / f"{n}.json.tmp").write_text(json.dumps(facts))
            os.replace(out / f"{n}.json.tmp", out / f"{n}.json")
            return "250 Message accepted"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if not opts.auth or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, _, password = opts.auth.partition(":")
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def context(pair: list[str]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pair[0], pair[1])
        return ctx

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs: dict[str, Any] = {}
    if opts.starttls:
        kwargs.update(tls_context=context(opts.starttls), require_starttls=False)
    if opts.implicit_tls:
        kwargs.update(ssl_context=context(opts.implicit_tls))
    if opts.auth:
        kwargs.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=bool(opts.starttls or opts.implicit_tls))
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print(port, flush=True)
    sys.stdin.read()   # until the parent closes it
    controller.stop()


if __name__ == "__main__":
    _main()
