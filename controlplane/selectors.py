"""Label selectors as operators write them (``env=prod,region=eu``), kubectl-style equality only.

A selector matches a host when every ``key=value`` it names is among the host's labels; the empty
selector matches every host. Two selectors *overlap* unless some key is pinned to different values
in each: that is the test behind "one active rollout per selector", because two rollouts whose
selectors can match the same host would fight over it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from controlplane.errors import InvalidRequest

_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


def parse_selector(text: str | Iterable[str] | None) -> dict[str, str]:
    """``"a=1,b=2"`` (or several such strings, as repeated ``-l`` give) -> ``{"a": "1", ...}``."""
    parts: list[str] = []
    for chunk in [text] if isinstance(text, str) else (text or []):
        parts.extend(p.strip() for p in chunk.split(",") if p.strip())
    selector: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if value.startswith("="):  # kubectl also accepts "=="
            value = value[1:].strip()
        if not sep or not _KEY.match(key) or not _VALUE.match(value):
            raise InvalidRequest(
                f"selector {part!r}: expected key=value (letters, digits, '.', '_', '-')"
            )
        if key in selector and selector[key] != value:
            raise InvalidRequest(f"selector names {key!r} twice with different values")
        selector[key] = value
    return selector


def format_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(all hosts)"


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Could one host match both? Only a key pinned to two different values rules it out."""
    return all(b[key] == value for key, value in a.items() if key in b)
