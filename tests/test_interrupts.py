"""Ctrl-C at any moment, twice included: the run resumes exactly as if never interrupted.

The signals are real (``os.kill`` of this process or of a ``trpo-lab`` subprocess) and land at
chosen points: in the middle of an update, during a checkpoint in the loop, during the final
checkpoint that the first Ctrl-C asks for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import clean_env, compose_typed, read_metrics, read_summary, run_cli
from trpo_lab import pipeline, train
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.train import CHECKPOINT, StopSignal, Trainer

ARGS = ("logger=none", "progress=false", "total_steps=1024", "batch_steps=128",
        "checkpoint.every=2", "eval.episodes=2", "critic.epochs=1")
TIMELESS = TIME_COLUMNS
UPDATES = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("reference")
    Trainer(compose_typed(*ARGS), run_dir).run()
    return read_metrics(run_dir)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def run_with_stop_signal(trainer: Trainer) -> dict:
    stop = StopSignal()
    stop.install()
    try:
        return trainer.run(stop)
    finally:
        stop.restore()


def assert_resumes_exactly(run_dir: Path, reference: pd.DataFrame) -> None:
    summary = Trainer(compose_typed(*ARGS), run_dir).run()
    assert summary["status"] == "completed"
    assert summary["iterations"] == UPDATES and summary["env_steps"] == UPDATES * 128
    got = read_metrics(run_dir)
    assert got["iteration"].tolist() == list(range(UPDATES))
    assert got["env_steps"].tolist() == [128 * (k + 1) for k in range(UPDATES)]
    pd.testing.assert_frame_equal(got.drop(columns=TIMELESS), reference.drop(columns=TIMELESS))


def test_second_ctrl_c_in_the_middle_of_an_update_drops_it_and_resumes_exactly(tmp_path,
                                                                                reference,
                                                                                monkeypatch):
    """Both Ctrl-C inside update 3 (after its rollout, in the critic's fit): the update is
    dropped, the run ends at its checkpoint of update 2, and metrics.csv is cut back to it."""
    trainer = Trainer(compose_typed(*ARGS), tmp_path)
    real_update = pipeline.critic_update_runs

    def update(critics, batches):
        if trainer.iteration == 3:
            ctrl_c()
            ctrl_c()  # the KeyboardInterrupt is raised here, half-way through update 3
        return real_update(critics, batches)

    monkeypatch.setattr(pipeline, "critic_update_runs", update)
    summary = run_with_stop_signal(trainer)
    assert summary["status"] == "interrupted"
    assert summary["iterations"] == 2 and summary["env_steps"] == 256  # the checkpoint's
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["env_steps"] == 256
    assert len(read_metrics(tmp_path)) == 2
    assert_resumes_exactly(tmp_path, reference)


def test_second_ctrl_c_during_a_checkpoint_in_the_loop_keeps_the_previous_one(tmp_path,
                                                                              reference):
    trainer = Trainer(compose_typed(*ARGS), tmp_path)
    real_save = train.save_checkpoint
    calls = {"n": 0}

    def save(path, state):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint of update 4
            ctrl_c()
            ctrl_c()
        real_save(path, state)

    train.save_checkpoint = save
    try:
        summary = run_with_stop_signal(trainer)
    finally:
        train.save_checkpoint = real_save
    assert summary["status"] == "interrupted" and summary["iterations"] == 2
    assert not list(tmp_path.glob("*.tmp"))
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["iteration"] == 2
    assert_resumes_exactly(tmp_path, reference)


def test_second_ctrl_c_during_the_final_checkpoint_waits_for_it(tmp_path, reference):
    """The first Ctrl-C asks for a checkpoint at the end of update 5; the second arrives while
    it is written: the checkpoint is written whole, and the run resumes from update 5."""
    trainer = Trainer(compose_typed(*ARGS), tmp_path)
    real_save = train.save_checkpoint

    def save(path, state):
        if state["iteration"] == 5:
            ctrl_c()
        real_save(path, state)

    def first_ctrl_c(row):
        if row["iteration"] == 4:
            ctrl_c()

    train.save_checkpoint = save
    try:
        stop = StopSignal()
        stop.install()
        try:
            summary = trainer.run(stop, on_row=first_ctrl_c)
        finally:
            stop.restore()
    finally:
        train.save_checkpoint = real_save
    assert summary["status"] == "interrupted" and summary["iterations"] == 5
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["iteration"] == 5
    assert len(read_metrics(tmp_path)) == 5
    assert_resumes_exactly(tmp_path, reference)


CLI_RUN = ["total_steps=4096", "batch_steps=512", "checkpoint.every=2", "eval.episodes=2",
           "eval.heldout_episodes=0",
           "logger=none"]
CLI_UPDATES = 8


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("cli-reference")
    assert run_cli([*CLI_RUN, f"hydra.run.dir={run_dir}"], cwd=run_dir).returncode == 0
    return read_metrics(run_dir)


def double_ctrl_c(run_dir: Path, rows_before: int, gap_s: float) -> tuple[int, str]:
    """Start the command, wait for ``rows_before`` rows, press Ctrl-C twice; its exit code and
    stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "trpo_lab", *CLI_RUN,
                             f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                            env=clean_env({}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    metrics = run_dir / "metrics.csv"
    while time.time() < deadline and not (
            metrics.exists() and metrics.read_text().count("\n") > rows_before):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap_s)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    return proc.returncode, err


@pytest.mark.parametrize("rows_before, gap_s", [(1, 0.01), (5, 0.03)])
def test_double_ctrl_c_on_the_command_then_the_same_command_resumes_exactly(
        rows_before, gap_s, tmp_path, cli_reference):
    """The issue's trial: Ctrl-C twice, 10 ms apart, at some point of a real run; then the same
    command. The resumed run equals an uninterrupted one (env_steps included)."""
    victim = tmp_path / "victim"
    code, err = double_ctrl_c(victim, rows_before, gap_s)
    assert "Traceback" not in err, err
    assert code == 130  # interrupted by Ctrl-C, resumable
    summary = read_summary(victim)
    assert summary["status"] == "interrupted"
    assert summary["env_steps"] == 512 * summary["iterations"] == 512 * len(read_metrics(victim))
    resumed = run_cli([*CLI_RUN, f"hydra.run.dir={victim}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    got = read_metrics(victim)
    assert got["env_steps"].tolist() == [512 * (k + 1) for k in range(CLI_UPDATES)]
    pd.testing.assert_frame_equal(got.drop(columns=TIMELESS),
                                  cli_reference.drop(columns=TIMELESS))
    assert read_summary(victim)["env_steps"] == CLI_UPDATES * 512
