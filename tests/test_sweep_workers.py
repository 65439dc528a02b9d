"""Sweeps survive their workers (hydra/launcher=joblib, trpo_lab/launcher.py).

A worker killed with SIGKILL fails its own job only; the sweep prints its counts and exits 1;
the same command then finishes what is missing. When the sweep's own process is killed, its
workers stop too (they checkpoint, as on SIGTERM) instead of running on as orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import clean_env, read_metrics, read_summary, run_cli
from trpo_lab.launcher import signal_name, worker_count
from trpo_lab.rundir import LOCK_FILE

JOB = ["total_steps=4096", "batch_steps=256", "checkpoint.every=2", "eval.episodes=2",
       "eval.heldout_episodes=0",
       "critic.epochs=1", "logger=none"]
UPDATES = 16


def sweep_command(sweep_dir: Path, seeds: str) -> list[str]:
    return [sys.executable, "-m", "trpo_lab", "-m", f"seed={seeds}", *JOB,
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"]


def start_sweep(sweep_dir: Path, seeds: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(sweep_command(sweep_dir, seeds), cwd=cwd, env=clean_env({}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def training_pid(job_dir: Path, rows: int, timeout: float = 180) -> int:
    """The pid of the worker training in ``job_dir``, once it has written ``rows`` rows."""
    deadline = time.time() + timeout
    metrics = job_dir / "metrics.csv"
    while time.time() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") > rows:
            return int((job_dir / LOCK_FILE).read_text())
        time.sleep(0.05)
    raise TimeoutError(job_dir)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(
        f"/proc/{pid}/status").read_text().lower()


def test_a_killed_worker_fails_its_job_only_and_a_rerun_finishes_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep(sweep_dir, "0,1,2,3", tmp_path)
    victim = training_pid(sweep_dir / "0", rows=3)
    os.kill(victim, signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-3000:]
    assert "3 completed, 1 failed" in out
    assert "TerminatedWorkerError" not in err and "Traceback" not in err
    killed = read_summary(sweep_dir / "0")
    assert killed["status"] == "failed" and "SIGKILL" in killed["error"]
    for job in ("1", "2", "3"):
        assert read_summary(sweep_dir / job)["status"] == "completed"
        assert len(read_metrics(sweep_dir / job)) == UPDATES
    finished = {job: (sweep_dir / job / "metrics.csv").read_bytes() for job in ("1", "2", "3")}

    again = run_cli(sweep_command(sweep_dir, "0,1,2,3")[3:], cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 completed" in again.stdout
    assert again.stdout.count("already completed") == 3
    resumed = read_metrics(sweep_dir / "0")
    assert resumed["iteration"].tolist() == list(range(UPDATES))
    for job, content in finished.items():  # finished jobs are not touched
        assert (sweep_dir / job / "metrics.csv").read_bytes() == content


def test_workers_stop_when_the_sweeps_process_dies(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep = start_sweep(sweep_dir, "0,1", tmp_path)
    workers = [training_pid(sweep_dir / job, rows=2) for job in ("0", "1")]
    sweep.send_signal(signal.SIGKILL)
    sweep.communicate(timeout=60)
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "orphaned workers still running"
    for job in ("0", "1"):  # stopped as by SIGTERM: checkpointed and marked interrupted
        summary = read_summary(sweep_dir / job)
        assert summary["status"] == "interrupted"
        assert summary["iterations"] == len(read_metrics(sweep_dir / job)) < UPDATES


def test_worker_count_follows_joblib():
    cpus = os.cpu_count()
    assert worker_count(-1, 100) == cpus
    assert worker_count(-2, 100) == max(cpus - 1, 1)
    assert worker_count(None, 100) == 1
    assert worker_count(3, 2) == 2  # never more workers than jobs
    assert signal_name(-9) == "killed by SIGKILL"
    assert signal_name(1) == "exited with code 1"


@pytest.mark.parametrize("n_jobs", [1])
def test_a_sweep_with_one_worker_runs_its_jobs_in_order(n_jobs, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["-m", "seed=0,1,2", "total_steps=256", "batch_steps=128",
                      "critic.epochs=1", "eval.episodes=0", "eval.heldout_episodes=0",
                      "logger=none",
                      "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and "3 completed" in result.stdout, result.stderr[-3000:]
    pids = {int((sweep_dir / j / LOCK_FILE).read_text()) for j in ("0", "1", "2")}
    assert len(pids) == 1  # one worker, reused for every job


@pytest.mark.parametrize("launcher", [["hydra/launcher=basic"],
                                      ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_a_rerun_with_another_config_fails_its_jobs_and_leaves_them_as_they_are(launcher,
                                                                                tmp_path):
    sweep_dir = tmp_path / "sweep"
    tiny = ["-m", "seed=0,1", "total_steps=256", "batch_steps=128", "critic.epochs=1",
            "eval.episodes=0", "eval.heldout_episodes=0", "logger=none", *launcher,
            f"hydra.sweep.dir={sweep_dir}"]
    assert run_cli(tiny, cwd=tmp_path, timeout=300).returncode == 0
    before = {j: ((sweep_dir / j / "summary.json").read_bytes(),
                  (sweep_dir / j / "metrics.csv").read_bytes()) for j in ("0", "1")}
    again = run_cli([*tiny, "algo.delta=0.05"], cwd=tmp_path, timeout=300)
    assert again.returncode == 1
    assert "2 failed" in again.stdout
    assert again.stderr.count("cannot resume") == 2
    for job, files in before.items():
        assert ((sweep_dir / job / "summary.json").read_bytes(),
                (sweep_dir / job / "metrics.csv").read_bytes()) == files
