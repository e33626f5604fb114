"""``PostgresReader``: a second, small pool on the control plane's PostgreSQL, read-only.

Every connection of the pool starts with ``default_transaction_read_only`` on, so a write
through it is refused by the server. It never migrates: the writer's pool opened first and
brought the schema to this code's version; a database at another version is refused.
Imported only when the control plane runs on PostgreSQL (``reader.open_reader``).
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.postgres_db import Conn, redact
from controlplane.storage.schema import SchemaError


class PostgresReader(PostgresStorage):
    def _configure(self, conn: Conn) -> None:
        conn.execute("SET default_transaction_read_only = on")

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Check, never change: the writer migrates (a read-only session could not)."""
        found = self.schema_version()
        if found != len(migrations):
            raise SchemaError(
                f"{redact(self.url)}: schema v{found}, this control plane reads "
                f"v{len(migrations)}; open the read-only reader after the control plane's own "
                "storage"
            )
