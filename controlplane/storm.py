"""The fleet storm breaker: when one policy fires on too many hosts at once, stop automating it.

A widespread problem is not ten thousand local ones. If a shared dependency (DNS, a database, a
bad deploy) makes the same policy fire on a large share of the fleet, ten thousand simultaneous
restarts are at best useless and at worst the outage. So when more than ``fraction`` of the
connected hosts (and at least ``min_hosts``) fired a policy within ``window`` seconds, the control
plane pauses that policy fleet-wide for ``pause_for`` and escalates to a human.

This class is the pure part: fed "host H fired policy P at T" (from heartbeats and reports), asked
"what trips now?". Memory is bounded by hosts x policies seen within one window.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class StormSettings:
    fraction: float = 0.2
    window: float = 300.0
    min_hosts: int = 3
    pause_for: float = 3600.0


@dataclass(frozen=True)
class Trip:
    policy: str
    hosts: int
    fleet: int
    message: str


class StormBreaker:
    def __init__(self, settings: StormSettings | None = None) -> None:
        self.settings = settings or StormSettings()
        self._fired: dict[str, dict[str, float]] = {}

    def fired(self, host_id: str, policy: str, at: float) -> None:
        if not policy:
            return
        hosts = self._fired.setdefault(policy, {})
        hosts[host_id] = max(at, hosts.get(host_id, 0.0))

    def firing_hosts(self, policy: str, now: float) -> int:
        cutoff = now - self.settings.window
        return sum(1 for at in self._fired.get(policy, {}).values() if at >= cutoff)

    def check(self, fleet: int, now: float, paused: Collection[str] = ()) -> list[Trip]:
        """Policies that trip now; ``paused`` ones (already stopped) are skipped."""
        s = self.settings
        cutoff = now - s.window
        trips = []
        for policy in list(self._fired):
            hosts = {h: at for h, at in self._fired[policy].items() if at >= cutoff}
            if not hosts:
                del self._fired[policy]
                continue
            self._fired[policy] = hosts
            if policy in paused or fleet <= 0:
                continue
            if len(hosts) >= s.min_hosts and len(hosts) > s.fraction * fleet:
                trips.append(
                    Trip(
                        policy,
                        len(hosts),
                        fleet,
                        f"fleet storm: {policy} fired on {len(hosts)} of {fleet} hosts "
                        f"within {s.window:g}s (limit {s.fraction:.0%}); paused fleet-wide "
                        f"for {s.pause_for:g}s. A widespread cause needs a human: check shared "
                        f"dependencies, then 'opsctl resume --policy {policy}'",
                    )
                )
                self._fired.pop(policy)
        return trips
