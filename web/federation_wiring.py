"""Builds the federation parts (``federation.service.Federation``) and their routes.

Runs after every client-API area, because the federation side serves what those areas own
(profiles, device keys, the room directory, to-device inboxes).  ``federation/`` never imports
``web/``: what it needs is handed over here, from ``runtime.parts``.  Client-API handlers that
ask other servers reach ``runtime.parts["federation"]`` at request time."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from federation.service import Federation

log = logging.getLogger(__name__)


def register(app: Flask, runtime: Any) -> None:
    from federation import (client, edus_out, hierarchy, inbound, key_server, keyring, media,
                            membership, pdu_out, pdus, queries, request_auth, room_queries,
                            sender, threepid)
    from web import admin_federation  # the operator's view (empty while federation is off)

    config = runtime.config
    parts = runtime.parts
    fed = Federation(server_name=config.server_name, config=config, db=runtime.db,
                     signing_key=runtime.signing_key, tracer=parts.get("tracer"))
    parts["federation"] = fed
    admin_federation.register(app, runtime)
    if not config.federation.enabled:
        log.info("federation is switched off (federation.enabled: false)")
        return
    fed.client = client.FederationClient(config, runtime.signing_key)
    runtime.shutdown_hooks.append(fed.client.close)
    fed.keyring = keyring.Keyring(runtime.db, config, fed.client, config.server_name,
                                  runtime.signing_key)
    fed.verifier = request_auth.RequestVerifier(config, fed.keyring)
    fed.sender = sender.FederationSender(config, runtime.db, fed.client, parts.get("tracer"))
    parts.setdefault("supervisors", {})["remote"] = fed.sender.supervisor
    runtime.shutdown_hooks.append(fed.sender.stop)
    fed.client.backing_off = fed.sender.backing_off
    fed.verifier.on_origin_seen = fed.sender.wake
    # order: inbound before edus_out (it extends the EDU handlers), room queries before
    # membership and the PDU pipeline (they share its reads), 3PID invites after membership
    # (they relay through its hook), pdu_out last (its hook runs after every other
    # on_persisted hook)
    for mod in (key_server, inbound, queries, edus_out, media, hierarchy, room_queries,
                membership, pdus, threepid, pdu_out):
        mod.install(app, fed, parts)
    # before the store closes (hooks run in reverse): pending device-list fan-out, resyncs
    # of remote device lists and room EDUs get a moment to finish
    out = fed.extras.get("device_lists_out")
    if out is not None:
        runtime.shutdown_hooks.append(lambda: out.flush(1))
    runtime.shutdown_hooks.append(lambda: fed.edus.wait_for_resyncs(1))
    timers = fed.extras.get("presence_timers")
    if timers is not None:
        runtime.shutdown_hooks.append(timers.stop)
    room_edus = fed.extras.get("room_edus_out")
    if room_edus is not None:
        runtime.shutdown_hooks.append(lambda: room_edus.flush(1))
