"""What a heartbeat says about the host: the main loop's live state plus durable counters.

The main loop owns the policies; it publishes a :class:`LiveState` snapshot (an immutable value,
swapped by reference) and the client thread reads the last one. Nothing is shared mutably across
threads, and the main loop never waits for the network to take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.bundle.pointer import ActivePointer, PointerCorrupt
from agent.fleet.outbox import Outbox
from agent.journal import Journal


@dataclass(frozen=True)
class LiveState:
    policies: tuple[str, ...] = ()
    firing: tuple[str, ...] = field(default=())
    storm: bool = False


@dataclass(frozen=True)
class Health:
    policies: int
    firing: int
    breakers_open: int
    storm: bool
    bundle_stale: bool
    outbox_depth: int
    outbox_dropped: int
    firing_policies: tuple[str, ...]


def summarize(
    live: LiveState, journal: Journal, outbox: Outbox, pointer: ActivePointer | None, now: float
) -> Health:
    breakers = sum(1 for name in live.policies if journal.breaker(name)[1] is not None)
    return Health(
        policies=len(live.policies),
        firing=len(live.firing),
        breakers_open=breakers,
        storm=live.storm,
        bundle_stale=pointer is not None and now >= pointer.expires,
        outbox_depth=outbox.depth(),
        outbox_dropped=outbox.dropped(),
        firing_policies=live.firing,
    )


def read_pointer(state_dir: Path) -> ActivePointer | None:
    """The active pointer, or None when there is none or it cannot be read (reported elsewhere:
    the runner logs a corrupt pointer when it loads policies)."""
    try:
        return ActivePointer.read(state_dir / "bundles")
    except PointerCorrupt:
        return None
