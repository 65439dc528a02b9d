"""Runs through the network seam: a custom module (policy=module) with every algorithm, in a
group, with probes and exact resume; a CNN on MinAtar; the refusals of bad combinations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose_typed, read_metrics, read_summary, run_cli, train_in_process
from trpo_lab.group import GroupTrainer
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.train import Trainer

REPO = Path(__file__).resolve().parents[1]
MODULE = ["policy=module", "policy.actor._target_=tests.nets.ResidualNet",
          "policy.critic._target_=tests.nets.ResidualNet"]
SMALL = ["total_steps=512", "batch_steps=256", "num_envs=2", "critic.epochs=2",
         "critic.minibatches=2", "eval.episodes=4", "eval.heldout_episodes=2",
         "checkpoint.every=1"]
ALGOS = {"trpo": [], "npg": ["algo=npg"], "vpg": ["algo=vpg"], "kl_penalty": ["algo=kl_penalty"],
         "kl_theory": ["algo=kl_penalty", "algo.beta=theory", "algo.epochs=3"],
         "ppo": ["algo=ppo", "algo.minibatches=4", "algo.epochs=2"]}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_a_custom_module_trains_with_every_algorithm(algo, tmp_path):
    metrics = train_in_process(tmp_path / "run", *MODULE, *SMALL, *ALGOS[algo])
    assert len(metrics) == 2
    for key in ("kl/mean", "policy/entropy", "surrogate/improvement", "value/loss",
                "true/J", "true/improvement", "surrogate/improvement_heldout",
                "surrogate/linear_heldout"):
        assert np.isfinite(metrics[key]).all(), key
    assert (metrics["guard/nonfinite"] == 0).all()
    if algo in ("trpo", "npg"):
        assert metrics["trpo/accepted"].sum() >= 1
        moved = metrics[metrics["trpo/accepted"] == 1]
        assert (moved["kl/mean"] > 0).all()
        if algo == "trpo":  # the line search holds the constraint
            assert (moved["kl/mean"] <= 0.01 * (1 + 1e-6)).all()
    elif algo == "kl_theory":  # a monotone ascent of dL - C KLmax from the old policy's 0
        objective = metrics["surrogate/improvement"] - metrics["penalty/beta"] * metrics["kl/max"]
        assert (objective >= -1e-7).all() and (metrics["penalty/beta"] > 0).all()
    else:
        assert (metrics["kl/mean"] > 0).all()
    assert read_summary(tmp_path / "run")["status"] == "completed"


def test_a_custom_module_run_resumes_exactly_and_probes(tmp_path):
    probes = ["probe.every=1", "probe.episodes=4", "probe.random_directions=1",
              "probe.batch_steps=[64,128]", "probe.batches=2", "probe.reference_steps=512",
              "probe.alphas=[0.0,0.5,1.0]"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    a = train_in_process(whole, *MODULE, *SMALL, *probes, "total_steps=768")
    train_in_process(part, *MODULE, *SMALL, *probes, "total_steps=512")
    b = train_in_process(part, *MODULE, *SMALL, *probes, "total_steps=768")
    pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS), b.drop(columns=TIME_COLUMNS))
    rows = pd.read_csv(whole / "probes.csv")
    land = rows[rows.probe == "landscape"]
    assert (land[land.alpha == 0][["true", "surrogate"]] == 0).all().all()
    assert np.isfinite(land[land.alpha == 1]["surrogate"]).all()
    grad = rows[rows.probe == "gradient"]
    assert len(grad) == 3 * 2 and grad["cosine_mean"].between(-1, 1).all()


def test_a_group_of_custom_module_runs_equals_the_runs_alone(tmp_path):
    extra = ["logger=none", "progress=false", *MODULE, *SMALL, "total_steps=768"]
    variants = [["seed=0"], ["seed=1", "algo.delta=0.02", "critic.lr=3e-3"]]
    trainers = []
    for i, variant in enumerate(variants):
        (tmp_path / "group" / str(i)).mkdir(parents=True)
        trainers.append(Trainer(compose_typed(*extra, *variant), tmp_path / "group" / str(i),
                                in_group=True))
    results = GroupTrainer(trainers).run()
    assert [error for _, error in results] == [None, None]
    for i, variant in enumerate(variants):
        (tmp_path / f"alone{i}").mkdir()
        Trainer(compose_typed(*extra, *variant), tmp_path / f"alone{i}").run()
        alone, grouped = read_metrics(tmp_path / f"alone{i}"), read_metrics(tmp_path / "group"
                                                                            / str(i))
        assert len(alone) == len(grouped) == 3
        # vmap's stacked products round differently from a lone run's in float32 (1e-7),
        # which conjugate gradient amplifies; the batches themselves are equal
        for key in ("rollout/return_mean", "env_steps", "trpo/accepted"):
            pd.testing.assert_series_equal(grouped[key], alone[key])
        for key in ("kl/mean", "surrogate/improvement", "value/loss"):
            np.testing.assert_allclose(grouped[key], alone[key], rtol=1e-3)


def test_a_cnn_trains_on_minatar_from_the_command_line(tmp_path):
    result = run_cli(["env=minatar", "env.game=space_invaders", "policy=cnn", "logger=none",
                      "total_steps=512", "batch_steps=256", "eval.episodes=2",
                      "eval.heldout_episodes=1", "critic.epochs=1",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 2 and np.isfinite(metrics["kl/mean"]).all()
    assert (metrics["trpo/accepted"] == 1).any()
    summary = read_summary(tmp_path / "run")
    assert summary["env"] == "MinAtar/SpaceInvaders-v1"


@pytest.mark.parametrize("overrides,key", [
    (["env=minatar", "env.game=pong"], "env.game"),
    (["env=minatar", "policy=cnn", "policy.backend=fast"], "policy.backend"),
    (["policy=module"], "policy.actor._target_"),
    (["policy=module", "policy.actor._target_=tests.nets.PlainTanhMLP", "policy.backend=fast"],
     "policy.backend"),
    (["policy=module", "policy.actor._target_=tests.nets.WrongOutput"], "policy.actor._target_"),
    (["policy=cnn"], "policy"),  # CartPole's observations are no image
    (["policy.backend=fast", "+policy.critic._target_=tests.nets.ResidualNet"],
     "policy.backend"),
])
def test_bad_network_combinations_are_refused_naming_the_key(overrides, key, tmp_path):
    result = run_cli([*overrides, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr


def test_the_readmes_custom_module_trains_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    start = readme.index("```python\n# my_nets.py\n") + len("```python\n")
    code = readme[start:readme.index("```", start)]
    assert len([line for line in code.splitlines() if line.strip()]) < 20
    (tmp_path / "my_nets.py").write_text(code)
    (command,) = [line for line in readme.splitlines()
                  if line.startswith("PYTHONPATH=. trpo-lab policy=module")]
    args = command.split()[2:]
    result = run_cli([*args, "logger=none", "total_steps=512", "batch_steps=256",
                      "eval.episodes=4", "eval.heldout_episodes=2", "critic.epochs=1",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                     env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 2 and (metrics["trpo/accepted"] == 1).any()
    assert np.isfinite(metrics["surrogate/improvement_heldout"]).all()
