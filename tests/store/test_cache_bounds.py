"""Memory follows configured bounds: the ``caches:`` keys, and the stores' LRU caches."""
import os

import pytest
import yaml

from atrium.config import CacheConfig, ConfigError, parse_config
from store.events import EventStore
from store.state import StateGroupStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cache_defaults_and_overrides(tmp_path):
    c = parse_config({"server_name": "x"}, str(tmp_path / "h.yaml"))
    assert c.caches == CacheConfig()
    c = parse_config({"server_name": "x", "caches": {"events": 10, "access_tokens": 0}},
                     str(tmp_path / "h.yaml"))
    assert c.caches.events == 10 and c.caches.access_tokens == 0
    assert c.caches.state_groups == CacheConfig().state_groups


@pytest.mark.parametrize("caches, key", [
    ("big", "caches"), ({"events": -1}, "caches.events"), ({"push_rooms": 1.5},
                                                            "caches.push_rooms")])
def test_bad_cache_values_name_the_key(tmp_path, caches, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"server_name": "x", "caches": caches}, str(tmp_path / "h.yaml"))


def test_example_config_documents_every_cache():
    with open(os.path.join(ROOT, "config.example.yaml")) as f:
        raw = yaml.safe_load(f)
    assert set(raw["caches"]) == set(CacheConfig.__dataclass_fields__)
    c = parse_config(raw, os.path.join(ROOT, "config.example.yaml"))
    assert c.caches == CacheConfig()


def _insert_events(db, n):
    def _t(txn):
        txn.execute("INSERT INTO rooms (room_id, room_version, creator, created_ts)"
                    " VALUES ('!r:x', '10', '@a:x', 1)")
        for i in range(n):
            txn.execute("INSERT INTO events (stream_ordering, event_id, room_id, type, sender,"
                        " depth, origin_server_ts, received_ts, json, outlier, soft_failed)"
                        " VALUES (?, ?, '!r:x', 'm.room.message', '@a:x', ?, 1, 1, ?, 0, 0)",
                        (i + 1, f"$e{i}", i + 1, '{"event_id":"$e%d","type":"t"}' % i))

    db.run("seed", _t, write=True)


def test_event_cache_is_a_bounded_lru(db):
    _insert_events(db, 5)
    events = EventStore(db, StateGroupStore(db), cache_size=3)
    events.get_events(["$e0", "$e1", "$e2"])
    events.get_event("$e0")                  # most recently used now
    events.get_event("$e3")                  # evicts the least recently used: $e1
    assert list(events._cache) == ["$e2", "$e0", "$e3"]
    assert events.get_event("$e1").event_id == "$e1"
    assert len(events._cache) == 3
