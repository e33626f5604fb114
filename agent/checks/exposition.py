"""A minimal reader of the Prometheus text exposition format (version 0.0.4).

Enough to find one sample of one metric in what an exporter serves, without the prometheus-client
dependency: ``name{label="value",...} value [timestamp]`` lines, ``#`` comments and metadata
skipped, label values with ``\\\\``, ``\\"`` and ``\\n`` escapes, and the special values ``+Inf``,
``-Inf`` and ``NaN``. Lines that do not parse are skipped rather than failing the whole scrape: an
exporter's one odd line should not blind every check that reads another metric from it.

Reference: https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass(frozen=True)
class PromSample:
    name: str
    labels: Mapping[str, str]
    value: float


def samples(text: str, name: str | None = None) -> Iterator[PromSample]:
    """Every sample in ``text``, or only those of metric ``name`` (cheaply skipping the rest)."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if name is not None and not (
            line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ", "\t")
        ):
            continue
        sample = parse_line(line)
        if sample is not None and (name is None or sample.name == name):
            yield sample


def find(
    text: str, name: str, labels: Mapping[str, str] | None = None
) -> tuple[PromSample | None, int]:
    """The first sample of ``name`` whose labels include all of ``labels``, and how many match."""
    want = dict(labels or {})
    first: PromSample | None = None
    count = 0
    for sample in samples(text, name):
        if all(sample.labels.get(k) == v for k, v in want.items()):
            count += 1
            first = first or sample
    return first, count


def parse_line(line: str) -> PromSample | None:
    """One sample line, or None when it is not one."""
    i = 0
    n = len(line)
    while i < n and (line[i].isalnum() or line[i] in "_:"):
        i += 1
    name = line[:i]
    if not METRIC_NAME_RE.match(name):
        return None
    labels: dict[str, str] = {}
    if i < n and line[i] == "{":
        parsed = _labels(line, i + 1)
        if parsed is None:
            return None
        labels, i = parsed
    fields = line[i:].split()
    if not fields or len(fields) > 2:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return PromSample(name, labels, value)


def _labels(line: str, i: int) -> tuple[dict[str, str], int] | None:
    """Parse ``a="x",b="y"}`` starting at ``i``; return the labels and the index after ``}``."""
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while i < n and line[i] in " \t,":
            i += 1
        if i < n and line[i] == "}":
            return labels, i + 1
        start = i
        while i < n and (line[i].isalnum() or line[i] == "_"):
            i += 1
        key = line[start:i]
        while i < n and line[i] in " \t":
            i += 1
        if not key or i >= n or line[i] != "=":
            return None
        i += 1
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] != '"':
            return None
        i += 1
        value: list[str] = []
        while i < n and line[i] != '"':
            if line[i] == "\\" and i + 1 < n:
                value.append(_ESCAPES.get(line[i + 1], "\\" + line[i + 1]))
                i += 2
            else:
                value.append(line[i])
                i += 1
        if i >= n:
            return None
        labels[key] = "".join(value)
        i += 1
