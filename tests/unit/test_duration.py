"""Durations as operators write them, and the short form the agent prints back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.duration import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        (" 2 m ", 120.0),
        ("0s", 0.0),
    ],
)
def test_parse_text(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (5, 5.0), (2.5, 2.5)])
def test_plain_numbers_are_seconds(value: float, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value", ["", "   ", "5", "1x", "s", "-1s", "1h 30", "30 seconds", "ms", "1.s", None, [], {}]
)
def test_rejects_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like '30s'"):
        parse_duration(value)


def test_rejects_booleans_even_though_they_are_ints() -> None:
    with pytest.raises(ValueError, match="got True"):
        parse_duration(True)


def test_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        parse_duration(-1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "500ms"),
        (0.029, "29ms"),
        (1, "1s"),
        (59.6, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (86461, "1d1m1s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
def test_whole_seconds_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=999))
def test_milliseconds_round_trip(ms: int) -> None:
    text = f"{ms}ms"
    assert format_duration(parse_duration(text)) == text


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=1000), st.sampled_from(["s", "m", "h", "d"])),
        min_size=1,
        max_size=5,
    )
)
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    size = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == sum(n * size[unit] for n, unit in parts)
