"""``trpo-lab-dashboard``: the lab's W&B workspace and report, built from code.

One declarative layout (:func:`lab_layout`: sections of panels, each naming the W&B keys it
shows) is turned into a ``wandb_workspaces`` :class:`Workspace` and a :class:`Report`. Online
(an API key and a reachable server) both are saved and their URLs printed; otherwise the layout
and the workspace's view model are written to a JSON file, with the command that pushes them
later (``trpo-lab-dashboard --push FILE``). The offline path never touches the network: it
checks for an API key and a TCP connection (1 s) before anything that would wait on W&B.

A panel names its keys with a prefix for where W&B keeps them: none for a history metric
(``kl/mean``), ``summary:`` for a run summary value (``summary:kl_mean_over_delta``),
``config:`` for a config key (``config:algo.delta``), ``TABLE:`` for a column of a summary
table (``improvement_pairs:true_improvement``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trpo_lab.logging import (
    IMPROVEMENT_PAIRS_COLUMNS,
    connection_problem,
    wandb_api_key_configured,
    wandb_server,
)
from trpo_lab.probes import GRADIENT_COLUMNS, LANDSCAPE_COLUMNS
from trpo_lab.run_summary import COMPARISON_KEYS

#: The prediction-against-truth statistics of a run's summary (trpo_lab.intervals) the
#: Calibration section shows.
PREDICTION_KEYS = {
    "prediction/agreement": "fraction of updates with |held-out dL - dJ| <= 1.96 combined SE",
    "prediction/calibration_slope": "slope of dJ on the held-out dL (1 = calibrated)",
    "prediction/spearman": "Spearman of dJ with the held-out dL over updates",
    "prediction/bound_vacuity_rate": "fraction of updates whose TRPO bound is <= 0 (tabular)",
}

#: The x-axis of every line plot: the run's env steps (the metric W&B steps by, logging.py).
X_AXIS = "env_steps"
#: Default grouping options of the runs: the algorithm and the env.
DEFAULT_GROUP_BY = ("algo.name", "env.name")
#: Tables the runs keep in their summary (logging.WandbRun.finish).
TABLE_COLUMNS = {
    "improvement_pairs": IMPROVEMENT_PAIRS_COLUMNS,
    "probes_landscape": LANDSCAPE_COLUMNS,
    "probes_gradient": GRADIENT_COLUMNS,
}


@dataclass(frozen=True)
class Panel:
    """One panel: ``kind`` line (y against env_steps), scatter (x, y), table (a summary
    table), table_scatter (two columns of a summary table), parallel (parallel coordinates of
    ``keys``), bar (summary values of ``keys`` by group), markdown (``text``)."""

    kind: str
    title: str
    keys: tuple[str, ...] = ()
    text: str = ""


@dataclass(frozen=True)
class Section:
    name: str
    about: str
    panels: tuple[Panel, ...]


@dataclass
class Layout:
    project: str
    entity: str | None = None
    group: str | None = None
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    sections: list[Section] = field(default_factory=list)


def lab_layout(project: str, entity: str | None = None, group: str | None = None,
               group_by: Sequence[str] = DEFAULT_GROUP_BY) -> Layout:
    """The lab's sections: learning, the truth, the trust region, probes, calibration."""
    pairs = "improvement_pairs:"
    sections = [
        Section("Learning", "Training return and the true J against env steps, grouped by "
                "the run set's grouping keys (algorithm and env by default).", (
                    Panel("line", "Training return (undiscounted)", ("rollout/return_mean",)),
                    Panel("line", "True J (discounted, before each update)", ("true/J",)),
                    Panel("line", "Episode length", ("rollout/length_mean",)),
                    Panel("line", "Critic explained variance", ("value/explained_variance",)),
                )),
        Section("Truth", "What the surrogate predicted (held-out dL) against what happened "
                "(dJ), each with its standard error, from the improvement_pairs table.", (
                    Panel("table_scatter", "dJ against the held-out dL",
                          (f"{pairs}predicted_improvement_heldout",
                           f"{pairs}true_improvement")),
                    Panel("line", "Held-out dL and dJ over updates",
                          ("surrogate/improvement_heldout", "true/improvement")),
                    Panel("table_scatter", "Surrogate error (held-out dL - dJ) over updates",
                          (f"{pairs}env_steps", f"{pairs}surrogate_error")),
                    Panel("line", "Standard errors", ("surrogate/improvement_heldout_se",
                                                      "true/improvement_se")),
                    Panel("table", "improvement_pairs", ("improvement_pairs",)),
                )),
        Section("Trust region", "Step size against the trust region, and the line search.", (
                    Panel("scatter", "Mean KL of the steps against delta",
                          ("config:algo.delta", "summary:kl_mean")),
                    Panel("line", "KL(pi_old || pi_new): mean and max", ("kl/mean", "kl/max")),
                    Panel("line", "Line-search backtracks", ("trpo/backtracks",)),
                    Panel("line", "Step norm", ("trpo/step_norm",)),
                )),
        Section("Probes", "Landscapes along the step and a random direction, and gradient "
                "quality against batch size (runs with probe.every > 0).", (
                    Panel("table", "probes_landscape", ("probes_landscape",)),
                    Panel("table_scatter", "Gradient cosine with the reference vs batch size",
                          ("probes_gradient:batch_steps", "probes_gradient:cosine_mean")),
                    Panel("table", "probes_gradient", ("probes_gradient",)),
                )),
        Section("Calibration", "Per-run statistics of prediction against truth "
                "(trpo_lab/run_summary.py, trpo_lab/intervals.py): agreement, slope, Spearman, "
                "resolved fraction, "
                "the bound's vacuity rate; and a parallel-coordinates view of the sweep.", (
                    Panel("bar", "Calibration by group",
                          tuple(f"summary:{k}" for k in (
                              "prediction/agreement", "prediction/calibration_slope",
                              "prediction/spearman", "resolved_fraction",
                              "prediction/bound_vacuity_rate"))),
                    Panel("parallel", "Sweep: settings against outcomes",
                          ("config:algo.delta", "config:gamma", "config:gae_lambda",
                           "summary:final_return_mean", "summary:prediction/spearman",
                           "summary:kl_mean_over_delta", "summary:steps_per_s")),
                    Panel("markdown", "What the summary keys mean", text="\n".join(
                        f"- `{k}`: {v}" for k, v in (COMPARISON_KEYS | PREDICTION_KEYS).items())),
                )),
    ]
    return Layout(project, entity, group, tuple(group_by), sections)


