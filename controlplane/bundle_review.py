"""What a reviewer reads before a rollout: ``inspect`` (what is in it, who signed) and ``diff``.

Both read bundles without trusting them, but both check every file against the manifest first, so
what is shown is what a signature over that manifest would cover. ``inspect`` says which
signatures verify only when given a trust directory; otherwise keyids are shown as hints.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from agent.bundle.dsse import Envelope, Signature
from agent.bundle.keys import short_id
from agent.bundle.manifest import Manifest, format_time
from agent.bundle.trust import TrustStore
from agent.policy.loader import load_text
from controlplane.bundle_build import Bundle


def inspect_doc(bundle: Bundle, trust: TrustStore | None, now: float) -> dict[str, Any]:
    m = bundle.manifest
    verified = trust.signers(bundle.envelope) if trust else frozenset()
    return {
        "digest": bundle.digest,
        "name": m.name,
        "version": m.version,
        "created": format_time(m.created),
        "expires": format_time(m.expires),
        "expired": now >= m.expires,
        "policyApiVersion": m.policy_api,
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "sha256": f.sha256,
                "policy": f.is_policy,
                "executable": f.executable,
            }
            for f in m.files
        ],
        "signatures": [
            {"keyid": s.keyid, "verified_by": _verified_by(trust, bundle, s)}
            for s in bundle.envelope.signatures
        ],
        "threshold": trust.threshold if trust else None,
        "trusted_signers": sorted(verified),
    }


def _verified_by(trust: TrustStore | None, bundle: Bundle, sig: Signature) -> str | None:
    """The pinned key this one signature verifies with ("" for none; None without --trust).

    Reported per signature for the reader; the threshold decision counts verified keys only.
    """
    if trust is None:
        return None
    single = Envelope(bundle.envelope.payload_type, bundle.envelope.payload, (sig,))
    return next(iter(trust.signers(single)), "")


def render_inspect(doc: dict[str, Any]) -> str:
    lines = [
        f"bundle   {doc['digest']}",
        f"name     {doc['name']}  version {doc['version']}  schema {doc['policyApiVersion']}",
        f"created  {doc['created']}  expires {doc['expires']}"
        + ("  (EXPIRED: agents will refuse it)" if doc["expired"] else ""),
        f"files    {len(doc['files'])}",
    ]
    for f in doc["files"]:
        kind = "policy" if f["policy"] else ("script" if f["executable"] else "file")
        lines.append(f"  {kind:<6} {f['sha256'][:12]}  {f['size']:>8}  {f['path']}")
    lines.append(f"signatures {len(doc['signatures'])}")
    for s in doc["signatures"]:
        by = s["verified_by"]
        state = (
            "unchecked (pass --trust)"
            if by is None
            else (f"valid, pinned key {short_id(by)}" if by else "NOT valid for any pinned key")
        )
        lines.append(f"  keyid {short_id(s['keyid'])}  {state}")
    if doc["threshold"] is not None:
        ok = len(doc["trusted_signers"]) >= doc["threshold"]
        lines.append(
            f"threshold {len(doc['trusted_signers'])} of {doc['threshold']} required: "
            + ("met" if ok else "NOT met")
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class BundleDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    other_changes: list[str]
    """Non-policy files (scripts, data) added, removed or changed, as ``+ path`` / ``- path``."""
    header: list[str]
    patches: list[str]


def diff(a: Bundle, b: Bundle) -> BundleDiff:
    old, new = a.manifest, b.manifest
    pa = {f.path: f for f in old.policies}
    pb = {f.path: f for f in new.policies}
    changed = sorted(p for p in set(pa) & set(pb) if pa[p].sha256 != pb[p].sha256)
    patches = []
    for path in changed:
        before = a.files[path].decode("utf-8", "replace").splitlines(keepends=True)
        after = b.files[path].decode("utf-8", "replace").splitlines(keepends=True)
        patches.append("".join(difflib.unified_diff(before, after, f"a/{path}", f"b/{path}")))
    return BundleDiff(
        added=sorted(set(pb) - set(pa)),
        removed=sorted(set(pa) - set(pb)),
        changed=changed,
        other_changes=_other_files(old, new),
        header=_header(a, b),
        patches=patches,
    )


def _other_files(old: Manifest, new: Manifest) -> list[str]:
    fa = {f.path: f for f in old.files if not f.is_policy}
    fb = {f.path: f for f in new.files if not f.is_policy}
    out = [f"+ {p}" for p in sorted(set(fb) - set(fa))]
    out += [f"- {p}" for p in sorted(set(fa) - set(fb))]
    out += [f"~ {p}" for p in sorted(set(fa) & set(fb)) if fa[p] != fb[p]]
    return out


def _header(a: Bundle, b: Bundle) -> list[str]:
    old, new = a.manifest, b.manifest
    lines = [
        f"{old.name} v{old.version} ({a.digest[:12]}) -> {new.name} v{new.version} "
        f"({b.digest[:12]})"
    ]
    if new.name != old.name:
        lines.append(f"WARNING: different bundle names ({old.name!r} -> {new.name!r})")
    if new.version <= old.version:
        lines.append(f"WARNING: v{new.version} is not newer than v{old.version}; agents refuse it")
    lines.append(f"expires {format_time(old.expires)} -> {format_time(new.expires)}")
    return lines


def render_diff(d: BundleDiff, a: Bundle, b: Bundle) -> str:
    names = {**_policy_names(a), **_policy_names(b)}
    lines = list(d.header)
    for label, paths in (("added", d.added), ("removed", d.removed), ("changed", d.changed)):
        for path in paths:
            shown = f" ({', '.join(names[path])})" if names.get(path) else ""
            lines.append(f"{label:<8} {path}{shown}")
    if not (d.added or d.removed or d.changed):
        lines.append("no policy changes")
    lines.extend(f"file     {change}" for change in d.other_changes)
    return "\n".join(lines + [""] + d.patches).rstrip() + "\n"


def _policy_names(bundle: Bundle) -> dict[str, list[str]]:
    """Policy names per file, so the summary says *which policies*, not just which files."""
    out = {}
    for entry in bundle.manifest.policies:
        text = bundle.files[entry.path].decode("utf-8", "replace")
        policies, _ = load_text(text, entry.path)
        out[entry.path] = [p.name for p in policies]
    return out
