"""Where the wire lives: grpc only in the fleet client (``client.py`` and the ``client_*.py``
modules it is split into), generated code only in the client and its converters, and the control
plane never imported by the agent's fleet code either."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
CLIENT = {"agent/fleet/client.py", "agent/fleet/client_channel.py", "agent/fleet/client_session.py"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def users(prefix: str) -> set[str]:
    return {
        str(path.relative_to(AGENT.parent))
        for path in AGENT.rglob("*.py")
        if any(name == prefix or name.startswith(prefix + ".") for name in imports(path))
    }


def test_grpc_is_imported_only_by_the_fleet_client() -> None:
    assert users("grpc") == CLIENT


def test_generated_code_is_used_only_by_the_client_and_its_converters() -> None:
    assert users("stanch") == CLIENT | {"agent/fleet/wire.py"}


def test_cryptography_stays_out_of_the_modules_the_client_loads() -> None:
    """The verifier child checks signatures; the long-lived modules never import cryptography
    (``assignment`` imports it only inside the function the verifier calls)."""
    client = ("client", "client_channel", "client_session")
    for name in ("apply", *client, "health", "outbox", "pause", "rejections", "wire", "config"):
        assert not [m for m in imports(AGENT / "fleet" / f"{name}.py") if "cryptography" in m]
    top = ast.parse((AGENT / "fleet" / "assignment.py").read_text())
    module_level = [n for n in top.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not [n for n in module_level if "cryptography" in ast.dump(n) or "dsse" in ast.dump(n)]
