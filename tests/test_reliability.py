"""Damage on purpose: kill, terminate, poison, and feed nonsense; nothing is lost or silent."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    clean_env,
    compose_typed,
    read_metrics,
    read_summary,
    run_cli,
    run_in_process,
    wait_for_rows,
    wandb_records,
)
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.train import CHECKPOINT, NumericalFailure, Trainer

RUN = ["total_steps=16384", "batch_steps=1024", "checkpoint.every=2", "eval.episodes=2"]
TIMELESS = TIME_COLUMNS


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trpo_lab", *args], cwd=cwd,
                            env=clean_env({"WANDB_MODE": "offline"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wandb_run_ids(run_dir: Path) -> set[str]:
    return {p.name.split("-")[-1] for p in (run_dir / "wandb").glob("offline-run-*")}


@pytest.mark.parametrize("env", [
    [], ["env=pendulum", "env.normalize_obs=true", "env.normalize_reward=true"]],
    ids=["cartpole", "pendulum-normalised"])
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(env, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli([*RUN, *env, f"hydra.run.dir={reference}"], cwd=tmp_path).returncode == 0
    victim = tmp_path / "victim"
    proc = start([*RUN, *env, f"hydra.run.dir={victim}"], tmp_path)
    wait_for_rows(victim, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_metrics(victim)  # readable after a hard kill
    assert 5 <= len(partial) < 16
    assert not (victim / "summary.json").exists()

    resumed = run_cli([*RUN, *env, f"hydra.run.dir={victim}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    got, want = read_metrics(victim), read_metrics(reference)
    assert got["iteration"].tolist() == list(range(16))
    pd.testing.assert_frame_equal(got.drop(columns=TIMELESS), want.drop(columns=TIMELESS))
    assert read_summary(victim)["status"] == "completed"
    assert len(wandb_run_ids(victim)) == 1  # the resumed W&B run has the same id


def test_sigterm_checkpoints_marks_interrupted_and_finishes_wandb(tmp_path):
    run_dir = tmp_path / "run"
    proc = start([*RUN, "total_steps=1048576", f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_rows(run_dir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM  # 143, as shells expect
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted"
    assert (run_dir / CHECKPOINT).exists()
    rows = len(read_metrics(run_dir))
    assert summary["iterations"] == rows
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert state["iteration"] == rows
    exits = [r for r in wandb_records(run_dir) if r["type"] == "exit"]
    assert len(exits) == 1


def test_completed_run_is_not_retrained(tmp_path):
    run_dir = tmp_path / "run"
    args = ["total_steps=256", "batch_steps=128", "logger=none", f"hydra.run.dir={run_dir}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = (run_dir / "metrics.csv").read_text()
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert (run_dir / "metrics.csv").read_text() == before


def poison_advantages(monkeypatch, at_calls: set[int]):
    import trpo_lab.rollout as rollout

    calls = {"n": 0}
    real = rollout.gae

    def gae(*args):
        out = real(*args)
        if calls["n"] in at_calls:
            out = out.copy()
            out[0] = np.nan
        calls["n"] += 1
        return out

    monkeypatch.setattr(rollout, "gae", gae)


@pytest.mark.parametrize("algo", ["trpo", "vpg", "kl_penalty", "ppo"])
def test_nan_advantages_reject_the_update_and_the_run_goes_on(algo, tmp_path, monkeypatch):
    poison_advantages(monkeypatch, {1})
    cfg = compose_typed("logger=none", "progress=false", f"algo={algo}", "total_steps=512",
                        "batch_steps=128", "eval.episodes=0", "eval.heldout_episodes=0",
                        "critic.epochs=1")
    trainer = Trainer(cfg, tmp_path)
    params = []
    trainer.run(on_row=lambda row: params.append(
        torch.cat([p.detach().reshape(-1) for p in trainer.policy.actor_parameters()])))
    metrics = read_metrics(tmp_path)
    assert metrics["guard/nonfinite"].tolist() == [0, 1, 0, 0]
    assert torch.equal(params[0], params[1])  # the poisoned update changed nothing
    assert not torch.equal(params[1], params[2])
    assert metrics.loc[1, "kl/mean"] == 0
    if algo == "trpo":
        assert metrics["trpo/accepted"].tolist()[1] == 0
    assert read_summary(tmp_path)["status"] == "completed"


def test_consecutive_bad_updates_fail_the_run_with_a_clear_message(tmp_path, monkeypatch):
    poison_advantages(monkeypatch, set(range(100)))
    cfg = compose_typed("logger=none", "progress=false", "total_steps=2048", "batch_steps=128",
                        "eval.episodes=0", "max_bad_updates=3")
    with pytest.raises(NumericalFailure, match="3 consecutive"):
        Trainer(cfg, tmp_path).run()
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "max_bad_updates=3" in summary["error"]
    assert len(read_metrics(tmp_path)) == 3


NUMERIC_KEYS = {
    "gamma": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "gae_lambda": st.floats(-2, 3),
    "algo.delta": st.one_of(st.floats(-1, 1), st.just(float("nan")), st.just(float("inf"))),
    "algo.cg_iters": st.integers(-3, 30),
    "algo.cg_damping": st.floats(-1, 10),
    "algo.backtrack_coef": st.floats(-1, 2),
    "batch_steps": st.integers(-5, 200),
    "num_envs": st.integers(-2, 5),
    "eval.episodes": st.integers(-2, 3),
    "seed": st.integers(-5, 2**40),
    "critic.lr": st.floats(-1, 1),
}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(overrides=st.dictionaries(st.sampled_from(sorted(NUMERIC_KEYS)), st.none(), min_size=1,
                                 max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: NUMERIC_KEYS[k] for k in keys})))
def test_random_numeric_overrides_run_or_are_refused_never_a_traceback(overrides, tmp_path_factory,
                                                                        capsys):
    run_dir = tmp_path_factory.mktemp("fuzz")
    args = [f"{k}={v}" for k, v in overrides.items()]
    code = run_in_process([*args, "total_steps=200", "logger=none", "critic.epochs=1",
                           "progress=false", f"hydra.run.dir={run_dir}"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out, (args, out.err)
    assert code in (0, 2), (args, code, out.err)
    if code == 2:
        assert out.err.strip(), args
    else:
        assert read_summary(run_dir)["status"] == "completed"


def test_checkpointed_mujoco_envs_continue_their_episode(tmp_path):
    pytest.importorskip("mujoco")
    cfg = compose_typed("logger=none", "progress=false", "env=hopper", "total_steps=256",
                        "batch_steps=128", "eval.episodes=0", "eval.heldout_episodes=0",
                        "critic.epochs=1")
    trainer = Trainer(cfg, tmp_path)
    trainer.collector.collect(trainer.policy.numpy_actor())
    torch.save(trainer.collector.state_dict(), tmp_path / "c.pt")
    expected = trainer.envs.envs[0].step(np.zeros(3))[0]
    (tmp_path / "other").mkdir()
    other = Trainer(cfg, tmp_path / "other")  # a new process would rebuild the env like this
    other.collector.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=False))
    np.testing.assert_allclose(other.envs.envs[0].step(np.zeros(3))[0], expected, rtol=1e-6,
                               atol=1e-8)


def test_a_failing_final_evaluation_keeps_the_completed_run(tmp_path, monkeypatch):
    """Training is done when the final evaluation starts: its error is recorded, the summary,
    checkpoint and metrics are still written, and the run stays completed."""
    from tests.conftest import train_in_process
    from trpo_lab import train

    def broken(*args, **kwargs):
        raise RuntimeError("simulator exploded")

    monkeypatch.setattr(train, "deterministic_returns", broken)
    metrics = train_in_process(tmp_path, "total_steps=256", "batch_steps=128",
                               "eval.episodes=0", "eval.final_episodes=3")
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and len(metrics) == 2
    assert summary["final_eval_error"] == "RuntimeError: simulator exploded"
    assert summary["final_eval_return"] is None and summary["final_eval_returns"] == []
    assert (tmp_path / "checkpoint.pt").exists()
