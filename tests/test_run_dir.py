"""A run directory has one owner, holds one run, and is never trusted blindly.

Refusals change nothing: every file of the run directory keeps its bytes (the lock file, the
ownership record, aside), summary.json included, and no file is added (Hydra's ``.hydra/``
neither).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import clean_env, compose_typed, read_metrics, read_summary, run_in_process
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.rundir import LOCK_FILE
from trpo_lab.train import CHECKPOINT, StopSignal, Trainer

ARGS = ["logger=none", "progress=false", "total_steps=2048", "batch_steps=256",
        "checkpoint.every=2", "eval.episodes=2", "critic.epochs=1"]
TIMELESS = TIME_COLUMNS


def run_app(args: list[str], capsys) -> tuple[int, str]:
    """``trpo-lab ARGS`` in this process; its exit code and stderr."""
    code = run_in_process(args)
    return code, capsys.readouterr().err


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run stopped as SIGTERM stops it (the stop flag), after update 4 of 8."""
    run_dir = tmp_path_factory.mktemp("interrupted")
    stop = StopSignal()

    def stop_after_four(row):
        stop.requested = stop.requested or row["iteration"] == 3

    summary = Trainer(compose_typed(*ARGS), run_dir).run(stop, on_row=stop_after_four)
    assert summary["status"] == "interrupted" and summary["iterations"] == 4
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    run_dir = tmp_path_factory.mktemp("reference")
    Trainer(compose_typed(*ARGS), run_dir).run()
    return read_metrics(run_dir)


