"""Put every service on the gRPC server: Fleet, Enrollment (agents); Admin, Security, Pki
(operators); health and reflection.

Reflection lists the services by their full names, so ``grpcurl -plaintext HOST:PORT list`` and
``grpc_health_probe`` work against a running control plane without the .proto files.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import (  # type: ignore[import-untyped]  # grpcio-health-checking ships no types
    health,
    health_pb2,
    health_pb2_grpc,
)
from grpc_reflection.v1alpha import (  # type: ignore[import-untyped]  # grpcio-reflection: no types
    reflection,
)

from controlplane.admin_service import AdminService
from controlplane.enroll_service import EnrollmentService
from controlplane.fleet_service import FleetService
from controlplane.pki_service import PkiService
from controlplane.plane import ControlPlane
from controlplane.security_service import SecurityService
from stanch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    pki_pb2,
    pki_pb2_grpc,
    security_pb2,
    security_pb2_grpc,
)


class Health:
    """The health service's view of this process: SERVING while it takes agents and operators;
    NOT_SERVING from the start of a shutdown, so load balancers drain it first."""

    def __init__(self, servicer: Any, names: tuple[str, ...]) -> None:
        self.servicer = servicer
        self.names = names

    async def serving(self, up: bool) -> None:
        if not up:
            await self.servicer.enter_graceful_shutdown()
            return
        for name in ("", *self.names):
            await self.servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def register(server: grpc.aio.Server, plane: ControlPlane, enrollment: EnrollmentService) -> Health:
    """Add every service to ``server``; return its health switch."""
    # The generated add_*_to_server functions carry no annotations (protoc output).
    fleet_pb2_grpc.add_FleetServicer_to_server(FleetService(plane), server)  # type: ignore[no-untyped-call]
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(plane), server)  # type: ignore[no-untyped-call]
    security_pb2_grpc.add_SecurityServicer_to_server(SecurityService(plane), server)  # type: ignore[no-untyped-call]
    pki_pb2_grpc.add_EnrollmentServicer_to_server(enrollment, server)  # type: ignore[no-untyped-call]
    pki_pb2_grpc.add_PkiServicer_to_server(PkiService(plane), server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        security_pb2.DESCRIPTOR.services_by_name["Security"].full_name,
        pki_pb2.DESCRIPTOR.services_by_name["Enrollment"].full_name,
        pki_pb2.DESCRIPTOR.services_by_name["Pki"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return Health(health_servicer, names[:5])
