"""Changing an API token's role (``AuthStorage.set_api_token_role``) on every backend: the old
role comes back with the new record, nothing else about the token changes, an unknown token is
None, and concurrent changes are serialised (each reads the role it replaces)."""

from __future__ import annotations

import threading

from controlplane.storage.base import Storage
from controlplane.storage.base_auth import ApiTokenRecord


def test_set_role_returns_the_old_role_and_keeps_everything_else(storage: Storage) -> None:
    token = ApiTokenRecord(
        "t1", "ci", "operator", "ab" * 32, 10.0, expires_at=99.0, created_by="root"
    )
    storage.put_api_token(token)
    storage.touch_api_token("t1", 20.0)
    change = storage.set_api_token_role("t1", "viewer")
    assert change is not None and change.old_role == "operator"
    assert change.token.role == "viewer"
    stored = storage.api_token("t1")
    assert stored == change.token
    assert (stored.name, stored.secret_hash, stored.expires_at, stored.last_used_at) == (
        "ci",
        "ab" * 32,
        99.0,
        20.0,
    )
    again = storage.set_api_token_role("t1", "viewer")
    assert again is not None and (again.old_role, again.token.role) == ("viewer", "viewer")
    assert storage.set_api_token_role("nope", "admin") is None
    assert storage.api_token("nope") is None


def test_concurrent_changes_each_read_the_role_they_replace(storage: Storage) -> None:
    storage.put_api_token(ApiTokenRecord("t1", "ci", "viewer", "ab" * 32, 10.0))
    roles = ["operator", "admin"] * 10
    olds: list[str] = []
    news: list[str] = []
    lock = threading.Lock()

    def change(role: str) -> None:
        result = storage.set_api_token_role("t1", role)
        assert result is not None
        with lock:
            olds.append(result.old_role)
            news.append(result.token.role)

    threads = [threading.Thread(target=change, args=(r,)) for r in roles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    # Serialised: nobody writes "viewer" again, so exactly one change (the first to commit)
    # can have replaced it; two changes reading it at once would both report it.
    assert olds.count("viewer") == 1 and len(olds) == len(roles)
    final = storage.api_token("t1")
    assert final is not None and final.role in ("operator", "admin")
