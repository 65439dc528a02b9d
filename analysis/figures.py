"""Command line: turn run / sweep directories into paper figures and a summary table.

    python -m analysis.figures PATH... --out DIR [--wandb] [--reps N] [--dpi N] [--png-width PX]

Draws every figure the data supports into DIR as PDF and PNG, writes ``summary.csv`` and
``summary.md``, and prints one line per figure: ``NAME: made (NAME.pdf, NAME.png)`` or
``NAME: skipped, <reason>``. With ``--wandb`` the figures (``figures/NAME`` as ``wandb.Image``)
and the summary table (``summary_table``, a ``wandb.Table``) are logged to a W&B run of
``job_type="analysis"`` in the sweep's group, its files under DIR. Without a configured API key
W&B runs offline (``WANDB_MODE=offline``), so it never prompts or waits on the network.
"""

from __future__ import annotations

import argparse
import math
import netrc
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import norm as sps_norm

from analysis import plots, probe_plots
from analysis.load import load_all, load_probes
from analysis.stats import prediction_stats
from analysis.tables import prediction_table, summary_table, write_summary

DJ, DL = plots.DJ, plots.DL


class Skipped(Exception):
    """Raised by a figure builder when the data cannot support the figure; str = the reason."""


@dataclass(frozen=True)
class Options:
    """Settings shared by the figure builders."""

    reps: int = 2000
    level: float = 0.95
    seed: int = 0
    frac: float = 0.1
    #: Resolution of the PNG files (None: :data:`analysis.plots.PAPER_RC`'s 300 dpi).
    dpi: float | None = None
    #: Largest PNG width in pixels (the dpi is lowered to fit; None: no limit).
    png_width: int | None = None
    #: The dL estimate of the predicted-vs-true and surrogate-error figures:
    #: "heldout" (episodes never trained on) or "in_sample" (the training batch).
    prediction: str = "heldout"


@dataclass(frozen=True)
class FigureResult:
    """What happened to one figure: ``files`` when made, ``reason`` when skipped."""

    name: str
    made: bool
    reason: str = ""
    files: tuple[Path, ...] = ()


def _count_finite(df: pd.DataFrame, *cols: str) -> int:
    ok = np.ones(len(df), dtype=bool)
    for col in cols:
        ok &= np.isfinite(df[col].to_numpy(dtype=float))
    return int(ok.sum())


def _with_delta(df: pd.DataFrame) -> pd.DataFrame:
    return df[np.isfinite(df["delta"].to_numpy(dtype=float))]


def _label(value: Any) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


# --------------------------------------------------------------------------------------------
# figure builders: (long table, options) -> Figure, or raise Skipped(reason)
# --------------------------------------------------------------------------------------------


def fig_learning_curves(df: pd.DataFrame, opts: Options) -> Figure:
    """Learning curves per algorithm, one panel per env and estimate kind: the exact ``true/J``
    on tabular envs (the objective itself, also for runs trained from samples, and there even
    when no training episode ever ends), else the training return (``true/J`` if no episode
    ended). One legend below the panels."""
    panels = []
    for title, rows in plots.env_panels(df):
        order = ("true/J", "rollout/return_mean")
        if not plots.is_tabular(rows).all():
            order = order[::-1]
        for value in order:
            if _count_finite(rows, value):
                panels.append((title, partial(_curves, rows, value=value, opts=opts)))
                break
    if not panels:
        raise Skipped("needs rollout/return_mean or true/J values")
    fig = plots.facet(panels, panel_size=(2.4, 1.9))
    curve_keys = [k for k in ("env", "algo", "setting") if k in df.columns]
    runs = df.groupby(curve_keys, dropna=False)["run_dir"].nunique() if curve_keys else []
    plots.caption(fig, f"lines: IQM over runs; bands: {100 * opts.level:g}% stratified-"
                       f"bootstrap CI; {plots.count_text(list(runs), 'runs per curve')}")
    return fig


