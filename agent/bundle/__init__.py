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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.bundle.pointer import ActiveStatus
    from agent.bundle.rejection import BundleRejected, Reason, Rejection, read_rejections
    from agent.bundle.store import Activation, BundleStore
    from agent.bundle.trust import TrustError, TrustStore

# Resolved on first use (PEP 562), so reading the active pointer does not load ``cryptography``.
_LAZY = {
    "ActiveStatus": "agent.bundle.pointer",
    "BundleRejected": "agent.bundle.rejection",
    "Reason": "agent.bundle.rejection",
    "Rejection": "agent.bundle.rejection",
    "read_rejections": "agent.bundle.rejection",
    "Activation": "agent.bundle.store",
    "BundleStore": "agent.bundle.store",
    "TrustError": "agent.bundle.trust",
    "TrustStore": "agent.bundle.trust",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agent.bundle' has no attribute {name!r}")


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
