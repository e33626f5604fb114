"""Architecture rules kept as tests: the agent stands alone, and its start-up stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"

# Modules the agent must not load just to start: network stacks and TLS are imported lazily,
# inside the checks and sinks that use them, so an agent that never runs an HTTP check never
# pays for them (memory and start-up time on every host of the fleet).
HEAVY = ("grpc", "http.client", "ssl", "urllib.request", "prometheus_client", "controlplane")


def agent_sources() -> list[Path]:
    files = sorted(AGENT.rglob("*.py"))
    assert len(files) > 20, "the walk found too few agent modules"
    return files


def imported_modules(source: str, path: Path) -> list[tuple[int, str]]:
    """Every module the module at ``path`` imports, at any depth (functions, TYPE_CHECKING
    blocks too), plus string arguments of ``importlib.import_module``/``__import__`` calls."""
    tree = ast.parse(source, filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join(package)
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            elif node.module:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                found.append((node.lineno, str(arg.value)))
    return found


def test_the_agent_never_imports_the_control_plane() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in agent_sources()
        for line, module in imported_modules(path.read_text(), path)
        if module == "controlplane" or module.startswith("controlplane.")
    ]
    assert offenders == [], "agent/ must stand alone:\n" + "\n".join(offenders)


def test_the_import_walk_sees_imports_everywhere() -> None:
    """The checker itself: imports inside functions, TYPE_CHECKING blocks and importlib count."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from controlplane.store import Store\n"
        "def f():\n"
        "    import controlplane.api as api\n"
        "    importlib.import_module('controlplane.keys')\n"
        "from . import journal\n"
        "from ..checks import base\n"
    )
    modules = [m for _, m in imported_modules(source, AGENT / "engine" / "probe.py")]
    assert sorted(modules) == [
        "agent.checks",
        "agent.engine",
        "controlplane.api",
        "controlplane.keys",
        "controlplane.store",
        "typing",
    ]


@pytest.mark.parametrize("entry", ["agent.runner", "agent.cli"])
def test_starting_the_agent_does_not_load_network_or_tls_stacks(entry: str) -> None:
    code = (
        "import json, sys\n"
        f"import {entry}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
        f"or m in {HEAVY!r})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import {entry} pulled in {loaded}; import them where they are used"
