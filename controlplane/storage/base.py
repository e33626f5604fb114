"""The control plane's storage interface: the records it keeps and the one Protocol that holds them.

Why a narrow Protocol: one control plane on SQLite serves a lab or a small fleet; at scale several
stateless replicas share PostgreSQL. Everything above this module speaks only these methods and
these frozen records, so a second backend is one new class, not a rewrite. The methods are
synchronous and each is one transaction; the server calls them from a single storage thread
(``controlplane.storage.runner``), never from the event loop.

Exactly-once reports rest on one rule every backend must keep: ``(host_id, id)`` is unique and a
redelivered report is ignored, yet still acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from agent.fleet.assignment import Assignment
from controlplane.storage.base_auth import AuthStorage
from controlplane.storage.base_decisions import DecisionStorage
from controlplane.storage.base_pki import PkiStorage

if TYPE_CHECKING:
    from agent.bundle.dsse import Envelope


@dataclass(frozen=True)
class AgentRecord:
    host_id: str
    labels: Mapping[str, str]
    agent_version: str = ""
    bundle_digest: str = ""
    bundle_version: int = 0
    last_seen: float = 0.0
    connected: bool = False
    last_assignment_seq: int = 0
    """The highest sequence the agent said it accepted (from Hello and apply results)."""
    health: Mapping[str, Any] = field(default_factory=dict)
    replica: str = ""
    """The replica whose stream the agent holds (or last held): ``Settings.holder``."""


@dataclass(frozen=True)
class BundleRecord:
    digest: str
    name: str
    version: int
    created: float
    expires: float
    size: int
    signers: tuple[str, ...]
    published_at: float
    manual_minutes: Mapping[str, float] = field(default_factory=dict)


AssignmentPayload = Assignment
"""What the control plane signs: the agent's own type (``agent.fleet.assignment``), so both ends
share one definition of the signed bytes."""


@dataclass(frozen=True)
class AssignmentRequest:
    host_id: str
    bundle_digest: str
    bundle_version: int
    rollout_id: str
    track: RolloutHost | None = None
    """A rollout-host row written in the same transaction (its ``seq`` 0 becomes the issued
    one), so a crash never leaves an assignment the rollout does not know it made."""


@dataclass(frozen=True)
class AssignmentRecord:
    host_id: str
    seq: int
    bundle_digest: str
    bundle_version: int
    rollout_id: str
    issued_at: float
    envelope: bytes
    status: str = "pending"
    """pending | applied | rejected."""
    reason: str = ""


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    bundle_digest: str
    selector: Mapping[str, str]
    waves: tuple[str, ...]
    bake_seconds: float
    gates: Mapping[str, str]
    gate_modes: Mapping[str, str]
    state: str
    wave: int
    wave_started_at: float
    created_at: float
    updated_at: float
    reason: str = ""
    by: str = ""
    gate_results: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RolloutHost:
    """One host a rollout touched: where it was before, and what happened since."""

    rollout_id: str
    host_id: str
    wave: int
    previous_digest: str
    previous_version: int
    seq: int
    assigned_at: float
    status: str = "assigned"
    """assigned | applied | failed | rolled_back | stranded (no previous bundle to go back to)."""
    reason: str = ""
    applied_at: float = 0.0


@dataclass(frozen=True)
class ApplyResult:
    """An agent's answer to assignment ``seq``, as ``record_applies`` stores it."""

    host_id: str
    seq: int
    digest: str
    applied: bool
    reason: str
    """Stored on the assignment (the agent's machine-readable reason)."""
    at: float
    note: str = ""
    """Stored on the rollout-host row (the reason, else the agent's message)."""
    retryable: bool = False
    """A rejection after which the agent has not consumed ``seq``: the rollout-host row stays
    ``assigned`` (only its reason changes), so the same assignment can be sent again."""


@dataclass(frozen=True)
class AppliedRecord:
    assignment: AssignmentRecord
    """The assignment as updated."""
    rollout_host: RolloutHost | None
    """Its rollout-host row as updated in the same transaction; None when not touched (no
    rollout, or the row tracks another sequence or is no longer ``assigned``)."""


def settle_rollout_host(row: RolloutHost | None, result: ApplyResult) -> RolloutHost | None:
    """What ``result`` makes of the stored rollout-host ``row`` (None: leave it alone)."""
    if row is None or row.seq != result.seq or row.status != "assigned":
        return None
    if not result.applied and result.retryable:
        return replace(row, reason=result.note)
    status = "applied" if result.applied else "failed"
    return replace(row, status=status, reason=result.note, applied_at=result.at)


@dataclass(frozen=True)
class Report:
    host_id: str
    id: int
    kind: str
    policy: str
    at: float
    outcome: str
    reason: str
    body_json: str


@dataclass(frozen=True)
class ReportQuery:
    host: str = ""
    policy: str = ""
    kind: str = ""
    since: float = 0.0
    limit: int = 200
    hosts: tuple[str, ...] = ()
    """When not empty, only these hosts (rollout gates look at the updated hosts only)."""


