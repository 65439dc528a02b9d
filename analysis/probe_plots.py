"""Figures of the probes (``probe.every=K``) from :func:`analysis.load.load_probes`' table.

* :func:`plot_landscape`: at one probed update, the true improvement J(theta_old + alpha d) -
  J(theta_old) and the surrogate's prediction of it (in-sample and held-out) against alpha,
  along the step taken (alpha = 1 is the new policy) and along random directions of the same
  norm, with the trust region's edge (where the step line's mean KL reaches delta) marked;
* :func:`plot_gradient_quality`: the cosine between batch gradients and the reference gradient,
  and between two independent batch gradients, against the batch size (log x);
* :func:`landscape_figure` and :func:`gradient_figure`: panels per env (and algorithm), for a
  run or a sweep.

Bands: with several runs, 95 % normal intervals over the runs' values (mean +- 1.96 SE over
runs); with one run, the run's own standard errors (``true_se``, ``surrogate_heldout_se``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from analysis.plots import (
    _axes,
    _label,
    algo_color,
    figure_legend,
    ordered_levels,
    panel_grid,
)

Z95 = 1.959964
#: The landscape's series: column, legend label, line style; the held-out surrogate and the
#: truth carry bands.
SERIES: tuple[tuple[str, str, str], ...] = (
    ("true", "true dJ", "-"),
    ("surrogate_heldout", "surrogate dL, held-out", "--"),
    ("surrogate", "surrogate dL, in-sample", ":"),
)
TRUTH_COLOR = "0.1"
RANDOM_COLOR = "0.6"


def mean_band(rows: pd.DataFrame, x: str, value: str, se: str | None = None) -> pd.DataFrame:
    """Per ``x``: the mean of ``value`` over runs and a 95 % band, from the spread over runs
    when there are several, else from the single run's ``se`` column (no band without one)."""
    finite = rows[np.isfinite(rows[value].to_numpy(dtype=float))]
    out = []
    for key, group in finite.groupby(x, sort=True):
        values = group[value].to_numpy(dtype=float)
        if len(values) > 1:
            half = Z95 * values.std(ddof=1) / math.sqrt(len(values))
        elif se is not None and se in group and np.isfinite(group[se].iloc[0]):
            half = Z95 * float(group[se].iloc[0])
        else:
            half = math.nan
        out.append({x: key, "mean": values.mean(), "lo": values.mean() - half,
                    "hi": values.mean() + half, "n": len(values)})
    return pd.DataFrame(out, columns=[x, "mean", "lo", "hi", "n"])


def trust_region_edge(step_rows: pd.DataFrame) -> float:
    """The alpha > 0 at which the step line's mean KL reaches ``kl_limit`` (delta): sqrt(KL) is
    interpolated linearly in alpha (exact when KL is quadratic in alpha, as near alpha = 0);
    NaN without a limit or when the grid never reaches it."""
    limit = step_rows["kl_limit"].dropna()
    if limit.empty:
        return math.nan
    kl = step_rows[step_rows["alpha"] >= 0].groupby("alpha")["kl_mean"].mean().sort_index()
    root = np.sqrt(kl.to_numpy(dtype=float))
    alphas = kl.index.to_numpy(dtype=float)
    target = math.sqrt(float(limit.iloc[0]))
    above = np.nonzero(root >= target)[0]
    if not len(above) or above[0] == 0:
        return math.nan
    i = above[0]
    return float(np.interp(target, root[i - 1 : i + 1], alphas[i - 1 : i + 1]))


