"""The list of API areas: each module's ``register(app, runtime)`` adds its routes.
Order matters only for the wiring of shared parts (accounts first)."""
from __future__ import annotations

from typing import Any

from flask import Flask


def register_all(app: Flask, runtime: Any) -> None:
    from store.accounts import AccountStore
    from web import discovery
    from web import media  # media
    from web import account, devices, login, profile, register, synapse_admin  # accounts
    from web.uia import InteractiveAuth  # accounts

    runtime.parts["accounts"] = AccountStore(runtime.db)
    runtime.parts["uia"] = InteractiveAuth(runtime.parts["accounts"], runtime.config)  # accounts
    discovery.register(app, runtime)
    for accounts_area in (register, login, account, devices, profile, synapse_admin):
        accounts_area.register(app, runtime)
    media.register(app, runtime)  # media
    _register_rooms(app, runtime)


def _register_rooms(app: Flask, runtime: Any) -> None:
    """The room supervisor and the room API areas; actors stop before the store closes."""
    from supervision import Tracer
    from web import admin, room_events, rooms
    from web.room_service import RoomService

    config = runtime.config
    tracer = Tracer(capacity=config.trace_capacity, jsonl_path=config.trace_jsonl_path)
    runtime.parts["tracer"] = tracer
    svc = RoomService(config, runtime.db, runtime.signing_key, tracer)
    runtime.parts["rooms"] = svc
    runtime.parts.setdefault("supervisors", {})["rooms"] = svc.supervisor
    runtime.shutdown_hooks.append(svc.supervisor.stop_all)
    rooms.register(app, runtime)
    room_events.register(app, runtime)
    from web import room_reads  # room reads

    room_reads.register(app, runtime)  # room reads: /messages, /context, /relations, /threads
    admin.register(app, runtime)
    from store.directory import DirectoryStore  # directory
    from web import directory, room_upgrade  # directory

    runtime.parts["directory"] = DirectoryStore(runtime.db)  # directory
    directory.register(app, runtime)  # directory
    room_upgrade.register(app, runtime)  # directory
