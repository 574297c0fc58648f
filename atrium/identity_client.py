"""The homeserver's client of identity servers (Identity Service API v2): hashed 3PID lookup
(``/hash_details`` + ``/lookup``), ``/store-invite``, ``/3pid/bind``, ``/3pid/unbind`` (signed
by this server) and the key validity check of a third-party invite
(``/pubkey/isvalid``, at the URL the invite names).

Spec: identity-service-api.md ("Association lookup", "Invitation storage", "Establishing
associations", "Key management"); client-server-api "Third-party invites" and "Adding
Account Administrative Contact Information" for who calls what.

Where it connects: ``https://{id_server}`` always, as Synapse does (``id_server`` is a host
name with an optional port and path prefix, as clients send it); plain HTTP is never used.
Certificates are verified unless ``use_insecure_ssl_client_just_for_testing_do_not_use`` is
set (tests run their identity server over HTTPS with a throw-away certificate).  The
addresses a name resolves to pass ``ip_allowed`` (the server's
``federation_ip_range_blacklist`` / ``_whitelist``, as Synapse applies to identity servers
named by clients) and the connection is made to the checked address, so a DNS answer cannot
aim this at an internal service.  No redirects are followed; every request has a deadline
and a bounded answer.

Errors are :class:`IdentityServerError` (a :class:`~atrium.errors.MatrixError`): a Matrix
error the identity server answered with a 4xx status is passed on as it is (the spec asks
homeservers to proxy them); anything else — unreachable, a 5xx, an answer that is not what
the API promises — is 502 ``M_UNKNOWN``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from atrium.errors import MatrixError
from protocol.ids import IdError, parse_server_name
from protocol.signing import key_id, sign_json
from protocol.xmatrix import format_header

log = logging.getLogger(__name__)

V2 = "/_matrix/identity/v2"
#: the store-invite token alphabet and size (identity-service-api "store-invite")
TOKEN_RE = re.compile(r"[0-9A-Za-z.=_\-]{1,255}\Z")
MAX_ANSWER = 1024 * 1024
MAX_ADDRESSES_TRIED = 3
_PATH_RE = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%\-]+)*/?\Z")


class IdentityServerError(MatrixError):
    """An identity server could not be used.  ``is_status`` is the identity server's HTTP
    status (None: no answer); ``matrix`` says whether it answered a Matrix error."""

    def __init__(self, status: int, errcode: str, error: str, *, is_status: int | None = None,
                 matrix: bool = False, **extra: Any) -> None:
        super().__init__(status, errcode, error, **extra)
        self.is_status = is_status
        self.matrix = matrix


def unreachable(what: str) -> IdentityServerError:
    return IdentityServerError(502, "M_UNKNOWN", f"Could not reach the identity server: {what}")


def bad_answer(what: str, is_status: int | None = 200) -> IdentityServerError:
    return IdentityServerError(502, "M_UNKNOWN", f"The identity server's answer is unusable:"
                               f" {what}", is_status=is_status)


def parse_id_server(id_server: Any) -> tuple[str, int, str]:
    """``host[:port][/path]`` → (host, port, path prefix); 400 ``M_INVALID_PARAM`` when it is
    not one (no scheme, user info, query or fragment)."""
    if not isinstance(id_server, str) or not id_server or len(id_server) > 255:
        raise MatrixError(400, "M_INVALID_PARAM", "id_server must be a host name with an"
                          " optional port and path")
    name, slash, path = id_server.partition("/")
    try:
        host, port = parse_server_name(name)
    except IdError:
        raise MatrixError(400, "M_INVALID_PARAM", "id_server must be a host name with an"
                          " optional port and path") from None
    prefix = (slash + path).rstrip("/")
    if prefix and not _PATH_RE.match(prefix):
        raise MatrixError(400, "M_INVALID_PARAM", "id_server has an invalid path")
    return host.strip("[]"), port or 443, prefix


def lookup_value(medium: str, address: str, pepper: str, algorithm: str) -> str:
    """identity-service-api "Algorithms": what ``/lookup`` is given for one 3PID."""
    if algorithm == "sha256":
        digest = hashlib.sha256(f"{address} {medium} {pepper}".encode("utf-8")).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    return f"{address} {medium}"


class PinnedHTTPS(HTTPAdapter):
    """Connects to the address in the URL while TLS (SNI, certificate name) uses ``host``;
    certificates are checked against ``ca_file`` or certifi's roots when ``verify``.  Used
    wherever an outbound request goes to an address checked against an IP-range list first
    (identity servers here, URL previews in web/url_preview.py)."""

    def __init__(self, host: str, verify: bool, ca_file: str | None = None) -> None:
        self._host = host
        self._verify = verify
        self._ca_file = ca_file
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **kw: Any) -> None:
        kw["server_hostname"] = self._host
        if self._verify:
            import certifi  # noqa: PLC0415 - a dependency of requests

            kw.update(cert_reqs="CERT_REQUIRED", assert_hostname=self._host,
                      ca_certs=self._ca_file or certifi.where())
        else:
            kw.update(cert_reqs="CERT_NONE", assert_hostname=False)
        super().init_poolmanager(connections, maxsize, block, **kw)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> Any:
        return self.poolmanager.connection_from_url(request.url)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        return None


class IdentityClient:
    """One homeserver's requests to identity servers (see the module docstring)."""

    def __init__(self, server_name: str, signing_key: Any, *, verify_tls: bool = True,
                 ip_allowed: Callable[[str], bool] | None = None, timeout: float = 10.0,
                 connect_timeout: float = 5.0) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self.verify_tls = verify_tls
        self.ip_allowed = ip_allowed or (lambda ip: True)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        if not verify_tls:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    @classmethod
    def from_config(cls, config: Any, signing_key: Any,
                    ip_allowed: Callable[[str], bool] | None = None) -> "IdentityClient":
        insecure = bool(getattr(config, "use_insecure_ssl_client_just_for_testing_do_not_use",
                                False))
        if insecure:
            log.warning("identity servers: TLS certificates are NOT verified "
                        "(use_insecure_ssl_client_just_for_testing_do_not_use)")
        return cls(config.server_name, signing_key, verify_tls=not insecure,
                   ip_allowed=ip_allowed)

    # -- the Identity Service API ---------------------------------------------------------

    def lookup(self, id_server: str, access_token: str, medium: str,
               address: str) -> str | None:
        """The Matrix ID bound to the 3PID (v2 hashed lookup), or None."""
        details = self.call(id_server, "GET", f"{V2}/hash_details", token=access_token)
        algorithms, pepper = details.get("algorithms"), details.get("lookup_pepper")
        if not isinstance(algorithms, list) or not isinstance(pepper, str) or not pepper:
            raise bad_answer("hash_details has no algorithms or lookup_pepper")
        for algorithm in ("sha256", "none"):
            if algorithm in algorithms:
                break
        else:
            raise MatrixError(400, "M_INVALID_PARAM", "The identity server supports no lookup"
                              " algorithm this server knows (sha256, none)")
        value = lookup_value(medium, address, pepper, algorithm)
        answer = self.call(id_server, "POST", f"{V2}/lookup", token=access_token,
                           body={"addresses": [value], "algorithm": algorithm,
                                 "pepper": pepper})
        mappings = answer.get("mappings")
        mxid = mappings.get(value) if isinstance(mappings, Mapping) else None
        return mxid if isinstance(mxid, str) else None

    def store_invite(self, id_server: str, access_token: str,
                     params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /store-invite``: ``{"token", "public_keys", "display_name"}`` checked.
        ``public_keys`` always holds at least one ``{public_key, key_validity_url}``; the
        legacy single ``public_key`` of older servers becomes one (with the server's
        ``/pubkey/isvalid``, as Synapse does)."""
        answer = self.call(id_server, "POST", f"{V2}/store-invite", token=access_token,
                           body=dict(params))
        token, display_name = answer.get("token"), answer.get("display_name")
        if not isinstance(token, str) or not TOKEN_RE.match(token):
            raise bad_answer("store-invite returned no usable token")
        if not isinstance(display_name, str):
            raise bad_answer("store-invite returned no display_name")
        keys = []
        for entry in answer.get("public_keys") or []:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                key: dict[str, str] = {"public_key": entry["public_key"]}
                if isinstance(entry.get("key_validity_url"), str):
                    key["key_validity_url"] = entry["key_validity_url"]
                keys.append(key)
        if isinstance(answer.get("public_key"), str):
            legacy = {"public_key": answer["public_key"], "key_validity_url":
                      f"https://{id_server}{V2}/pubkey/isvalid"}
            keys = keys or [legacy]
            fallback = legacy
        elif keys:
            fallback = keys[0]
        else:
            raise bad_answer("store-invite returned no public key")
        if "key_validity_url" not in fallback:
            raise bad_answer("store-invite returned a public key without key_validity_url")
        return {"token": token, "display_name": display_name, "public_keys": keys,
                "fallback": fallback}

    def bind(self, id_server: str, access_token: str, sid: str, client_secret: str,
             mxid: str) -> dict[str, Any]:
        """``POST /3pid/bind``: the identity server's signed association (medium, address
        and ``ts`` checked)."""
        answer = self.call(id_server, "POST", f"{V2}/3pid/bind", token=access_token,
                           body={"sid": sid, "client_secret": client_secret, "mxid": mxid})
        if not isinstance(answer.get("medium"), str) or not isinstance(answer.get("address"),
                                                                      str):
            raise bad_answer("3pid/bind returned no medium or address")
        return answer

    def unbind(self, id_server: str, mxid: str, medium: str, address: str) -> bool:
        """``POST /3pid/unbind`` signed by this server (for the user's homeserver, no
        session needed).  True: unbound; False: the identity server does not support
        unbinding (a non-Matrix 400 / 404 / 501).  A Matrix error is raised as it is."""
        body = {"mxid": mxid, "threepid": {"medium": medium, "address": address}}
        try:
            self.call(id_server, "POST", f"{V2}/3pid/unbind", body=body, sign=True)
        except IdentityServerError as e:
            if not e.matrix and e.is_status in (400, 404, 501):
                return False
            raise
        return True

    def key_is_valid(self, url: str, public_key: str) -> bool:
        """GET ``key_validity_url?public_key=…`` (an HTTPS URL the invite names): its
        ``valid``.  Raises :class:`IdentityServerError` when it cannot be asked."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or parts.username or parts.fragment:
            raise bad_answer("the key validity URL is not an https URL", None)
        query = (parts.query + "&" if parts.query else "") + urlencode({"public_key":
                                                                       public_key})
        answer = self._json(parts.hostname, parts.port or 443, parts.netloc,
                            (parts.path or "/") + "?" + query, "GET", None, {})
        valid = answer.get("valid")
        if not isinstance(valid, bool):
            raise bad_answer("the key validity answer has no boolean 'valid'")
        return valid

    # -- HTTP -----------------------------------------------------------------------------

    def call(self, id_server: str, method: str, path: str, *, token: str | None = None,
             body: Any = None, sign: bool = False) -> dict[str, Any]:
        """One request to ``https://{id_server}{path}``; the JSON object answered."""
        host, port, prefix = parse_id_server(id_server)
        target = prefix + path
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if sign:
            headers["Authorization"] = self._x_matrix(method, target, id_server, body)
        netloc = id_server.partition("/")[0]
        return self._json(host, port, netloc, target, method, body, headers)

    def _x_matrix(self, method: str, target: str, id_server: str, content: Any) -> str:
        """The request signed as Synapse signs requests to identity servers: the signed
        object names the identity server as ``destination_is`` (what Sydent checks)."""
        obj: dict[str, Any] = {"method": method, "uri": target, "origin": self.server_name,
                               "destination_is": id_server}
        if content is not None:
            obj["content"] = content
        signed = sign_json(obj, self.server_name, self.signing_key)
        kid = key_id(self.signing_key)
        return format_header(self.server_name, id_server, kid,
                             signed["signatures"][self.server_name][kid])

    def _addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise unreachable(f"cannot resolve {host}: {e}") from None
        found: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in found:
                found.append(addr)
        allowed = [a for a in found if self.ip_allowed(a)]
        if not allowed:
            raise MatrixError(403, "M_FORBIDDEN", f"The identity server {host} is on an"
                              " address this server may not contact")
        return allowed

    def _json(self, host: str, port: int, host_header: str, target: str, method: str,
              body: Any, headers: dict[str, str]) -> dict[str, Any]:
        status, raw = self._exchange(host, port, host_header, target, method, body, headers)
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else None
        except (ValueError, UnicodeDecodeError):
            answer = None
        if status >= 300:
            if 400 <= status < 500 and isinstance(answer, Mapping) \
                    and isinstance(answer.get("errcode"), str) \
                    and answer["errcode"].startswith("M_"):
                error = answer.get("error") if isinstance(answer.get("error"), str) else ""
                extra = {k: v for k, v in answer.items() if k not in ("errcode", "error")}
                raise IdentityServerError(status, answer["errcode"], error or "Identity"
                                          " server error", is_status=status, matrix=True,
                                          **extra)
            raise IdentityServerError(502, "M_UNKNOWN", f"The identity server answered"
                                      f" {status}", is_status=status)
        if not isinstance(answer, dict):
            raise bad_answer("not a JSON object", status)
        return answer

    def _exchange(self, host: str, port: int, host_header: str, target: str, method: str,
                  body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
        addresses = self._addresses(host, port)
        deadline = time.monotonic() + self.timeout
        session = requests.Session()
        session.mount("https://", PinnedHTTPS(host, self.verify_tls))
        data = json.dumps(body).encode("utf-8") if body is not None else None
        send_headers = {"Host": host_header, "User-Agent": "Atrium", **headers}
        if data is not None:
            send_headers["Content-Type"] = "application/json"
        last = "no address"
        try:
            for addr in addresses[:MAX_ADDRESSES_TRIED]:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
                try:
                    resp = session.request(method, f"https://{netloc}{target}", data=data,
                                           headers=send_headers, allow_redirects=False,
                                           stream=True, timeout=(min(self.connect_timeout,
                                                                     remaining), remaining))
                except requests.ConnectionError as e:
                    last = str(e)[:200]
                    continue
                except requests.RequestException as e:
                    raise unreachable(str(e)[:200]) from None
                try:
                    return resp.status_code, _read(resp, deadline)
                finally:
                    resp.close()
            raise unreachable(last)
        finally:
            session.close()


def _read(resp: requests.Response, deadline: float) -> bytes:
    out = bytearray()
    try:
        for chunk in resp.iter_content(64 * 1024):
            out += chunk
            if len(out) > MAX_ANSWER:
                raise bad_answer(f"over {MAX_ANSWER} bytes", resp.status_code)
            if time.monotonic() > deadline:
                raise unreachable("the answer took too long")
    except requests.RequestException as e:
        raise unreachable(str(e)[:200]) from None
    return bytes(out)
