"""The ``m.room.member`` authorization rule (v1–v5: rule 5, v6–v11: rule 4, v12: rule 5).

Join, invite, leave (incl. kick and unban), ban, knock (v7+), restricted joins (v8+,
``knock_restricted`` v10+), and the creator's first join (v11+: the create event's sender).
Comments cite the v8–v11 numbering ("4.3.2"); :func:`protocol.auth_common.rule` maps it to
the event's room version in every error.
"""
from __future__ import annotations

from protocol.auth_common import (
    CREATE_KEY,
    JAUVUS,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    AuthState,
    Event,
    content_of,
    event_ids,
    fail,
    membership_of,
)
from protocol.auth_third_party import check_third_party_invite
from protocol.ids import is_valid_user_id
from protocol.power_levels import PowerLevel, get_named_level, get_user_level
from protocol.room_versions import RoomVersion

#: Join rule assumed when the room has no m.room.join_rules event (as deployed servers do;
#: the spec does not say).
DEFAULT_JOIN_RULE = "invite"


def check_member_shape(rv: RoomVersion, ev: Event) -> None:
    """4.1: a member event needs a ``state_key`` and ``content.membership``."""
    if not isinstance(ev.get("state_key"), str) or "membership" not in content_of(ev):
        raise fail(rv, ("member", "shape"), "no state_key or no content.membership")


