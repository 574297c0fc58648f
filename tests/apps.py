"""The one way tests build a real Atrium app: ``create_app(parse_config(...))`` over a fresh
database on the engine under test (``ATRIUM_TEST_DB``), with cheap bcrypt and rate limits
out of the way unless a test sets them.  Every app built is shut down (actors first) and its
PostgreSQL schema dropped afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from atrium.config import parse_config
from store.testing import database_config, drop_schema
from web.app import create_app, runtime_of

GENEROUS = {"per_second": 1000, "burst_count": 1000}


def app_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Generator for a fixture: yields ``make(**config_overrides) -> app``."""
    made: list[tuple[Any, str | None]] = []

    def make(**overrides: Any) -> Any:
        dbcfg, schema = database_config(str(tmp_path))
        raw: dict[str, Any] = {
            "server_name": "test.local", "bcrypt_rounds": 4, "database": dbcfg,
            "signing_key_path": str(tmp_path / "signing.key"),
            "media_store_path": str(tmp_path / "media"),
            "rc_message": GENEROUS, "rc_joins": {"local": GENEROUS},
            "rc_invites": {"per_room": GENEROUS, "per_user": GENEROUS},
        }
        raw.update(overrides)
        app = create_app(parse_config(raw, str(tmp_path / "homeserver.yaml")))
        made.append((app, schema))
        return app

    yield make
    for app, schema in made:
        runtime_of(app).shutdown()
        drop_schema(schema)
