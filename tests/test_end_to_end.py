"""The real command, end to end: metrics.csv, summary.json and the offline W&B run agree."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    TINY,
    read_metrics,
    read_summary,
    run_cli,
    wandb_history,
    wandb_summary,
)
from trpo_lab.logging import COLUMNS, TIME_COLUMNS

DESIGN_COLUMNS = COLUMNS[: COLUMNS.index("value/explained_variance") + 1]
GYM_EMPTY = ["bound/trpo", "bound/cpo", "bound/C", "bound/eps", "exact/surrogate_improvement",
             "exact/pdl_residual", "mc/J", "mc/improvement", "mc/improvement_se"]


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_trpo_run_writes_metrics_summary_and_matching_wandb_history(env, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([f"env={env}", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dir)
    assert list(metrics.columns)[: len(DESIGN_COLUMNS)] == DESIGN_COLUMNS
    assert metrics["iteration"].tolist() == [0, 1]
    assert metrics["env_steps"].tolist() == [128, 256]
    for column in GYM_EMPTY:  # do not apply on gymnasium envs: empty, never zero
        assert metrics[column].isna().all(), column
    applies = ["kl/mean", "kl/max", "policy/max_ratio", "surrogate/linear",
               "surrogate/improvement", "true/J", "true/J_se", "true/improvement",
               "trpo/accepted", "value/loss"]
    assert metrics[applies].notna().all().all()
    accepted = metrics[metrics["trpo/accepted"] == 1]
    assert (accepted["kl/mean"] <= 0.01 + 1e-7).all()
    assert (metrics["kl/max"] >= metrics["kl/mean"]).all()

    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["iterations"] == 2
    assert summary["env_steps"] == 256
    assert (run_dir / "checkpoint.pt").exists()

    history = wandb_history(run_dir)
    assert len(history) == len(metrics)
    for row, (_, expected) in zip(history, metrics.iterrows()):
        for key in DESIGN_COLUMNS:
            if pd.isna(expected[key]):
                assert key not in row, key
            elif not key.startswith("time/"):
                assert math.isclose(row[key], expected[key], rel_tol=1e-9), key


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_dir = tmp_path / name
        result = run_cli([*TINY, "logger=none", f"seed={seed}", f"hydra.run.dir={run_dir}"],
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs[name] = read_metrics(run_dir).drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(runs["a"], runs["b"])
    assert not np.allclose(runs["a"]["kl/mean"], runs["c"]["kl/mean"])


def test_final_deterministic_evaluation_reaches_summary_and_wandb(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, "eval.final_episodes=3", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    returns = summary["final_eval_returns"]
    assert len(returns) == 3
    # CartPole pays 1 per step: whole episode lengths between the shortest fall and the limit
    assert all(r == int(r) and 8 <= r <= 500 for r in returns)
    assert summary["final_eval_return"] == pytest.approx(np.mean(returns))
    assert summary["final_eval_s"] > 0  # timed apart from wall_s, the training time
    assert wandb_summary(run_dir)["final_eval_return"] == pytest.approx(np.mean(returns))
