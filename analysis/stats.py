"""Aggregate statistics for few-seed RL results (after Agarwal et al. 2021, "rliable").

* :func:`iqm`: interquartile mean (mean of the middle 50 %, = ``trim_mean(x, 0.25)``).
* :func:`stratified_bootstrap_ci`: percentile bootstrap CI of an aggregate over runs, resampling
  runs with replacement independently within each stratum (task), as rliable does.
* :func:`scatter_stats`: Spearman's rho and the least-squares slope of y on x with bootstrap CIs
  (resampling points), for predicted-vs-true scatter plots.
* :func:`final_per_run`: one "final performance" number per run (mean over the last updates).
* :func:`prediction_stats`: dJ against the predicted dL with seed-bootstrap intervals on the
  correlations, a calibration regression with seed-clustered SEs, the agreement within 1.96
  combined SE and the bound's vacuity rate.

Every function ignores NaN values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.load import RUN_COLUMNS

#: An aggregate over the last axis of a 2-D array, e.g. ``np.mean`` or :func:`iqm`.
Stat = Callable[..., Any]


class Interval(NamedTuple):
    """A point estimate with a confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float


class ScatterStats(NamedTuple):
    """Rank correlation and fitted slope of a scatter, with bootstrap CIs."""

    n: int
    rho: float
    rho_low: float
    rho_high: float
    slope: float
    slope_low: float
    slope_high: float
    intercept: float


def iqm(x: Any, axis: int | None = None) -> Any:
    """Interquartile mean: ``scipy.stats.trim_mean(x, 0.25)``.

    With ``axis=None`` NaNs are dropped and a float is returned (NaN for no data); with an axis
    the array must be NaN-free and an array is returned (used by the bootstrap).
    """
    a = np.asarray(x, dtype=float)
    if axis is None:
        a = a[np.isfinite(a)]
        return math.nan if a.size == 0 else float(sps.trim_mean(a, 0.25))
    return sps.trim_mean(a, 0.25, axis=axis)


def _finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def bootstrap_groups(
    groups: Sequence[np.ndarray],
    stat: Stat = iqm,
    reps: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> Interval:
    """Stratified percentile bootstrap on arrays, one per stratum (NaNs dropped).

    Each replicate draws ``len(g)`` values with replacement from every stratum ``g``
    independently, pools the draws and applies ``stat(sample, axis=1)`` to all replicates at
    once. The estimate is ``stat`` of the pooled data.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = [g for g in (_finite(g) for g in groups) if g.size]
    if not groups:
        return Interval(math.nan, math.nan, math.nan)
    pooled = np.concatenate(groups)
    estimate = float(np.asarray(stat(pooled[None, :], axis=1))[0])
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    draws = [g[rng.integers(0, g.size, size=(reps, g.size))] for g in groups]
    boot = np.asarray(stat(np.concatenate(draws, axis=1), axis=1), dtype=float)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(boot, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def stratified_bootstrap_ci(
    table: pd.DataFrame,
    value: str,
    strata: str | Sequence[str] | None = None,
    stat: Stat = iqm,
    reps: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> Interval:
    """Percentile bootstrap CI of ``stat`` over the rows (runs) of ``table[value]``.

    Rows are resampled with replacement independently within each stratum (the groups of
    ``strata`` columns, e.g. the task/env), then ``stat`` is recomputed on the pooled resample:
    rliable's stratified bootstrap. ``strata=None`` is the ordinary bootstrap. ``stat`` takes
    ``(array, axis=1)`` like :func:`iqm`, ``np.mean`` or ``np.median``.
    """
    if strata is None or (not isinstance(strata, str) and len(strata) == 0):
        groups = [table[value].to_numpy(dtype=float)]
    else:
        keys = [strata] if isinstance(strata, str) else list(strata)
        groups = [
            g[value].to_numpy(dtype=float) for _, g in table.groupby(keys, sort=True, dropna=False)
        ]
    return bootstrap_groups(groups, stat=stat, reps=reps, level=level, seed=seed)


def _slopes(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``ys`` on the same row of ``xs`` (NaN: constant x)."""
    xc = xs - xs.mean(axis=1, keepdims=True)
    yc = ys - ys.mean(axis=1, keepdims=True)
    sxx = (xc * xc).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sxx > 0, (xc * yc).sum(axis=1) / sxx, np.nan)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (ac * bc).sum(axis=1) / denom, np.nan)


