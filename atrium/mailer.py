"""Sending e-mail over SMTP with the standard library's ``smtplib`` (Synapse's
``handlers/send_email.py`` does the same job over Twisted).

:meth:`Mailer.send` never blocks its caller: the message is handed to a greenlet (under
gevent's patched sockets ``smtplib`` yields while it waits on the network) or, in a process
that is not patched, to a daemon thread.  A failure to send is logged, never raised to the
request that asked for the mail.  At most ``max_pending`` messages wait or are on their way;
past that a message is dropped with an error in the log (the ``rc_3pid_validation`` rate
limit keeps honest traffic far below it).

Transport security follows Synapse's keys: ``force_tls`` speaks TLS from the first byte
(SMTPS, port 465); otherwise STARTTLS is used when the server offers it and ``enable_tls``
is on, and ``require_transport_security`` refuses to send without it.  Certificates are
verified against the system's roots and the files of ``federation_custom_ca_list``, for the
name ``tlsname`` (default ``smtp_host``); ``use_insecure_ssl_client_just_for_testing_do_not_use``
turns verification off.  AUTH is used when ``smtp_user`` is set, and only over TLS unless
the server is on loopback.
"""
from __future__ import annotations

import email.policy
import email.utils
import ipaddress
import logging
import smtplib
import ssl
import threading
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, Callable, Sequence

from atrium.email_config import EmailConfig

log = logging.getLogger(__name__)

SMTP_TIMEOUT_S = 30.0
_CRLF = email.policy.compat32.clone(linesep="\r\n")


@dataclass(frozen=True)
class Message:
    to: str
    subject: str
    text: str
    html: str


class Mailer:
    def __init__(self, config: EmailConfig, *, ca_files: Sequence[str] = (),
                 verify: bool = True, max_pending: int = 1000,
                 max_connections: int = 4, timeout: float = SMTP_TIMEOUT_S) -> None:
        self.config = config
        self.timeout = timeout   # per SMTP connection and command
        self._ca_files = tuple(ca_files)
        self._verify = verify
        self._max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._connections = threading.BoundedSemaphore(max_connections)
        self._idle = threading.Condition(self._lock)
        self.sent = 0      # counters for tests and the log
        self.failed = 0
        self.dropped = 0

    # -- the one entry point -------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Queue ``message`` and return at once."""
        with self._lock:
            if self._pending >= self._max_pending:
                self.dropped += 1
                log.error("mail to %s dropped: %d messages already pending", message.to,
                          self._pending)
                return
            self._pending += 1
        _spawn(lambda: self._deliver(message))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending (shutdown, tests); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # -- delivery ------------------------------------------------------------------------
    def _deliver(self, message: Message) -> None:
        try:
            with self._connections:
                self.deliver_now(message)
            self.sent += 1
            log.info("mail sent to %s: %s", message.to, message.subject)
        except Exception as e:  # noqa: BLE001 - a failed send is logged, never raised
            self.failed += 1
            log.error("mail to %s failed (%s:%d): %s: %s", message.to,
                      self.config.smtp_host, self.config.smtp_port, type(e).__name__, e)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def deliver_now(self, message: Message) -> None:
        """Send one message over one SMTP connection, in the caller's greenlet."""
        cfg = self.config
        mime = self.build(message)
        sender = email.utils.parseaddr(cfg.from_header())[1]
        recipient = email.utils.parseaddr(message.to)[1]
        if "@" not in recipient:
            raise ValueError(f"not an e-mail address: {message.to!r}")
        context = self._tls_context()
        if cfg.force_tls:
            smtp: smtplib.SMTP = _SMTPS(cfg.smtp_host, cfg.smtp_port, timeout=self.timeout,
                                        context=context, tlsname=cfg.tlsname)
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=self.timeout)
        with smtp:
            smtp.ehlo_or_helo_if_needed()
            secure = cfg.force_tls
            if not secure and cfg.enable_tls and smtp.has_extn("starttls"):
                _starttls(smtp, context, cfg.tlsname or cfg.smtp_host)
                smtp.ehlo()
                secure = True
            if cfg.require_transport_security and not secure:
                raise smtplib.SMTPException("the SMTP server does not offer STARTTLS and"
                                            " require_transport_security is set")
            if cfg.smtp_user is not None:
                if not secure and not _is_loopback(cfg.smtp_host):
                    raise smtplib.SMTPException("refusing to send the SMTP password without"
                                                " TLS")
                smtp.login(cfg.smtp_user, cfg.smtp_pass or "")
            # CRLF line ends: smtplib leaves bytes as they are, and SMTP wants CRLF
            smtp.sendmail(sender, [recipient], mime.as_bytes(policy=_CRLF))

    def build(self, message: Message) -> MIMEMultipart:
        """The multipart/alternative message (plain text, then HTML), with the headers
        Synapse sets (``Auto-Submitted`` so no auto-responder answers it)."""
        mime = MIMEMultipart("alternative")
        mime["Subject"] = message.subject
        mime["From"] = self.config.from_header()
        mime["To"] = message.to
        mime["Date"] = email.utils.formatdate()
        mime["Message-ID"] = email.utils.make_msgid()
        mime["Auto-Submitted"] = "auto-generated"
        mime["X-Auto-Response-Suppress"] = "All"
        mime.attach(MIMEText(message.text, "plain", "utf-8"))
        mime.attach(MIMEText(message.html, "html", "utf-8"))
        return mime

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for path in self._ca_files:
            ctx.load_verify_locations(cafile=path)
        if not self._verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class _SMTPS(smtplib.SMTP_SSL):
    """SMTP over implicit TLS, checking the certificate for ``tlsname`` when given."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext,
                 tlsname: str | None) -> None:
        self._tlsname = tlsname or host
        super().__init__(host, port, timeout=timeout, context=context)

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        sock = smtplib.SMTP._get_socket(self, host, port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self._tlsname)


def _starttls(smtp: smtplib.SMTP, context: ssl.SSLContext, tlsname: str) -> None:
    """STARTTLS checking the certificate for ``tlsname`` (smtplib checks ``_host``)."""
    smtp._host = tlsname  # type: ignore[attr-defined]
    code, reply = smtp.starttls(context=context)
    if code != 220:
        raise smtplib.SMTPException(f"STARTTLS refused: {code} {reply!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _spawn(fn: Callable[[], None]) -> None:
    try:
        import gevent
        from gevent import monkey
    except ImportError:  # pragma: no cover
        gevent = None  # type: ignore[assignment]
    if gevent is not None and monkey.is_module_patched("socket"):
        gevent.spawn(fn)
    else:
        threading.Thread(target=fn, name="atrium-mail", daemon=True).start()
