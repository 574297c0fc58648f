"""The push part of the wiring (modules/push.md): push-rule store, pushers, the push
evaluator hanging off the rooms' ``on_persisted`` hooks, the push sender's supervisor, and
the push API areas (push rules, pushers, /notifications).  Built once by web/areas.py.

Config (``push:`` in homeserver.yaml, all optional): ``allow_http_gateways`` (false: gateway
URLs must be https, as pusher.yaml says; true for loopback tests), ``gateway_timeout`` (s),
``backoff_base`` / ``backoff_max`` (s), ``max_attempts``, ``evaluator_queue`` (events).
HTTPS to gateways verifies certificates, trusting the files of ``federation_custom_ca_list``
besides the usual roots; Synapse's ``use_insecure_ssl_client_just_for_testing_do_not_use``
turns verification off (test set-ups only; logged as a warning at start).

Invites that other servers send for rooms this server does not hold are recorded by
store/remote_invites.py, not persisted by a room: its ``on_recorded`` hook hands them to the
evaluator, so they push like local invites.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from atrium.config import Config
from store import push as push_store
from store.push_rules import PushRuleStore
from store.pushers import PusherStore

from actors.push_evaluator import PushEvaluator
from actors.pusher import PushSender, PusherDeps, make_http_post

log = logging.getLogger(__name__)


@dataclass
class PushService:
    """What the push handlers are given."""

    config: Config
    db: Any
    rules: PushRuleStore
    pushers: PusherStore
    evaluator: PushEvaluator
    sender: PushSender
    users: Any                 # the "users" Supervisor (UserActors), from the sync wiring
    rooms: Any                 # RoomService
    allow_http: bool

    def write_rules(self, user_id: str, msg: Any) -> Any:
        """Run a push-rule message in the user's UserActor (the single writer)."""
        return self.users.ask(user_id, msg)


def _push_config(config: Config) -> dict[str, Any]:
    raw = config.raw.get("push") if isinstance(config.raw, dict) else None
    return raw if isinstance(raw, dict) else {}


def register(app: Any, runtime: Any) -> None:
    from web import notifications, push_rules, pushers

    config, db = runtime.config, runtime.db
    cfg = _push_config(config)
    rooms = runtime.parts["rooms"]
    rules, pusher_store = PushRuleStore(db), PusherStore(db)
    insecure = config.use_insecure_ssl_client_just_for_testing_do_not_use
    if insecure:
        log.warning("use_insecure_ssl_client_just_for_testing_do_not_use is set: push"
                    " gateways' certificates are NOT verified")
    post = make_http_post(verify=not insecure, ca_files=config.federation.custom_ca_list)
    deps = PusherDeps(db=db, pushers=pusher_store, events=rooms.events, post=post,
                      remote_invites=rooms.remote_invites,
                      timeout=float(cfg.get("gateway_timeout", 10.0)),
                      backoff_base=float(cfg.get("backoff_base", 1.0)),
                      backoff_max=float(cfg.get("backoff_max", 600.0)),
                      max_attempts=int(cfg.get("max_attempts", 12)))
    a = config.actors
    sender = PushSender(deps, runtime.parts["tracer"], idle_timeout=a.idle_timeout,
                        max_restarts=a.max_restarts, restart_window=a.restart_window)
    evaluator = PushEvaluator(db, rooms.events, rules, config.server_name,
                              on_notify=sender.wake,
                              max_pending=int(cfg.get("evaluator_queue", 10_000)),
                              cache_rooms=config.caches.push_rooms,
                              cache_users=config.caches.push_rulesets)
    svc = PushService(config=config, db=db, rules=rules, pushers=pusher_store,
                      evaluator=evaluator, sender=sender,
                      users=runtime.parts["sync"].supervisor, rooms=rooms,
                      allow_http=bool(cfg.get("allow_http_gateways", False)))
    runtime.parts["push"] = svc
    runtime.parts.setdefault("supervisors", {})["pushers"] = sender.supervisor
    rooms.on_persisted.append(evaluator.on_persisted)
    rooms.remote_invites.on_recorded.append(
        lambda user_id, pos: evaluator.on_remote_membership(rooms.remote_invites, user_id, pos))
    counts = push_store.set_barrier(db, evaluator.barrier, evaluator.unwritten,
                                    cache_size=config.caches.unread_counts)
    accounts = runtime.parts["accounts"]
    accounts.on_devices_deleted.append(pusher_store.delete_for_devices)
    accounts.on_user_deactivated.append(push_store.delete_user)
    if counts is not None:  # what moves read positions outside the evaluator
        runtime.parts["sync"].receipts.on_read_moved.append(
            lambda user_id, room_id: counts.drop((user_id, room_id)))

        def _forget_user(txn: Any, user_id: str) -> None:  # now, and once it is committed
            counts.drop_user(user_id)
            txn.call_after_commit(lambda: counts.drop_user(user_id))

        accounts.on_user_deactivated.append(_forget_user)

    def _stop() -> None:
        push_store.set_barrier(db, None)
        evaluator.stop()
        sender.stop()

    runtime.shutdown_hooks.append(_stop)
    for area in (push_rules, pushers, notifications):
        area.register(app, runtime)
    evaluator.start()
    sender.wake_all()
