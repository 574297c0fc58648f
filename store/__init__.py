"""The store: the truth of Atrium.

``store.database.Database`` is the one place where SQLite and PostgreSQL differ; every area
of the store (accounts, events, media, …) is a small class over it, and the schema is a list
of numbered SQL migrations in ``store/schema/``.
"""
from store.database import Database, Txn, open_database  # noqa: F401