def plot_landscape(rows: pd.DataFrame, ax: Axes | None = None, *,
                   color: tuple[float, float, float] | str | None = None) -> Axes:
    """Landscape rows of one probed update (one or several runs of one config) on ``ax``: the
    step line in ``color`` (the truth in near-black), random directions in grey (their mean
    over directions and runs), alpha = 1 and the trust region's edge as vertical lines."""
    ax = _axes(ax)
    color = color if color is not None else algo_color(_label(rows["algo"].iloc[0]))
    step = rows[rows["direction"] == "step"]
    for column, label, style in SERIES:
        se = {"true": "true_se", "surrogate_heldout": "surrogate_heldout_se"}.get(column)
        line = mean_band(step, "alpha", column, se)
        if line.empty:
            continue
        tint = TRUTH_COLOR if column == "true" else color
        ax.plot(line["alpha"], line["mean"], style, color=tint, label=f"{label}, step",
                marker="o" if column == "true" else None, markersize=2.5)
        if column != "surrogate" and line["lo"].notna().any():
            ax.fill_between(line["alpha"], line["lo"], line["hi"], color=tint, alpha=0.15,
                            linewidth=0)
    random = rows[rows["direction"] == "random"]
    if len(random):
        per_run = random.groupby(["run_dir", "alpha"], as_index=False)[["true", "surrogate"]].mean()
        for column, style in (("true", "-"), ("surrogate", ":")):
            line = mean_band(per_run, "alpha", column)
            if not line.empty:
                label = "true dJ" if column == "true" else "surrogate dL, in-sample"
                ax.plot(line["alpha"], line["mean"], style, color=RANDOM_COLOR, linewidth=0.9,
                        label=f"{label}, random direction")
    ax.axhline(0.0, color="0.8", linewidth=0.6, zorder=0)
    ax.axvline(1.0, color="0.45", linewidth=0.7, linestyle=(0, (4, 3)), label="step taken (α = 1)")
    edge = trust_region_edge(step)
    if np.isfinite(edge):
        ax.axvline(edge, color="#b2182b", linewidth=0.8, linestyle=(0, (1, 1.5)),
                   label="trust-region edge (mean KL = δ)")
    ax.set_xlabel("α (θ = θ_old + α d)")
    ax.set_ylabel("J(θ) − J(θ_old)")
    return ax


def shade(color, fraction: float) -> tuple[float, float, float]:
    """``color`` mixed with white: ``fraction`` 0 gives a light tint, 1 the colour itself."""
    rgb = np.asarray(to_rgb(color))
    return tuple(1.0 - (0.3 + 0.7 * fraction) * (1.0 - rgb))


def plot_gradient_quality(rows: pd.DataFrame, ax: Axes | None = None, *,
                          updates: Sequence[float] | None = None) -> Axes:
    """Gradient rows of one algorithm (any runs) on ``ax``: per probed update in ``updates``
    (default: all), the cosine to the reference gradient (solid, mean over runs with a 95 %
    band over runs, or the single run's standard error over its batches: bias and variance
    together), the pairwise cosine of two independent batches (dashed) and, where probes.csv
    has it, the cosine of the mean batch gradient with the reference (dotted: the bias alone),
    against the batch size on a log axis; later updates in darker shades of the algorithm's
    colour."""
    ax = _axes(ax)
    color = algo_color(_label(rows["algo"].iloc[0]))
    updates = sorted(rows["iteration"].unique()) if updates is None else list(updates)
    for i, k in enumerate(updates):
        sub = rows[rows["iteration"] == k]
        tint = shade(color, i / max(len(updates) - 1, 1))
        lines = [("cosine_mean", "-"), ("pairwise_cosine_mean", "--")]
        if "mean_cosine" in sub.columns and sub["mean_cosine"].notna().any():
            lines.append(("mean_cosine", ":"))  # the bias alone (probes.csv of this version)
        for column, style in lines:
            line = mean_band(sub, "batch_steps", column,
                             "cosine_se" if column == "cosine_mean" else None)
            if line.empty:
                continue
            label = f"update {int(k)}" if column == "cosine_mean" else None
            ax.plot(line["batch_steps"], line["mean"], style, color=tint, marker="o",
                    markersize=2.5, label=label)
            if column == "cosine_mean" and line["lo"].notna().any():
                ax.fill_between(line["batch_steps"], line["lo"], line["hi"], alpha=0.2,
                                color=tint, linewidth=0)
    ax.plot([], [], "-", color="0.3", label="cos(batch, reference)")
    ax.plot([], [], "--", color="0.3", label="cos(batch, batch)")
    if "mean_cosine" in rows.columns and rows["mean_cosine"].notna().any():
        ax.plot([], [], ":", color="0.3", label="cos(mean batch, reference): bias")
    ax.set_xscale("log", base=2)
    sizes = np.sort(rows["batch_steps"].dropna().unique())
    ax.set_xticks(sizes, [f"{int(s):,}" for s in sizes], rotation=30)
    ax.minorticks_off()
    ax.set_ylim(min(-0.05, float(np.nanmin(rows[["cosine_mean", "pairwise_cosine_mean"]]
                                           .to_numpy(dtype=float))) - 0.05), 1.02)
    ax.axhline(1.0, color="0.8", linewidth=0.6, zorder=0)
    ax.set_xlabel("batch size (env steps)")
    ax.set_ylabel("cosine similarity")
    return ax