@pytest.fixture
def run_dir(interrupted, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(interrupted, copy)
    return copy


# ----------------------------------------------------------------------------- ownership
def test_a_second_process_is_refused_at_once_and_the_first_run_goes_on(tmp_path, capsys):
    run_dir = tmp_path / "run"
    long_run = ["total_steps=40960", "batch_steps=512", "eval.episodes=2", "logger=none",
                "eval.heldout_episodes=0",
                "checkpoint.every=2", f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen([sys.executable, "-m", "trpo_lab", *long_run], cwd=tmp_path,
                             env=clean_env({}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.csv").exists() or \
                (run_dir / "metrics.csv").read_text().count("\n") < 2:
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.02)
        hydra_before = snapshot(run_dir / ".hydra")
        started = time.perf_counter()
        code, err = run_app([*long_run, "seed=1"], capsys)
        assert time.perf_counter() - started < 10
        assert code == 2
        line = one_line(err)
        assert str(run_dir) in line and f"process {first.pid}" in line
        assert snapshot(run_dir / ".hydra") == hydra_before  # Hydra wrote nothing
        assert first.poll() is None  # the first run goes on
        rows = read_metrics(run_dir)
        assert rows["iteration"].tolist() == list(range(len(rows)))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not (run_dir / "summary.json").exists()
    # the OS released the lock of the killed process: the same command resumes
    code, err = run_app([*long_run, "total_steps=4096"], capsys)
    assert code == 0, err
    assert read_summary(run_dir)["status"] == "completed"
    assert read_summary(run_dir)["seed"] == 0


def test_the_lock_is_per_directory_and_released_by_the_os(tmp_path):
    from trpo_lab import rundir

    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from trpo_lab import rundir; rundir.claim(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(rundir.RunDirBusy) as busy:
        rundir.claim(tmp_path)
    assert busy.value.pid == child.pid
    rundir.claim(tmp_path / "elsewhere")  # another directory: free
    rundir.release(tmp_path / "elsewhere")
    child.kill()
    child.wait()
    rundir.claim(tmp_path)  # no stale lock after a SIGKILL
    rundir.release(tmp_path)


# ----------------------------------------------------------------------------- resume config
@pytest.mark.parametrize("override, key, stored, given", [
    ("seed=1", "seed", "0", "1"),
    ("algo.delta=0.05", "algo.delta", "0.01", "0.05"),
    ("batch_steps=128", "batch_steps", "256", "128"),
    ("algo=ppo", "algo.name", "'trpo'", "'ppo'"),
    ("env=pendulum", "env.id", "'CartPole-v1'", "'Pendulum-v1'"),
    ("eval.episodes=3", "eval.episodes", "2", "3"),
])
def test_resume_with_another_config_is_refused_and_changes_nothing(
        override, key, stored, given, run_dir, capsys):
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, override, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2
    line = one_line(err)
    assert f"{key}={stored} in the run, {given} now" in line
    assert snapshot(run_dir) == before


def test_a_completed_run_with_another_config_is_refused_not_skipped(run_dir, capsys):
    code, err = run_app([*ARGS, f"hydra.run.dir={run_dir}"], capsys)  # finish it
    assert code == 0 and read_summary(run_dir)["status"] == "completed"
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, "seed=1", f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2 and "seed=0 in the run, 1 now" in one_line(err)
    assert snapshot(run_dir) == before


def test_total_steps_below_the_updates_done_is_refused(run_dir, capsys):
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, "total_steps=512", f"hydra.run.dir={run_dir}"], capsys)
    assert code == 2 and "total_steps" in one_line(err)
    assert snapshot(run_dir) == before


def test_allowed_changes_resume_and_extend_the_run_exactly(run_dir, tmp_path, capsys):
    """total_steps (extending the run), logger, progress, threads and checkpoint frequency may
    change: the run goes on, and equals a run started with the larger total_steps."""
    longer = [a for a in ARGS if not a.startswith("total_steps")] + ["total_steps=3072"]
    extended = [*longer, "checkpoint.every=3", "torch_threads=2", "progress=true",
                "logger.project=elsewhere", "max_bad_updates=7", f"hydra.run.dir={run_dir}"]
    code, err = run_app(extended, capsys)
    assert code == 0, err
    straight = tmp_path / "straight"
    straight.mkdir()
    Trainer(compose_typed(*longer), straight).run()
    got, want = read_metrics(run_dir), read_metrics(straight)
    assert got["iteration"].tolist() == list(range(12))
    pd.testing.assert_frame_equal(got.drop(columns=TIMELESS), want.drop(columns=TIMELESS))


# ----------------------------------------------------------------------------- corrupt files
def cut_half(data: bytes) -> bytes:
    return data[:len(data) // 2]


@pytest.mark.parametrize("damage", [cut_half, lambda d: d[:-150], lambda d: os.urandom(4096),
                                    lambda d: b""], ids=["half", "cut-150", "random", "empty"])
def test_an_unreadable_checkpoint_is_refused_and_changes_nothing(damage, run_dir, capsys):
    checkpoint = run_dir / CHECKPOINT
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 1
    line = one_line(err)
    assert str(checkpoint) in line and "new run directory" in line
    assert snapshot(run_dir) == before
    assert read_summary(run_dir)["status"] == "interrupted"


def edit_a_value(text: str) -> str:
    lines = text.splitlines(keepends=True)
    cells = lines[2].split(",")
    cells[1] = "123"  # env_steps of update 1
    lines[2] = ",".join(cells)
    return "".join(lines)


@pytest.mark.parametrize("damage", [
    lambda t: t[:-150], lambda t: t[:len(t) // 2], lambda t: t[:t.index("\n") + 1],
    edit_a_value], ids=["cut-150", "half", "header-only", "edited"])
def test_a_metrics_csv_without_the_checkpoints_rows_is_refused(damage, run_dir, capsys):
    metrics = run_dir / "metrics.csv"
    metrics.write_text(damage(metrics.read_text()))
    before = snapshot(run_dir)
    code, err = run_app([*ARGS, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 1
    line = one_line(err)
    assert str(metrics) in line and "new run directory" in line
    assert snapshot(run_dir) == before


def test_rows_after_the_checkpoint_even_cut_are_dropped_and_recomputed(run_dir, reference,
                                                                       capsys):
    metrics = run_dir / "metrics.csv"
    with metrics.open("a") as f:
        f.write("4,1280,0.3,999.0,12.5,1")  # a row a crash cut, written after the checkpoint
    code, err = run_app([*ARGS, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 0, err
    got = read_metrics(run_dir)
    pd.testing.assert_frame_equal(got.drop(columns=TIMELESS), reference.drop(columns=TIMELESS))


def test_a_checkpoint_from_before_metrics_positions_checks_the_rows(run_dir, reference, capsys):
    """Older checkpoints hold neither the config nor metrics.csv's size and hash: their rows
    are checked one by one (complete, numbered 0..k-1), and the run resumes exactly."""
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)
    del state["config"], state["metrics"]
    torch.save(state, run_dir / CHECKPOINT)
    intact = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(intact[:-150])
    code, err = run_app([*ARGS, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 1 and "row 3 of the checkpoint's 4 is missing or cut" in one_line(err)
    (run_dir / "metrics.csv").write_text(intact)
    code, err = run_app([*ARGS, f"hydra.run.dir={run_dir}"], capsys)
    assert code == 0, err
    pd.testing.assert_frame_equal(read_metrics(run_dir).drop(columns=TIMELESS),
                                  reference.drop(columns=TIMELESS))


# ----------------------------------------------------------------------------- disk full
@contextlib.contextmanager
def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "4m"; needs root and mount) under ``tmp_path``; the test
    is skipped where it cannot be mounted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs."""
    with tmpfs(tmp_path, "4m") as mount_point:
        yield mount_point


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk is full."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as f:  # unbuffered: closing has nothing left to write
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return ballast


def test_a_full_disk_ends_the_run_with_one_line_and_resumes_exactly(small_disk, tmp_path):
    run = ["total_steps=16384", "batch_steps=256", "checkpoint.every=2", "eval.episodes=2",
           "eval.heldout_episodes=0",
           "critic.epochs=1", "logger=none"]
    reference = tmp_path / "reference"
    assert subprocess.run([sys.executable, "-m", "trpo_lab", *run,
                           f"hydra.run.dir={reference}"], cwd=tmp_path, env=clean_env({}),
                          capture_output=True).returncode == 0
    run_dir = small_disk / "run"
    proc = subprocess.Popen([sys.executable, "-m", "trpo_lab", *run, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=clean_env({}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / CHECKPOINT).exists() or \
            (run_dir / "metrics.csv").read_text().count("\n") < 6:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    ballast = fill(small_disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    line = one_line(err)
    assert "No space left on device" in line and "rerun the same command to resume" in line
    assert not list(run_dir.glob("*.tmp"))
    assert not [p for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size == 0
                and p.name not in ("app.log",)]
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)  # the last good one
    assert state["iteration"] >= 2
    ballast.unlink()
    resumed = subprocess.run([sys.executable, "-m", "trpo_lab", *run,
                              f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=clean_env({}),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    got, want = read_metrics(run_dir), read_metrics(reference)
    pd.testing.assert_frame_equal(got.drop(columns=TIMELESS), want.drop(columns=TIMELESS))
    assert read_summary(run_dir)["status"] == "completed"


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_and_no_tmp(
        interrupted, tmp_path, monkeypatch):
    """The same without a tmpfs: the disk fills while the checkpoint is written (the write
    fails after half of it, as ENOSPC does); the previous checkpoint stays, no .tmp is left."""
    import errno

    from trpo_lab import checkpoint
    from trpo_lab.train import RunWriteError

    run_dir = tmp_path / "run"
    shutil.copytree(interrupted, run_dir)
    good = (run_dir / CHECKPOINT).read_bytes()
    real_save = torch.save

    def save_until_full(state, f):
        real_save(state, f)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    trainer = Trainer(compose_typed(*ARGS), run_dir)
    with pytest.raises(RunWriteError, match="No space left on device.*update 4.*resume"):
        trainer.run()
    assert (run_dir / CHECKPOINT).read_bytes() == good
    assert not list(run_dir.glob("*.tmp"))
    assert read_summary(run_dir)["status"] == "failed"
