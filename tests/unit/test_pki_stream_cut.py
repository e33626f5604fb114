"""Which live streams a revoked certificate serial cuts (``Connections.cut_certificate``): the
ones opened with it, the certificate's host when its stream's serial is unknown, and nothing
else."""

from __future__ import annotations

from controlplane.connections import Connections


def test_the_stream_opened_with_the_serial_is_cut_and_no_other() -> None:
    conns = Connections()
    web1 = conns.open("web-1", {}, serial="a1")
    web2 = conns.open("web-2", {}, serial="b2")
    assert conns.cut_certificate("a1", "web-1") == ["web-1"]
    assert web1.closed and web1.queue.get_nowait() is None  # the writer's stop sentinel
    assert not web2.closed
    assert conns.cut_certificate("a1", "web-1") == []  # already closed


def test_a_renewed_hosts_stream_survives_the_revocation_of_its_old_certificate() -> None:
    conns = Connections()
    renewed = conns.open("web-1", {}, serial="new")
    assert conns.cut_certificate("old", "web-1") == []
    assert not renewed.closed


def test_a_stream_whose_serial_is_unknown_is_cut_for_its_host_only() -> None:
    conns = Connections()
    unknown = conns.open("web-1", {})
    other = conns.open("web-2", {})
    assert conns.cut_certificate("a1", "web-1") == ["web-1"]
    assert unknown.closed and not other.closed
    # a serial unknown to the table (no host): only a stream opened with it
    assert conns.cut_certificate("zz") == []
    assert not other.closed


def test_a_serial_is_found_on_whatever_host_presented_it() -> None:
    conns = Connections()
    stream = conns.open("web-3", {}, serial="c3")
    assert conns.cut_certificate("c3") == ["web-3"]
    assert stream.closed
