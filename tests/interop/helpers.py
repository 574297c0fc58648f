"""What the interop tests share: an HTTPS client-API account on either server, signed
federation requests made by hand, bounded polling, server-key checks and real device keys."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable
from urllib.parse import quote, urlencode

import requests

from protocol.signing import (
    SigningKey, decode_verify_key_base64, encode_verify_key_base64, generate_signing_key,
    get_verify_key, sign_json, verify_signed_json,
)
from protocol.xmatrix import sign_request

V3 = "/_matrix/client/v3"


def q(s: str) -> str:
    """Percent-encode one path segment (user ids, aliases, room ids)."""
    return quote(s, safe="")


def wait_until(fn: Callable[[], Any], timeout: float = 15.0, interval: float = 0.2,
               what: str = "condition") -> Any:
    """Call ``fn`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


class Account:
    """A logged-in user of one server, talking HTTPS (trusting the test CA)."""

    def __init__(self, base_url: str, ca_path: str, login: dict[str, Any]):
        self.base_url = base_url
        self.user_id: str = login["user_id"]
        self.device_id: str = login["device_id"]
        self.token: str = login["access_token"]
        self.ca_path = ca_path
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {self.token}"
        self.sk = generate_signing_key(self.device_id)   # ed25519:<device_id>
        self.since: str | None = None

    @property
    def server_name(self) -> str:
        return self.user_id.split(":", 1)[1]

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, Any] | None = None, timeout: float = 30.0,
             ) -> tuple[int, Any]:
        url = self.base_url + path + (("?" + urlencode(query, doseq=True)) if query else "")
        # verify per request: a session's own setting loses to REQUESTS_CA_BUNDLE
        r = self.s.request(method, url, json=body, timeout=timeout, verify=self.ca_path)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def ok(self, method: str, path: str, body: Any = None,
           query: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        status, j = self.call(method, path, body, query, timeout)
        assert status == 200, (method, path, status, j)
        return j

    # --- profile, rooms ------------------------------------------------------------------
    def set_displayname(self, name: str) -> None:
        self.ok("PUT", f"{V3}/profile/{q(self.user_id)}/displayname", {"displayname": name})

    def create_room(self, **body: Any) -> str:
        return self.ok("POST", f"{V3}/createRoom", body)["room_id"]

    # --- keys ----------------------------------------------------------------------------
    @property
    def ed25519(self) -> str:
        return encode_verify_key_base64(get_verify_key(self.sk))

    def device_keys(self) -> dict[str, Any]:
        keys = {"user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": "curve-" + self.device_id,
                         f"ed25519:{self.device_id}": self.ed25519}}
        return sign_json(keys, self.user_id, self.sk)

    def otks(self, n: int) -> dict[str, Any]:
        return {f"signed_curve25519:{self.device_id}{i:03d}":
                sign_json({"key": f"otk-{self.device_id}-{i}"}, self.user_id, self.sk)
                for i in range(n)}

    def upload_keys(self, n_otks: int) -> dict[str, Any]:
        return self.ok("POST", f"{V3}/keys/upload",
                       {"device_keys": self.device_keys(), "one_time_keys": self.otks(n_otks)})

    # --- sync / to-device ----------------------------------------------------------------
    def sync(self, timeout_ms: int = 0) -> dict[str, Any]:
        query: dict[str, Any] = {"timeout": str(timeout_ms)}
        if self.since is not None:
            query["since"] = self.since
        j = self.ok("GET", f"{V3}/sync", query=query, timeout=timeout_ms / 1000 + 30)
        self.since = j["next_batch"]
        return j

    def to_device_events(self, timeout_ms: int = 500) -> list[dict[str, Any]]:
        return self.sync(timeout_ms).get("to_device", {}).get("events", [])

    def send_to_device(self, event_type: str, messages: dict[str, Any]) -> None:
        self.ok("PUT", f"{V3}/sendToDevice/{q(event_type)}/{uuid.uuid4().hex}",
                {"messages": messages})


def collect_to_device(account: Account, predicate: Callable[[dict[str, Any]], bool],
                      want: int, timeout: float = 20.0, settle: float = 1.5,
                      ) -> list[dict[str, Any]]:
    """Sync until ``want`` matching to-device events arrived, then keep syncing for
    ``settle`` seconds so a duplicate would show; every matching event seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        seen += [e for e in account.to_device_events(500) if predicate(e)]
    end = time.monotonic() + settle
    while time.monotonic() < end:
        seen += [e for e in account.to_device_events(300) if predicate(e)]
    return seen


# --- server keys ---------------------------------------------------------------------------


def own_keys(base_url: str, ca_path: str) -> dict[str, Any]:
    """A server's ``GET /_matrix/key/v2/server``, self-signature checked."""
    r = requests.get(base_url + "/_matrix/key/v2/server", verify=ca_path, timeout=10)
    assert r.status_code == 200, r.text
    j = r.json()
    verify_server_key_object(j, j["server_name"], j)
    return j


def verify_keys_of(key_object: dict[str, Any]) -> dict[str, Any]:
    return {kid: decode_verify_key_base64(kid.split(":", 1)[0], kid.split(":", 1)[1], v["key"])
            for kid, v in key_object.get("verify_keys", {}).items()}


def verify_server_key_object(obj: dict[str, Any], signer: str,
                             signer_keys: dict[str, Any]) -> None:
    """Check ``signer``'s signature on ``obj`` with the keys of the key object
    ``signer_keys`` (SignatureError when missing or wrong)."""
    keys = verify_keys_of(signer_keys)
    sigs = obj.get("signatures", {}).get(signer, {})
    usable = [kid for kid in sigs if kid in keys]
    assert usable, f"no signature of {signer} with a known key on {json.dumps(obj)[:400]}"
    for kid in usable:
        verify_signed_json(obj, signer, keys[kid])


# --- hand-made federation requests ---------------------------------------------------------


def federation_request(base_url: str, ca_path: str, method: str, path: str, *,
                       origin: str, destination: str, signing_key: SigningKey | None,
                       body: Any = None, header_destination: str | None = None,
                       key_id: str | None = None, raw_body: bytes | None = None,
                       ) -> requests.Response:
    """A federation request signed as ``origin`` (``path`` with its query string, exactly as
    sent).  ``header_destination`` / ``key_id`` override what the header claims, to forge;
    ``signing_key=None`` sends no Authorization header."""
    headers = {"Content-Type": "application/json"}
    if signing_key is not None:
        auth = sign_request(signing_key, method, path, origin, destination, body)
        if header_destination is not None:
            auth = auth.replace(f'destination="{destination}"',
                                f'destination="{header_destination}"')
        if key_id is not None:
            auth = auth.replace(f'key="ed25519:{signing_key.version}"', f'key="{key_id}"')
        headers["Authorization"] = auth
    data = raw_body if raw_body is not None else (
        json.dumps(body).encode() if body is not None else None)
    return requests.request(method, base_url + path, data=data, headers=headers,
                            verify=ca_path, timeout=30)


def errcode(r: requests.Response) -> str | None:
    try:
        j = r.json()
    except ValueError:
        return None
    return j.get("errcode") if isinstance(j, dict) else None
