"""How ``opsctl`` reaches the control plane: address, token, timeouts, and errors mapped back.

kubectl habits: ``--addr`` or ``$STANCH_ADDR`` (default 127.0.0.1:7443), the operator token from
``$STANCH_TOKEN`` only (argv is visible to every user via ``ps``), errors as one line on stderr.
A refusal (bad request, conflict, not found, not allowed) exits 1; not reaching the control plane
or a server fault exits 2. grpc is imported only when a control-plane command runs, so
``opsctl bundle build`` stays light.

Transport: TLS when the fleet CA is given (``--ca`` or ``$STANCH_CA``), with the operator's
client certificate from ``$STANCH_CERT``/``$STANCH_KEY`` when set (then the mTLS port, ``--addr``'s
default 7443, accepts it). With a bearer token and no certificate, point ``--addr`` at the
enrollment port (7444 by default), which serves TLS without client certificates. ``--insecure``
(or ``$STANCH_INSECURE=1``) talks plaintext to a ``stanch-cp --insecure``; with neither, opsctl
talks plaintext too, for compatibility with development setups, and says so on stderr.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path
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
    parser.add_argument(
        "--ca",
        default=os.environ.get("STANCH_CA") or None,
        help="the fleet CA certificate: use TLS (default: $STANCH_CA)",
    )
    parser.add_argument(
        "--server-name",
        default=os.environ.get("STANCH_SERVER_NAME") or None,
        help="expected name in the server certificate, when --addr is not it",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("STANCH_INSECURE", "") in ("1", "true", "yes"),
        help="plaintext, for a `stanch-cp --insecure` (default: $STANCH_INSECURE)",
    )


@dataclass(frozen=True)
class ClientTls:
    """What ``opsctl`` presents: the CA it trusts, and its own certificate if it has one."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_env(cls, ca: str, server_name: str | None = None) -> ClientTls:
        cert_path, key_path = os.environ.get("STANCH_CERT"), os.environ.get("STANCH_KEY")
        if bool(cert_path) != bool(key_path):
            raise StanchError("STANCH_CERT and STANCH_KEY go together (an operator certificate)")
        return cls(
            Path(ca).read_bytes(),
            Path(cert_path).read_bytes() if cert_path else None,
            Path(key_path).read_bytes() if key_path else None,
            server_name,
        )

    def channel(self, addr: str) -> Any:
        import grpc

        creds = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(addr, creds, options=options)


def operator() -> str:
    """Who is asking, for the audit fields (``by``) of rollouts and pauses."""
    try:
        return os.environ.get("STANCH_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class AdminClient:
    def __init__(
        self,
        addr: str,
        token: str | None = None,
        timeout: float = 30.0,
        tls: ClientTls | None = None,
    ) -> None:
        """``tls`` None is plaintext."""
        import grpc

        from stanch.v1 import admin_pb2_grpc, pki_pb2_grpc

        self.addr = addr
        self.timeout = timeout
        self.tls = tls
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = tls.channel(addr) if tls else grpc.insecure_channel(addr)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._pki = pki_pb2_grpc.PkiStub(self._channel)  # type: ignore[no-untyped-call]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        token = os.environ.get("STANCH_TOKEN") or None
        tls = None
        ca = getattr(args, "ca", None)
        if ca and not getattr(args, "insecure", False):
            try:
                tls = ClientTls.from_env(ca, getattr(args, "server_name", None))
            except OSError as exc:
                raise StanchError(f"{exc.filename}: {exc.strerror}") from None
        elif not getattr(args, "insecure", False):
            print(
                f"opsctl: warning: plaintext to {args.addr} (no --ca or STANCH_CA)"
                + ("; the token travels unencrypted" if token else "")
                + "; pass --ca for TLS, or --insecure to silence this",
                file=sys.stderr,
            )
        return cls(args.addr, token, args.request_timeout, tls)

    def call(self, method: str, request: Any) -> Any:
        """Invoke ``Admin.<method>``; raise :class:`ApiError` with the server's own message."""
        return self._invoke(self._stub, method, request)

    def pki(self, method: str, request: Any) -> Any:
        """Invoke ``Pki.<method>`` (enrollment tokens, revocation)."""
        return self._invoke(self._pki, method, request)

    def _invoke(self, stub: Any, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(stub, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Any) -> ApiError:
        code = exc.code().name if exc.code() is not None else "UNKNOWN"
        details = exc.details() or code
        if code == "UNAVAILABLE":
            hint = "is it running? set --addr or STANCH_ADDR"
            if self.tls is not None and self.tls.cert is None:
                hint += (
                    "; the mTLS port needs an operator certificate (STANCH_CERT, STANCH_KEY): "
                    "with a token only, use the enrollment port"
                )
            return ApiError(
                f"cannot reach the control plane at {self.addr} ({details}); {hint}", FAILED
            )
        if code == "DEADLINE_EXCEEDED":
            return ApiError(f"{self.addr}: no answer within {self.timeout:g}s", FAILED)
        return ApiError(details, REFUSED if code in REFUSAL_CODES else FAILED)

    def close(self) -> None:
        self._channel.close()
