"""Who is on the other end of an agent call: the host id of the verified client certificate.

On the mTLS port grpc has verified the client's certificate chain against the fleet CA before
any handler runs; the handler reads the result from ``context.auth_context()``. The host id is
the certificate's SAN URI ``stanch://host/<id>`` (and its CN must agree). It is the only host id
an agent call may act as: a ``Hello`` naming another host is refused, and reports, apply
results and fetches are attributed to the certificate's host.

``admit`` is the one gate every agent call passes (Connect, FetchBundle, Renew). In plaintext
dev mode (``--insecure``: no TLS at all) there is no certificate and the host id claimed in
Hello is taken as is, as before TLS existed; revoked hosts are refused in both modes.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from cryptography import x509

from agent.fleet.tls import HOST_URI_PREFIX
from controlplane.plane import ControlPlane

log = logging.getLogger("stanch.cp.identity")
Context = grpc.aio.ServicerContext[Any, Any]
NO_CERT = "a valid client certificate is required; enroll this host"
NOT_YOURS = "this certificate does not allow acting as that host"
REVOKED = "this host's access has been revoked"


def _props(context: Any, name: str) -> list[bytes]:
    auth = context.auth_context() or {}
    return list(auth.get(name, ()))


def is_tls(context: Any) -> bool:
    return b"ssl" in _props(context, "transport_security_type")


def peer_certificate(context: Any) -> x509.Certificate | None:
    """The verified peer certificate, or None (no TLS, or no client certificate)."""
    pems = _props(context, "x509_pem_cert")
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None


def peer_host(context: Any) -> str | None:
    """The host id of the verified client certificate: its one ``stanch://host/`` SAN URI,
    which its CN must repeat. None for no certificate, an operator's, or a malformed one."""
    hosts = [
        uri.decode(errors="replace")[len(HOST_URI_PREFIX) :]
        for uri in _props(context, "x509_subject_alternative_name")
        if uri.startswith(HOST_URI_PREFIX.encode())
    ]
    names = [cn.decode(errors="replace") for cn in _props(context, "x509_common_name")]
    if len(hosts) != 1 or not hosts[0] or names != hosts:
        return None
    return hosts[0]


def peer_serial(context: Any) -> str | None:
    cert = peer_certificate(context)
    return None if cert is None else format(cert.serial_number, "x")


async def refuse_strangers(context: Context, call: str) -> None:
    """Abort at once a TLS call without a host certificate (before reading anything)."""
    if is_tls(context) and peer_host(context) is None:
        log.warning("%s refused from %s: no host certificate", call, context.peer())
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, NO_CERT)


async def admit(plane: ControlPlane, context: Context, claimed: str | None, call: str) -> str:
    """The host id this agent call acts as, or abort the call.

    ``claimed`` is the host id the message names (Hello), None when the message names none.
    Refusals are logged with the peer and the reason; the caller learns only a fixed message.
    """
    peer = context.peer()
    if not is_tls(context):
        host = claimed or ""  # --insecure: trusted network, the Hello's word
    else:
        found = peer_host(context)
        if found is None:
            log.warning("%s refused from %s: no host certificate", call, peer)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, NO_CERT)
        host = found
        if claimed is not None and claimed != host:
            log.warning(
                "%s refused from %s: certificate of host %r claimed host %r",
                call,
                peer,
                host,
                claimed[:253],
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_YOURS)
        serial = peer_serial(context)
        record = None if serial is None else await plane.store.run(plane.db.certificate, serial)
        if record is not None and record.revoked_at:
            log.warning("%s refused from %s: certificate %s is revoked", call, peer, serial)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, REVOKED)
    if host and await plane.store.run(plane.db.revoked_host, host) is not None:
        log.warning("%s refused from %s: host %r is revoked", call, peer, host)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, REVOKED)
    return host
