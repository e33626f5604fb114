"""The agent's exception hierarchy. Errors carry data; messages say what, where and what to do."""

from __future__ import annotations

from dataclasses import dataclass


class StanchError(Exception):
    """Base class for every error the agent raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One problem in one field of one file: ``policies/web.yaml: spec.checks.web.port: ...``."""

    file: str
    path: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.problem}"


class PolicyError(StanchError):
    """A policy document is invalid. ``errors`` holds every problem found, not just the first."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class ConfigError(StanchError):
    """The agent configuration file is invalid."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class CheckError(StanchError):
    """A check could not produce a sample (its result is UNKNOWN, with this message)."""