def _curves(rows: pd.DataFrame, ax: Any, *, value: str, opts: Options) -> None:
    plots.plot_learning_curves(
        rows, ax, value=value, reps=opts.reps, level=opts.level, seed=opts.seed
    )


def fig_predicted_vs_true(df: pd.DataFrame, opts: Options) -> Figure:
    """Predicted vs true improvement, one panel per (algo, gamma, kind) with data."""
    if _count_finite(df, DL, DJ) < 3:
        raise Skipped(f"needs >= 3 updates with both {DL} and {DJ}")
    fig = plots.plot_predicted_vs_true(
        df, prediction=opts.prediction, reps=min(opts.reps, 1000), level=opts.level,
        seed=opts.seed
    )
    plots.caption(fig, f"points: updates, not aggregated; ρ (Spearman) and slope (least "
                       f"squares) with {100 * opts.level:g}% bootstrap CI over the panel's "
                       f"n = updates")
    return fig


def fig_surrogate_error(df: pd.DataFrame, opts: Options) -> Figure:
    """|dJ - dL| vs KL max, one panel per env and estimate kind."""
    if plots.surrogate_error_rows(df).empty:
        raise Skipped(f"needs updates with {DJ}, {DL} and kl/max > 0")
    fig = plots.plot_surrogate_error_panels(df, prediction=opts.prediction)
    plots.caption(fig, "points: updates, not aggregated (exact dL where logged); "
                       "n = updates in the panel")
    return fig


def fig_improvement_vs_delta(df: pd.DataFrame, opts: Options) -> Figure:
    """dL vs delta, one panel per env and estimate kind with >= 2 deltas."""
    panels = [
        (title, partial(plots.plot_improvement_vs_delta, rows))
        for title, _, rows in _step_panels(df, "delta")
        if rows.loc[rows[DL].to_numpy(dtype=float) > 0, "delta"].nunique() >= 2
    ]
    if not panels:
        raise Skipped(f"needs >= 2 delta values with positive {DL}")
    return _per_run_caption(plots.facet(panels), "median dL over its updates", "IQM", df)


#: Why a step-size figure has no panel although runs have a delta or beta: one value each.
ONE_VALUE = ("(an algorithm sweep's runs, one value each, compare in learning_curves and "
             "summary.md)")


def _step_panels(df: pd.DataFrame, *params: str) -> list[tuple[str, str, pd.DataFrame]]:
    """The panels of a step-size figure: env, kind and parameter with >= 2 of its values."""
    return plots.step_panels(df, params or tuple(plots.STEP_PARAMS), plots.MIN_STEP_VALUES)


def fig_trust_region(df: pd.DataFrame, opts: Options) -> Figure:
    """Achieved KL and max ratio vs delta (or beta), a row per env and estimate kind with
    >= 2 values of it."""
    if not any(_count_finite(rows, "kl/mean") for _, _, rows in _step_panels(df)):
        raise Skipped(f"needs runs over >= 2 values of delta (trpo/npg) or beta (kl_penalty) "
                      f"in one env that logged kl/mean {ONE_VALUE}")
    return _per_run_caption(plots.plot_trust_region(df), "mean over its updates", "median", df)


def fig_monotonic(df: pd.DataFrame, opts: Options) -> Figure:
    """Fraction of worsening updates vs delta (or beta), one panel per env and estimate kind
    with >= 2 values of it."""
    panels = [
        (title, partial(plots.plot_monotonic, rows, x=x))
        for title, x, rows in _step_panels(df)
        if _count_finite(rows, DJ)
    ]
    if not panels:
        raise Skipped(f"needs runs over >= 2 values of delta (trpo/npg) or beta (kl_penalty) "
                      f"in one env that logged {DJ} {ONE_VALUE}")
    return _per_run_caption(plots.facet(panels), "fraction of its updates", "mean", df)


