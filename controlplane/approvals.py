"""Approvals from the centre: which remediations wait for a human, and deciding them remotely.

One service layer under both the Admin API (``admin_approvals``, ``opsctl approvals``) and the
web console: :func:`pending` and :func:`decide`.

Where the state comes from. An agent reports every change of an approval request as an
``approval`` report (``agent.fleet.approval``): outcome ``pending`` when it asks, then
``approved``, ``rejected``, ``expired`` or ``used`` (an approved fix started), and ``refused``
for a central decision it would not take. The newest report per (host, approval id) is the
approval's state; nothing else is stored, so a control-plane restart or a second replica sees the
same list.

Deciding. :func:`decide` finds the pending approval, signs a decision
(``agent.fleet.approval.ApprovalDecision``: host, approval id, policy, approve or reject, who,
issued/expiry and a random nonce) with the control plane's online key under its own DSSE payload
type, and gets it to the host's live stream, wherever that stream is:

- on this replica: put on the stream at once;
- on another replica sharing the database (the agents table says the host is connected, to that
  replica, and heard from within ``lost_after``): queued in storage (``approval_decisions``,
  ``controlplane.storage.base_decisions``). Every replica's delivery pass
  (``controlplane.rollout_lease.Delivery``, each tick) sends the queued decisions of the hosts
  streaming to it, claiming each in storage first so exactly one replica sends it;
- nowhere: refused with FAILED_PRECONDITION. A decision is never queued for a disconnected host,
  because an operator who approved a fix at 03:00 must not see it run at 09:00 unannounced.

Then it waits (bounded by ``wait``) for the agent's report that carries the nonce, which reaches
the shared store through whichever replica the agent streams to: applied, or refused with the
agent's reason. A queued decision that no replica has sent by the end of that wait is withdrawn
(claimed by the deciding replica, so none sends it later) and the call is refused: the operator
learns now that nothing happened, rather than a fix starting minutes later (a ``ttl`` shorter
than the wait that runs out first is refused the same way). A decision claimed but not yet
answered is reported sent and unconfirmed, as for a local stream. The signed decision carries
its own expiry (``ttl``), so an agent refuses it after that whatever the path, and expired
queued rows are deleted by the delivery pass.

Audit and roles do not change with the path: the Admin API's auth interceptor records
``approval.decide`` on the replica the operator called, and the web console does the same.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.fleet.approval import KIND, MAX_VALIDITY, REFUSED, ApprovalDecision
from controlplane.errors import InvalidRequest, NotFound, Refused
from controlplane.plane import ControlPlane
from controlplane.rollout_lease import decision_message
from controlplane.storage.base import AgentRecord, Report, ReportQuery
from controlplane.storage.base_decisions import DecisionRecord
from controlplane.storage.runner import StorageThread

DEFAULT_TTL = 300.0
"""How long a signed decision stays valid when the operator does not say."""
CONFIRM_WAIT = 10.0
"""How long :func:`decide` waits for the agent's answer before returning unconfirmed."""
LOOKBACK = 30 * 86400.0
"""Approval reports older than this are not read (no approval lives that long)."""
MAX_REPORTS = 20_000
POLL = 0.1


@dataclass(frozen=True)
class PendingApproval:
    host_id: str
    approval_id: str
    policy: str
    created_at: float
    expires_at: float
    message: str
    observed: Mapping[str, Any] = field(default_factory=dict)
    connected: bool = False
    """The host has a live stream now, to this replica or another: a decision can be sent."""


@dataclass(frozen=True)
class DecideResult:
    host_id: str
    approval_id: str
    policy: str
    decision: str
    """approve | reject"""
    by: str
    """As recorded on the agent: ``cp:<principal>``."""
    nonce: str
    issued_at: float
    expires_at: float
    confirmed: bool
    """The agent reported applying it within the wait (False: sent, answer not seen yet)."""
    via: str = ""
    """The replica that holds the host's stream when it is not this one (the decision was
    queued for it); "" when sent on this replica's stream."""
    outcome: str = ""
    """approved | rejected when confirmed."""
    message: str = ""


