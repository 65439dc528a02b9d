"""Faults injected as a user or the machine would (issue 22), and what is on disk afterwards.

Each test makes the fault happen for real (a deleted file, a deleted lock, an env that raises
inside a group, a reshaped checkpoint, NaN observations, an over-long path, a full disk with W&B
on, SIGTERM to a sweep, a SIGKILL before the first checkpoint, Ctrl-C during start-up) and then
checks the files of the run directory, not only the exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from tests.conftest import (
    clean_env,
    compose_typed,
    read_metrics,
    read_summary,
    run_cli,
    run_in_process,
    wandb_history,
)
from tests.test_run_dir import fill, one_line, snapshot, tmpfs
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.train import CHECKPOINT, StopSignal, Trainer

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["logger=none", "progress=false", "total_steps=2048", "batch_steps=256",
        "checkpoint.every=2", "eval.episodes=2", "critic.epochs=1"]
PROBES = ["probe.every=2", "probe.episodes=4", "probe.batch_steps=[64]", "probe.batches=2",
          "probe.reference_steps=256", "probe.alphas=[0.0,1.0]", "probe.random_directions=1"]


def run_app(args: list[str], capsys) -> tuple[int, str]:
    code = run_in_process(args)
    return code, capsys.readouterr().err


def with_repo_on_path() -> dict[str, str]:
    """The subprocesses import this module's envs (``env.id=tests.test_faults:...``)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run with probes, stopped as SIGTERM stops it after update 4 of 8 (checkpointed: 4
    metrics rows, the probe rows of updates 0 and 2)."""
    run_dir = tmp_path_factory.mktemp("interrupted")
    stop = StopSignal()

    def stop_after_four(row):
        stop.requested = stop.requested or row["iteration"] == 3

    summary = Trainer(compose_typed(*ARGS, *PROBES), run_dir).run(stop, on_row=stop_after_four)
    assert summary["status"] == "interrupted" and summary["iterations"] == 4
    return run_dir


@pytest.fixture
def run_dir(interrupted, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(interrupted, copy)
    return copy


# ---------------------------------------------------- 1. a deleted CSV
@pytest.mark.parametrize("name", ["metrics.csv", "probes.csv"])
def test_a_deleted_csv_that_the_checkpoint_stands_on_is_refused_then_the_advice_works(
        name, run_dir, capsys):
    rows_before = len(pd.read_csv(run_dir / name))
    assert rows_before > 0
    (run_dir / name).unlink()
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, *PROBES, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2
    line = one_line(err)
    assert str(run_dir / name) in line and "missing" in line
    assert "checkpoint.pt and summary.json" in line and "another hydra.run.dir" in line
    assert snapshot(run_dir) == before  # nothing recreated, nothing rewritten
    assert not (run_dir / name).exists()
    assert read_summary(run_dir)["status"] == "interrupted"
    # the advice to start over: the run trains again from update 0, every row present
    (run_dir / CHECKPOINT).unlink()
    (run_dir / "summary.json").unlink()
    code, err = run_app([*ARGS, *PROBES, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 0, err
    assert read_metrics(run_dir)["iteration"].tolist() == list(range(8))
    probes = pd.read_csv(run_dir / "probes.csv")
    assert sorted(set(probes["iteration"])) == [0, 2, 4, 6]


# ---------------------------------------------------- 2. a deleted lock file
def test_deleting_the_lock_file_does_not_let_a_second_process_in(tmp_path, capsys):
    run_dir = tmp_path / "run"
    long_run = ["total_steps=20480", "batch_steps=512", "eval.episodes=2", "logger=none",
                "eval.heldout_episodes=0", "checkpoint.every=2", f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen([sys.executable, "-m", "trpo_lab", *long_run], cwd=tmp_path,
                             env=clean_env({}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.csv").exists() or \
                (run_dir / "metrics.csv").read_text().count("\n") < 2:
            assert time.time() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.02)
        (run_dir / ".trpo-lab.lock").unlink()  # what a user cleaning up might do
        code, err = run_app(long_run, capsys)
        assert code == 2
        line = one_line(err)
        assert str(run_dir) in line and "is in use" in line
        assert first.poll() is None  # the first run goes on
        _, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, first_err
    data = (run_dir / "metrics.csv").read_bytes()
    assert b"\0" not in data
    assert read_metrics(run_dir)["iteration"].tolist() == list(range(40))  # one writer only
    assert read_summary(run_dir)["status"] == "completed"


def test_where_a_directory_cannot_be_locked_the_lock_file_is(tmp_path, monkeypatch):
    """NFS refuses an exclusive flock on a read-only descriptor (EBADF), which a directory's
    always is: the lock falls back to .trpo-lab.lock, which then really excludes others."""
    import errno
    import fcntl
    import stat

    from trpo_lab import rundir

    real_flock = fcntl.flock

    def nfs_flock(fd, operation):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(fd, operation)

    monkeypatch.setattr(rundir.fcntl, "flock", nfs_flock)
    rundir.claim(tmp_path)
    try:
        assert int((tmp_path / ".trpo-lab.lock").read_text()) == os.getpid()
        other = os.open(tmp_path / ".trpo-lab.lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        rundir.release(tmp_path)


# ---------------------------------------------------- 3. an env that raises in a group
BAD_SEED = 1
RAISE_AFTER = 700  # env steps of the bad run's env: in its update 2 (batches of 256 steps)


class SeedRaising(CartPoleEnv):
    """CartPole that raises in step() once it has stepped RAISE_AFTER times, in the env that
    the collector of the run with seed BAD_SEED resets (its reset seed; one env per run)."""

    bad_reset_seeds = {int(s) for s in np.random.SeedSequence([BAD_SEED, 0xE7]).generate_state(1)}

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.bad = seed in self.bad_reset_seeds
            self.stepped = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.stepped = getattr(self, "stepped", 0) + 1
        if getattr(self, "bad", False) and self.stepped > RAISE_AFTER:
            raise RuntimeError(f"simulator crashed at step {self.stepped}")
        return super().step(action)


if "SeedRaising-v0" not in gym.registry:
    gym.register("SeedRaising-v0", entry_point=SeedRaising, max_episode_steps=500)

GROUPED = ["env=custom", "env.id=tests.test_faults:SeedRaising-v0", "total_steps=2048",
           "batch_steps=256", "critic.epochs=1", "eval.episodes=0", "eval.heldout_episodes=0",
           "checkpoint.every=2", "logger=none"]


def test_an_env_that_raises_in_a_batched_group_fails_its_run_alone(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ["-m", "hydra/launcher=batched", "hydra.launcher.n_jobs=1", "seed=0,1,2",
               *GROUPED, f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli(command, cwd=tmp_path, env=with_repo_on_path(), timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 completed, 1 failed" in result.stdout
    failed = read_summary(sweep_dir / "1")
    assert failed["status"] == "failed" and failed["seed"] == BAD_SEED
    assert failed["error"] == f"RuntimeError: simulator crashed at step {RAISE_AFTER + 1}"
    assert read_metrics(sweep_dir / "1")["iteration"].tolist() == [0, 1]
    assert torch.load(sweep_dir / "1" / CHECKPOINT, weights_only=False)["iteration"] == 2
    healthy = {}
    for job, seed in (("0", 0), ("2", 2)):
        summary = read_summary(sweep_dir / job)
        assert summary["status"] == "completed" and summary["error"] is None
        assert summary["seed"] == seed
        healthy[job] = (sweep_dir / job / "metrics.csv").read_bytes()
    # a healthy run of the group is the run trained alone
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    Trainer(compose_typed(*GROUPED, "progress=false", "seed=2"), alone_dir).run()
    pd.testing.assert_frame_equal(read_metrics(sweep_dir / "2").drop(columns=TIME_COLUMNS),
                                  read_metrics(alone_dir).drop(columns=TIME_COLUMNS), rtol=1e-6)
    # the rerun resumes only the failed run (which fails again, alone, at the same step)
    rerun = run_cli(command, cwd=tmp_path, env=with_repo_on_path(), timeout=300)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert "2 completed, 1 failed" in rerun.stdout
    assert "resuming from iteration 2" in rerun.stdout
    for job, data in healthy.items():
        assert (sweep_dir / job / "metrics.csv").read_bytes() == data
        assert f"{sweep_dir / job} already completed; skipping" in rerun.stdout
    assert read_summary(sweep_dir / "1")["error"] == failed["error"]
    assert read_metrics(sweep_dir / "1")["iteration"].tolist() == [0, 1]


# ---------------------------------------------------- 4. a checkpoint of another shape
def test_a_checkpoint_that_does_not_fit_the_model_is_refused_and_changes_nothing(run_dir,
                                                                                 capsys):
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)
    name, tensor = next(iter(state["policy"].items()))
    state["policy"][name] = tensor[..., :1].clone()  # cut to another shape
    torch.save(state, run_dir / CHECKPOINT)
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, *PROBES, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2
    line = one_line(err)
    assert str(run_dir / CHECKPOINT) in line and "does not fit this run's policy" in line
    assert name in line and "new run directory" in line
    assert snapshot(run_dir) == before
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["iterations"] == 4


# ---------------------------------------------------- 5. NaN observations
NAN_AT = 300  # the env's step that returns the NaN observation


class NaNCartPole(CartPoleEnv):
    """CartPole whose NAN_AT-th step returns an observation with a NaN (the state stays)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.stepped = getattr(self, "stepped", 0) + 1
        if self.stepped == NAN_AT:
            obs = obs.copy()
            obs[2] = np.nan
        return obs, reward, terminated, truncated, info


