"""Label selectors: parsing as kubectl does, matching, and overlap between rollouts."""

from __future__ import annotations

import pytest

from controlplane.errors import InvalidRequest
from controlplane.selectors import format_selector, matches, overlap, parse_selector


def test_parse_forms() -> None:
    assert parse_selector("env=prod,role==web") == {"env": "prod", "role": "web"}
    assert parse_selector(["env=prod", "region=eu"]) == {"env": "prod", "region": "eu"}
    assert parse_selector(None) == {} and parse_selector("") == {}
    assert format_selector({"b": "2", "a": "1"}) == "a=1,b=2"


@pytest.mark.parametrize("text", ["env", "env!=prod", "=x", "env=prod,env=dev", "e nv=x"])
def test_bad_selectors(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_selector(text)


def test_matching_and_overlap() -> None:
    labels = {"env": "prod", "role": "web"}
    assert matches({}, labels) and matches({"env": "prod"}, labels)
    assert not matches({"env": "prod", "zone": "a"}, labels)
    assert overlap({"env": "prod"}, {"env": "prod", "region": "eu"})
    assert overlap({}, {"env": "dev"})  # everything overlaps "all hosts"
    assert overlap({"role": "web"}, {"env": "prod"})  # a prod web host matches both
    assert not overlap({"env": "prod"}, {"env": "staging", "role": "web"})
