"""A run says where it writes, records what it ran (the env id of a custom env), trains at
least total_steps, and named sweeps run from any directory."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.conftest import (
    clean_env,
    compose_typed,
    read_metrics,
    read_summary,
    run_cli,
    wandb_records,
)
from trpo_lab.config import env_label, planned_updates

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["batch_steps=128", "critic.epochs=1", "eval.episodes=2", "eval.heldout_episodes=2",
         "eval.min_differing=0"]  # 2 pairs: no adaptive rounds (Acrobot: 1.2M steps with them)


def test_a_run_says_where_it_writes_at_start_and_end_off_a_terminal(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["total_steps=300", *SMALL, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()  # captured: stdout is not a terminal
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = read_summary(run_dir)["wandb_run_id"]
    planned = f"{run_dir}/wandb/offline-run-*-{run_id}"
    summary = read_summary(run_dir)
    assert lines == [
        f"trpo-lab: run directory {run_dir}",
        "trpo-lab: training 3 updates x 128 steps = 384 env steps (total_steps=300 rounded up "
        "to whole batches)",
        f"trpo-lab: W&B: logging offline to {planned}; upload later with: wandb sync {planned}",
        f"trpo-lab: completed after 3 updates (384 env steps); results in {run_dir}",
        f"trpo-lab: final return {summary['final_return_mean']:.2f} (mean of the last batch's "
        f"episodes); J {summary['final_true_J']:.2f} (+/- {summary['final_true_J_se']:.2g} SE; "
        f"true/J of the last evaluated update)",
        f"trpo-lab: figures: python -m analysis.figures {run_dir} --out {run_dir / 'figures'}",
        f"trpo-lab: W&B offline run {offline}; upload with: wandb sync {offline}",
    ]
    assert offline.name.endswith(run_id)
    assert read_summary(run_dir)["wandb_mode"] == "offline"


def test_total_steps_rounds_up_to_whole_batches():
    assert planned_updates(compose_typed()) == 49  # the default: 49 x 2048 = 100352 >= 100000
    assert planned_updates(compose_typed("total_steps=20000")) == 10  # 20480, not 18432
    assert planned_updates(compose_typed("total_steps=4096", "batch_steps=2048")) == 2


def test_a_run_trains_at_least_total_steps(tmp_path):
    from tests.conftest import train_in_process

    metrics = train_in_process(tmp_path, "total_steps=300", *SMALL, "eval.episodes=0")
    assert metrics["env_steps"].tolist() == [128, 256, 384]
    summary = read_summary(tmp_path)
    assert summary["env_steps"] == 384 >= 300 and summary["updates_planned"] == 3


def test_a_custom_env_is_recorded_by_its_id(tmp_path):
    from analysis.load import load_run_index

    run_dir = tmp_path / "run"
    result = run_cli(["env=custom", "env.id=Acrobot-v1", "total_steps=256", *SMALL,
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_summary(run_dir)["env"] == "Acrobot-v1"
    run = next(r["run"] for r in wandb_records(run_dir) if r["type"] == "run")
    assert run["display_name"].startswith("trpo-Acrobot-v1-seed0-")
    index = load_run_index(run_dir)
    assert list(index["env"]) == ["Acrobot-v1"] and list(index["env_id"]) == ["Acrobot-v1"]


def test_env_label_is_the_config_name_except_for_custom_envs():
    assert env_label("cartpole", "CartPole-v1") == "cartpole"
    assert env_label("garnet", "trpo_lab/Garnet-v0") == "garnet"
    assert env_label("custom", "Acrobot-v1") == "Acrobot-v1"
    assert env_label("custom", None) == "custom"


def sweep_command(*args: str) -> list[str]:
    """``trpo-lab-sweep ARGS`` through the function its console script calls."""
    code = "import sys; sys.argv[0] = 'trpo-lab-sweep'; from trpo_lab.app import sweep_main; " \
           "sweep_main()"
    return [sys.executable, "-c", code, *args]


def test_named_sweep_runs_from_any_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    one_job = ["hydra.sweeper.params.gamma=0.9", "hydra.sweeper.params.gae_lambda=0.9",
               "hydra.sweeper.params.seed=0", "hydra.launcher.n_jobs=1"]
    result = subprocess.run(sweep_command("gae", "+scale=quick", "logger=none", *one_job),
                            cwd=elsewhere, env=clean_env({"WANDB_MODE": "offline"}),
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (elsewhere / "multirun").glob("gae-*")  # named like the repository form
    assert "1 completed" in result.stdout
    assert len(read_metrics(sweep_dir / "0")) == 4  # +scale=quick: 4 updates
    overrides = yaml.safe_load((sweep_dir / "0" / ".hydra" / "overrides.yaml").read_text())
    assert sorted(overrides) == sorted(["gamma=0.9", "gae_lambda=0.9", "seed=0",
                                        "+scale=quick", "logger=none"])


def test_sweep_command_lists_the_sweeps_and_refuses_unknown_ones(tmp_path):
    listed = subprocess.run(sweep_command("--list"), cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0
    names = {p.stem for p in (ROOT / "sweeps").glob("*.yaml")}
    assert {line.split()[0] for line in listed.stdout.splitlines()[2:]} == names
    unknown = subprocess.run(sweep_command("deltaa"), cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("trpo-lab: error: unknown sweep 'deltaa': did you mean "
                                      "delta? named sweeps: " + ", ".join(sorted(names)))


def test_sweep_command_is_installed_and_the_repository_form_still_composes(tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["trpo-lab-sweep"] == "trpo_lab.cli:sweep_main"
    result = run_cli(["--config-dir", "sweeps", "--config-name", "delta", "--cfg", "hydra"],
                     cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["hydra"]["job"]["config_name"] == "delta"
