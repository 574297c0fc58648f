"""User directory settings: Synapse's ``user_directory`` section (its
``config/user_directory.py``), read from the raw config when the directory is wired
(web/user_directory.py)::

    user_directory:
      enabled: true               # false: every search answers no results
      search_all_users: false     # true: every local user, and every remote user in a room
                                  # with this server, not only those sharing a room with the
                                  # searcher or in a public room
      prefer_local_users: false   # true: this server's users rank before other servers'
      exclude_remote_users: false # true: only this server's users are found

A bad value raises :class:`atrium.config.ConfigError` naming the key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from atrium.config import ConfigError

log = logging.getLogger(__name__)

#: Synapse keys accepted without effect here
_IGNORED = ("show_locked_users",)


@dataclass(frozen=True)
class UserDirectoryConfig:
    enabled: bool = True
    search_all_users: bool = False
    prefer_local_users: bool = False
    exclude_remote_users: bool = False


def parse_user_directory_config(raw: Any) -> UserDirectoryConfig:
    """``user_directory`` of the top-level config mapping ``raw`` (defaults when absent)."""
    section = raw.get("user_directory") if isinstance(raw, dict) else None
    if section is None:
        return UserDirectoryConfig()
    if not isinstance(section, dict):
        raise ConfigError(f"config key 'user_directory' must be a mapping (got {section!r})")
    values: dict[str, bool] = {}
    for key, default in vars(UserDirectoryConfig()).items():
        v = section.get(key, default)
        if v is None:
            v = default
        if not isinstance(v, bool):
            raise ConfigError(f"config key 'user_directory.{key}' must be true or false "
                              f"(got {v!r})")
        values[key] = v
    unknown = sorted(str(k) for k in section if k not in values and k not in _IGNORED)
    if unknown:
        log.warning("config: ignoring unknown keys under user_directory: %s",
                    ", ".join(unknown))
    return UserDirectoryConfig(**values)
