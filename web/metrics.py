"""Health check and Prometheus metrics (issue 17 part 3; every name in docs/metrics.md).

- ``GET|HEAD /health`` — plain ``OK`` (200, no auth), as Synapse answers it.
- ``GET /_synapse/metrics`` — the text exposition format when ``enable_metrics: true``;
  otherwise 404 ``M_UNRECOGNIZED`` as if it did not exist.  Which listeners serve it
  (a ``type: metrics`` one, or those naming ``metrics``) is atrium/listener_resources.py's.

Each app has its own ``CollectorRegistry`` (several apps in one test process do not
collide).  What moves per event is counted where it happens, through small hooks:
requests (Flask before/after_request, and web/sync_endpoint.py for the /sync it answers
before Flask), database transactions and SQLite group commits (store/database.py's
``observe`` hooks), room persists and the /sync wake latency (a RoomService
``on_persisted`` hook).  Everything else is read at scrape time from what already keeps
it: the supervisors' stats and children, the notifier, the connection pools, the caches,
the federation sender.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Iterator

from flask import Flask, Response, g, request

from atrium.errors import MatrixError

log = logging.getLogger(__name__)

METRICS_PATH = "/_synapse/metrics"
#: what generate_latest writes (names and labels need no escaping): the format every
#: Prometheus reads, as Synapse announces it
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: methods counted under their own name; anything else is "other" (bounded labels)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
WAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: users stamped with a pending wake-up, at most (a user who never polls again is dropped)
MAX_WOKEN = 100_000
SYNC_ENDPOINT = "sync.get_sync"  # the Flask-style endpoint name of web/sync_endpoint.py


def register(app: Flask, runtime: Any) -> None:
    @app.route("/health", methods=["GET", "HEAD"])
    def health() -> Response:
        """GET /health"""
        return Response("OK", status=200, mimetype="text/plain")

    metrics = Metrics(runtime) if runtime.config.enable_metrics else None
    if metrics is not None:
        runtime.parts["metrics"] = metrics
        metrics.install(app)

    @app.get(METRICS_PATH)
    def prometheus() -> Response:
        """GET /_synapse/metrics"""
        if metrics is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        from prometheus_client import generate_latest

        return Response(generate_latest(metrics.registry), status=200,
                        headers={"Content-Type": CONTENT_TYPE})


def _method(m: str | None) -> str:
    return m if m in METHODS else "other"


class Metrics:
    """One app's registry: the event-driven metrics and the scrape-time collectors."""

    def __init__(self, runtime: Any) -> None:
        from prometheus_client import (
            CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector,
            ProcessCollector,
        )

        self.runtime = runtime
        reg = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        self.requests = Counter("atrium_http_requests", "HTTP requests answered",
                                ["endpoint", "method", "code"], registry=reg)
        self.durations = Histogram("atrium_http_request_duration_seconds",
                                   "Time from a request's start to its answer",
                                   ["endpoint", "method"], buckets=HTTP_BUCKETS, registry=reg)
        self.db_seconds = Histogram("atrium_db_transaction_duration_seconds",
                                    "Database interactions by name (queueing included)",
                                    ["name", "kind"], buckets=DB_BUCKETS, registry=reg)
        self.group_sizes = Histogram("atrium_db_group_commit_size",
                                     "Write interactions per SQLite transaction",
                                     buckets=SIZE_BUCKETS, registry=reg)
        self.persist_events = Histogram("atrium_room_persist_events",
                                        "Events per room persist transaction",
                                        buckets=SIZE_BUCKETS, registry=reg)
        self.wake_seconds = Histogram("atrium_sync_wake_latency_seconds",
                                      "Room event commit to the woken /sync's answer",
                                      buckets=WAKE_BUCKETS, registry=reg)
        #: user → perf_counter() of the commit that woke their waiting /sync
        self._woken: dict[str, float] = {}
        reg.register(_StateCollector(runtime))

    # -- hooks -----------------------------------------------------------------------------
    def install(self, app: Flask) -> None:
        runtime = self.runtime
        db = runtime.db
        db.observe = self.observe_transaction
        db.observe_group = self.group_sizes.observe
        runtime.parts["observe_sync"] = self.observe_sync
        rooms = runtime.parts.get("rooms")
        if rooms is not None:
            # first: stamps the commit time before a later hook can yield to the woken /syncs
            rooms.on_persisted.insert(0, self.on_persisted)

        @app.before_request
        def _metrics_start() -> None:
            g.metrics_started = time.perf_counter()

        @app.after_request
        def _metrics_finish(resp: Response) -> Response:
            started = g.get("metrics_started")
            endpoint = request.endpoint or "unknown"
            method = _method(request.method)
            self.requests.labels(endpoint, method, str(resp.status_code)).inc()
            if started is not None:
                self.durations.labels(endpoint, method).observe(time.perf_counter() - started)
            return resp

    def observe_transaction(self, name: str, seconds: float, write: bool) -> None:
        self.db_seconds.labels(name, "write" if write else "read").observe(seconds)

    def observe_sync(self, method: str | None, status: int, started: float,
                     user_id: str | None) -> None:
        """web/sync_endpoint.py: one /sync answered (outside Flask)."""
        now = time.perf_counter()
        m = _method(method)
        self.requests.labels(SYNC_ENDPOINT, m, str(status)).inc()
        self.durations.labels(SYNC_ENDPOINT, m).observe(now - started)
        if user_id is not None:
            woken_at = self._woken.pop(user_id, None)
            if woken_at is not None and woken_at >= started:
                self.wake_seconds.observe(now - woken_at)

    def on_persisted(self, room_id: str, events: Any) -> None:
        """RoomService hook: batch size, and the commit time for each local member whose
        /sync is waiting now (the ones this commit wakes)."""
        self.persist_events.observe(len(events))
        sync = self.runtime.parts.get("sync")
        notifier = getattr(sync, "notifier", None)
        if notifier is None or not notifier.has_waiters(room_id):
            return
        now = time.perf_counter()
        waiting = notifier._waiters  # read only: who is parked right now
        members = notifier.room_members(room_id)
        small, big = (members, waiting) if len(members) <= len(waiting) else (waiting, members)
        woken = self._woken
        if len(woken) > MAX_WOKEN:
            woken.clear()
        for user in small:
            if user in big:
                woken.setdefault(user, now)  # the first commit since the wait began


