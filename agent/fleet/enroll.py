"""The agent's side of host identity: enroll once, connect with mTLS, renew before expiry.

Lifecycle (driven by ``FleetClient``; every step may fail and is retried with its backoff):

1. **Enroll** when there is no certificate yet: read the single-use token from
   ``enroll_token_file``, make a P-256 key *here*, send a CSR to ``Enrollment.Enroll`` on the
   enrollment port (server-authenticated TLS: the agent checks the control plane against the
   fleet CA before sending the token). Key (0600) then certificate are written atomically; the
   token file is deleted (or, if it cannot be, renamed ``*.used``) since it cannot work twice.
2. **Connect** to the mTLS port with that certificate (re-read from disk for every session, so a
   renewed certificate is used by the next one).
3. **Renew** when less than a third of the lifetime remains (plus jitter, so a fleet enrolled
   together does not renew together): a new key and CSR over the live mTLS channel
   (``Enrollment.Renew``); the session then ends and the next connects with the new pair.

The gRPC calls themselves are made by ``FleetClient`` (the one agent module that speaks the
wire, ``tests/unit/test_fleet_layering.py``) and passed in as ``EnrollCall``/``RenewCall``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StanchError
from agent.fleet.config import ControlPlaneConfig, TlsConfig
from agent.fleet.tls import (
    CertWindow,
    IdentityFiles,
    cert_window,
    enrollment_address,
    make_csr,
    new_key,
)
from agent.logs import log_event

RENEW_JITTER = 0.05
"""Renewal waits up to this share of the lifetime more, at random."""


EnrollCall = Callable[[str, bytes], Awaitable[bytes]]
"""``Enrollment.Enroll(token, CSR)`` on the enrollment port -> the certificate (PEM); raises
:class:`EnrollError` with the control plane's answer."""
RenewCall = Callable[[bytes], Awaitable[bytes]]
"""``Enrollment.Renew(CSR)`` over the live mTLS channel -> the certificate (PEM)."""


class EnrollError(StanchError):
    """The agent has no certificate and cannot get one now; the message says what to do."""


@dataclass(frozen=True)
class Identity:
    """Where this host's key and certificate are, and how to present them."""

    tls: TlsConfig
    host_id: str
    files: IdentityFiles
    address: str
    enroll_address: str

    @classmethod
    def of(cls, settings: ControlPlaneConfig, host_id: str, state_dir: Path) -> Identity:
        tls = settings.tls
        assert tls is not None, "TLS settings (the config parser requires them without insecure)"
        files = IdentityFiles(state_dir / "tls")
        if tls.cert is not None and tls.key is not None:
            files = ExplicitFiles(tls.cert.parent, tls.cert, tls.key)
        enroll = tls.enroll_address or enrollment_address(settings.address)
        return cls(tls, host_id, files, settings.address, enroll)

    def options(self) -> list[tuple[str, str]]:
        name = self.tls.server_name
        return [("grpc.ssl_target_name_override", name)] if name else []

    def material(self, with_cert: bool = True) -> tuple[bytes, bytes | None, bytes | None]:
        """``(CA, key, certificate)`` PEMs for the channel credentials, read fresh each time
        (a renewed pair is used by the next session)."""
        try:
            ca = self.tls.ca.read_bytes()
            if not with_cert:
                return ca, None, None
            return ca, self.files.key.read_bytes(), self.files.cert.read_bytes()
        except OSError as exc:
            raise EnrollError(f"{exc.filename}: {exc.strerror}") from None

    def window(self) -> CertWindow:
        return cert_window(self.files.cert.read_bytes())

    def renew_delay(self, now: float, rng: random.Random | None = None) -> float:
        """Seconds until renewal is due (0 when it is), plus jitter."""
        window = self.window()
        lifetime = window.not_after - window.not_before
        jitter = (rng or random).uniform(0, lifetime * RENEW_JITTER)
        return max(0.0, window.renew_at - now) + jitter

    async def ensure(self, now: float, enroll: EnrollCall) -> None:
        """Enroll unless a certificate that has not expired is already on disk. An expired
        one (the host was off longer than its lifetime) cannot be renewed: the host enrolls
        again, with a new token an operator writes to ``enroll_token_file``."""
        token_file = self.tls.enroll_token_file
        if self.files.exists():
            expired = self.window().not_after <= now
            if not expired:
                return
            if token_file is None or not token_file.exists():
                raise EnrollError(
                    f"{self.files.cert} expired; this host must enroll again: write a new "
                    f"token (`opsctl pki token --host {self.host_id}`) to "
                    f"{token_file or 'the file control_plane.tls.enroll_token_file names'}"
                )
        if token_file is None:
            raise EnrollError(
                f"no certificate at {self.files.cert} and no control_plane.tls."
                "enroll_token_file; get a token with `opsctl pki token --host "
                f"{self.host_id}` and write it to a file the agent names there"
            )
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise EnrollError(
                f"{token_file}: {exc.strerror}; no certificate yet, and the enrollment token "
                f"cannot be read (make one with `opsctl pki token --host {self.host_id}`)"
            ) from None
        key = new_key()
        cert = await enroll(token, make_csr(key, self.host_id))
        self.files.save(key, cert)
        _spend(token_file)
        window = cert_window(cert)
        log_event("enrolled", host=self.host_id, not_after=round(window.not_after))

    async def renew(self, call: RenewCall) -> None:
        """A new key and certificate, through ``call`` (the live mTLS channel)."""
        key = new_key()
        cert = await call(make_csr(key, self.host_id))
        self.files.save(key, cert)
        log_event("certificate_renewed", not_after=round(cert_window(cert).not_after))


@dataclass(frozen=True)
class ExplicitFiles(IdentityFiles):
    """``tls.cert`` and ``tls.key`` named in the config (renewed in place)."""

    cert_path: Path
    key_path: Path

    @property
    def key(self) -> Path:
        return self.key_path

    @property
    def cert(self) -> Path:
        return self.cert_path


def _spend(token_file: Path) -> None:
    """A used token is worthless; remove it so nobody mistakes it for a live one."""
    try:
        token_file.unlink()
    except OSError:
        try:
            token_file.rename(token_file.with_name(token_file.name + ".used"))
        except OSError as exc:
            log_event(
                "enroll_token_not_removed",
                logging.WARNING,
                file=str(token_file),
                error=exc.strerror,
            )
