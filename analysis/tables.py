"""The summary table: one row per (algorithm, env, estimator, setting), as CSV and markdown."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.labels import interval_label, label
from analysis.load import ALGO_ORDER, RUN_COLUMNS
from analysis.stats import final_per_run, iqm, prediction_stats, stratified_bootstrap_ci

#: Columns that define a row of the summary table.
SUMMARY_KEYS: tuple[str, ...] = ("algo", "env", "estimator", "setting", "gamma", "gae_lambda")

#: Columns of :func:`summary_table`, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    *SUMMARY_KEYS,
    "n_runs",
    "n_failed",
    "n_incomplete",
    "n_updates",
    "final_return_iqm",
    "final_return_ci_low",
    "final_return_ci_high",
    "final_return_n",
    "final_J_iqm",
    "kl_mean",
    "dj_dl_median",
    "frac_improving",
)

DJ = "true/improvement"
DL = "surrogate/improvement"


def _ratio_median(rows: pd.DataFrame) -> float:
    dj = rows[DJ].to_numpy(dtype=float)
    dl = rows[DL].to_numpy(dtype=float)
    ok = np.isfinite(dj) & np.isfinite(dl) & (dl != 0)
    return float(np.median(dj[ok] / dl[ok])) if ok.any() else math.nan


def _frac_improving(rows: pd.DataFrame) -> float:
    dj = rows[DJ].to_numpy(dtype=float)
    dj = dj[np.isfinite(dj)]
    return float((dj > 0).mean()) if dj.size else math.nan


def _nanmean(values: pd.Series) -> float:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def summary_table(
    long: pd.DataFrame,
    index: pd.DataFrame | None = None,
    *,
    value: str = "rollout/return_mean",
    frac: float = 0.1,
    reps: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per :data:`SUMMARY_KEYS` (algo, env, estimator, setting, gamma, gae_lambda):
    runs trained with the exact and with the sampled estimator are summarised apart.

    Columns: final-return IQM over runs with its bootstrap CI and the number of runs it is
    computed from (``final_return_n``: runs with a final value), final ``true/J`` IQM (J before
    the last updates: exact on tabular envs, Monte Carlo elsewhere), mean ``kl/mean`` over all
    updates, median per-update dJ/dL (updates with dL != 0), fraction of updates with dJ > 0,
    and counts of runs / failed runs / incomplete-or-interrupted runs / updates.

    ``index`` (from :func:`analysis.load.load_run_index`) lets runs without any update count in
    ``n_runs``; without it the runs are those present in ``long``. Final return of a run: mean of
    ``value`` over its last ``frac`` of updates (:func:`analysis.stats.final_per_run`).
    """
    if index is None:
        index = long.drop_duplicates("run_dir")[[c for c in RUN_COLUMNS if c in long.columns]]
    finals, final_j = (
        (
            final_per_run(long, value=col, frac=frac).set_index("run_dir")["final"]
            if len(long)
            else pd.Series(dtype=float)
        )
        for col in (value, "true/J")
    )
    by_run = dict(tuple(long.groupby("run_dir", sort=False))) if len(long) else {}
    rows: list[dict[str, Any]] = []
    for key, runs in index.groupby(list(SUMMARY_KEYS), dropna=False, sort=False):
        run_dirs = list(runs["run_dir"])
        updates = [by_run[r] for r in run_dirs if r in by_run]
        rows_ = pd.concat(updates, ignore_index=True) if updates else long.iloc[:0]
        final = pd.DataFrame({"final": finals.reindex(run_dirs).to_numpy(dtype=float)})
        ci = stratified_bootstrap_ci(final, "final", reps=reps, level=level, seed=seed)
        status = runs["status"].astype(str)
        rows.append(
            dict(zip(SUMMARY_KEYS, key, strict=True))
            | {
                "n_runs": len(runs),
                "n_failed": int((status == "failed").sum()),
                "n_incomplete": int(status.isin(["incomplete", "interrupted"]).sum()),
                "n_updates": len(rows_),
                "final_return_iqm": ci.estimate,
                "final_return_ci_low": ci.low,
                "final_return_ci_high": ci.high,
                "final_return_n": int(np.isfinite(final["final"].to_numpy()).sum()),
                "final_J_iqm": iqm(final_j.reindex(run_dirs)),
                "kl_mean": _nanmean(rows_["kl/mean"]) if len(rows_) else math.nan,
                "dj_dl_median": _ratio_median(rows_) if len(rows_) else math.nan,
                "frac_improving": _frac_improving(rows_) if len(rows_) else math.nan,
            }
        )
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return _sort(table, index)


#: Columns of :func:`prediction_table` after :data:`SUMMARY_KEYS`.
PREDICTION_COLUMNS: tuple[str, ...] = (
    "prediction", "n_updates", "n_runs", "pearson", "pearson_low", "pearson_high", "spearman",
    "spearman_low", "spearman_high", "slope", "slope_se", "intercept", "intercept_se",
    "agreement", "bound_vacuity_rate",
)


