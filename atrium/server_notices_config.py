"""Server notices settings: Synapse's ``server_notices`` section (Synapse's
``config/server_notices.py``).

    server_notices:
      system_mxid_localpart: notices        # required: the system user @notices:SERVER
      system_mxid_display_name: "Server Notices"
      system_mxid_avatar_url: "mxc://example.org/abc"
      room_name: "Server Notices"           # Synapse's default
      room_avatar_url: "mxc://example.org/def"
      room_topic: "Messages from the server"
      auto_join: false                      # true: the user is joined, not only invited

Without the section, server notices are off (the admin API answers 400).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.ids import is_valid_localpart

DEFAULT_ROOM_NAME = "Server Notices"


@dataclass(frozen=True)
class ServerNoticesConfig:
    system_mxid_localpart: str
    system_mxid_display_name: str | None = None
    system_mxid_avatar_url: str | None = None
    room_name: str | None = DEFAULT_ROOM_NAME
    room_avatar_url: str | None = None
    room_topic: str | None = None
    auto_join: bool = False

    def system_user(self, server_name: str) -> str:
        return f"@{self.system_mxid_localpart}:{server_name}"


def parse_server_notices_config(raw: dict[str, Any], error: type[Exception]
                                ) -> ServerNoticesConfig | None:
    """Validate ``server_notices`` of the top-level mapping ``raw`` (None: not configured);
    ``error`` is ConfigError (its message is one line naming the key)."""
    section = raw.get("server_notices")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise error(f"config key 'server_notices' must be a mapping (got {section!r})")
    localpart = section.get("system_mxid_localpart")
    if not isinstance(localpart, str) or not is_valid_localpart(localpart):
        raise error("config key 'server_notices.system_mxid_localpart' must be a user id "
                    f"localpart like 'notices' (got {localpart!r})")

    def text(key: str, default: str | None = None, *, mxc: bool = False) -> str | None:
        v = section.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or "\x00" in v or (mxc and not v.startswith("mxc://")):
            what = "an mxc:// URI" if mxc else "a string"
            raise error(f"config key 'server_notices.{key}' must be {what} (got {v!r})")
        return v

    auto_join = section.get("auto_join", False)
    if not isinstance(auto_join, bool):
        raise error(f"config key 'server_notices.auto_join' must be true or false "
                    f"(got {auto_join!r})")
    return ServerNoticesConfig(
        system_mxid_localpart=localpart,
        system_mxid_display_name=text("system_mxid_display_name"),
        system_mxid_avatar_url=text("system_mxid_avatar_url", mxc=True),
        room_name=text("room_name", DEFAULT_ROOM_NAME),
        room_avatar_url=text("room_avatar_url", mxc=True),
        room_topic=text("room_topic"),
        auto_join=auto_join)
