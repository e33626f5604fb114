"""Pure parts of the console: sessions and their expiry, redaction and bounding of step output,
plain-words lines, the Pareto chart's geometry, link and redirect safety."""

from __future__ import annotations

import json

from agent.clock import FakeClock
from controlplane.auth import Principal
from controlplane.console import charts, words
from controlplane.console.actions import _local
from controlplane.console.sessions import SessionStore
from controlplane.pareto import ParetoRow
from controlplane.storage.base import Report

ALICE = Principal("alice", "operator", "console")


def test_sessions_expire_and_are_bounded() -> None:
    clock = FakeClock(1000.0)
    store = SessionStore(clock, ttl=60.0, max_sessions=3)
    first = store.create(ALICE)
    assert store.get(first.id) == first
    assert first.csrf_ok(first.csrf) and not first.csrf_ok("") and not first.csrf_ok("x")
    clock.advance(61)
    assert store.get(first.id) is None
    made = [store.create(ALICE) for _ in range(4)]
    assert len(store) == 3 and store.get(made[0].id) is None  # the oldest went first
    store.drop(made[3].id)
    assert store.get(made[3].id) is None and store.get("") is None
    assert len({s.id for s in made}) == 4 and all(len(s.id) >= 40 for s in made)


def test_redact_hides_common_secrets() -> None:
    text = (
        "password=hunter2 Authorization: Bearer abc.def TOKEN: 'xyz' "
        "https://bob:pw@db.example/x AKIAABCDEFGHIJKLMNOP "
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- tail"
    )
    out = words.redact(text)
    for secret in ("hunter2", "abc.def", "xyz", "bob:pw", "AKIAABCDEFGHIJKLMNOP", "MIIE"):
        assert secret not in out, secret
    assert "password=[REDACTED]" in out and "tail" in out and "db.example" in out


def test_clip_keeps_the_tail() -> None:
    assert words.clip("  short ") == "short"
    long = "a" * 3000 + "END"
    clipped = words.clip(long, 100)
    assert clipped.endswith("END") and "2903 characters cut" in clipped


def test_decision_and_execution_lines() -> None:
    body = {"message": "m", "until": 50.0, "observed": {"x": 1}, "why": ["x > 0"]}
    report = Report("h", 1, "decision", "p", 10.0, "suppressed", "budget", json.dumps(body))
    line = words.line(report)
    assert (line.guardrail, line.until, line.tone, line.observed) == (
        "run budget",
        50.0,
        "warn",
        [("x", "1")],
    )
    steps = [{"name": "s", "argv": ["echo", "token=abc"], "ok": True, "stdout": "ok"}]
    body = {"verification": "fixed after 2s", "steps": steps}
    line = words.line(Report("h", 2, "execution", "p", 11.0, "fixed", "v", json.dumps(body)))
    assert line.headline == "fixed" and line.tone == "ok" and line.message == "fixed after 2s"
    assert line.steps[0].command == "echo token=[REDACTED]" and line.steps[0].result == "ok"
    broken = words.line(Report("h", 3, "decision", "p", 12.0, "act", "", "not json"))
    assert broken.headline == "acted" and broken.steps == []


def test_pareto_bars_geometry() -> None:
    rows = [ParetoRow("a", count=6, fixed=6, manual_minutes=10), ParetoRow("b", count=3, fixed=1)]
    chart = charts.pareto_bars(rows)
    a, b = chart.bars
    assert a.width == charts.BAR_WIDTH and b.width == charts.BAR_WIDTH / 2
    assert round(a.cumulative, 3) == 0.667 and b.cumulative == 1.0
    assert b.marker_x == charts.LABEL_WIDTH + charts.BAR_WIDTH
    assert (a.tone, b.tone) == ("ok", "bad") and chart.toil_saved_minutes == 60
    assert charts.pareto_bars([]).bars == []


def test_links_and_redirects_stay_safe() -> None:
    assert words.safe_link("https://runbooks.example.com/x") == "https://runbooks.example.com/x"
    for bad in ("javascript:alert(1)", "data:text/html,x", "https://a b", ""):
        assert words.safe_link(bad) == ""
    assert _local("/rollouts") and not _local("//evil.example") and not _local("https://x")
