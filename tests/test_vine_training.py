"""algo.sampler=vine in training: env steps, the update on the vine batch, exact resume, and
the refusals (exit 2 naming the env)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose_typed, read_metrics, run_cli
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.train import Trainer

CARTPOLE = ["logger=none", "progress=false", "batch_steps=128", "critic.epochs=1",
            "eval.episodes=4", "eval.heldout_episodes=2", "checkpoint.every=1",
            "algo.sampler=vine", "algo.vine.states=12", "algo.vine.horizon=16",
            "algo.vine.proposal=policy", "algo.vine.actions=3", "num_envs=2"]


def train(run_dir, *overrides: str) -> pd.DataFrame:
    run_dir.mkdir(parents=True, exist_ok=True)
    Trainer(compose_typed(*CARTPOLE, *overrides), run_dir).run()
    return read_metrics(run_dir)


def test_vine_trains_counts_branch_steps_and_resumes_exactly(tmp_path):
    reference = train(tmp_path / "reference", "total_steps=512")
    assert len(reference) == 4
    steps = np.diff(np.concatenate([[0], reference["env_steps"].to_numpy()]))
    # each update: the trunk's 128 steps, then 12 states x 3 actions branches of 1..16 steps
    assert ((steps >= 128 + 36) & (steps <= 128 + 36 * 16)).all(), steps
    accepted = reference[reference["trpo/accepted"] == 1]
    assert len(accepted) >= 1
    assert (accepted["kl/mean"] <= 0.01 + 1e-6).all()  # the constraint on the rollout set
    for column in ("surrogate/improvement", "surrogate/improvement_heldout", "true/improvement",
                   "value/loss"):
        assert np.isfinite(reference[column]).all(), column
    # stopped after 2 updates, then resumed to 4: the same rows to the bit
    run_dir = tmp_path / "resumed"
    train(run_dir, "total_steps=256")
    resumed = train(run_dir, "total_steps=512", "resume=true")
    pd.testing.assert_frame_equal(resumed.drop(columns=TIME_COLUMNS),
                                  reference.drop(columns=TIME_COLUMNS))


def test_vine_all_actions_on_a_garnet_trains(tmp_path):
    metrics = train(tmp_path / "garnet", "env=garnet", "policy=tabular", "env.num_states=8",
                    "env.num_actions=3", "gamma=0.8", "num_envs=1", "algo.vine.horizon=0",
                    "algo.vine.proposal=all", "total_steps=256", "batch_steps=64",
                    "eval.episodes=0")
    assert len(metrics) == 4
    # on a tabular env the exact truth sits beside the vine estimate
    assert np.isfinite(metrics["exact/surrogate_improvement"]).all()
    assert metrics["true/J"].iloc[-1] > metrics["true/J"].iloc[0]


@pytest.mark.parametrize("proposal", ["policy", "uniform"])
def test_vine_with_box_actions_trains(proposal, tmp_path):
    """Pendulum: Gaussian actions, branched from the old policy or uniformly in the bounds."""
    metrics = train(tmp_path / proposal, "env=pendulum", f"algo.vine.proposal={proposal}",
                    "total_steps=256")
    assert len(metrics) == 2
    steps = np.diff(np.concatenate([[0], metrics["env_steps"].to_numpy()]))
    assert (steps == 128 + 12 * 3 * 16).all()  # Pendulum never ends before the 16-step cut
    for column in ("kl/mean", "surrogate/improvement", "policy/max_ratio", "value/loss"):
        assert np.isfinite(metrics[column]).all(), column


@pytest.mark.parametrize(("args", "message"), [
    (["env=custom", "env.id=FrozenLake-v1"],
     "invalid value algo.sampler='vine': env FrozenLake-v1 (FrozenLake-v1) has no state "
     "snapshot: FrozenLakeEnv has no snapshot"),
    (["env=pendulum", "algo.vine.proposal=all"], "invalid value algo.vine.proposal='all'"),
    (["algo.vine.proposal=uniform", "algo.vine.actions=1"], "invalid value algo.vine.actions=1"),
])
def test_vine_refusals_exit_2_with_one_line(args, message, tmp_path):
    result = run_cli(["algo.sampler=vine", "logger=none", *args,
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
