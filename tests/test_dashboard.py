"""W&B dashboards from code, run summaries that compare runs, checkpoints as artifacts.

Without a server: the workspace and report are built offline, and every key their panels read
is checked against what a real offline run made here wrote (read back with ``wandb leet
inspect``); the offline command returns at once and writes a specification that rebuilds them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from tests.conftest import clean_env, run_cli
from tests.test_wandb_runs import FAKE_KEY, closed_port, offline_runs, wandb_file_records
from trpo_lab.dashboard import build_report, build_workspace, lab_layout, panel_keys, read_spec
from trpo_lab.logging import IMPROVEMENT_PAIRS_COLUMNS
from trpo_lab.run_summary import COMPARISON_KEYS, comparison_figures, read_metrics

GARNET = ["env=garnet", "policy=tabular", "gamma=0.9", "batch_steps=256", "total_steps=1536",
          "eval.episodes=16", "probe.every=3", "probe.batch_steps=[64,256]", "probe.batches=2",
          "probe.reference_steps=1024", "probe.alphas=[0.0,1.0]", "probe.episodes=8",
          "logger.log_checkpoints=true", "checkpoint.every=2"]


@pytest.fixture(scope="module")
def garnet_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A real offline W&B run of 6 sampled TRPO updates on the garnet, with probes and
    checkpoint artifacts: its run directory and its .wandb records."""
    tmp = tmp_path_factory.mktemp("dashboard")
    run_dir = tmp / "run"
    proc = run_cli([*GARNET, f"hydra.run.dir={run_dir}"], tmp)
    assert proc.returncode == 0, proc.stderr
    (wandb_run,) = offline_runs(run_dir)
    return run_dir, wandb_file_records(wandb_run)


def summary_of(records: list[dict]) -> dict:
    summary: dict = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    return summary


def flat_config(records: list[dict]) -> set[str]:
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    keys: set[str] = set()

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        keys.add(prefix.rstrip("."))

    walk("", run["config"]["update"])
    return keys


# ------------------------------------------------------------------ the comparison figures


def rows_of(**columns) -> list[dict]:
    n = len(next(iter(columns.values())))
    return [{k: float(v[i]) for k, v in columns.items()} for i in range(n)]


def test_comparison_figures_in_closed_form():
    dj = [1.0, 0.0, -2.0, 0.5, 3.0]
    dj_se = [0.1, 0.5, 1.0, 0.5, 0.0]  # resolved: 1 > 0.196 yes; 0 no; 2 > 1.96 yes; no; exact 3
    kl = [0.01, 0.02, 0.005, math.nan, 0.015]
    rows = rows_of(**{"true/improvement": dj, "true/improvement_se": dj_se, "kl/mean": kl})
    out = comparison_figures(rows, delta=0.01, env_steps=1000, wall_s=4.0)
    assert set(out) == set(COMPARISON_KEYS)
    assert out["resolved_fraction"] == pytest.approx(3 / 5)
    assert out["kl_mean"] == pytest.approx(0.0125)  # NaN cells are not updates
    assert out["kl_mean_over_delta"] == pytest.approx(1.25)
    assert out["steps_per_s"] == pytest.approx(250.0)


def test_comparison_figures_are_none_without_data():
    rows = rows_of(**{"kl/mean": [0.01, 0.02], "true/improvement": [math.nan, math.nan]})
    out = comparison_figures(rows, delta=None, env_steps=0, wall_s=0.0)
    assert out["kl_mean"] == pytest.approx(0.015)
    assert {k for k, v in out.items() if v is None} == set(COMPARISON_KEYS) - {"kl_mean"}


def test_run_summary_holds_the_comparison(garnet_run):
    run_dir, records = garnet_run
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics((run_dir / "metrics.csv").read_text())
    expected = comparison_figures(rows, 0.01, summary["env_steps"], summary["wall_s"])
    assert {k: summary[k] for k in COMPARISON_KEYS} == pytest.approx(expected)
    dj = np.array([r["true/improvement"] for r in rows])
    dl = np.array([r["surrogate/improvement_heldout"] for r in rows])
    assert summary["prediction/spearman"] == pytest.approx(sps.spearmanr(dl, dj).statistic)
    assert summary["prediction/updates"] == len(rows)
    assert summary["resolved_fraction"] == 1.0  # the garnet's dJ is exact
    assert summary["prediction/bound_vacuity_rate"] == pytest.approx(
        np.mean([r["bound/trpo"] <= 0 for r in rows]))
    assert summary["kl_mean_over_delta"] == pytest.approx(
        np.mean([r["kl/mean"] for r in rows]) / 0.01)
    wandb_summary = summary_of(records)
    for key in ("final_return_mean", "wall_s", "prediction/spearman", *COMPARISON_KEYS):
        assert wandb_summary[key] == pytest.approx(summary[key]), key


