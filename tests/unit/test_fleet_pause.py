"""Central pauses go through the host's pause file; a local pause is never cut short from afar."""

from __future__ import annotations

from pathlib import Path

from agent.fleet.pause import BY, apply_pause, apply_resume
from agent.pauses import PauseFile

NOW = 1_700_000_000.0


def test_pause_and_resume(tmp_path: Path) -> None:
    pauses = PauseFile(tmp_path / "pause.json")
    assert apply_pause(pauses, "", NOW + 60, "storm", "ops", NOW)
    pause = pauses.load()["*"]
    assert (pause.by, pause.until, pause.reason) == (BY, NOW + 60, "storm (by ops)")
    assert PauseFile(tmp_path / "pause.json").effective("web", NOW) is not None, "on disk"
    assert apply_resume(pauses, "*")
    assert pauses.load() == {}
    assert not apply_resume(pauses, "*")


def test_local_pauses_win(tmp_path: Path) -> None:
    pauses = PauseFile(tmp_path / "pause.json")
    pauses.set("web", None, "disk swap", "alice", NOW)
    assert not apply_pause(pauses, "web", NOW + 60, "storm", "", NOW)
    assert not apply_resume(pauses, "web")
    assert pauses.load()["web"].by == "alice"

    pauses.set("db", NOW + 30, "short", "bob", NOW)
    assert apply_pause(pauses, "db", NOW + 600, "storm", "", NOW), "the longer pause is stricter"
    assert pauses.load()["db"].until == NOW + 600

    pauses.set("api", NOW - 5, "over", "carol", NOW - 100)  # expired: nothing to protect
    assert apply_pause(pauses, "api", NOW + 60, "", "", NOW)
    assert pauses.load()["api"].reason == "paused from the control plane"
