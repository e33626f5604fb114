"""The role table covers every operator RPC in the .proto files, and nothing else."""

from __future__ import annotations

from controlplane import roles
from stanch.v1 import admin_pb2, fleet_pb2, pki_pb2, security_pb2

PROTECTED = [
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
    security_pb2.DESCRIPTOR.services_by_name["Security"],
    pki_pb2.DESCRIPTOR.services_by_name["Pki"],
]
OPEN = [
    fleet_pb2.DESCRIPTOR.services_by_name["Fleet"],
    pki_pb2.DESCRIPTOR.services_by_name["Enrollment"],
]


def names(service: object) -> set[str]:
    return {f"/{service.full_name}/{m.name}" for m in service.methods}  # type: ignore[attr-defined]


def test_every_operator_method_has_an_explicit_role_and_no_entry_is_stale() -> None:
    served = set().union(*(names(s) for s in PROTECTED))
    assert served == set(roles.METHOD_ROLES), "list each new RPC in controlplane/roles.py"
    assert all(roles.is_protected(m) for m in served)
    for role, mutating in roles.METHOD_ROLES.values():
        assert role in ("viewer", "operator", "admin") and isinstance(mutating, bool)


def test_agent_health_and_reflection_are_open_and_unknown_methods_need_admin() -> None:
    for service in OPEN:
        assert not any(roles.is_protected(m) for m in names(service))
    assert not roles.is_protected("/grpc.health.v1.Health/Check")
    assert not roles.is_protected("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert roles.is_protected("/stanch.v1.Future/Anything")
    assert roles.requirement("/stanch.v1.Future/Anything") == ("admin", True)
    assert roles.requirement("/stanch.v1.Admin/NewMethod") == ("admin", True)


def test_reads_are_viewer_and_nothing_mutating_is_viewer() -> None:
    for method, (role, mutating) in roles.METHOD_ROLES.items():
        short = method.rsplit("/", 1)[1]
        if short.startswith(("List", "Get", "Verify")) or short in ("Explain", "Pareto"):
            assert (role, mutating) == ("viewer", False) or short == "ListTokens", method
        if mutating:
            assert role in ("operator", "admin"), method
    assert roles.requirement("/stanch.v1.Admin/StartRollout") == ("operator", True)
    assert roles.requirement("/stanch.v1.Security/CreateToken") == ("admin", True)
