"""One decorator maps domain errors to gRPC status codes, so servicers only delegate.

What crosses the wire is the error's message (written to be read by an operator: what, where,
what to do) and a status code ``opsctl`` turns back into an exit code. Anything unexpected is
logged here with its traceback and reported as INTERNAL with no detail: tracebacks and internal
state never leave the process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from controlplane.errors import Conflict, ControlPlaneError, InvalidRequest, NotFound, Refused

log = logging.getLogger("stanch.cp.api")
Q = TypeVar("Q")
R = TypeVar("R")
S = TypeVar("S")
Context = grpc.aio.ServicerContext[Any, Any]

CODES: dict[type[ControlPlaneError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    Refused: grpc.StatusCode.FAILED_PRECONDITION,
}


def code_for(exc: ControlPlaneError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.FAILED_PRECONDITION


def api_errors(
    method: Callable[[S, Q, Context], Awaitable[R]],
) -> Callable[[S, Q, Context], Coroutine[Any, Any, R]]:
    @functools.wraps(method)
    async def wrapper(self: S, request: Q, context: Context) -> R:
        try:
            return await method(self, request, context)
        except ControlPlaneError as exc:
            await context.abort(code_for(exc), str(exc))
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal error; see the control-plane log"
            )

    return wrapper
