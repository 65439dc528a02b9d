"""The TRPO paper's experiments (sweeps ``paper-locomotion`` and ``paper-games``): its Figure 4
(learning curves per task), its Table 1 (final returns per game and method), the vine against
single path at equal env steps, and per task the predicted-vs-true and trust-region figures.

    python -m analysis.paper SWEEP_DIR... --out DIR [--reps N] [--frac F] [--png-width PX]

Writes into DIR (PDF and PNG for every figure):

* ``paper_curves``: one panel per task (env), the training return against env steps, one curve
  per method: IQM over seeds with a 95% stratified-bootstrap band (:mod:`analysis.plots`);
* ``final_returns.csv`` (long: one row per task and method) and ``final_returns.md`` (one row
  per task, one column per method): the final deterministic evaluation (``final_eval_return``
  of summary.json, eval.final_episodes of the mean action / argmax) and the final training
  return (mean of ``rollout/return_mean`` over a run's last ``--frac`` of updates), each as the
  IQM over runs with its 95% bootstrap interval and the number of runs n;
* ``vine_test.csv`` / ``vine_test.md``: per task, TRPO's vine against its single path at equal
  env steps: every run's training-return curve averaged over the window [(1 - frac) E, E], E the
  largest env step count every run of the two reached, and one-sided Mann-Whitney U tests in
  both directions (exact p-values);
* ``TASK/predicted_vs_true`` and ``TASK/trust_region`` per task (``TASK`` the env label with
  ``/`` as ``_``): :func:`analysis.figures.fig_predicted_vs_true` of the task's runs, and the
  achieved mean KL(old||new) and max ratio against env steps per method, with delta.

Methods: the algorithm label (``trpo``, ``npg``, ``kl_penalty``, ...), with `` vine`` added for
runs with ``algo.sampler=vine``; the figures colour by it (:func:`analysis.plots.algo_color`: TRPO
single path keeps TRPO's colour, the vine gets one of its own, the same in every figure).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats as sps

from analysis import plots
from analysis.figures import FigureResult, Options, Skipped, fig_predicted_vs_true, png_dpi
from analysis.load import algo_label, load_all
from analysis.stats import bootstrap_groups, final_per_run
from analysis.tables import to_markdown

RETURN = "rollout/return_mean"
VINE = "vine"
#: The method label of TRPO with the vine sampler (single path keeps the label ``trpo``).
TRPO_VINE = algo_label("trpo", None, VINE)


def method_label(algo: Any, sampler: Any) -> str | None:
    """``trpo`` / ``npg`` / ``kl_penalty`` ..., with `` vine`` for vine-sampled runs: the
    loader's label (:func:`analysis.load.algo_label`)."""
    if algo is None or (isinstance(algo, float) and math.isnan(algo)):
        return None
    return algo_label(str(algo), None, sampler)


