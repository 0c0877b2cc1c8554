"""defend-eval verdicts rest on a paired interval over the same samples, and name a clean-accuracy cost."""

import torch

from robustdeploy.evaluation.paired import paired_difference
from robustdeploy.evaluation.plans.defense import verdict


def outcomes(kept: int, n: int = 300) -> torch.Tensor:
    return torch.arange(n) < kept


def test_paired_interval_is_exact_for_identical_outcomes_and_covers_the_difference():
    same = paired_difference(outcomes(100), outcomes(100))
    assert (same.difference, same.low, same.high, same.n) == (0.0, 0.0, 0.0, 300)
    gain = paired_difference(outcomes(60), outcomes(30))  # 30 samples kept only by the first: +10 points
    assert gain.difference == 10.0 and gain.only_a == 30 and gain.only_b == 0
    assert 5.0 < gain.low < 10.0 < gain.high < 15.0


def test_a_gain_whose_interval_includes_zero_is_inconclusive():
    """15 of 300 samples kept by the defense only and 7 by the baseline only: +2.7 points, not significant."""
    a, b = outcomes(115), outcomes(100).clone()
    b[200:207] = True
    paired = paired_difference(a, b)
    assert paired.low < 0 < paired.high
    text = verdict(paired, clean=98.0, base_clean=98.0, gap=0.0)
    assert text.startswith("inconclusive") and "n=300 paired samples" in text and "95% CI [" in text


def test_a_gain_at_a_clean_cost_names_the_cost_in_the_same_sentence():
    """A constant model keeps 9% while the baseline falls to 0%: a real gain, bought with 90 points of clean."""
    paired = paired_difference(outcomes(27), outcomes(0))
    text = verdict(paired, clean=9.0, base_clean=99.0, gap=0.0)
    assert text.startswith("robust beyond the baseline") and "at a cost of 90.0 points of clean accuracy" in text
    assert "\n" not in text and "at a cost" not in verdict(paired, clean=97.0, base_clean=99.0, gap=0.0)
    worse = verdict(paired_difference(outcomes(0), outcomes(27)), clean=99.0, base_clean=99.0, gap=20.0)
    assert worse.startswith("no robustness beyond the baseline") and "oblivious attacks only" in worse
