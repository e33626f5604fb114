"""Durable report ingestion on SQLite and PostgreSQL, through the real group-commit path.

Run: ``.venv/bin/python bench/ingest_bench.py`` (``--help`` for sizes). Prints, per backend, the
median of several runs as a Markdown line ready for BENCHMARKS.md.

What is measured: ``--agents`` concurrent asyncio tasks stand in for agent streams; each hands
batches of ``--agent-batch`` reports (an agent's outbox flush) to the real ``ReportIngestor``,
which groups whatever is queued into one ``insert_reports`` transaction on the real
``StorageThread``, exactly as the Fleet service does. A run ends when every report is durable
(acked). Rate = reports / wall time; the group size is what the ingestor formed on its own.

Durability is the production setting on both: SQLite in WAL with ``synchronous=FULL`` on a file
on disk (``--dir``; not tmpfs), PostgreSQL with ``synchronous_commit`` as the server has it (the
script prints it and refuses to run when it is off). Each PostgreSQL run uses a fresh schema that
is dropped afterwards. Reports carry a ~200-byte JSON body, like a real execution report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from controlplane.ingest import ReportIngestor  # noqa: E402
from controlplane.storage.base import Report, Storage  # noqa: E402
from controlplane.storage.postgres import PostgresStorage  # noqa: E402
from controlplane.storage.runner import StorageThread  # noqa: E402
from controlplane.storage.sqlite import SqliteStorage  # noqa: E402

BODY = json.dumps(
    {
        "policy": "nginx-down",
        "check": "nginx",
        "observed": {"running": False, "pid": 0},
        "steps": [{"run": "systemctl restart nginx", "exit": 0, "seconds": 0.42}],
        "verify": "passed",
        "cooldown_until": 1_700_000_600.0,
    },
    sort_keys=True,
)


def reports_for(host: int, first: int, count: int) -> list[Report]:
    return [
        Report(f"host-{host:05d}", n, "execution", "nginx-down", 1.7e9 + n, "fixed", "", BODY)
        for n in range(first, first + count)
    ]


async def one_run(storage: Storage, agents: int, per_agent: int, batch: int) -> tuple[float, float]:
    """Return (reports/s, mean rows per commit)."""
    store = StorageThread(storage)
    ingestor = ReportIngestor(store)
    writer = asyncio.create_task(ingestor.run())

    async def agent(host: int) -> None:
        for first in range(0, per_agent, batch):
            await ingestor.submit(reports_for(host, first, min(batch, per_agent - first)))

    started = time.perf_counter()
    await asyncio.gather(*(agent(h) for h in range(agents)))
    elapsed = time.perf_counter() - started
    writer.cancel()
    store.close()  # waits for the storage thread, closes the storage (closing again is a no-op)
    assert ingestor.rows == agents * per_agent and ingestor.duplicates == 0
    return ingestor.rows / elapsed, ingestor.rows / max(ingestor.commits, 1)


def bench_sqlite(directory: Path) -> Callable[[], tuple[Storage, Callable[[], None]]]:
    def make() -> tuple[Storage, Callable[[], None]]:
        path = directory / f"ingest-{uuid.uuid4().hex[:8]}.db"
        db = SqliteStorage(path)

        def drop() -> None:
            db.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        return db, drop

    return make


def bench_postgres(url: str) -> Callable[[], tuple[Storage, Callable[[], None]]]:
    def make() -> tuple[Storage, Callable[[], None]]:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        joiner = "&" if "?" in url else "?"
        db = PostgresStorage(f"{url}{joiner}options=-csearch_path%3D{schema}")

        def drop() -> None:
            db.close()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")

        return db, drop

    return make


def measure(
    name: str,
    make: Callable[[], tuple[Storage, Callable[[], None]]],
    args: argparse.Namespace,
) -> None:
    rates, groups = [], []
    for _ in range(args.runs):
        db, drop = make()
        try:
            rate, group = asyncio.run(one_run(db, args.agents, args.per_agent, args.agent_batch))
        finally:
            drop()
        rates.append(rate)
        groups.append(group)
    total = args.agents * args.per_agent
    print(
        f"- {name}: median **{statistics.median(rates):,.0f} reports/s** durable "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); {total:,} reports per run from "
        f"{args.agents} concurrent streams sending {args.agent_batch} per batch, "
        f"{statistics.median(groups):,.0f} rows per commit (median)",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--pg",
        default=os.environ.get("STANCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="SQLite files")
    p.add_argument("--agents", type=int, default=200, help="concurrent report streams")
    p.add_argument("--per-agent", type=int, default=200, help="reports each stream sends")
    p.add_argument("--agent-batch", type=int, default=10, help="reports per agent batch")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(
        f"# ingest_bench: {' '.join(sys.argv[1:]) or '(defaults)'}; cpus={os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews every figure)",
        flush=True,
    )
    if args.backend in ("sqlite", "both"):
        measure("SQLite (WAL, synchronous=FULL)", bench_sqlite(args.dir), args)
    if args.backend in ("postgres", "both"):
        try:
            with psycopg.connect(args.pg, connect_timeout=5) as conn:
                row = conn.execute("SHOW synchronous_commit").fetchone()
                fsync = conn.execute("SHOW fsync").fetchone()
        except psycopg.Error as exc:
            sys.exit(f"ingest_bench: {args.pg}: {exc}; pass --pg URL or --backend sqlite")
        setting = row[0] if row else "?"
        if setting == "off" or (fsync and fsync[0] == "off"):
            sys.exit(f"{args.pg}: synchronous_commit={setting}, fsync={fsync}: not durable")
        measure(f"PostgreSQL (synchronous_commit={setting}, COPY)", bench_postgres(args.pg), args)


if __name__ == "__main__":
    main()
