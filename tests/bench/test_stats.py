"""inhernet_bench.stats: mean +- s.e. over seeds with the test set's binomial error, and the 2 s.e. verdict,
checked on numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from inhernet_bench.stats import Score, best_and_ties, diff_se, score, verdict


def test_the_standard_error_adds_the_seed_spread_and_the_binomial_error():
    s = score([0.90, 0.92, 0.94], n_test=10_000)
    # sample variance 0.0004 over 3 seeds, plus 0.92 * 0.08 / 10,000
    assert s.mean == pytest.approx(0.92)
    assert s.se == pytest.approx(math.sqrt(0.0004 / 3 + 0.92 * 0.08 / 10_000))
    assert s.se == pytest.approx(0.011861, abs=1e-6)


def test_one_seed_of_an_accuracy_has_the_binomial_error_alone_and_a_perplexity_none():
    assert score([0.8], n_test=1000).se == pytest.approx(math.sqrt(0.16 / 1000))
    assert score([30.0]).se is None
    assert score([30.0, 30.2]).se == pytest.approx(0.1)  # sqrt(0.02 / 2)


def test_a_difference_beyond_two_standard_errors_is_better_and_worse():
    # the fashion case: 90% vs 89% on 10,000 test images, one seed each: z = 0.01 / 0.004335 = 2.31
    a, b = score([0.90], 10_000), score([0.89], 10_000)
    assert diff_se(a, b) == pytest.approx(math.sqrt(0.9 * 0.1 / 1e4 + 0.89 * 0.11 / 1e4))
    assert verdict(a, b) == "better" and verdict(b, a) == "worse"
    # 85% vs 80% on 1,000: s.e. of the difference 0.01696, 0.05 > 0.0339
    assert verdict(score([0.85], 1000), score([0.80], 1000)) == "better"


def test_a_difference_within_two_standard_errors_is_a_tie():
    # 82% vs 80% on 1,000 test examples: s.e. of the difference sqrt(0.1476 + 0.16) / sqrt(1000) = 0.01754;
    # 0.02 < 2 x 0.01754 = 0.0351
    a, b = score([0.82], 1000), score([0.80], 1000)
    assert diff_se(a, b) == pytest.approx(0.017539, abs=1e-6)
    assert verdict(a, b) == "tie" and verdict(b, a) == "tie"
    # the same 2 points on 10,000 examples are significant (s.e. 0.00555)
    assert verdict(score([0.82], 10_000), score([0.80], 10_000)) == "better"


def test_lower_is_better_for_a_perplexity_and_an_unknown_error_is_a_tie():
    low, high = score([29.0, 29.2]), score([30.0, 30.2])  # s.e. 0.1 each: the difference 1.0 is 7 s.e.
    assert verdict(low, high, higher=False) == "better" and verdict(high, low, higher=False) == "worse"
    assert verdict(low, high, higher=True) == "worse"
    assert verdict(score([20.0]), score([40.0]), higher=False) == "tie"  # one seed each: nothing measures the noise


def test_best_and_ties_lists_the_methods_the_best_does_not_beat():
    scores = {"a": score([0.80], 1000), "b": score([0.85], 1000), "c": score([0.84], 1000)}
    best, tied = best_and_ties(scores)
    assert best == "b" and tied == ["b", "c"]  # b - a = 5 points > 3.4 (2 s.e.); b - c = 1 point < 3.2
    assert best_and_ties({"x": Score(10.0, 0.1), "y": Score(12.0, 0.1)}, higher=False) == ("x", ["x"])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="values"):
        score([])
    with pytest.raises(ValueError, match="n_test"):
        score([0.5], n_test=0)
    with pytest.raises(ValueError, match="n_test"):
        score([30.0], n_test=100)  # a perplexity has no binomial error
    with pytest.raises(ValueError, match="scores"):
        best_and_ties({})
    assert Score(0.5, None).text(2) == "0.50 ± ?"
