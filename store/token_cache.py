"""The access-token cache in front of ``AccountStore.get_token`` (store/accounts.py)."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from store.accounts import TokenInfo


class TokenCache:
    """A bounded LRU of token hash → :class:`TokenInfo` in front of ``get_token``.

    Only known tokens are cached (a token inserted later is never refused).  Every write that
    deletes access tokens or changes what ``TokenInfo`` holds drops the user's entries after
    COMMIT (:meth:`drop_user`); each drop bumps ``generation``, and a lookup that raced with
    one does not store what it read.  Entries also age out after ``ttl`` seconds, a safety
    net for writes made behind the server's back."""

    def __init__(self, size: int = 10_000, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl, self.clock = size, ttl, clock
        self.generation = 0
        self._entries: OrderedDict[str, tuple[TokenInfo, float]] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_hash: str) -> TokenInfo | None:
        hit = self._entries.get(token_hash)
        if hit is None:
            return None
        info, stored_at = hit
        if self.clock() - stored_at > self.ttl:
            self._drop(token_hash)
            return None
        self._entries.move_to_end(token_hash)
        return info

    def put(self, info: TokenInfo, generation: int) -> None:
        """Remember ``info`` unless an invalidation happened since ``generation`` was read."""
        if self.size <= 0 or generation != self.generation:
            return
        self._entries[info.token_hash] = (info, self.clock())
        self._entries.move_to_end(info.token_hash)
        self._by_user.setdefault(info.user_id, set()).add(info.token_hash)
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))

    def drop_user(self, user_id: str) -> None:
        self.generation += 1
        for th in self._by_user.pop(user_id, ()):
            self._entries.pop(th, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_user.clear()

    def _drop(self, token_hash: str) -> None:
        hit = self._entries.pop(token_hash, None)
        if hit is not None:
            hashes = self._by_user.get(hit[0].user_id)
            if hashes is not None:
                hashes.discard(token_hash)
                if not hashes:
                    del self._by_user[hit[0].user_id]
