"""Apply one signed assignment: verify it, fetch its bundle, install it, remember its sequence.

The steps, and what each outcome means for the sequence high-water mark (``assignment_seq`` in
``agent_state``):

- the assignment is refused (bad signature, other host, stale seq): reported; the mark is kept;
- the bundle named is already active: accepted at once, mark raised, nothing fetched;
- the fetch fails (network, size bound, bytes that do not hash to the digest): reported as not
  applied, the mark is *not* raised, so the control plane may send the same assignment again;
- the bundle store refuses the bundle (signature, expiry, policies that do not load): a definitive
  answer to this assignment, the mark is raised; the refusal is reported from the rejection log;
- installed: mark raised; the runner notices the new active pointer and reloads.

Signature checks (of the assignment, then of the bundle) run in a child process, the ``verifier``,
so the long-lived agent never maps ``cryptography`` (see that module). ``allow_rollback`` and
``allow_rename`` are passed to the store only there, because a signed assignment with a higher
sequence is the authority for them: an automatic rollback is exactly a newer assignment that
points at an older, still operator-signed bundle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agent
from agent.clock import Clock
from agent.config import AgentConfig
from agent.errors import StanchError
from agent.fleet.assignment import STALE_SEQ, TRUST_ERROR, Assignment
from agent.fleet.config import ControlPlaneConfig
from agent.fleet.health import read_pointer
from agent.fleet.outbox import Outbox
from agent.fleet.rejections import RejectionForwarder
from agent.journal import Journal, Report
from agent.logs import log_event
from agent.subproc import run_bounded, scrubbed_env

SEQ_KEY = "assignment_seq"
FETCH_FAILED = "fetch_failed"
DIGEST_MISMATCH = "digest_mismatch"
VERIFIER_FAILED = "verifier_failed"
FETCH_LIMIT = 64 << 20
"""The largest bundle fetched: ``agent.bundle.archive.MAX_BUNDLE_BYTES`` (not imported here, as
that module brings ``tarfile``; ``tests/unit/test_fleet_apply.py`` holds the two equal)."""
VERIFIER_TIMEOUT = 120.0


class FetchError(StanchError):
    """The bundle could not be fetched; ``reason`` is a report code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


Fetcher = Callable[[str, int], Awaitable[bytes]]
"""``fetch(digest, max_bytes)``: the bundle's bytes, or :class:`FetchError`."""


@dataclass(frozen=True)
class ApplyOutcome:
    seq: int
    digest: str
    applied: bool
    reason: str = ""
    message: str = ""


