"""Runs trained in a group (trpo_lab.group, hydra/launcher=batched) are the runs trained alone.

Equivalence: every metric of every update of a run trained in a group equals the same run
trained alone (the issue asks 1e-4 relative on the first update's kl/mean and
surrogate/improvement; the group gives the lone run's numbers to the bit here). Isolation: a
run whose numbers overflow fails alone. Resumption: a run checkpointed in a group resumes
alone, exactly. The launcher: grouping keys, the sweep line, exit code, per-run W&B runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from omegaconf import OmegaConf

from tests.conftest import compose_typed, read_metrics, read_summary, run_cli, wandb_history
from trpo_lab.group import GroupTrainer
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.train import NumericalFailure, StopSignal, Trainer

SMALL = ["logger=none", "progress=false", "total_steps=1024", "batch_steps=256", "num_envs=2",
         "critic.epochs=2", "critic.minibatches=2", "eval.episodes=2",
         "eval.heldout_episodes=2", "checkpoint.every=2"]
VARIANTS = [["seed=0"], ["seed=1", "algo.delta=0.02", "critic.lr=3e-3"],
            ["seed=2", "gamma=0.95", "gae_lambda=0.9"]]
SETTINGS = {
    "cartpole": [],
    "pendulum": ["env=pendulum"],
    "garnet-exact": ["env=garnet", "policy=tabular", "algo.estimator=exact"],
    "npg": ["algo.line_search=false"],
    "vine": ["algo.sampler=vine", "algo.vine.states=16", "algo.vine.horizon=10",
             "algo.vine.proposal=policy", "algo.vine.actions=2"],
}


def train_alone(run_dir: Path, *overrides: str) -> pd.DataFrame:
    run_dir.mkdir(parents=True)
    Trainer(compose_typed(*overrides), run_dir).run()
    return read_metrics(run_dir)


def train_group(root: Path, configs: list[list[str]]) -> list:
    trainers = []
    for i, overrides in enumerate(configs):
        (root / str(i)).mkdir(parents=True)
        trainers.append(Trainer(compose_typed(*overrides), root / str(i), in_group=True))
    return GroupTrainer(trainers).run()


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_a_run_trained_in_a_group_equals_the_run_trained_alone(setting, tmp_path):
    extra = [*SMALL, *SETTINGS[setting]]
    results = train_group(tmp_path / "group", [[*extra, *v] for v in VARIANTS])
    assert [error for _, error in results] == [None] * 3
    for i, variant in enumerate(VARIANTS):
        alone = train_alone(tmp_path / f"alone{i}", *extra, *variant)
        grouped = read_metrics(tmp_path / "group" / str(i))
        assert len(grouped) == len(alone) == 4
        first_alone, first_group = alone.iloc[0], grouped.iloc[0]
        for key in ("kl/mean", "surrogate/improvement"):
            assert abs(first_group[key] - first_alone[key]) <= 1e-4 * abs(first_alone[key])
        pd.testing.assert_frame_equal(grouped.drop(columns=TIME_COLUMNS),
                                      alone.drop(columns=TIME_COLUMNS), rtol=1e-6)
        assert read_summary(tmp_path / "group" / str(i))["status"] == "completed"
    # the runs differ: the group did not train one run three times
    firsts = [read_metrics(tmp_path / "group" / str(i))["kl/mean"].iloc[0] for i in range(3)]
    assert len(set(firsts)) == 3


def test_vpg_trains_in_a_group_as_alone(tmp_path):
    """Algorithms without a batched update step run by run inside the group."""
    extra = [*SMALL, "algo=vpg"]
    variants = [["seed=0"], ["seed=1", "algo.lr=3e-3"]]
    results = train_group(tmp_path / "group", [[*extra, *v] for v in variants])
    assert [error for _, error in results] == [None, None]
    for i, variant in enumerate(variants):
        alone = train_alone(tmp_path / f"alone{i}", *extra, *variant)
        pd.testing.assert_frame_equal(
            read_metrics(tmp_path / "group" / str(i)).drop(columns=TIME_COLUMNS),
            alone.drop(columns=TIME_COLUMNS), rtol=1e-6)


class SeedExploding(CartPoleEnv):
    """CartPole whose reward is 1e30 in the envs that the run with seed ``BAD_SEED`` resets
    (the collector seeds its envs from the run's seed)."""

    bad_reset_seeds: set[int] = set()

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.explode = seed in self.bad_reset_seeds
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, (1e30 if getattr(self, "explode", False) else reward), terminated, \
            truncated, info


if "SeedExploding-v0" not in gym.registry:
    gym.register("SeedExploding-v0", entry_point=SeedExploding, max_episode_steps=500)


def test_a_run_that_overflows_fails_alone_and_the_others_equal_their_lone_runs(tmp_path):
    bad_seed = 7
    SeedExploding.bad_reset_seeds = {
        int(s) for s in np.random.SeedSequence([bad_seed, 0xE7]).generate_state(2)}
    extra = [*SMALL, "env=custom", "env.id=tests.test_group:SeedExploding-v0",
             "total_steps=2048", "eval.heldout_episodes=0", "eval.episodes=0"]
    configs = [[*extra, "seed=0"], [*extra, f"seed={bad_seed}"], [*extra, "seed=1"]]
    results = train_group(tmp_path / "group", configs)
    (summary0, error0), (summary_bad, error_bad), (summary1, error1) = results
    assert error0 is None and error1 is None
    assert isinstance(error_bad, NumericalFailure)
    assert "5 consecutive" in str(error_bad) and "overflow" in str(error_bad)
    failed = read_summary(tmp_path / "group" / "1")
    assert failed["status"] == "failed" and "overflow" in failed["error"]
    assert read_metrics(tmp_path / "group" / "1")["guard/nonfinite"].tolist() == [1.0] * 5
    for index, seed in ((0, 0), (2, 1)):
        assert read_summary(tmp_path / "group" / str(index))["status"] == "completed"
        alone = train_alone(tmp_path / f"alone{seed}", *extra, f"seed={seed}")
        grouped = read_metrics(tmp_path / "group" / str(index))
        assert len(grouped) == 8
        pd.testing.assert_frame_equal(grouped.drop(columns=TIME_COLUMNS),
                                      alone.drop(columns=TIME_COLUMNS), rtol=1e-6)


def test_a_run_checkpointed_in_a_group_resumes_alone_exactly(tmp_path):
    """Two updates in a group (completed, checkpoint), then resume=true alone to four: the
    same rows as four updates alone from the start; and the other way round."""
    half = [o for o in SMALL if not o.startswith("total_steps")] + ["total_steps=512"]
    train_group(tmp_path / "group", [[*half, "seed=0"], [*half, "seed=1"]])
    run_dir = tmp_path / "group" / "0"
    Trainer(compose_typed(*SMALL, "seed=0", "resume=true"), run_dir).run()
    straight = train_alone(tmp_path / "straight", *SMALL, "seed=0")
    resumed = read_metrics(run_dir)
    assert resumed["iteration"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(resumed.drop(columns=TIME_COLUMNS),
                                  straight.drop(columns=TIME_COLUMNS), rtol=1e-6)
    # alone for two updates, then on in a group
    (tmp_path / "lone").mkdir()
    Trainer(compose_typed(*half, "seed=1"), tmp_path / "lone").run()
    regroup = tmp_path / "regroup"
    (regroup / "0").mkdir(parents=True)
    (regroup / "0").rmdir()
    (tmp_path / "lone").rename(regroup / "0")
    (regroup / "1").mkdir()
    trainers = [Trainer(compose_typed(*SMALL, "seed=1", "resume=true"), regroup / "0",
                        in_group=True),
                Trainer(compose_typed(*SMALL, "seed=2"), regroup / "1", in_group=True)]
    assert trainers[0].iteration == 2 and trainers[1].iteration == 0
    GroupTrainer(trainers).run()
    straight1 = train_alone(tmp_path / "straight1", *SMALL, "seed=1")
    pd.testing.assert_frame_equal(read_metrics(regroup / "0").drop(columns=TIME_COLUMNS),
                                  straight1.drop(columns=TIME_COLUMNS), rtol=1e-6)
    assert len(read_metrics(regroup / "1")) == 4


def test_a_stop_interrupts_every_run_after_its_update_and_each_resumes_exactly(tmp_path):
    """SIGTERM or Ctrl-C (a StopSignal) in a group: every run finishes its update, checkpoints
    and is interrupted; each then resumes alone to the lone run's metrics."""
    stop = StopSignal()
    stop.requested = True  # as if a signal came during the first update
    trainers = []
    for seed in (0, 1):
        (tmp_path / "group" / str(seed)).mkdir(parents=True)
        trainers.append(Trainer(compose_typed(*SMALL, f"seed={seed}"),
                                tmp_path / "group" / str(seed), in_group=True))
    results = GroupTrainer(trainers).run(stop)
    assert [summary["status"] for summary, _ in results] == ["interrupted"] * 2
    assert [summary["iterations"] for summary, _ in results] == [1, 1]
    for seed in (0, 1):
        run_dir = tmp_path / "group" / str(seed)
        assert read_summary(run_dir)["status"] == "interrupted"
        Trainer(compose_typed(*SMALL, f"seed={seed}"), run_dir).run()
        straight = train_alone(tmp_path / f"straight{seed}", *SMALL, f"seed={seed}")
        pd.testing.assert_frame_equal(read_metrics(run_dir).drop(columns=TIME_COLUMNS),
                                      straight.drop(columns=TIME_COLUMNS), rtol=1e-6)


# ----------------------------------------------------------------------------- the launcher
def sweep_config(**task):
    return OmegaConf.create({"hydra": {"job": {"num": 0}}, **task})


def test_group_keys_ignore_only_shape_preserving_keys():
    from hydra_plugins.trpo_lab_launchers.batched_launcher import (
        group_key,
        plan_groups,
        spread,
    )

    base = {"seed": 0, "gamma": 0.99, "batch_steps": 2048, "algo": {"name": "trpo",
                                                                    "delta": 0.01}}
    same = [sweep_config(**base),
            sweep_config(**{**base, "seed": 3, "gamma": 0.9,
                            "algo": {"name": "trpo", "delta": 0.1}})]
    other = [sweep_config(**{**base, "batch_steps": 1024}),
             sweep_config(**{**base, "algo": {"name": "vpg", "delta": 0.01}})]
    keys = [group_key(c) for c in same + other]
    assert keys[0] == keys[1] and len(set(keys)) == 3
    numeric = sweep_config(algo={"name": "kl_penalty", "beta": 3.0})
    numeric2 = sweep_config(algo={"name": "kl_penalty", "beta": 1.0})
    theory = sweep_config(algo={"name": "kl_penalty", "beta": "theory"})
    assert group_key(numeric) == group_key(numeric2) != group_key(theory)
    assert group_key(sweep_config(seed="${oc.env:NO_SUCH_VARIABLE_HERE}")) is None
    groups, singles = plan_groups(["a", "b", "a", None, "a", "a", "a"], max_group=2)
    assert groups == [[0, 2], [4, 5]] and singles == [1, 3, 6]
    # one group per worker: 10 seeds on 2 workers are two groups of 5; 3 jobs stay one group
    assert spread([list(range(10))], 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert spread([[0, 1, 2]], 2) == [[0, 1, 2]]
    assert spread([list(range(8)), [8, 9]], 4) == [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9]]


def test_batched_sweep_writes_every_runs_outputs_and_reports_a_failed_job(tmp_path):
    """Four seeds times a good and a refused batch size: per batch size a group of three
    (max_group=3) and one job alone on a worker; the refused jobs fail, in a group and alone;
    every run its own W&B run in the sweep's group."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=batched", "hydra.launcher.max_group=3",
                      "hydra.launcher.n_jobs=1", "seed=0,1,2,3", "batch_steps=256,-5",
                      "total_steps=512", "critic.epochs=1",
                      "eval.episodes=2", "eval.heldout_episodes=2", "logger.mode=offline",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "4 completed, 4 failed" in result.stdout
    assert "8 jobs in 2 groups (3, 3) and 2 alone" in result.stderr
    summaries = {int(p.parent.name): json.loads(p.read_text())
                 for p in sweep_dir.glob("*/summary.json")}
    assert sorted(summaries) == list(range(8))
    good = [n for n, s in summaries.items() if s["status"] == "completed"]
    assert sorted(summaries[n]["seed"] for n in good) == [0, 1, 2, 3]
    for n, s in summaries.items():
        if n not in good:
            assert s["status"] == "failed" and "batch_steps" in s["error"]
    ids = {summaries[n]["wandb_run_id"] for n in good}
    assert len(ids) == 4
    assert len({summaries[n]["group"] for n in good}) == 1
    for n in good:
        run_dir = sweep_dir / str(n)
        assert (run_dir / "checkpoint.pt").exists()
        assert len(read_metrics(run_dir)) == 2
        history = wandb_history(run_dir)
        assert [row["iteration"] for row in history] == [0, 1]
        assert [row["kl/mean"] for row in history] == \
            read_metrics(run_dir)["kl/mean"].tolist()


def test_batched_launcher_runs_a_named_sweep(tmp_path):
    sweep_dir = tmp_path / "delta"
    sweeps = Path(__file__).resolve().parent.parent / "sweeps"
    result = run_cli(["--config-dir", str(sweeps), "--config-name", "delta", "+scale=quick",
                      "hydra/launcher=batched", "logger=none", "eval.heldout_episodes=2",
                      "eval.episodes=2", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "24 completed" in result.stdout
    assert "24 jobs in 2 groups (12, 12) and 0 alone" in result.stderr
    for run_dir in sweep_dir.glob("*/metrics.csv"):
        metrics = pd.read_csv(run_dir)
        assert len(metrics) == 4 and metrics["kl/mean"].notna().all()




@pytest.mark.parametrize("setting", ["cartpole", "garnet-exact"])
def test_probes_of_a_run_trained_in_a_group_are_the_probes_of_the_run_alone(setting, tmp_path):
    extra = [*SMALL, *SETTINGS[setting], "probe.every=2", "probe.episodes=4",
             "probe.batch_steps=[64,256]", "probe.batches=2", "probe.reference_steps=512"]
    variants = VARIANTS[:2]
    results = train_group(tmp_path / "group", [[*extra, *v] for v in variants])
    assert [error for _, error in results] == [None, None]
    for i, variant in enumerate(variants):
        train_alone(tmp_path / f"alone{i}", *extra, *variant)
        grouped = pd.read_csv(tmp_path / "group" / str(i) / "probes.csv")
        alone = pd.read_csv(tmp_path / f"alone{i}" / "probes.csv")
        assert sorted(grouped["iteration"].unique()) == [0, 2]
        pd.testing.assert_frame_equal(grouped, alone, rtol=1e-6)