async def pending(plane: ControlPlane, reads: StorageThread | None = None) -> list[PendingApproval]:
    """Every approval still waiting: not decided, not expired, on a host the store knows;
    oldest first (the one closest to expiry is usually the most urgent). ``reads``: a read-only
    storage thread to read through (the console's), else the plane's own."""
    now = plane.clock.now()
    store = reads if reads is not None else plane.store
    query = ReportQuery(kind=KIND, since=now - LOOKBACK, limit=MAX_REPORTS)
    reports = await store.run(store.storage.reports, query)
    hosts = {a.host_id: a for a in await store.run(store.storage.agents, False)}
    found = [
        _pending(r, body, plane, hosts[r.host_id], now)
        for r, body in _latest(reports).values()
        if r.outcome == "pending" and r.host_id in hosts
    ]
    return sorted((p for p in found if p.expires_at > now), key=lambda p: (p.created_at, p.host_id))


def _latest(reports: list[Report]) -> dict[tuple[str, str], tuple[Report, dict[str, Any]]]:
    """The newest state report per (host, approval id). Report ids grow per host, so the highest
    id is the newest; a ``refused`` report says nothing about the approval's state."""
    newest: dict[tuple[str, str], tuple[Report, dict[str, Any]]] = {}
    for report in reports:
        if report.outcome == REFUSED:
            continue
        body = _body(report)
        key = (report.host_id, str(body.get("approval_id", "")))
        if key[1] and (key not in newest or newest[key][0].id < report.id):
            newest[key] = (report, body)
    return newest


def _pending(
    report: Report, body: Mapping[str, Any], plane: ControlPlane, agent: AgentRecord, now: float
) -> PendingApproval:
    observed = body.get("observed")
    return PendingApproval(
        host_id=report.host_id,
        approval_id=str(body.get("approval_id", "")),
        policy=report.policy,
        created_at=_number(body.get("created_at"), report.at),
        expires_at=_number(body.get("expires_at"), 0.0),
        message=str(body.get("message", "")),
        observed=observed if isinstance(observed, dict) else {},
        connected=plane.connections.get(report.host_id) is not None
        or bool(streaming_elsewhere(plane, agent, now)),
    )


def streaming_elsewhere(plane: ControlPlane, agent: AgentRecord | None, now: float) -> str:
    """The other replica that holds ``agent``'s stream, or "" (none, or this one).

    As the fleet view judges it (``Timing.connected``): a replica killed without its stop leaves
    its agents' rows connected; such a host counts as connected nowhere until it streams again.
    Heartbeats reach the store through the holding replica's presence flush."""
    if agent is None or agent.replica in ("", plane.settings.holder):
        return ""
    return agent.replica if plane.engine.timing.connected(agent, now) else ""


