"""The one place operator calls are authenticated, authorised and audited.

``intercept_service`` only sees the method name and metadata, not the ``ServicerContext`` (so
not the TLS peer certificate, nor the peer address). It therefore returns the servicer's handler
*wrapped*: the wrapper runs inside the call, with its context, and

1. finds the principal: a bearer token (``authorization`` metadata), else an operator client
   certificate (``context.auth_context()``), else in ``--insecure`` development mode with no
   token ever created, ``insecure-dev``;
2. refuses with ``UNAUTHENTICATED`` or ``PERMISSION_DENIED`` and a fixed message: which of
   "unknown", "expired", "revoked" or "wrong secret" it was is never said to the caller;
3. checks the role the method needs (``controlplane.roles``), sets the principal for the handler
   (``controlplane.auth.current_principal``), runs it, and
4. appends an audit entry for every mutating call once its outcome is known: ``ok`` or the
   status code name, refusals for lack of role included. Calls that could not be authenticated
   are not written to the audit log (an anonymous flood must not be able to bury it); the
   metrics interceptor counts them by code. A handler may add what only it knows to the
   entry's ``detail`` (``controlplane.auth.note_audit``: a token's role before a change).

Every decision is also counted by method and result (``Authenticator.events``, exported as
``stanch_cp_operator_authentications_total``): ``ok``, ``unauthenticated`` or
``permission_denied``, for a ``token``, a ``certificate``, the ``insecure_dev`` admin or
``none`` (no credential at all).

Services named in ``roles.OPEN_PREFIXES`` (agents, health, reflection) pass untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from controlplane import roles
from controlplane.audit import AuditLog, summarize
from controlplane.auth import (
    Authenticator,
    Principal,
    allows,
    bearer,
    open_audit_notes,
    reset_principal,
    set_principal,
)
from controlplane.grpc_wrap import rewrap
from controlplane.security_events import VIA_METHOD

log = logging.getLogger("stanch.cp.auth")
Q = TypeVar("Q")
R = TypeVar("R")
Handler = grpc.RpcMethodHandler
Context = grpc.aio.ServicerContext[Any, Any]
UNAUTHENTICATED = "authentication required: a valid operator token (STANCH_TOKEN) or certificate"
DENIED = "permission denied: your role does not allow this call"
_CANCELLED = (asyncio.CancelledError, GeneratorExit)


class OperatorAuth(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator, audit: AuditLog) -> None:
        self.auth = auth
        self.audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler[Q, R] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Q, R] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not roles.is_protected(method):
            return handler
        token = bearer(handler_call_details.invocation_metadata)
        return self._wrap(handler, Call(self, method, token))

    def _wrap(self, handler: Handler[Q, R], call: Call) -> Handler[Q, R]:
        # A sync handler would run in grpc's thread pool without our context; none exist.
        # Fail closed rather than serve it unauthenticated.
        return rewrap(
            handler,
            lambda behavior, unary: call.guard_stream(behavior, unary=unary),
            lambda behavior, unary: call.guard_call(behavior, unary=unary),
            sync=_refuse_sync,
        )


async def _refuse_sync(request: Any, context: Context) -> None:
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the control-plane log")


class Call:
    """One protected call: who it is, whether they may, and the audit entry afterwards."""

    def __init__(self, owner: OperatorAuth, method: str, token: str | None) -> None:
        self.auth = owner.auth
        self.audit = owner.audit
        self.method = method
        self.token = token
        self.needed, self.mutating = roles.requirement(method)

    async def admit(self, request: Any, context: Context) -> Principal:
        """The caller, allowed to make this call; otherwise the call is aborted here."""
        principal = await self._authenticate(context)
        events = self.auth.events
        if principal is None:
            events.authenticated(self._attempted(context), "unauthenticated")
            log.info("refused %s from %s: not authenticated", self.method, context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            raise AssertionError("unreachable: abort raises")  # pragma: no cover
        method = VIA_METHOD.get(principal.via, "none")
        if not allows(principal, self.needed):
            events.authenticated(method, "permission_denied")
            log.warning(
                "refused %s for %s (%s): needs %s",
                self.method,
                principal.name,
                principal.role,
                self.needed,
            )
            if self.mutating:
                await self._record(principal, request, context, "PERMISSION_DENIED")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, DENIED)
        events.authenticated(method, "ok")
        return principal

    def _attempted(self, context: Context) -> str:
        """How a caller that could not be authenticated tried: its token, else its
        certificate (an unknown, revoked or host one), else nothing."""
        if self.token is not None:
            return "token"
        try:
            presented = bool((context.auth_context() or {}).get("x509_pem_cert"))
        except Exception:  # a context without TLS answers oddly; no certificate then
            presented = False
        return "certificate" if presented else "none"

    async def _authenticate(self, context: Context) -> Principal | None:
        if self.token is not None:
            # A token that does not check out is refused even when a certificate is present:
            # the caller meant the token, and silently falling back would hide the mistake.
            return await self.auth.from_token(self.token)
        try:
            principal = await self.auth.from_certificate(context.auth_context())
        except Exception:  # a context without TLS answers oddly; no certificate then
            principal = None
        return principal or await self.auth.dev_principal()

    async def _record(
        self,
        principal: Principal,
        request: Any,
        context: Context,
        result: str,
        notes: dict[str, Any] | None = None,
    ) -> None:
        action, target, detail = summarize(self.method, request)
        detail.update(notes or {})
        try:
            await self.audit.record(principal, action, target, context.peer(), result, detail)
        except Exception:
            log.exception("AUDIT WRITE FAILED for %s by %s (%s)", action, principal.name, result)

    async def finish(
        self,
        principal: Principal,
        request: Any,
        context: Context,
        code: str,
        notes: dict[str, Any],
    ) -> None:
        if self.mutating:
            result = "ok" if code == "OK" else code
            await asyncio.shield(self._record(principal, request, context, result, notes))

    def guard_call(
        self, behavior: Callable[[Any, Context], Awaitable[Any]], unary: bool
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def guarded(request: Any, context: Context) -> Any:
            principal = await self.admit(request if unary else None, context)
            reset = set_principal(principal)
            notes = open_audit_notes()  # grpc runs each call in a task (a context) of its own
            code = "UNKNOWN"
            try:
                response = await behavior(request, context)
                code = _code(context, "OK")
                return response
            except BaseException as exc:
                code = "CANCELLED" if isinstance(exc, _CANCELLED) else _code(context, "UNKNOWN")
                raise
            finally:
                with contextlib.suppress(ValueError):  # reset from another context: harmless
                    reset_principal(reset)
                await self.finish(principal, request if unary else None, context, code, notes)

        return guarded

    def guard_stream(
        self, behavior: Callable[[Any, Context], AsyncGenerator[Any, None]], unary: bool
    ) -> Callable[[Any, Context], AsyncGenerator[Any, None]]:
        async def guarded(request: Any, context: Context) -> AsyncGenerator[Any, None]:
            principal = await self.admit(request if unary else None, context)
            set_principal(principal)  # this generator's own context: nothing to reset
            notes = open_audit_notes()
            code = "UNKNOWN"
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
                code = _code(context, "OK")
            except BaseException as exc:
                code = "CANCELLED" if isinstance(exc, _CANCELLED) else _code(context, "UNKNOWN")
                raise
            finally:
                await self.finish(principal, request if unary else None, context, code, notes)

        return guarded


def _code(context: Context, default: str) -> str:
    """The status the handler set or aborted with, else ``default``."""
    try:
        code = context.code()
    except Exception:  # not every context implementation answers; the default is right then
        return default
    return code.name if isinstance(code, grpc.StatusCode) else default
