"""Paper figures from the long table of :func:`analysis.load.load_runs`.

Conventions:

* one colour per algorithm everywhere (:data:`ALGO_COLORS`, seaborn's colour-blind palette);
* paper style (:data:`PAPER_RC`, :func:`paper_style`): one column is 3.3 in wide, 7-8 pt fonts;
* a single-panel figure is ``f(df, ax=None, **opts) -> Axes``; multi-panel ones
  (:func:`plot_predicted_vs_true`, :func:`plot_trust_region`, :func:`plot_line_search`) take
  ``axes=None`` or nothing and return the :class:`~matplotlib.figure.Figure`;
* nothing here calls ``plt.show()`` or saves files; the caller owns the figure.

Aggregates over seeds are interquartile means with 95 % stratified-bootstrap intervals
(:mod:`analysis.stats`). Per-run points are means over the run's updates unless said otherwise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import (
    EngFormatter,
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
)

from analysis.load import ALGO_ORDER
from analysis.stats import bootstrap_groups, bound_violations, final_per_run, iqm, scatter_stats

#: Width of one paper column, inches.
COLUMN_WIDTH = 3.3
#: Default size of a single-panel figure, inches.
FIGSIZE = (COLUMN_WIDTH, 2.3)

#: Matplotlib settings for paper figures (use with :func:`paper_style`).
PAPER_RC: dict[str, Any] = {
    "figure.figsize": FIGSIZE,
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}

_CB = sns.color_palette("colorblind", 10)
#: Fixed colour of each algorithm label (colour-blind palette).
ALGO_COLORS: dict[str, tuple[float, float, float]] = dict(zip(ALGO_ORDER, _CB, strict=False))

DJ = "true/improvement"
DL = "surrogate/improvement"
DL_EXACT = "exact/surrogate_improvement"


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context manager applying :data:`PAPER_RC` to figures created inside it."""
    with mpl.rc_context(PAPER_RC):
        yield


def algo_color(name: str) -> tuple[float, float, float]:
    """The colour of an algorithm label; labels outside :data:`ALGO_ORDER` get later colours."""
    if name in ALGO_COLORS:
        return ALGO_COLORS[name]
    return _CB[len(ALGO_ORDER) + (sum(map(ord, str(name))) % (len(_CB) - len(ALGO_ORDER)))]


def ordered_levels(df: pd.DataFrame, hue: str) -> list[Any]:
    """Distinct values of ``hue``: algorithms in :data:`ALGO_ORDER`, settings by value."""
    values = [v for v in df[hue].dropna().unique()]
    if hue == "algo":
        return sorted(values, key=lambda a: (ALGO_ORDER.index(a) if a in ALGO_ORDER else 99, a))
    if hue == "setting" and "setting_value" in df.columns:
        first = df.dropna(subset=["setting"]).drop_duplicates("setting")
        value = dict(zip(first["setting"], first["setting_value"], strict=True))
        return sorted(values, key=lambda s: (math.isnan(value[s]), np.nan_to_num(value[s]), s))
    return sorted(values)


def palette(levels: Sequence[Any], hue: str) -> dict[Any, Any]:
    """Colours for ``levels``: fixed algorithm colours, else an ordered (viridis) palette."""
    if hue == "algo":
        return {lv: algo_color(lv) for lv in levels}
    colors = sns.color_palette("viridis", max(len(levels), 1))
    return dict(zip(levels, colors, strict=False))


def estimate_kind(df: pd.DataFrame) -> pd.Series:
    """``"exact"`` for rows of tabular runs (``env.tabular`` true), else ``"Monte Carlo"``."""
    tab = df["tabular"].astype("boolean").fillna(False).astype(bool)
    return pd.Series(np.where(tab, "exact", "Monte Carlo"), index=df.index)