def fig_bound_vacuity(df: pd.DataFrame, opts: Options) -> Figure:
    """TRPO bound vacuity and violations on tabular runs, per env and estimate kind."""
    tab = df[plots.is_tabular(df)]
    panels = [
        (title, partial(plots.plot_bound_vacuity, rows, x=x))
        for title, x, rows in plots.step_panels(tab)
        if _count_finite(rows, "bound/trpo", DL, DJ)
    ]
    if not panels:
        raise Skipped("needs tabular runs with a delta or beta that logged bound/trpo")
    return _per_run_caption(plots.facet(panels), "median over its updates", "median", tab)


def fig_gae_heatmap(df: pd.DataFrame, opts: Options) -> Figure:
    """Final return per gamma x lambda, one panel per (env, algo) with such a grid."""
    d = df[np.isfinite(df["rollout/return_mean"].to_numpy(dtype=float))]
    panels = [
        (key, g)
        for key, g in d.groupby(["env", "algo"], sort=True, dropna=False)
        if g["gamma"].nunique() >= 2 and g["gae_lambda"].nunique() >= 2
    ]
    if not panels:
        raise Skipped("needs >= 2 gamma and >= 2 gae_lambda values")
    fig, axes = plots.panel_grid(len(panels), (plots.COLUMN_WIDTH, 2.4), max_cols=2)
    for ax, ((env, algo), g) in zip(axes, panels, strict=True):
        plots.plot_gae_heatmap(g, ax, frac=opts.frac)
        ax.set_title(f"{_label(algo)}, {_label(env)}")
    cells = [n for _, g in panels for n in g.groupby(["gamma", "gae_lambda"])["run_dir"].nunique()]
    counted = plots.count_text(cells, "runs per cell")
    plots.caption(fig, f"cells: IQM over runs of the final return (mean of a run's last "
                       f"{100 * opts.frac:g}% of updates); {counted}")
    return fig


def fig_line_search(df: pd.DataFrame, opts: Options) -> Figure:
    """Backtracks and acceptance rate vs delta, a row per env and estimate kind with >= 2
    deltas."""
    if _count_finite(_with_delta(df), "trpo/backtracks") == 0:
        raise Skipped("needs trpo runs with line search that logged trpo/backtracks")
    rows = df[np.isfinite(df["trpo/backtracks"].to_numpy(dtype=float))]
    if not _step_panels(rows, "delta"):
        raise Skipped(f"needs trpo runs with line search over >= 2 delta values in one env "
                      f"{ONE_VALUE}")
    return _per_run_caption(plots.plot_line_search(rows), "mean over its updates", "mean", rows)


def _per_run_caption(fig: Figure, point: str, line: str, df: pd.DataFrame) -> Figure:
    """Caption of the step-size figures: what a point (one run) and a line aggregate, and the
    number of runs a line's value aggregates."""
    keys = [k for k in ("env", "algo", "delta", "beta") if k in df.columns]
    runs = df.groupby(keys, dropna=False)["run_dir"].nunique() if keys else []
    plots.caption(fig, f"points: runs ({point}); lines: {line} over runs; "
                       f"{plots.count_text(list(runs), 'runs per value')}")
    return fig


