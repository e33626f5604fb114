"""``prometheus``: read one sample from a local exporter's ``/metrics``.

Whatever an exporter already measures (queue depth, replication lag, connection pool use) becomes
a check without a plugin. The endpoint is scraped over plain HTTP: exporters a node agent reads
listen on the host itself, and TLS to localhost would only add certificates to manage.

When several series match the labels, the first in the exposition is used and the summary says how
many matched; name labels precisely to pick one. A missing series is ``found=0`` (CRITICAL by
default); an endpoint that does not answer 200 is an error (UNKNOWN), since nothing was measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.checks.base import Check, CheckEnv, CheckType, Sample, Threshold, describe_error
from agent.checks.exposition import METRIC_NAME_RE, find
from agent.checks.http import fetch, parse_url
from agent.errors import CheckError
from agent.policy.fields import Fields

SCRAPE_LIMIT = 8 << 20
"""Bytes read from an exposition; large exporters serve a few MiB, none of them need more."""
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    metric: str
    labels: Mapping[str, str] = field(default_factory=dict)
    request_timeout: float = 5.0


def parse(f: Fields) -> PrometheusConfig:
    url = parse_url(f, "url", ("http",))
    metric = f.string("metric")
    if isinstance(metric, str) and not METRIC_NAME_RE.match(metric):
        f.error("metric", f"{metric!r} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
    labels = f.str_map("labels")
    timeout = f.duration("request_timeout", "5s", minimum=0.01)
    return PrometheusConfig(url, metric or "", labels, timeout or 5.0)


class PrometheusCheck:
    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config

    def sample(self) -> Sample:
        import http.client

        c = self.config
        try:
            resp = fetch(c.url, {"Accept": ACCEPT}, c.request_timeout, SCRAPE_LIMIT)
        except (OSError, http.client.HTTPException) as exc:
            raise CheckError(f"cannot scrape {c.url}: {describe_error(exc)}") from exc
        if resp.status != 200:
            raise CheckError(f"scraping {c.url} answered HTTP {resp.status}, expected 200")
        text = resp.body.decode("utf-8", errors="replace")
        if resp.truncated:
            # Keep only whole lines; the cut one could hold a wrong number.
            text = text[: text.rfind("\n") + 1]
        sample, matches = find(text, c.metric, c.labels)
        if sample is None:
            if resp.truncated:
                raise CheckError(f"{c.url} serves more than {SCRAPE_LIMIT >> 20} MiB and "
                                 f"{c.metric} was not in the part read")  # fmt: skip
            return Sample({"value": 0.0, "found": 0.0}, f"{self._series()} not found")
        more = f" (first of {matches} matching series)" if matches > 1 else ""
        return Sample({"value": sample.value, "found": 1.0},
                      f"{self._series()} = {sample.value:g}{more}")  # fmt: skip

    def _series(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(self.config.labels.items()))
        return f"{self.config.metric}{{{labels}}}" if labels else self.config.metric


def build(config: PrometheusConfig, env: CheckEnv) -> Check:
    return PrometheusCheck(config)


PROMETHEUS = CheckType(
    name="prometheus",
    parse=parse,
    build=build,
    metrics=frozenset({"value", "found"}),
    default_critical=Threshold("found", "<", 1.0),
    description="One sample of a metric (matching labels) from a Prometheus text endpoint.",
)
