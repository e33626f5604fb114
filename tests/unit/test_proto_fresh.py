"""``proto/`` is the one source of truth: the committed ``stanch/`` must be what it generates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("proto_generate", module)
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_the_proto_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is not installed")
    generator = load_generator()
    files = generator.generate(tmp_path)
    assert Path("stanch/v1/fleet_pb2.py") in files
    assert Path("stanch/v1/fleet_pb2_grpc.py") in files
    problems = generator.stale(REPO, tmp_path, files)
    assert problems == [], (
        "stanch/ is stale; run `make proto` and commit the result:\n  " + "\n  ".join(problems)
    )


def test_every_proto_is_generated_and_every_file_carries_the_header(tmp_path: Path) -> None:
    generator = load_generator()
    protos = list((REPO / "proto" / "stanch").rglob("*.proto"))
    assert protos, "no .proto files found"
    for proto in protos:
        stem = proto.relative_to(REPO / "proto").with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = REPO / stem.parent / f"{stem.name}{suffix}"
            assert path.exists(), f"{path.relative_to(REPO)} missing: run `make proto`"
            first = path.read_text().splitlines()[0]
            assert first == generator.HEADER.format(source=f"{stem}.proto").strip()


def test_the_check_flag_reports_a_stale_file(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is not installed")
    generator = load_generator()
    generator.generate(tmp_path)
    (tmp_path / "stanch" / "v1" / "fleet_pb2.py").write_text("# edited by hand\n")
    (tmp_path / "stanch" / "v1" / "gone_pb2.py").write_text("# from a deleted proto\n")
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1
    assert generator.main(["--check", "--out", str(REPO)]) == 0
