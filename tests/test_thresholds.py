"""One set of thresholds for export and check, and the intervals a sample count leaves on what the gate measures."""

from __future__ import annotations

import pytest

from robustdeploy.thresholds import MIN_AGREEMENT, min_agreement, paired_drop, resolve, samples_to_resolve, wilson
from robustdeploy.variants import DEFAULT_TOLERANCES


def test_export_and_check_share_agreement_thresholds():
    assert {p: t.min_agreement for p, t in DEFAULT_TOLERANCES.items()} == MIN_AGREEMENT
    assert min_agreement("ort-cpu:int8") == MIN_AGREEMENT["int8"] and min_agreement("ort-cpu") == MIN_AGREEMENT["fp32"]


def test_300_samples_cannot_resolve_a_half_percent():
    """The issue's case: 300 samples, all agreeing, still leave 99.5 % agreement and a 0.5-point drop open."""
    low, high = wilson(300, 300)
    assert high == 100.0 and 98.5 < low < 99.0
    assert resolve(low, high, 99.5, at_least=True) == "UNRESOLVED"
    assert resolve(*paired_drop(0, 0, 300), 0.5, at_least=False) == "UNRESOLVED"
    need = samples_to_resolve(99.5, at_least=True)
    assert resolve(*wilson(need, need), 99.5, True) == "PASSED" and resolve(*wilson(need - 1, need - 1), 99.5,
                                                                             True) == "UNRESOLVED"
    need = samples_to_resolve(0.5, at_least=False, drop=True)
    assert resolve(*paired_drop(0, 0, need), 0.5, False) == "PASSED"
    assert resolve(*paired_drop(0, 0, need - 1), 0.5, False) == "UNRESOLVED"


def test_clear_cases_resolve_both_ways():
    assert resolve(*wilson(200, 300), 99.5, True) == "FAILED"  # 66.7 % agreement fails on any count
    assert resolve(*paired_drop(30, 0, 300), 2.0, False) == "FAILED"  # a 10-point drop
    assert resolve(*paired_drop(0, 0, 3000), 2.0, False) == "PASSED"
    low, high = paired_drop(5, 5, 300)  # as many lost as gained: centred on no drop
    assert low == pytest.approx(-high) and high > 0
