"""SQLite-only storage behaviour: the file's journal mode, and its schema upgrades (backed up
first) and refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controlplane.storage.schema import MIGRATIONS, SchemaError
from controlplane.storage.sqlite import SqliteStorage


def test_a_new_file_is_at_the_latest_schema_in_wal_with_full_sync(tmp_path: Path) -> None:
    db = SqliteStorage(tmp_path / "cp.db")
    assert db.schema_version() == len(MIGRATIONS)
    raw = sqlite3.connect(db.path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    db.close()


def test_a_file_from_a_newer_control_plane_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(SchemaError, match="newer than this control plane"):
        SqliteStorage(path)


def test_an_older_file_is_backed_up_before_upgrading(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    SqliteStorage(path).close()
    upgraded = SqliteStorage(path, (*MIGRATIONS, "CREATE TABLE extra (x INTEGER)"))
    assert upgraded.schema_version() == len(MIGRATIONS) + 1
    backup = tmp_path / f"cp.db.v{len(MIGRATIONS)}.bak"
    assert sqlite3.connect(backup).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_the_revocation_sweep_query_reads_the_partial_index(tmp_path: Path) -> None:
    """``revoked_certificates_since`` runs on every replica every few seconds: it must read the
    recent revocations through ``certificates_by_revocation``, not scan the table."""
    db = SqliteStorage(tmp_path / "cp.db")
    db.close()
    raw = sqlite3.connect(tmp_path / "cp.db")
    plan = raw.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM certificates WHERE revoked_at > 0 AND revoked_at >= ?"
        " AND host_id NOT LIKE ? ORDER BY revoked_at, serial",
        (10.0, "operator:%"),
    ).fetchall()
    raw.close()
    assert any("certificates_by_revocation" in str(row[-1]) for row in plan), plan
