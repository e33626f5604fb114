"""The fleet client's channel to the control plane, part of ``FleetClient``
(``agent.fleet.client``): client keepalive, plaintext or mTLS credentials (enrolling first when
this host has no certificate), waiting for READY, and renewing the certificate while a session
runs. ``SessionLost`` and ``describe`` are shared by the whole client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import grpc.aio

from agent.clock import Clock
from agent.config import AgentConfig
from agent.fleet.config import ControlPlaneConfig
from agent.fleet.enroll import EnrollError, Identity
from agent.logs import log_event
from stanch.v1 import pki_pb2, pki_pb2_grpc

CONNECT_TIMEOUT = 10.0
ENROLL_TIMEOUT = 30.0
RENEW_RETRY = 60.0
"""At most this long after a failed renewal (sooner as the certificate nears its expiry)."""


class SessionLost(Exception):
    """The stream ended or cannot go on; the message says why (logged, then reconnect)."""


def channel_options(settings: ControlPlaneConfig) -> list[tuple[str, int]]:
    """Keepalive on the client: a silently dead peer (a control plane host gone, a NAT that
    dropped the flow) is noticed in ``keepalive + 10 s`` rather than at the next write. The
    server must allow pings this often (``grpc.http2.min_ping_interval_without_data_ms``)."""
    return [
        ("grpc.keepalive_time_ms", int(settings.keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]


class ChannelSetup:
    """The channel, enrollment and renewal methods of ``FleetClient``, which sets these
    attributes in its ``__init__``."""

    config: AgentConfig
    settings: ControlPlaneConfig
    clock: Clock
    identity: Identity | None
    _renewed: bool

    async def _channel(self) -> grpc.aio.Channel:
        """Plaintext in insecure mode; else mTLS with this host's certificate, enrolling
        first when there is none (a failure ends this attempt; the backoff retries)."""
        options: list[tuple[str, Any]] = list(channel_options(self.settings))
        if self.identity is None:
            return grpc.aio.insecure_channel(self.settings.address, options=options)
        try:
            await self.identity.ensure(self.clock.now(), self._enroll)
            credentials = grpc.ssl_channel_credentials(*self.identity.material())
        except EnrollError as exc:
            raise SessionLost(str(exc)) from None
        # A channel of its own (no subchannel shared with the previous session's): after a
        # renewal the next session must handshake again, with the new certificate.
        options += [*self.identity.options(), ("grpc.use_local_subchannel_pool", 1)]
        return grpc.aio.secure_channel(self.settings.address, credentials, options=options)

    async def _enroll(self, token: str, csr: bytes) -> bytes:
        """``Enrollment.Enroll`` on the enrollment port (server-authenticated TLS: the control
        plane is checked against the fleet CA before the token is sent)."""
        identity = self.identity
        assert identity is not None
        ca, _, _ = identity.material(with_cert=False)
        address = identity.enroll_address
        request = pki_pb2.EnrollRequest(token=token, host_id=self.config.host_id, csr_pem=csr)
        creds = grpc.ssl_channel_credentials(ca)
        async with grpc.aio.secure_channel(address, creds, options=identity.options()) as ch:
            stub = pki_pb2_grpc.EnrollmentStub(ch)  # type: ignore[no-untyped-call]
            try:
                answer = await stub.Enroll(request, timeout=ENROLL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                raise EnrollError(f"enrollment at {address} failed: {describe(exc)}") from None
        return bytes(answer.certificate_pem)

    async def _renew(self, channel: grpc.aio.Channel, identity: Identity) -> None:
        """Sleep until the certificate is due for renewal, renew it over ``channel``, and
        return: the session then ends and the next one connects with the new certificate."""
        stub = pki_pb2_grpc.EnrollmentStub(channel)  # type: ignore[no-untyped-call]

        async def call(csr: bytes) -> bytes:
            answer = await stub.Renew(pki_pb2.RenewRequest(csr_pem=csr), timeout=ENROLL_TIMEOUT)
            return bytes(answer.certificate_pem)

        while True:
            await asyncio.sleep(identity.renew_delay(self.clock.now()))
            try:
                await identity.renew(call)
            except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
                log_event("certificate_renewal_failed", logging.WARNING, error=describe(exc))
                left = identity.window().not_after - self.clock.now()
                await asyncio.sleep(min(RENEW_RETRY, max(1.0, left / 4)))
                continue
            self._renewed = True
            return


async def connect(channel: grpc.aio.Channel, timeout: float) -> None:
    """Wait for READY; fail at once on TRANSIENT_FAILURE so our backoff, not the channel's
    hidden one, decides when to try again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise SessionLost(f"cannot connect ({state.name.lower()})")
        left = deadline - loop.time()
        if left <= 0:
            raise SessionLost(f"not connected after {timeout:g}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        state = channel.get_state(try_to_connect=True)


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
