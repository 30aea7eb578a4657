"""Significance for the benchmark tables: a method's score as mean +- standard error over seeds, and a verdict
between two methods that says "better" only when their difference exceeds 2 standard errors of the difference.

The standard error of a mean over ``k`` seeds combines the seed spread (``stdev / sqrt(k)``) with, for an
accuracy measured on ``n`` test examples, the test set's binomial error ``sqrt(p (1 - p) / n)``: every seed
is scored on the same test examples, so averaging seeds does not shrink that term. Two methods' errors are
added as independent (``sqrt(se_a^2 + se_b^2)``); on one shared test set that overstates the error of a
difference a little, so a "better" is never claimed on too little evidence.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Score", "Z", "best_and_ties", "diff_se", "score", "verdict"]

#: a difference is significant beyond this many standard errors of the difference
Z = 2.0

Verdict = Literal["better", "worse", "tie"]


@dataclass(frozen=True)
class Score:
    """A method's mean score and its standard error; ``se`` is ``None`` when nothing measures it (one seed
    and no test-set size), and then no difference to it is significant."""

    mean: float
    se: float | None

    def text(self, digits: int = 4) -> str:
        """``mean ± se`` (``mean ± ?`` when the error is unknown)."""
        return f"{self.mean:.{digits}f} ± " + ("?" if self.se is None else f"{self.se:.{digits}f}")


def score(values: Sequence[float], n_test: int | None = None) -> Score:
    """The mean of ``values`` (one final score per seed) and its standard error.

    ``n_test``: the number of test examples when the score is an accuracy (a share in [0, 1]), which adds
    its binomial error; ``None`` for any other metric (a perplexity: the seed spread alone).
    """
    if not values:
        raise ValueError("values must hold at least one score (one per seed)")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise ValueError(f"n_test must be the number of test examples (an int >= 1) or None, got {n_test!r}")
    mean = statistics.fmean(values)
    parts = []
    if len(values) > 1:
        parts.append(statistics.variance(values) / len(values))
    if n_test is not None:
        if not 0 <= mean <= 1:
            raise ValueError(f"n_test is for accuracies (shares in [0, 1]); the mean score is {mean!r}")
        parts.append(mean * (1 - mean) / n_test)
    return Score(mean, math.sqrt(sum(parts)) if parts else None)


def diff_se(a: Score, b: Score) -> float | None:
    """The standard error of ``a.mean - b.mean`` (``None`` when either error is unknown)."""
    if a.se is None or b.se is None:
        return None
    return math.hypot(a.se, b.se)


def verdict(a: Score, b: Score, higher: bool = True) -> Verdict:
    """``"better"`` when ``a`` beats ``b`` by more than :data:`Z` standard errors of the difference,
    ``"worse"`` when ``b`` beats ``a`` so, ``"tie"`` otherwise (and whenever the error is unknown).
    ``higher``: whether a higher score is better (accuracy) or a lower one (perplexity)."""
    se = diff_se(a, b)
    gain = (a.mean - b.mean) if higher else (b.mean - a.mean)
    if se is None or abs(gain) <= Z * se:
        return "tie"
    return "better" if gain > 0 else "worse"


def best_and_ties(scores: Mapping[str, Score], higher: bool = True) -> tuple[str, list[str]]:
    """The method of the best mean, and every method (itself first, then in ``scores``' order) whose
    difference to it is within :data:`Z` standard errors: the ones it does not beat significantly."""
    if not scores:
        raise ValueError("scores must name at least one method")
    pick = max if higher else min
    best = pick(scores, key=lambda name: scores[name].mean)
    tied = [name for name in scores if name != best and verdict(scores[name], scores[best], higher) == "tie"]
    return best, [best, *tied]
