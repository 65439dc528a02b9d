"""Paper figures from the long table of :func:`analysis.load.load_runs`.

Conventions:

* one colour per algorithm everywhere (:data:`ALGO_COLORS`, seaborn's colour-blind palette);
* paper style (:data:`PAPER_RC`, :func:`paper_style`): one column is 3.3 in wide, 7-8 pt fonts;
* a single-panel figure is ``f(df, ax=None, **opts) -> Axes``; multi-panel ones
  (:func:`plot_predicted_vs_true`, :func:`plot_surrogate_error_panels`,
  :func:`plot_trust_region`, :func:`plot_line_search`, :func:`facet`) take ``axes=None`` or
  nothing and return the :class:`~matplotlib.figure.Figure`;
* quantities in different units or from different estimators never share an axes: panels are
  per env and estimate kind (:func:`env_panels`: exact vs Monte Carlo), with one legend below
  the panels (:func:`figure_legend`) and statistics text placed where it hides no data
  (:func:`corner_text`);
* nothing here calls ``plt.show()`` or saves files; the caller owns the figure.

Aggregates over seeds are interquartile means with 95 % stratified-bootstrap intervals
(:mod:`analysis.stats`). Per-run points are means over the run's updates unless said otherwise.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
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

from analysis.labels import label as column_label
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
DJ_SE = "true/improvement_se"
DL = "surrogate/improvement"
DL_HELDOUT = "surrogate/improvement_heldout"
DL_HELDOUT_SE = "surrogate/improvement_heldout_se"
#: Which estimate of dL the figures use: on held-out episodes (never trained on) or in-sample
#: (the batch the update was fitted to, which over-predicts).
PREDICTIONS: tuple[str, ...] = ("heldout", "in_sample")
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
    """Distinct values of ``hue``: algorithms in :data:`ALGO_ORDER`, settings by the
    algorithm that first has them (in that order), then by value (``theory`` last)."""
    values = [v for v in df[hue].dropna().unique()]
    if hue == "algo":
        return sorted(values, key=lambda a: (ALGO_ORDER.index(a) if a in ALGO_ORDER else 99, a))
    if hue == "setting" and "setting_value" in df.columns:
        first = df.dropna(subset=["setting"]).drop_duplicates("setting")
        value = dict(zip(first["setting"], first["setting_value"], strict=True))
        algo = dict(zip(first["setting"], first.get("algo", first["setting"]), strict=True))

        def key(s: Any) -> tuple[Any, ...]:
            a = algo[s]
            rank = ALGO_ORDER.index(a) if a in ALGO_ORDER else len(ALGO_ORDER)
            return (rank, math.isnan(value[s]), np.nan_to_num(value[s]), s)

        return sorted(values, key=key)
    return sorted(values)


#: The part of viridis that ordered levels (a sweep's deltas) take: without its darkest
#: purple, which small points cannot tell from the next one, and its palest yellow. Drawn at
#: :data:`SETTING_ALPHA`, neighbouring colours of up to 6 levels differ by >= 28 in CIELAB
#: (ΔE*ab; viridis 0-0.85 at alpha 0.7, as before: 20).
SEQUENTIAL_RANGE: tuple[float, float] = (0.1, 0.9)
#: Opacity of scatter points coloured by an ordered setting.
SETTING_ALPHA = 0.9
#: Marker shapes of ordered levels, in turn: neighbouring settings differ in shape as well.
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")


def level_markers(levels: Sequence[Any], hue: str) -> dict[Any, str]:
    """One marker per level: circles for algorithms, else :data:`MARKERS` in turn."""
    if hue == "algo":
        return dict.fromkeys(levels, "o")
    return {lv: MARKERS[i % len(MARKERS)] for i, lv in enumerate(levels)}


def palette(levels: Sequence[Any], hue: str) -> dict[Any, Any]:
    """Colours for ``levels``: fixed algorithm colours, else an ordered palette (viridis over
    :data:`SEQUENTIAL_RANGE`)."""
    if hue == "algo":
        return {lv: algo_color(lv) for lv in levels}
    cmap = mpl.colormaps["viridis"]
    n = max(len(levels), 1)
    colors = [tuple(cmap(v)[:3]) for v in np.linspace(*SEQUENTIAL_RANGE, n)] if n > 1 \
        else [cmap(0.3)[:3]]
    return dict(zip(levels, colors, strict=False))


def scatter_hue(df: pd.DataFrame) -> str:
    """What the colour of a predicted-vs-true point says: the algorithm when no algorithm has
    more than one step-size setting (an algorithm sweep: one colour per algorithm, as in every
    figure), else the ``setting`` (a delta or beta sweep: an ordered palette)."""
    if "setting" not in df.columns or "algo" not in df.columns:
        return "algo" if "algo" in df.columns else "setting"
    settings = df.dropna(subset=["setting"]).groupby("algo")["setting"].nunique()
    return "algo" if (settings <= 1).all() else "setting"


#: Order of the estimate kinds in panel layouts.
KINDS: tuple[str, ...] = ("exact", "Monte Carlo")


def estimate_kind(df: pd.DataFrame) -> pd.Series:
    """How an update's dL (and the policy step) was computed: ``"exact"`` for runs with
    ``estimator == "exact"`` (tabular quantities), else ``"Monte Carlo"`` (sampled batches, even
    on a tabular env). Where ``estimator`` is missing, ``env.tabular`` decides."""
    n = len(df)
    tab = (
        df["tabular"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        if "tabular" in df.columns
        else np.zeros(n, dtype=bool)
    )
    if "estimator" in df.columns:
        est = df["estimator"]
        exact = np.where(est.notna().to_numpy(), (est.astype(str) == "exact").to_numpy(), tab)
    else:
        exact = tab
    return pd.Series(np.where(exact, KINDS[0], KINDS[1]), index=df.index)


def is_tabular(df: pd.DataFrame) -> np.ndarray:
    """Boolean mask of rows of tabular runs (``env.tabular``: exact J, the bound is logged)."""
    if "tabular" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["tabular"].astype("boolean").fillna(False).to_numpy(dtype=bool)


def _label(value: Any) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def env_panels(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(title, rows)`` per (env, :func:`estimate_kind`) present, titled ``"<env>, <kind>"``,
    the exact ones first, then by env: quantities in one panel share units (the env's J) and
    estimation noise."""
    if df.empty:
        return []
    env = df["env"].map(_label) if "env" in df.columns else pd.Series("?", index=df.index)
    kind = estimate_kind(df)
    keys = sorted(set(zip(env, kind, strict=True)), key=lambda k: (KINDS.index(k[1]), k[0]))
    return [(f"{e}, {k}", df[((env == e) & (kind == k)).to_numpy()]) for e, k in keys]


