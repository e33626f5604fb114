"""The console's pages: Fleet, Rollouts (and its live fragment), Host, Toil, Approvals.

Each handler asks the service layer (``fleet_view``, ``approvals``, ``convert`` for rollout
progress) and hands plain values to a template; no handler touches storage directly. The
``fleet_view`` reads go through the console's read-only storage thread (``console.reads``), so
a page does not queue behind the plane's writes. Query parameters are validated here and a bad
one is shown on the page, never a traceback.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent.duration import parse_duration
from controlplane import approvals, convert, fleet_view
from controlplane.console import charts, words
from controlplane.console.app import Console
from controlplane.console.sessions import Session
from controlplane.errors import ControlPlaneError, NotFound
from controlplane.selectors import format_selector, parse_selector

PAGE_SIZE = 100
WINDOWS = ("1h", "24h", "7d", "30d", "90d")
HOSTS_SHOWN = 24
"""Host names listed per wave; a wave of 2,500 hosts shows the first ones and a count."""


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, int(text or default))
    except ValueError:
        return default


async def fleet(console: Console, request: Request, session: Session) -> Response:
    text = request.query_params.get("selector", "").strip()
    error = ""
    try:
        selector = parse_selector(text)
    except ControlPlaneError as exc:
        selector, error = {}, str(exc)
    page = _int(request.query_params.get("page"), 1) or 1
    found = await fleet_view.fleet_page(
        console.plane, selector, (page - 1) * PAGE_SIZE, PAGE_SIZE, reads=console.reads
    )
    pauses = await fleet_view.pauses(console.plane, reads=console.reads)
    pages = max(1, -(-found.total // PAGE_SIZE))
    return console.render(
        request,
        "fleet.html",
        {
            "title": "Fleet",
            "fleet": found,
            "selector": text,
            "selector_text": format_selector(selector),
            "error": error,
            "page": min(page, pages),
            "pages": pages,
            "pauses": pauses,
        },
        session=session,
    )


async def _rollouts_context(console: Console) -> dict[str, object]:
    views = await fleet_view.rollouts(console.plane, reads=console.reads)
    shown = []
    for v in views:
        status = convert.rollout_status(v.rollout, v.bundle, v.hosts, v.matching)
        by_wave: dict[int, list[str]] = {}
        for h in sorted(v.hosts, key=lambda h: h.host_id):
            by_wave.setdefault(h.wave, []).append(f"{h.host_id} ({h.status})")
        shown.append({"status": status, "hosts": by_wave, "limit": HOSTS_SHOWN})
    return {"title": "Rollouts", "rollouts": shown}


async def rollouts(console: Console, request: Request, session: Session) -> Response:
    context = await _rollouts_context(console)
    return console.render(request, "rollouts.html", context, session=session)


async def rollouts_live(console: Console, request: Request, session: Session) -> Response:
    """The rollout list alone: the page's script swaps it in every second or two."""
    context = await _rollouts_context(console)
    return console.render(request, "rollouts_list.html", context, session=session)


async def host(console: Console, request: Request, session: Session) -> Response:
    host_id = request.path_params["host"]
    policy = request.query_params.get("policy", "").strip()[:200]
    try:
        found = await fleet_view.explain(
            console.plane, host_id, policy, limit=30, reads=console.reads
        )
    except NotFound as exc:
        return console.render(
            request, "error.html", {"message": str(exc), "title": host_id}, 404, session
        )
    lines = [words.line(r) for r in found.reports]
    policies = sorted({r.policy for r in found.reports if r.policy})
    if not policy and found.agent is not None:
        firing = found.agent.agent.health.get("firing_policies") or []
        policies = sorted(set(policies) | {str(p) for p in firing})
    runbook = ""
    if policy and found.agent is not None:
        runbook = words.safe_link(
            await fleet_view.runbook(
                console.plane, found.agent.agent.bundle_digest, policy, reads=console.reads
            )
        )
    return console.render(
        request,
        "host.html",
        {
            "title": host_id,
            "host": host_id,
            "policy": policy,
            "view": found.agent,
            "lines": lines,
            "pauses": found.pauses,
            "policies": policies,
            "runbook": runbook,
        },
        session=session,
    )


async def toil(console: Console, request: Request, session: Session) -> Response:
    window = request.query_params.get("window", "7d")
    if window not in WINDOWS:
        window = "7d"
    since = console.plane.clock.now() - parse_duration(window)
    policies, hosts = await fleet_view.toil(console.plane, since, limit=15, reads=console.reads)
    return console.render(
        request,
        "toil.html",
        {
            "title": "Toil",
            "window": window,
            "windows": WINDOWS,
            "chart": charts.pareto_bars(policies),
            "host_chart": charts.pareto_bars(hosts, by_host=True),
        },
        session=session,
    )


async def approvals_page(console: Console, request: Request, session: Session) -> Response:
    waiting = await approvals.pending(console.plane, reads=console.reads)
    context = {"title": "Approvals", "pending": waiting}
    return console.render(request, "approvals.html", context, session=session)


async def approvals_live(console: Console, request: Request, session: Session) -> Response:
    """The pending list alone, swapped in every two seconds by the page's script."""
    waiting = await approvals.pending(console.plane, reads=console.reads)
    return console.render(request, "approvals_list.html", {"pending": waiting}, session=session)
