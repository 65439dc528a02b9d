"""The statistics of the Monte Carlo truth: the paired dJ with an adaptive number of pairs, and
how an interval's coverage of an exact value is counted.

**Paired dJ.** Episode j of pi and of pi' share their reset and every random number (common
random numbers, :mod:`trpo_lab.evaluation`), so a pair coincides exactly unless some action
differs; a small step changes few actions and most pairs coincide. With K of n pairs differing,
the paired mean is (1/n) sum_j D_j and its standard error comes from those K values alone:
when K is small (0, 1, 2, ... of 64), the standard error collapses towards 0 while dJ does not
and the 95% interval misses. :func:`paired_improvement` therefore adds rounds of fresh pairs,
each of ``eval.episodes``, until at least ``eval.min_differing`` pairs differ or the pairs
reach ``eval.max_pairs``; the estimate is the mean over all pairs and the standard error
sd / sqrt(n) over all of them (still a standard error: the interval is mean +/- 1.96 SE). The
stopping rule looks only at whether pairs differ, not at their values, so the K differing
values are independent draws of D given D != 0 whatever n turns out to be; the ratio K / n
estimates P(D != 0) with a relative bias of about 1 / min_differing (negative-binomial
stopping; under 2% at 64). An update that
did not change the policy (theta_new == theta_old: a rejected step) has dJ = 0 exactly and
every pair coinciding: it gets no extra round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: coverage tolerance: the exact solver's own rounding (dJ and dL to about 5e-14)
EXACT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class PairedImprovement:
    """The paired Monte Carlo dJ: mean and standard error over ``pairs`` pairs, of which
    ``differing`` had D_j != 0, and the old policy's returns of those pairs (for J)."""

    mean: float
    se: float
    pairs: int
    differing: int
    old_returns: np.ndarray


def more_rounds(differing: int, pairs: int, per_round: int, min_differing: int,
                max_pairs: int) -> bool:
    """Whether another round of ``per_round`` pairs is drawn: fewer than ``min_differing``
    pairs differ and one more round keeps the total within ``max_pairs``."""
    return differing < min_differing and pairs + per_round <= max_pairs


def paired_improvement(new: np.ndarray, old: np.ndarray, moved: bool, min_differing: int,
                       max_pairs: int,
                       draw: Callable[[int], tuple[np.ndarray, np.ndarray]]
                       ) -> PairedImprovement:
    """dJ from the paired returns ``new``, ``old`` of a first round, with rounds r = 1, 2, ...
    of ``draw(r)`` -> (new, old) added while :func:`more_rounds` says so (never when the
    policy did not move). The standard error is sd(D, ddof=1) / sqrt(n); NaN for one pair."""
    news, olds = [np.asarray(new, np.float64)], [np.asarray(old, np.float64)]
    per_round = news[0].size
    pairs = per_round
    differing = int(np.count_nonzero(news[0] - olds[0]))
    rounds = 0
    while moved and more_rounds(differing, pairs, per_round, min_differing, max_pairs):
        rounds += 1
        more_new, more_old = draw(rounds)
        news.append(np.asarray(more_new, np.float64))
        olds.append(np.asarray(more_old, np.float64))
        differing += int(np.count_nonzero(news[-1] - olds[-1]))
        pairs += per_round
    d = np.concatenate(news) - np.concatenate(olds)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return PairedImprovement(float(d.mean()), se, int(d.size), differing, np.concatenate(olds))


def covered(estimate: np.ndarray, se: np.ndarray, truth: np.ndarray,
            z: float = 1.959963984540054) -> np.ndarray:
    """Whether estimate +/- z se holds the exact value (within :data:`EXACT_TOLERANCE`, so a
    rejected step's interval {0} holds its dJ of exactly 0 and its dL of 0 up to rounding)."""
    estimate, se, truth = (np.asarray(a, np.float64) for a in (estimate, se, truth))
    return np.abs(estimate - truth) <= z * se + EXACT_TOLERANCE