#: Step-size parameters that parameter sweeps put on the x axis, and their axis labels.
STEP_PARAMS: dict[str, str] = {x: column_label(x) for x in ("delta", "beta")}


def step_values(df: pd.DataFrame, x: str) -> pd.Series:
    """Per row the value of the step-size parameter ``x`` as a float.

    For ``x="beta"``, runs with ``beta=theory`` (no number in the config: beta = C of the TRPO
    bound, computed during training) are all placed at the median ``penalty/beta`` they logged,
    so the theoretical penalty sits where its value is on a log axis."""
    v = pd.to_numeric(df[x], errors="coerce").astype(float) if x in df.columns else None
    if v is None:
        return pd.Series(np.nan, index=df.index)
    if x == "beta" and {"beta_label", "penalty/beta"} <= set(df.columns):
        theory = ((df["beta_label"].astype(str) == "theory") & v.isna()).to_numpy()
        logged = df.loc[theory, "penalty/beta"].to_numpy(dtype=float)
        logged = logged[np.isfinite(logged)]
        if logged.size:
            v = v.copy()
            v[theory] = float(np.median(logged))
    return v


def theory_ticks(df: pd.DataFrame, x: str) -> dict[float, str]:
    """Tick labels for ``beta=theory`` runs placed by :func:`step_values`:
    ``{x: "theory\\n≈245"}``."""
    if x != "beta" or "beta_label" not in df.columns:
        return {}
    theory = (df["beta_label"].astype(str) == "theory").to_numpy()
    xs = step_values(df, x)[theory].to_numpy(dtype=float)
    xs = xs[np.isfinite(xs)]
    return {
        float(v): f"theory\n≈{v:.0f}" if v >= 100 else f"theory\n≈{v:.2g}" for v in np.unique(xs)
    }


def step_panels(
    df: pd.DataFrame, params: Sequence[str] = tuple(STEP_PARAMS), min_values: int = 1
) -> list[tuple[str, str, pd.DataFrame]]:
    """``(title, x, rows)``: per :func:`env_panels` group and step-size parameter ``x`` (delta,
    beta) the rows with a value of ``x`` (see :func:`step_values`), where they hold at least
    ``min_values`` distinct values of it (2: a curve against x, not one point per algorithm as
    an algorithm sweep's default delta and beta would give)."""
    out = []
    for title, rows in env_panels(df):
        for x in params:
            if x not in rows.columns:
                continue
            values = step_values(rows, x).to_numpy(dtype=float)
            has = np.isfinite(values)
            if has.any() and len(np.unique(values[has])) >= min_values:
                out.append((title, x, rows[has]))
    return out


#: Distinct step-size values a panel of the step-size figures needs (trust region, monotonic
#: improvement, line search, improvement vs delta).
MIN_STEP_VALUES = 2


