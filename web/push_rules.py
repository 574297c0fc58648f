"""Push rules API (modules/push.md "Push Rules: API", pushrules.yaml).

Paths, as the spec and Synapse serve them (the listing paths also without their trailing
slash: the app does not insist on slashes):

- ``GET /pushrules/`` → ``{"global": ruleset}``; ``GET /pushrules/global/`` → the ruleset;
  ``GET /pushrules/global/{kind}/`` → that kind's rules, most important first;
- ``GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}``;
- ``GET/PUT /pushrules/global/{kind}/{ruleId}/enabled`` and ``.../actions`` (GET also
  returns any other field the rule has, e.g. ``.../pattern``, as Synapse does).

Reads merge the user's stored rules over the server defaults; writes are messages to the
user's UserActor (actors/user_push.py), which owns ordering and existence checks.

Errors: 400 ``M_INVALID_PARAM`` for an unknown scope or kind, a rule id the server reserves
or cannot hold, an invalid pattern, action or condition; 400 ``M_MISSING_PARAM`` for a
missing ``actions`` / ``pattern`` / ``conditions``; 400 ``M_UNRECOGNIZED`` for a path without
a rule id or with an unknown attribute (Synapse's answer); 404 ``M_NOT_FOUND`` for a rule
that does not exist; 400 ``M_UNKNOWN`` for ``before`` / ``after`` naming no user rule of the
kind (the spec's example); 413 ``M_TOO_LARGE`` past Synapse's limits (rule id 300 bytes,
conditions + actions 1024 bytes).
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Flask, jsonify, request

from atrium.errors import MatrixError
from protocol.push_rules import CONDITION_KINDS, HISTORICAL_ACTIONS, KINDS
from web.auth import require_auth
from web.http import json_body

from actors.user_push import (
    DeletePushRule, PutPushRule, SetPushRuleActions, SetPushRuleEnabled,
)

P = "/_matrix/client/v3/pushrules"
KNOWN_ACTIONS = frozenset({"notify"}) | HISTORICAL_ACTIONS
ATTRIBUTES = ("enabled", "actions")     # what PUT .../{attr} may change
MAX_RULE_ID_BYTES = 300                 # Synapse's push rule limits (config limits.*)
MAX_RULE_BYTES = 1024                   # conditions + actions, as JSON

#: push_condition.yaml: the fields each known condition kind requires (unknown kinds are
#: kept: "Unrecognised conditions MUST NOT match any events")
CONDITION_FIELDS: dict[str, tuple[str, ...]] = {
    "event_match": ("key", "pattern"),
    "event_property_is": ("key", "value"),
    "event_property_contains": ("key", "value"),
    "contains_display_name": (),
    "room_member_count": ("is",),
    "sender_notification_permission": ("key",),
}
_MEMBER_COUNT = re.compile(r"(==|<=|>=|<|>)?[0-9]+")
_MAX_SAFE_INT = 2**53 - 1


def invalid(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def check_scope_kind(scope: str, kind: str | None = None) -> None:
    if scope != "global":
        raise invalid(f"Unknown push rule scope {scope!r}: the only scope is 'global'")
    if kind is not None and kind not in KINDS:
        raise invalid(f"Unknown push rule kind {kind!r}")


def parse_actions(value: Any) -> list[Any]:
    """A list of actions (push.md "Actions"): known strings or ``set_tweak`` objects."""
    if not isinstance(value, list):
        raise MatrixError(400, "M_BAD_JSON", "actions must be an array")
    for a in value:
        if isinstance(a, str):
            if a not in KNOWN_ACTIONS:
                raise invalid(f"Unrecognised action {a!r}")
        elif not (isinstance(a, dict) and isinstance(a.get("set_tweak"), str)):
            raise invalid(f"Unrecognised action {a!r}")
    return value


def _simple_value(v: Any) -> bool:
    """push_condition.yaml ``value``: a string, an integer, a boolean or null."""
    if v is None or isinstance(v, (str, bool)):
        return True
    return isinstance(v, int) and -_MAX_SAFE_INT <= v <= _MAX_SAFE_INT


def parse_conditions(value: Any) -> list[dict[str, Any]]:
    """The ``conditions`` of an override/underride rule: an array of condition objects
    with a string ``kind``, and for the kinds the spec defines, their required fields."""
    if not isinstance(value, list):
        raise invalid("'conditions' must be an array of conditions")
    for c in value:
        if not isinstance(c, dict) or not isinstance(c.get("kind"), str):
            raise invalid("every condition must be an object with a string 'kind'")
        for f in CONDITION_FIELDS.get(c["kind"], ()):
            if f not in c:
                raise invalid(f"a {c['kind']} condition needs '{f}'")
        for f in ("key", "pattern", "is"):
            if f in c and not isinstance(c[f], str):
                raise invalid(f"the '{f}' of a condition must be a string")
        if c["kind"] == "room_member_count" and not _MEMBER_COUNT.fullmatch(c["is"]):
            raise invalid("'is' must be a decimal integer, optionally prefixed by"
                          " ==, <, >, >= or <=")
        if c["kind"] in ("event_property_is", "event_property_contains") \
                and not _simple_value(c["value"]):
            raise invalid("'value' must be a string, an integer, a boolean or null")
    return value


def check_rule_id(rule_id: str) -> None:
    """pushrules.yaml PUT ``ruleId``: not starting with "." (the server's namespace), no
    "/" or "\\"."""
    if rule_id.startswith("."):
        raise invalid("Rule ids starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise invalid("Rule ids may not contain slashes or backslashes")
    if len(rule_id.encode("utf-8")) > MAX_RULE_ID_BYTES:
        raise MatrixError(413, "M_TOO_LARGE",
                          f"Push rule ids are limited to {MAX_RULE_ID_BYTES} bytes")


def _size(*parts: Any) -> int:
    return sum(len(json.dumps(p, separators=(",", ":"), ensure_ascii=False).encode())
               for p in parts)


def parse_rule(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The rule part of a PUT body for ``kind`` (pushrules.yaml requestBody): ``actions``
    always, ``conditions`` for override/underride, ``pattern`` for content rules (room and
    sender rules take their condition from the rule id)."""
    if "actions" not in body:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing 'actions'")
    rule: dict[str, Any] = {"actions": parse_actions(body["actions"])}
    if kind in CONDITION_KINDS:
        if "conditions" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", f"{kind} rules need 'conditions'")
        rule["conditions"] = parse_conditions(body["conditions"])
    elif kind == "content":
        if "pattern" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", "content rules need a 'pattern'")
        if not isinstance(body["pattern"], str) or not body["pattern"]:
            raise invalid("'pattern' must be a non-empty string")
        rule["pattern"] = body["pattern"]
    if _size(rule.get("conditions", rule.get("pattern", [])), rule["actions"]) \
            > MAX_RULE_BYTES:
        raise MatrixError(413, "M_TOO_LARGE",
                          f"Push rules are limited to {MAX_RULE_BYTES} bytes of conditions"
                          " and actions")
    return rule


def find_rule(ruleset: dict[str, Any], kind: str, rule_id: str) -> dict[str, Any]:
    for rule in ruleset["global"][kind]:
        if rule["rule_id"] == rule_id:
            return rule
    raise MatrixError(404, "M_NOT_FOUND", "The push rule was not found.")


def no_rule_id() -> MatrixError:
    return MatrixError(400, "M_UNRECOGNIZED",
                       "A push rule is addressed as /pushrules/global/{kind}/{ruleId}")


def unknown_attribute(attr: str) -> MatrixError:
    return MatrixError(400, "M_UNRECOGNIZED", f"Unknown push rule attribute {attr!r}")


def register(app: Flask, runtime: Any) -> None:
    push = runtime.parts["push"]
    bp = Blueprint("push_rules", __name__)

    def ruleset(scope: str | None = None, kind: str | None = None) -> dict[str, Any]:
        req = require_auth()
        if scope is not None:
            check_scope_kind(scope, kind)
        return push.rules.ruleset(req.user_id)

    @bp.get(f"{P}/")
    def get_all() -> Any:
        """GET /_matrix/client/v3/pushrules/"""
        return jsonify(ruleset())

    @bp.get(f"{P}/<scope>/")
    def get_scope(scope: str) -> Any:
        """GET /_matrix/client/v3/pushrules/global/"""
        rules = ruleset(scope)
        return jsonify(rules["global"])

    @bp.get(f"{P}/<scope>/<kind>/")
    def get_kind(scope: str, kind: str) -> Any:
        """GET /_matrix/client/v3/pushrules/global/{kind}/"""
        rules = ruleset(scope, kind)
        return jsonify(rules["global"][kind])

    @bp.route(f"{P}/", methods=["PUT", "DELETE"])
    @bp.route(f"{P}/<scope>/", methods=["PUT", "DELETE"])
    @bp.route(f"{P}/<scope>/<kind>/", methods=["PUT", "DELETE"])
    def write_without_rule(scope: str = "global", kind: str | None = None) -> Any:
        """PUT/DELETE on a path without a rule id: 400, as Synapse answers"""
        require_auth()
        check_scope_kind(scope, kind)
        raise no_rule_id()

    @bp.get(f"{P}/<scope>/<kind>/<rule_id>")
    def get_rule(scope: str, kind: str, rule_id: str) -> Any:
        """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
        rules = ruleset(scope, kind)
        return jsonify(find_rule(rules, kind, rule_id))

    @bp.get(f"{P}/<scope>/<kind>/<rule_id>/<attr>")
    def get_attribute(scope: str, kind: str, rule_id: str, attr: str) -> Any:
        """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/{enabled|actions}"""
        rules = ruleset(scope, kind)
        rule = find_rule(rules, kind, rule_id)
        if attr not in rule:
            raise unknown_attribute(attr)
        return jsonify({attr: rule[attr]})

    @bp.put(f"{P}/<scope>/<kind>/<rule_id>")
    def put_rule(scope: str, kind: str, rule_id: str) -> Any:
        """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
        req = require_auth()
        check_scope_kind(scope, kind)
        check_rule_id(rule_id)
        rule = parse_rule(kind, json_body())
        before = request.args.get("before") or None
        after = request.args.get("after") or None
        push.write_rules(req.user_id, PutPushRule(kind, rule_id, rule, before, after))
        return jsonify({})

    @bp.put(f"{P}/<scope>/<kind>/<rule_id>/<attr>")
    def put_attribute(scope: str, kind: str, rule_id: str, attr: str) -> Any:
        """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/{enabled|actions}"""
        req = require_auth()
        check_scope_kind(scope, kind)
        if attr not in ATTRIBUTES:
            raise unknown_attribute(attr)
        body = json_body()
        if attr == "enabled":
            if "enabled" not in body:
                raise MatrixError(400, "M_MISSING_PARAM", "Missing 'enabled'")
            if not isinstance(body["enabled"], bool):
                raise MatrixError(400, "M_BAD_JSON", "'enabled' must be a boolean")
            msg: Any = SetPushRuleEnabled(kind, rule_id, body["enabled"])
        else:
            if "actions" not in body:
                raise MatrixError(400, "M_MISSING_PARAM", "Missing 'actions'")
            actions = parse_actions(body["actions"])
            if _size(actions) > MAX_RULE_BYTES:
                raise MatrixError(413, "M_TOO_LARGE",
                                  f"Push rule actions are limited to {MAX_RULE_BYTES} bytes")
            msg = SetPushRuleActions(kind, rule_id, tuple(actions))
        push.write_rules(req.user_id, msg)
        return jsonify({})

    @bp.delete(f"{P}/<scope>/<kind>/<rule_id>")
    def delete_rule(scope: str, kind: str, rule_id: str) -> Any:
        """DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
        req = require_auth()
        check_scope_kind(scope, kind)
        push.write_rules(req.user_id, DeletePushRule(kind, rule_id))
        return jsonify({})

    app.register_blueprint(bp)