class Applier:
    def __init__(
        self,
        config: AgentConfig,
        settings: ControlPlaneConfig,
        journal: Journal,
        outbox: Outbox,
        clock: Clock,
        max_bytes: int = FETCH_LIMIT,
    ) -> None:
        self.config = config
        self.settings = settings
        self.journal = journal
        self.outbox = outbox
        self.clock = clock
        self.max_bytes = max_bytes
        self.rejections = RejectionForwarder(config.state_dir, journal, outbox)
        self._lock = asyncio.Lock()

    def last_seq(self) -> int:
        value = self.journal.agent_state().get(SEQ_KEY, 0)
        return value if isinstance(value, int) else 0

    async def apply(self, envelope: bytes, fetch: Fetcher) -> ApplyOutcome:
        """Run every step; never raises for a bad assignment or bundle (the outcome says).
        One at a time, across sessions too: an apply outlives the stream that brought it."""
        async with self._lock:
            return await self._apply(envelope, fetch)

    async def _apply(self, envelope: bytes, fetch: Fetcher) -> ApplyOutcome:
        args = ["assignment", "--keys", str(self.settings.assignment_keys)]
        args += ["--host", self.config.host_id, "--last-seq", str(self.last_seq())]
        verdict = await asyncio.to_thread(self._verifier, args, envelope)
        pointer = read_pointer(self.config.state_dir)
        if not verdict.get("ok"):
            seq, digest = int(verdict.get("seq") or 0), str(verdict.get("digest") or "")
            reason = str(verdict.get("reason") or VERIFIER_FAILED)
            if (
                reason == STALE_SEQ
                and seq == self.last_seq()
                and pointer
                and pointer.digest == digest
            ):
                # The very assignment this host applied last, sent again (its ApplyResult was
                # lost with a stream): nothing changes, so say so rather than report a replay.
                return ApplyOutcome(seq, digest, True, "", "already applied")
            return self._refused(seq, digest, reason, str(verdict.get("message") or ""))
        assignment = Assignment(**verdict["assignment"])
        digest = assignment.bundle_digest
        if pointer is not None and pointer.digest == digest:
            self._accept(assignment)
            return ApplyOutcome(assignment.seq, digest, True, "", "bundle already active")
        try:
            data = await fetch(digest, self.max_bytes)
        except FetchError as exc:
            return self._refused(assignment.seq, digest, exc.reason, exc.message)
        return await asyncio.to_thread(self._install, assignment, data)

    def _install(self, assignment: Assignment, data: bytes) -> ApplyOutcome:
        seq, digest = assignment.seq, assignment.bundle_digest
        # Not tempfile: it would import shutil and random into the long-lived agent for one name.
        name = str(self.config.state_dir / f".fetched-{digest}-{os.getpid()}.bundle")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            args = ["install", name, "--digest", digest, "--trust", str(self.settings.trust)]
            args += ["--state-dir", str(self.config.state_dir)]
            if self.settings.trust_threshold is not None:
                args += ["--threshold", str(self.settings.trust_threshold)]
            # Registered before the store can log a refusal: the heartbeat loop scans too.
            context = {"source": "assignment", "seq": seq, "bundle_digest": digest}
            self.rejections.expect(name, context)
            verdict = self._verifier(args)
            self.rejections.scan()
        finally:
            self.rejections.forget(name)
            Path(name).unlink(missing_ok=True)
        reason = str(verdict.get("reason") or VERIFIER_FAILED)
        message = str(verdict.get("message") or "")
        if not verdict.get("ok"):
            if reason in (TRUST_ERROR, VERIFIER_FAILED, DIGEST_MISMATCH, "install_error"):
                return self._refused(seq, digest, reason, message)
            if not verdict.get("transient"):
                self._accept(assignment)
            # The store logged it; the scan above reported it (once), with the assignment's context.
            log_event("assignment_bundle_rejected", logging.WARNING, seq=seq, reason=reason)
            return ApplyOutcome(seq, digest, False, reason, message)
        self._accept(assignment)
        log_event(
            "assignment_applied",
            seq=seq,
            bundle=verdict.get("name"),
            version=verdict.get("version"),
            digest=digest,
            previous=verdict.get("previous"),
        )
        text = f"activated {verdict.get('name')} v{verdict.get('version')}"
        return ApplyOutcome(seq, digest, True, "", text)

    def _verifier(self, args: Sequence[str], stdin: bytes | None = None) -> dict[str, Any]:
        """Run ``python -m agent.fleet.verifier ARGS``; its verdict, or a ``verifier_failed``
        one when it crashed, hung or printed something that is not a verdict."""
        argv = [sys.executable, "-m", "agent.fleet.verifier", *args]
        # The child imports this same agent package, installed or from a checkout.
        env = scrubbed_env({"PYTHONPATH": str(Path(agent.__file__).resolve().parent.parent)})
        done = run_bounded(argv, VERIFIER_TIMEOUT, env=env, stdin=stdin or b"")
        try:
            verdict = json.loads(done.stdout.strip().splitlines()[-1]) if done.ok else None
        except (ValueError, IndexError):
            verdict = None
        if not isinstance(verdict, dict):
            lines = done.stderr.strip().splitlines()
            detail = done.error or (lines[-1] if lines else f"exit {done.exit_code}, no verdict")
            return {"ok": False, "reason": VERIFIER_FAILED, "message": f"verifier: {detail}"}
        return verdict

    def _accept(self, assignment: Assignment) -> None:
        if assignment.seq <= self.last_seq():
            return  # the mark never goes down
        self.journal.put_agent_state(
            {
                SEQ_KEY: assignment.seq,
                "assignment_digest": assignment.bundle_digest,
                "assignment_rollout": assignment.rollout_id,
                "assignment_at": self.clock.now(),
            }
        )

    def _refused(self, seq: int, digest: str, reason: str, message: str) -> ApplyOutcome:
        log_event("assignment_rejected", logging.WARNING, seq=seq, reason=reason, message=message)
        body = {"seq": seq, "bundle_digest": digest, "message": message, "source": "assignment"}
        self.outbox.put(Report("rejection", "", self.clock.now(), "rejected", reason, body))
        return ApplyOutcome(seq, digest, False, reason, message)
