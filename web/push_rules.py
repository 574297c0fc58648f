"""Push rules API (modules/push.md "Push Rules: API", pushrules.yaml): ``GET /pushrules/``,
``GET /pushrules/global/``, ``GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}`` and
``GET/PUT .../enabled`` and ``.../actions``.  Reads merge the user's stored rules over the
server defaults; writes are messages to the user's UserActor (actors/user_push.py)."""
from __future__ import annotations

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
RULE = f"{P}/<scope>/<kind>/<path:rule_id>"
KNOWN_ACTIONS = frozenset({"notify"}) | HISTORICAL_ACTIONS


def check_scope_kind(scope: str, kind: str | None = None) -> None:
    if scope != "global":
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown push rule scope {scope!r}")
    if kind is not None and kind not in KINDS:
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown push rule kind {kind!r}")


def parse_actions(value: Any) -> list[Any]:
    """A list of actions (push.md "Actions"): known strings or ``set_tweak`` objects."""
    if not isinstance(value, list):
        raise MatrixError(400, "M_BAD_JSON", "actions must be an array")
    for a in value:
        if isinstance(a, str):
            if a not in KNOWN_ACTIONS:
                raise MatrixError(400, "M_INVALID_PARAM", f"Unrecognised action {a!r}")
        elif not (isinstance(a, dict) and isinstance(a.get("set_tweak"), str)):
            raise MatrixError(400, "M_INVALID_PARAM", f"Unrecognised action {a!r}")
    return value


def parse_rule(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The rule part of a PUT body for ``kind`` (pushrules.yaml requestBody)."""
    if "actions" not in body:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing 'actions'")
    rule: dict[str, Any] = {"actions": parse_actions(body["actions"])}
    if kind in CONDITION_KINDS:
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list) or not all(
                isinstance(c, dict) and isinstance(c.get("kind"), str) for c in conditions):
            raise MatrixError(400, "M_BAD_JSON", "conditions must be an array of conditions")
        rule["conditions"] = conditions
    elif kind == "content":
        if not isinstance(body.get("pattern"), str):
            raise MatrixError(400, "M_MISSING_PARAM", "content rules need a string 'pattern'")
        rule["pattern"] = body["pattern"]
    return rule


def find_rule(ruleset: dict[str, Any], kind: str, rule_id: str) -> dict[str, Any]:
    for rule in ruleset["global"][kind]:
        if rule["rule_id"] == rule_id:
            return rule
    raise MatrixError(404, "M_NOT_FOUND", "The push rule was not found.")


def register(app: Flask, runtime: Any) -> None:
    push = runtime.parts["push"]
    bp = Blueprint("push_rules", __name__)

    @bp.get(f"{P}/")
    def get_all() -> Any:
        """GET /_matrix/client/v3/pushrules/"""
        req = require_auth()
        return jsonify(push.rules.ruleset(req.user_id))

    @bp.get(f"{P}/<scope>/")
    def get_scope(scope: str) -> Any:
        """GET /_matrix/client/v3/pushrules/global/"""
        req = require_auth()
        check_scope_kind(scope)
        return jsonify(push.rules.ruleset(req.user_id)["global"])

    @bp.get(RULE)
    def get_rule(scope: str, kind: str, rule_id: str) -> Any:
        """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
        req = require_auth()
        check_scope_kind(scope, kind)
        attribute = None
        if rule_id.endswith("/enabled") or rule_id.endswith("/actions"):
            rule_id, _, attribute = rule_id.rpartition("/")
        rule = find_rule(push.rules.ruleset(req.user_id), kind, rule_id)
        if attribute is not None:
            return jsonify({attribute: rule[attribute]})
        return jsonify(rule)

    @bp.put(RULE)
    def put_rule(scope: str, kind: str, rule_id: str) -> Any:
        """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}[/enabled|/actions]"""
        req = require_auth()
        check_scope_kind(scope, kind)
        body = json_body()
        if rule_id.endswith("/enabled"):
            enabled = body.get("enabled")
            if not isinstance(enabled, bool):
                raise MatrixError(400, "M_BAD_JSON", "'enabled' must be a boolean")
            msg: Any = SetPushRuleEnabled(kind, rule_id[:-len("/enabled")], enabled)
        elif rule_id.endswith("/actions"):
            if "actions" not in body:
                raise MatrixError(400, "M_MISSING_PARAM", "Missing 'actions'")
            msg = SetPushRuleActions(kind, rule_id[:-len("/actions")],
                                     tuple(parse_actions(body["actions"])))
        else:
            msg = PutPushRule(kind, rule_id, parse_rule(kind, body),
                              request.args.get("before"), request.args.get("after"))
        push.write_rules(req.user_id, msg)
        return jsonify({})

    @bp.delete(RULE)
    def delete_rule(scope: str, kind: str, rule_id: str) -> Any:
        """DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
        req = require_auth()
        check_scope_kind(scope, kind)
        push.write_rules(req.user_id, DeletePushRule(kind, rule_id))
        return jsonify({})

    app.register_blueprint(bp)
