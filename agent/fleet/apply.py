"""Apply one signed assignment: verify it, fetch its bundle, install it, remember its sequence.

The steps, and what each failure means for the sequence high-water mark (``assignment_seq`` in
``agent_state``):

- the assignment is refused (bad signature, other host, stale seq): reported; the mark is kept;
- the bundle named is already active: accepted at once, mark raised, nothing fetched;
- the fetch fails (network, size bound, bytes that do not hash to the digest): reported as not
  applied, the mark is *not* raised, so the control plane may send the same assignment again;
- the bundle store refuses the bundle (signature, expiry, policies that do not load): a definitive
  answer to this assignment, the mark is raised; the refusal is reported from the rejection log;
- installed: mark raised; the runner notices the new active pointer and reloads.

``allow_rollback`` (and ``allow_rename``) are passed to the store only here, because a signed
assignment with a higher sequence is the authority for them: an automatic rollback is exactly a
newer assignment that points at an older, still operator-signed bundle.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.bundle.archive import MAX_BUNDLE_BYTES
from agent.bundle.keys import KeyFileError, load_public_dir
from agent.bundle.rejection import BundleRejected, Reason
from agent.bundle.store import BundleStore
from agent.bundle.trust import TrustError, TrustStore
from agent.clock import Clock
from agent.config import AgentConfig
from agent.errors import StanchError
from agent.fleet.assignment import Assignment, AssignmentRejected, verify_assignment
from agent.fleet.config import ControlPlaneConfig
from agent.fleet.health import read_pointer
from agent.fleet.outbox import Outbox
from agent.fleet.rejections import RejectionForwarder
from agent.journal import Journal, Report
from agent.logs import log_event

SEQ_KEY = "assignment_seq"
FETCH_FAILED = "fetch_failed"
DIGEST_MISMATCH = "digest_mismatch"
TRUST_ERROR = "trust_error"
TRANSIENT = frozenset({Reason.STORAGE_ERROR, Reason.UNREADABLE})
"""Store refusals that say nothing about the bundle: the same assignment may be retried."""


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
        max_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        self.config = config
        self.settings = settings
        self.journal = journal
        self.outbox = outbox
        self.clock = clock
        self.max_bytes = max_bytes
        self.store = BundleStore(config.state_dir, clock=clock, max_bytes=max_bytes)
        self.rejections = RejectionForwarder(config.state_dir, journal, outbox)

    def last_seq(self) -> int:
        value = self.journal.agent_state().get(SEQ_KEY, 0)
        return value if isinstance(value, int) else 0

    async def apply(self, envelope: bytes, fetch: Fetcher) -> ApplyOutcome:
        """Run every step; never raises for a bad assignment or bundle (the outcome says)."""
        try:
            assignment = await asyncio.to_thread(self.verify, envelope)
        except AssignmentRejected as exc:
            return self._refused(exc.seq, exc.digest, exc.reason, exc.message)
        digest = assignment.bundle_digest
        if self._active_digest() == digest:
            self._accept(assignment)
            return ApplyOutcome(assignment.seq, digest, True, "", "bundle already active")
        try:
            data = await fetch(digest, self.max_bytes)
        except FetchError as exc:
            return self._refused(assignment.seq, digest, exc.reason, exc.message)
        if hashlib.sha256(data).hexdigest() != digest:
            return self._refused(
                assignment.seq,
                digest,
                DIGEST_MISMATCH,
                f"the control plane served {len(data)} bytes that do not hash to {digest}",
            )
        return await asyncio.to_thread(self._install, assignment, data)

    def verify(self, envelope: bytes) -> Assignment:
        try:
            keys = load_public_dir(self.settings.assignment_keys)
        except KeyFileError as exc:
            raise AssignmentRejected(TRUST_ERROR, f"assignment keys: {exc}") from None
        return verify_assignment(envelope, keys, self.config.host_id, self.last_seq())

    def _install(self, assignment: Assignment, data: bytes) -> ApplyOutcome:
        seq, digest = assignment.seq, assignment.bundle_digest
        try:
            trust = TrustStore.load(self.settings.trust, self.settings.trust_threshold)
        except TrustError as exc:
            return self._refused(seq, digest, TRUST_ERROR, str(exc))
        fd, name = tempfile.mkstemp(prefix=".fetched-", suffix=".bundle", dir=self.config.state_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            done = self.store.install(
                name, trust, self.clock.now(), allow_rollback=True, allow_rename=True
            )
        except BundleRejected as exc:
            if exc.reason not in TRANSIENT:
                self._accept(assignment)
            # The store logged it; report it from there (once), with what the log cannot know.
            context = {"source": "assignment", "seq": seq, "bundle_digest": digest}
            self.rejections.scan({name: context})
            log_event("assignment_bundle_rejected", logging.WARNING, seq=seq, reason=exc.reason)
            return ApplyOutcome(seq, digest, False, str(exc.reason), exc.message)
        except (OSError, StanchError) as exc:
            return self._refused(seq, digest, "install_error", str(exc))
        finally:
            Path(name).unlink(missing_ok=True)
        self._accept(assignment)
        log_event(
            "assignment_applied",
            seq=seq,
            bundle=done.name,
            version=done.version,
            digest=done.digest,
            previous=done.previous,
        )
        return ApplyOutcome(seq, digest, True, "", f"activated {done.name} v{done.version}")

    def _accept(self, assignment: Assignment) -> None:
        self.journal.put_agent_state(
            {
                SEQ_KEY: assignment.seq,
                "assignment_digest": assignment.bundle_digest,
                "assignment_rollout": assignment.rollout_id,
                "assignment_at": self.clock.now(),
            }
        )

    def _active_digest(self) -> str | None:
        pointer = read_pointer(self.config.state_dir)
        return pointer.digest if pointer else None

    def _refused(self, seq: int, digest: str, reason: str, message: str) -> ApplyOutcome:
        log_event("assignment_rejected", logging.WARNING, seq=seq, reason=reason, message=message)
        body = {"seq": seq, "bundle_digest": digest, "message": message, "source": "assignment"}
        self.outbox.put(Report("rejection", "", self.clock.now(), "rejected", reason, body))
        return ApplyOutcome(seq, digest, False, reason, message)