def _panel_keys(probes: pd.DataFrame) -> list[tuple[str, str]]:
    keys = probes[["env", "algo"]].astype(str).drop_duplicates()
    algos = ordered_levels(probes, "algo")
    order = {str(a): i for i, a in enumerate(algos)}
    return sorted(map(tuple, keys.to_numpy()), key=lambda k: (k[0], order.get(k[1], 99)))


def moving_updates(land: pd.DataFrame, rtol: float = 1e-3) -> list[float]:
    """The probed updates whose step changed the policy: the step line's largest mean KL (over
    runs and alphas) above ``rtol`` times the largest of any probed update. A rejected step
    (TRPO's line search; a converged tabular policy, whose gradient is rounding noise) has a
    flat, empty landscape."""
    step = land[land["direction"] == "step"]
    moved = step.groupby("iteration")["kl_mean"].max().to_numpy(dtype=float)
    iterations = step.groupby("iteration")["kl_mean"].max().index
    if not len(moved) or not np.nanmax(moved) > 0:
        return []
    return sorted(iterations[moved > rtol * np.nanmax(moved)])


def chosen_updates(iterations: Sequence[float], most: int = 4) -> list[float]:
    """Up to ``most`` probed updates, evenly spread from the first to the last."""
    values = sorted(set(iterations))
    if len(values) <= most:
        return values
    picks = np.linspace(0, len(values) - 1, most).round().astype(int)
    return [values[i] for i in sorted(set(picks))]


def landscape_figure(probes: pd.DataFrame, most_updates: int = 4,
                     panel_size: tuple[float, float] = (2.0, 1.7)) -> Figure:
    """One row of panels per (env, algorithm), one column per probed update (up to
    ``most_updates`` of those whose step moved the policy, :func:`moving_updates`, spread over
    training); one legend below."""
    land = probes[probes["probe"] == "landscape"]
    keys = _panel_keys(land)
    updates = {}
    for key in keys:
        rows = land[(land["env"].astype(str) == key[0]) & (land["algo"].astype(str) == key[1])]
        updates[key] = chosen_updates(moving_updates(rows) or rows["iteration"], most_updates)
    ncols = max(len(u) for u in updates.values())
    fig, axes = panel_grid(len(keys) * ncols, panel_size, ncols=ncols)
    for row, key in enumerate(keys):
        rows = land[(land["env"].astype(str) == key[0]) & (land["algo"].astype(str) == key[1])]
        for col in range(ncols):
            ax = axes[row * ncols + col]
            if col >= len(updates[key]):
                ax.set_visible(False)
                continue
            k = updates[key][col]
            plot_landscape(rows[rows["iteration"] == k], ax)
            runs = rows[rows["iteration"] == k]["run_dir"].nunique()
            ax.set_title(f"{key[0]}, {key[1]}\nupdate {int(k)}, {runs} run{'s' * (runs > 1)}")
            if col:
                ax.set_ylabel("")
    figure_legend(fig, axes)
    return fig


def gradient_figure(probes: pd.DataFrame, most_updates: int = 4,
                    panel_size: tuple[float, float] = (3.6, 1.9)) -> Figure:
    """One panel per (env, algorithm): :func:`plot_gradient_quality` at up to
    ``most_updates`` probed updates spread over training (of those whose step moved the
    policy, when landscape rows say so: :func:`moving_updates`); a legend per panel."""
    grad = probes[probes["probe"] == "gradient"]
    land = probes[probes["probe"] == "landscape"]
    keys = _panel_keys(grad)
    fig, axes = panel_grid(len(keys), panel_size, max_cols=2)
    for ax, key in zip(axes, keys, strict=True):
        mine = (grad["env"].astype(str) == key[0]) & (grad["algo"].astype(str) == key[1])
        rows = grad[mine]
        moving = moving_updates(land[(land["env"].astype(str) == key[0])
                                     & (land["algo"].astype(str) == key[1])]) if len(land) else []
        plot_gradient_quality(rows, ax, updates=chosen_updates(
            moving or rows["iteration"], most_updates))
        reference = rows["reference_steps"].dropna()
        kind = "exact ∇J" if (reference == 0).all() else \
            f"{int(reference.max()):,}-step estimate"
        ax.set_title(f"{key[0]}, {key[1]} (reference: {kind})")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=6, handlelength=1.8)
    return fig
