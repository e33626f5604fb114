"""Monitoring Plugins output: the summary line and performance data.

The plugin guidelines (https://www.monitoring-plugins.org/doc/guidelines.html#AEN200) define::

    SUMMARY TEXT | perfdata perfdata
    LONG TEXT LINE 2
    LONG TEXT LINE 3 | perfdata
    perfdata on every following line

Each perfdata item is ``'label'=value[UOM];[warn];[crit];[min];[max]``. The label is quoted with
single quotes when it holds spaces or ``=``, a quote inside it is doubled, and trailing fields may
be missing. The unit of measure (``s``, ``ms``, ``us``, ``%``, ``B``, ``KB``, ``MB``, ``GB``,
``TB``, ``c``, and in practice ``MiB`` and friends) is kept apart and the number is not scaled: a
threshold on ``time`` compares against what the plugin printed. Items that do not parse (``U``
for "undetermined", garbage) are skipped: one odd item from a third-party plugin must not hide
the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VALUE_RE = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)([a-zA-Z%]*)$")
_SANITISE_RE = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True)
class PerfValue:
    label: str
    value: float
    uom: str = ""


def split_output(stdout: str) -> tuple[str, str]:
    """The summary (first line before ``|``) and all perfdata text, joined by spaces."""
    lines = stdout.splitlines()
    if not lines:
        return "", ""
    summary, _, perf = lines[0].partition("|")
    parts = [perf]
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            parts.append(line)
            continue
        _, sep, rest = line.partition("|")
        if sep:
            parts.append(rest)
            in_perf = True
    return summary.strip(), " ".join(p.strip() for p in parts if p.strip())


def parse_perfdata(text: str) -> list[PerfValue]:
    out = []
    for label, field in _items(text):
        match = _VALUE_RE.match(field.split(";", 1)[0])
        if match is None or not label:
            continue
        out.append(PerfValue(label, float(match.group(1)), match.group(2)))
    return out


def metric_name(label: str) -> str:
    """A label as a metric name: lowercase, anything but ``[a-z0-9_]`` becomes ``_``."""
    return _SANITISE_RE.sub("_", label.lower())


def _items(text: str) -> list[tuple[str, str]]:
    """Split perfdata into (label, ``value;warn;crit;min;max``) pairs, honouring quotes."""
    items = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        if text[i] == "'":
            label, i = _quoted(text, i + 1)
        else:
            start = i
            while i < n and text[i] != "=" and not text[i].isspace():
                i += 1
            label = text[start:i]
        if i >= n or text[i] != "=":
            # Not an item (stray word): skip to the next whitespace and carry on.
            while i < n and not text[i].isspace():
                i += 1
            continue
        start = i + 1
        i = start
        while i < n and not text[i].isspace():
            i += 1
        items.append((label, text[start:i]))
    return items


def _quoted(text: str, i: int) -> tuple[str, int]:
    """Read a single-quoted label from just after its opening quote; ``''`` is a quote."""
    chars = []
    n = len(text)
    while i < n:
        if text[i] == "'":
            if i + 1 < n and text[i + 1] == "'":
                chars.append("'")
                i += 2
                continue
            return "".join(chars), i + 1
        chars.append(text[i])
        i += 1
    return "".join(chars), i
