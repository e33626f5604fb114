"""The gRPC server interceptor that times every RPC the control plane answers.

Part of the control plane's metrics (``controlplane.metrics``, which creates it with the event
counters and re-exports it); imported only with ``--metrics-listen``.

RPC labels come only from methods the server actually serves; a call to an unknown method is
answered UNIMPLEMENTED by grpc and not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Gauge, Histogram

from controlplane.grpc_wrap import rewrap

RPC_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0),
)
"""Admin and health calls take milliseconds; a ``Fleet/Connect`` stream is observed when it ends,
so its "latency" is the stream's lifetime: the upper buckets exist for those."""

Q = TypeVar("Q")
R = TypeVar("R")
Handler = grpc.RpcMethodHandler
_CANCELLED = (asyncio.CancelledError, GeneratorExit)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Times every RPC the server answers, by service, method, type and status code.

    Put first in the interceptor chain, so calls the token check refuses are counted too
    (``UNAUTHENTICATED``). The code is the one the handler aborted with or set, ``OK`` when it
    returned, ``CANCELLED`` when the client went away (an agent disconnecting ends its
    ``Connect`` stream this way), ``UNKNOWN`` when it raised.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handling = Histogram(
            "stanch_cp_grpc_server_handling_seconds",
            "RPC duration on the server, from the handler's start to its end (for streams, the "
            "stream's lifetime).",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "stanch_cp_grpc_server_in_flight",
            "RPCs being handled now (open agent streams included).",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler[Q, R] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler[Q, R] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return self._wrap(handler, service or "unknown", method)

    def _wrap(self, handler: Handler[Q, R], service: str, method: str) -> Handler[Q, R]:
        labels = (service, method, _rpc_type(handler))
        # A sync handler runs in grpc's thread pool; ours are all async, so it stays untimed.
        return rewrap(
            handler,
            lambda behavior, unary: self._timed_stream(behavior, labels),
            lambda behavior, unary: self._timed_call(behavior, labels),
        )

    def _timed_call(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
        labels: tuple[str, str, str],
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = self._start(labels)
            code = "UNKNOWN"
            try:
                result = await behavior(request, context)
                code = _code(context, "OK")
                return result
            except BaseException as exc:
                code = _failure(context, exc)
                raise
            finally:
                self._finish(labels, code, started)

        return timed

    def _timed_stream(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]],
        labels: tuple[str, str, str],
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]]:
        async def timed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncGenerator[Any, None]:
            started = self._start(labels)
            code = "UNKNOWN"
            try:
                # aclosing: when grpc closes this wrapper (the client went away), the servicer's
                # own generator is closed at once too, so its cleanup runs now, not at GC.
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
                code = _code(context, "OK")
            except BaseException as exc:
                code = _failure(context, exc)
                raise
            finally:
                self._finish(labels, code, started)

        return timed

    def _start(self, labels: tuple[str, str, str]) -> float:
        self.in_flight.labels(*labels[:2]).inc()
        return time.monotonic()

    def _finish(self, labels: tuple[str, str, str], code: str, started: float) -> None:
        self.in_flight.labels(*labels[:2]).dec()
        self.handling.labels(*labels, code).observe(time.monotonic() - started)


def _rpc_type(handler: Handler[Any, Any]) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _code(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    """The status the handler set or aborted with, else ``default``."""
    try:
        code = context.code()
    except Exception:  # not every context implementation answers; the default is right then
        return default
    return code.name if isinstance(code, grpc.StatusCode) else default


def _failure(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> str:
    if isinstance(exc, _CANCELLED):
        return "CANCELLED"
    return _code(context, "UNKNOWN")
