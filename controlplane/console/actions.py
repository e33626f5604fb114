"""The console's actions: approve or reject a pending remediation, pause or resume a policy or a
selector for a while, pause, resume or abort a rollout.

Each is one POST to ``/act`` with the action's name and its fields. The first POST only shows a
confirmation page (what exactly will happen, to which hosts); the action runs when that page is
confirmed (``confirmed=yes``). Both steps pass :func:`access.checked` (session, same origin, CSRF
token) and need the ``operator`` role, checked here on the server whatever the page showed; a
refused attempt is written to the audit log too. The action calls the same service function the
Admin API calls (``approvals.decide``, ``plane.killswitch``, ``rollout_admin.control``) and is
audited with the Admin method's name, source ``console``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from agent.duration import format_duration, parse_duration
from controlplane import approvals, rollout_admin
from controlplane.audit import ACTIONS as AUDIT_ACTIONS
from controlplane.auth import Principal, allows
from controlplane.console.access import Refusal, checked
from controlplane.console.app import Console, log
from controlplane.errors import ControlPlaneError, InvalidRequest
from controlplane.selectors import format_selector, parse_selector
from controlplane.status_codes import code_for

NEEDED_ROLE = "operator"
MAX_TTL = 7 * 86400.0
FIELDS = ("host", "policy", "selector", "ttl", "reason", "rollout")


@dataclass(frozen=True)
class Action:
    method: str
    """The Admin RPC it stands for, as the audit log names it."""
    title: str
    describe: Callable[[FormData], str]
    target: Callable[[FormData], str]
    run: Callable[[Console, Principal, FormData], Awaitable[str]]
    back: str
    """The page to return to."""
    danger: bool = False


def _f(form: FormData, name: str) -> str:
    return str(form.get(name, "")).strip()[:500]


def _ttl(form: FormData, default: str = "") -> float:
    text = _f(form, "ttl") or default
    if not text:
        return 0.0
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise InvalidRequest(f"duration {text!r}: use 30m, 2h or 1d") from None
    if seconds <= 0 or seconds > MAX_TTL:
        raise InvalidRequest(f"duration {text!r}: between 1s and {format_duration(MAX_TTL)}")
    return seconds


async def _decide(console: Console, who: Principal, form: FormData, approve: bool) -> str:
    result = await approvals.decide(
        console.plane, _f(form, "host"), _f(form, "policy"), approve, who.name, None
    )
    verb = "approved" if approve else "rejected"
    said = (
        f"the agent confirmed ({result.outcome})"
        if result.confirmed
        else "sent; the agent has not confirmed yet"
    )
    text = f"{verb} {result.policy} on {result.host_id}: {said}"
    return text + (f"; {result.message}" if result.message else "")


async def _pause(console: Console, who: Principal, form: FormData) -> str:
    selector = parse_selector(_f(form, "selector"))
    seconds = _ttl(form, "1h")
    reason = _f(form, "reason") or "paused from the console"
    record, reached = await console.plane.killswitch.pause(
        _f(form, "policy"), selector, seconds, reason, who.name
    )
    return (
        f"paused {record.scope} on {format_selector(selector)} for "
        f"{format_duration(seconds)}; {reached} connected agent(s) told"
    )


async def _resume(console: Console, who: Principal, form: FormData) -> str:
    selector = parse_selector(_f(form, "selector"))
    cleared, reached = await console.plane.killswitch.resume(_f(form, "policy"), selector)
    return f"resumed: {len(cleared)} pause(s) lifted; {reached} connected agent(s) told"


def _rollout(action: str) -> Callable[[Console, Principal, FormData], Awaitable[str]]:
    async def run(console: Console, who: Principal, form: FormData) -> str:
        reason = _f(form, "reason")
        done = await rollout_admin.control(
            console.plane.engine, _f(form, "rollout"), action, reason, who.name
        )
        return f"rollout {done.id}: {done.state}"

    return run


def _scope(form: FormData) -> str:
    return f"policy {_f(form, 'policy') or '* (every policy)'} on " + format_selector(
        parse_selector(_f(form, "selector"))
    )


def _pause_target(form: FormData) -> str:
    """As the gRPC audit names a Pause/Resume target: the policy, else the selector."""
    if _f(form, "policy"):
        return f"policy={_f(form, 'policy')}"
    selector = parse_selector(_f(form, "selector"))
    return "selector=" + ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def audit_action(action: Action, name: str) -> str:
    """The audit log's name for it, the same as for the Admin call (``fleet.pause``...)."""
    found = AUDIT_ACTIONS.get(action.method, action.method.rsplit("/", 1)[-1])
    return found.format(action=name.removeprefix("rollout-"))