# ------------------------------------------------------------------ workspace and report


def test_every_panel_key_is_in_a_real_run(garnet_run):
    _, records = garnet_run
    layout = lab_layout("trpo-lab", group="g", group_by=["algo.name", "env.name", "algo.delta"])
    keys = panel_keys(layout)
    history = set()
    for record in records:
        if record["type"] == "history":
            history |= set(record["history"]["item"])
    assert keys["history"] <= history, keys["history"] - history
    summary = summary_of(records)
    assert keys["summary"] <= set(summary), keys["summary"] - set(summary)
    assert keys["tables"] <= set(summary), keys["tables"] - set(summary)
    for key in keys["columns"]:
        table, column = key.split(":")
        assert summary[table]["_type"] == "table-file"
        assert column in {"improvement_pairs": IMPROVEMENT_PAIRS_COLUMNS}.get(
            table, column), key
    config = flat_config(records)
    assert (keys["config"] | set(layout.group_by)) <= config


def test_workspace_and_report_build_offline():
    layout = lab_layout("trpo-lab", entity="me", group="sweep-7")
    workspace = build_workspace(layout)
    assert [s.name for s in workspace.sections] == [
        "Learning", "Truth", "Trust region", "Probes", "Calibration"]
    assert [len(s.panels) for s in workspace.sections] == [len(s.panels)
                                                          for s in layout.sections]
    view = json.dumps(workspace._to_model().model_dump(mode="json"))
    assert "sweep-7" in view and "rollout/return_mean" in view and "env_steps" in view
    report = build_report(layout)
    headings = [b.text for b in report.blocks if type(b).__name__ == "H1"]
    assert headings == [s.name for s in layout.sections]
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    assert all(g.runsets[0].groupby == ["algo.name", "env.name"] for g in grids)


def dashboard_cli(args: list[str], cwd: Path, env: dict[str, str]):
    full_env = {k: v for k, v in clean_env(env).items() if k != "WANDB_MODE"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trpo_lab.dashboard", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("key", [False, True])
def test_offline_writes_a_spec_at_once_and_push_refuses_without_a_server(key, tmp_path):
    port = closed_port()
    env = {"WANDB_BASE_URL": f"http://127.0.0.1:{port}", "HOME": str(tmp_path),
           "NETRC": str(tmp_path / "no-netrc"), **({"WANDB_API_KEY": FAKE_KEY} if key else {})}
    out = tmp_path / "views" / "dash.json"
    proc, wall = dashboard_cli(["--project", "trpo-lab", "--group", "sweep-7",
                                "--group-by", "algo.name,algo.delta", "--out", str(out)],
                               tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    reason = f"cannot reach 127.0.0.1:{port}" if key else "no W&B API key"
    assert reason in proc.stdout
    assert f"trpo-lab-dashboard --push {out}" in proc.stdout
    assert wall < 60  # no W&B timeout (60 s for init, more for the API) was waited on
    layout = read_spec(out)
    assert layout == lab_layout("trpo-lab", None, "sweep-7", ["algo.name", "algo.delta"])
    view = json.loads(out.read_text())["workspace_view"]
    assert view["project"] == "trpo-lab" and "sweep-7" in json.dumps(view)
    pushed, _ = dashboard_cli(["--push", str(out)], tmp_path, env)
    assert pushed.returncode == 1
    assert f"cannot save to W&B: {reason}" in pushed.stderr


def test_bad_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc, _ = dashboard_cli(["--push", str(bad)], tmp_path, {})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot read" in proc.stderr


# ------------------------------------------------------------------ checkpoint artifacts


def test_checkpoints_are_artifacts_of_the_offline_run(garnet_run):
    run_dir, records = garnet_run
    artifacts = [r["artifact"] for r in records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    aliases = [sorted(a["aliases"]) for a in artifacts]
    # checkpoint.every=2 over 6 updates: after updates 2 and 4, and the final one (6)
    assert aliases == [["latest", "update-2"], ["latest", "update-4"], ["latest", "update-6"]]
    (entry,) = artifacts[-1]["manifest"]["contents"]
    data = (run_dir / "checkpoint.pt").read_bytes()
    assert entry["path"] == "checkpoint.pt" and int(entry["size"]) == len(data)
    assert base64.b64decode(entry["digest"]) == hashlib.md5(data).digest()
    assert {a["name"] for a in artifacts} == {f"checkpoint-{summary_of(records)['wandb_run_id']}"}
