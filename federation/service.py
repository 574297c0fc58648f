"""The federation parts one server holds, built once by ``web/federation_wiring.py`` and
shared by the federation routes and the client-API features that ask other servers.

Each field is filled by the module that owns it (see docs/federation.md); a field stays
None while its part is switched off (``federation.enabled: false``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Federation:
    server_name: str
    config: Any            # atrium.config.Config
    db: Any                # store.database.Database
    signing_key: Any       # nacl SigningKey with .alg / .version
    tracer: Any = None     # supervision.Tracer
    client: Any = None     # federation.client.FederationClient
    keyring: Any = None    # federation.keyring.Keyring
    verifier: Any = None   # federation.request_auth.RequestVerifier
    sender: Any = None     # federation.sender.FederationSender
    transactions: Any = None  # federation.inbound.TransactionHandler
    edus: Any = None       # federation.edus.EduHandlers
    remote_devices: Any = None  # store.remote_devices.RemoteDeviceStore
    queries: Any = None    # federation.remote_queries.RemoteQueries (used by web/)
    #: inbound PDUs of a transaction: ``fn(origin, pdus) -> {event_id: {} | {"error": …}}``;
    #: Federation II fills it, until then each PDU answers an error
    pdu_handler: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
