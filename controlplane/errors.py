"""The control plane's exception hierarchy: what went wrong, in words an operator can act on.

Each class is a kind of failure the Admin API maps to one gRPC status code
(``controlplane.status_codes``), and ``opsctl`` maps back to an exit code: the message crosses
the wire as is, so it must say what was wrong and what to do, never carry a traceback or a secret.
"""

from __future__ import annotations

from agent.errors import StanchError


class ControlPlaneError(StanchError):
    """Base class for every error the control plane raises on purpose."""


class InvalidRequest(ControlPlaneError):
    """The request itself is malformed (a bad selector, wave list or gate)."""


class NotFound(ControlPlaneError):
    """The named bundle, rollout or host does not exist."""


class Conflict(ControlPlaneError):
    """Refused because it contradicts current state (an overlapping active rollout)."""


class Refused(ControlPlaneError):
    """Well-formed but not acceptable (an unsigned, tampered, expired or older bundle)."""
