"""The revocation sweep every replica runs (``controlplane.revocation_sweep``): two replicas on one
real SQLite file (injected clock), the revocation written through one, the streams held by the
other. A revoked host's stream and a stream opened with a revoked serial are cut at the next
sweep, at most every EVERY seconds; a renewed host's stream (another serial) stays; a revocation
committed late with an earlier time is still found; a failed sweep keeps its window; with no
streams nothing is read."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.clock import FakeClock
from controlplane.connections import Connections
from controlplane.revocation_sweep import EVERY, LOOKBACK, RevocationSweep
from controlplane.storage.base_pki import UNKNOWN_OPERATOR, CertificateRecord
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

T0 = 1_800_000_000.0


class CountingStorage(SqliteStorage):
    """Counts the sweep's reads of recent revocations; fails them while ``failing``."""

    reads = 0
    failing = False

    def revoked_certificates_since(self, since: float) -> list[CertificateRecord]:
        self.reads += 1
        if self.failing:
            raise OSError("disk I/O error (injected)")
        return super().revoked_certificates_since(since)


def cert(serial: str, host: str) -> CertificateRecord:
    return CertificateRecord(serial, host, T0 - 100, T0 + 86400, T0 - 100)


def test_revocations_through_another_replica_cut_the_streams_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        here = StorageThread(CountingStorage(tmp_path / "cp.db"))
        there = SqliteStorage(tmp_path / "cp.db")  # the replica that serves the admin calls
        for serial, host in (("a1", "web-1"), ("b1", "web-2"), ("b2", "web-2"), ("c1", "web-3")):
            there.add_certificate(cert(serial, host))
        streams = Connections()
        sweep = RevocationSweep(here, streams, clock)
        try:
            web1 = streams.open("web-1", {}, peer="ipv4:10.0.0.1:1", serial="a1")
            web2 = streams.open("web-2", {}, peer="ipv4:10.0.0.2:1", serial="b2")  # renewed
            web3 = streams.open("web-3", {}, serial="c1")
            insecure = streams.open("web-4", {})
            assert await sweep.sweep() == []

            there.revoke_host("web-1", clock.now(), "alice", "stolen")
            there.revoke_certificate("b1", UNKNOWN_OPERATOR, clock.now(), "old key")
            there.revoke_host("web-4", clock.now(), "bob", "")
            clock.advance(EVERY - 0.5)
            assert await sweep.sweep() == [] and not web1.closed  # not due yet
            clock.advance(0.5)
            cut = await sweep.sweep()
            assert sorted(c.host_id for c in cut) == ["web-1", "web-4"]
            assert web1.closed and insecure.closed
            assert not web2.closed and not web3.closed  # b1 is web-2's old certificate
            reasons = {c.host_id: c.reason for c in cut}
            assert (
                reasons["web-1"].startswith("host revoked by alice")
                and "(stolen)" in reasons["web-1"]
            )
            assert "web-1 (ipv4:10.0.0.1:1) cut: host revoked by alice" in caplog.text

            there.revoke_certificate("b2", UNKNOWN_OPERATOR, clock.now(), "compromised")
            clock.advance(EVERY)
            (only,) = await sweep.sweep()
            assert (only.host_id, only.peer) == ("web-2", "ipv4:10.0.0.2:1")
            assert (
                only.reason.startswith("certificate b2 revoked at") and "compromised" in only.reason
            )
            assert web2.closed and not web3.closed

            # Committed late, with a time before the previous sweep: still within the window.
            there.revoke_certificate("c1", UNKNOWN_OPERATOR, clock.now() - LOOKBACK / 2, "late")
            clock.advance(EVERY)
            assert [c.host_id for c in await sweep.sweep()] == ["web-3"] and web3.closed
            clock.advance(EVERY)
            assert await sweep.sweep() == []  # nothing open is revoked any more
        finally:
            here.close()
            there.close()

    with caplog.at_level(logging.WARNING, logger="stanch.cp.pki"):
        asyncio.run(main())


def test_a_failed_sweep_keeps_its_window_and_no_streams_read_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock(T0)
        storage = CountingStorage(tmp_path / "cp.db")
        here = StorageThread(storage)
        there = SqliteStorage(tmp_path / "cp.db")
        there.add_certificate(cert("a1", "web-1"))
        streams = Connections()
        sweep = RevocationSweep(here, streams, clock)
        try:
            for _ in range(3):
                assert await sweep.sweep() == []
                clock.advance(EVERY)
            assert storage.reads == 0  # no streams: nothing read

            conn = streams.open("web-1", {}, serial="a1")
            there.revoke_certificate("a1", UNKNOWN_OPERATOR, clock.now(), "lost")
            clock.advance(LOOKBACK * 2)  # storage fails for longer than the lookback
            storage.failing = True
            with pytest.raises(OSError, match="injected"):
                await sweep.sweep()
            assert not conn.closed and storage.reads == 1
            storage.failing = False
            clock.advance(EVERY)  # the failed window is kept: the revocation is still in it
            assert [c.host_id for c in await sweep.sweep()] == ["web-1"] and conn.closed
        finally:
            here.close()
            there.close()

    asyncio.run(main())