def with_methods(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (run index or long table; its ``algo`` as the loader labels it, vine runs as
    ``trpo vine``, or without the sampler) with the algorithm without its sampler in
    ``algo_name`` and ``method`` (:func:`method_label`) also set as ``algo``: the plots colour
    and split panels by ``algo``, so the vine is told apart from single path everywhere."""
    sampler = df["sampler"] if "sampler" in df.columns else pd.Series(None, index=df.index)
    suffix = " " + VINE
    algo_name = [a[: -len(suffix)] if s == VINE and isinstance(a, str) and a.endswith(suffix)
                 else a for a, s in zip(df["algo"], sampler, strict=True)]
    method = [method_label(a, s) for a, s in zip(algo_name, sampler, strict=True)]
    return df.assign(algo_name=algo_name, method=method, algo=method)


def task_order(df: pd.DataFrame) -> list[str]:
    """The tasks (env labels) present, sorted."""
    return sorted(str(t) for t in df["env"].dropna().unique())


def task_slug(task: str) -> str:
    """A task label as a directory name: ``MinAtar/Breakout-v1`` -> ``MinAtar_Breakout-v1``."""
    return task.replace("/", "_")


def method_order(df: pd.DataFrame) -> list[str]:
    """Methods present, in :func:`analysis.plots.ordered_levels` order of their algorithms,
    single path before vine."""
    algos = plots.ordered_levels(df.assign(algo=df["algo_name"]), "algo")
    present = set(df["method"].dropna())
    return [m for a in algos for m in (str(a), method_label(a, VINE)) if m in present]


# --------------------------------------------------------------------------------------------
# final returns (Table 1)
# --------------------------------------------------------------------------------------------


def final_returns(index: pd.DataFrame, long: pd.DataFrame, frac: float = 0.1) -> pd.DataFrame:
    """One row per run: ``run_dir``, ``env``, ``method``, ``algo_name``, ``seed``, ``status``,
    ``final_env_steps``, ``final_eval`` (summary.json's deterministic ``final_eval_return``, NaN
    when not evaluated) and ``final_train`` (mean training return over the run's last ``frac``
    of updates, :func:`analysis.stats.final_per_run`)."""
    runs = with_methods(index)
    train = (final_per_run(long, value=RETURN, frac=frac).set_index("run_dir")["final"]
             if len(long) else pd.Series(dtype=float))
    out = runs[["run_dir", "env", "method", "algo_name", "seed", "status",
                "final_env_steps"]].copy()
    out["final_eval"] = runs["final_eval_return"].astype(float).to_numpy()
    out["final_train"] = train.reindex(runs["run_dir"]).to_numpy(dtype=float)
    return out.reset_index(drop=True)


#: Columns of :func:`final_table`.
FINAL_COLUMNS: tuple[str, ...] = (
    "env", "method", "n_runs", "env_steps_median",
    "eval_iqm", "eval_ci_low", "eval_ci_high", "eval_median", "eval_n",
    "train_iqm", "train_ci_low", "train_ci_high", "train_median", "train_n",
)


def final_table(per_run: pd.DataFrame, reps: int = 2000, level: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
    """One row per (task, method) of :func:`final_returns`: the IQM over runs of the final
    deterministic evaluation (``eval_*``) and of the final training return (``train_*``), each
    with its percentile-bootstrap interval (:func:`analysis.stats.bootstrap_groups`, runs
    resampled), the median and the number of runs with a value (``*_n``), and the median of
    the runs' final env steps."""
    rows = []
    for task in task_order(per_run):
        in_task = per_run[per_run["env"] == task]
        for method in method_order(in_task):
            runs = in_task[in_task["method"] == method]
            row: dict[str, Any] = {"env": task, "method": method, "n_runs": len(runs),
                                   "env_steps_median": float(np.median(
                                       runs["final_env_steps"].astype(float)))}
            for col, name in (("final_eval", "eval"), ("final_train", "train")):
                values = runs[col].to_numpy(dtype=float)
                ci = bootstrap_groups([values], reps=reps, level=level, seed=seed)
                finite = values[np.isfinite(values)]
                row |= {f"{name}_iqm": ci.estimate, f"{name}_ci_low": ci.low,
                        f"{name}_ci_high": ci.high,
                        f"{name}_median": float(np.median(finite)) if finite.size else math.nan,
                        f"{name}_n": int(finite.size)}
            rows.append(row)
    return pd.DataFrame(rows, columns=list(FINAL_COLUMNS))


def interval_cell(estimate: float, low: float, high: float, n: int) -> str:
    """``"IQM [low, high], n=k"`` (3 significant digits); empty without a value."""
    if not math.isfinite(estimate):
        return ""
    return f"{estimate:.3g} [{low:.3g}, {high:.3g}], n={n}"


def final_markdown(table: pd.DataFrame, which: str = "eval", level: float = 0.95) -> str:
    """:func:`final_table` as Table 1: one row per task, one column per method, cells
    ``IQM [low, high], n=runs`` of the final deterministic evaluation (``which="eval"``) or of
    the final training return (``"train"``)."""
    methods = list(dict.fromkeys(table["method"]))
    cells: dict[str, dict[str, str]] = {}
    for row in table.itertuples(index=False):
        r = row._asdict()
        cells.setdefault(r["env"], {})[r["method"]] = interval_cell(
            r[f"{which}_iqm"], r[f"{which}_ci_low"], r[f"{which}_ci_high"], r[f"{which}_n"])
    shown = pd.DataFrame([{"task": env, **{m: c.get(m, "") for m in methods}}
                          for env, c in cells.items()], columns=["task", *methods])
    return to_markdown(shown)


# --------------------------------------------------------------------------------------------
# vine against single path at equal env steps
# --------------------------------------------------------------------------------------------


def window_mean(x: np.ndarray, y: np.ndarray, lo: float, hi: float, num: int = 21) -> float:
    """The mean over ``num`` evenly spaced points of [lo, hi] of the curve (x, y), linearly
    interpolated between its points (NaN where [lo, hi] leaves the curve's range)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x.size == 0 or lo < x[0] or hi > x[-1]:
        return math.nan
    return float(np.interp(np.linspace(lo, hi, num), x, y).mean())


#: Columns of :func:`vine_test`.
VINE_TEST_COLUMNS: tuple[str, ...] = (
    "env", "env_steps", "window_low", "n_single_path", "n_vine", "single_path_median",
    "vine_median", "u_vine", "p_vine_greater", "p_single_path_greater",
)


def vine_test(long: pd.DataFrame, frac: float = 0.1, value: str = RETURN) -> pd.DataFrame:
    """Per task with TRPO runs of both samplers: every run's ``value`` curve against env steps
    averaged over [(1 - frac) E, E] (:func:`window_mean`), E the smallest of the runs' last
    ``env_steps`` (the largest count all of them reached: equal env steps, branch steps
    included), and the one-sided Mann-Whitney U tests "vine greater" and "single path greater"
    (scipy's exact p-values for small samples; ``u_vine`` the U statistic of the vine)."""
    d = with_methods(long)
    d = d[d["algo_name"] == "trpo"]
    rows = []
    for task in task_order(d):
        t = d[d["env"] == task]
        if set(t["method"]) < {"trpo", TRPO_VINE}:
            continue
        t = t[t["method"].isin(["trpo", TRPO_VINE])]
        runs = {run: g for run, g in t.groupby("run_dir", sort=True)}
        steps = min(float(g["env_steps"].max()) for g in runs.values())
        lo = (1 - frac) * steps
        values = {run: window_mean(g["env_steps"].to_numpy(), g[value].to_numpy(), lo, steps)
                  for run, g in runs.items()}
        by = {m: np.array([v for run, v in values.items()
                           if runs[run]["method"].iloc[0] == m and math.isfinite(v)])
              for m in ("trpo", TRPO_VINE)}
        single, vine = by["trpo"], by[TRPO_VINE]
        if single.size and vine.size:
            greater = sps.mannwhitneyu(vine, single, alternative="greater")
            less = sps.mannwhitneyu(vine, single, alternative="less")
            u, p_vine, p_single = float(greater.statistic), float(greater.pvalue), \
                float(less.pvalue)
        else:
            u = p_vine = p_single = math.nan
        rows.append({"env": task, "env_steps": steps, "window_low": lo,
                     "n_single_path": int(single.size), "n_vine": int(vine.size),
                     "single_path_median": float(np.median(single)) if single.size else math.nan,
                     "vine_median": float(np.median(vine)) if vine.size else math.nan,
                     "u_vine": u, "p_vine_greater": p_vine, "p_single_path_greater": p_single})
    return pd.DataFrame(rows, columns=list(VINE_TEST_COLUMNS))


def vine_markdown(table: pd.DataFrame) -> str:
    """:func:`vine_test` as markdown with readable headers."""
    shown = pd.DataFrame({
        "task": table["env"],
        "at env steps (window)": [f"{lo:,.0f}-{hi:,.0f}" for lo, hi in
                                  zip(table["window_low"], table["env_steps"], strict=True)],
        "single path, median (n)": [f"{m:.3g} ({n})" for m, n in
                                    zip(table["single_path_median"], table["n_single_path"],
                                        strict=True)],
        "vine, median (n)": [f"{m:.3g} ({n})" for m, n in
                             zip(table["vine_median"], table["n_vine"], strict=True)],
        "U (vine)": table["u_vine"],
        "p, vine > single path": table["p_vine_greater"],
        "p, single path > vine": table["p_single_path_greater"],
    })
    return to_markdown(shown, floatfmt=".3g")


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def plot_task_curves(rows: pd.DataFrame, ax: Axes | None = None, *, value: str = RETURN,
                     reps: int = 2000, level: float = 0.95, seed: int = 0) -> Axes:
    """One task's learning curves, one per method (rows from :func:`with_methods`): IQM over
    seeds and its bootstrap band (:func:`analysis.plots.plot_learning_curves`)."""
    return plots.plot_learning_curves(rows, ax, value=value, hue="algo", style=None, reps=reps,
                                      level=level, seed=seed)


def plot_trust_region_curve(rows: pd.DataFrame, ax: Axes | None = None, *,
                            metric: str = "kl/mean", reps: int = 2000, level: float = 0.95,
                            seed: int = 0) -> Axes:
    """``metric`` (``kl/mean``, ``policy/max_ratio``, ...) against env steps per method, IQM
    over seeds with its band; for ``kl/mean`` also the target delta of each TRPO/NPG run (a
    dashed line per distinct value)."""
    ax = plot_task_curves(rows, ax, value=metric, reps=reps, level=level, seed=seed)
    if metric == "kl/mean" and "delta" in rows.columns:
        for delta in np.unique(rows["delta"].to_numpy(dtype=float)[
                np.isfinite(rows["delta"].to_numpy(dtype=float))]):
            ax.axhline(delta, ls="--", color="0.3", lw=0.8, label=f"δ = {delta:g}")
    ax.set_ylabel(f"{plots.column_label(metric)} (IQM)")
    return ax


def _runs_caption(fig: Figure, df: pd.DataFrame, what: str, level: float) -> None:
    runs = df.groupby(["env", "algo"], dropna=False)["run_dir"].nunique()
    plots.caption(fig, f"lines: IQM over runs of {what}; bands: {100 * level:g}% stratified-"
                       f"bootstrap CI; {plots.count_text(list(runs), 'runs per curve')}")


def fig_paper_curves(long: pd.DataFrame, opts: Options) -> Figure:
    """Figure 4: one panel per task, the training return against env steps per method."""
    d = with_methods(long)
    panels = [(task, partial(plot_task_curves, d[d["env"] == task], reps=opts.reps,
                             level=opts.level, seed=opts.seed))
              for task in task_order(d)
              if np.isfinite(d.loc[d["env"] == task, RETURN].to_numpy(dtype=float)).any()]
    if not panels:
        raise Skipped(f"needs {RETURN} values")
    fig = plots.facet(panels, panel_size=(2.4, 1.9))
    _runs_caption(fig, d, "the training return", opts.level)
    return fig


def fig_trust_region_task(rows: pd.DataFrame, opts: Options) -> Figure:
    """One task's trust-region adherence over training: mean KL(old||new) (with delta) and the
    max ratio pi'/pi per update, per method."""
    d = with_methods(rows)
    metrics = [m for m in ("kl/mean", "policy/max_ratio")
               if m in d.columns and np.isfinite(d[m].to_numpy(dtype=float)).any()]
    if not metrics:
        raise Skipped("needs kl/mean or policy/max_ratio values")
    panels = [(plots.column_label(m), partial(plot_trust_region_curve, d, metric=m,
                                              reps=opts.reps, level=opts.level, seed=opts.seed))
              for m in metrics]
    fig = plots.facet(panels, panel_size=(2.4, 1.9))
    _runs_caption(fig, d, "each update's value", opts.level)
    return fig


def _save(fig: Figure, out: Path, name: str, opts: Options) -> FigureResult:
    out.mkdir(parents=True, exist_ok=True)
    leaf = name.rsplit("/", 1)[-1]
    files = (out / f"{leaf}.pdf", out / f"{leaf}.png")
    try:
        fig.savefig(files[0])
        fig.savefig(files[1], dpi=png_dpi(fig, opts))
    finally:
        plt.close(fig)
    return FigureResult(name, True, files=files)


def make_paper_figures(long: pd.DataFrame, out_dir: str | Path,
                       opts: Options | None = None) -> list[FigureResult]:
    """Draw ``paper_curves`` into ``out_dir`` and, per task, ``TASK/predicted_vs_true`` and
    ``TASK/trust_region``; returns one :class:`~analysis.figures.FigureResult` per figure
    (named ``TASK/NAME`` for the per-task ones), skipped ones with their reason."""
    opts = opts or Options()
    out = Path(out_dir)
    builders: list[tuple[str, Path, Any]] = [("paper_curves", out,
                                              partial(fig_paper_curves, long))]
    for task in task_order(long):
        rows = long[long["env"] == task]
        sub = out / task_slug(task)
        builders += [
            (f"{task_slug(task)}/predicted_vs_true", sub,
             partial(fig_predicted_vs_true, with_methods(rows))),
            (f"{task_slug(task)}/trust_region", sub, partial(fig_trust_region_task, rows)),
        ]
    results = []
    with plots.paper_style():
        for name, where, build in builders:
            try:
                fig = build(opts)
            except Skipped as why:
                results.append(FigureResult(name, False, str(why)))
                continue
            results.append(_save(fig, where, name, opts))
    return results


def write_tables(index: pd.DataFrame, long: pd.DataFrame, out_dir: str | Path,
                 opts: Options | None = None) -> dict[str, Path]:
    """Write ``final_returns.csv`` / ``.md`` and ``vine_test.csv`` / ``.md`` into ``out_dir``;
    returns their paths by name."""
    opts = opts or Options()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = final_table(final_returns(index, long, frac=opts.frac), reps=opts.reps,
                        level=opts.level, seed=opts.seed)
    vine = vine_test(long, frac=opts.frac) if len(long) else pd.DataFrame(
        columns=list(VINE_TEST_COLUMNS))
    paths = {name: out / name for name in ("final_returns.csv", "final_returns.md",
                                           "vine_test.csv", "vine_test.md")}
    table.to_csv(paths["final_returns.csv"], index=False)
    pct = f"{100 * opts.level:g}%"
    paths["final_returns.md"].write_text(
        f"## Final deterministic evaluation, IQM [{pct} bootstrap CI], n = runs\n\n"
        + final_markdown(table, "eval")
        + f"\n## Final training return (last {100 * opts.frac:g}% of updates), IQM "
          f"[{pct} bootstrap CI], n = runs\n\n" + final_markdown(table, "train"),
        encoding="utf-8")
    vine.to_csv(paths["vine_test.csv"], index=False)
    paths["vine_test.md"].write_text(vine_markdown(vine), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m analysis.paper",
        description="The TRPO paper's figures and tables from paper-locomotion / paper-games "
                    "sweep directories.")
    p.add_argument("paths", nargs="+", help="run directories or sweep directories (searched)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (2000)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (0.95)")
    p.add_argument("--frac", type=float, default=0.1,
                   help="final = last FRAC of updates; the vine test's window (0.1)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--png-width", type=int, metavar="PX", help="at most PX pixels wide PNGs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if not 0 < args.frac <= 1:
        print(f"error: invalid value --frac={args.frac}: must be in (0, 1]", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    try:
        index, long = load_all(*args.paths)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if index.empty:
        print(f"error: no run directories under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    print(f"loaded {len(index)} runs, {len(long)} updates, tasks: "
          f"{', '.join(task_order(index))}")
    opts = Options(reps=args.reps, level=args.level, seed=args.seed, frac=args.frac,
                   png_width=args.png_width)
    for r in make_paper_figures(long, args.out, opts):
        print(f"{r.name}: made" if r.made else f"{r.name}: skipped, {r.reason}")
    paths = write_tables(index, long, args.out, opts)
    print(f"tables: {', '.join(p.name for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