def panel_keys(layout: Layout) -> dict[str, set[str]]:
    """The W&B keys the layout's panels read, by where W&B keeps them: ``history``,
    ``summary``, ``config``, ``tables`` (summary tables) and ``columns`` (``TABLE:column``)."""
    keys: dict[str, set[str]] = {k: set() for k in ("history", "summary", "config", "tables",
                                                     "columns")}
    for section in layout.sections:
        for panel in section.panels:
            for key in panel.keys:
                where, _, name = key.rpartition(":")
                if panel.kind == "table":
                    keys["tables"].add(key)
                elif where in ("summary", "config"):
                    keys[where].add(name)
                elif where:
                    keys["tables"].add(where)
                    keys["columns"].add(key)
                else:
                    keys["history"].add(key)
    return keys


def _ref(key: str, wr) -> Any:
    """A panel key as a wandb_workspaces reference (history keys stay strings)."""
    where, _, name = key.rpartition(":")
    return {"summary": wr.SummaryMetric, "config": wr.Config}.get(where, lambda k: k)(name)


def _panel(panel: Panel, wr) -> Any:
    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=X_AXIS, y=list(panel.keys))
    if panel.kind == "scatter":
        x, y = panel.keys
        return wr.ScatterPlot(title=panel.title, x=_ref(x, wr), y=_ref(y, wr))
    if panel.kind == "table":
        return wr.WeavePanelSummaryTable(table_name=panel.keys[0])
    if panel.kind == "table_scatter":
        (table, x), (_, y) = (k.split(":", 1) for k in panel.keys)
        return wr.CustomChart(query={"summaryTable": {"tableKey": table}},
                              chart_name="wandb/scatter/v0",
                              chart_fields={"x": x, "y": y}, chart_strings={"title": panel.title})
    if panel.kind == "bar":
        return wr.BarPlot(title=panel.title, metrics=[_ref(k, wr) for k in panel.keys])
    if panel.kind == "parallel":
        return wr.ParallelCoordinatesPlot(title=panel.title, columns=[
            wr.ParallelCoordinatesPlotColumn(metric=_ref(k, wr)) for k in panel.keys])
    if panel.kind == "markdown":
        return wr.MarkdownPanel(markdown=f"**{panel.title}**\n\n{panel.text}")
    raise ValueError(f"unknown panel kind {panel.kind!r}")


def _group_filter(layout: Layout) -> Any:
    """Only the runs of the layout's W&B group (a sweep), or every run of the project."""
    from wandb_workspaces import expr

    return expr.And(expr.Metric("Group") == layout.group) if layout.group else ""


