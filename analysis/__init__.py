"""Analysis of trpo-lab runs: load run/sweep directories (or W&B) into tidy tables, aggregate
across seeds with robust statistics, draw paper figures, and summarise.

Command line: ``python -m analysis.figures PATH... --out DIR [--wandb]``.
"""

from analysis.load import (
    ALGO_ORDER,
    METRIC_COLUMNS,
    RUN_COLUMNS,
    config_columns,
    find_run_dirs,
    load_all,
    load_run_index,
    load_runs,
    load_wandb,
    parse_metrics_csv,
    wandb_run_to_tables,
)
from analysis.plots import (
    ALGO_COLORS,
    PAPER_RC,
    algo_color,
    paper_style,
    plot_bound_vacuity,
    plot_gae_heatmap,
    plot_improvement_vs_delta,
    plot_learning_curves,
    plot_line_search,
    plot_monotonic,
    plot_predicted_vs_true,
    plot_surrogate_error,
    plot_trust_region,
)
from analysis.stats import (
    Interval,
    ScatterStats,
    bootstrap_groups,
    bound_violations,
    final_per_run,
    iqm,
    scatter_stats,
    stratified_bootstrap_ci,
)
from analysis.tables import summary_markdown, summary_table, to_markdown, write_summary

__all__ = [
    "ALGO_COLORS",
    "ALGO_ORDER",
    "METRIC_COLUMNS",
    "PAPER_RC",
    "RUN_COLUMNS",
    "Interval",
    "ScatterStats",
    "algo_color",
    "bootstrap_groups",
    "bound_violations",
    "config_columns",
    "final_per_run",
    "find_run_dirs",
    "iqm",
    "load_all",
    "load_run_index",
    "load_runs",
    "load_wandb",
    "paper_style",
    "parse_metrics_csv",
    "plot_bound_vacuity",
    "plot_gae_heatmap",
    "plot_improvement_vs_delta",
    "plot_learning_curves",
    "plot_line_search",
    "plot_monotonic",
    "plot_predicted_vs_true",
    "plot_surrogate_error",
    "plot_trust_region",
    "scatter_stats",
    "stratified_bootstrap_ci",
    "summary_markdown",
    "summary_table",
    "to_markdown",
    "wandb_run_to_tables",
    "write_summary",
]