def _axes(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> Axes:
    if ax is not None:
        return ax
    _, new = plt.subplots(figsize=figsize)
    return new


def _finite(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    ok = np.ones(len(df), dtype=bool)
    for col in cols:
        ok &= np.isfinite(df[col].to_numpy(dtype=float))
    return df[ok]


def _legend(ax: Axes, **kwargs: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(**({"loc": "best"} | kwargs))


def _log_axis(ax: Axes, which: str = "x", ticks: Any = None, data: Any = None) -> None:
    """Log scale with plain labels (``0.01``).

    With ``ticks`` (e.g. the deltas swept, at most 8 distinct): exactly those major ticks and
    no minor ticks. Otherwise, when ``data`` spans less than 1.5 decades, minor ticks at 2x and
    5x get labels too (so that a narrow axis is not left without any); else none do.
    """
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")

    def positive(v: Any) -> np.ndarray:
        a = np.asarray([] if v is None else v, dtype=float).ravel()
        return a[np.isfinite(a) & (a > 0)]

    fixed = sorted(set(positive(ticks).tolist()))
    if 0 < len(fixed) <= 8:
        axis.set_major_locator(FixedLocator(fixed))
        axis.set_major_formatter(plain)
        axis.set_minor_locator(FixedLocator([]))
        axis.set_minor_formatter(NullFormatter())
        return
    axis.set_major_formatter(plain)
    values = positive(data)
    narrow = values.size > 0 and np.log10(values.max() / values.min()) < 1.5
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0) if narrow else "auto"))
    axis.set_minor_formatter(plain if narrow else NullFormatter())


# --------------------------------------------------------------------------------------------
# 1. learning curves
# --------------------------------------------------------------------------------------------