def fig_calibration(df: pd.DataFrame, opts: Options) -> Figure:
    """Calibration of the prediction: mean dJ in ten quantile bins of the predicted dL (with
    95% normal intervals over the bin's updates), the line y = x, the calibration regression
    dJ = a + b dL, and the statistics of :func:`analysis.stats.prediction_stats` with their
    seed-bootstrap intervals and seed-clustered SEs; one panel per (algorithm, env, kind)."""
    framed = plots.prediction_frame(df, opts.prediction)
    framed = framed[np.isfinite(framed["_dl"].to_numpy(dtype=float))
                    & np.isfinite(framed[DJ].to_numpy(dtype=float))]
    if len(framed) < 10:
        raise Skipped(f"needs >= 10 updates with both a dL estimate and {DJ}")
    panels, runs = [], []
    for title, rows in plots.env_panels(framed):
        for algo in plots.ordered_levels(rows, "algo"):
            sub = rows[rows["algo"] == algo]
            if len(sub) >= 10:
                panels.append((f"{algo}, {title}", partial(_calibration_panel, sub, opts=opts)))
                runs.append(sub["run_dir"].nunique())
    if not panels:
        raise Skipped("needs >= 10 updates of one algorithm and env")
    fig = plots.facet(panels, panel_size=(2.4, 2.1))
    plots.caption(fig, f"points: mean dJ per decile of the {opts.prediction} dL, bars "
                       f"{100 * opts.level:g}% normal interval over the bin's updates; "
                       "solid: least squares over updates; dashed: y = x; text: intervals by "
                       "a bootstrap over runs (seeds), SEs clustered by run; "
                       f"{plots.count_text(runs, 'runs per panel')}")
    return fig


def _calibration_panel(rows: pd.DataFrame, ax: Any, *, opts: Options) -> None:
    x, y = rows["_dl"].to_numpy(dtype=float), rows[DJ].to_numpy(dtype=float)
    edges = np.unique(np.quantile(x, np.linspace(0, 1, 11)))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(len(edges) - 2, 0))
    z = sps_norm.ppf(0.5 + opts.level / 2)
    for b in np.unique(which):
        xb, yb = x[which == b], y[which == b]
        half = z * yb.std(ddof=1) / np.sqrt(yb.size) if yb.size > 1 else 0.0
        ax.errorbar(xb.mean(), yb.mean(), yerr=half, fmt="o", ms=3, color="C0", lw=0.8)
    st = prediction_stats(rows, "_dl", "_dl_se", reps=min(opts.reps, 1000), level=opts.level,
                          seed=opts.seed)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.3", lw=0.8)
    if math.isfinite(st["slope"]):
        grid = np.linspace(float(x.min()), float(x.max()), 2)
        ax.plot(grid, st["intercept"] + st["slope"] * grid, color="C3", lw=1)
    plots.corner_text(
        ax, f"slope {st['slope']:.2f} ± {st['slope_se']:.2f}, intercept "
            f"{st['intercept']:.2g} ± {st['intercept_se']:.1g}\n"
            f"ρ {st['spearman']:.2f} [{st['spearman_low']:.2f}, {st['spearman_high']:.2f}], "
            f"r {st['pearson']:.2f} [{st['pearson_low']:.2f}, {st['pearson_high']:.2f}]\n"
            f"|dL-dJ| ≤ 1.96 SE: {st['agreement']:.0%}; {st['n_updates']} updates, "
            f"{st['n_runs']} runs", corners=("upper left", "lower right"))
    ax.set_xlabel(f"predicted dL ({opts.prediction})")
    ax.set_ylabel("true dJ")


#: Every figure the CLI knows, in order: name -> builder.
FIGURES: Mapping[str, Callable[[pd.DataFrame, Options], Figure]] = {
    "learning_curves": fig_learning_curves,
    "predicted_vs_true": fig_predicted_vs_true,
    "calibration": fig_calibration,
    "surrogate_error": fig_surrogate_error,
    "improvement_vs_delta": fig_improvement_vs_delta,
    "trust_region": fig_trust_region,
    "monotonic_improvement": fig_monotonic,
    "bound_vacuity": fig_bound_vacuity,
    "gae_heatmap": fig_gae_heatmap,
    "line_search": fig_line_search,
}


