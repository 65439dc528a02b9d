"""Shared helpers: run the real ``trpo-lab`` command in a subprocess, read its outputs."""

# ruff: noqa: E402  (the environment variable below must be set before numpy is imported)
from __future__ import annotations

import os

# One BLAS thread, as the trpo-lab command has it (trpo_lab/__init__.py), for the runs trained
# in the test process: a multi-threaded OpenBLAS makes their small products about 2x slower,
# more with one pytest worker per core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

TINY = ["total_steps=256", "batch_steps=128", "critic.epochs=1", "eval.episodes=2",
        "checkpoint.every=1"]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment without W&B credentials or its W&B service address
    (an in-process W&B run in the test session must not host the subprocesses' runs)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WANDB_API_KEY", "WANDB_SERVICE") and not k.startswith("WANDB_SERVICE")}
    return {**env, **extra}


def run_cli(args: list[str], cwd: Path, timeout: float = 180,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = clean_env({"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "trpo_lab", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def run_in_process(args: list[str]) -> int:
    """``trpo-lab ARGS`` in this process (``app.main``, as the console script calls it); its
    exit code."""
    from trpo_lab import app

    old_argv, sys.argv = sys.argv, ["trpo-lab", *args]
    app._State.task_started = False
    try:
        app.main()
        return 0
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv = old_argv


def wait_for_rows(run_dir: Path, rows: int, proc: subprocess.Popen, timeout: float = 120):
    """Wait until ``proc`` has written more than ``rows`` lines of metrics.csv (header
    included); fails if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "metrics.csv"
        if path.exists() and path.read_text().count("\n") > rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError


def read_metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv")


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _wandb_inspect(run_dir: Path, *flags: str) -> str:
    """``wandb leet inspect --json`` on the run's offline .wandb file: the real client's view."""
    wandb_file = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    out = subprocess.run(["wandb", "leet", "inspect", "--json", *flags, str(wandb_file)],
                         capture_output=True, text=True, timeout=120, check=True,
                         stdin=subprocess.DEVNULL)
    return out.stdout


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline .wandb file, read back by the real wandb client."""
    return [json.loads(line) for line in _wandb_inspect(run_dir).splitlines() if line.strip()]


def wandb_summary(run_dir: Path) -> dict:
    """The run's W&B summary as the real wandb client reads it back."""
    return json.loads(_wandb_inspect(run_dir, "--summary"))["summary"]


def wandb_history(run_dir: Path) -> list[dict]:
    rows = []
    for record in wandb_records(run_dir):
        if record.get("type") == "history":
            rows.append(record["history"]["item"])
    return rows


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def compose_typed(*overrides: str):
    """The typed, validated config the app would build from these overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trpo_lab.app import CONF_DIR
    from trpo_lab.config import register_configs, to_typed, validate

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_typed(compose(config_name="config", overrides=list(overrides)))
    validate(cfg)
    return cfg


def train_in_process(run_dir: Path, *overrides: str) -> pd.DataFrame:
    """Train with the real Trainer (no W&B), return metrics.csv as a DataFrame."""
    from trpo_lab.train import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose_typed("logger=none", "progress=false", *overrides)
    Trainer(cfg, run_dir).run()
    return read_metrics(run_dir)
