"""The docs stay true to the code: the cookbook's policies validate with the real CLI and match
the YAML shown in the cookbook, the policy reference names every check type, metric, decision
reason and sink type the code knows, and every link and alert runbook anchor resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from agent.checks import CHECK_TYPES
from agent.policy.loader import load_dir, load_text
from agent.sinks import SINK_TYPES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
COOKBOOK = DOCS / "cookbook"


def test_stanch_agent_check_accepts_the_cookbook() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", str(COOKBOOK)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok: 5 policies valid"


def test_the_cookbook_shows_exactly_the_policies_it_ships() -> None:
    text = (DOCS / "cookbook.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    shown = {}
    for i, block in enumerate(blocks):
        policies, errors = load_text(block, f"cookbook.md block {i}")
        assert errors == []
        shown.update({p.name: replace(p, source="") for p in policies})
    shipped = {p.name: replace(p, source="") for p in load_dir(COOKBOOK).policies}
    assert shown == shipped


def heading_ids(path: Path) -> set[str]:
    """GitHub's anchors: lowercase, punctuation dropped, spaces to hyphens."""
    ids = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return ids


def test_the_policy_reference_covers_the_code() -> None:
    text = (DOCS / "policy-reference.md").read_text()
    ids = heading_ids(DOCS / "policy-reference.md")
    missing = []
    for name, ctype in CHECK_TYPES.items():
        if name not in ids:
            missing.append(f"check type {name}")
        for metric in sorted(ctype.metrics or ()):
            if f"`{metric}`" not in text:
                missing.append(f"{name} metric {metric}")
    decide = (ROOT / "agent" / "engine" / "decide.py").read_text()
    reasons = set(re.findall(r'_suppress\(\s*"([a-z_]+)"', decide))
    reasons |= set(re.findall(r'Outcome\.\w+,\s*"([a-z_]+)"', decide))
    assert len(reasons) >= 14
    missing += [f"reason {r}" for r in sorted(reasons) if f"| `{r}` |" not in text]
    missing += [f"sink type {s}" for s in SINK_TYPES if f"`{s}`" not in text]
    assert missing == []


LINK = re.compile(r"\]\(([^)#\s]+)?(?:#([^)\s]+))?\)")


@pytest.mark.parametrize(
    "doc", ["operator-guide.md", "policy-reference.md", "cookbook.md"], ids=str
)
def test_local_links_resolve(doc: str) -> None:
    path = DOCS / doc
    broken = []
    for target, anchor in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in heading_ids(dest):
            broken.append(f"{target}#{anchor}")
    assert broken == []


def test_alert_runbook_anchors_exist_in_the_operator_guide() -> None:
    rules = yaml.safe_load((ROOT / "packaging" / "monitoring" / "alerts.yaml").read_text())
    ids = heading_ids(DOCS / "operator-guide.md")
    for group in rules["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"].get("runbook_url", "")
            if "operator-guide.md#" in url:
                assert url.rsplit("#", 1)[1] in ids, rule["alert"]
