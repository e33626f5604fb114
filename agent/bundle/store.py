"""The last-known-good bundle store: verify, stage, swap atomically, keep the old one on refusal.

Layout under ``state_dir``::

    bundles/active.json         the pointer (see ``pointer``), replaced atomically
    bundles/<digest>/bundle     the verified bundle file, kept for re-verification and re-serving
    bundles/<digest>/files/     its extracted files; ``active_policy_dir()`` returns this
    bundles/.staging-*          an extraction in progress (removed on the next install)
    bundles/.lock               serialises installs (flock)
    trust/root.<N>.json         accepted trust-root rotations (see ``trust``)
    bundle-rejections.jsonl     the last 100 refusals (see ``rejection``)

An install is: verify everything in memory, extract into a staging directory with every file
fsynced, load its policies as the agent would, rename it to ``bundles/<digest>``, then swap
``active.json``. A crash anywhere before the swap leaves the old pointer, naming a complete old
directory; after it, the new one. Nothing is ever extracted over the active directory.
The crash tests prove it with ``STANCH_FAILPOINTS=bundle_after_extract_before_swap``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent import failpoints
from agent.bundle.archive import MAX_BUNDLE_BYTES
from agent.bundle.durable import fsync_dir, write_atomic, write_synced
from agent.bundle.manifest import Manifest
from agent.bundle.pointer import MAX_HISTORY, ActivePointer, ActiveStatus, active_policy_dir
from agent.bundle.rejection import BundleRejected, Reason, Rejection, RejectionLog
from agent.bundle.succession import check_succession
from agent.bundle.trust import TrustStore, read_envelope
from agent.bundle.verify import VerifiedBundle, verify_bundle
from agent.clock import Clock, SystemClock
from agent.policy.loader import load_dir

KEEP_PREVIOUS = 2
"""Earlier bundles kept extracted besides the active one, for a rollback that needs no download."""


@dataclass(frozen=True)
class Activation:
    digest: str
    name: str
    version: int
    previous: str | None
    """The digest that was active before, if any."""
    changed: bool
    """False when this exact bundle was already active (an idempotent re-install)."""


class BundleStore:
    def __init__(
        self,
        state_dir: str | Path,
        *,
        clock: Clock | None = None,
        max_bytes: int = MAX_BUNDLE_BYTES,
        keep_previous: int = KEEP_PREVIOUS,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.bundles = self.state_dir / "bundles"
        self.trust_dir = self.state_dir / "trust"
        self.clock = clock or SystemClock()
        self.max_bytes = max_bytes
        self.keep_previous = keep_previous
        self.rejections = RejectionLog(self.state_dir)

    # ---- reading -------------------------------------------------------------------------

    def active(self) -> ActivePointer | None:
        return ActivePointer.read(self.bundles)

    def active_policy_dir(self) -> Path | None:
        """The active bundle's files (top-level ``*.yaml`` are the policies), or None."""
        return active_policy_dir(self.state_dir)

    def active_status(self, now: float | None = None) -> ActiveStatus | None:
        pointer = self.active()
        if pointer is None:
            return None
        at = self.clock.now() if now is None else now
        return ActiveStatus(
            digest=pointer.digest,
            name=pointer.name,
            version=pointer.version,
            created=pointer.created,
            expires=pointer.expires,
            activated_at=pointer.activated_at,
            stale=at >= pointer.expires,
            signers=pointer.signers,
            policy_dir=self.bundles / pointer.digest / "files",
        )

    def trust(self, base: TrustStore) -> TrustStore:
        """``base`` advanced through every trust-root rotation this host accepted, in order."""
        store = base
        while (path := self.trust_dir / f"root.{store.version + 1}.json").exists():
            store = store.rotate(read_envelope(path), str(path))
        return store

    # ---- changing ------------------------------------------------------------------------

    def update_root(self, root_file: str | Path, base: TrustStore) -> TrustStore:
        """Accept the next trust root (signed by the current and its own keys) and persist it."""
        path = Path(root_file)
        with self._lock():
            envelope = read_envelope(path)
            new = self.trust(base).rotate(envelope, str(path))
            # Persist what was verified, not whatever the file holds by now.
            write_atomic(self.trust_dir / f"root.{new.version}.json", envelope.to_json())
            return new

    def install(
        self,
        bundle_path: str | Path,
        trust: TrustStore,
        now: float,
        *,
        allow_rollback: bool = False,
        allow_rename: bool = False,
    ) -> Activation:
        """Verify ``bundle_path`` and make it active, or raise :class:`BundleRejected`.

        On rejection the active bundle stays and the refusal is appended to the rejection log.
        ``allow_rollback`` accepts a version below the high-water mark; pass it only for a
        rollback a signed, newer assignment asked for. ``allow_rename`` lets a bundle with another
        name replace the active one (changing a host's policy stream on purpose).
        """
        path = Path(bundle_path)
        manifest: Manifest | None = None
        digest = ""
        with self._lock():
            try:
                data = self._read(path)
                verified = verify_bundle(data, self.trust(trust), now, max_bytes=self.max_bytes)
                manifest, digest = verified.manifest, verified.digest
                current = self.active()
                check_succession(verified, current, allow_rollback, allow_rename)
                if current is not None and current.digest == verified.digest:
                    return Activation(digest, manifest.name, manifest.version, digest, False)
                try:
                    self._stage(verified, data)
                    failpoints.hit("bundle_after_extract_before_swap")
                    self._swap(verified, current, now)
                except OSError as exc:  # a full or read-only state disk: the old bundle stays
                    raise BundleRejected(
                        Reason.STORAGE_ERROR, f"cannot store the bundle under {self.bundles}: {exc}"
                    ) from None
                failpoints.hit("bundle_after_swap")
            except BundleRejected as exc:
                self._record(exc, path, now, digest, manifest)
                raise
            self._prune()
        previous = current.digest if current else None
        return Activation(digest, manifest.name, manifest.version, previous, True)

    def _record(
        self, exc: BundleRejected, path: Path, now: float, digest: str, manifest: Manifest | None
    ) -> None:
        rejection = Rejection(
            at=now,
            reason=str(exc.reason),
            message=exc.message,
            file=str(path),
            digest=digest,
            name=manifest.name if manifest else "",
            version=manifest.version if manifest else None,
        )
        try:
            self.rejections.append(rejection)
        except OSError as error:  # the disk is full; the caller still gets the rejection
            exc.add_note(f"(not recorded in {self.rejections.path}: {error.strerror})")

    def _read(self, path: Path) -> bytes:
        try:
            with path.open("rb") as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise BundleRejected(Reason.UNREADABLE, f"{path}: {exc.strerror}") from None
        if len(data) > self.max_bytes:
            raise BundleRejected(Reason.TOO_LARGE, f"{path} is over {self.max_bytes} bytes")
        return data

    def _stage(self, verified: VerifiedBundle, data: bytes) -> None:
        """Extract into a fresh staging directory, check the policies load, rename into place."""
        staging = self.bundles / f".staging-{verified.digest}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        files = staging / "files"
        files.mkdir(parents=True)
        try:
            for entry in verified.manifest.files:
                target = files / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                mode = 0o555 if entry.executable else 0o444
                write_synced(target, verified.files[entry.path], mode)
            write_synced(staging / "bundle", data, 0o444)
            for directory in sorted({p.parent for p in staging.rglob("*")}, reverse=True):
                fsync_dir(directory)
            _check_policies(files)
            final = self.bundles / verified.digest
            shutil.rmtree(final, ignore_errors=True)  # never the active one: same digest returns
            os.rename(staging, final)
            fsync_dir(self.bundles)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _swap(self, verified: VerifiedBundle, current: ActivePointer | None, now: float) -> None:
        manifest = verified.manifest
        same_stream = current is not None and current.name == manifest.name
        high = current.high_water_version if current and same_stream else 0
        history = (current.digest, *current.history) if current else ()
        ActivePointer(
            digest=verified.digest,
            payload_digest=verified.payload_digest,
            name=manifest.name,
            version=manifest.version,
            created=manifest.created,
            expires=manifest.expires,
            activated_at=now,
            signers=tuple(sorted(verified.signers)),
            high_water_version=max(high, manifest.version),
            high_water_payload=(
                verified.payload_digest
                if manifest.version >= high or current is None
                else current.high_water_payload
            ),
            history=tuple(d for d in history if d != verified.digest)[:MAX_HISTORY],
        ).write(self.bundles)

    def _prune(self) -> None:
        """Remove staging leftovers and bundles older than the ``keep_previous`` most recent."""
        pointer = self.active()
        if pointer is None:
            return
        keep = {pointer.digest, *pointer.history[: self.keep_previous]}
        for entry in self.bundles.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.bundles.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.bundles / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _check_policies(files: Path) -> None:
    result = load_dir(files)
    if result.errors:
        shown = "; ".join(str(e).replace(f"{files}/", "") for e in result.errors[:5])
        more = f" (+{len(result.errors) - 5} more)" if len(result.errors) > 5 else ""
        raise BundleRejected(
            Reason.INVALID_POLICY, f"this agent cannot load the bundle's policies: {shown}{more}"
        )