ACTIONS: dict[str, Action] = {
    "approve": Action(
        "/stanch.v1.Admin/DecideApproval",
        "Approve remediation",
        lambda f: f"Let the agent on {_f(f, 'host')} run the remediation of {_f(f, 'policy')}.",
        lambda f: f"host={_f(f, 'host')}",
        lambda c, p, f: _decide(c, p, f, True),
        "/approvals",
    ),
    "reject": Action(
        "/stanch.v1.Admin/DecideApproval",
        "Reject remediation",
        lambda f: f"Refuse the remediation of {_f(f, 'policy')} on {_f(f, 'host')}.",
        lambda f: f"host={_f(f, 'host')}",
        lambda c, p, f: _decide(c, p, f, False),
        "/approvals",
        danger=True,
    ),
    "pause": Action(
        "/stanch.v1.Admin/Pause",
        "Pause automation",
        lambda f: (
            f"Stop remediating {_scope(f)} for {_f(f, 'ttl') or '1h'}"
            + (f" ({_f(f, 'reason')})" if _f(f, "reason") else "")
            + ". Agents keep checking and reporting."
        ),
        _pause_target,
        _pause,
        "/",
        danger=True,
    ),
    "resume": Action(
        "/stanch.v1.Admin/Resume",
        "Resume automation",
        lambda f: f"Lift the central pause of {_scope(f)}.",
        _pause_target,
        _resume,
        "/",
    ),
    "rollout-pause": Action(
        "/stanch.v1.Admin/ControlRollout",
        "Pause rollout",
        lambda f: f"Hold rollout {_f(f, 'rollout')} where it is (no new wave starts).",
        lambda f: f"id={_f(f, 'rollout')}",
        _rollout("pause"),
        "/rollouts",
    ),
    "rollout-resume": Action(
        "/stanch.v1.Admin/ControlRollout",
        "Resume rollout",
        lambda f: f"Continue rollout {_f(f, 'rollout')}; the current wave's bake starts over.",
        lambda f: f"id={_f(f, 'rollout')}",
        _rollout("resume"),
        "/rollouts",
    ),
    "rollout-abort": Action(
        "/stanch.v1.Admin/ControlRollout",
        "Abort rollout",
        lambda f: f"Abort rollout {_f(f, 'rollout')} and roll every updated host back.",
        lambda f: f"id={_f(f, 'rollout')}",
        _rollout("abort"),
        "/rollouts",
        danger=True,
    ),
}


def endpoint(console: Console) -> Callable[[Request], Awaitable[Response]]:
    async def act(request: Request) -> Response:
        try:
            session, form = await checked(console, request)
        except Refusal as exc:
            return console.render(request, "error.html", {"message": exc.message}, exc.status)
        name = _f(form, "action")
        action = ACTIONS.get(name)
        if action is None:
            return console.render(request, "error.html", {"message": "unknown action"}, 400)
        who = session.principal
        audited = audit_action(action, name)
        try:
            target = action.target(form)
        except ControlPlaneError as exc:
            return console.render(request, "error.html", {"message": str(exc)}, 400)
        if not allows(who, NEEDED_ROLE):
            await console.audit.record(
                who, audited, target, "console", "PERMISSION_DENIED", {"action": name}
            )
            log.warning("console: %s (%s) refused %s on %s", who.name, who.role, name, target)
            message = f"refused: {name} needs the {NEEDED_ROLE} role; you are {who.role}"
            return console.render(request, "error.html", {"message": message}, 403)
        if _f(form, "confirmed") != "yes":
            try:
                description = action.describe(form)
            except ControlPlaneError as exc:
                return console.render(request, "error.html", {"message": str(exc)}, 400)
            fields = {k: _f(form, k) for k in FIELDS if _f(form, k)}
            return console.render(
                request,
                "confirm.html",
                {
                    "action": action,
                    "name": name,
                    "audited": audited,
                    "description": description,
                    "fields": fields,
                },
            )
        detail = {"action": name, **{k: _f(form, k) for k in FIELDS if _f(form, k)}}
        try:
            message = await action.run(console, who, form)
        except ControlPlaneError as exc:
            await console.audit.record(who, audited, target, "console", code_for(exc).name, detail)
            console.flash(session, "bad", f"{action.title} failed: {exc}")
        else:
            await console.audit.record(who, audited, target, "console", "ok", detail)
            log.info("console: %s %s on %s: %s", who.name, name, target, message)
            console.flash(session, "ok", message)
        back = _f(form, "back")
        return RedirectResponse(back if _local(back) else action.back, status_code=303)

    return act


def _local(path: str) -> bool:
    """Only a path on this console (not ``//evil.example``) is a place to go back to."""
    return path.startswith("/") and not path.startswith("//") and "\\" not in path
