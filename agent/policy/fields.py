"""A reader for one YAML mapping that collects every error with its full path, then fails once.

Each section of a policy is read through a ``Fields`` object: it takes typed values out of the
mapping, records problems as ``FieldError``s (file, dotted path, what to do), and at the end reports
every key nobody asked for as unknown. Parsers never raise for bad input; they return defaults and
let the caller decide after collecting everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agent.duration import parse_duration
from agent.errors import FieldError

T = TypeVar("T")
_MISSING = object()


class ErrorSink:
    """Collects FieldErrors for one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[FieldError] = []

    def add(self, path: str, problem: str) -> None:
        self.errors.append(FieldError(self.file, path, problem))


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Fields:
    """Typed access to one mapping at ``path``; unknown keys are reported by ``done()``."""

    def __init__(self, raw: object, path: str, sink: ErrorSink) -> None:
        self.path = path
        self.sink = sink
        self.ok = isinstance(raw, Mapping)
        if not self.ok:
            sink.add(path, f"expected a mapping, got {type(raw).__name__}")
        self.raw: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def error(self, key: str, problem: str) -> None:
        self.sink.add(self.at(key), problem)

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The raw value; reports 'required' when missing and no default is given."""
        self._seen.add(key)
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is _MISSING:
            self.sink.add(self.at(key), "required field missing")
            return None
        return default

    def typed(self, key: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is None or value is default:
            return value
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.error(key, f"expected {_names(kinds)}, got a boolean")
            return None if default is _MISSING else default
        if int in kinds and float not in kinds and isinstance(value, float):
            self.error(key, f"expected {_names(kinds)}, got {value!r}")
            return None if default is _MISSING else default
        if float in kinds and isinstance(value, int):
            return float(value)
        if not isinstance(value, kinds):
            self.error(key, f"expected {_names(kinds)}, got {type(value).__name__} {value!r}")
            return None if default is _MISSING else default
        return value

    def string(self, key: str, default: Any = _MISSING) -> Any:
        return self.typed(key, str, default)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self.typed(key, bool, default)

    def number(self, key: str, default: Any = _MISSING, minimum: float | None = None) -> Any:
        value = self.typed(key, (int, float), default)
        if isinstance(value, int | float) and minimum is not None and value < minimum:
            self.error(key, f"must be at least {minimum}, got {value}")
            return default if default is not _MISSING else None
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> Any:
        value = self.typed(key, int, default)
        if isinstance(value, int) and minimum is not None and value < minimum:
            self.error(key, f"must be at least {minimum}, got {value}")
            return default if default is not _MISSING else None
        return value

    def duration(self, key: str, default: Any = _MISSING, minimum: float | None = None) -> Any:
        value = self.get(key, default)
        if value is None or (value is default and not isinstance(value, str)):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return parse_duration(default) if isinstance(default, str | int | float) else None
        if minimum is not None and seconds < minimum:
            self.error(key, f"must be at least {minimum:g}s, got {value!r}")
        return seconds

    def choice(self, key: str, choices: Mapping[str, T], default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is None or value is default and not isinstance(value, str):
            return value
        if isinstance(value, str) and value in choices:
            return choices[value]
        self.error(key, f"must be one of {', '.join(sorted(choices))}; got {value!r}")
        return None

    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is None or value is default:
            return value
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "expected a list of strings")
            return ()
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self.get(key, {})
        if not isinstance(value, Mapping):
            self.error(key, "expected a mapping of strings to strings")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if (
                not isinstance(k, str)
                or isinstance(v, bool)
                or not isinstance(v, str | int | float)
            ):
                self.sink.add(join(self.at(key), str(k)), "expected a string value")
                continue
            out[k] = str(v)
        return out

    def section(self, key: str, required: bool = False) -> Fields:
        value = self.get(key, _MISSING if required else {})
        return Fields(value if value is not None else {}, self.at(key), self.sink)

    def items(
        self, key: str, parse: Callable[[object, str], T | None], required: bool = False
    ) -> list[T]:
        """Parse a list, calling ``parse(item, path)`` for each element."""
        value = self.get(key, _MISSING if required else [])
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, "expected a list")
            return []
        out: list[T] = []
        for i, item in enumerate(value):
            parsed = parse(item, join(self.at(key), i))
            if parsed is not None:
                out.append(parsed)
        return out

    def done(self) -> None:
        """Report every key that no parser asked for (catches typos such as 'nmae')."""
        for key in self.raw:
            if key not in self._seen:
                known = ", ".join(sorted(self._seen)) or "none"
                self.sink.add(self.at(str(key)), f"unknown key {key!r} (known keys: {known})")


def _names(kinds: tuple[type, ...]) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)