def prediction_table(long: pd.DataFrame, index: pd.DataFrame | None = None, *,
                     prediction: str = "heldout", reps: int = 2000, level: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """One row per :data:`SUMMARY_KEYS` group with updates that have a prediction and a
    truth: :func:`analysis.stats.prediction_stats` of ``true/improvement`` against the dL of
    :func:`analysis.plots.prediction_frame` (held-out by default, with its SE; the exact dL
    on runs that update on the exact batch), bootstrapped and clustered by run (= seed)."""
    from analysis.plots import prediction_frame

    rows = []
    if len(long) and DJ in long.columns:
        framed = prediction_frame(long, prediction)
        for key, group in framed.groupby(list(SUMMARY_KEYS), dropna=False, sort=False):
            group = group[np.isfinite(group["_dl"].to_numpy(dtype=float))
                          & np.isfinite(group[DJ].to_numpy(dtype=float))]
            if len(group) < 3:
                continue
            rows.append(dict(zip(SUMMARY_KEYS, key, strict=True)) | {"prediction": prediction}
                        | prediction_stats(group, "_dl", "_dl_se", reps=reps, level=level,
                                           seed=seed))
    table = pd.DataFrame(rows, columns=[*SUMMARY_KEYS, *PREDICTION_COLUMNS])
    if index is None:
        index = long.drop_duplicates("run_dir")[[c for c in RUN_COLUMNS if c in long.columns]] \
            if len(long) else pd.DataFrame(columns=["setting", "setting_value"])
    return _sort(table, index) if len(table) else table


def with_interval(estimate: float, low: float, high: float, fmt: str) -> str:
    """``estimate [low, high]`` in ``fmt``; "" without an estimate, and the estimate with "(one
    run: no interval)" when a bootstrap over runs has none (a single run)."""
    if math.isnan(estimate):
        return ""
    if math.isnan(low) or math.isnan(high):
        return f"{estimate:{fmt}} (one run: no interval)"
    return f"{estimate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def prediction_markdown(table: pd.DataFrame, level: float = 0.95) -> str:
    """:func:`prediction_table` as markdown: each statistic with its interval or SE."""
    pct = f"{100 * level:g}%"

    def ci(e: float, lo: float, hi: float) -> str:
        return with_interval(e, lo, hi, ".2f")

    def pm(e: float, se: float) -> str:
        if math.isnan(e):
            return ""
        return f"{e:.3g} (one run: no SE)" if math.isnan(se) else f"{e:.3g} ± {se:.2g}"

    shown = table[list(SUMMARY_KEYS)].copy()
    shown["updates (runs)"] = [f"{n} ({r})" for n, r in zip(table["n_updates"], table["n_runs"])]
    shown[f"Pearson [{pct} seed bootstrap]"] = [
        ci(*v) for v in zip(table["pearson"], table["pearson_low"], table["pearson_high"])]
    shown[f"Spearman [{pct} seed bootstrap]"] = [
        ci(*v) for v in zip(table["spearman"], table["spearman_low"], table["spearman_high"])]
    shown["slope ± SE (dJ on dL)"] = [pm(*v) for v in zip(table["slope"], table["slope_se"])]
    shown["intercept ± SE"] = [pm(*v) for v in zip(table["intercept"], table["intercept_se"])]
    shown["within 1.96 combined SE"] = table["agreement"]
    shown["bound vacuous"] = table["bound_vacuity_rate"]
    return to_markdown(shown.rename(columns=label), floatfmt=".2f")


def _sort(table: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    values = index.drop_duplicates("setting").set_index("setting")["setting_value"]
    order = {a: i for i, a in enumerate(ALGO_ORDER)}
    keyed = table.assign(
        _a=table["algo"].map(order).fillna(len(order)),
        _s=table["setting"].map(values).astype(float),
    )
    keyed = keyed.sort_values(
        ["_a", "algo", "env", "estimator", "_s", "setting", "gamma", "gae_lambda"],
        na_position="last",
    )
    return keyed.drop(columns=["_a", "_s"]).reset_index(drop=True)


def _cell(value: Any, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float | np.floating):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-markdown table of ``table`` (no extra dependency). NaN cells are empty."""
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(table: pd.DataFrame, level: float = 0.95) -> str:
    """:func:`summary_table` as markdown with human headers (:mod:`analysis.labels`), each in
    the style ``quantity, aggregate``; the final return as ``IQM [low, high], n=runs``, the
    number of runs beside its interval."""
    shown = table.copy()
    shown.insert(
        shown.columns.get_loc("final_return_iqm"),
        interval_label("final return", "IQM", level),
        [
            "" if math.isnan(e) else f"{with_interval(e, lo, hi, '.3g')}, n={n}"
            for e, lo, hi, n in zip(
                shown["final_return_iqm"],
                shown["final_return_ci_low"],
                shown["final_return_ci_high"],
                shown["final_return_n"],
                strict=True,
            )
        ],
    )
    shown = shown.drop(columns=["final_return_iqm", "final_return_ci_low",
                                "final_return_ci_high", "final_return_n"])
    return to_markdown(shown.rename(columns=label))


def write_summary(
    table: pd.DataFrame, out_dir: str | os.PathLike[str], level: float = 0.95,
    predictions: pd.DataFrame | None = None,
) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``out_dir``; returns the two paths. With
    ``predictions`` (:func:`prediction_table`, rows present) also ``predictions.csv`` and, in
    summary.md, a second table: predicted against true improvement with their uncertainty."""
    out = Path(out_dir)
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    table.to_csv(csv_path, index=False)
    text = summary_markdown(table, level=level)
    if predictions is not None and len(predictions):
        predictions.to_csv(out / "predictions.csv", index=False)
        text += ("\n## Predicted (dL) against true (dJ) improvement\n\n"
                 + prediction_markdown(predictions, level=level))
    md_path.write_text(text, encoding="utf-8")
    return csv_path, md_path
