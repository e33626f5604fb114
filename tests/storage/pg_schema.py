"""A fresh PostgreSQL schema per test, or a skip that names the server it tried.

``STANCH_TEST_PG`` overrides the server URL (default: the CI server on 127.0.0.1:5432, database
``test``, user ``postgres``, trust auth). Each test gets ``CREATE SCHEMA t_<random>`` and a URL
whose ``search_path`` points there, and the schema is dropped afterwards, so tests never see each
other's rows and the database is left as found.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("STANCH_TEST_PG", DEFAULT_URL)


def unreachable() -> str:
    """Why PostgreSQL cannot be used here ("" when it can)."""
    url = server_url()
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL unreachable at {url} (set STANCH_TEST_PG to another URL): {first}"
    return ""


def with_schema(url: str, schema: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """Yield a URL on a new, empty schema (skip the test when the server is unreachable)."""
    why = unreachable()
    if why:
        pytest.skip(why)
    url = server_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
