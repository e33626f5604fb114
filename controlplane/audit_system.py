"""The control plane's own actions on the audit record: what it changed without an operator.

Operators' calls are audited by the interceptor and the console. The control plane also acts on
its own: a health gate halts a rollout and rolls its hosts back, the fleet storm breaker pauses a
policy fleet-wide, a replica takes the rollout-driver lease over from another. Those land in the
same hash-chained log (``controlplane.audit``) under one actor, :data:`SYSTEM`, with the reason
and the values that decided it in ``detail``, so "who paused this policy at 03:12?" has an answer
in ``opsctl audit list`` whether the answer is a person or the control plane.

Recording is best effort for the action itself: a failed audit write is logged loudly (as the
interceptor does) but never stops a rollback or a pause, which protect the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from controlplane.audit import AuditLog
from controlplane.auth import Principal

log = logging.getLogger("stanch.cp.audit")
SYSTEM = Principal("control-plane", "admin", "system")
"""The actor of every automatic action (role admin: it may do what it did)."""


async def record_automatic(
    audit: AuditLog, action: str, target: str, source: str, detail: Mapping[str, Any]
) -> None:
    """Append one automatic action (result ``ok``: it was done) as :data:`SYSTEM`."""
    try:
        await audit.record(SYSTEM, action, target, source, "ok", detail)
    except Exception:  # the action already happened; losing its record must not undo or stop it
        log.exception("AUDIT WRITE FAILED for automatic %s on %s (%s)", action, target, source)
