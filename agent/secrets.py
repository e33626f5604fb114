"""Where the agent's secrets come from, and the rules that keep them out of bundles and output.

A notification sink's secret (a webhook URL, a PagerDuty routing key, a Slack webhook URL) is
named in the AGENT config as ``<key>_file`` (a file on the host) or ``<key>_env`` (an environment
variable of the agent's unit). Never in a policy or a bundle: those are signed once, copied to
every host, kept in the control plane and shown in reviews, so a secret there is a secret leaked
to everyone who can read a rollout. The policy loader refuses them (``secret_in_policy``).

A secret file must not be readable or writable by every user on the host: that is a load error
(and a failed delivery, should the mode change later). "By every user" means the file's ``o+r`` /
``o+w`` bit while every directory above it is searchable by others: a 0644 file inside a 0700
directory is out of reach, as ssh judges its keys by what others can actually open.

Values are read at send time (rotating the file needs no restart) and once at config load, so that
the redactor (``agent.redact``) knows them and scrubs them from every log, report and payload.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from agent.errors import StanchError

MAX_SECRET_BYTES = 8192
SECRET_ENV_SUFFIXES = (
    "_TOKEN",
    "_SECRET",
    "_PASSWORD",
    "_PASSWD",
    "_KEY",
    "_API_KEY",
    "_CREDENTIALS",
    "_PRIVATE_KEY",
)
SECRET_ENV_NAMES = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "KEY"})


class SecretError(StanchError):
    """A secret cannot be used: unreadable, empty, or exposed to every user."""


def looks_secret(name: str) -> bool:
    """An environment variable name that holds a secret by convention (``GITHUB_TOKEN``,
    ``DB_PASSWORD``, ``AWS_SECRET_ACCESS_KEY``). ``*_FILE`` names (a path) are not."""
    upper = name.upper()
    return upper in SECRET_ENV_NAMES or upper.endswith(SECRET_ENV_SUFFIXES)


def exposure(path: str | Path) -> str | None:
    """Why ``path`` is exposed to every user on the host, or None. A missing file is not
    exposed (the caller reports it as missing when it reads)."""
    target = Path(path)
    try:
        mode = target.stat().st_mode
    except OSError:
        return None
    bits = []
    if mode & stat.S_IROTH:
        bits.append("readable")
    if mode & stat.S_IWOTH:
        bits.append("writable")
    if not bits:
        return None
    for parent in target.resolve().parents:
        try:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return None  # Others cannot get past this directory.
        except OSError:
            return None
    what = " and ".join(bits)
    return (
        f"{path} is {what} by every user on this host (mode {stat.S_IMODE(mode):04o}); "
        f"run: chmod 600 {path} (or 640 with a group only the agent is in)"
    )


@dataclass(frozen=True)
class SecretRef:
    """Where a value comes from: a file or an environment variable (secret), or the config
    itself (not secret). Read at send time, so rotating the file needs no restart."""

    value: str | None = None
    file: str | None = None
    env: str | None = None

    def read(self, what: str, environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """The value and whether it is a secret; SecretError when it cannot be used."""
        if self.value:
            return self.value, False
        if self.file:
            problem = exposure(self.file)
            if problem:
                raise SecretError(f"{what}_file {problem}")
            try:
                with open(self.file, encoding="utf-8") as fh:
                    text = fh.read(MAX_SECRET_BYTES).strip()
            except OSError as exc:
                raise SecretError(f"cannot read {what}_file {self.file}: {exc.strerror}") from None
            if not text:
                raise SecretError(f"{what}_file {self.file} is empty")
            return text, True
        env = os.environ if environ is None else environ
        value = env.get(self.env or "", "").strip()
        if not value:
            raise SecretError(
                f"environment variable {self.env} ({what}_env) is not set in the agent's "
                "environment"
            )
        return value, True

    @property
    def where(self) -> str:
        return self.file or self.env or "config"

    @property
    def is_secret(self) -> bool:
        return bool(self.file or self.env)


def refs_of(config: Any) -> list[tuple[str, SecretRef]]:
    """The (key, SecretRef) pairs of one sink's typed config, whatever its type; the key is the
    YAML key the ref was read from (``url``, ``routing_key``)."""
    if not is_dataclass(config):
        return []
    out: list[tuple[str, SecretRef]] = []
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, SecretRef):
            out.append((f.name, value))
    source = getattr(config, "source", None)  # The webhook keeps url/url_file/url_env flat.
    if isinstance(source, SecretRef) and not out:
        out.append(("url", source))
    return out


def resolve_all(refs: Iterable[SecretRef], environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of every secret ref that can be read now. One that cannot (not there yet, or
    exposed: the config parser reported that with its field) is skipped: delivery retries until
    it appears and reports it meanwhile, and its value is scrubbed from delivery errors."""
    values: list[str] = []
    for ref in refs:
        if not ref.is_secret:
            continue
        try:
            value, _ = ref.read("secret", environ)
        except SecretError:
            continue
        values.append(value)
    return values
