"""What a test could have seen: mde80, the floor, the smallest p a correlation can reach, the graded outcome
and the pseudo-concept control."""

import math

import pytest

from minipss.run.claims import floored, located_vs_control
from minipss.run.stats import mde, paired_test, pearson, smallest_p, spearman

Z = 1.959964 + 0.841621  # z_{0.975} + z_{0.80}


def test_mde80_is_the_normal_power_formula_on_a_fixed_table():
    d = [0.1, 0.0, 0.2, -0.1, 0.1]  # mean 0.06; squared deviations sum to 0.052
    sd = math.sqrt(0.052 / 4)
    assert mde(d) == pytest.approx(Z * sd / math.sqrt(5), rel=1e-6)
    assert mde(d) == pytest.approx(0.142853, abs=1e-6)
    assert mde([0.3]) is None
    assert paired_test([0.5, 0.4, 0.7, 0.1, 0.6], [0.4, 0.4, 0.5, 0.2, 0.5])["mde80"] == pytest.approx(mde(d))


def test_smallest_p_belongs_to_its_statistic_and_its_values():
    xs = [0.1, 0.2, 0.3, 0.4]
    assert smallest_p(xs, [1.0, 2.0, 3.0, 4.0], spearman) == 2 / 24
    # tied values: the top |r| is reached by more orderings, so the smallest p is larger
    assert smallest_p(xs, [1.0, 1.0, 3.0, 4.0], spearman) == 4 / 24
    assert smallest_p(xs, [1.0, 1.0, 3.0, 4.0], pearson) == 4 / 24
    assert smallest_p(xs, [2.0, 2.0, 2.0, 2.0], pearson) is None


def test_a_null_states_what_the_test_would_have_detected():
    test = {"difference": 0.01, "ci95": [-0.03, 0.05], "p_value": 0.6, "mde80": 0.0612, "n": 90}
    said = located_vs_control(0.001, "matched", test, "excess_drop", general_after=0.38)
    assert "was detected" in said and "this test detects 0.061 or more with 80% power" in said
    assert "unlikely given these data" not in said


def test_a_null_at_a_floored_ratio_does_not_claim_absence():
    test = {"difference": 0.004, "ci95": [-0.03, 0.04], "p_value": 0.8, "mde80": 0.05, "n": 90}
    assert floored(0.29) and floored(0.2) and not floored(0.31) and not floored(None)
    said = located_vs_control(0.1, "pseudo", test, "excess_drop", general_after=0.241)
    assert "floored" in said and "cannot show" in said and "says nothing about whether" in said
    assert "was detected" not in said and "80% power" not in said
    # a measure that is not concept-specific is read as usual at a floor
    general = located_vs_control(0.1, "pseudo", test, "general_after", general_after=0.241)
    assert "no difference in accuracy on unrelated questions" in general and "80% power" in general
    # and a detected effect is reported whatever the floor
    found = located_vs_control(0.1, "matched", {**test, "p_value": 0.01}, "excess_drop", general_after=0.241)
    assert "hurt their own concept more than magnitude-matched" in found
