"""Which role each operator RPC needs, and whether it changes anything (then it is audited).

One explicit table, read by the one interceptor (``controlplane.auth_interceptor``); handlers
never check roles themselves. Fail closed twice: every service not named in :data:`OPEN_PREFIXES`
is protected, and a protected method missing from :data:`METHOD_ROLES` needs admin and is
audited as mutating. A new RPC therefore works for admins only until it is listed here.

- viewer: read anything.
- operator: change what runs (publish, roll out, pause, approve).
- admin: who may do that (tokens, enrollment, host revocation, keys).
"""

from __future__ import annotations

OPEN_PREFIXES: tuple[str, ...] = (
    "/stanch.v1.Fleet/",  # agents: authenticated by their certificate (controlplane.identity)
    "/stanch.v1.Enrollment/",  # agents: a single-use bootstrap token in the request
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Services the operator interceptor leaves alone; everything else needs a principal."""

ADMIN = "/stanch.v1.Admin/"
SECURITY = "/stanch.v1.Security/"
PKI = "/stanch.v1.Pki/"

METHOD_ROLES: dict[str, tuple[str, bool]] = {
    # bundles
    ADMIN + "PublishBundle": ("operator", True),
    ADMIN + "ListBundles": ("viewer", False),
    # rollouts
    ADMIN + "StartRollout": ("operator", True),
    ADMIN + "GetRollout": ("viewer", False),
    ADMIN + "ListRollouts": ("viewer", False),
    ADMIN + "ControlRollout": ("operator", True),
    # kill switch
    ADMIN + "Pause": ("operator", True),
    ADMIN + "Resume": ("operator", True),
    ADMIN + "ListPauses": ("viewer", False),
    # fleet, reports, analytics
    ADMIN + "ListAgents": ("viewer", False),
    ADMIN + "ListReports": ("viewer", False),
    ADMIN + "Explain": ("viewer", False),
    ADMIN + "Pareto": ("viewer", False),
    ADMIN + "ListEscalations": ("viewer", False),
    # approvals (graduated mode: a human confirms)
    ADMIN + "ListApprovals": ("viewer", False),
    ADMIN + "DecideApproval": ("operator", True),
    # operator access and the audit trail
    SECURITY + "CreateToken": ("admin", True),
    SECURITY + "ListTokens": ("admin", False),
    SECURITY + "RevokeToken": ("admin", True),
    SECURITY + "SetTokenRole": ("admin", True),
    SECURITY + "ListAudit": ("viewer", False),
    SECURITY + "VerifyAudit": ("viewer", False),
    # host identity
    PKI + "CreateEnrollmentToken": ("admin", True),
    PKI + "RevokeHost": ("admin", True),
    PKI + "ListCertificates": ("viewer", False),
    PKI + "ListRevokedHosts": ("viewer", False),
    PKI + "RevokeCertificate": ("admin", True),
    PKI + "UnrevokeHost": ("admin", True),
}

UNKNOWN = ("admin", True)


def is_protected(method: str) -> bool:
    return not method.startswith(OPEN_PREFIXES)


def requirement(method: str) -> tuple[str, bool]:
    """(needed role, mutating) for a full method name such as ``/stanch.v1.Admin/Pause``."""
    return METHOD_ROLES.get(method, UNKNOWN)