async def decide(
    plane: ControlPlane,
    host_id: str,
    policy: str,
    approve: bool,
    by: str,
    ttl: float | None,
    *,
    reason: str = "",
    wait: float = CONFIRM_WAIT,
) -> DecideResult:
    """Approve or reject the pending approval of ``policy`` (a policy name or an approval id) on
    ``host_id``, as ``by`` (the authenticated principal's name). See the module for the flow."""
    ttl = DEFAULT_TTL if ttl is None or ttl <= 0 else ttl
    if ttl > MAX_VALIDITY:
        raise InvalidRequest(f"--ttl: at most {MAX_VALIDITY:g}s; a decision is meant for now")
    if not by:
        raise InvalidRequest("decide: no principal to record the decision under")
    waiting = [p for p in await pending(plane) if p.host_id == host_id]
    chosen = [p for p in waiting if policy in (p.policy, p.approval_id)]
    if not chosen:
        if await plane.store.run(plane.db.agent, host_id) is None:
            raise NotFound(f"no host {host_id!r}; see `opsctl agents list`")
        raise NotFound(
            f"no pending approval for {policy!r} on {host_id} (decided, expired or never "
            "asked); see `opsctl approvals list`"
        )
    target = chosen[0]
    now = plane.clock.now()
    conn = plane.connections.get(host_id)
    via = ""
    if conn is None:
        via = streaming_elsewhere(plane, await plane.store.run(plane.db.agent, host_id), now)
        if not via:
            raise Refused(
                f"{host_id} is not connected; the decision was not sent (decisions are never "
                f"queued). Retry when it is back, or on the host: "
                f"stanch-agent {'approve' if approve else 'reject'} {target.approval_id}"
            )
    decision = ApprovalDecision(
        host_id=host_id,
        approval_id=target.approval_id,
        policy=target.policy,
        approve=approve,
        by=by,
        issued_at=now,
        expires_at=now + ttl,
        nonce=os.urandom(16).hex(),
        reason=reason,
    )
    envelope = sign_decision(plane, decision)
    queued: DecisionRecord | None = None
    if conn is not None:
        if not conn.send(decision_message(envelope)):
            raise Refused(f"{host_id}: its stream closed as the decision was sent; retry")
    else:
        queued = DecisionRecord(
            host_id=host_id,
            nonce=decision.nonce,
            approval_id=decision.approval_id,
            envelope=envelope,
            created_at=decision.issued_at,
            expires_at=decision.expires_at,
            queued_by=plane.settings.holder,
        )
        await plane.store.run(plane.db.queue_decision, queued)
    answer = await _answer(plane, host_id, decision.nonce, wait)
    if answer is None and queued is not None:
        await _withdraw_unsent(plane, queued, via, wait)
    result = DecideResult(
        host_id=host_id,
        approval_id=decision.approval_id,
        policy=decision.policy,
        decision=decision.decision,
        by=f"cp:{by}",
        nonce=decision.nonce,
        issued_at=decision.issued_at,
        expires_at=decision.expires_at,
        confirmed=answer is not None,
        via=via,
    )
    if answer is None:
        sent = f"sent through replica {via}" if via else "sent"
        return replace(result, message=f"{sent}; no answer from {host_id} within {wait:g}s")
    if answer.outcome == REFUSED:
        text = str(_body(answer).get("message", ""))
        raise Refused(f"{host_id} refused the decision ({answer.reason}): {text}")
    return replace(result, outcome=answer.outcome, message=f"{answer.outcome} on {host_id}")


async def _withdraw_unsent(
    plane: ControlPlane, queued: DecisionRecord, via: str, wait: float
) -> None:
    """No answer within the wait: if no replica has sent the queued decision yet, take it back
    (claim it here, so none sends it later) and refuse; if one has, it stays sent."""
    withdrawn = f"{plane.settings.holder} (withdrawn: not delivered)"
    taken = await plane.store.run(
        plane.db.claim_decision, queued.nonce, withdrawn, plane.clock.now()
    )
    if taken:
        raise Refused(
            f"{queued.host_id} streams to replica {via!r}, which did not deliver the decision "
            f"within {wait:g}s; it was withdrawn, not sent (decisions are never left queued). "
            f"Retry, or check that replica {via!r} is healthy (its log, `opsctl agents list`)"
        )
    stored = await plane.store.run(plane.db.decision, queued.nonce)
    if stored is not None and not stored.delivered_at:  # not claimable: expired while queued
        raise Refused(
            f"{queued.host_id}: the decision expired (--ttl) before replica {via!r} delivered "
            "it; it was not sent. Retry with a longer --ttl"
        )


def sign_decision(plane: ControlPlane, decision: ApprovalDecision) -> bytes:
    """The decision's DSSE envelope, signed with the control plane's online (assignment) key.

    The plane holds that key only inside its signer (``assignments.make_signer``), typed to sign
    any :class:`~controlplane.storage.base.Signable`: it signs the envelope the decision makes,
    under the decision's own payload type, so an agent can never take it for an assignment (nor
    an assignment for a decision). ``tests/unit/test_approvals_cp.py`` pins this (type, key,
    refusal as an assignment)."""
    return plane.assigner.signer(decision)


async def _answer(plane: ControlPlane, host_id: str, nonce: str, wait: float) -> Report | None:
    """The agent's report about decision ``nonce`` (applied or refused), or None after ``wait``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    query = ReportQuery(host=host_id, kind=KIND, limit=50)
    while True:
        for report in await plane.store.run(plane.db.reports, query):
            if _body(report).get("nonce") == nonce:
                return report
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(POLL)


def _body(report: Report) -> dict[str, Any]:
    try:
        body = json.loads(report.body_json)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _number(value: Any, default: float) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
    )
