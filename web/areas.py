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

    runtime.parts["accounts"] = AccountStore(
        runtime.db, token_cache_size=runtime.config.caches.access_tokens)
    runtime.parts["uia"] = InteractiveAuth(runtime.parts["accounts"], runtime.config)  # accounts
    discovery.register(app, runtime)
    for accounts_area in (register, login, account, devices, profile, synapse_admin):
        accounts_area.register(app, runtime)
    from web import openid  # OpenID tokens (served to other servers by federation/queries.py)
    openid.register(app, runtime)
    from web import email_validation  # e-mail sent by Atrium (after account: its 3PID store)

    email_validation.register(app, runtime)
    from web import captcha, voip  # the CAPTCHA stage and its page, TURN credentials (issue 18)

    captcha.register(app, runtime), voip.register(app, runtime)
    from supervision import Tracer  # one tracer shared by every supervisor (media, rooms)

    runtime.parts["tracer"] = Tracer(capacity=runtime.config.trace_capacity,
                                     jsonl_path=runtime.config.trace_jsonl_path)
    media.register(app, runtime)  # media
    from web import url_preview  # URL previews: fetched through the media area's store

    url_preview.register(app, runtime)
    _register_rooms(app, runtime)
    _register_sync(app, runtime)
    from web import server_notices  # server notices: rooms and user actors (tags)

    server_notices.register(app, runtime)
    _register_push(app, runtime)  # push
    _register_e2ee(app, runtime)  # e2ee
    from web import synapse_admin_devices, synapse_admin_users  # issue 17: admin API, users

    # after rooms (deactivation leaves them), sync, push and e2ee (device deletion hooks)
    synapse_admin_users.register(app, runtime), synapse_admin_devices.register(app, runtime)
    from web import synapse_admin_extras  # issue 17: what else synapse-admin calls

    synapse_admin_extras.register(app, runtime)
    from web import reports, synapse_admin_media, synapse_admin_reports, synapse_admin_server

    for admin_area in (reports, synapse_admin_reports, synapse_admin_media,  # issue 17
                       synapse_admin_server):  # after search and the user directory
        admin_area.register(app, runtime)
    # last of the room hooks: the /syncs it wakes run after what the others scheduled
    runtime.parts["rooms"].on_persisted.append(runtime.parts["sync"].wake_persisted)
    from web import federation_wiring  # federation: after every area it serves

    federation_wiring.register(app, runtime)
    from web import metrics  # /health and /_synapse/metrics: last, it reads every part

    metrics.register(app, runtime)


def _register_rooms(app: Flask, runtime: Any) -> None:
    """The room supervisor and the room API areas; actors stop before the store closes."""
    from web import admin, room_events, rooms
    from web.room_service import RoomService

    config = runtime.config
    tracer = runtime.parts["tracer"]  # created in register_all, before media
    svc = RoomService(config, runtime.db, runtime.signing_key, tracer)
    runtime.parts["rooms"] = svc
    runtime.parts.setdefault("supervisors", {})["rooms"] = svc.supervisor
    runtime.shutdown_hooks.append(svc.supervisor.stop_all)
    rooms.register(app, runtime)
    room_events.register(app, runtime)
    from web import room_reads  # room reads

    room_reads.register(app, runtime)  # room reads: /messages, /context, /relations, /threads
    admin.register(app, runtime)
    from web import console  # the operator's console: static page over the admin API

    console.register(app, runtime)
    from store.directory import DirectoryStore  # directory
    from web import directory, room_upgrade  # directory

    runtime.parts["directory"] = DirectoryStore(runtime.db)  # directory
    directory.register(app, runtime)  # directory
    room_upgrade.register(app, runtime)  # directory
    from web import guest_access  # guest access: joins' check, evicting guests

    guest_access.register(app, runtime)  # guest access
    from web import space_hierarchy  # spaces: the client's /hierarchy (remote rooms too)

    space_hierarchy.register(app, runtime)
    from web import room_summary  # room previews: /room_summary (remote rooms too)

    room_summary.register(app, runtime)
    from web import timestamp_lookup  # /timestamp_to_event (asks other servers too)

    timestamp_lookup.register(app, runtime)
    from web import search, user_directory  # message search, the user directory (issue 16)

    search.register(app, runtime), user_directory.register(app, runtime)
    from web import synapse_admin_rooms  # the rooms half of Synapse's admin API (issue 17)

    synapse_admin_rooms.register(app, runtime)


def _register_sync(app: Flask, runtime: Any) -> None:
    """The user supervisor, notifier and stream stores, and the sync API areas.  The
    notifier hangs off the rooms' on_persisted hooks; user actors stop before the rooms."""
    from store.to_device import ToDeviceStore
    from web import account_data, filters, presence, receipts, sync, to_device, typing
    from web.sync_service import SyncService

    svc = SyncService(runtime.config, runtime.db, runtime.parts["rooms"],
                      runtime.parts["tracer"])
    runtime.parts["sync"] = svc
    runtime.parts.setdefault("supervisors", {})["users"] = svc.supervisor
    # first: it updates the sync read caches before any other hook can yield
    runtime.parts["rooms"].on_persisted.insert(0, svc.on_persisted)
    accounts = runtime.parts["accounts"]
    accounts.on_devices_deleted.append(ToDeviceStore.delete_for_devices)
    accounts.on_devices_deleted.append(svc.device_lists.devices_deleted_hook)
    runtime.shutdown_hooks.append(svc.shutdown)
    runtime.drain_hooks.append(svc.notifier.close)
    for area in (sync, filters, typing, receipts, account_data, presence, to_device):
        area.register(app, runtime)
    from web import legacy_events  # legacy sync: /events, /initialSync (after sync)
    legacy_events.register(app, runtime)
    svc.sweep_presence()


def _register_e2ee(app: Flask, runtime: Any) -> None:  # e2ee
    """Device keys, cross-signing and key backup; after sync (device-list stream).  A
    deleted device loses its keys and a deactivated user its cross-signing keys and backups
    in the same transaction."""
    from store.e2e_cross_signing import CrossSigningStore
    from store.e2e_keys import E2EKeyStore
    from store.key_backup import KeyBackupStore
    from web import cross_signing, key_backup, keys

    runtime.parts["e2e_keys"] = E2EKeyStore(runtime.db)
    runtime.parts["cross_signing"] = CrossSigningStore(runtime.db)
    runtime.parts["key_backup"] = KeyBackupStore(runtime.db)
    accounts = runtime.parts["accounts"]
    accounts.on_devices_deleted.append(E2EKeyStore.delete_for_devices)
    accounts.on_user_deactivated.append(E2EKeyStore.delete_for_user)
    device_lists = runtime.parts["sync"].device_lists
    accounts.on_user_deactivated.append(
        lambda txn, user_id: txn.call_after_commit(lambda: device_lists.mark_changed([user_id])))
    for area in (keys, cross_signing, key_backup):
        area.register(app, runtime)


def _register_push(app: Flask, runtime: Any) -> None:  # push
    """Push rules, pushers, /notifications, the push evaluator and sender (after sync:
    push-rule writes go through the user actors)."""  # push
    from web import push_wiring  # push

    push_wiring.register(app, runtime)  # push
