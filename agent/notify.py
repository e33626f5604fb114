"""Escalation delivery: when automation gives up, a human hears about it, even across restarts.

Lifecycle. The runner builds a payload (``build_payload``) and enqueues one journal row per sink
(``Journal.enqueue_notification``, or ``Notifier.enqueue`` which also wakes the thread). The row is
committed before anything is sent, so a crash or restart loses nothing: a new ``Notifier`` over the
same journal picks up every ``pending`` row. ``Notifier.deliver_due`` makes one attempt per due row
and records the result on the row: ``delivered``; ``pending`` again with ``next_at`` pushed back
exponentially (with jitter, so a fleet does not retry in lockstep); or ``failed`` when the error is
permanent or ``max_attempts`` is spent. Failed rows stay in the journal, visible in status, until
``Journal.prune``.

Delivery is at least once: a crash between a successful send and the journal update sends the row
again after restart. Receivers can deduplicate on ``correlation_id``.

One bad sink must not starve the others. Sinks are bounded by their timeouts, and once a sink fails
with a retryable error in a pass, its other due rows are deferred to the same backoff instead of
each waiting out the same timeout.

Resolves. When an escalated problem clears, the runner queues a ``resolve_payload`` with
``Notifier.enqueue_resolve``; it goes only to sinks configured with ``send_resolved`` (PagerDuty
closes the incident, Slack posts a follow-up) and is delivered like any other row, retries and all.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from agent.journal import Journal, NotificationRow
from agent.payload import build_payload, clip, clip_tree, resolve_payload
from agent.policy.fields import ErrorSink, Fields
from agent.redact import DEFAULT_REDACTOR, Redactor
from agent.secrets import refs_of, resolve_all
from agent.sinks import SINK_TYPES, DeliveryError, Sink, sends_resolved

__all__ = [
    "Notifier",
    "SinkConfig",
    "build_payload",
    "build_sinks",
    "clip",
    "clip_tree",
    "parse_sinks",
    "resolve_payload",
    "sink_secrets",
]
"""The payload helpers live in ``agent.payload``; they are re-exported for existing callers."""

log = logging.getLogger("stanch.agent.notify")

MAX_SLEEP = 30.0
"""The thread re-reads the queue at least this often, whatever ``next_notification_at`` says."""
MIN_SLEEP = 0.05
BATCH = 20
MAX_ROWS_PER_PASS = 500
ERROR_LIMIT = 1000


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkConfig:
    """One named sink from the agent config: its type name and that type's typed config."""

    name: str
    type: str
    config: Any


def parse_sinks(raw: object, path: str, sink: ErrorSink) -> dict[str, SinkConfig]:
    """Read ``{name: {type: ..., <type keys>}}``. Every problem is reported to ``sink`` with its
    full path (``sinks.oncall.ulr: unknown key``); broken entries are left out of the result."""
    f = Fields(raw, path, sink)
    out: dict[str, SinkConfig] = {}
    for name in list(f.raw):
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            f.error(str(name), "sink names use letters, digits, '_' and '-'")
            continue
        entry = f.section(name)
        if not entry.ok:
            continue
        kind = entry.choice("type", SINK_TYPES)
        if kind is None:
            continue  # Reported; the other keys cannot be judged without a type.
        config = kind.parse(entry)
        entry.done()
        out[name] = SinkConfig(name, kind.name, config)
    return out