@dataclass(frozen=True)
class PauseRecord:
    id: int
    scope: str
    selector: Mapping[str, str]
    until: float
    """0 = until resumed."""
    reason: str
    by: str
    created_at: float

    def active(self, now: float) -> bool:
        return self.until == 0 or self.until > now


@dataclass(frozen=True)
class EscalationRecord:
    id: int
    at: float
    source: str
    policy: str
    message: str


class Signable(Protocol):
    """What the control plane's online key signs: anything that makes its own unsigned DSSE
    envelope. The payload type is the thing's own (an assignment's, an approval decision's), so
    the signature binds it and one can never verify as the other."""

    def envelope(self) -> Envelope: ...


Signer = Callable[[Signable], bytes]
"""The online key's signer (``controlplane.assignments.make_signer``): a signable thing to its
signed envelope's JSON. Storage passes it assignments (:data:`AssignmentPayload`)."""


class Storage(AuthStorage, PkiStorage, DecisionStorage, Protocol):
    # ---- agents
    def upsert_agent(self, agent: AgentRecord) -> None: ...
    def touch_agents(self, seen: Mapping[str, tuple[float, Mapping[str, Any]]]) -> None:
        """Record heartbeats, ``host -> (at, health)``, many in one transaction."""
        ...

    def set_connected(self, host_id: str, connected: bool, at: float, replica: str) -> None:
        """Connected: the stream is on ``replica``. Disconnected: only while ``replica`` still
        holds it (a stream that moved to another replica is not ended by the old one's close)."""
        ...

    def disconnect_all(self, replica: str) -> None:
        """Mark disconnected every agent streaming to ``replica`` (and rows no replica claims):
        a replica starting or stopping, while other replicas' streams live on."""
        ...

    def agent(self, host_id: str) -> AgentRecord | None: ...
    def agents(self, health: bool = True) -> list[AgentRecord]:
        """Every agent by host id; with ``health`` False each record's ``health`` is left
        empty (not read nor parsed), for readers that never look at it (a rollout step)."""
        ...

    # ---- bundles
    def put_bundle(self, record: BundleRecord, data: bytes) -> bool:
        """Store a verified bundle; False when that digest was already there."""
        ...

    def bundle(self, digest: str) -> BundleRecord | None: ...
    def bundle_data(self, digest: str) -> bytes | None: ...
    def bundles(self, name: str = "") -> list[BundleRecord]: ...

    # ---- assignments
    def issue_assignments(
        self, requests: Sequence[AssignmentRequest], at: float, sign: Signer
    ) -> list[AssignmentRecord]:
        """Give each host its next sequence number (above anything stored *and* anything the
        agent reported), sign, and store, all in one transaction."""
        ...

    def current_assignment(self, host_id: str) -> AssignmentRecord | None: ...
    def current_assignments(self) -> dict[str, AssignmentRecord]:
        """Every host's newest assignment (for listing agents in one query)."""
        ...

    def pending_assignments(self) -> list[AssignmentRecord]:
        """Every host's newest assignment while still ``pending`` (not yet applied or
        rejected), by host: what a delivery pass may still have to send."""
        ...

    def record_apply(
        self, host_id: str, seq: int, digest: str, applied: bool, reason: str, at: float
    ) -> AssignmentRecord | None:
        """Mark assignment ``seq`` applied or rejected; None when no such assignment."""
        ...

    def record_applies(self, results: Sequence[ApplyResult]) -> list[AppliedRecord | None]:
        """Record many apply results and their rollout-host rows in ONE transaction (as
        ``record_apply`` plus ``settle_rollout_host``); one entry per result, in order, None
        where no such assignment."""
        ...

    # ---- rollouts
    def put_rollout(self, rollout: RolloutRecord) -> None: ...
    def rollout(self, rollout_id: str) -> RolloutRecord | None: ...
    def rollouts(self, active_only: bool = False) -> list[RolloutRecord]: ...
    def put_rollout_hosts(self, hosts: Sequence[RolloutHost]) -> None: ...
    def rollout_hosts(self, rollout_id: str) -> list[RolloutHost]: ...
    def rollout_host(self, rollout_id: str, host_id: str) -> RolloutHost | None: ...

    # ---- reports
    def insert_reports(self, reports: Sequence[Report]) -> int:
        """Insert in one transaction, ignoring any ``(host_id, id)`` already stored; return how
        many were new."""
        ...

    def reports(self, query: ReportQuery) -> list[Report]: ...
    def prune_reports(self, before: float) -> int:
        """Delete reports older than ``before`` (the retention); return how many."""
        ...

    # ---- pauses and escalations
    def add_pause(
        self, scope: str, selector: Mapping[str, str], until: float, reason: str, by: str, at: float
    ) -> PauseRecord: ...
    def clear_pauses(self, scope: str, selector: Mapping[str, str]) -> list[PauseRecord]: ...
    def pauses(self, now: float) -> list[PauseRecord]: ...
    def add_escalation(self, at: float, source: str, policy: str, message: str) -> int: ...
    def escalations(self, since: float) -> list[EscalationRecord]: ...

    # ---- leases (one active rollout driver among replicas)
    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool: ...

    def schema_version(self) -> int: ...
    def close(self) -> None: ...
