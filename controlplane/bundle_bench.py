"""Time bundle verification and activation on an agent: ``python -m controlplane.bundle_bench``.

Builds a real bundle of about ``--mib`` MiB (two policies and an incompressible data file), signs
it with 2 of 3 keys, then times ``verify_bundle`` (parse, canonical check, signatures, SHA-256 of
every file) and ``BundleStore.install`` (the same plus extraction, fsyncs, policy load and the
pointer swap) into a fresh state directory each run. Prints the median and the worst run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.bundle.store import BundleStore
from agent.bundle.verify import verify_bundle
from controlplane.bundle_fixtures import T0, KeyRing, make_bundle, policy_text, write_source


def timed(runs: int, action: Callable[[int], object]) -> tuple[float, float]:
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        action(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), max(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bundle_bench")
    parser.add_argument("--mib", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    ring = KeyRing.generate(3)
    trust = ring.trust(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = write_source(
            root / "src",
            {"a.yaml": policy_text("a"), "b.yaml": policy_text("b")},
            {
                "data/blob.bin": os.urandom(int(args.mib * (1 << 20))).hex()[
                    : int(args.mib * (1 << 20))
                ]
            },
        )
        bundle = make_bundle(source, ring, [0, 1])
        path = bundle.write(root / "out")
        size = len(bundle.data)
        verify = timed(args.runs, lambda _: verify_bundle(bundle.data, trust, T0))
        install = timed(
            args.runs, lambda i: BundleStore(root / f"state{i}").install(path, trust, T0)
        )
    files = len(bundle.manifest.files)
    print(f"bundle: {size} bytes ({size / (1 << 20):.2f} MiB), {files} files, 2 of 3 signatures")
    for label, (median, worst) in (("verify_bundle", verify), ("BundleStore.install", install)):
        print(f"{label:<20} median {median * 1000:7.2f} ms   max {worst * 1000:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