class _StateCollector:
    """Gauges and counters read at scrape time from the parts that keep them."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def describe(self) -> list[Any]:
        return []  # unchecked: families appear as the parts they read exist

    def collect(self) -> Iterator[Any]:
        for part in (self._actors, self._sync, self._db, self._caches, self._federation):
            try:
                yield from part()
            except Exception:  # noqa: BLE001 - a scrape never fails for one part
                log.exception("metrics: %s failed", part.__name__)

    # -- supervisors ---------------------------------------------------------------------
    def _actors(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sups: dict[str, Any] = self.runtime.parts.get("supervisors", {})
        actors = GaugeMetricFamily("atrium_actors", "Actors in a supervisor's directory",
                                   labels=["supervisor", "state"])
        pending = GaugeMetricFamily("atrium_actor_mailbox_pending",
                                    "Messages pending (queued, held or running)",
                                    labels=["supervisor"])
        deepest = GaugeMetricFamily("atrium_actor_mailbox_max_depth",
                                    "The deepest single mailbox", labels=["supervisor"])
        limit = GaugeMetricFamily("atrium_actor_mailbox_limit", "max_mailbox of a supervisor",
                                  labels=["supervisor"])
        messages = CounterMetricFamily("atrium_actor_messages", "Messages settled by outcome",
                                       labels=["supervisor", "outcome"])
        rejected = CounterMetricFamily("atrium_actor_rejected",
                                       "Messages refused at once by reason",
                                       labels=["supervisor", "reason"])
        simple = {name: CounterMetricFamily(f"atrium_actor_{name}", help_,
                                            labels=["supervisor"])
                  for name, help_ in (("spawned", "Actors started"),
                                      ("passivated", "Idle actors stopped"),
                                      ("crashes", "Actor crashes"),
                                      ("restarts", "Actors restarted after a crash"),
                                      ("parks", "Keys parked after repeated crashes"),
                                      ("ask_timeouts", "Asks that timed out"),
                                      ("factory_errors", "Actor factories that failed"))}
        for name, sup in sorted(sups.items()):
            stats = sup.stats()
            for state, n in sorted(stats["by_state"].items()):
                actors.add_metric([name, state], n)
            pending.add_metric([name], stats["pending"])
            deepest.add_metric([name], max((c["pending"] for c in sup.children()), default=0))
            limit.add_metric([name], sup.max_mailbox)
            for outcome, key in (("ok", "handled"), ("domain_error", "domain_errors"),
                                 ("crash", "failed")):
                messages.add_metric([name, outcome], stats[key])
            rejected.add_metric([name, "mailbox_full"], stats["rejected_full"])
            rejected.add_metric([name, "parked"], stats["rejected_parked"])
            for key, fam in simple.items():
                fam.add_metric([name], stats["timeouts" if key == "ask_timeouts" else key])
        yield from (actors, pending, deepest, limit, messages, rejected, *simple.values())

    # -- /sync -----------------------------------------------------------------------------
    def _sync(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        notifier = getattr(self.runtime.parts.get("sync"), "notifier", None)
        if notifier is None:
            return
        yield GaugeMetricFamily("atrium_sync_waiters", "/sync long-polls waiting now",
                                value=notifier.waiting())
        yield CounterMetricFamily("atrium_sync_wakeups", "Waiting /syncs woken",
                                  value=notifier.wakeups)

    # -- database ----------------------------------------------------------------------------
    def _db(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        db = self.runtime.db
        conns = GaugeMetricFamily("atrium_db_connections", "Connections by state",
                                  labels=["engine", "state"])
        if db.engine == "sqlite":
            idle = db._readers.qsize()
            busy = db._write_lock.locked()
            conns.add_metric(["sqlite", "idle"], idle + (0 if busy else 1))
            conns.add_metric(["sqlite", "in_use"], max(0, db.readers - idle) + int(busy))
            yield conns
            yield GaugeMetricFamily("atrium_db_connections_max", "Pool bound",
                                    value=db.readers + 1)
            yield GaugeMetricFamily("atrium_db_writes_queued",
                                    "Write interactions waiting for the SQLite writer",
                                    value=len(db._pending))
        else:
            idle = db._idle.qsize()
            conns.add_metric(["postgres", "idle"], idle)
            conns.add_metric(["postgres", "in_use"], max(0, db._count - idle))
            yield conns
            yield GaugeMetricFamily("atrium_db_connections_max", "Pool bound",
                                    value=db.max_size)

    # -- caches ------------------------------------------------------------------------------
    def _caches(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from store.push import unread_cache

        parts = self.runtime.parts
        size = GaugeMetricFamily("atrium_cache_size", "Entries held", labels=["cache"])
        bound = GaugeMetricFamily("atrium_cache_max_size", "Entries held at most",
                                  labels=["cache"])
        hits = CounterMetricFamily("atrium_cache_hits", "Lookups answered", labels=["cache"])
        misses = CounterMetricFamily("atrium_cache_misses", "Lookups not answered",
                                     labels=["cache"])
        accounts = parts.get("accounts")
        if accounts is not None:
            size.add_metric(["access_tokens"], len(accounts.tokens))
            bound.add_metric(["access_tokens"], accounts.tokens.size)
        rooms = parts.get("rooms")
        events = getattr(rooms, "events", None)
        if events is not None:
            size.add_metric(["events"], len(events._cache))
            bound.add_metric(["events"], events._cache_size)
            size.add_metric(["recent_timeline_rooms"], len(events.recent))
        notifier = getattr(parts.get("sync"), "notifier", None)
        if notifier is not None:
            size.add_metric(["sync_room_members"], len(notifier._rooms))
            bound.add_metric(["sync_room_members"], notifier._max_rooms)
        unread = unread_cache(self.runtime.db)
        if unread is not None:
            size.add_metric(["unread_counts"], len(unread))
            bound.add_metric(["unread_counts"], unread.size)
            hits.add_metric(["unread_counts"], unread.hits)
            misses.add_metric(["unread_counts"], unread.misses)
        yield from (size, bound, hits, misses)

    # -- federation --------------------------------------------------------------------------
    def _federation(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        sender = getattr(self.runtime.parts.get("federation"), "sender", None)
        if sender is None:
            return
        now = sender.now_ms()
        flights = sender._flights.values()
        yield GaugeMetricFamily("atrium_federation_transactions_in_flight",
                                "Outbound transactions being sent",
                                value=sum(1 for f in flights if f.result is None))
        yield GaugeMetricFamily("atrium_federation_destinations_backing_off",
                                "Destinations waiting out a back-off",
                                value=sum(1 for at in sender._backoff.values() if at > now))
        yield GaugeMetricFamily("atrium_federation_destinations_catching_up",
                                "Destinations replaying from the store",
                                value=len(sender._catching_up))
        yield GaugeMetricFamily("atrium_federation_ephemeral_queued",
                                "Ephemeral EDUs (typing, receipts, presence) queued in memory",
                                value=sum(sender._ephemeral_depth.values()))
        yield GaugeMetricFamily("atrium_federation_outbox_rows",
                                "Durable EDUs not yet acknowledged (store)",
                                value=_outbox_rows(self.runtime.db))


def _outbox_rows(db: Any) -> int:
    return int(db.run("metrics_federation_outbox", lambda t: t.query_value(
        "SELECT COUNT(*) FROM federation_outbox", default=0)) or 0)


__all__ = ["Metrics", "register"]
