"""The ``stanch.v1.Admin`` servicer: what ``opsctl`` calls. Each method only delegates.

Domain errors become status codes in one place (``status_codes.api_errors``); records become
messages in one place (``convert``). Authentication is the interceptor in ``server``.
"""

from __future__ import annotations

from typing import Any

import grpc

from controlplane import convert, fleet_view, publish, rollout_admin
from controlplane.admin_approvals import ApprovalsAdmin
from controlplane.auth import actor
from controlplane.plane import ControlPlane
from controlplane.rollout_admin import RolloutRequest
from controlplane.selectors import matches
from controlplane.status_codes import api_errors
from controlplane.storage.base import AgentRecord, BundleRecord, ReportQuery, RolloutRecord
from controlplane.waves import DEFAULT_WAVES
from stanch.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000


class AdminService(ApprovalsAdmin, admin_pb2_grpc.AdminServicer):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.db = plane.db
        self.run = plane.store.run

    # ---- bundles -----------------------------------------------------------------------------

    @api_errors
    async def PublishBundle(  # noqa: N802
        self, request: admin_pb2.PublishBundleRequest, context: Context
    ) -> admin_pb2.BundleInfo:
        published = await self.run(self.db.bundles)
        now = self.plane.clock.now()
        result = publish.check(request.data, self.plane.trust, now, published)
        if not result.already:
            await self.run(self.db.put_bundle, result.record, request.data)
        return convert.bundle_info(result.record, result.already, result.warnings)

    @api_errors
    async def ListBundles(  # noqa: N802
        self, request: admin_pb2.ListBundlesRequest, context: Context
    ) -> admin_pb2.ListBundlesResponse:
        bundles = await self.run(self.db.bundles, request.name)
        return admin_pb2.ListBundlesResponse(bundles=[convert.bundle_info(b) for b in bundles])

    # ---- rollouts ----------------------------------------------------------------------------

    @api_errors
    async def StartRollout(  # noqa: N802
        self, request: admin_pb2.StartRolloutRequest, context: Context
    ) -> admin_pb2.RolloutStatus:
        req = RolloutRequest(
            bundle=request.bundle,
            selector=dict(request.selector),
            waves=list(request.waves) or DEFAULT_WAVES,
            bake_seconds=request.bake_seconds,
            gates=dict(request.gates),
            gate_modes=dict(request.gate_modes),
            by=actor(request.by),
        )
        return await self._status(await rollout_admin.start(self.plane.engine, req))

    @api_errors
    async def GetRollout(  # noqa: N802
        self, request: admin_pb2.GetRolloutRequest, context: Context
    ) -> admin_pb2.RolloutStatus:
        return await self._status(await rollout_admin.find(self.plane.engine, request.id))

    @api_errors
    async def ListRollouts(  # noqa: N802
        self, request: admin_pb2.ListRolloutsRequest, context: Context
    ) -> admin_pb2.ListRolloutsResponse:
        rollouts = await self.run(self.db.rollouts, request.active_only)
        agents = await self.run(self.db.agents, False)  # labels only: no health JSON
        return admin_pb2.ListRolloutsResponse(
            rollouts=[await self._status(r, agents) for r in rollouts]
        )

    @api_errors
    async def ControlRollout(  # noqa: N802
        self, request: admin_pb2.ControlRolloutRequest, context: Context
    ) -> admin_pb2.RolloutStatus:
        rollout = await rollout_admin.control(
            self.plane.engine, request.id, request.action, request.reason, actor(request.by)
        )
        return await self._status(rollout)

    async def _status(
        self, rollout: RolloutRecord, agents: list[AgentRecord] | None = None
    ) -> admin_pb2.RolloutStatus:
        bundle: BundleRecord | None = await self.run(self.db.bundle, rollout.bundle_digest)
        hosts = await self.run(self.db.rollout_hosts, rollout.id)
        if agents is None:
            agents = await self.run(self.db.agents, False)  # labels only: no health JSON
        matching = sum(1 for a in agents if matches(rollout.selector, a.labels))
        return convert.rollout_status(rollout, bundle, hosts, matching)

    # ---- kill switch -------------------------------------------------------------------------

    @api_errors
    async def Pause(  # noqa: N802
        self, request: admin_pb2.PauseRequest, context: Context
    ) -> admin_pb2.PauseResponse:
        record, reached = await self.plane.killswitch.pause(
            request.policy,
            dict(request.selector),
            request.for_seconds,
            request.reason,
            actor(request.by),
        )
        return admin_pb2.PauseResponse(pauses=[convert.pause_info(record)], reached=reached)

    @api_errors
    async def Resume(  # noqa: N802
        self, request: admin_pb2.ResumeRequest, context: Context
    ) -> admin_pb2.PauseResponse:
        cleared, reached = await self.plane.killswitch.resume(
            request.policy, dict(request.selector)
        )
        return admin_pb2.PauseResponse(
            pauses=[convert.pause_info(p) for p in cleared], reached=reached
        )

    @api_errors
    async def ListPauses(  # noqa: N802
        self, request: admin_pb2.ListPausesRequest, context: Context
    ) -> admin_pb2.ListPausesResponse:
        pauses = await self.run(self.db.pauses, self.plane.clock.now())
        return admin_pb2.ListPausesResponse(pauses=[convert.pause_info(p) for p in pauses])

    # ---- fleet, reports, analytics -----------------------------------------------------------

    @api_errors
    async def ListAgents(  # noqa: N802
        self, request: admin_pb2.ListAgentsRequest, context: Context
    ) -> admin_pb2.ListAgentsResponse:
        views = await fleet_view.agents(self.plane, dict(request.selector))
        return admin_pb2.ListAgentsResponse(
            agents=[convert.agent_info(v.agent, v.assigned, v.last_seen) for v in views]
        )

    @api_errors
    async def ListReports(  # noqa: N802
        self, request: admin_pb2.ListReportsRequest, context: Context
    ) -> admin_pb2.ListReportsResponse:
        query = ReportQuery(
            host=request.host,
            policy=request.policy,
            kind=request.kind,
            since=request.since,
            limit=min(request.limit or DEFAULT_LIMIT, MAX_LIMIT),
        )
        reports = await self.run(self.db.reports, query)
        return admin_pb2.ListReportsResponse(reports=[convert.report_info(r) for r in reports])

    @api_errors
    async def Explain(  # noqa: N802
        self, request: admin_pb2.ExplainRequest, context: Context
    ) -> admin_pb2.ExplainResponse:
        found = await fleet_view.explain(
            self.plane, request.host, request.policy, request.limit or 20
        )
        view = found.agent
        return admin_pb2.ExplainResponse(
            agent=convert.agent_info(view.agent, view.assigned, view.last_seen) if view else None,
            reports=[convert.report_info(r) for r in found.reports],
            pauses=[convert.pause_info(p) for p in found.pauses],
        )

    @api_errors
    async def Pareto(  # noqa: N802
        self, request: admin_pb2.ParetoRequest, context: Context
    ) -> admin_pb2.ParetoResponse:
        policies, hosts = await fleet_view.toil(self.plane, request.since, request.limit or 20)
        return admin_pb2.ParetoResponse(
            policies=[convert.pareto_row(r) for r in policies],
            hosts=[convert.pareto_row(r) for r in hosts],
        )

    @api_errors
    async def ListEscalations(  # noqa: N802
        self, request: admin_pb2.ListEscalationsRequest, context: Context
    ) -> admin_pb2.ListEscalationsResponse:
        found = await self.run(self.db.escalations, request.since)
        return admin_pb2.ListEscalationsResponse(escalations=[convert.escalation(e) for e in found])
