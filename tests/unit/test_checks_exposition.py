"""The minimal Prometheus text-format reader."""

from __future__ import annotations

import math

from agent.checks.exposition import find, parse_line, samples

FIXTURE = r"""# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\F.TXT",error="Cannot find:\n\"F.TXT\""} 1.458e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47
http_requests_total_sum 5

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045
neg_inf -Inf
not_a_number NaN
spaced{ a = "x y}" , b="2", } 7
broken{a="x" 1
"""


def test_samples_of_one_metric_skip_prefix_lookalikes() -> None:
    got = list(samples(FIXTURE, "http_requests_total"))
    assert [(s.labels["code"], s.value) for s in got] == [("200", 1027.0), ("400", 3.0)]


def test_escaped_label_values() -> None:
    (s,) = samples(FIXTURE, "msdos_file_access_time_seconds")
    assert s.labels == {"path": "C:\\DIR\\F.TXT", "error": 'Cannot find:\n"F.TXT"'}
    assert s.value == 1.458e9


def test_special_values_and_timestamps() -> None:
    assert find(FIXTURE, "something_weird")[0].value == math.inf  # type: ignore[union-attr]
    assert find(FIXTURE, "neg_inf")[0].value == -math.inf  # type: ignore[union-attr]
    assert math.isnan(find(FIXTURE, "not_a_number")[0].value)  # type: ignore[union-attr]
    assert find(FIXTURE, "metric_without_timestamp_and_labels")[0].value == 12.47  # type: ignore[union-attr]


def test_find_matches_all_given_labels_and_counts() -> None:
    sample, count = find(FIXTURE, "http_requests_total", {"code": "400"})
    assert sample is not None and sample.value == 3.0 and count == 1
    sample, count = find(FIXTURE, "http_requests_total", {"method": "post"})
    assert sample is not None and sample.value == 1027.0 and count == 2
    assert find(FIXTURE, "http_requests_total", {"code": "500"}) == (None, 0)
    assert find(FIXTURE, "absent") == (None, 0)


def test_whitespace_and_trailing_comma_in_labels() -> None:
    sample, _ = find(FIXTURE, "spaced", {"a": "x y}"})
    assert sample is not None and sample.labels == {"a": "x y}", "b": "2"} and sample.value == 7


def test_malformed_lines_are_skipped() -> None:
    assert find(FIXTURE, "broken") == (None, 0)
    for line in ("", "9starts_with_digit 1", "name", "name abc", "name 1 2 3", 'n{a="1"'):
        assert parse_line(line) is None