def fig_probe_landscape(probes: pd.DataFrame, opts: Options) -> Figure:
    """Surrogate and true improvement along the step and random directions, per probed
    update (probes.csv, landscape rows)."""
    land = probes[probes["probe"] == "landscape"] if "probe" in probes else probes.iloc[:0]
    if land.empty:
        raise Skipped("needs probes.csv landscape rows (run with probe.every=K)")
    fig = probe_plots.landscape_figure(land)
    plots.caption(fig, "lines: mean over runs; bands: 95% normal interval over runs (one run: "
                       "±1.96 SE of its paired Monte Carlo dJ and held-out dL); grey: random "
                       "directions of the step's norm")
    return fig


def fig_probe_gradient(probes: pd.DataFrame, opts: Options) -> Figure:
    """Gradient quality against batch size (probes.csv, gradient rows)."""
    grad = probes[probes["probe"] == "gradient"] if "probe" in probes else probes.iloc[:0]
    if grad.empty:
        raise Skipped("needs probes.csv gradient rows (run with probe.every=K)")
    fig = probe_plots.gradient_figure(probes)  # landscape rows say which steps moved
    runs = grad.groupby(["env", "algo"])["run_dir"].nunique()
    plots.caption(fig, f"lines: mean over runs of each probed update's mean over its "
                       f"independent batches; bands: 95% normal interval over runs (one run: "
                       f"±1.96 SE over its batches); "
                       f"{plots.count_text(list(runs), 'runs per line')}")
    return fig


#: Figures of the probes table (:func:`analysis.load.load_probes`).
PROBE_FIGURES: Mapping[str, Callable[[pd.DataFrame, Options], Figure]] = {
    "probe_landscape": fig_probe_landscape,
    "probe_gradient": fig_probe_gradient,
}


def png_dpi(fig: Figure, opts: Options) -> float:
    """The PNG resolution: ``opts.dpi`` (default ``savefig.dpi``), lowered so that the saved
    (tight) image is at most ``opts.png_width`` pixels wide."""
    dpi = float(opts.dpi or plt.rcParams["savefig.dpi"])
    if opts.png_width:
        bbox = fig.get_tightbbox(fig.canvas.get_renderer())
        pad = plt.rcParams["savefig.pad_inches"]
        width_in = bbox.width + 2 * pad
        dpi = min(dpi, 0.99 * opts.png_width / width_in)
    return dpi


def make_figures(
    long: pd.DataFrame, out_dir: str | os.PathLike[str], opts: Options | None = None,
    probes: pd.DataFrame | None = None,
) -> list[FigureResult]:
    """Draw every figure of :data:`FIGURES` that ``long`` supports, and of
    :data:`PROBE_FIGURES` that ``probes`` supports, into ``out_dir`` (``NAME.pdf`` and
    ``NAME.png``); returns one :class:`FigureResult` per figure."""
    opts = opts or Options()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probes = pd.DataFrame() if probes is None else probes
    builders = [(name, build, long, "no updates in any run") for name, build in FIGURES.items()]
    builders += [(name, build, probes, "no probes.csv in any run (run with probe.every=K)")
                 for name, build in PROBE_FIGURES.items()]
    results = []
    with plots.paper_style():
        for name, build, table, empty in builders:
            if table.empty:
                results.append(FigureResult(name, False, empty))
                continue
            try:
                fig = build(table, opts)
            except Skipped as why:
                results.append(FigureResult(name, False, str(why)))
                continue
            files = (out / f"{name}.pdf", out / f"{name}.png")
            try:
                fig.savefig(files[0])
                fig.savefig(files[1], dpi=png_dpi(fig, opts))
            finally:
                plt.close(fig)
            results.append(FigureResult(name, True, files=files))
    return results


# --------------------------------------------------------------------------------------------
# Weights & Biases
# --------------------------------------------------------------------------------------------


def wandb_api_key_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when W&B has an API key: ``WANDB_API_KEY`` or a netrc entry for its host."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = env.get("NETRC") or str(Path.home() / ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host or "api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _unique(index: pd.DataFrame, col: str) -> str | None:
    values = index[col].dropna().unique()
    return str(values[0]) if len(values) == 1 else None


