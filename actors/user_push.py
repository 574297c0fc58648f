"""Push-rule writes as UserActor messages (the UserActor is the single writer of a user's
push rules, issue 5).  The messages are frozen dataclasses; :func:`handle_push_message` is
what ``UserActor.handle`` calls for them, inside the actor, so a read-modify-write of the
user's rules is never interleaved with another.

After each write the effective ruleset is also stored as the global account data
``m.push_rules`` (modules/push.md: clients learn rule changes from /sync's account data),
through the same account-data store and waker the actor uses for its other account data.

``UserActor.handle`` passes the messages of ``PUSH_RULE_MESSAGES`` here (its class attribute
``handles_push_rules = True`` says so).  A user holds at most ``MAX_USER_RULES`` rules of
their own (all kinds together; 413 past it), so the one row per user stays bounded.
"""
from __future__ import annotations

from typing import Any

from atrium.errors import MatrixError
from protocol.push_rules import (
    CONDITION_KINDS, KINDS, PushRuleError, check_user_rule_id, upsert_user_rule,
)
from store.push_rules import PushRuleStore, UserPushRules
from supervision import message


@message
class PutPushRule:
    """PUT /pushrules/global/{kind}/{ruleId}: ``rule`` holds actions and conditions/pattern."""

    kind: str
    rule_id: str
    rule: Any
    before: str | None = None
    after: str | None = None


@message
class DeletePushRule:
    kind: str
    rule_id: str


@message
class SetPushRuleEnabled:
    kind: str
    rule_id: str
    enabled: bool


@message
class SetPushRuleActions:
    kind: str
    rule_id: str
    actions: Any                        # a list of actions; treated as read-only


PUSH_RULE_MESSAGES = (PutPushRule, DeletePushRule, SetPushRuleEnabled, SetPushRuleActions)
MAX_USER_RULES = 1000


def handle_push_message(actor: Any, msg: Any) -> Any:
    """Apply one push-rule message for ``actor.user_id``; returns the new ruleset.

    ``actor`` is a UserActor (``user_id`` and ``deps`` with ``db``, ``account_data`` and
    ``waker``).  Raises :class:`MatrixError` for requests the spec refuses."""
    user_id = actor.user_id
    store = PushRuleStore(actor.deps.db)
    stored = store.get(user_id)
    apply_change(user_id, stored, msg)
    store.put(user_id, stored)
    merged = stored.merged(user_id)
    ad = actor.deps.account_data
    sid = ad.put(user_id, None, "m.push_rules", merged)
    actor.deps.waker.wake_users([user_id], ad.stream, sid)
    return merged


def apply_change(user_id: str, stored: UserPushRules, msg: Any) -> None:
    """Change ``stored`` in place as ``msg`` asks (pushrules.yaml semantics)."""
    if msg.kind not in KINDS:
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown push rule kind {msg.kind!r}")
    mine = [dict(r) for r in stored.rules.get(msg.kind, [])]
    index = next((i for i, r in enumerate(mine) if r.get("rule_id") == msg.rule_id), None)
    if isinstance(msg, PutPushRule):
        try:
            check_user_rule_id(msg.rule_id)
        except PushRuleError as e:
            raise MatrixError(400, "M_INVALID_PARAM", str(e)) from None
        rule = {"rule_id": msg.rule_id, "actions": list(msg.rule.get("actions") or [])}
        if msg.kind in CONDITION_KINDS:
            rule["conditions"] = list(msg.rule.get("conditions") or [])
        elif msg.kind == "content":
            rule["pattern"] = msg.rule["pattern"]
        if index is not None and "enabled" in mine[index]:
            rule["enabled"] = mine[index]["enabled"]  # an update keeps the rule's switch
        try:
            mine = upsert_user_rule(mine, rule, before=msg.before, after=msg.after)
        except PushRuleError as e:  # the spec's example: 400 M_UNKNOWN
            raise MatrixError(400, "M_UNKNOWN", str(e)) from None
        if index is None and sum(len(v) for k, v in stored.rules.items()
                                 if k != msg.kind) + len(mine) > MAX_USER_RULES:
            raise MatrixError(413, "M_TOO_LARGE",
                              f"A user may hold at most {MAX_USER_RULES} push rules")
        stored.rules[msg.kind] = mine
        return
    if isinstance(msg, DeletePushRule):
        if index is None:
            if _exists(user_id, stored, msg.kind, msg.rule_id):
                raise MatrixError(400, "M_INVALID_PARAM", "Cannot delete a server-default rule")
            raise MatrixError(404, "M_NOT_FOUND", "The push rule was not found.")
        del mine[index]
        stored.rules[msg.kind] = mine
        stored.overrides.pop((msg.kind, msg.rule_id), None)
        return
    if not _exists(user_id, stored, msg.kind, msg.rule_id):
        raise MatrixError(404, "M_NOT_FOUND", "The push rule was not found.")
    if isinstance(msg, SetPushRuleEnabled):
        change: dict[str, Any] = {"enabled": bool(msg.enabled)}
    elif isinstance(msg, SetPushRuleActions):
        change = {"actions": list(msg.actions)}
    else:
        raise TypeError(f"not a push rule message: {type(msg).__name__}")
    if index is not None:  # a user rule: change the rule itself
        mine[index].update(change)
        stored.rules[msg.kind] = mine
    else:                  # a server-default rule: remember the user's override
        stored.overrides.setdefault((msg.kind, msg.rule_id), {}).update(change)


def _exists(user_id: str, stored: UserPushRules, kind: str, rule_id: str) -> bool:
    return any(r["rule_id"] == rule_id for r in stored.merged(user_id)["global"][kind])
