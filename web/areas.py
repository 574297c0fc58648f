"""The list of API areas: each module's ``register(app, runtime)`` adds its routes.
Order matters only for the wiring of shared parts (accounts first)."""
from __future__ import annotations

from typing import Any

from flask import Flask


def register_all(app: Flask, runtime: Any) -> None:
    from store.accounts import AccountStore
    from web import discovery

    runtime.parts["accounts"] = AccountStore(runtime.db)
    discovery.register(app, runtime)
