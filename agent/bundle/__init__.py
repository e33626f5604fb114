"""Signed policy bundles: the format, DSSE verification, pinned trust and the last-known-good store.

Shared by both halves: ``opsctl`` (control plane) builds and signs with these types, the agent
verifies and activates with them. Nothing here imports ``controlplane``, and nothing here signs.

- ``manifest``  what a signature covers (files, name, version, created/expires, schema)
- ``archive``   the deterministic tar that carries it
- ``dsse``      the envelope and PAE; threshold counting over pinned keys
- ``keys``      Ed25519 public keys and key ids
- ``trust``     pinned keys or a signed trust root, with TUF-style rotation
- ``verify``    bundle verification, each failure a named ``Reason``
- ``succession``  monotonic versions and the replay high-water mark
- ``store``     ``BundleStore``: atomic activation, last-known-good, rejection log
"""

from agent.bundle.pointer import ActiveStatus
from agent.bundle.rejection import BundleRejected, Reason, Rejection, read_rejections
from agent.bundle.store import Activation, BundleStore
from agent.bundle.trust import TrustError, TrustStore

__all__ = [
    "Activation",
    "ActiveStatus",
    "BundleRejected",
    "BundleStore",
    "Reason",
    "Rejection",
    "TrustError",
    "TrustStore",
    "read_rejections",
]
