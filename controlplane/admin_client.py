"""How ``opsctl`` reaches the control plane: address, token, timeouts, and errors mapped back.

kubectl habits: ``--addr`` or ``$STANCH_ADDR`` (default 127.0.0.1:7443), the operator token from
``$STANCH_TOKEN`` only (argv is visible to every user via ``ps``), errors as one line on stderr.
A refusal (bad request, conflict, not found, not allowed) exits 1; not reaching the control plane
or a server fault exits 2. grpc is imported only when a control-plane command runs, so
``opsctl bundle build`` stays light.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from agent.errors import StanchError

DEFAULT_ADDR = "127.0.0.1:7443"
REFUSED, FAILED = 1, 2
REFUSAL_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "ALREADY_EXISTS",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "OUT_OF_RANGE",
    }
)


class ApiError(StanchError):
    """A control-plane call failed; ``exit_code`` is what opsctl returns."""

    def __init__(self, message: str, exit_code: int) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--addr",
        default=os.environ.get("STANCH_ADDR", DEFAULT_ADDR),
        help=f"control plane HOST:PORT (default: $STANCH_ADDR or {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds per call (default 30)"
    )


def operator() -> str:
    """Who is asking, for the audit fields (``by``) of rollouts and pauses."""
    try:
        return os.environ.get("STANCH_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class AdminClient:
    def __init__(self, addr: str, token: str | None = None, timeout: float = 30.0) -> None:
        import grpc

        from stanch.v1 import admin_pb2_grpc

        self.addr = addr
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(addr)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        return cls(args.addr, os.environ.get("STANCH_TOKEN") or None, args.request_timeout)

    def call(self, method: str, request: Any) -> Any:
        """Invoke ``Admin.<method>``; raise :class:`ApiError` with the server's own message."""
        import grpc

        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Any) -> ApiError:
        code = exc.code().name if exc.code() is not None else "UNKNOWN"
        details = exc.details() or code
        if code == "UNAVAILABLE":
            return ApiError(
                f"cannot reach the control plane at {self.addr} ({details}); "
                f"is it running? set --addr or STANCH_ADDR",
                FAILED,
            )
        if code == "DEADLINE_EXCEEDED":
            return ApiError(f"{self.addr}: no answer within {self.timeout:g}s", FAILED)
        return ApiError(details, REFUSED if code in REFUSAL_CODES else FAILED)

    def close(self) -> None:
        self._channel.close()
