"""The kill switch file: set, clear, scope, expiry, re-read on change, fail safe when unreadable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.pauses import GLOBAL, Pause, PauseFile

NOW = 1_700_000_000.0


@pytest.fixture
def pf(tmp_path: Path) -> PauseFile:
    return PauseFile(tmp_path / "state" / "pauses.json")


def test_no_file_means_no_pauses(pf: PauseFile) -> None:
    assert pf.load() == {}
    assert pf.effective("web", NOW) is None
    assert pf.clear("web") is False


def test_set_creates_the_directory_and_survives_a_new_reader(pf: PauseFile) -> None:
    pf.set(GLOBAL, NOW + 3600, "db migration", "alice", NOW)
    again = PauseFile(pf.path)
    assert again.load() == {GLOBAL: Pause(GLOBAL, NOW + 3600, "db migration", "alice", NOW)}
    assert json.loads(pf.path.read_text()) == {
        GLOBAL: {"until": NOW + 3600, "reason": "db migration", "by": "alice", "at": NOW}
    }
    assert not pf.path.with_suffix(".tmp").exists()


def test_global_pause_applies_to_every_policy(pf: PauseFile) -> None:
    pf.set(GLOBAL, None, "incident", "alice", NOW)
    assert pf.effective("web", NOW) == Pause(GLOBAL, None, "incident", "alice", NOW)
    assert pf.effective("db", NOW + 10 * 86400) is not None


def test_policy_pause_applies_to_that_policy_only(pf: PauseFile) -> None:
    pf.set("web", NOW + 60, "", "bob", NOW)
    assert pf.effective("web", NOW) == Pause("web", NOW + 60, "", "bob", NOW)
    assert pf.effective("db", NOW) is None


def test_pause_expires(pf: PauseFile) -> None:
    pf.set("web", NOW + 60, "", "bob", NOW)
    assert pf.effective("web", NOW + 59.9) is not None
    assert pf.effective("web", NOW + 60) is None
    assert Pause("web", None).active(NOW * 2)
    assert not Pause("web", NOW).active(NOW)


def test_the_longest_applicable_pause_wins(pf: PauseFile) -> None:
    pf.set(GLOBAL, NOW + 60, "short", "a", NOW)
    pf.set("web", NOW + 600, "long", "b", NOW)
    assert pf.effective("web", NOW).reason == "long"
    assert pf.effective("db", NOW).reason == "short"
    pf.set(GLOBAL, None, "forever", "a", NOW)
    assert pf.effective("web", NOW).reason == "forever"
    # Once the global pause is lifted, the policy pause still holds.
    assert pf.clear(GLOBAL) is True
    assert pf.effective("web", NOW).reason == "long"


def test_clear_removes_one_scope(pf: PauseFile) -> None:
    pf.set(GLOBAL, None, "", "a", NOW)
    pf.set("web", None, "", "a", NOW)
    assert pf.clear("web") is True
    assert pf.clear("web") is False
    assert set(pf.load()) == {GLOBAL}


def test_changes_by_another_writer_are_picked_up(pf: PauseFile) -> None:
    reader = PauseFile(pf.path)
    assert reader.effective("web", NOW) is None
    pf.set("web", None, "from the CLI", "alice", NOW)
    assert reader.effective("web", NOW).reason == "from the CLI"
    PauseFile(pf.path).clear("web")
    assert reader.effective("web", NOW) is None


def test_load_is_cached_until_the_file_changes(pf: PauseFile) -> None:
    pf.set("web", None, "", "a", NOW)
    first = pf.load()
    assert pf.load() is first
    st = pf.path.stat()
    os.utime(pf.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert pf.load() is not first


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        '{"*": "yes"}',
        "",
    ],
)
def test_unreadable_file_pauses_everything(pf: PauseFile, content: str) -> None:
    pf.path.parent.mkdir(parents=True)
    pf.path.write_text(content)
    pause = pf.effective("web", NOW)
    assert pause is not None
    assert pause.scope == GLOBAL
    assert pause.until is None
    assert pause.reason.startswith(f"unreadable pause file {pf.path}: ")


def test_wrongly_typed_until_pauses_everything_instead_of_crashing(pf: PauseFile) -> None:
    pf.path.parent.mkdir(parents=True)
    pf.path.write_text(json.dumps({"web": {"until": "tomorrow"}}))
    pause = pf.effective("db", NOW)
    assert pause is not None
    assert pause.scope == GLOBAL
    assert pause.until is None
    assert "'until' must be a number or null, got 'tomorrow'" in pause.reason
    assert pf.effective("web", NOW) == pause


def test_set_over_a_corrupt_file_starts_afresh(pf: PauseFile) -> None:
    pf.path.parent.mkdir(parents=True)
    pf.path.write_text("{not json")
    pf.set("web", None, "", "a", NOW)
    assert set(pf.load()) == {"web"}