def _table_for_wandb(table: pd.DataFrame) -> pd.DataFrame:
    out = table.astype(object)
    return out.where(pd.notna(table), None)


def log_to_wandb(
    results: Sequence[FigureResult],
    table: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    project: str,
    group: str | None,
    config: Mapping[str, Any] | None = None,
) -> Path | None:
    """Log made figures (PNG, as ``figures/NAME``) and the summary table (``summary_table``)
    to a new W&B run of job type ``analysis``; returns the run's local directory (None when
    W&B is disabled, ``WANDB_MODE=disabled``)."""
    if not wandb_api_key_configured():
        os.environ.setdefault("WANDB_MODE", "offline")
    import wandb  # slow to import: only here, after WANDB_MODE is set

    run = wandb.init(
        project=project,
        group=group,
        job_type="analysis",
        dir=str(out_dir),
        config=dict(config or {}),
        settings=wandb.Settings(console="off", silent=True),
    )
    try:
        payload: dict[str, Any] = {
            f"figures/{r.name}": wandb.Image(str(r.files[1]), caption=r.name)
            for r in results
            if r.made
        }
        payload["summary_table"] = wandb.Table(dataframe=_table_for_wandb(table))
        run.log(payload)
        run_dir = None if getattr(run, "disabled", False) else Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m analysis.figures",
        description="Figures and a summary table from trpo-lab run or sweep directories.",
    )
    p.add_argument("paths", nargs="+", help="run directories or sweep directories (searched)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--wandb", action="store_true", help="also log figures and table to W&B")
    p.add_argument("--project", help="W&B project (default: the runs' logger.project)")
    p.add_argument("--group", help="W&B group (default: the runs' logger.group)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (2000)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (0.95)")
    p.add_argument("--frac", type=float, default=0.1, help="final = last FRAC of updates (0.1)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--prediction", choices=plots.PREDICTIONS, default="heldout",
                   help="dL of the predicted-vs-true and surrogate-error figures: heldout "
                        "(episodes never trained on; default) or in_sample (the training batch)")
    p.add_argument("--dpi", type=float, help="PNG resolution (300)")
    p.add_argument(
        "--png-width", type=int, metavar="PX", help="at most PX pixels wide PNGs (lowers the dpi)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    matplotlib.use("Agg")
    try:
        index, long = load_all(*args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if index.empty:
        print(f"error: no run directories under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    counts = index["status"].value_counts()
    status_text = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"loaded {len(index)} runs ({status_text}), {len(long)} updates")
    opts = Options(
        reps=args.reps,
        level=args.level,
        seed=args.seed,
        frac=args.frac,
        dpi=args.dpi,
        png_width=args.png_width,
        prediction=args.prediction,
    )
    results = make_figures(long, args.out, opts, probes=load_probes(index))
    for r in results:
        if r.made:
            print(f"{r.name}: made ({', '.join(p.name for p in r.files)})")
        else:
            print(f"{r.name}: skipped, {r.reason}")
    table = summary_table(
        long, index, frac=args.frac, reps=args.reps, level=args.level, seed=args.seed
    )
    predictions = prediction_table(long, index, prediction=args.prediction, reps=args.reps,
                                   level=args.level, seed=args.seed)
    csv_path, md_path = write_summary(table, args.out, level=args.level,
                                      predictions=predictions)
    print(f"summary: {csv_path.name}, {md_path.name} ({len(table)} rows)")
    if args.wandb:
        run_dir = log_to_wandb(
            results,
            table,
            args.out,
            project=args.project or _unique(index, "project") or "trpo-lab",
            group=args.group or _unique(index, "group"),
            config={"paths": [str(p) for p in args.paths], "n_runs": len(index)},
        )
        if run_dir is None:
            print("wandb: disabled (WANDB_MODE=disabled), nothing logged")
        else:
            n_made = sum(r.made for r in results)
            print(f"wandb: logged {n_made} figures and summary_table ({run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
