"""Inbound transactions: ``PUT /_matrix/federation/v1/send/{txnId}`` (server-server-api.md
"Transactions", data/api/server-server/transactions.yaml).

``install(app, fed, parts)`` builds the inbound parts (``fed.transactions``, ``fed.edus``,
``fed.remote_devices``), the outbound device-list sender (federation/device_lists_out.py)
and the route.  ``TransactionHandler.on_send``:

* checks the body: an object whose ``origin`` is the authenticated origin (403 otherwise),
  ``pdus`` (at most 50) and ``edus`` (at most 100) lists — 400 with a Matrix body otherwise;
* answers each (origin, txn id) once: the first answer is stored and a retry gets it back
  without anything being applied again; a duplicate arriving while the first is in progress
  waits for it (a per-(origin, txn id) lock) and gets the same answer;
* hands the EDUs to ``EduHandlers`` (a bad EDU never fails the transaction) and the PDUs to
  ``fed.pdu_handler(origin, pdus)``; until Federation II sets it, each PDU whose event id is
  known answers ``{"error": …}`` and the transaction still succeeds.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable

import gevent
from flask import Blueprint, Flask, current_app, jsonify, request

from atrium.errors import MatrixError
from federation import device_lists_out
from federation.edus import EduHandlers, KeyedLock
from federation.request_auth import BODY_ENVIRON_KEY
from protocol.hashing import compute_event_id
from protocol.room_versions import get_room_version
from store.federation_inbound import FederationInboundStore
from store.remote_devices import RemoteDeviceStore

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
PRUNE_EVERY_S = 3600.0
DEFAULT_MAX_BODY = 16 * 1024 * 1024
PDUS_NOT_SUPPORTED = "Room events over federation are not supported yet"


class TransactionHandler:
    """``pdu_handler()`` returns the current ``fed.pdu_handler`` (None until Federation II)."""

    def __init__(self, store: FederationInboundStore, edus: EduHandlers,
                 pdu_handler: Callable[[], Any]) -> None:
        self.store = store
        self.edus = edus
        self._pdu_handler = pdu_handler
        self._locks = KeyedLock()
        self._last_prune = 0.0

    def on_send(self, origin: str, txn_id: str, body: Any) -> dict[str, Any]:
        """The answer to ``PUT /send/{txn_id}`` from the authenticated ``origin``."""
        pdus, edus = _check(origin, body)
        self._maybe_prune()
        # One process: the lock makes concurrent duplicates apply once.  Scale-out seam: with
        # several processes, route an origin's transactions to one process (or take a row
        # lock on (origin, txn_id)) — the stored answer already covers sequential retries.
        with self._locks((origin, txn_id)):
            stored = self.store.get_response(origin, txn_id)
            if stored is not None:
                log.debug("transaction %s from %s answered before", txn_id, origin)
                return stored
            log.info("transaction %s from %s: %d PDUs, %d EDUs", txn_id, origin, len(pdus),
                     len(edus))
            for edu in edus:  # EDUs first: to-device never waits behind room events
                self.edus.handle(origin, edu)
            response = {"pdus": self._pdus(origin, pdus)}
            self.store.put_response(origin, txn_id, response)
            return response

    def _pdus(self, origin: str, pdus: list[Any]) -> dict[str, Any]:
        handler = self._pdu_handler()
        if handler is not None:
            return dict(handler(origin, pdus) or {})
        out: dict[str, Any] = {}
        for pdu in pdus:
            event_id = self._event_id(pdu)
            if event_id is not None:
                out[event_id] = {"error": PDUS_NOT_SUPPORTED}
        return out

    def _event_id(self, pdu: Any) -> str | None:
        """The PDU's event id: given in v1/v2 rooms, the reference hash from v3 on (needs
        the room's version, so only for rooms this server knows; others are skipped, as a
        PDU of an unknown room is)."""
        if not isinstance(pdu, dict):
            return None
        if isinstance(pdu.get("event_id"), str):
            return pdu["event_id"]
        room_id = pdu.get("room_id")
        if not isinstance(room_id, str):
            return None
        version = self.store.room_version(room_id)
        rv = get_room_version(version) if version is not None else None
        if rv is None:
            return None
        try:
            return compute_event_id(pdu, rv)
        except Exception:  # noqa: BLE001 - a PDU that cannot be hashed has no id to answer
            return None

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        gevent.spawn(self._prune)

    def _prune(self) -> None:
        try:
            self.store.prune()
        except Exception:  # noqa: BLE001 - housekeeping; next time
            log.exception("pruning inbound federation tables failed")


def _check(origin: str, body: Any) -> tuple[list[Any], list[Any]]:
    """transaction.yaml: the body's shape, its origin and the size limits."""
    if not isinstance(body, dict):
        raise MatrixError(400, "M_BAD_JSON", "A transaction must be a JSON object")
    claimed = body.get("origin")
    if not isinstance(claimed, str):
        raise MatrixError(400, "M_BAD_JSON", "The transaction has no origin")
    if claimed != origin:
        raise MatrixError(403, "M_FORBIDDEN",
                          "The transaction's origin is not the server that signed the request")
    ts = body.get("origin_server_ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise MatrixError(400, "M_BAD_JSON", "origin_server_ts must be an integer")
    pdus = body.get("pdus", [])
    edus = body.get("edus", [])
    if pdus is None:
        pdus = []
    if edus is None:
        edus = []
    if not isinstance(pdus, list) or not isinstance(edus, list):
        raise MatrixError(400, "M_BAD_JSON", "pdus and edus must be lists")
    if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
        raise MatrixError(400, "M_BAD_JSON", f"A transaction may hold at most {MAX_PDUS}"
                          f" PDUs and {MAX_EDUS} EDUs (got {len(pdus)} and {len(edus)})")
    return pdus, edus


def _json_body() -> Any:
    if BODY_ENVIRON_KEY in request.environ:  # parsed by the verifier, which read the body
        body = request.environ[BODY_ENVIRON_KEY]
        _check_storable(body)
        return body
    limit = current_app.config.get("ATRIUM_MAX_BODY") or DEFAULT_MAX_BODY
    if request.content_length is not None and request.content_length > limit:
        raise MatrixError(413, "M_TOO_LARGE", "The transaction is too large")
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise MatrixError(413, "M_TOO_LARGE", "The transaction is too large")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise MatrixError(400, "M_BAD_JSON", "The transaction is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise MatrixError(400, "M_NOT_JSON", "Content not JSON.") from None
    _check_storable(body)
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_storable(value: Any) -> None:
    """Lone UTF-16 surrogates (``"\\ud800"``) and numbers out of range (``1e400``) parse
    but can be neither stored nor sent on as JSON: such a transaction is malformed.  (The
    client API's rule, web/http.py check_json_value, which federation/ may not import.)"""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise MatrixError(400, "M_BAD_JSON", "Strings must be valid Unicode") from None
        elif isinstance(v, float) and not math.isfinite(v):
            raise MatrixError(400, "M_BAD_JSON", "Numbers must be finite")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def install(app: Flask, fed: Any, parts: dict[str, Any]) -> None:
    """Build the inbound parts onto ``fed`` and register ``PUT /send/{txnId}``."""
    store = FederationInboundStore(fed.db)
    fed.remote_devices = RemoteDeviceStore(fed.db)
    sync = parts["sync"]
    fed.edus = EduHandlers(fed.server_name, store, fed.remote_devices,
                           to_device=sync.to_device, device_lists=sync.device_lists,
                           waker=sync.notifier, client=lambda: fed.client)
    fed.transactions = TransactionHandler(store, fed.edus, lambda: fed.pdu_handler)
    device_lists_out.install(fed, parts)
    bp = Blueprint("federation_inbound", __name__)

    @bp.put("/_matrix/federation/v1/send/<txn_id>")
    def send_transaction(txn_id: str) -> Any:
        """PUT /_matrix/federation/v1/send/{txnId}"""
        verifier = fed.verifier
        if verifier is None:
            raise MatrixError(401, "M_UNAUTHORIZED", "Federation requests cannot be verified")
        origin = verifier.authenticate(request)
        with verifier.limited(origin):
            return jsonify(fed.transactions.on_send(origin, txn_id, _json_body()))

    app.register_blueprint(bp)