if "NaNCartPole-v0" not in gym.registry:
    gym.register("NaNCartPole-v0", entry_point=NaNCartPole, max_episode_steps=500)


def test_a_nan_observation_is_named_with_its_env_and_step(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = run_app(["env=custom", "env.id=tests.test_faults:NaNCartPole-v0",
                         "total_steps=1024", "batch_steps=256", "eval.episodes=0",
                         "eval.heldout_episodes=0", "critic.epochs=1", "logger=none",
                         "progress=false", f"hydra.run.dir={run_dir}"], capsys)
    assert code == 1
    line = one_line(err)
    assert "non-finite observation" in line and "NaNCartPole-v0" in line
    assert f"after {NAN_AT} env steps of the run" in line and "[2]=nan" in line
    assert "overflow" not in line and "reward" not in line
    summary = read_summary(run_dir)
    assert summary["status"] == "failed"
    assert "non-finite observation" in summary["error"] and f"after {NAN_AT} env" in \
        summary["error"]
    metrics = read_metrics(run_dir)  # update 0 only: the update that saw the NaN wrote nothing
    assert metrics["iteration"].tolist() == [0]
    assert np.isfinite(metrics["kl/mean"]).all()


# ---------------------------------------------------- 6. a path name over 255 bytes
@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_run_directory_name_over_255_bytes_is_refused_in_one_line(key, tmp_path, capsys):
    target = tmp_path / ("x" * 300) / "run"
    args = ["logger=none", f"{key}={target}"] + (["-m", "seed=0"] if "sweep" in key else [])
    code, err = run_app(args, capsys)
    assert code == 2
    line = one_line(err)
    assert key in line and "300 bytes long" in line and "File name too long" in line
    assert list(tmp_path.iterdir()) == []  # nothing created


# ---------------------------------------------------- 7. a full disk with W&B on
@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB tmpfs: room for W&B's files."""
    with tmpfs(tmp_path, "16m") as mount_point:
        yield mount_point


def test_a_full_disk_with_wandb_on_ends_in_one_line_and_resumes(small_disk, tmp_path):
    run_dir = small_disk / "run"
    command = [sys.executable, "-m", "trpo_lab", "total_steps=8192", "batch_steps=256",
               "checkpoint.every=2", "eval.episodes=2", "eval.heldout_episodes=0",
               "critic.epochs=1", "logger.mode=offline", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=clean_env({"WANDB_MODE": "offline"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / CHECKPOINT).exists() or \
            not list(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    ballast = fill(small_disk)  # W&B is logging: its files fill up too
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    line = one_line(err)  # no UserWarning, no "--- Logging error ---" from W&B
    assert "No space left on device" in line and "rerun the same command to resume" in line
    assert not list(run_dir.glob("*.tmp"))
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)  # the last good one
    assert state["iteration"] >= 2
    if (run_dir / "summary.json").exists():  # if it still fit on the disk
        assert read_summary(run_dir)["status"] == "failed"
    ballast.unlink()
    resumed = subprocess.run(command, cwd=tmp_path, env=clean_env({"WANDB_MODE": "offline"}),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert read_metrics(run_dir)["iteration"].tolist() == list(range(32))
    assert read_summary(run_dir)["status"] == "completed"


# ---------------------------------------------------- 8. SIGTERM to a sweep
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sigterm_to_a_sweep_exits_143_and_checkpoints_its_running_jobs(launcher, tmp_path):
    sweep_dir = tmp_path / "sweep"
    extra = (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib"
             else ["hydra/launcher=basic"])  # -m's default is the parallel launcher
    proc = subprocess.Popen(
        [sys.executable, "-m", "trpo_lab", "-m", "seed=0,1", *extra, "total_steps=40960",
         "batch_steps=512", "eval.episodes=2", "eval.heldout_episodes=0", "logger=none",
         "checkpoint.every=5", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=clean_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL)
    running = ["0", "1"] if launcher == "joblib" else ["0"]
    deadline = time.time() + 120
    while not all((sweep_dir / job / "metrics.csv").exists() and
                  (sweep_dir / job / "metrics.csv").read_text().count("\n") > 2
                  for job in running):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert f"rerun the same command with hydra.sweep.dir={sweep_dir}" in err or \
        "rerun the same command to resume" in err
    for job in running:
        summary = read_summary(sweep_dir / job)
        assert summary["status"] == "interrupted" and summary["iterations"] < 80
        state = torch.load(sweep_dir / job / CHECKPOINT, weights_only=False)
        assert state["iteration"] == summary["iterations"]
        assert read_metrics(sweep_dir / job)["iteration"].tolist() == \
            list(range(summary["iterations"]))
    if launcher == "basic":
        assert not (sweep_dir / "1").exists()  # the job after it did not start


# ---------------------------------------------------- 9. a kill before the first checkpoint
def test_a_kill_before_the_first_checkpoint_leaves_one_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "trpo_lab", "total_steps=4096", "batch_steps=256",
               "checkpoint.every=1000", "eval.episodes=2", "eval.heldout_episodes=0",
               "critic.epochs=1", "logger.mode=offline", f"hydra.run.dir={run_dir}"]
    env = clean_env({"WANDB_MODE": "offline"})
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(run_dir.glob("wandb/offline-run-*/run-*.wandb")) or \
            not (run_dir / "metrics.csv").exists() or \
            (run_dir / "metrics.csv").read_text().count("\n") < 3:
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.02)
    first.kill()
    first.wait()
    assert not (run_dir / CHECKPOINT).exists()
    (orphan,) = run_dir.glob("wandb/offline-run-*")
    run_id = orphan.name.rsplit("-", 1)[1]
    recorded = (run_dir / ".trpo-lab-wandb-id").read_text().strip() \
        if (run_dir / ".trpo-lab-wandb-id").exists() else None
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    (only,) = run_dir.glob("wandb/offline-run-*")  # `wandb sync .../offline-run-*`: one run
    assert only.name.endswith(f"-{run_id}")
    assert read_summary(run_dir)["wandb_run_id"] == run_id
    assert torch.load(run_dir / CHECKPOINT, weights_only=False)["run_id"] == run_id
    from trpo_lab.train import WANDB_ID

    assert recorded == run_id and WANDB_ID == ".trpo-lab-wandb-id"  # before W&B started
    assert not (run_dir / WANDB_ID).exists()  # the checkpoint holds the id now
    history = wandb_history(run_dir)
    assert [row["iteration"] for row in history] == list(range(16))
    assert [row["kl/mean"] for row in history] == read_metrics(run_dir)["kl/mean"].tolist()


# ---------------------------------------------------- 10. Ctrl-C during start-up
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    """SIGINT at several moments before the run installs its handler (it prints its run
    directory just before): importing the app, composing, building the run. The console
    script, as a user runs it (a signal within the interpreter's own start-up, before any
    line of trpo-lab runs, is Python's to report)."""
    script = Path(sys.executable).parent / "trpo-lab"

    def command(run_dir: Path) -> list[str]:
        return [str(script), "total_steps=1024", "batch_steps=256", "eval.episodes=2",
                "critic.epochs=1", "logger=none", f"hydra.run.dir={run_dir}"]

    early = []
    for k, delay in enumerate((0.4, 0.8, 1.4, 2.2)):
        run_dir = tmp_path / f"run{k}"
        proc = subprocess.Popen(command(run_dir), cwd=tmp_path, env=clean_env({}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        if "trpo-lab: run directory" in out:
            continue  # the handler was installed already: not start-up any more
        early.append(run_dir)
        assert proc.returncode == 130, err
        assert one_line(err) == ("trpo-lab: interrupted by Ctrl-C while starting, before "
                                 "training; rerun the same command to run it")
        assert not (run_dir / CHECKPOINT).exists() and not (run_dir / "summary.json").exists()
        assert not (run_dir / "metrics.csv").exists() or \
            (run_dir / "metrics.csv").read_text().count("\n") == 1  # its header at most
    assert len(early) >= 2
    run_dir = early[-1]
    done = subprocess.run(command(run_dir), cwd=tmp_path, env=clean_env({}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_metrics(run_dir)["iteration"].tolist() == [0, 1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