def scatter_stats(
    x: Any,
    y: Any,
    reps: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> ScatterStats:
    """Spearman's rho and the OLS slope (with intercept) of ``y`` on ``x``, with bootstrap CIs.

    Points (pairs with both values finite) are resampled with replacement; percentile
    intervals. Fewer than 3 points: NaN everywhere.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    nan = math.nan
    if n < 3:
        return ScatterStats(n, nan, nan, nan, nan, nan, nan, nan)
    slope = float(_slopes(xa[None, :], ya[None, :])[0])
    intercept = float(ya.mean() - slope * xa.mean()) if math.isfinite(slope) else nan
    rho = float(_pearson_rows(sps.rankdata(xa)[None, :], sps.rankdata(ya)[None, :])[0])
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    rhos, slopes = [], []
    for start in range(0, reps, chunk):
        idx = rng.integers(0, n, size=(min(chunk, reps - start), n))
        xs, ys = xa[idx], ya[idx]
        slopes.append(_slopes(xs, ys))
        rhos.append(_pearson_rows(sps.rankdata(xs, axis=1), sps.rankdata(ys, axis=1)))
    tail = 100 * (1 - level) / 2
    q = [tail, 100 - tail]
    rho_b, slope_b = np.concatenate(rhos), np.concatenate(slopes)
    r_lo, r_hi = np.nanpercentile(rho_b, q) if np.isfinite(rho_b).any() else (nan, nan)
    s_lo, s_hi = np.nanpercentile(slope_b, q) if np.isfinite(slope_b).any() else (nan, nan)
    return ScatterStats(
        n, rho, float(r_lo), float(r_hi), slope, float(s_lo), float(s_hi), intercept
    )


def final_per_run(
    long: pd.DataFrame,
    value: str = "rollout/return_mean",
    frac: float = 0.1,
    by: str = "run_dir",
    order: str = "iteration",
) -> pd.DataFrame:
    """One row per run: its :data:`RUN_COLUMNS` and ``final`` = mean of ``value`` over its last
    ``max(1, ceil(frac * n_updates))`` updates (NaN cells ignored; all NaN: NaN).
    """
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    rows = long.sort_values([by, order], kind="stable")
    run_cols = [c for c in RUN_COLUMNS if c in long.columns and c != by] + [by]

    def last_mean(g: pd.DataFrame) -> float:
        k = max(1, math.ceil(frac * len(g)))
        tail = g[value].to_numpy(dtype=float)[-k:]
        tail = tail[np.isfinite(tail)]
        return float(tail.mean()) if tail.size else math.nan

    finals = {run: last_mean(g) for run, g in rows.groupby(by, sort=False)}
    out = rows.drop_duplicates(by)[run_cols].reset_index(drop=True)
    out["final"] = out[by].map(finals).astype(float)
    return out


def prediction_stats(rows: pd.DataFrame, dl: str, dl_se: str, dj: str = "true/improvement",
                     dj_se: str = "true/improvement_se", cluster: str = "run_dir",
                     reps: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """How well the prediction ``dl`` (with standard error ``dl_se``) tells the truth ``dj``
    over the updates in ``rows``, with its uncertainty across seeds: Pearson and Spearman
    correlations with percentile intervals from a bootstrap over ``cluster`` (runs, i.e.
    seeds: a replicate draws runs with replacement and pools their updates), the calibration
    regression dJ = intercept + slope dL with cluster-robust (CR1) standard errors by run
    (slope 1 and intercept 0 for a calibrated prediction), the fraction of updates with
    |dL - dJ| <= 1.96 sqrt(se_dL^2 + se_dJ^2), and the TRPO bound's vacuity rate (fraction of
    updates with ``bound/trpo`` <= 0, tabular runs; NaN without a bound). The numerics are
    :mod:`trpo_lab.intervals`'."""
    from trpo_lab.intervals import (
        agreement_fraction,
        calibration_regression,
        cluster_bootstrap_correlations,
        vacuity_rate,
    )

    x, y = rows[dl].to_numpy(dtype=float), rows[dj].to_numpy(dtype=float)
    clusters = rows[cluster].astype(str).to_numpy()
    corr = cluster_bootstrap_correlations(x, y, clusters, reps=reps, level=level, seed=seed)
    fit = calibration_regression(x, y, clusters)
    se = rows[dl_se].to_numpy(dtype=float) if dl_se in rows else np.full(len(rows), np.nan)
    se_j = rows[dj_se].to_numpy(dtype=float) if dj_se in rows else np.full(len(rows), np.nan)
    bound = rows["bound/trpo"] if "bound/trpo" in rows else pd.Series(np.nan, rows.index)
    return {"n_updates": corr.n, "n_runs": corr.clusters,
            "pearson": corr.pearson, "pearson_low": corr.pearson_low,
            "pearson_high": corr.pearson_high, "spearman": corr.spearman,
            "spearman_low": corr.spearman_low, "spearman_high": corr.spearman_high,
            "slope": fit.slope, "slope_se": fit.slope_se, "intercept": fit.intercept,
            "intercept_se": fit.intercept_se, "agreement": agreement_fraction(x, se, y, se_j),
            "bound_vacuity_rate": vacuity_rate(bound.to_numpy(dtype=float))}


def bound_violations(long: pd.DataFrame, tol: float = 1e-9) -> tuple[int, int]:
    """``(violations, checked)``: updates with ``true/improvement < bound/trpo - tol``.

    Only updates where both are finite are checked. On exact (tabular) runs the TRPO bound is
    a theorem, so violations must be zero; ``tol`` absorbs floating-point error.
    """
    dj = long["true/improvement"].to_numpy(dtype=float)
    bound = long["bound/trpo"].to_numpy(dtype=float)
    ok = np.isfinite(dj) & np.isfinite(bound)
    return int((dj[ok] < bound[ok] - tol).sum()), int(ok.sum())
