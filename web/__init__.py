"""The HTTP front end.  ``gunicorn -k gevent web:app`` serves Atrium.

``app`` is built on first access (gunicorn's ``import_app`` does ``getattr(web, "app")`` in
the worker, after gevent has patched the process), from the config named by ``ATRIUM_CONFIG``
or ``./homeserver.yaml``.  Importing ``web`` elsewhere (tests, tools) builds nothing.
"""
from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("threading"):  # served outside `gunicorn -k gevent`
    monkey.patch_all()

from typing import Any  # noqa: E402

__all__ = ["app", "create_app"]


def create_app(config: Any, **kwargs: Any) -> Any:
    from web.app import create_app as _create

    return _create(config, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "app":
        from web.app import app_from_environment

        value = app_from_environment()
        globals()["app"] = value
        return value
    raise AttributeError(name)
