"""The kill switch: ``stanch-agent pause [--policy P] [--for 2h]``, kept in a file.

A JSON file in the state directory, written atomically (temp file, fsync, rename), so a pause
survives agent restarts and can be set while the agent runs: the agent re-reads it when its
modification time changes. A pause without ``until`` lasts until ``resume``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GLOBAL = "*"


@dataclass(frozen=True)
class Pause:
    scope: str
    """``*`` for the whole agent, else a policy name."""
    until: float | None
    reason: str = ""
    by: str = ""
    at: float = 0.0

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


class PauseFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._cache: dict[str, Pause] = {}

    def load(self) -> dict[str, Pause]:
        """Current pauses (cached until the file changes). A corrupt file pauses everything:
        when the operator's stop switch cannot be read, failing safe means not acting."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._cache = None, {}
            return {}
        if mtime == self._mtime:
            return self._cache
        try:
            raw = json.loads(self.path.read_text())
            pauses = {scope: _pause(scope, entry) for scope, entry in raw.items()}
        except (ValueError, AttributeError, OSError) as exc:
            pauses = {GLOBAL: Pause(GLOBAL, None, f"unreadable pause file {self.path}: {exc}")}
        self._mtime, self._cache = mtime, pauses
        return pauses

    def effective(self, policy: str, now: float) -> Pause | None:
        """The pause that applies to ``policy`` now (the one that lasts longest)."""
        pauses = self.load()
        found = [p for p in (pauses.get(GLOBAL), pauses.get(policy)) if p and p.active(now)]
        if not found:
            return None
        return max(found, key=lambda p: float("inf") if p.until is None else p.until)

    def set(self, scope: str, until: float | None, reason: str, by: str, now: float) -> None:
        data = self._raw()
        data[scope] = {"until": until, "reason": reason, "by": by, "at": now}
        self._write(data)

    def clear(self, scope: str) -> bool:
        data = self._raw()
        found = data.pop(scope, None) is not None
        self._write(data)
        return found

    def _raw(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _pause(scope: str, entry: Any) -> Pause:
    """One entry of the file; a wrongly typed ``until`` is as unreadable as broken JSON (it
    would otherwise fail later, in ``active()``, and take the decision down with it)."""
    until = entry.get("until")
    if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
        raise ValueError(f"pause {scope!r}: 'until' must be a number or null, got {until!r}")
    return Pause(scope, until, entry.get("reason", ""), entry.get("by", ""), entry.get("at", 0.0))
