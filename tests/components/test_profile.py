"""The spread of a number over the training inputs, and the one rule of "far" every family's check uses."""

from __future__ import annotations

from torchkiln.components.profile import far_outside, span, spread


def test_spread_keeps_sizes_integers_and_is_empty_for_no_values() -> None:
    assert spread([8, 9, 7, 8]) == {"min": 7, "p05": 7, "p50": 8, "p95": 9, "max": 9}
    assert spread([1.5, 2.5]) == {"min": 1.5, "p05": 1.55, "p50": 2.0, "p95": 2.45, "max": 2.5}
    assert spread([]) == {}


def test_far_is_below_half_the_smallest_or_above_twice_the_largest() -> None:
    known = spread([20, 40])
    assert [v for v in (9, 10, 20, 80, 81) if far_outside(v, known)] == [9, 81]
    assert not far_outside(10_000, {})  # no profile: nothing is far
    assert (span(known), span(spread([8]))) == ("20-40", "8")
