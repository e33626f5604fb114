"""The enrollment, renewal and operator authentication tallies, and how ``controlplane.metrics``
turns them (and the certificates about to expire) into exposition: fixed label sets, unknown
values bucketed, every series present from the start, operators and renewed hosts not counted
as expiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.security_events import (
    AUTH_METHODS,
    AUTH_RESULTS,
    ENROLL_RESULTS,
    RENEW_RESULTS,
    TOKEN_CHECKS,
    SecurityEvents,
)
from controlplane.storage.base_pki import CertificateRecord
from controlplane.storage.sqlite import SqliteStorage

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from controlplane.metrics import PlaneSnapshot, state_families  # noqa: E402
from controlplane.security_metrics import expiring_hosts  # noqa: E402

DAY = 86400.0


def test_every_series_exists_from_the_start_and_unknown_values_are_bucketed() -> None:
    events = SecurityEvents()
    assert set(events.enrollments) == set(ENROLL_RESULTS)
    assert set(events.renewals) == set(RENEW_RESULTS)
    assert len(events.authentications) == len(AUTH_METHODS) * len(AUTH_RESULTS)
    assert not any(events.enrollments.values())
    events.enrolled("issued")
    events.enrolled("web-1")  # never a label: "other"
    events.renewed("renewed")
    events.renewed("because")
    events.authenticated("token", "ok")
    events.authenticated("kerberos", "ok")
    events.authenticated("certificate", "weird")
    assert (events.enrollments["issued"], events.enrollments["other"]) == (1, 1)
    assert (events.renewals["renewed"], events.renewals["other"]) == (1, 1)
    assert events.authentications[("token", "ok")] == 1
    assert events.authentications[("none", "ok")] == 1
    assert events.authentications[("certificate", "unauthenticated")] == 1
    assert len(events.enrollments) == len(ENROLL_RESULTS)  # no key was added
    assert set(TOKEN_CHECKS.values()) <= set(ENROLL_RESULTS)


def test_a_copy_does_not_move_with_the_original() -> None:
    events = SecurityEvents()
    snap = events.copy()
    events.enrolled("issued")
    assert snap.enrollments["issued"] == 0 and events.enrollments["issued"] == 1


def test_expiring_hosts_counts_each_hosts_newest_live_certificate(tmp_path: Path) -> None:
    db = SqliteStorage(tmp_path / "cp.db")
    now = 1_000_000.0
    rows = [
        CertificateRecord("a1", "soon", now - DAY, now + 2 * DAY, now - DAY),
        CertificateRecord("b1", "renewed", now - 9 * DAY, now + DAY, now - 9 * DAY),
        CertificateRecord("b2", "renewed", now - DAY, now + 30 * DAY, now - DAY),
        CertificateRecord("c1", "edge", now - DAY, now + 7 * DAY, now - DAY),
        CertificateRecord("d1", "later", now - DAY, now + 7 * DAY + 1, now - DAY),
        CertificateRecord("e1", "expired", now - 9 * DAY, now, now - 9 * DAY),
        CertificateRecord("f1", "revoked", now - DAY, now + DAY, now - DAY),
    ]
    try:
        for row in rows:
            db.add_certificate(row)
        db.revoke_certificate("f1", "revoked", now, "")
        db.revoke_certificate("99", "operator:ann", now, "")
        assert expiring_hosts(db, now) == 2  # soon, edge
        assert expiring_hosts(db, now, window=40 * DAY) == 4  # + renewed, later
    finally:
        db.close()


def test_the_families_carry_only_results_and_methods() -> None:
    events = SecurityEvents()
    events.enrolled("bad_token")
    events.authenticated("certificate", "permission_denied")
    families = {
        f.name: f for f in state_families(PlaneSnapshot(security=events, expiring_certificates=3))
    }
    enroll = families["stanch_cp_enrollments"]
    assert enroll.type == "counter"
    values = {s.labels["result"]: s.value for s in enroll.samples}
    assert values["bad_token"] == 1 and values["issued"] == 0
    assert all(s.name == "stanch_cp_enrollments_total" for s in enroll.samples)
    auth = families["stanch_cp_operator_authentications"]
    assert {tuple(sorted(s.labels)) for s in auth.samples} == {("method", "result")}
    assert len(families["stanch_cp_certificate_renewals"].samples) == len(RENEW_RESULTS)
    assert families["stanch_cp_host_certificates_expiring_soon"].samples[0].value == 3
    bare = {f.name for f in state_families(PlaneSnapshot())}
    assert "stanch_cp_enrollments" not in bare
    assert "stanch_cp_host_certificates_expiring_soon" not in bare
