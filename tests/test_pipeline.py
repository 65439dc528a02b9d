"""One update pipeline for one run or many (trpo_lab.pipeline), the run state (runstate), the
recorder (recorder) and the grouping key (grouping).

A lone run is a group of one: Trainer.run and a GroupTrainer of that one run write the same
files to the bit (time columns aside). A group gets each run's progress bar and row hook. Runs
that differ in a key the batched numerics take from the first run are refused, naming the key,
by the pipeline and by the numerics themselves. The checkpoint keeps its keys.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import compose_typed, read_metrics, read_summary
from trpo_lab import recorder
from trpo_lab.algos.trpo import trpo_update_runs
from trpo_lab.critic import CriticTrainer, critic_update_runs
from trpo_lab.envs import make_vector_env
from trpo_lab.group import GroupTrainer
from trpo_lab.grouping import GroupMismatch, check_group, first_difference
from trpo_lab.logging import TIME_COLUMNS, MetricsPosition
from trpo_lab.policies import Policy
from trpo_lab.rollout import Collector, build_batch
from trpo_lab.runstate import Counters, RunState
from trpo_lab.train import CHECKPOINT, Trainer

SMALL = ["logger=none", "progress=false", "total_steps=768", "batch_steps=256", "num_envs=2",
         "critic.epochs=2", "critic.minibatches=2", "eval.episodes=2",
         "eval.heldout_episodes=2", "checkpoint.every=2"]
PROBES = ["probe.every=2", "probe.episodes=2", "probe.random_directions=1",
          "probe.batch_steps=[64]", "probe.batches=2", "probe.reference_steps=256",
          "probe.alphas=[0.0,1.0]"]
#: The checkpoint's keys, as written before the run state and the recorder were separated.
CHECKPOINT_KEYS = {
    "iteration", "env_steps", "bad_updates", "wall_s", "run_id", "last_returns", "last_true_J",
    "last_true_J_se", "heldout_env_steps", "eval_env_steps", "policy", "algo", "critic",
    "collector", "generator", "torch_rng", "numpy_rng", "python_rng", "config", "metrics",
    "progress_watch", "probe_env_steps", "probes"}
#: summary.json's keys that differ between any two runs: its times and its fresh W&B id.
TIMED = {"wall_s", "startup", "final_eval_s", "steps_per_s", "wandb_run_id"}


def assert_same_state(a, b, where: str) -> None:
    """Two saved states (nested dicts/lists of tensors and plain values) are identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def new_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_a_lone_run_and_a_group_of_one_write_the_same_files(tmp_path):
    overrides = [*SMALL, *PROBES, "seed=3"]
    lone, grouped = new_dir(tmp_path / "lone"), new_dir(tmp_path / "group")
    summary = Trainer(compose_typed(*overrides), lone).run()
    results = GroupTrainer([Trainer(compose_typed(*overrides), grouped)]).run()
    assert [error for _, error in results] == [None]
    assert summary["status"] == results[0][0]["status"] == "completed"
    assert summary["iterations"] == 3 and summary["env_steps"] == 768
    pd.testing.assert_frame_equal(read_metrics(lone).drop(columns=TIME_COLUMNS),
                                  read_metrics(grouped).drop(columns=TIME_COLUMNS))
    assert read_metrics(lone)["iteration"].tolist() == [0, 1, 2]
    a, b = pd.read_csv(lone / "probes.csv"), pd.read_csv(grouped / "probes.csv")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)
    untimed = [{k: v for k, v in read_summary(d).items() if k not in TIMED}
               for d in (lone, grouped)]
    assert untimed[0] == untimed[1] and untimed[0]["final_return_mean"] is not None
    ca, cb = (torch.load(d / CHECKPOINT, weights_only=False) for d in (lone, grouped))
    assert set(ca) == set(cb) == CHECKPOINT_KEYS
    for part in ("policy", "critic"):
        assert_same_state(ca[part], cb[part], part)
    for key in ("iteration", "env_steps", "heldout_env_steps", "eval_env_steps",
                "probe_env_steps", "last_returns", "probes"):
        assert ca[key] == cb[key], key
    # metrics.csv's fingerprint covers its time columns, so only its row count can agree.
    assert ca["metrics"]["rows"] == cb["metrics"]["rows"] == 3
    assert torch.equal(ca["generator"], cb["generator"])
    assert torch.equal(ca["torch_rng"], cb["torch_rng"])


