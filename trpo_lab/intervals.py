"""The statistics of the Monte Carlo truth: the paired dJ with an adaptive number of pairs, and
how an interval's coverage of an exact value is counted.

**Paired dJ.** Episode j of pi and of pi' share their reset and every random number (common
random numbers, :mod:`trpo_lab.evaluation`), so a pair coincides exactly unless some action
differs; a small step changes few actions and most pairs coincide. With K of n pairs differing,
the paired mean is (1/n) sum_j D_j and its standard error comes from those K values alone:
when K is small (0, 1, 2, ... of 64), the standard error collapses towards 0 while dJ does not
and the 95% interval misses. :func:`paired_improvement` therefore adds rounds of fresh pairs,
each of ``eval.episodes``, until at least ``eval.min_differing`` pairs differ or the pairs
reach ``eval.max_pairs``, or ``eval.max_coinciding_pairs`` are drawn and every one of them
coincides; the estimate is the mean over all pairs and the standard error sd / sqrt(n) over
all of them (still a standard error: the interval is mean +/- 1.96 SE). The stopping rule
looks only at whether pairs differ, not at their values, so the K differing values are
independent draws of D given D != 0 whatever n turns out to be; the ratio K / n estimates
P(D != 0) with a relative bias of about 1 / min_differing (negative-binomial stopping; under
2% at 64). An update that did not change the policy (theta_new == theta_old: a rejected step)
has dJ = 0 exactly and every pair coinciding: it gets no extra round.

**No pair differs.** When the policy moved and all n pairs coincide, sd / sqrt(n) = 0 says
nothing. Where the returns are bounded, |D| <= B = (max(r, 0) - min(r, 0)) sum_{t<H} gamma^t
(:func:`paired_return_bound`: tabular MDPs from their rewards and horizon, gymnasium envs
from ``env.reward_bounds`` and their max_episode_steps). Then dJ = P(D != 0) E[D | D != 0],
and n coinciding pairs put P(D != 0) <= 1 - 0.05^(1/n) (about 3 / n, the "rule of three")
except with probability 0.05, so [-(1 - 0.05^(1/n)) B, +(1 - 0.05^(1/n)) B] holds dJ with
probability at least 95% (:func:`no_difference_half_width`); the logged SE is that
half-width / 1.96, so that mean +/- 1.96 SE is this interval. Without a bound (a gymnasium
env without ``env.reward_bounds`` or without a step limit) the SE stays 0 and
``eval/pairs_differing`` = 0 flags the update. J's own estimate is bounded the same way: when
all n returns of pi are equal (a solved CartPole: every episode 500 steps), the returns' range
is B wide and J's SE is the same half-width / 1.96 instead of 0
(:meth:`trpo_lab.evaluation.MonteCarloEstimate.of`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: coverage tolerance: the exact solver's own rounding (dJ and dL to about 5e-14)
EXACT_TOLERANCE = 1e-12
#: the normal quantile of a two-sided 95% interval
Z_95 = 1.959963984540054


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
                max_pairs: int, max_coinciding: int | None = None) -> bool:
    """Whether another round of ``per_round`` pairs is drawn: fewer than ``min_differing``
    pairs differ, one more round keeps the total within ``max_pairs``, and not all of at
    least ``max_coinciding`` pairs coincide (None: no such stop)."""
    if differing == 0 and max_coinciding is not None and pairs >= max_coinciding:
        return False
    return differing < min_differing and pairs + per_round <= max_pairs


def no_difference_half_width(pairs: int, return_bound: float, level: float = 0.95) -> float:
    """Half-width of the interval for dJ when none of ``pairs`` pairs differ and |D| <=
    ``return_bound``: (1 - (1 - level)^(1/pairs)) x return_bound (the exact binomial upper
    bound on P(D != 0) times the largest |D|; see the module docstring)."""
    if pairs < 1 or return_bound < 0 or not 0 < level < 1:
        raise ValueError(f"need pairs >= 1, return_bound >= 0, 0 < level < 1; got {pairs}, "
                         f"{return_bound}, {level}")
    return float(-np.expm1(np.log1p(-level) / pairs) * return_bound)


def no_difference_se(draws: int, return_bound: float) -> float:
    """The logged SE of an estimate whose ``draws`` draws all coincide (no pair differs, or
    every return is equal): :func:`no_difference_half_width` / 1.96, so that estimate +/- 1.96
    SE is the 95% bound."""
    return no_difference_half_width(draws, return_bound) / Z_95


def paired_return_bound(reward_low: float, reward_high: float, gamma: float,
                        horizon: int) -> float:
    """The largest |G' - G| of two discounted returns of at most ``horizon`` steps with every
    reward in [reward_low, reward_high] (an ended episode's steps count as reward 0):
    (max(high, 0) - min(low, 0)) sum_{t<H} gamma^t."""
    if reward_low > reward_high or horizon < 1 or not 0 <= gamma <= 1:
        raise ValueError(f"need reward_low <= reward_high, horizon >= 1, 0 <= gamma <= 1; got "
                         f"{reward_low}, {reward_high}, {horizon}, {gamma}")
    steps = float(horizon) if gamma == 1 else (1 - gamma**horizon) / (1 - gamma)
    return (max(reward_high, 0.0) - min(reward_low, 0.0)) * steps


def paired_improvement(new: np.ndarray, old: np.ndarray, moved: bool, min_differing: int,
                       max_pairs: int,
                       draw: Callable[[int], tuple[np.ndarray, np.ndarray]],
                       max_coinciding: int | None = None,
                       return_bound: float | None = None) -> PairedImprovement:
    """dJ from the paired returns ``new``, ``old`` of a first round, with rounds r = 1, 2, ...
    of ``draw(r)`` -> (new, old) added while :func:`more_rounds` says so (never when the
    policy did not move). The standard error is sd(D, ddof=1) / sqrt(n); NaN for one pair;
    when the policy moved, no pair differs and ``return_bound`` bounds |D|, the
    :func:`no_difference_half_width` / 1.96."""
    news, olds = [np.asarray(new, np.float64)], [np.asarray(old, np.float64)]
    per_round = news[0].size
    pairs = per_round
    differing = int(np.count_nonzero(news[0] - olds[0]))
    rounds = 0
    while moved and more_rounds(differing, pairs, per_round, min_differing, max_pairs,
                                max_coinciding):
        rounds += 1
        more_new, more_old = draw(rounds)
        news.append(np.asarray(more_new, np.float64))
        olds.append(np.asarray(more_old, np.float64))
        differing += int(np.count_nonzero(news[-1] - olds[-1]))
        pairs += per_round
    d = np.concatenate(news) - np.concatenate(olds)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    if moved and differing == 0 and return_bound is not None:
        se = no_difference_se(d.size, return_bound)
    return PairedImprovement(float(d.mean()), se, int(d.size), differing, np.concatenate(olds))


def heldout_se(per_episode: np.ndarray, ratio_variance: np.ndarray | None = None,
               advantage_scale: float = 0.0) -> float:
    """The standard error of the held-out dL, the mean of the n per-episode terms
    ``per_episode`` (Y_j): sd(Y, ddof=1) / sqrt(n), or, when larger, the action-sampling SE
    the ratios imply, sqrt(advantage_scale mean(ratio_variance) / n), where
    ``ratio_variance``_j = sum_t gamma^2t chi2(pi' || pi)(s_jt) and ``advantage_scale`` =
    sigma_A^2: what Var(Y_j) would be if every action's advantage were an independent draw of
    mean square sigma_A^2, whichever actions the episodes drew. NaN for one episode."""
    y = np.asarray(per_episode, np.float64)
    n = y.size
    if n < 2:
        return float("nan")
    variance = float(y.var(ddof=1))
    if ratio_variance is not None:
        variance = max(variance, advantage_scale * float(np.mean(ratio_variance)))
    return float(np.sqrt(variance / n))


def covered(estimate: np.ndarray, se: np.ndarray, truth: np.ndarray,
            z: float = Z_95) -> np.ndarray:
    """Whether estimate +/- z se holds the exact value (within :data:`EXACT_TOLERANCE`, so a
    rejected step's interval {0} holds its dJ of exactly 0 and its dL of 0 up to rounding)."""
    estimate, se, truth = (np.asarray(a, np.float64) for a in (estimate, se, truth))
    return np.abs(estimate - truth) <= z * se + EXACT_TOLERANCE


# ------------------------------------------------------- prediction against truth, over updates

def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (``scipy.stats.rankdata``)."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=-1, keepdims=True)
    bc = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((ac * ac).sum(axis=-1) * (bc * bc).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (ac * bc).sum(axis=-1) / denom, np.nan)


@dataclass(frozen=True)
class Correlations:
    """Pearson and Spearman correlation of y with x and their percentile intervals from a
    bootstrap over clusters (seeds / runs: each replicate draws clusters with replacement and
    pools their points); ``clusters`` the number of clusters."""

    n: int
    clusters: int
    pearson: float
    pearson_low: float
    pearson_high: float
    spearman: float
    spearman_low: float
    spearman_high: float


def cluster_bootstrap_correlations(x, y, clusters, reps: int = 2000, level: float = 0.95,
                                   seed: int = 0) -> Correlations:
    """:class:`Correlations` of the finite pairs (x_i, y_i); ``clusters`` labels each point's
    cluster (pass one label per point for the ordinary bootstrap over points). Intervals are
    NaN with fewer than 2 clusters or 3 points."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    labels = np.asarray(clusters).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, labels = x[ok], y[ok], labels[ok]
    nan = float("nan")
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)] if x.size else []
    if x.size < 3:
        return Correlations(int(x.size), len(groups), nan, nan, nan, nan, nan, nan)
    pearson = float(_pearson_rows(x, y))
    spearman = float(_pearson_rows(_ranks(x), _ranks(y)))
    if len(groups) < 2:
        return Correlations(int(x.size), 1, pearson, nan, nan, spearman, nan, nan)
    rng = np.random.default_rng(seed)
    boot = np.full((reps, 2), nan)
    for r in range(reps):
        index = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        if index.size >= 3:
            bx, by = x[index], y[index]
            boot[r] = _pearson_rows(bx, by), _pearson_rows(_ranks(bx), _ranks(by))
    tail = 100 * (1 - level) / 2
    (p_lo, s_lo), (p_hi, s_hi) = np.nanpercentile(boot, [tail, 100 - tail], axis=0)
    return Correlations(int(x.size), len(groups), pearson, float(p_lo), float(p_hi), spearman,
                        float(s_lo), float(s_hi))


@dataclass(frozen=True)
class Calibration:
    """Least squares y = intercept + slope x with cluster-robust (CR1) standard errors; a
    calibrated prediction has slope 1 and intercept 0."""

    n: int
    clusters: int
    slope: float
    slope_se: float
    intercept: float
    intercept_se: float


def calibration_regression(x, y, clusters) -> Calibration:
    """OLS of y on x over the finite pairs with the sandwich variance
    (X'X)^-1 (sum_g X_g' u_g u_g' X_g) (X'X)^-1 x G/(G-1) x (n-1)/(n-2), g the clusters (pass
    one label per point for the heteroskedasticity-robust HC1 errors). SEs are NaN with fewer
    than 2 clusters; everything is NaN with fewer than 3 points or a constant x."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    labels = np.asarray(clusters).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, labels = x[ok], y[ok], labels[ok]
    n, nan = int(x.size), float("nan")
    names = np.unique(labels)
    if n < 3 or np.ptp(x) == 0:
        return Calibration(n, len(names), nan, nan, nan, nan)
    design = np.column_stack([np.ones(n), x])
    bread = np.linalg.inv(design.T @ design)
    coef = bread @ design.T @ y
    if len(names) < 2:
        return Calibration(n, len(names), float(coef[1]), nan, float(coef[0]), nan)
    residual = y - design @ coef
    meat = np.zeros((2, 2))
    for g in names:
        score = design[labels == g].T @ residual[labels == g]
        meat += np.outer(score, score)
    g_count = len(names)
    cov = bread @ meat @ bread * (g_count / (g_count - 1)) * ((n - 1) / (n - 2))
    return Calibration(n, g_count, float(coef[1]), float(np.sqrt(cov[1, 1])), float(coef[0]),
                       float(np.sqrt(cov[0, 0])))


def agreement_fraction(dl, dl_se, dj, dj_se, z: float = Z_95) -> float:
    """Fraction of updates with |dL - dJ| <= z sqrt(se_dL^2 + se_dJ^2) (the two estimates are
    independent: different episodes), over the updates where all four are finite; NaN if
    none. An exact side has SE 0."""
    a = [np.asarray(v, np.float64).ravel() for v in (dl, dl_se, dj, dj_se)]
    ok = np.logical_and.reduce([np.isfinite(v) for v in a])
    if not ok.any():
        return float("nan")
    dl, dl_se, dj, dj_se = (v[ok] for v in a)
    return float(np.mean(np.abs(dl - dj) <= z * np.hypot(dl_se, dj_se) + EXACT_TOLERANCE))


def vacuity_rate(bound) -> float:
    """Fraction of updates whose TRPO lower bound on dJ is <= 0 (it guarantees no
    improvement), over the updates with a finite bound; NaN if none."""
    b = np.asarray(bound, np.float64).ravel()
    b = b[np.isfinite(b)]
    return float(np.mean(b <= 0)) if b.size else float("nan")


def run_prediction_summary(columns: dict[str, np.ndarray], reps: int = 1000,
                           seed: int = 0) -> dict[str, float]:
    """One run's prediction-against-truth statistics from its metrics columns (name -> values
    per update, NaN where empty), as flat ``prediction/*`` keys for summary.json and W&B's
    summary: Pearson and Spearman of dJ (``true/improvement``) with the held-out dL and their
    95% bootstrap intervals over updates (one run has no seeds to resample), the calibration
    regression of dJ on the held-out dL (HC1 standard errors), the fraction of updates with
    |dL - dJ| within 1.96 combined SE, and the TRPO bound's vacuity rate (tabular runs). Only
    the keys with data; {} for a run without held-out dL and dJ."""
    def col(name: str) -> np.ndarray:
        return np.asarray(columns.get(name, []), np.float64)

    dl, dj = col("surrogate/improvement_heldout"), col("true/improvement")
    out: dict[str, float] = {}
    if dl.size and dj.size:
        points = np.arange(dl.size)
        corr = cluster_bootstrap_correlations(dl, dj, points, reps=reps, seed=seed)
        fit = calibration_regression(dl, dj, points)
        out = {"prediction/updates": corr.n, "prediction/pearson": corr.pearson,
               "prediction/pearson_low": corr.pearson_low,
               "prediction/pearson_high": corr.pearson_high,
               "prediction/spearman": corr.spearman, "prediction/spearman_low": corr.spearman_low,
               "prediction/spearman_high": corr.spearman_high,
               "prediction/calibration_slope": fit.slope,
               "prediction/calibration_slope_se": fit.slope_se,
               "prediction/calibration_intercept": fit.intercept,
               "prediction/calibration_intercept_se": fit.intercept_se,
               "prediction/agreement": agreement_fraction(
                   dl, col("surrogate/improvement_heldout_se"), dj, col("true/improvement_se"))}
    bound = col("bound/trpo")
    if bound.size and np.isfinite(bound).any():
        out["prediction/bound_vacuity_rate"] = vacuity_rate(bound)
    return out