def align_curves(
    df: pd.DataFrame,
    x: str = "env_steps",
    value: str = "rollout/return_mean",
    num_points: int = 50,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Put every run's curve on one common grid of ``x``.

    Returns ``(grid, wide)``: ``grid`` spans the smallest to the largest ``x`` of all runs in
    ``num_points`` steps; ``wide`` has one row per run (index ``run_dir``) and one column per
    grid point, each run linearly interpolated between its own updates and NaN outside its
    range (no extrapolation). Updates with a NaN value are skipped.
    """
    d = _finite(df[["run_dir", x, value]], [x, value])
    if d.empty:
        return np.array([]), pd.DataFrame()
    lo, hi = float(d[x].min()), float(d[x].max())
    grid = np.linspace(lo, hi, num_points) if hi > lo else np.array([lo])
    rows = {}
    for run, g in d.groupby("run_dir", sort=True):
        g = g.sort_values(x, kind="stable")
        gx, gy = g[x].to_numpy(dtype=float), g[value].to_numpy(dtype=float)
        rows[run] = np.interp(grid, gx, gy, left=np.nan, right=np.nan)
    return grid, pd.DataFrame.from_dict(rows, orient="index")


def curve_band(
    wide: pd.DataFrame,
    strata: pd.Series | None = None,
    stat: Callable[..., Any] = iqm,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per grid column of ``wide`` (runs x grid): aggregate across runs and its bootstrap CI."""
    labels = (
        np.zeros(len(wide), dtype=int)
        if strata is None
        else pd.factorize(strata.reindex(wide.index))[0]
    )
    out = np.full((3, wide.shape[1]), np.nan)
    values = wide.to_numpy(dtype=float)
    for j in range(values.shape[1]):
        col = values[:, j]
        groups = [col[labels == s] for s in np.unique(labels)]
        out[:, j] = bootstrap_groups(groups, stat=stat, reps=reps, level=level, seed=seed)
    return out[0], out[1], out[2]


def plot_learning_curves(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    x: str = "env_steps",
    value: str = "rollout/return_mean",
    hue: str = "algo",
    style: str | None = "setting",
    strata: str | None = None,
    num_points: int = 50,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Axes:
    """Return (or ``value``) vs environment steps: per curve the IQM across runs (seeds) and
    its stratified-bootstrap band (runs resampled within ``strata``, e.g. ``"env"``).

    One curve per ``hue`` level (coloured by :func:`palette`), split by ``style`` (the
    algorithm's delta/beta/... ``setting``) when a level has several of them: same colour,
    line styles ``-``, ``--``, ``:``, ``-.``, labels ``"trpo, delta=0.01"``. Draws one line and
    one band (``PolyCollection``) per curve, in :func:`ordered_levels` order.
    """
    ax = _axes(ax)
    grid, wide = align_curves(df, x=x, value=value, num_points=num_points)
    runs = df.drop_duplicates("run_dir").set_index("run_dir")
    runs = runs.loc[runs.index.isin(wide.index)]
    levels = ordered_levels(runs, hue) if len(wide) else []
    colors = palette(levels, hue)
    dashes = ["-", "--", ":", "-."]
    for lv in levels:
        in_level = runs[(runs[hue] == lv).to_numpy()]
        styles = ordered_levels(in_level, style) if style in in_level.columns else []
        curves = [(str(lv), "-", in_level)]
        if len(styles) > 1:
            curves = [
                (f"{lv}, {st}", dashes[i % len(dashes)], in_level[in_level[style] == st])
                for i, st in enumerate(styles)
            ]
        for label, dash, members in curves:
            sub = wide.loc[members.index]
            strat = members[strata] if strata else None
            est, lo, hi = curve_band(sub, strat, reps=reps, level=level, seed=seed)
            ax.plot(grid, est, color=colors[lv], ls=dash, label=label)
            ax.fill_between(grid, lo, hi, color=colors[lv], alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    label = {"rollout/return_mean": "return", "true/J": "J"}.get(value, value)
    ax.set_ylabel(f"{label} (IQM)")
    _legend(ax)
    return ax


# --------------------------------------------------------------------------------------------
# 2. predicted vs true improvement
# --------------------------------------------------------------------------------------------


def _fmt_ci(est: float, lo: float, hi: float) -> str:
    if not math.isfinite(est):
        return "n/a"
    return f"{est:.2f} [{lo:.2f}, {hi:.2f}]"


def scatter_panel(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    x: str = DL,
    y: str = DJ,
    hue: str = "setting",
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Axes:
    """One predicted-vs-true panel: one scatter per ``hue`` level (one point per update), the
    line y = x, and Spearman's rho and the OLS slope with bootstrap CIs as text."""
    ax = _axes(ax)
    d = _finite(df, [x, y])
    levels = ordered_levels(d, hue) if hue in d.columns else []
    colors = palette(levels, hue)
    for lv in levels:
        sub = d[d[hue] == lv]
        ax.scatter(sub[x], sub[y], s=5, color=colors[lv], alpha=0.7, label=str(lv), lw=0)
    rest = d[d[hue].isna()] if hue in d.columns else d
    if len(rest):
        ax.scatter(rest[x], rest[y], s=5, color="0.5", alpha=0.7, lw=0)
    if len(d):
        lo = float(min(d[x].min(), d[y].min()))
        hi = float(max(d[x].max(), d[y].max()))
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.3", lw=0.8, label="y = x")
    st = scatter_stats(d[x], d[y], reps=reps, level=level, seed=seed)
    ax.text(
        0.03,
        0.97,
        f"ρ = {_fmt_ci(st.rho, st.rho_low, st.rho_high)}\n"
        f"slope = {_fmt_ci(st.slope, st.slope_low, st.slope_high)}\nn = {st.n}",
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=6,
    )
    ax.set_xlabel("predicted dL")
    ax.set_ylabel("true dJ")
    return ax


def plot_predicted_vs_true(
    df: pd.DataFrame,
    *,
    x: str = DL,
    y: str = DJ,
    hue: str = "setting",
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    panel_size: tuple[float, float] = (1.9, 1.8),
) -> Figure:
    """Surrogate-predicted vs true improvement, one point per update. Returns a Figure.

    Panels: rows = ``gamma`` values; columns = (algorithm, estimate kind) with the exact
    (tabular) and Monte Carlo panels of an algorithm side by side. Each panel is drawn by
    :func:`scatter_panel` and titled ``"<algo>, <kind>, γ=<gamma>"``; panels without data are
    hidden. Colour = the algorithm's step-size ``setting`` (delta or beta, ...).
    """
    d = _finite(df, [x, y]).copy()
    d["kind"] = estimate_kind(d)
    cols = [
        (a, k)
        for a in ordered_levels(d, "algo")
        for k in ("exact", "Monte Carlo")
        if ((d["algo"] == a) & (d["kind"] == k)).any()
    ]
    gammas = sorted(d["gamma"].dropna().unique()) or [math.nan]
    nrows, ncols = len(gammas), max(len(cols), 1)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    for i, g in enumerate(gammas):
        in_row = d["gamma"].isna() if math.isnan(g) else d["gamma"] == g
        for j, (algo, kind) in enumerate(cols):
            ax = axes[i, j]
            panel = d[in_row & (d["algo"] == algo) & (d["kind"] == kind)]
            if panel.empty:
                ax.set_visible(False)
                continue
            scatter_panel(panel, ax, x=x, y=y, hue=hue, reps=reps, level=level, seed=seed)
            ax.set_title(f"{algo}, {kind}, γ={g:g}")
            if panel[hue].nunique() > 1:
                ax.legend(fontsize=5, loc="best", handletextpad=0.2, markerscale=1.5)
            if j:
                ax.set_ylabel("")
    if not cols:
        axes[0, 0].set_visible(False)
    return fig


# --------------------------------------------------------------------------------------------
# 3. surrogate error vs step size
# --------------------------------------------------------------------------------------------


def predicted_improvement(df: pd.DataFrame, prefer_exact: bool = True) -> pd.Series:
    """dL per update: the exact ``exact/surrogate_improvement`` where logged (tabular runs) if
    ``prefer_exact``, else the batch estimate ``surrogate/improvement``."""
    batch = df[DL].astype(float)
    if not prefer_exact or DL_EXACT not in df.columns:
        return batch
    return df[DL_EXACT].astype(float).where(lambda s: np.isfinite(s), batch)


def plot_surrogate_error(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    kl: str = "kl/max",
    hue: str = "algo",
    prefer_exact: bool = True,
) -> Axes:
    """|dJ - dL| against the update's ``kl/max``, log-log, one scatter per algorithm.

    dL is :func:`predicted_improvement` (exact on tabular runs unless ``prefer_exact=False``).
    References: the TRPO bound's penalty ``C * KLmax`` with the median ``bound/C`` of the data
    (when ``bound/C`` was logged: tabular runs), and a slope-1 line through the data's
    geometric mean (error = O(KL) for a smooth policy class). Non-positive values are dropped.
    """
    ax = _axes(ax)
    d = df.assign(_dl=predicted_improvement(df, prefer_exact))
    d = _finite(d, [DJ, "_dl", kl]).copy()
    d["err"] = (d[DJ] - d["_dl"]).abs()
    d = d[(d["err"] > 0) & (d[kl] > 0)]
    levels = ordered_levels(d, hue)
    colors = palette(levels, hue)
    for lv in levels:
        sub = d[d[hue] == lv]
        ax.scatter(sub[kl], sub["err"], s=5, color=colors[lv], alpha=0.7, label=str(lv), lw=0)
    if len(d):
        ks = np.geomspace(d[kl].min(), d[kl].max(), 50)
        c_vals = d["bound/C"].to_numpy(dtype=float)
        c_vals = c_vals[np.isfinite(c_vals)]
        if c_vals.size:
            ax.plot(ks, np.median(c_vals) * ks, color="k", lw=1, label="C·KLmax (bound)")
        gm_k = float(np.exp(np.log(d[kl]).mean()))
        gm_e = float(np.exp(np.log(d["err"]).mean()))
        ax.plot(ks, gm_e * ks / gm_k, ls=":", color="0.4", lw=1, label="slope 1")
    _log_axis(ax, "x", data=d[kl])
    _log_axis(ax, "y", data=np.r_[d["err"].to_numpy(), ax.get_ylim()])
    ax.set_xlabel("KL max")
    ax.set_ylabel("|dJ − dL|")
    _legend(ax)
    return ax


def per_run(
    df: pd.DataFrame,
    metric: str | Callable[[pd.DataFrame], pd.Series],
    x: str = "delta",
    agg: str | Callable[[pd.Series], float] = "mean",
    hue: str = "algo",
) -> pd.DataFrame:
    """One row per run: ``run_dir``, ``hue``, ``x`` and ``y`` = ``agg`` of ``metric`` over the
    run's updates (NaNs ignored). ``metric`` is a column or a function of the rows. Runs with a
    NaN ``x`` or ``y`` are left out."""
    d = df[np.isfinite(df[x].to_numpy(dtype=float))].copy()
    d["_y"] = metric(d) if callable(metric) else d[metric]
    out = (
        d.groupby("run_dir", sort=True)
        .agg(**{hue: (hue, "first"), x: (x, "first"), "y": ("_y", agg)})
        .reset_index()
    )
    return _finite(out, [x, "y"]).reset_index(drop=True)


def _param_plot(
    ax: Axes,
    points: pd.DataFrame,
    x: str,
    line_stat: str | Callable[[pd.Series], float] = "median",
    hue: str = "algo",
) -> None:
    """Per ``hue`` level: one scatter of the per-run points and one line of ``line_stat`` per x."""
    levels = ordered_levels(points, hue)
    colors = palette(levels, hue)
    for lv in levels:
        sub = points[points[hue] == lv]
        ax.scatter(sub[x], sub["y"], s=8, color=colors[lv], alpha=0.5, lw=0)
        line = sub.groupby(x, sort=True)["y"].agg(line_stat)
        ax.plot(line.index, line.to_numpy(), marker="o", color=colors[lv], label=str(lv))


def plot_improvement_vs_delta(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Predicted improvement dL against the target KL ``delta`` (log-log), per algorithm.

    Points: per-run median dL; lines: the IQM of those across runs per delta; a slope-1/2
    reference through their geometric mean (a natural-gradient step of KL delta has
    dL ≈ sqrt(2 delta g'F⁻¹g)). Runs without delta or with dL <= 0 are left out.
    """
    ax = _axes(ax)
    pts = per_run(df, DL, x="delta", agg="median")
    pts = pts[(pts["y"] > 0) & (pts["delta"] > 0)]
    _param_plot(ax, pts, "delta", line_stat=iqm)
    if len(pts):
        ds = np.geomspace(pts["delta"].min(), pts["delta"].max(), 20)
        gm_d = float(np.exp(np.log(pts["delta"]).mean()))
        gm_y = float(np.exp(np.log(pts["y"]).mean()))
        ax.plot(ds, gm_y * np.sqrt(ds / gm_d), ls=":", color="0.4", lw=1, label="slope 1/2")
    _log_axis(ax, "x", pts["delta"])
    _log_axis(ax, "y", data=pts["y"])
    ax.set_xlabel("target KL δ")
    ax.set_ylabel("predicted dL (median per run)")
    _legend(ax)
    return ax


# --------------------------------------------------------------------------------------------
# 4. trust-region adherence
# --------------------------------------------------------------------------------------------

TRUST_REGION_METRICS: tuple[str, ...] = ("kl/mean", "kl/max", "policy/max_ratio")


def plot_trust_region_metric(
    df: pd.DataFrame, metric: str = "kl/mean", ax: Axes | None = None
) -> Axes:
    """Achieved ``metric`` (mean over a run's updates; one point per run) vs target delta, with
    the median across runs per delta as a line per algorithm. For ``kl/*`` metrics also the line
    y = delta (the constraint of ``kl/mean``); log scales for KL."""
    ax = _axes(ax)
    pts = per_run(df, metric, x="delta", agg="mean")
    _param_plot(ax, pts, "delta", line_stat="median")
    if metric.startswith("kl/") and len(pts):
        ds = np.sort(pts["delta"].unique())
        ax.plot(ds, ds, ls="--", color="0.3", lw=0.8, label="y = δ")
        if (pts["y"] > 0).all():
            _log_axis(ax, "y", data=np.r_[pts["y"].to_numpy(), ds])
    _log_axis(ax, "x", pts["delta"])
    ax.set_xlabel("target KL δ")
    ax.set_ylabel(metric)
    return ax


def plot_trust_region(
    df: pd.DataFrame,
    metrics: Sequence[str] = TRUST_REGION_METRICS,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """One :func:`plot_trust_region_metric` panel per metric, side by side. Returns the Figure."""
    if axes is None:
        fig, new = plt.subplots(
            1, len(metrics), figsize=(2.2 * len(metrics), 2.0), constrained_layout=True
        )
        axes = list(np.atleast_1d(new))
    for ax, metric in zip(axes, metrics, strict=True):
        plot_trust_region_metric(df, metric, ax=ax)
    _legend(axes[0])
    return axes[0].figure


# --------------------------------------------------------------------------------------------
# 5. monotonic improvement and the bound
# --------------------------------------------------------------------------------------------


def plot_monotonic(
    df: pd.DataFrame, ax: Axes | None = None, *, x: str = "delta", z: float | None = None
) -> Axes:
    """Fraction of a run's updates that made things worse (dJ < 0) vs ``x``, per algorithm.

    Points: runs; lines: mean across runs. With ``z``, an update counts as worse only when
    ``dJ + z * true/improvement_se < 0`` (significantly negative; for Monte Carlo dJ).
    """
    ax = _axes(ax)
    d = df[np.isfinite(df[DJ].to_numpy(dtype=float))]

    def worse(rows: pd.DataFrame) -> pd.Series:
        se = rows["true/improvement_se"].fillna(0.0) if z is not None else 0.0
        return (rows[DJ] + (z or 0.0) * se < 0).astype(float)

    pts = per_run(d, worse, x=x, agg="mean")
    _param_plot(ax, pts, x, line_stat="mean")
    _log_axis(ax, "x", pts[x])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("target KL δ" if x == "delta" else x)
    ax.set_ylabel("fraction of updates with dJ < 0")
    _legend(ax)
    return ax


def bound_vacuity(df: pd.DataFrame, prefer_exact: bool = True) -> pd.Series:
    """Per update: ``(dL - bound/trpo) / dL`` = C·KLmax / dL (>= 1: the bound guarantees no
    improvement), dL from :func:`predicted_improvement` (the exact dL the bound is built on,
    where logged). NaN where dL <= 0 or a value is missing."""
    dl = predicted_improvement(df, prefer_exact).to_numpy(dtype=float)
    bound = df["bound/trpo"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(dl > 0, (dl - bound) / dl, np.nan)
    return pd.Series(v, index=df.index)


def plot_bound_vacuity(
    df: pd.DataFrame, ax: Axes | None = None, *, x: str = "delta", tol: float = 1e-9
) -> Axes:
    """On exact (tabular) updates: the TRPO bound's vacuity C·KLmax/dL vs ``x`` (per-run
    median as points, median across runs as lines; log y; y = 1 dashed: above it the bound is
    <= 0) and the number of bound violations (dJ < bound/trpo - tol; must be 0) as text."""
    ax = _axes(ax)
    d = df[(estimate_kind(df) == "exact").to_numpy()]
    pts = per_run(d, bound_vacuity, x=x, agg="median")
    pts = pts[pts["y"] > 0]
    _param_plot(ax, pts, x, line_stat="median")
    ax.axhline(1.0, ls="--", color="0.3", lw=0.8)
    violations, checked = bound_violations(d, tol=tol)
    ax.text(
        0.03,
        0.97,
        f"bound violations: {violations} / {checked}",
        transform=ax.transAxes,
        va="top",
        fontsize=6,
    )
    _log_axis(ax, "x", pts[x])
    if len(pts):
        _log_axis(ax, "y", data=np.r_[pts["y"].to_numpy(), 1.0])
    ax.set_xlabel("target KL δ" if x == "delta" else x)
    ax.set_ylabel("C·KLmax / dL")
    _legend(ax, loc="lower right")
    return ax


# --------------------------------------------------------------------------------------------
# 6. gamma x lambda heatmap
# --------------------------------------------------------------------------------------------


def gae_grid(
    df: pd.DataFrame, value: str = "rollout/return_mean", frac: float = 0.1
) -> pd.DataFrame:
    """gamma (rows) x gae_lambda (columns) table of final return: per run the mean of the last
    ``frac`` of its updates, then the IQM over the runs (seeds) of each cell."""
    finals = final_per_run(df, value=value, frac=frac)
    cells = finals.groupby(["gamma", "gae_lambda"])["final"].agg(iqm)
    return cells.unstack("gae_lambda").sort_index().sort_index(axis=1)


def plot_gae_heatmap(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    value: str = "rollout/return_mean",
    frac: float = 0.1,
    annot: bool = True,
    cmap: str = "viridis",
) -> Axes:
    """Heatmap of :func:`gae_grid` (final-return IQM per gamma x lambda), annotated.

    The cell colours are ``ax.collections[0].get_array()`` (rows = gamma ascending)."""
    ax = _axes(ax)
    grid = gae_grid(df, value=value, frac=frac)
    grid.index = [f"{g:g}" for g in grid.index]
    grid.columns = [f"{lam:g}" for lam in grid.columns]
    sns.heatmap(
        grid,
        ax=ax,
        annot=annot,
        fmt=".3g",
        cmap=cmap,
        annot_kws={"fontsize": 6},
        cbar_kws={"label": "final return (IQM)"},
    )
    ax.set_xlabel("GAE λ")
    ax.set_ylabel("γ")
    return ax


# --------------------------------------------------------------------------------------------
# 7. line search
# --------------------------------------------------------------------------------------------

LINE_SEARCH_METRICS: tuple[str, ...] = ("trpo/backtracks", "trpo/accepted")


def plot_line_search_metric(
    df: pd.DataFrame, metric: str = "trpo/backtracks", ax: Axes | None = None
) -> Axes:
    """Mean of a line-search metric per run (points) and across runs (line) vs delta, per
    algorithm (runs that did not log it are left out)."""
    ax = _axes(ax)
    pts = per_run(df, metric, x="delta", agg="mean")
    _param_plot(ax, pts, "delta", line_stat="mean")
    _log_axis(ax, "x", pts["delta"])
    ax.set_xlabel("target KL δ")
    ax.set_ylabel(
        {"trpo/backtracks": "mean backtracks", "trpo/accepted": "acceptance rate"}.get(
            metric, metric
        )
    )
    if metric == "trpo/accepted":
        ax.set_ylim(-0.02, 1.02)
    return ax


def plot_line_search(
    df: pd.DataFrame,
    metrics: Sequence[str] = LINE_SEARCH_METRICS,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Mean backtracks and acceptance rate per delta, two panels. Returns the Figure."""
    if axes is None:
        fig, new = plt.subplots(
            1, len(metrics), figsize=(COLUMN_WIDTH * 1.2, 1.9), constrained_layout=True
        )
        axes = list(np.atleast_1d(new))
    for ax, metric in zip(axes, metrics, strict=True):
        plot_line_search_metric(df, metric, ax=ax)
    _legend(axes[0])
    return axes[0].figure