def check_membership(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    """Return (allow) or raise :class:`AuthError` for an ``m.room.member`` event."""
    check_member_shape(rv, ev)
    content = content_of(ev)
    if rv.restricted_join_rule and JAUVUS in content:
        # 4.2.1: "not validly signed by the homeserver of the user denoted by the key" —
        # the signature itself is verified with the other signatures by protocol.pdu_checks
        # (keys are not available here); a value naming no user can never be signed for.
        if not is_valid_user_id(content[JAUVUS]):
            raise fail(rv, ("member", "authorised_via"),
                       f"{JAUVUS} is not a user id, so no server can have signed for it")

    membership = content["membership"]
    if membership == "join":
        _check_join(rv, ev, state)
    elif membership == "invite":
        _check_invite(rv, ev, state)
    elif membership == "leave":
        _check_leave(rv, ev, state)
    elif membership == "ban":
        _check_ban(rv, ev, state)
    elif membership == "knock" and rv.knock_join_rule:
        _check_knock(rv, ev, state)
    else:
        # 4.8: unknown membership (v1–v6 count "knock" as unknown).
        raise fail(rv, ("member", "unknown"), f"unknown membership {membership!r}")


class _Ctx:
    """Levels and memberships the membership rules compare, read once."""

    def __init__(self, rv: RoomVersion, ev: Event, state: AuthState) -> None:
        self.rv = rv
        self.sender: str = ev["sender"]
        self.target: str = ev["state_key"]
        self.create = state[CREATE_KEY]
        pl_ev = state.get(POWER_LEVELS_KEY)
        self.pl = content_of(pl_ev) if pl_ev is not None else None
        self.state = state
        self.sender_membership = membership_of(state, self.sender)
        self.target_membership = membership_of(state, self.target)
        self.join_rule = content_of(state.get(JOIN_RULES_KEY)).get("join_rule",
                                                                   DEFAULT_JOIN_RULE)

    def level(self, user_id: str) -> PowerLevel:
        return get_user_level(self.rv, self.create, self.pl, user_id)

    def named(self, name: str) -> int:
        return get_named_level(self.pl, name, None, rv=self.rv)


def _check_join(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    c = _Ctx(rv, ev, state)
    p = ("member", "join")
    # 4.3.1: the creator's join right after the create event (v11+: the create's sender;
    # v12: not the additional creators).
    if event_ids(ev.get("prev_events")) == [c.create.get("event_id")]:
        if rv.implicit_room_creator:
            creator = c.create.get("sender")
        else:
            creator = content_of(c.create).get("creator")
        if isinstance(creator, str) and c.target == creator:
            return
    # 4.3.2: nobody joins on someone else's behalf.
    if c.sender != c.target:
        raise fail(rv, p + ("sender_is_target",), "sender does not match state_key")
    # 4.3.3: banned users cannot join.
    if c.sender_membership == "ban":
        raise fail(rv, p + ("banned",), "sender is banned")
    member = c.sender_membership in ("invite", "join")
    # 4.3.4: invite (v7+: or knock) rooms admit the invited and the joined.
    invite_rules = ("invite", "knock") if rv.knock_join_rule else ("invite",)
    if c.join_rule in invite_rules and member:
        return
    restricted_rules: tuple[str, ...] = ()
    if rv.restricted_join_rule:
        restricted_rules = ("restricted", "knock_restricted") \
            if rv.knock_restricted_join_rule else ("restricted",)
    if c.join_rule in restricted_rules:
        # 4.3.5.1: already invited or joined: allow.
        if member:
            return
        # 4.3.5.2: the authorising user must be joined and able to invite.
        authoriser = content_of(ev).get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            raise fail(rv, p + ("restricted", "authoriser"), f"no {JAUVUS} in a restricted room")
        if membership_of(state, authoriser) != "join":
            raise fail(rv, p + ("restricted", "authoriser"),
                       f"authorising user {authoriser} is not joined")
        if c.level(authoriser) < c.named("invite"):
            raise fail(rv, p + ("restricted", "authoriser"),
                       f"authorising user {authoriser} may not invite")
        # 4.3.5.3: allow.
        return
    # 4.3.6: public rooms admit anyone not banned.
    if c.join_rule == "public":
        return
    # 4.3.7: otherwise reject.
    raise fail(rv, p + ("reject",), f"join_rule {c.join_rule!r} does not admit the sender")


def _check_invite(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    c = _Ctx(rv, ev, state)
    p = ("member", "invite")
    # 4.4.1: third-party invites have their own sub-rules (and allow on their own).
    if "third_party_invite" in content_of(ev):
        check_third_party_invite(rv, ev, state, c.target_membership)
        return
    # 4.4.2: the inviter must be joined.
    if c.sender_membership != "join":
        raise fail(rv, p + ("sender_joined",), "sender is not joined")
    # 4.4.3: the invitee must not be joined or banned.
    if c.target_membership in ("join", "ban"):
        raise fail(rv, p + ("target",), f"target is already {c.target_membership}")
    # 4.4.4: invite level.
    if c.level(c.sender) >= c.named("invite"):
        return
    # 4.4.5: otherwise reject.
    raise fail(rv, p + ("reject",), "sender's level is below the invite level")


def _check_leave(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    c = _Ctx(rv, ev, state)
    p = ("member", "leave")
    # 4.5.1: leaving oneself: allowed iff invited or joined (v7+: or knocked).
    if c.sender == c.target:
        can_leave = ("invite", "join", "knock") if rv.knock_join_rule else ("invite", "join")
        if c.sender_membership in can_leave:
            return
        raise fail(rv, p + ("self",), f"cannot leave from membership {c.sender_membership!r}")
    # 4.5.2: kicking/unbanning needs the sender joined.
    if c.sender_membership != "join":
        raise fail(rv, p + ("sender_joined",), "sender is not joined")
    sender_level = c.level(c.sender)
    # 4.5.3: unbanning needs the ban level.
    if c.target_membership == "ban" and sender_level < c.named("ban"):
        raise fail(rv, p + ("unban",), "sender's level is below the ban level")
    # 4.5.4: kick level and more power than the target.
    if sender_level >= c.named("kick") and c.level(c.target) < sender_level:
        return
    # 4.5.5: otherwise reject.
    raise fail(rv, p + ("reject",), "sender may not kick the target")


def _check_ban(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    c = _Ctx(rv, ev, state)
    p = ("member", "ban")
    # 4.6.1: the banner must be joined.
    if c.sender_membership != "join":
        raise fail(rv, p + ("sender_joined",), "sender is not joined")
    # 4.6.2: ban level and more power than the target.
    sender_level = c.level(c.sender)
    if sender_level >= c.named("ban") and c.level(c.target) < sender_level:
        return
    # 4.6.3: otherwise reject.
    raise fail(rv, p + ("reject",), "sender may not ban the target")


def _check_knock(rv: RoomVersion, ev: Event, state: AuthState) -> None:
    c = _Ctx(rv, ev, state)
    p = ("member", "knock")
    # 4.7.1: only knock (v10+: or knock_restricted) rooms accept knocks.
    rules = ("knock", "knock_restricted") if rv.knock_restricted_join_rule else ("knock",)
    if c.join_rule not in rules:
        raise fail(rv, p + ("join_rule",), f"join_rule {c.join_rule!r} does not allow knocking")
    # 4.7.2: nobody knocks on someone else's behalf.
    if c.sender != c.target:
        raise fail(rv, p + ("sender_is_target",), "sender does not match state_key")
    # 4.7.3: allowed unless banned, invited or joined.
    if c.sender_membership not in ("ban", "invite", "join"):
        return
    # 4.7.4: otherwise reject.
    raise fail(rv, p + ("reject",), f"sender is already {c.sender_membership!r}")
