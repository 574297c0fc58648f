"""A user's push rules (modules/push.md "Push Rules: API"): the user-defined rules per kind
and the enabled/actions overrides of any rule, kept as one row per user that differs from
the server defaults.  The effective ruleset is ``protocol.push_rules.merge_ruleset`` over it.

Written only by the owner's UserActor (actors/user_push.py), so a read-modify-write of the
row needs no lock.  ``version`` bumps on every write: the push evaluator keeps merged
rulesets in memory and checks them with :meth:`PushRuleStore.versions` (one query per batch
of recipients), which also holds when another process wrote the row (scale-out seam).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from protocol.push_rules import merge_ruleset
from store.database import Database, Txn


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass
class UserPushRules:
    """The stored part of a user's push rules."""

    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    overrides: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 0

    def merged(self, user_id: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The effective ruleset in ``GET /pushrules/`` shape."""
        return merge_ruleset(user_id, self.rules, self.overrides)


class PushRuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, user_id: str) -> UserPushRules:
        row = self.db.run("get_push_rules", lambda t: t.query_one(
            "SELECT rules, overrides, version FROM push_rules WHERE user_id = ?", (user_id,)))
        return _parse(row)

    def ruleset(self, user_id: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return self.get(user_id).merged(user_id)

    def put(self, user_id: str, stored: UserPushRules) -> int:
        """Replace the user's row; returns the new version (the write has committed)."""
        overrides = [[k, r, v] for (k, r), v in stored.overrides.items()]
        new_version = stored.version + 1

        def _t(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO push_rules (user_id, rules, overrides, version) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET rules = excluded.rules,"
                " overrides = excluded.overrides, version = excluded.version",
                (user_id, _dumps(stored.rules), _dumps(overrides), new_version))

        self.db.run("put_push_rules", _t, write=True)
        stored.version = new_version
        return new_version

    def versions(self, user_ids: Iterable[str]) -> dict[str, int]:
        """user_id → version for users with stored rules (absent: defaults, version 0)."""
        ids = list(user_ids)
        if not ids:
            return {}

        def _q(txn: Txn) -> dict[str, int]:
            out: dict[str, int] = {}
            for i in range(0, len(ids), 200):
                chunk = ids[i:i + 200]
                marks = ",".join("?" * len(chunk))
                out.update({u: int(v) for u, v in txn.query(
                    f"SELECT user_id, version FROM push_rules WHERE user_id IN ({marks})",
                    chunk)})
            return out

        return self.db.run("push_rules_versions", _q)

    def get_many(self, user_ids: Iterable[str]) -> dict[str, UserPushRules]:
        """Stored rules of several users (those without a row get defaults)."""
        ids = list(user_ids)

        def _q(txn: Txn) -> dict[str, UserPushRules]:
            out: dict[str, UserPushRules] = {}
            for i in range(0, len(ids), 200):
                chunk = ids[i:i + 200]
                marks = ",".join("?" * len(chunk))
                for u, rules, overrides, version in txn.query(
                        "SELECT user_id, rules, overrides, version FROM push_rules"
                        f" WHERE user_id IN ({marks})", chunk):
                    out[u] = _parse((rules, overrides, version))
            return out

        found = self.db.run("push_rules_many", _q) if ids else {}
        return {u: found.get(u) or UserPushRules() for u in ids}


def _parse(row: tuple | None) -> UserPushRules:
    if row is None:
        return UserPushRules()
    rules = json.loads(row[0])
    overrides = {(k, r): dict(v) for k, r, v in json.loads(row[1])}
    return UserPushRules(rules=rules, overrides=overrides, version=int(row[2]))
