"""Overflow, a policy that never moves, and input that cannot work: never a silent run.

A user's own environment comes in through gymnasium's ``module:EnvId`` form: a module in
tmp_path registers it, exactly as a user's package would.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import compose_typed, read_metrics, read_summary, run_cli
from tests.test_run_dir import one_line, run_app
from trpo_lab import guards, preflight
from trpo_lab.config import ConfigError
from trpo_lab.train import NumericalFailure, Trainer

ENV_MODULE = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv


    class FiveSteps(gym.Env):
        """Episodes of exactly five steps, reward 1 each: a return of 5."""

        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(2, np.float32), {}

        def step(self, action):
            self.t += 1
            obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
            return obs, 1.0, self.t == 5, False, {}


    class Exploding(CartPoleEnv):
        """CartPole whose simulator returns a reward of 1e30 every step."""

        def step(self, action):
            obs, _, terminated, truncated, info = super().step(action)
            return obs, 1e30, terminated, truncated, info


    if "FiveSteps-v0" not in gym.registry:
        gym.register("FiveSteps-v0", entry_point=FiveSteps)
        gym.register("Exploding-v0", entry_point=Exploding, max_episode_steps=200)
''')


@pytest.fixture
def user_envs(tmp_path, monkeypatch) -> Path:
    module_dir = tmp_path / "user_code"
    module_dir.mkdir()
    (module_dir / "user_envs.py").write_text(ENV_MODULE)
    monkeypatch.syspath_prepend(str(module_dir))
    yield module_dir
    sys.modules.pop("user_envs", None)


# ----------------------------------------------------------------------------- module:EnvId
def test_module_colon_env_id_imports_the_module_then_makes_the_env(user_envs, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["env=custom", "env.id=user_envs:FiveSteps-v0", "total_steps=256",
                      "batch_steps=64", "eval.episodes=2", "critic.epochs=1", "logger=none",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                     env={"PYTHONPATH": os.pathsep.join(
                         [str(user_envs), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dir)
    assert metrics["rollout/length_mean"].tolist() == [5.0] * 4  # the user's env ran
    assert metrics["rollout/return_mean"].tolist() == [5.0] * 4
    assert read_summary(run_dir)["status"] == "completed"


def test_module_colon_env_id_with_a_missing_module_is_refused_naming_the_key(tmp_path, capsys):
    code, err = run_app(["env=custom", "env.id=no_such_module_here:Thing-v0", "logger=none",
                         f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    line = one_line(err)
    assert "env.id" in line and "no_such_module_here" in line


# ----------------------------------------------------------------------------- overflow
@pytest.mark.parametrize("extra", [[], ["algo=ppo", "algo.minibatches=4"],
                                   ["env.normalize_reward=true"]],
                         ids=["trpo", "ppo", "normalised-reward"])
def test_a_reward_of_1e30_fails_the_run_instead_of_completing_it(extra, user_envs, tmp_path):
    cfg = compose_typed("logger=none", "progress=false", "env=custom",
                        "env.id=user_envs:Exploding-v0", "total_steps=2560", "batch_steps=256",
                        "eval.episodes=0", "eval.heldout_episodes=0", "critic.epochs=1",
                        *extra)
    with pytest.raises(NumericalFailure, match="5 consecutive.*overflow.*1e30"):
        Trainer(cfg, tmp_path).run()
    metrics = read_metrics(tmp_path)
    assert metrics["guard/nonfinite"].tolist() == [1.0] * 5
    assert metrics["guard/bad_updates"].tolist() == [1, 2, 3, 4, 5]
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "overflow" in summary["error"]


def test_batch_overflow_flags_what_float32_cannot_standardise():
    import torch

    from trpo_lab.guards import batch_overflow

    finite, huge = torch.ones(256), torch.full((256,), 2e31)
    assert not batch_overflow(finite, finite)
    assert not batch_overflow(finite, None)  # exact batches have no critic targets
    assert not batch_overflow(finite, torch.full((256,), float("nan"))[:0])
    assert batch_overflow(huge, finite) and batch_overflow(finite, huge)
    assert batch_overflow(torch.tensor([1.0, float("nan")]), None)


def test_a_non_finite_critic_loss_counts_as_a_non_finite_update(tmp_path):
    from trpo_lab.guards import critic_nonfinite

    assert critic_nonfinite({"value/loss": math.inf})
    assert critic_nonfinite({"value/loss": math.nan})
    assert not critic_nonfinite({"value/loss": 3.5})
    assert not critic_nonfinite({})  # exact estimators train no critic


# ----------------------------------------------------------------------------- no progress
def test_a_policy_that_never_moves_warns_once_naming_the_cause(tmp_path, capsys):
    cfg = compose_typed("logger=none", "progress=false", "batch_steps=1",
                        "critic.minibatches=1", "total_steps=25", "eval.episodes=0",
                        "eval.heldout_episodes=0")
    summary = Trainer(cfg, tmp_path).run()
    assert summary["status"] == "completed"
    assert len(summary["warnings"]) == 1
    warning = summary["warnings"][0]
    assert "has not changed for 10 updates" in warning and "batch_steps=1" in warning
    err = capsys.readouterr().err
    assert err.count("trpo-lab: warning: the policy has not changed") == 1
    assert read_metrics(tmp_path)["kl/mean"].eq(0).all()


def test_a_moving_policy_gives_no_warning(tmp_path):
    cfg = compose_typed("logger=none", "progress=false", "batch_steps=64", "total_steps=768",
                        "eval.episodes=0", "critic.epochs=1")
    assert Trainer(cfg, tmp_path).run()["warnings"] == []


# ----------------------------------------------------------------------------- bad input
def test_an_unusable_run_dir_is_refused_naming_the_key(capsys):
    code, err = run_app(["logger=none", "hydra.run.dir=/proc/x"], capsys)
    assert code == 2
    line = one_line(err)
    assert "hydra.run.dir='/proc/x'" in line and "/proc" in line


def test_a_tabular_model_too_large_for_memory_is_refused_before_building(tmp_path, capsys):
    code, err = run_app(["env=garnet", "policy=tabular", "env.num_states=100000",
                         "env.num_actions=1000", "logger=none",
                         f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    line = one_line(err)
    assert "env.num_states=100000" in line and "env.num_actions=1000" in line
    assert "TiB" in line


def test_the_tabular_memory_estimate():
    assert preflight.tabular_model_bytes(100_000, 1000) == 8 * (2 * 10**13 + 3 * 10**10)
    cfg = compose_typed("env=garnet", "policy=tabular", "env.num_states=200",
                        "env.num_actions=10")
    preflight.check(cfg, available=10**8)  # 6.5 MB of 100 MB: fine
    with pytest.raises(ConfigError, match="env.num_actions=10"):
        preflight.check(cfg, available=10**6)


def test_an_absurd_evaluation_cost_warns_naming_the_key():
    cfg = compose_typed("eval.episodes=100000", "total_steps=5000", "batch_steps=2048")
    (warning,) = preflight.warnings(cfg)
    assert "eval.episodes=100000" in warning and "batch_steps=2048" in warning
    assert preflight.warnings(compose_typed()) == []  # the default: 4 episodes
    assert preflight.warnings(compose_typed("env=garnet", "eval.episodes=16",
                                            "batch_steps=256")) == []  # the sweeps' garnet


def test_probes_on_long_episodes_warn_naming_the_keys():
    hopper = compose_typed("env=hopper", "probe.every=10", "eval.episodes=0",
                           "eval.heldout_episodes=0")
    (warning,) = preflight.warnings(hopper)
    assert "probe.every=10" in warning and "1344 envs" in warning and "1000 steps" in warning
    assert preflight.warnings(compose_typed("probe.every=10")) == []  # CartPole: 672,000
    assert preflight.warnings(compose_typed("env=garnet", "probe.every=1")) == []  # exact


def test_a_converged_exact_tabular_run_is_told_it_converged_not_to_fix_its_rewards():
    cfg = compose_typed("env=garnet", "policy=tabular", "algo.estimator=exact")
    rows = [{"iteration": k, "trpo/accepted": 0.0, "surrogate/improvement": 0.0,
             "true/J": 7.87496} for k in range(10)]
    cause = guards.stall_cause(cfg, rows)
    assert "converged (true/J = 7.87496" in cause and "rewards" not in cause
    sampled = compose_typed("env=garnet", "policy=tabular")
    assert "check the rewards' scale" in guards.stall_cause(sampled, rows)
