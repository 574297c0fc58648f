"""The access-token cache (store/token_cache.py, used by store/accounts.py): a token used
once is served from memory, and every way a token dies makes it fail on the next request."""
from __future__ import annotations

from typing import Any

from store.accounts import TokenInfo, hash_token
from store.token_cache import TokenCache
from tests.web.conftest import auth_headers, password_auth, register_via_dummy
from web.app import runtime_of

V3 = "/_matrix/client/v3"
WHOAMI = f"{V3}/account/whoami"


def _login(client: Any, user: str, password: str = "pw", **extra: Any) -> dict[str, Any]:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra}
    r = client.post(f"{V3}/login", json=body)
    assert r.status_code == 200, r.json
    return r.json


def _ok(client: Any, token: str) -> bool:
    r = client.get(WHOAMI, headers=auth_headers(token))
    assert r.status_code in (200, 401), r.json
    return r.status_code == 200


def _accounts(app: Any) -> Any:
    return runtime_of(app).parts["accounts"]


def test_second_use_is_served_from_the_cache(app, client, account):
    a = account("alice")
    accounts = _accounts(app)
    assert _ok(client, a["access_token"])
    assert accounts.tokens.get(hash_token(a["access_token"])) is not None
    calls = []
    real_run = accounts.db.run
    accounts.db.run = lambda name, *args, **kw: (calls.append(name), real_run(name, *args, **kw))[1]
    try:
        assert _ok(client, a["access_token"])
    finally:
        accounts.db.run = real_run
    assert "get_token" not in calls


def test_unknown_tokens_are_not_cached(app, client):
    assert not _ok(client, "atr_nope")
    assert len(_accounts(app).tokens) == 0


def test_logout_kills_a_cached_token(client, account):
    a = account("alice")
    assert _ok(client, a["access_token"])
    assert client.post(f"{V3}/logout", headers=a["headers"]).status_code == 200
    assert not _ok(client, a["access_token"])


def test_logout_all_kills_every_cached_token(client, account):
    a = account("alice")
    other = _login(client, "alice")
    assert _ok(client, a["access_token"]) and _ok(client, other["access_token"])
    assert client.post(f"{V3}/logout/all", headers=a["headers"]).status_code == 200
    assert not _ok(client, a["access_token"])
    assert not _ok(client, other["access_token"])


def test_device_delete_kills_a_cached_token(client, account):
    a = account("alice")
    other = _login(client, "alice")
    assert _ok(client, other["access_token"])
    r = client.delete(f"{V3}/devices/{other['device_id']}", headers=a["headers"], json={})
    assert r.status_code == 401
    r = client.delete(f"{V3}/devices/{other['device_id']}", headers=a["headers"], json={
        "auth": password_auth(a["user_id"], "pw", r.json["session"])})
    assert r.status_code == 200
    assert not _ok(client, other["access_token"])
    assert _ok(client, a["access_token"])


def test_password_change_kills_other_cached_tokens(client, account):
    a = account("alice")
    other = _login(client, "alice")
    assert _ok(client, other["access_token"]) and _ok(client, a["access_token"])
    r = client.post(f"{V3}/account/password", headers=a["headers"], json={
        "new_password": "pw2", "auth": password_auth(a["user_id"], "pw")})
    assert r.status_code == 200, r.json
    assert not _ok(client, other["access_token"])
    assert _ok(client, a["access_token"])  # the requesting device stays logged in


def test_deactivation_kills_a_cached_token(client, account):
    a = account("alice")
    assert _ok(client, a["access_token"])
    r = client.post(f"{V3}/account/deactivate", headers=a["headers"],
                    json={"auth": password_auth(a["user_id"], "pw")})
    assert r.status_code == 200, r.json
    assert not _ok(client, a["access_token"])


def test_login_reusing_a_device_kills_its_cached_token(client, account):
    a = account("alice", device_id="PHONE")
    assert _ok(client, a["access_token"])
    new = _login(client, "alice", device_id="PHONE")
    assert not _ok(client, a["access_token"])
    assert _ok(client, new["access_token"])


def test_refresh_retires_cached_predecessors(make_app):
    c = make_app(refreshable_access_token_lifetime="1m").test_client()
    register_via_dummy(c, "alice")
    r1 = _login(c, "alice", refresh_token=True)
    assert _ok(c, r1["access_token"]) and _ok(c, r1["access_token"])  # now cached
    r2 = c.post(f"{V3}/refresh", json={"refresh_token": r1["refresh_token"]}).json
    r2b = c.post(f"{V3}/refresh", json={"refresh_token": r1["refresh_token"]}).json
    assert not _ok(c, r2["access_token"])  # replaced by the retry
    assert _ok(c, r2b["access_token"])     # first use retires r1 and its access token
    assert not _ok(c, r1["access_token"])
    assert _ok(c, r2b["access_token"])


def _info(user: str, th: str) -> TokenInfo:
    return TokenInfo(user, "D", False, False, False, None, th)


def test_cache_is_bounded_lru() -> None:
    cache = TokenCache(size=2)
    for th in ("a", "b"):
        cache.put(_info("@u:x", th), cache.generation)
    assert cache.get("a") is not None      # a is now the most recent
    cache.put(_info("@v:x", "c"), cache.generation)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    cache.drop_user("@u:x")
    assert cache.get("a") is None and cache.get("c") is not None


def test_lookup_racing_an_invalidation_is_not_stored() -> None:
    cache = TokenCache()
    generation = cache.generation           # a lookup starts and reads the store...
    cache.drop_user("@u:x")                 # ...while a logout commits
    cache.put(_info("@u:x", "a"), generation)
    assert cache.get("a") is None


def test_entries_age_out() -> None:
    now = [0.0]
    cache = TokenCache(ttl=10, clock=lambda: now[0])
    cache.put(_info("@u:x", "a"), cache.generation)
    now[0] = 11
    assert cache.get("a") is None and len(cache) == 0
