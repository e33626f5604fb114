"""Approvals across the fleet channel: report them upstream, and apply signed central decisions.

Two halves, one vocabulary with ``controlplane.approvals``:

**Reporting** (:class:`ApprovalReports`, ``agent.fleet.approval_report``): every change of an
approval in the journal becomes one ``approval`` report, exactly once.

**Central decisions** (:class:`DecisionApplier`, here). An operator's approve/reject arrives as a
DSSE envelope signed by the control plane's online key with its own payload type
(``agent.fleet.approval_decision``: the signed format and its pure checks). The agent accepts one
only when

1. a pinned key signed it and it names this host;
2. it is fresh: ``issued_at`` not ahead of this host's clock by more than :data:`MAX_SKEW`,
   ``expires_at`` not passed, and a validity window of at most :data:`MAX_VALIDITY`;
3. its ``nonce`` was never seen here (kept until the decision's expiry, after which (2) refuses
   it anyway): a captured decision cannot be replayed, not even for the same approval;
4. the approval it names is still pending, for the policy it names.

It is then applied through ``Journal.decide_approval``, the path ``stanch-agent approve`` takes,
recorded as decided by ``cp:<principal>``, and reported at once with the decision's nonce so the
control plane can tell its operator. A refusal is reported too (outcome ``refused``, reason a code
of ``approval_decision``). Signature checks run in a child process (``python -m
agent.fleet.approval verify``), as for assignments, so the long-lived agent never maps
``cryptography``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.fleet.approval_decision import (
    DECISION_PAYLOAD_TYPE,
    EXPIRED,
    KIND,
    MALFORMED,
    MAX_DECISION_BYTES,
    MAX_SKEW,
    MAX_VALIDITY,
    NOT_PENDING,
    NOT_YET_VALID,
    REFUSED,
    REPLAYED,
    TRUST_ERROR,
    UNKNOWN_KEY,
    VERIFIER_FAILED,
    WRONG_HOST,
    WRONG_PAYLOAD_TYPE,
    WRONG_POLICY,
    ApprovalDecision,
    DecisionRejected,
    check_fresh,
    parse_payload,
    verify_decision,
)
from agent.fleet.approval_report import FINAL, STATE_KEY, ApprovalReports
from agent.fleet.outbox import Outbox
from agent.journal import Journal, Report
from agent.logs import log_event

NONCES_KEY = "approval_nonces"
VERIFY_TIMEOUT = 60.0

Verifier = Callable[[bytes], ApprovalDecision]
"""Signature, payload type and host check of one envelope (:func:`verify_decision` with keys)."""


@dataclass(frozen=True)
class DecisionOutcome:
    approval_id: str
    applied: bool
    reason: str = ""
    message: str = ""


class DecisionApplier:
    def __init__(
        self,
        host_id: str,
        journal: Journal,
        outbox: Outbox,
        reports: ApprovalReports,
        clock: Clock,
        verify: Verifier,
    ) -> None:
        self.host_id = host_id
        self.journal = journal
        self.outbox = outbox
        self.reports = reports
        self.clock = clock
        self.verify = verify
        self._lock = threading.Lock()

    @classmethod
    def for_agent(
        cls, host_id: str, keys_dir: Path, journal: Journal, outbox: Outbox, clock: Clock
    ) -> DecisionApplier:
        """The applier a connected agent runs: signatures checked in the child verifier."""
        reports = ApprovalReports(journal, outbox)
        return cls(host_id, journal, outbox, reports, clock, child_verifier(keys_dir, host_id))

    def scan(self) -> int:
        """Report approval changes now (the fleet client calls this as it drains the outbox)."""
        return self.reports.scan(self.clock.now())

    def apply(self, envelope: bytes) -> DecisionOutcome:
        """Verify and apply one decision; never raises for a bad one (reported and logged)."""
        try:
            decision = self.verify(envelope)
        except DecisionRejected as exc:
            return self._refused("", "", exc)
        with self._lock:
            try:
                self._apply(decision)
            except DecisionRejected as exc:
                return self._refused(decision.approval_id, decision.policy, exc, decision.nonce)
        verb = "approved" if decision.approve else "rejected"
        log_event(
            "approval_decided_centrally",
            policy=decision.policy,
            id=decision.approval_id,
            decision=verb,
            by=f"cp:{decision.by}",
        )
        return DecisionOutcome(decision.approval_id, True, "", f"{verb} by cp:{decision.by}")

    def _apply(self, decision: ApprovalDecision) -> None:
        now = self.clock.now()
        check_fresh(decision, now)
        with self.reports.lock:
            with self.journal.transaction() as db:
                row = db.execute(
                    "SELECT value FROM agent_state WHERE key = ?", (NONCES_KEY,)
                ).fetchone()
                seen: dict[str, float] = json.loads(row[0]) if row is not None else {}
                if decision.nonce in seen:
                    raise DecisionRejected(REPLAYED, f"nonce {decision.nonce} was already used")
                approval = db.execute(
                    "SELECT policy FROM approvals WHERE id = ?", (decision.approval_id,)
                ).fetchone()
                if approval is not None and approval["policy"] != decision.policy:
                    raise DecisionRejected(
                        WRONG_POLICY,
                        f"approval {decision.approval_id} is for {approval['policy']!r}, "
                        f"not {decision.policy!r}",
                    )
                # Spent before it is used: a crash in between leaves it unusable, not reusable.
                seen = {n: t for n, t in seen.items() if t > now}
                seen[decision.nonce] = decision.expires_at
                db.execute(
                    "INSERT INTO agent_state (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (NONCES_KEY, json.dumps(seen)),
                )
            try:
                self.journal.decide_approval(
                    decision.approval_id, decision.approve, f"cp:{decision.by}", now
                )
            except LookupError as exc:
                raise DecisionRejected(NOT_PENDING, str(exc)) from None
            context = {"nonce": decision.nonce, "reason_given": decision.reason}
            self.reports.scan(now, {decision.approval_id: context})

    def _refused(
        self, approval_id: str, policy: str, exc: DecisionRejected, nonce: str = ""
    ) -> DecisionOutcome:
        log_event(
            "approval_decision_refused",
            logging.WARNING,
            reason=exc.reason,
            message=exc.message,
            id=approval_id,
        )
        body = {"approval_id": approval_id, "nonce": nonce, "message": exc.message}
        self.outbox.put(Report(KIND, policy, self.clock.now(), REFUSED, exc.reason, body))
        # The approval may have changed meanwhile (it expired): report that as well.
        self.reports.scan(self.clock.now())
        return DecisionOutcome(approval_id, False, exc.reason, exc.message)


def child_verifier(keys_dir: Path, host_id: str) -> Verifier:
    """A :data:`Verifier` that runs ``python -m agent.fleet.approval verify`` (see the module)."""
    import agent
    from agent.subproc import run_bounded, scrubbed_env

    def verify(envelope: bytes) -> ApprovalDecision:
        argv = [sys.executable, "-m", "agent.fleet.approval", "verify"]
        argv += ["--keys", str(keys_dir), "--host", host_id]
        env = scrubbed_env({"PYTHONPATH": str(Path(agent.__file__).resolve().parent.parent)})
        done = run_bounded(argv, VERIFY_TIMEOUT, env=env, stdin=envelope)
        try:
            verdict = json.loads(done.stdout.strip().splitlines()[-1]) if done.ok else None
        except (ValueError, IndexError):
            verdict = None
        if not isinstance(verdict, dict):
            lines = done.stderr.strip().splitlines()
            detail = done.error or (lines[-1] if lines else f"exit {done.exit_code}")
            raise DecisionRejected(VERIFIER_FAILED, f"verifier: {detail}")
        if not verdict.get("ok"):
            raise DecisionRejected(str(verdict.get("reason")), str(verdict.get("message")))
        return ApprovalDecision(**verdict["decision"])

    return verify


def _verify_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.fleet.approval")
    sub = parser.add_subparsers(required=True)
    verify = sub.add_parser("verify", help="check a signed approval decision read from stdin")
    verify.add_argument("--keys", required=True)
    verify.add_argument("--host", required=True)
    args = parser.parse_args(argv)
    from agent.bundle.keys import KeyFileError, load_public_dir

    try:
        keys = load_public_dir(Path(args.keys))
        decision = verify_decision(sys.stdin.buffer.read(), keys, args.host)
        verdict: dict[str, Any] = {"ok": True, "decision": asdict(decision)}
    except KeyFileError as exc:
        verdict = {"ok": False, "reason": TRUST_ERROR, "message": f"assignment keys: {exc}"}
    except DecisionRejected as exc:
        verdict = {"ok": False, "reason": exc.reason, "message": exc.message}
    print(json.dumps(verdict, sort_keys=True))
    return 0


__all__ = [
    "DECISION_PAYLOAD_TYPE",
    "EXPIRED",
    "FINAL",
    "KIND",
    "MALFORMED",
    "MAX_DECISION_BYTES",
    "MAX_SKEW",
    "MAX_VALIDITY",
    "NONCES_KEY",
    "NOT_PENDING",
    "NOT_YET_VALID",
    "REFUSED",
    "REPLAYED",
    "STATE_KEY",
    "TRUST_ERROR",
    "UNKNOWN_KEY",
    "VERIFIER_FAILED",
    "WRONG_HOST",
    "WRONG_PAYLOAD_TYPE",
    "WRONG_POLICY",
    "ApprovalDecision",
    "ApprovalReports",
    "DecisionApplier",
    "DecisionOutcome",
    "DecisionRejected",
    "Verifier",
    "check_fresh",
    "child_verifier",
    "parse_payload",
    "verify_decision",
]

if __name__ == "__main__":
    sys.exit(_verify_main())
