"""Supervision tests run under gevent: patch before anything imports threading or queue."""

from gevent import monkey

if not monkey.is_module_patched("threading"):
    monkey.patch_all()

import pytest  # noqa: E402

from supervision import Supervisor  # noqa: E402


@pytest.fixture
def supervisors() -> "list[Supervisor]":
    """Collects supervisors a test builds; every one is stopped afterwards (no hung session)."""
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop_all(timeout=2.0)
