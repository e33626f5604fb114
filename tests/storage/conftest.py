"""Storage tests run against every backend: ``storage`` is parametrized over SQLite (a file in
``tmp_path``) and PostgreSQL (a fresh schema per test; skipped, with the URL it tried, when no
server answers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_schema import fresh_schema

from controlplane.storage.base import Storage
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.sqlite import SqliteStorage

BACKENDS = ("sqlite", "postgres")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    db: Storage
    if request.param == "sqlite":
        db = SqliteStorage(tmp_path / "cp.db")
        yield db
        db.close()
        return
    with fresh_schema() as url:
        db = PostgresStorage(url)
        try:
            yield db
        finally:
            db.close()
