"""Wave plans: which hosts a rollout updates, and when. Pure functions, no I/O.

A plan is a list of cumulative targets as operators write them: ``1,5%,25%,100%`` means one
canary host, then 5% of the matching hosts in total, then 25%, then all of them. Counts never
shrink (a wave smaller than the previous one is the previous one) and the last wave must be 100%,
so a rollout that completes has reached every host.

Membership is deterministic: hosts are ranked by ``sha256(rollout_id + "/" + host_id)``, and wave
*k* holds the first ``target(k)`` hosts of that ranking. The same rollout therefore picks the same
canary after a control-plane restart, a different rollout picks a different canary (no host is
always the guinea pig), and a host that joins mid-rollout lands in a wave by the same rule.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controlplane.errors import InvalidRequest

DEFAULT_WAVES = ("1", "5%", "25%", "100%")
_WAVE = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


@dataclass(frozen=True)
class WaveSpec:
    text: str
    value: float
    percent: bool

    def size(self, hosts: int) -> int:
        """Cumulative hosts for this wave out of ``hosts`` (at least one, when any exist)."""
        if hosts <= 0:
            return 0
        raw = math.ceil(hosts * self.value / 100 - 1e-9) if self.percent else int(self.value)
        return max(1, min(hosts, raw))


def parse_waves(texts: Iterable[str]) -> tuple[WaveSpec, ...]:
    parts = [p.strip() for text in texts for p in text.split(",") if p.strip()]
    if not parts:
        raise InvalidRequest("--waves: give at least one wave, e.g. 1,5%,25%,100%")
    specs = []
    for part in parts:
        match = _WAVE.match(part)
        if not match:
            raise InvalidRequest(
                f"--waves: {part!r} is neither a host count (1) nor a percent (5%)"
            )
        value, percent = float(match.group(1)), bool(match.group(2))
        if percent and not 0 < value <= 100:
            raise InvalidRequest(f"--waves: {part!r} must be above 0% and at most 100%")
        if not percent and (value < 1 or value != int(value)):
            raise InvalidRequest(f"--waves: {part!r} must be a whole number of hosts, >= 1")
        specs.append(WaveSpec(part, value, percent))
    last = specs[-1]
    if not (last.percent and last.value == 100):
        raise InvalidRequest(
            f"--waves: the last wave is {last.text!r}; it must be 100% so the rollout reaches "
            f"every matching host"
        )
    return tuple(specs)


def rank_key(rollout_id: str, host_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}/{host_id}".encode()).hexdigest()


def targets(specs: Sequence[WaveSpec], hosts: int) -> list[int]:
    """Cumulative host counts per wave, never shrinking."""
    out: list[int] = []
    for spec in specs:
        out.append(max(out[-1] if out else 0, spec.size(hosts)))
    return out


def assign_waves(
    rollout_id: str, specs: Sequence[WaveSpec], hosts: Iterable[str]
) -> dict[str, int]:
    """Each host's wave index (0 is the canary) among ``hosts``, the hosts matching now."""
    ranked = sorted(set(hosts), key=lambda host: rank_key(rollout_id, host))
    counts = targets(specs, len(ranked))
    waves: dict[str, int] = {}
    wave = 0
    for position, host in enumerate(ranked):
        while position >= counts[wave]:
            wave += 1
        waves[host] = wave
    return waves