def test_a_group_draws_each_runs_progress_bar_and_calls_the_row_hook_per_run(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recorder, "on_terminal", lambda: True)
    trainers = [Trainer(compose_typed(*SMALL, "progress=true", f"seed={seed}"),
                        new_dir(tmp_path / str(seed)), in_group=True) for seed in (0, 1)]
    calls: list[tuple[int, int, int]] = []
    results = GroupTrainer(trainers).run(
        on_row=lambda r, row: calls.append((r, row["iteration"], row["env_steps"])))
    assert [error for _, error in results] == [None, None]
    # each run's row after it is written, run by run within each update
    assert calls == [(r, k, 256 * (k + 1)) for k in range(3) for r in (0, 1)]
    for seed, trainer in enumerate(trainers):
        bar = trainer.recorder.progress
        assert bar is not None and bar.total == 768 and bar.n == 768
        assert bar.desc == f"trpo {seed}"
        assert len(read_metrics(tmp_path / str(seed))) == 3
    err = capsys.readouterr().err
    assert "trpo 0" in err and "trpo 1" in err and "768/768" in err


def test_a_lone_run_draws_its_bar_only_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "on_terminal", lambda: False)
    trainer = Trainer(compose_typed(*SMALL, "progress=true", "total_steps=256"),
                      new_dir(tmp_path / "off"))
    assert trainer.run()["status"] == "completed" and trainer.recorder.progress is None
    monkeypatch.setattr(recorder, "on_terminal", lambda: True)
    rows = []
    trainer = Trainer(compose_typed(*SMALL, "progress=true", "total_steps=512"),
                      new_dir(tmp_path / "on"))
    trainer.run(on_row=rows.append)
    assert trainer.recorder.progress.n == 512 and trainer.recorder.progress.desc == "trpo"
    assert [row["iteration"] for row in rows] == [0, 1]


@pytest.mark.parametrize(("override", "key"), [
    ("algo.cg_iters=5", "algo.cg_iters"),
    ("algo.backtrack_iters=3", "algo.backtrack_iters"),
    ("algo.fvp_subsample=0.5", "algo.fvp_subsample"),
    ("normalize_advantages=false", "normalize_advantages"),
    ("critic.epochs=3", "critic.epochs"),
    ("critic.minibatches=4", "critic.minibatches"),
    ("eval.episodes=4", "eval.episodes"),
    ("policy.hidden_sizes=[32]", "policy.hidden_sizes"),
    ("algo=vpg", "algo.name"),
])
def test_a_group_of_runs_differing_in_a_key_the_numerics_share_is_refused(tmp_path, override,
                                                                           key):
    cfgs = [compose_typed(*SMALL, "seed=0"), compose_typed(*SMALL, "seed=1", override)]
    with pytest.raises(GroupMismatch) as refused:
        check_group(cfgs)
    message = str(refused.value)
    assert message.startswith(f"the runs of a group must agree in {key} (")
    assert "run 0 has" in message and "run 1 has" in message
    # GroupTrainer refuses before any run trains
    trainers = [Trainer(cfg, new_dir(tmp_path / str(i)), in_group=True)
                for i, cfg in enumerate(cfgs)]
    with pytest.raises(GroupMismatch, match=key.replace(".", r"\.")):
        GroupTrainer(trainers)
    assert not any((tmp_path / str(i) / CHECKPOINT).exists() for i in range(2))
    assert all(read_metrics(tmp_path / str(i)).empty for i in range(2))


def test_groupable_keys_may_differ():
    check_group([compose_typed(*SMALL, "seed=0"),
                 compose_typed(*SMALL, "seed=1", "algo.delta=0.02", "gamma=0.95",
                               "gae_lambda=0.9", "critic.lr=3e-3", "algo.cg_damping=0.05",
                               "algo.backtrack_coef=0.5", "total_steps=1024",
                               "checkpoint.every=1", "eval.every=2", "probe.every=1")])


def test_first_difference_reads_keys_in_order_and_as_prefixes():
    flats = [{"a": 1, "env.id": "x", "env.kwargs": {}}, {"a": 2, "env.id": "y"},
             {"a": 1, "env.id": "x"}]
    assert first_difference(flats, ["env", "a"]) == ("env.id", 1)
    assert first_difference(flats, ["a"]) == ("a", 1)
    assert first_difference([flats[0], flats[2]], ["env"]) == ("env.kwargs", 1)  # missing
    assert first_difference([flats[0], flats[2]], ["a", "b", "environment"]) is None


