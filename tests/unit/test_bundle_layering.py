"""The arrows point one way: nothing under ``agent/`` imports ``controlplane``, and the agent's
bundle code holds no signing code (no private-key type is even imported)."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_agent_never_imports_the_control_plane() -> None:
    offenders = {
        str(path.relative_to(AGENT.parent)): sorted(
            n for n in imported_modules(path) if n.split(".")[0] == "controlplane"
        )
        for path in AGENT.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_agent_bundle_code_cannot_sign() -> None:
    paths = [*AGENT.joinpath("bundle").rglob("*.py"), AGENT / "cli_bundle.py"]
    for path in paths:
        assert not any("Ed25519PrivateKey" in n for n in imported_modules(path)), path