def sink_secrets(
    configs: Mapping[str, SinkConfig], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The secret values (from ``*_file`` / ``*_env``) the sinks can read now, for the
    redactor: a routing key or webhook URL never shows up in output, journal rows or pages."""
    return resolve_all((ref for c in configs.values() for _, ref in refs_of(c.config)), environ)


def build_sinks(configs: Mapping[str, SinkConfig]) -> dict[str, Sink]:
    """Make the sinks. Cheap and side-effect free: nothing connects or opens files until send."""
    return {name: SINK_TYPES[c.type].build(c.config) for name, c in configs.items()}


# ---- delivery --------------------------------------------------------------------------------


class Notifier:
    """Delivers the journal's notification queue through the configured sinks.

    ``deliver_due`` is the whole algorithm and may be called directly (tests drive it with a
    FakeClock); ``start`` runs it on a daemon thread that sleeps until the next row is due, at
    most ``MAX_SLEEP``, or until ``wake``. Stop the thread before closing the journal.
    """

    def __init__(
        self,
        journal: Journal,
        sinks: Mapping[str, Sink],
        clock: Clock,
        max_attempts: int = 12,
        base_backoff: float = 2.0,
        max_backoff: float = 3600.0,
        jitter: Callable[[], float] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.journal = journal
        self.redactor = redactor or DEFAULT_REDACTOR
        """Applied to every delivery error before the journal row and the log line get it (a
        command sink's stderr, a receiver's echoed body); ``AgentConfig.redactor`` in the agent."""
        self.sinks = dict(sinks)
        self.clock = clock
        self.max_attempts = max(1, max_attempts)
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.jitter = jitter or (lambda: random.uniform(0.8, 1.2))
        self.observer: Callable[[str, str], None] | None = None
        """Told ``(sink, result)`` after each attempt, result one of delivered, retry, failed
        (the agent's metrics counter); set it before ``start``."""
        self._pass = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def enqueue(self, payload: Mapping[str, Any], sinks: Iterable[str]) -> list[int]:
        """Queue ``payload`` once per sink name (durably) and wake the delivery thread."""
        at = self.clock.now()
        ids = [self.journal.enqueue_notification(name, payload, at) for name in sinks]
        self.wake()
        return ids

    def enqueue_resolve(self, payload: Mapping[str, Any], sinks: Iterable[str]) -> list[int]:
        """Queue a ``resolve_payload`` for those of ``sinks`` that want resolves
        (``send_resolved``: PagerDuty and Slack by default, a webhook when it opts in). Call it
        when a problem that was escalated clears; other sinks never see the event."""
        wanted = [name for name in sinks if sends_resolved(self.sinks.get(name))]
        return self.enqueue(payload, wanted) if wanted else []

    def deliver_due(self) -> int:
        """One attempt for every row due now; returns how many were delivered."""
        return self._deliver_due(stoppable=False)

    def _deliver_due(self, stoppable: bool) -> int:
        with self._pass:
            now = self.clock.now()
            delivered = 0
            seen: set[int] = set()
            down: dict[str, str] = {}  # Sinks that failed retryably in this pass -> error.
            while len(seen) < MAX_ROWS_PER_PASS:
                rows = [r for r in self.journal.due_notifications(now, BATCH) if r.id not in seen]
                for row in rows:
                    if stoppable and self._stop.is_set():
                        return delivered  # Shutting down: the rest stay queued for next start.
                    seen.add(row.id)
                    delivered += self._attempt(row, down)
                if not rows:
                    break
            return delivered

    def _attempt(self, row: NotificationRow, down: dict[str, str]) -> int:
        sink = self.sinks.get(row.sink)
        if sink is None:
            known = ", ".join(sorted(self.sinks)) or "none"
            error = f"no sink named {row.sink!r} is configured (known: {known}); not delivered"
            self._record(row, "failed", error)
            return 0
        if row.sink in down:
            self._retry_or_fail(row, f"not tried, sink failed earlier: {down[row.sink]}", True)
            return 0
        try:
            sink.send(row.payload)
        except DeliveryError as exc:
            if exc.retryable:
                down[row.sink] = exc.message
            self._retry_or_fail(row, exc.message, exc.retryable)
            return 0
        except Exception as exc:  # A sink bug must not stop the queue; keep the row.
            down[row.sink] = f"unexpected {type(exc).__name__}"
            self._retry_or_fail(row, f"unexpected {type(exc).__name__}: {exc}", True)
            return 0
        self._record(row, "delivered", None)
        return 1

    def _retry_or_fail(self, row: NotificationRow, error: str, retryable: bool) -> None:
        attempts = row.attempts + 1
        if not retryable:
            self._record(row, "failed", f"permanent: {error}")
        elif attempts >= self.max_attempts:
            self._record(row, "failed", f"gave up after {attempts} attempts: {error}")
        else:
            delay = min(self.max_backoff, self.base_backoff * 2.0 ** min(row.attempts, 60))
            self._record(row, "pending", error, self.clock.now() + delay * self.jitter())

    def _record(
        self, row: NotificationRow, status: str, error: str | None, next_at: float | None = None
    ) -> None:
        error = self.redactor.redact(error)[:ERROR_LIMIT] if error else None
        self.journal.mark_notification(row.id, status, self.clock.now(), next_at, error)
        level = logging.INFO if status != "failed" else logging.WARNING
        event = f"notification_{'retry' if status == 'pending' else status}"
        fields = {"notification": row.id, "sink": row.sink, "attempts": row.attempts + 1}
        if error:
            fields["error"] = error
        log.log(level, event, extra={"event": event, "fields": fields})
        if self.observer is not None:
            self.observer(row.sink, "retry" if status == "pending" else status)

    # ---- the delivery thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stanch-notifier", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Deliver now rather than at the next scheduled time (call after enqueueing)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the thread after its current attempt; True when it has exited."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Clear before the pass: a wake() during delivery makes the wait below return at once.
            self._wake.clear()
            try:
                self._deliver_due(stoppable=True)
                delay = self._until_next()
            except Exception:  # The journal is unavailable (disk full, locked); try later.
                log.exception("notify_pass_failed", extra={"event": "notify_pass_failed"})
                delay = MAX_SLEEP
            self._wake.wait(delay)

    def _until_next(self) -> float:
        next_at = self.journal.next_notification_at()
        if next_at is None:
            return MAX_SLEEP
        return max(MIN_SLEEP, min(MAX_SLEEP, next_at - self.clock.now()))