def panel_grid(
    n: int, panel_size: tuple[float, float], max_cols: int = 3, ncols: int | None = None
) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure with ``n`` panels (no empty ones): ``ncols`` columns, by
    default as balanced as possible with at most ``max_cols`` (4 panels: 2 x 2)."""
    n = max(n, 1)
    if ncols is None:
        ncols = math.ceil(n / math.ceil(n / max_cols))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


_SYMBOLS = {"delta": "δ", "beta": "β", "clip": "ε"}


def display_label(label: str) -> str:
    """Legend text of an artist label: ``delta=0.01`` -> ``δ=0.01``, ``beta=x`` -> ``β=x``,
    ``clip=0.2`` -> ``ε=0.2``."""
    for name, sym in _SYMBOLS.items():
        label = label.replace(f"{name}=", f"{sym}=")
    return label


def _handles(axes: Sequence[Axes]) -> tuple[list[Any], list[str]]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_") and lab not in seen:
                seen[lab] = h
    return list(seen.values()), list(seen)


def _legend_columns(labels: Sequence[str], width_in: float) -> int:
    """The most legend columns (balanced rows) whose estimated width fits ``width_in`` inches
    at 7 pt: per column its widest entry (handle and gaps about 0.4 in, 0.055 in a character);
    matplotlib fills the columns top to bottom."""
    n = len(labels)
    for ncol in range(n, 1, -1):
        rows = math.ceil(n / ncol)
        if math.ceil(n / rows) != ncol:
            continue  # not a balanced layout
        cols = [labels[i : i + rows] for i in range(0, n, rows)]
        width = sum(0.4 + 0.055 * max(len(lab) for lab in col) for col in cols)
        if width <= 0.95 * width_in:
            return ncol
    return 1


def figure_legend(
    fig: Figure,
    axes: Sequence[Axes] | None = None,
    order: Sequence[str] = (),
    **kwargs: Any,
) -> Any:
    """One legend for all panels, below them (outside, so it never covers data), the figure
    made taller by its height so that the panels keep their size: the distinct artist labels
    of ``axes`` (default: the figure's), those in ``order`` first in that order, then those
    of algorithms (``"trpo"``, ``"trpo, delta=0.01"``) in :data:`ALGO_ORDER`, then the rest
    (reference lines), each group in first-seen order; per-axes legends are removed. Returns
    the legend (None when there is nothing to label)."""
    axes = list(fig.axes if axes is None else axes)
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = _handles(axes)
    if not handles:
        return None
    rank = {lab: i for i, lab in enumerate(order)}

    def key(label: str) -> int:
        if label in rank:
            return rank[label]
        algo = label.split(",")[0]
        return len(rank) + (ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER))

    # stable: first-seen order among equal keys
    pairs = sorted(zip(handles, labels, strict=True), key=lambda hl: key(hl[1]))
    handles, labels = [h for h, _ in pairs], [lab for _, lab in pairs]
    shown = [display_label(lab) for lab in labels]
    ncol = _legend_columns(shown, fig.get_size_inches()[0])
    opts = {
        "loc": "outside lower center",
        "ncol": ncol,
        "markerscale": 2.0,
        "handlelength": 1.8,
        "columnspacing": 1.2,
    }
    legend = fig.legend(handles, shown, **(opts | kwargs))
    # grow the figure by the legend's height, so that the panels keep their size (and any text
    # placed in them by :func:`corner_text` keeps its room)
    height = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi
    w, h = fig.get_size_inches()
    fig.set_size_inches(w, h + height + 0.05)
    return legend


def caption(fig: Figure, text: str, fontsize: float = 6.5) -> Any:
    """Say on the figure what its points, lines and bands aggregate (median, IQM, mean; over
    runs or updates) and over how many: small text above the panels, wrapped to the figure's
    width (about 0.5 em a character), so that it never widens the figure."""
    chars_per_line = max(20, int(fig.get_size_inches()[0] * 72 / (0.5 * fontsize)))
    wrapped = "\n".join(textwrap.wrap(text, chars_per_line, break_on_hyphens=False))
    return fig.suptitle(wrapped, fontsize=fontsize, color="0.25")


def count_text(counts: Sequence[int], unit: str) -> str:
    """``n = 2 runs per curve``, or ``n = 2–5 runs per curve`` when the counts differ."""
    lo, hi = (min(counts), max(counts)) if len(counts) else (0, 0)
    return f"n = {lo} {unit}" if lo == hi else f"n = {lo}–{hi} {unit}"


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
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, [display_label(lab) for lab in labels], **({"loc": "best"} | kwargs))


_CORNERS: dict[str, tuple[float, float, str, str]] = {
    "upper left": (0.03, 0.97, "left", "top"),
    "upper right": (0.97, 0.97, "right", "top"),
    "lower right": (0.97, 0.03, "right", "bottom"),
    "lower left": (0.03, 0.03, "left", "bottom"),
}


def _drawn_points(ax: Axes) -> np.ndarray:
    """Everything drawn in ``ax`` as points in display coordinates: scatter offsets, filled
    areas and lines (densely interpolated, so that a segment crossing a corner counts)."""
    ax.autoscale_view()
    parts = [np.empty((0, 2))]
    for coll in ax.collections:
        off = np.asarray(coll.get_offsets(), dtype=float).reshape(-1, 2)
        if len(off) and coll.get_offset_transform().contains_branch(ax.transData):
            parts.append(coll.get_offset_transform().transform(off))  # a scatter
        else:
            for path in coll.get_paths():  # e.g. a band of fill_between
                parts.append(coll.get_transform().transform(path.vertices))
    for line in ax.get_lines():
        xy = np.c_[line.get_xdata(orig=False), line.get_ydata(orig=False)].astype(float)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) == 0:
            continue
        a = line.get_transform().transform(xy)
        if len(a) > 1:
            t = np.linspace(0, 1, 25)[:, None, None]
            a = (a[:-1][None] * (1 - t) + a[1:][None] * t).reshape(-1, 2)
        parts.append(a)
    pts = np.concatenate(parts)
    return pts[np.isfinite(pts).all(axis=1)]


def corner_text(
    ax: Axes,
    text: str,
    corners: Sequence[str] = tuple(_CORNERS),
    **kwargs: Any,
) -> Any:
    """Write ``text`` in a corner of ``ax`` on a translucent white box, where it hides no data.

    Of ``corners`` (in preference order) the one whose text box covers the fewest drawn points
    (:func:`_drawn_points`) wins; if even that one covers some, the y limit on its side is
    pushed out until the data clear the box. Call it after the scales and limits are final."""
    style = {
        "fontsize": 6,
        "bbox": {"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85},
    }
    fig = ax.figure
    x, y, ha, va = _CORNERS[corners[0]]
    txt = ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, **(style | kwargs))
    fig.draw_without_rendering()  # the layout: the axes' final size
    renderer = fig.canvas.get_renderer()
    pts = _drawn_points(ax)

    def covered(name: str) -> int:
        x, y, ha, va = _CORNERS[name]
        txt.set_position((x, y))
        txt.set_ha(ha)
        txt.set_va(va)
        box = txt.get_window_extent(renderer).padded(3)
        inside = (
            (pts[:, 0] >= box.x0)
            & (pts[:, 0] <= box.x1)
            & (pts[:, 1] >= box.y0)
            & (pts[:, 1] <= box.y1)
        )
        return int(inside.sum())

    counts = {c: covered(c) for c in corners}
    best = min(corners, key=lambda c: (counts[c], list(corners).index(c)))
    x, y, ha, va = _CORNERS[best]
    txt.set_position((x, y))
    txt.set_ha(ha)
    txt.set_va(va)
    if counts[best]:
        _make_room(ax, txt.get_window_extent(renderer).padded(3), upper=y > 0.5)
    return txt


def _make_room(ax: Axes, box: Any, upper: bool) -> None:
    """Push the y limit on one side out so that the data's extent in y clears ``box`` (the
    text's extent in display coordinates)."""
    ax_box = ax.get_window_extent()
    edge = box.y0 if upper else box.y1
    frac = (ax_box.y1 - edge if upper else edge - ax_box.y0) / ax_box.height
    frac = min(max(frac, 0.0), 0.6) + 0.03
    log = ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    f = np.log10 if log else (lambda v: v)
    a, b = f(lo), f(hi)
    span = (b - a) / (1 - frac)
    a, b = (a, a + span) if upper else (b - span, b)
    ax.set_ylim(*((10**a, 10**b) if log else (a, b)))


def _label_budget(ax: Axes, which: str) -> float:
    """About how many characters of 7-pt tick labels fit along the axis (its width/height)."""
    fig = ax.figure
    w, h = fig.get_size_inches()
    pos = ax.get_position()
    length = pos.width * w if which == "x" else pos.height * h
    return 15.0 * length


def _log_axis(
    ax: Axes,
    which: str = "x",
    ticks: Any = None,
    data: Any = None,
    labels: dict[float, str] | None = None,
) -> None:
    """Log scale with plain labels (``0.01``).

    With ``ticks`` (e.g. the deltas swept, at most 8 distinct): exactly those major ticks and
    no minor ticks; ``labels`` overrides the text of some of them (e.g. ``"theory"``). When the
    labels would not fit along the axis (about 15 characters an inch at 7 pt), only the powers
    of ten and the overridden ones are labelled (the others keep an unlabelled tick).
    Otherwise, when ``data`` spans less than 1.5 decades, minor ticks at 2x and 5x get labels
    too (so that a narrow axis is not left without any); else none do.
    """
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")

    def positive(v: Any) -> np.ndarray:
        a = np.asarray([] if v is None else v, dtype=float).ravel()
        return a[np.isfinite(a) & (a > 0)]

    fixed = sorted(set(positive(ticks).tolist()))
    if 0 < len(fixed) <= 8:
        special = {float(k): v for k, v in (labels or {}).items()}
        text = {v: special.get(v, f"{v:g}") for v in fixed}
        widest = [max(len(s) for s in t.split("\n")) for t in text.values()]
        if which == "x" and sum(widest) + 2 * len(fixed) > _label_budget(ax, which):
            decade = {v for v in fixed if abs(math.log10(v) - round(math.log10(v))) < 1e-9}
            if decade:
                text = {v: t if (v in decade or v in special) else "" for v, t in text.items()}
        axis.set_major_locator(FixedLocator(fixed))
        axis.set_major_formatter(FuncFormatter(lambda v, _: text.get(float(v), f"{v:g}")))
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
    algorithm's delta/beta/... ``setting``) when a level has several of them, labelled
    ``"trpo, delta=0.01"``: with several ``hue`` levels the split curves keep their level's
    colour and get line styles ``-``, ``--``, ``:``, ``-.``; with a single ``hue`` level they are
    solid and coloured by the ordered ``style`` palette (so six deltas stay distinguishable).
    Draws one line and one band (``PolyCollection``) per curve, in :func:`ordered_levels` order.
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
        curves = [(str(lv), "-", colors[lv], in_level)]
        if len(styles) > 1:
            by_style = palette(styles, str(style)) if len(levels) == 1 else {}
            curves = [
                (
                    f"{lv}, {st}",
                    "-" if by_style else dashes[i % len(dashes)],
                    by_style.get(st, colors[lv]),
                    in_level[in_level[style] == st],
                )
                for i, st in enumerate(styles)
            ]
        for label, dash, color, members in curves:
            sub = wide.loc[members.index]
            strat = members[strata] if strata else None
            est, lo, hi = curve_band(sub, strat, reps=reps, level=level, seed=seed)
            ax.plot(grid, est, color=color, ls=dash, label=label)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel(column_label(x))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_ylabel(f"{column_label(value)} (IQM)")
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
    xerr: str | None = None,
    yerr: str | None = None,
    hue: str = "setting",
    colors: Mapping[Any, Any] | None = None,
    markers: Mapping[Any, str] | None = None,
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Axes:
    """One predicted-vs-true panel: one scatter per ``hue`` level (one point per update; colours
    from ``colors`` or :func:`palette`, markers from ``markers`` or :func:`level_markers`),
    with +-1 standard error bars from the columns ``xerr``
    and ``yerr`` where given and finite, the line y = x, and Spearman's rho and the OLS slope
    with bootstrap CIs as text in the upper-left or lower-right corner (off the diagonal),
    whichever covers fewer points."""
    ax = _axes(ax)
    d = _finite(df, [x, y])
    levels = ordered_levels(d, hue) if hue in d.columns else []
    colors = {**palette(levels, hue), **(colors or {})}
    markers = {**level_markers(levels, hue), **(markers or {})}
    alpha = 0.7 if hue == "algo" else SETTING_ALPHA

    def draw(sub: pd.DataFrame, color: Any, label: str | None, marker: str = "o") -> None:
        bars = {name: sub[col].to_numpy(dtype=float) for name, col in
                (("xerr", xerr), ("yerr", yerr)) if col is not None and col in sub.columns}
        bars = {k: np.where(np.isfinite(v), v, 0.0) for k, v in bars.items()}
        if any(v.any() for v in bars.values()):
            ax.errorbar(sub[x], sub[y], fmt="none", ecolor=color, alpha=0.25, lw=0.5, **bars)
        ax.scatter(sub[x], sub[y], s=5 if marker == "o" else 7, color=color, alpha=alpha,
                   label=label, lw=0, marker=marker)

    for lv in levels:
        draw(d[d[hue] == lv], colors[lv], str(lv), markers[lv])
    rest = d[d[hue].isna()] if hue in d.columns else d
    if len(rest):
        draw(rest, "0.5", None)
    if len(d):
        lo = float(min(d[x].min(), d[y].min()))
        hi = float(max(d[x].max(), d[y].max()))
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.3", lw=0.8, label="y = x")
    st = scatter_stats(d[x], d[y], reps=reps, level=level, seed=seed)
    corner_text(
        ax,
        f"ρ = {_fmt_ci(st.rho, st.rho_low, st.rho_high)}\n"
        f"slope = {_fmt_ci(st.slope, st.slope_low, st.slope_high)}\nn = {st.n}",
        corners=("upper left", "lower right"),
    )
    ax.set_xlabel(column_label(x))
    ax.set_ylabel(column_label(y))
    return ax


def prediction_frame(df: pd.DataFrame, prediction: str = "heldout") -> pd.DataFrame:
    """``df`` with columns ``_dl`` and ``_dl_se``: the dL estimate the figures draw.

    ``prediction="heldout"``: the estimate on held-out episodes with its standard error where
    the run logged one; updates on the exact batch (exact dL) and older runs without a held-out
    estimate fall back to ``surrogate/improvement`` (no error bar). ``"in_sample"``: always
    ``surrogate/improvement``, the batch the update was fitted to.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    in_sample = df[DL].astype(float)
    if prediction == "in_sample" or DL_HELDOUT not in df.columns:
        return df.assign(_dl=in_sample, _dl_se=np.nan)
    heldout = df[DL_HELDOUT].astype(float).where(estimate_kind(df) != KINDS[0])
    use = np.isfinite(heldout)
    se = df[DL_HELDOUT_SE].astype(float) if DL_HELDOUT_SE in df.columns else np.nan
    return df.assign(_dl=heldout.where(use, in_sample), _dl_se=pd.Series(se, df.index).where(use))


def plot_predicted_vs_true(
    df: pd.DataFrame,
    *,
    prediction: str = "heldout",
    y: str = DJ,
    hue: str | None = None,
    reps: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    panel_size: tuple[float, float] = (2.2, 2.0),
    max_cols: int = 3,
) -> Figure:
    """Surrogate-predicted vs true improvement, one point per update. Returns a Figure.

    The prediction is :func:`prediction_frame`'s: by default dL on held-out episodes, with
    +-1 SE bars on both axes (dL's over held-out episodes, dJ's over paired evaluation
    episodes; exact values have none); ``prediction="in_sample"`` draws the estimate on the
    training batch instead.

    One panel per (algorithm, gamma, estimate kind) that has data, and no empty ones: per
    algorithm and gamma the exact and the Monte Carlo panel (:func:`estimate_kind`) side by
    side, at most ``max_cols`` panels a row. Each panel is drawn by :func:`scatter_panel` and
    titled ``"<algo>, <kind>, γ=<gamma>"``. Colour (``hue``; default :func:`scatter_hue`): the
    algorithm in an algorithm sweep (its colour in every figure), else the step-size
    ``setting`` (delta or beta, ...; ordered), the same colour for a setting in every panel;
    one legend below the panels.
    """
    x = "_dl"
    d = _finite(prediction_frame(df, prediction), [x, y]).copy()
    hue = scatter_hue(d) if hue is None else hue
    d["kind"] = estimate_kind(d)
    gamma = d["gamma"].astype(float) if "gamma" in d.columns else pd.Series(np.nan, d.index)
    d["_gamma"] = gamma.fillna(-1.0)
    panels = [
        (a, g, k)
        for a in ordered_levels(d, "algo")
        for g in sorted(d["_gamma"].unique())
        for k in KINDS
        if ((d["algo"] == a) & (d["_gamma"] == g) & (d["kind"] == k)).any()
    ]
    fig, axes = panel_grid(len(panels), panel_size, max_cols=max_cols)
    levels = ordered_levels(d, hue) if hue in d.columns else []
    colors, markers = palette(levels, hue), level_markers(levels, hue)
    for ax, (algo, g, kind) in zip(axes, panels, strict=False):
        panel = d[(d["algo"] == algo) & (d["_gamma"] == g) & (d["kind"] == kind)]
        scatter_panel(
            panel, ax, x=x, y=y, xerr="_dl_se", yerr=DJ_SE if y == DJ else None, hue=hue,
            colors=colors, markers=markers, reps=reps, level=level, seed=seed
        )
        ax.set_xlabel(column_label(DL_HELDOUT if prediction == "heldout" else DL))
        ax.set_title(f"{algo}, {kind}, γ={g:g}" if g >= 0 else f"{algo}, {kind}")
    if not panels:
        axes[0].set_visible(False)
    else:
        figure_legend(fig, axes, order=[str(lv) for lv in levels])
    return fig


# --------------------------------------------------------------------------------------------
# 3. surrogate error vs step size
# --------------------------------------------------------------------------------------------


def predicted_improvement(df: pd.DataFrame, prefer_exact: bool = True,
                          prediction: str = "heldout") -> pd.Series:
    """dL per update: the exact ``exact/surrogate_improvement`` where logged (tabular runs) if
    ``prefer_exact``, else the estimate of :func:`prediction_frame` (held-out by default)."""
    estimate = prediction_frame(df, prediction)["_dl"]
    if not prefer_exact or DL_EXACT not in df.columns:
        return estimate
    return df[DL_EXACT].astype(float).where(lambda s: np.isfinite(s), estimate)


def surrogate_error_noise(df: pd.DataFrame, prefer_exact: bool = True,
                          prediction: str = "heldout") -> pd.Series:
    """The standard error of dJ - dL per update, sqrt(SE(dJ)^2 + SE(dL)^2), with SE 0 for an
    exact value: below about twice this, a measured surrogate error is Monte Carlo noise."""
    frame = prediction_frame(df, prediction)
    dl_se = frame["_dl_se"].astype(float).fillna(0.0)
    if prefer_exact and DL_EXACT in df.columns:
        dl_se = dl_se.where(~np.isfinite(df[DL_EXACT].astype(float)), 0.0)
    dj_se = df[DJ_SE].astype(float).fillna(0.0) if DJ_SE in df.columns else 0.0 * dl_se
    return np.sqrt(dj_se**2 + dl_se**2)


def plot_surrogate_error(
    df: pd.DataFrame,
    ax: Axes | None = None,
    *,
    kl: str = "kl/max",
    hue: str = "algo",
    prefer_exact: bool = True,
    prediction: str = "heldout",
) -> Axes:
    """|dJ - dL| against the update's ``kl/max``, log-log, one scatter per algorithm.

    Meant for the updates of one env and estimate kind (|dJ - dL| is in units of that env's J;
    :func:`plot_surrogate_error_panels` makes one panel per env and kind). dL is
    :func:`predicted_improvement` (exact on tabular runs unless ``prefer_exact=False``).
    References: the TRPO bound's penalty ``C * KLmax`` with the median ``bound/C`` of the data,
    over the KL range of the updates that logged ``bound/C`` (tabular runs; no curve without
    any), and a slope-1 line through the data's geometric mean (error = O(KL) for a smooth
    policy class). Where the estimates are Monte Carlo, a dashed line marks the noise floor:
    the median over the updates of 1.96 :func:`surrogate_error_noise`, below which an error
    cannot be told from sampling noise. Non-positive values are dropped.
    """
    ax = _axes(ax)
    d = df.assign(_dl=predicted_improvement(df, prefer_exact, prediction),
                  _noise=surrogate_error_noise(df, prefer_exact, prediction))
    d = _finite(d, [DJ, "_dl", kl]).copy()
    d["err"] = (d[DJ] - d["_dl"]).abs()
    d = d[(d["err"] > 0) & (d[kl] > 0)]
    levels = ordered_levels(d, hue)
    colors = palette(levels, hue)
    for lv in levels:
        sub = d[d[hue] == lv]
        ax.scatter(sub[kl], sub["err"], s=5, color=colors[lv], alpha=0.7, label=str(lv), lw=0)
    if len(d):
        bounded = _finite(d, ["bound/C"]) if "bound/C" in d.columns else d.iloc[:0]
        if len(bounded):
            kb = np.geomspace(bounded[kl].min(), bounded[kl].max(), 50)
            c = float(np.median(bounded["bound/C"].to_numpy(dtype=float)))
            ax.plot(kb, c * kb, color="k", lw=1, label="C·KLmax (TRPO bound)")
        ks = np.geomspace(d[kl].min(), d[kl].max(), 50)
        gm_k = float(np.exp(np.log(d[kl]).mean()))
        gm_e = float(np.exp(np.log(d["err"]).mean()))
        ax.plot(ks, gm_e * ks / gm_k, ls=":", color="0.4", lw=1, label="slope 1")
        floor = 1.96 * float(np.median(d["_noise"].to_numpy(dtype=float)))
        if floor > 0:
            ax.axhline(floor, ls="--", color="0.5", lw=0.8, label="MC noise floor (1.96 SE)")
    _log_axis(ax, "x", data=d[kl])
    _log_axis(ax, "y", data=np.r_[d["err"].to_numpy(), ax.get_ylim()])
    ax.set_xlabel(column_label(kl))
    ax.set_ylabel("|dJ − dL|")
    _legend(ax)
    return ax


def surrogate_error_rows(
    df: pd.DataFrame, kl: str = "kl/max", prefer_exact: bool = True,
    prediction: str = "heldout",
) -> pd.DataFrame:
    """The updates :func:`plot_surrogate_error` draws: finite dJ, dL and KL, both > 0."""
    d = df.assign(_dl=predicted_improvement(df, prefer_exact, prediction))
    d = _finite(d, [DJ, "_dl", kl])
    err = (d[DJ] - d["_dl"]).abs()
    return d[((err > 0) & (d[kl] > 0)).to_numpy()].drop(columns="_dl")


def facet(
    panels: Sequence[tuple[str, Callable[[Axes], Any]]],
    *,
    panel_size: tuple[float, float] = (2.2, 1.9),
    max_cols: int = 3,
) -> Figure:
    """A figure with one panel per ``(title, draw)`` (``draw(ax)`` fills the panel), no empty
    panels, and one legend for all of them below (:func:`figure_legend`)."""
    fig, axes = panel_grid(len(panels), panel_size, max_cols=max_cols)
    for ax, (title, draw) in zip(axes, panels, strict=False):
        draw(ax)
        ax.set_title(title)
    figure_legend(fig, axes)
    return fig


def plot_surrogate_error_panels(
    df: pd.DataFrame,
    *,
    kl: str = "kl/max",
    hue: str = "algo",
    prefer_exact: bool = True,
    prediction: str = "heldout",
    panel_size: tuple[float, float] = (2.2, 1.9),
) -> Figure:
    """:func:`plot_surrogate_error` with one panel per env and estimate kind
    (:func:`env_panels`, titled ``"<env>, <kind>"``), each with its own references (the
    ``C * KLmax`` curve only in panels of tabular runs). Returns the Figure."""
    rows = surrogate_error_rows(df, kl, prefer_exact, prediction)
    panels = [
        (title, partial(plot_surrogate_error, sub, kl=kl, hue=hue, prefer_exact=prefer_exact,
                        prediction=prediction))
        for title, sub in env_panels(rows)
    ]
    return facet(panels, panel_size=panel_size)


def per_run(
    df: pd.DataFrame,
    metric: str | Callable[[pd.DataFrame], pd.Series],
    x: str = "delta",
    agg: str | Callable[[pd.Series], float] = "mean",
    hue: str = "algo",
) -> pd.DataFrame:
    """One row per run: ``run_dir``, ``hue``, ``x`` and ``y`` = ``agg`` of ``metric`` over the
    run's updates (NaNs ignored). ``metric`` is a column or a function of the rows; ``x`` is
    read by :func:`step_values` (``beta=theory`` runs at their logged beta). Runs with a NaN
    ``x`` or ``y`` are left out."""
    xs = step_values(df, x).to_numpy(dtype=float)
    keep = np.isfinite(xs)
    d = df[keep].copy()
    d[x] = xs[keep]
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


def _step_axis(ax: Axes, df: pd.DataFrame, points: pd.DataFrame, x: str) -> None:
    """Log x axis with a tick at each value of ``x`` drawn (``theory`` labelled) and its label."""
    _log_axis(ax, "x", points[x], labels=theory_ticks(df, x))
    ax.set_xlabel(STEP_PARAMS.get(x, x))


def plot_improvement_vs_delta(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Predicted improvement dL against the target KL ``delta`` (log-log), per algorithm.

    Points: per-run median dL; lines: the IQM of those across runs per delta; a slope-1/2
    reference through their geometric mean (a natural-gradient step of KL delta has
    dL ≈ sqrt(2 delta g'F⁻¹g)). Runs without delta or with dL <= 0 are left out. dL is in
    units of the env's J: give it one env (the CLI makes one panel per env and kind).
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
    _step_axis(ax, df, pts, "delta")
    _log_axis(ax, "y", data=pts["y"])
    ax.set_ylabel(column_label(DL))  # per-run median: the caption says so
    _legend(ax)
    return ax


# --------------------------------------------------------------------------------------------
# 4. trust-region adherence
# --------------------------------------------------------------------------------------------

TRUST_REGION_METRICS: tuple[str, ...] = ("kl/mean", "kl/max", "policy/max_ratio")


def plot_trust_region_metric(
    df: pd.DataFrame, metric: str = "kl/mean", ax: Axes | None = None, *, x: str = "delta"
) -> Axes:
    """Achieved ``metric`` (mean over a run's updates; one point per run) vs the step-size
    parameter ``x`` (target ``delta``, or the penalty ``beta``), with the median across runs per
    value as a line per algorithm. For ``kl/*`` metrics against delta also the line y = delta
    (the constraint of ``kl/mean``); log scales for KL."""
    ax = _axes(ax)
    pts = per_run(df, metric, x=x, agg="mean")
    _param_plot(ax, pts, x, line_stat="median")
    if metric.startswith("kl/") and len(pts):
        ds = np.sort(pts[x].unique())
        if x == "delta":
            ax.plot(ds, ds, ls="--", color="0.3", lw=0.8, label="y = δ")
        if (pts["y"] > 0).all():
            _log_axis(ax, "y", data=np.r_[pts["y"].to_numpy(), ds if x == "delta" else []])
    _step_axis(ax, df, pts, x)
    ax.set_ylabel(column_label(metric))
    return ax


def _metric_rows(
    df: pd.DataFrame,
    metrics: Sequence[str],
    draw: Callable[..., Any],
    axes: Sequence[Axes] | None,
    params: Sequence[str],
    x: str | None,
    panel_size: tuple[float, float],
) -> Figure:
    """Rows of panels: per :func:`step_panels` group (env, kind, parameter) one panel per
    metric, drawn by ``draw(rows, metric, ax=ax, x=x)``; or everything into ``axes``."""
    if axes is not None:
        for ax, metric in zip(axes, metrics, strict=True):
            draw(df, metric, ax=ax, x=x or params[0])
        _legend(axes[0])
        return axes[0].figure
    groups = [
        (title, px, rows)
        for title, px, rows in step_panels(df, params if x is None else (x,), MIN_STEP_VALUES)
        if _finite(rows, [metrics[0]]).shape[0]
    ]
    fig, flat = panel_grid(
        len(groups) * len(metrics), panel_size, ncols=len(metrics), max_cols=len(metrics)
    )
    for i, (title, px, rows) in enumerate(groups):
        for j, metric in enumerate(metrics):
            ax = flat[i * len(metrics) + j]
            draw(rows, metric, ax=ax, x=px)
            ax.set_title(title)
    if groups:
        figure_legend(fig, flat)
    else:
        flat[0].set_visible(False)
    return fig


def plot_trust_region(
    df: pd.DataFrame,
    metrics: Sequence[str] = TRUST_REGION_METRICS,
    axes: Sequence[Axes] | None = None,
    *,
    x: str | None = None,
    panel_size: tuple[float, float] = (2.2, 1.9),
) -> Figure:
    """:func:`plot_trust_region_metric` panels, one per metric side by side. Returns the Figure.

    Without ``axes``: one row of panels per env, estimate kind and step-size parameter
    (:func:`step_panels`: delta, and beta for the KL penalty; only ``x`` if given), titled
    ``"<env>, <kind>"``, one legend below. With ``axes`` (one per metric): all of ``df`` in
    them, against ``x`` (default delta)."""
    return _metric_rows(
        df, metrics, plot_trust_region_metric, axes, tuple(STEP_PARAMS), x, panel_size
    )


# --------------------------------------------------------------------------------------------
# 5. monotonic improvement and the bound
# --------------------------------------------------------------------------------------------


def plot_monotonic(
    df: pd.DataFrame, ax: Axes | None = None, *, x: str = "delta", z: float | None = None
) -> Axes:
    """Fraction of a run's updates that made things worse (dJ < 0) vs ``x`` (delta, or beta
    for the KL penalty), per algorithm.

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
    _step_axis(ax, d, pts, x)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction with dJ < 0")
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
    """On updates of tabular runs (where the bound is computed exactly, whatever estimator
    trained the policy): the TRPO bound's vacuity C·KLmax/dL vs ``x`` (delta, or beta for the
    KL penalty; per-run median as points, median across runs as lines; log y; y = 1 dashed:
    above it the bound is <= 0) and the number of bound violations (dJ < bound/trpo - tol;
    must be 0) as text, in the upper corner with fewer points."""
    ax = _axes(ax)
    d = df[is_tabular(df)]
    d = d[np.isfinite(step_values(d, x).to_numpy(dtype=float))]
    pts = per_run(d, bound_vacuity, x=x, agg="median")
    pts = pts[pts["y"] > 0]
    _param_plot(ax, pts, x, line_stat="median")
    ax.axhline(1.0, ls="--", color="0.3", lw=0.8, label="C·KLmax = dL (bound = 0)")
    violations, checked = bound_violations(d, tol=tol)
    _step_axis(ax, d, pts, x)
    if len(pts):
        _log_axis(ax, "y", data=np.r_[pts["y"].to_numpy(), 1.0])
    ax.set_ylabel("C·KLmax / dL")
    corner_text(
        ax, f"bound violations: {violations} / {checked}", corners=("upper left", "upper right")
    )
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
        cbar_kws={"label": f"final {column_label(value)} (IQM)"},
    )
    ax.set_xlabel(column_label("gae_lambda"))
    ax.set_ylabel(column_label("gamma"))
    return ax


# --------------------------------------------------------------------------------------------
# 7. line search
# --------------------------------------------------------------------------------------------

LINE_SEARCH_METRICS: tuple[str, ...] = ("trpo/backtracks", "trpo/accepted")


def plot_line_search_metric(
    df: pd.DataFrame, metric: str = "trpo/backtracks", ax: Axes | None = None, *, x: str = "delta"
) -> Axes:
    """Mean of a line-search metric per run (points) and across runs (line) vs delta, per
    algorithm (runs that did not log it are left out)."""
    ax = _axes(ax)
    pts = per_run(df, metric, x=x, agg="mean")
    _param_plot(ax, pts, x, line_stat="mean")
    _step_axis(ax, df, pts, x)
    ax.set_ylabel(column_label(metric))
    if metric == "trpo/accepted":
        ax.set_ylim(-0.02, 1.02)
    elif len(pts):  # counts: from 0, and no negative ticks when all are 0
        top = max(1.0, 1.05 * float(pts["y"].max()))
        ax.set_ylim(-0.03 * top, top)
    return ax


def plot_line_search(
    df: pd.DataFrame,
    metrics: Sequence[str] = LINE_SEARCH_METRICS,
    axes: Sequence[Axes] | None = None,
    *,
    panel_size: tuple[float, float] = (2.0, 1.8),
) -> Figure:
    """Mean backtracks and acceptance rate per delta, two panels side by side. Returns the
    Figure. Without ``axes``: one row per env and estimate kind (:func:`step_panels`), titled
    ``"<env>, <kind>"``, one legend below; with ``axes``: all of ``df`` in them."""
    return _metric_rows(df, metrics, plot_line_search_metric, axes, ("delta",), None, panel_size)
