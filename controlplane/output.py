"""Output the kubectl way: ``-o table`` (default) for people, ``-o json|yaml`` for scripts.

Machine formats print the API's own messages (field names as in ``admin.proto``), so a script
written against ``-o json`` keeps working when the table layout changes. Tables are plain text:
upper-case headers, columns padded with two spaces, no colour, so they survive ``grep`` and
``less``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

FORMATS = ("table", "json", "yaml")


def add_output_arg(parser: Any) -> None:
    parser.add_argument("-o", "--output", choices=FORMATS, default="table", help="format")


def message_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    doc: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return doc


def emit(doc: Any, fmt: str, table: Callable[[], str]) -> None:
    if fmt == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif fmt == "yaml":
        import yaml

        print(yaml.safe_dump(doc, sort_keys=True, default_flow_style=False), end="")
    else:
        print(table())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h).upper() for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def ago(ts: float, now: float | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since ``ts``; ``-`` for never."""
    if not ts:
        return "-"
    seconds = max(0.0, (now if now is not None else time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def stamp(ts: float) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def labels_text(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(dict(labels).items())) or "-"
