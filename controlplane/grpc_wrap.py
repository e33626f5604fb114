"""Wrapping a grpc.aio method handler's behaviour: the one place that knows the four RPC shapes.

Server interceptors that must see the ``ServicerContext`` (authentication reads the peer
certificate, metrics read the final status code) cannot do it in ``intercept_service``, which
only gets the method name and metadata. They return a new handler whose behaviour wraps the
original; this module rebuilds that handler for whichever of the four shapes it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

Handler = grpc.RpcMethodHandler
Q = TypeVar("Q")
R = TypeVar("R")
Wrapper = Callable[[Any, bool], Any]
"""``(behavior, unary_request) -> new behavior``."""

_MAKERS: tuple[tuple[str, Callable[..., Handler[Any, Any]]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def rewrap(
    handler: Handler[Q, R],
    wrap_stream: Wrapper,
    wrap_call: Wrapper,
    sync: Any | None = None,
) -> Handler[Q, R]:
    """``handler`` with its behaviour wrapped: an async-generator behaviour (server streaming)
    by ``wrap_stream``, a coroutine behaviour by ``wrap_call``. A sync behaviour (none of ours:
    it would run in grpc's thread pool) is replaced by ``sync``, or left as is when None."""
    shape = next(((a, m) for a, m in _MAKERS if getattr(handler, a) is not None), None)
    if shape is None:
        return handler
    attribute, make = shape
    behavior = getattr(handler, attribute)
    unary = not handler.request_streaming
    if inspect.isasyncgenfunction(behavior):
        wrapped_behavior = wrap_stream(behavior, unary)
    elif inspect.iscoroutinefunction(behavior):
        wrapped_behavior = wrap_call(behavior, unary)
    elif sync is not None:
        wrapped_behavior = sync
    else:
        return handler
    wrapped: Handler[Q, R] = make(
        wrapped_behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return wrapped
