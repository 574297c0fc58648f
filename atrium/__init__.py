"""Atrium: an actor-model Matrix homeserver.

This package holds what the rest shares at start-up: configuration, logging and the wiring
that builds the store, supervisors and the web app once (see ``atrium.wiring``).
"""

__version__ = "0.1.0"