def _batches(cfgs):
    policies, batches = [], []
    for r, cfg in enumerate(cfgs):
        torch.manual_seed(r)
        envs = make_vector_env(cfg.env, cfg.num_envs, cfg.gamma)
        policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy,
                        list(cfg.critic.hidden_sizes))
        data = Collector(envs, cfg.batch_steps // cfg.num_envs, cfg.seed, False, False,
                         cfg.gamma).collect(policy.numpy_actor())
        policies.append(policy)
        batches.append(build_batch(policy, data, cfg.gamma, cfg.gae_lambda, True))
        envs.close()
    return policies, batches


def test_the_batched_numerics_refuse_runs_that_differ_in_what_they_share():
    cfgs = [compose_typed(*SMALL, "seed=0"), compose_typed(*SMALL, "seed=1",
                                                           "algo.backtrack_iters=2")]
    policies, batches = _batches(cfgs)
    thetas = [torch.cat([p.detach().reshape(-1) for p in pol.actor_parameters()])
              for pol in policies]
    with pytest.raises(GroupMismatch, match=r"algo\.backtrack_iters .*run 0 has 10, run 1 "
                                            r"has 2"):
        trpo_update_runs(policies, batches, [c.algo for c in cfgs])
    for pol, theta in zip(policies, thetas):  # refused before any actor moved
        assert torch.equal(torch.cat([p.detach().reshape(-1) for p in pol.actor_parameters()]),
                           theta)
    critic_cfgs = [compose_typed(*SMALL).critic, compose_typed(*SMALL, "critic.epochs=1").critic]
    critics = [CriticTrainer(p, c, torch.Generator().manual_seed(0))
               for p, c in zip(policies, critic_cfgs)]
    with pytest.raises(GroupMismatch, match=r"critic\.epochs .*run 0 has 2, run 1 has 1"):
        critic_update_runs(critics, batches)
    # agreeing runs go through, each its own numbers (a one-run call is the lone update)
    infos = trpo_update_runs(policies, batches, [cfgs[0].algo, cfgs[0].algo])
    assert [info["trpo/accepted"] for info in infos] == [1.0, 1.0]


def test_counters_read_older_checkpoints_and_add_the_sessions_seconds():
    old = {"iteration": 4, "env_steps": 1024, "bad_updates": 1, "wall_s": 2.5, "run_id": "ab12",
           "last_returns": [3.0], "last_true_J": 7.0}
    counters = Counters.from_state(old)
    assert (counters.heldout_env_steps, counters.eval_env_steps, counters.probe_env_steps) \
        == (0, 0, 0)
    assert math.isnan(counters.last_true_J_se) and counters.iteration == 4
    state = counters.to_state(1.25)
    assert state["wall_s"] == 3.75 and counters.wall_s == 2.5
    assert Counters.from_state(state).iteration == 4
    position = MetricsPosition(rows=4, size=100, sha256="0" * 64)
    run_state = RunState(counters, None, position, None)
    written = run_state.to_state(0.0)
    assert written["metrics"] == {"rows": 4, "size": 100, "sha256": "0" * 64}
    assert "probes" not in written and "torch_rng" not in written
    back = RunState.from_state(written)
    assert back.metrics == position and back.probes is None and back.counters == counters
    copy = back.copy()
    copy.counters.last_returns.append(1.0)
    assert back.counters.last_returns == [3.0]


def test_a_resumed_run_continues_the_same_record(tmp_path):
    """A checkpoint written through the run state resumes to the uninterrupted run's rows."""
    straight, part = new_dir(tmp_path / "straight"), new_dir(tmp_path / "part")
    Trainer(compose_typed(*SMALL), straight).run()
    Trainer(compose_typed(*SMALL, "total_steps=512"), part).run()
    resumed = Trainer(compose_typed(*SMALL, "resume=true"), part)
    assert (resumed.iteration, resumed.env_steps) == (2, 512)
    assert resumed.saved.counters.iteration == 2 and resumed.saved.metrics.rows == 2
    resumed.run()
    pd.testing.assert_frame_equal(read_metrics(part).drop(columns=TIME_COLUMNS),
                                  read_metrics(straight).drop(columns=TIME_COLUMNS))
    assert np.isfinite(read_metrics(part)["kl/mean"]).all()
