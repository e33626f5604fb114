"""The central kill switch, applied through the host's own pause file.

A ``FleetPause`` is written to ``pause.json`` (the file ``stanch-agent pause`` writes), with
``by: control-plane``, so it holds across agent restarts and while the control plane is
unreachable, and ``stanch-agent status`` shows who paused what. Its TTL (``until``) is enforced by
the decision code like any local pause: a partitioned host un-pauses when the TTL runs out.

Local pauses win: an operator's pause on the host is never shortened or lifted from the centre.
A central pause replaces a local entry of the same scope only when it lasts longer (it is then
the stricter of the two), and ``FleetResume`` clears only entries the control plane wrote.
"""

from __future__ import annotations

import logging

from agent.logs import log_event
from agent.pauses import GLOBAL, PauseFile

BY = "control-plane"


def apply_pause(
    pauses: PauseFile, scope: str, until: float | None, reason: str, by: str, now: float
) -> bool:
    """Write a central pause; returns False when a longer local pause already covers it."""
    scope = scope or GLOBAL
    current = pauses.load().get(scope)
    local = current is not None and current.by != BY and current.active(now)
    if local and current is not None and not _outlasts(until, current.until):
        log_event("central_pause_kept_local", scope=scope, local_by=current.by)
        return False
    why = f"{reason} (by {by})" if by and reason else reason or (f"by {by}" if by else "")
    pauses.set(scope, until, why or "paused from the control plane", BY, now)
    log_event("central_pause", logging.WARNING, scope=scope, until=until, reason=why)
    return True


def apply_resume(pauses: PauseFile, scope: str) -> bool:
    """Lift a central pause; a local one stays. Returns True when something was lifted."""
    scope = scope or GLOBAL
    current = pauses.load().get(scope)
    if current is None or current.by != BY:
        return False
    pauses.clear(scope)
    log_event("central_resume", scope=scope)
    return True


def _outlasts(new: float | None, old: float | None) -> bool:
    """Does a pause until ``new`` end strictly later than one until ``old`` (None: never)?"""
    if old is None:
        return False
    return new is None or new > old