def build_workspace(layout: Layout):
    """The layout as a ``wandb_workspaces`` Workspace (built offline; ``save()`` needs W&B)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    return ws.Workspace(
        entity=layout.entity or "", project=layout.project,
        name=f"trpo-lab: {layout.group or layout.project}",
        sections=[ws.Section(name=s.name, is_open=True, panels=[_panel(p, wr) for p in s.panels],
                             panel_settings=ws.SectionPanelSettings(x_axis=X_AXIS))
                  for s in layout.sections],
        runset_settings=ws.RunsetSettings(
            filters=_group_filter(layout), groupby=[ws.Config(k) for k in layout.group_by]))


def build_report(layout: Layout):
    """The layout as a ``wandb_workspaces`` Report: per section a heading, a paragraph and a
    panel grid over the project's runs (or the sweep's group), grouped by ``group_by``."""
    import wandb_workspaces.reports.v2 as wr

    blocks: list[Any] = [wr.P("Prediction against truth for trust-region updates: generated "
                              "by trpo-lab-dashboard.")]
    for section in layout.sections:
        runset = wr.Runset(entity=layout.entity or "", project=layout.project,
                           name=layout.group or layout.project, filters=_group_filter(layout),
                           groupby=list(layout.group_by))
        blocks += [wr.H1(section.name), wr.P(section.about),
                   wr.PanelGrid(runsets=[runset], panels=[_panel(p, wr) for p in section.panels])]
    return wr.Report(project=layout.project, entity=layout.entity or "",
                     title=f"trpo-lab: {layout.group or layout.project}",
                     description="Learning, the truth, the trust region, probes, calibration.",
                     blocks=blocks)


def write_spec(layout: Layout, path: Path) -> None:
    """The layout (to rebuild both views) and the workspace's view model, as JSON."""
    spec = {"layout": asdict(layout),
            "workspace_view": build_workspace(layout)._to_model().model_dump(mode="json")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1) + "\n")


def read_spec(path: Path) -> Layout:
    data = json.loads(path.read_text())["layout"]
    sections = [Section(s["name"], s["about"], tuple(Panel(p["kind"], p["title"],
                                                           tuple(p["keys"]), p["text"])
                                                     for p in s["panels"]))
                for s in data["sections"]]
    return Layout(data["project"], data["entity"], data["group"], tuple(data["group_by"]),
                  sections)


def online_problem(timeout: float = 1.0) -> str | None:
    """Why the views cannot be saved now (no API key, no server within ``timeout``), or None."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if not wandb_api_key_configured():
        return "no W&B API key (wandb login, or WANDB_API_KEY)"
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host, port = wandb_server(base_url, os.environ)
    problem = connection_problem(host, port, timeout)
    return None if problem is None else f"cannot reach {host}:{port} ({problem})"


def save_online(layout: Layout) -> tuple[str, str]:
    """Save the workspace and the report to W&B; their URLs."""
    if not layout.entity:
        import wandb

        layout.entity = wandb.Api().default_entity
    workspace = build_workspace(layout).save()
    report = build_report(layout).save()
    return workspace.url, report.url


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trpo-lab-dashboard",
        description="Build the lab's W&B workspace and report for a project or a sweep's group.")
    parser.add_argument("--project", help="W&B project (logger.project of the runs)")
    parser.add_argument("--entity", help="W&B entity (default: your default entity)")
    parser.add_argument("--group", help="only the runs of this W&B group (a sweep's "
                        "logger.group, printed by trpo-lab-sweep)")
    parser.add_argument("--group-by", default=",".join(DEFAULT_GROUP_BY),
                        help="config keys the runs are grouped by, comma-separated "
                        "(default: %(default)s; add a sweep's swept keys, e.g. algo.delta)")
    parser.add_argument("--out", type=Path, default=Path("trpo-lab-dashboard.json"),
                        help="where the specification goes when W&B cannot be reached "
                        "(default: %(default)s)")
    parser.add_argument("--push", type=Path, metavar="FILE",
                        help="save the views of a specification written offline")
    parser.add_argument("--offline", action="store_true",
                        help="write the specification only, even with W&B reachable")
    args = parser.parse_args(argv)
    if args.push is None and not args.project:
        parser.error("--project is required (or --push FILE)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.push is not None:
        try:
            layout = read_spec(args.push)
        except (OSError, ValueError, KeyError) as error:
            print(f"trpo-lab-dashboard: error: cannot read {args.push}: {error}",
                  file=sys.stderr)
            return 2
    else:
        group_by = [k.strip() for k in args.group_by.split(",") if k.strip()]
        layout = lab_layout(args.project, args.entity, args.group, group_by)
    problem = "--offline" if args.offline else online_problem()
    if problem is None:
        workspace_url, report_url = save_online(layout)
        print(f"trpo-lab-dashboard: workspace {workspace_url}")
        print(f"trpo-lab-dashboard: report {report_url}")
        return 0
    if args.push is not None:
        print(f"trpo-lab-dashboard: error: cannot save to W&B: {problem}", file=sys.stderr)
        return 1
    write_spec(layout, args.out)
    print(f"trpo-lab-dashboard: W&B not reachable ({problem}): wrote the workspace and report "
          f"specification ({len(layout.sections)} sections) to {args.out}; save them later "
          f"with: trpo-lab-dashboard --push {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
