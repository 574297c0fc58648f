"""Builds the federation parts (``federation.service.Federation``) and their routes.

Runs after every client-API area, because the federation side serves what those areas own
(profiles, device keys, the room directory, to-device inboxes).  ``federation/`` never imports
``web/``: what it needs is handed over here, from ``runtime.parts``.  Client-API handlers that
ask other servers reach ``runtime.parts["federation"]`` at request time."""
from __future__ import annotations

import importlib
import logging
from typing import Any

from flask import Flask

from federation.service import Federation

log = logging.getLogger(__name__)


def _optional(name: str) -> Any:
    # TEMPORARY while the federation modules are being written in parallel: a module that
    # does not exist yet is skipped.  Removed once all have landed.
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        log.debug("federation: %s not built yet", name)
        return None


def register(app: Flask, runtime: Any) -> None:
    config = runtime.config
    parts = runtime.parts
    fed = Federation(server_name=config.server_name, config=config, db=runtime.db,
                     signing_key=runtime.signing_key, tracer=parts.get("tracer"))
    parts["federation"] = fed
    from web import admin_federation  # the operator's view (empty while federation is off)

    admin_federation.register(app, runtime)
    if not config.federation.enabled:
        log.info("federation is switched off (federation.enabled: false)")
        return
    client_mod = _optional("federation.client")
    if client_mod is not None:
        fed.client = client_mod.FederationClient(config, runtime.signing_key)
        runtime.shutdown_hooks.append(fed.client.close)
    keyring_mod = _optional("federation.keyring")
    if keyring_mod is not None:
        fed.keyring = keyring_mod.Keyring(runtime.db, config, fed.client,
                                          config.server_name, runtime.signing_key)
    auth_mod = _optional("federation.request_auth")
    if auth_mod is not None:
        fed.verifier = auth_mod.RequestVerifier(config, fed.keyring)
    sender_mod = _optional("federation.sender")
    if sender_mod is not None:
        fed.sender = sender_mod.FederationSender(config, runtime.db, fed.client,
                                                 parts.get("tracer"))
        parts.setdefault("supervisors", {})["remote"] = fed.sender.supervisor
        runtime.shutdown_hooks.append(fed.sender.stop)
        if fed.client is not None:
            fed.client.backing_off = fed.sender.backing_off
        if fed.verifier is not None:
            fed.verifier.on_origin_seen = fed.sender.wake
    for name in ("federation.key_server", "federation.inbound", "federation.queries",
                 "federation.edus_out", "federation.media", "federation.hierarchy",
                 "federation.room_queries", "federation.membership", "federation.pdus",
                 "federation.pdu_out"):
        mod = _optional(name)
        if mod is not None:
            mod.install(app, fed, parts)
    # before the store closes (hooks run in reverse): pending device-list fan-out and
    # resyncs of remote device lists get a moment to finish
    out = fed.extras.get("device_lists_out")
    if out is not None:
        runtime.shutdown_hooks.append(lambda: out.flush(1))
    if fed.edus is not None:
        runtime.shutdown_hooks.append(lambda: fed.edus.wait_for_resyncs(1))
    room_edus = fed.extras.get("room_edus_out")
    if room_edus is not None:
        runtime.shutdown_hooks.append(lambda: room_edus.flush(1))
