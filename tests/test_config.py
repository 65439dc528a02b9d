"""Every option of every config group composes and validates; bad values are refused early."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import run_cli
from trpo_lab.app import CONF_DIR
from trpo_lab.config import (
    ConfigError,
    KLPenaltyConfig,
    PPOConfig,
    TRPOConfig,
    VPGConfig,
    register_configs,
    to_typed,
    validate,
)

GROUPS = {
    "algo": ["trpo", "npg", "vpg", "kl_penalty", "ppo"],
    "env": ["cartpole", "pendulum", "hopper", "swimmer", "walker2d", "garnet", "chain",
            "gridworld", "custom", "minatar"],
    "policy": ["mlp", "linear", "tabular", "cnn", "module"],
    "logger": ["wandb", "none"],
}


def typed(*overrides: str):  # composed, not yet validated
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return to_typed(cfg)


def test_conf_groups_on_disk_are_exactly_the_documented_options():
    for group, names in GROUPS.items():
        on_disk = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        assert on_disk == sorted(names), group


@pytest.mark.parametrize("group,name", [(g, n) for g, ns in GROUPS.items() for n in ns])
def test_every_option_composes_and_validates(group, name):
    extra = []
    if group == "policy" and name == "tabular":
        extra = ["env=garnet"]
    if group == "env" and name == "custom":
        extra = ["env.id=Acrobot-v1"]
    if group == "policy" and name == "module":
        extra = ["policy.actor._target_=tests.nets.ResidualNet"]
    cfg = typed(f"{group}={name}", *extra)
    validate(cfg)
    if name == "npg":  # TRPO's schema without the line search
        assert isinstance(cfg.algo, TRPOConfig) and not cfg.algo.line_search
    else:
        assert getattr(cfg, group).name == name


def test_defaults_are_trpo_cartpole_mlp_wandb_with_documented_values():
    cfg = typed()
    assert isinstance(cfg.algo, TRPOConfig)
    assert (cfg.env.id, cfg.policy.name, cfg.logger.name) == ("CartPole-v1", "mlp", "wandb")
    assert (cfg.algo.delta, cfg.gamma, cfg.gae_lambda) == (0.01, 0.99, 0.95)


def test_algo_schemas_are_typed():
    assert isinstance(typed("algo=vpg").algo, VPGConfig)
    assert isinstance(typed("algo=ppo").algo, PPOConfig)
    kl = typed("algo=kl_penalty", "algo.beta=theory").algo
    assert isinstance(kl, KLPenaltyConfig) and kl.beta == "theory"


BAD_VALUES = [
    ("algo.delta=0", "algo.delta"),
    ("algo.delta=-0.1", "algo.delta"),
    ("gamma=1.0", "gamma"),
    ("gamma=-0.5", "gamma"),
    ("gae_lambda=1.5", "gae_lambda"),
    ("gae_lambda=nan", "gae_lambda"),
    ("algo.cg_iters=0", "algo.cg_iters"),
    ("algo.backtrack_coef=1.0", "algo.backtrack_coef"),
    ("batch_steps=0", "batch_steps"),
    ("num_envs=3", "batch_steps"),
    ("total_steps=10", "total_steps"),
    ("eval.episodes=-1", "eval.episodes"),
    ("policy.activation=sigmoid", "policy.activation"),
    ("algo.estimator=magic", "algo.estimator"),
    ("algo.estimator=exact", "algo.estimator"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES)
def test_bad_values_are_refused_with_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        validate(typed(override))
    assert info.value.key == key
    assert key in str(info.value)


def test_bad_beta_and_tabular_policy_on_cartpole_refused():
    with pytest.raises(ConfigError, match="algo.beta"):
        validate(typed("algo=kl_penalty", "algo.beta=-1"))
    with pytest.raises(ConfigError, match="tabular"):
        validate(typed("policy=tabular"))


CLI_REFUSALS = [
    (["algo.delta=-1"], "algo.delta"),
    (["gamma=1.5"], "gamma"),
    (["algo=foo"], "algo"),
    (["gamma=abc"], "gamma"),
    (["env.id=NoSuchEnv-v9"], "env.id"),
    (["policy=tabular"], "tabular"),
    (["algo.estimator=exact"], "algo.estimator"),
    (["env=custom"], "env.id"),
]


@pytest.mark.parametrize("args,key", CLI_REFUSALS)
def test_cli_refuses_bad_input_with_exit_code_2_and_no_traceback(args, key, tmp_path):
    result = run_cli([*args, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_cli_refuses_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # refuses even root, unlike permission bits
    result = run_cli(["logger=none", f"hydra.run.dir={blocker / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(blocker) in result.stderr


def test_missing_mujoco_is_refused_with_the_install_command(monkeypatch):
    import importlib.util

    from trpo_lab.envs import EnvError, env_factory

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mujoco" else real_find_spec(name, *a))
    with pytest.raises(EnvError) as info:
        env_factory(typed("env=hopper").env, 0.99)
    assert info.value.key == "env.id"
    assert 'pip install -e ".[mujoco]"' in str(info.value)


def test_hopper_builds_when_mujoco_is_installed():
    pytest.importorskip("mujoco")
    from trpo_lab.envs import make_vector_env

    envs = make_vector_env(typed("env=hopper").env, 1, 0.99)
    assert envs.single_action_space.shape == (3,)
    envs.close()
