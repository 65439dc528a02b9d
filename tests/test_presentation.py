"""Figures and tables for a paper: human labels from one mapping, the aggregate and n named on
every figure, one column style and n beside every interval in summary.md."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import figures, labels, load, plots, tables  # noqa: E402
from tests.test_analysis import make_cfg, write_sweep  # noqa: E402

RAW_COLUMN = re.compile(r"\b[a-z]+/[a-z_]+\b")  # kl/mean, policy/max_ratio, ...


def sweep(tmp_path: Path) -> pd.DataFrame:
    """trpo over two deltas on a gamma x lambda grid (2 seeds each), npg, kl_penalty and vpg."""
    cfgs = [make_cfg("trpo", seed=s, gamma=g, lam=lam) for g in (0.9, 0.99)
            for lam in (0.9, 0.95) for s in (0, 1)]
    cfgs += [make_cfg("trpo", seed=s, delta=0.04) for s in (0, 1)]
    cfgs += [make_cfg("trpo", line_search=False), make_cfg("kl_penalty", beta="theory")]
    cfgs += [make_cfg("vpg", seed=s, env="cartpole", tabular=False) for s in (0, 1)]
    return load.load_runs(write_sweep(tmp_path / "sweep", cfgs, n=6))


def test_every_figure_names_its_aggregate_and_n_and_no_axis_a_raw_column(tmp_path):
    long = sweep(tmp_path)
    opts = figures.Options(reps=30)
    with plots.paper_style():
        for name, build in figures.FIGURES.items():
            fig = build(long, opts)
            caption = " ".join(fig.get_suptitle().split())  # wrapped to the figure's width
            assert re.search(r"\b(IQM|median|mean|not aggregated)\b", caption), (name, caption)
            assert re.search(r"\bn = \d", caption) or "n = updates" in caption, (name, caption)
            texts = [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel())]
            for text in texts:
                assert not RAW_COLUMN.search(text), (name, text)
            plt.close(fig)


def test_trust_region_axes_read_as_quantities(tmp_path):
    long = sweep(tmp_path)
    fig = figures.fig_trust_region(long, figures.Options(reps=30))
    assert [ax.get_ylabel() for ax in fig.axes[:3]] == [
        "mean KL(old‖new)", "max KL(old‖new)", "max ratio π'/π"]
    assert fig.axes[0].get_xlabel() == "target KL δ"
    assert " ".join(fig.get_suptitle().split()) == (
        "points: runs (mean over its updates); lines: median over runs; n = 1–8 runs per value")
    plt.close(fig)


def test_learning_curve_caption_counts_the_runs_per_curve(tmp_path):
    fig = figures.fig_learning_curves(sweep(tmp_path), figures.Options(reps=30))
    assert " ".join(fig.get_suptitle().split()) == (
        "lines: IQM over runs; bands: 95% stratified-bootstrap CI; n = 1–8 runs per curve")
    plt.close(fig)


def test_labels_are_one_mapping_used_by_plots_and_tables():
    assert labels.label("kl/mean") == "mean KL(old‖new)"
    assert labels.label("policy/max_ratio") == "max ratio π'/π"
    assert labels.label("not/a_column") == "not/a_column"
    assert plots.STEP_PARAMS["delta"] == labels.label("delta") == "target KL δ"
    assert plots.STEP_PARAMS["beta"] == labels.label("beta") == "KL penalty β"


def test_summary_markdown_has_one_header_style_and_n_beside_every_interval(tmp_path):
    long = sweep(tmp_path)
    table = tables.summary_table(long, reps=50)
    md = tables.summary_markdown(table).splitlines()
    header = [h.strip() for h in md[0].strip("|").split("|")]
    assert not [h for h in header if "_" in h or RAW_COLUMN.search(h)]  # no raw names
    assert "final return, IQM [95% CI], n" in header
    col = header.index("final return, IQM [95% CI], n")
    for row in md[2:]:
        cell = [c.strip() for c in row.strip("|").split("|")][col]
        assert re.fullmatch(r"\S+ \[\S+, \S+\], n=\d+", cell), cell
    assert list(table["final_return_n"]) == list(table["n_runs"])  # every run has a final value


def test_one_run_prints_its_estimate_without_a_nan_interval():
    assert tables.with_interval(499.5, float("nan"), float("nan"), ".3g") == \
        "500 (one run: no interval)"
    assert tables.with_interval(0.42, 0.25, 0.55, ".2f") == "0.42 [0.25, 0.55]"
    assert tables.with_interval(float("nan"), 0.1, 0.2, ".2f") == ""
    table = pd.DataFrame({"algo": ["trpo"], "final_return_iqm": [499.5],
                          "final_return_ci_low": [float("nan")],
                          "final_return_ci_high": [float("nan")], "final_return_n": [1]})
    md = tables.summary_markdown(table)
    assert "500 (one run: no interval), n=1" in md and "nan" not in md
    one_run = pd.DataFrame({key: ["x"] for key in tables.SUMMARY_KEYS} | {
        "n_updates": [49], "n_runs": [1], "pearson": [0.95], "pearson_low": [float("nan")],
        "pearson_high": [float("nan")], "spearman": [0.67], "spearman_low": [float("nan")],
        "spearman_high": [float("nan")], "slope": [1.5], "slope_se": [float("nan")],
        "intercept": [-0.159], "intercept_se": [float("nan")], "agreement": [0.71],
        "bound_vacuity_rate": [float("nan")]})
    md = tables.prediction_markdown(one_run)
    assert "0.95 (one run: no interval)" in md and "1.5 (one run: no SE)" in md
    assert "-0.159 (one run: no SE)" in md and "nan" not in md
