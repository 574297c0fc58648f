"""Errors of outbound federation requests, shared by the client, keyring, sender and the
client-API features that ask other servers.  (Inbound errors are ``atrium.errors.MatrixError``.)"""
from __future__ import annotations

from typing import Any


class FederationError(Exception):
    """A request to ``destination`` did not give a usable answer."""

    def __init__(self, destination: str, message: str) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.message = message


class RemoteUnreachable(FederationError):
    """No answer: resolution failed, the address is blacklisted, connect / TLS / read failed
    or timed out."""


class NotRetrying(RemoteUnreachable):
    """The destination is backing off after failures; asked to fail fast instead of waiting."""

    def __init__(self, destination: str, retry_at_ms: int) -> None:
        super().__init__(destination, f"backing off until {retry_at_ms}")
        self.retry_at_ms = retry_at_ms


class Forbidden(FederationError):
    """``federation_domain_whitelist`` does not list the destination."""


class RemoteHTTPError(FederationError):
    """The remote answered with a non-2xx status; ``errcode``/``error`` from its JSON body."""

    def __init__(self, destination: str, status: int, errcode: str | None = None,
                 error: str | None = None, body: Any = None) -> None:
        super().__init__(destination, f"HTTP {status} {errcode or ''} {error or ''}".strip())
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


class BadResponse(FederationError):
    """The remote answered 2xx with something unusable (not JSON, too large, wrong shape)."""
