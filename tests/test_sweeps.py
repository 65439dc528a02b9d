"""Hydra launchers, named sweeps, failure isolation, re-runs, W&B groups and W&B sweeps."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import read_metrics, read_summary, run_cli, wandb_records
from trpo_lab.app import CONF_DIR
from trpo_lab.config import register_configs
from trpo_lab.logging import TIME_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"
TINY = ["total_steps=256", "batch_steps=128", "critic.epochs=1", "eval.episodes=2"]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p.parent for p in sweep_dir.glob("*/.hydra")), key=lambda p: int(p.name))


def wandb_run_record(run_dir: Path) -> dict:
    return next(r["run"] for r in wandb_records(run_dir) if r["type"] == "run")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launcher_sweep_gives_one_complete_run_and_wandb_run_per_job(launcher, tmp_path):
    sweep_dir = tmp_path / "sweep"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else [
        "hydra.launcher.timeout_min=5"]
    result = run_cli(["-m", "algo=trpo,vpg", *TINY, f"hydra/launcher={launcher}", *extra,
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 completed" in result.stdout
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    overrides = [yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    assert sorted(o[0] for o in overrides) == ["algo=trpo", "algo=vpg"]
    assert overrides[0][1:] == overrides[1][1:] == TINY
    groups = set()
    for job in jobs:
        assert read_summary(job)["status"] == "completed"
        assert len(read_metrics(job)) == 2
        run = wandb_run_record(job)
        algo = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["algo"]["name"]
        assert run["job_type"] == algo
        assert run["tags"] == [f"algo={algo}"]  # the swept value only
        groups.add(run["run_group"])
    assert len(groups) == 1
    assert groups.pop().startswith("sweep-")


def test_a_failing_job_is_isolated_and_the_exit_code_says_so(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["-m", "algo.delta=0.01,-1", *TINY, "logger=none",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 1
    assert "1 completed, 1 failed" in result.stdout
    good, bad = job_dirs(sweep_dir)
    assert read_summary(good)["status"] == "completed"
    failed = read_summary(bad)
    assert failed["status"] == "failed" and "algo.delta" in failed["error"]


def test_rerunning_a_finished_sweep_does_no_training(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "seed=0,1", *TINY, "logger=none", f"hydra.sweep.dir={sweep_dir}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    before = {j: (j / "metrics.csv").read_bytes() for j in job_dirs(sweep_dir)}
    mtimes = {j: (j / "metrics.csv").stat().st_mtime_ns for j in before}
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0
    assert again.stdout.count("already completed") == 2
    for job, content in before.items():
        assert (job / "metrics.csv").read_bytes() == content
        assert (job / "metrics.csv").stat().st_mtime_ns == mtimes[job]


def test_rerunning_resumes_an_interrupted_job_from_its_checkpoint(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "seed=0,1", "total_steps=512", "batch_steps=128", "checkpoint.every=1",
            "eval.episodes=0", "logger=none", f"hydra.sweep.dir={sweep_dir}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    job = job_dirs(sweep_dir)[1]
    complete = read_metrics(job)
    # simulate a preempted job: summary says interrupted after 2 of 4 updates
    import torch

    from trpo_lab.train import CHECKPOINT

    reference = tmp_path / "reference"
    assert run_cli(["seed=1", "total_steps=256", "batch_steps=128", "checkpoint.every=1",
                    "eval.episodes=0", "logger=none", f"hydra.run.dir={reference}"],
                   cwd=tmp_path).returncode == 0
    (job / CHECKPOINT).write_bytes((reference / CHECKPOINT).read_bytes())
    (job / "metrics.csv").write_text((reference / "metrics.csv").read_text())
    summary = read_summary(job) | {"status": "interrupted", "iterations": 2}
    (job / "summary.json").write_text(json.dumps(summary))
    assert torch.load(job / CHECKPOINT, weights_only=False)["iteration"] == 2
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0
    resumed = read_metrics(job)
    assert resumed["iteration"].tolist() == [0, 1, 2, 3]
    timeless = TIME_COLUMNS
    assert resumed.drop(columns=timeless).equals(complete.drop(columns=timeless))


QUICK_JOBS = {"delta": 2 * 6 * 2, "baselines": 5 * 3 * 2, "gae": 4 * 6 * 2, "penalty": 5 * 2 * 2,
              "probes": 2 * 2, "samplers": 2 * 2 * 2}


@pytest.mark.parametrize("name", sorted(QUICK_JOBS))
def test_named_sweep_quick_variant_runs_every_job(name, tmp_path):
    sweep_dir = tmp_path / name
    result = run_cli(["--config-dir", str(SWEEPS), "--config-name", name, "+scale=quick",
                      "logger=none", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == QUICK_JOBS[name]
    assert f"{QUICK_JOBS[name]} completed" in result.stdout
    overrides = {tuple(yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()))
                 for j in jobs}
    assert len(overrides) == len(jobs)  # distinct
    for job in jobs:
        metrics = read_metrics(job)
        assert len(metrics) == 4 and metrics["kl/mean"].notna().all()
        if name == "probes":  # probe.every=10: update 0 of the 4 is probed
            probes = pd.read_csv(job / "probes.csv")
            assert probes["iteration"].unique().tolist() == [0]
            assert set(probes["probe"]) == {"landscape", "gradient"}


def test_named_sweeps_compose_with_their_documented_grids(tmp_path):
    result = run_cli(["--config-dir", str(SWEEPS), "--config-name", "delta", "--cfg", "hydra"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hydra_cfg = yaml.safe_load(result.stdout)["hydra"]
    params = hydra_cfg["sweeper"]["params"]
    assert params["algo.delta"] == "0.001,0.003,0.01,0.03,0.1,0.3"
    assert params["seed"] == "range(5)"
    assert params["+setting"] == "garnet_exact,cartpole"
    assert hydra_cfg["launcher"]["_target_"].endswith("JoblibLauncher")
    assert hydra_cfg["launcher"]["n_jobs"] == 2
    assert hydra_cfg["mode"] == "MULTIRUN"


def compose_hydra(*overrides: str):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_slurm_launcher_config_composes():
    launcher = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=cpu").hydra.launcher
    assert launcher._target_ == "hydra_plugins.trpo_lab_launchers.slurm_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.cpus_per_task, launcher.array_parallelism) == (
        "cpu", 1, 256)
    assert launcher.max_num_timeout == 3
    assert launcher.additional_parameters == {"requeue": True}


def test_ray_launcher_configs_start_ray_or_connect_without_an_object_store_size():
    local = compose_hydra("hydra/launcher=ray_local").hydra.launcher
    cluster = compose_hydra("hydra/launcher=ray_cluster").hydra.launcher
    for launcher in (local, cluster):
        assert launcher._target_ == "hydra_plugins.trpo_lab_launchers.ray_launcher.RayLauncher"
        assert launcher.ray.remote == {"num_cpus": 1}
    assert local.ray.init.address is None
    assert cluster.ray.init == {"address": "auto"}  # Ray refuses anything more when connecting


@pytest.mark.parametrize("sweep_dir", ["multirun/plain", "it's a dir = \\odd", "b\\'s\\"])
def test_pinned_sweep_dir_is_absolute_in_the_config_and_in_the_jobs_overrides(
        sweep_dir, tmp_path, monkeypatch):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from trpo_lab.cluster import pin_sweep_dir

    monkeypatch.chdir(tmp_path)
    cfg = compose_hydra("hydra.sweep.dir=x", "seed=1")
    cfg.hydra.sweep.dir = sweep_dir
    assert pin_sweep_dir(cfg) == tmp_path / sweep_dir
    assert cfg.hydra.sweep.dir == str(tmp_path / sweep_dir)
    overrides = [o for o in cfg.hydra.overrides.hydra if o.startswith("hydra.sweep.dir=")]
    assert len(overrides) == 1  # the command line's own hydra.sweep.dir=x is replaced
    parsed = OverridesParser.create().parse_overrides(overrides)[0]
    assert parsed.value() == str(tmp_path / sweep_dir)


def test_a_sweep_whose_jobs_write_outside_its_dir_reports_no_jobs_and_fails(tmp_path):
    result = run_cli(["-m", "seed=0,1", *TINY, "logger=none", "hydra.sweep.dir=sweep",
                      "hydra.sweep.subdir=../elsewhere/${hydra.job.num}"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "trpo-lab sweep sweep: no jobs" in result.stdout
    assert "no job wrote a run directory under sweep" in result.stderr
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["0", "1"]


def test_a_launcher_that_cannot_submit_is_a_failed_sweep_not_a_refused_config(tmp_path):
    # no sbatch on PATH: the Slurm launcher raises while submitting
    result = run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "seed=0,1",
                      *TINY, "logger=none", "hydra.sweep.dir=sweep"], cwd=tmp_path,
                     env={"PATH": str(tmp_path / "no-bin")})
    assert result.returncode == 1, result.stderr[-2000:]
    assert "trpo-lab: sweep failed: the Slurm launcher failed:" in result.stderr
    assert "srun" in result.stderr.splitlines()[-1]  # submitit: "Could not detect srun ..."


def test_the_cluster_tests_slow_env_trains_like_cartpole(tmp_path):
    """tests.cluster_envs:SlowCartPole-v1, the env of the cluster tests' jobs, through
    gymnasium's ``module:EnvId`` (the job imports the module): CartPole-v1's dynamics without
    its numpy vector entry point, so the training batches and updates are CartPole-v1's exactly
    (evaluation episodes are paired differently without the vector entry point)."""
    plain, custom = tmp_path / "plain", tmp_path / "custom"
    assert run_cli([*TINY, "logger=none", f"hydra.run.dir={plain}"], cwd=tmp_path,
                   env={"PYTHONPATH": str(ROOT)}).returncode == 0
    result = run_cli([*TINY, "logger=none", "env.id=tests.cluster_envs:SlowCartPole-v1",
                      f"hydra.run.dir={custom}"], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert read_summary(custom)["status"] == "completed"
    got, want = read_metrics(custom), read_metrics(plain)
    training = ["env_steps", "rollout/return_mean", "rollout/episodes", "kl/mean",
                "policy/entropy", "surrogate/improvement", "value/loss"]
    pd.testing.assert_frame_equal(got[training], want[training])


@pytest.mark.parametrize("launcher", ["slurm", "ray_cluster"])
def test_named_sweeps_compose_with_the_cluster_launchers(launcher, tmp_path):
    extra = ["hydra.launcher.partition=cpu"] if launcher == "slurm" else []
    result = run_cli(["--config-dir", str(SWEEPS), "--config-name", "delta",
                      f"hydra/launcher={launcher}", *extra, "--cfg", "hydra"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert config["_target_"].startswith("hydra_plugins.trpo_lab_launchers.")
    assert config["n_jobs"] == 2  # the sweep's joblib setting: accepted, and ignored
    if launcher == "slurm":
        from hydra_plugins.trpo_lab_launchers.slurm_launcher import SlurmLauncher

        params = {k: v for k, v in config.items() if k != "_target_"}
        assert "n_jobs" not in SlurmLauncher(**params).params  # never reaches sbatch


def test_wandb_sweep_specs_are_shipped():
    assert {p.stem for p in (SWEEPS / "wandb").glob("*.yaml")} >= {"delta", "baselines"}


@pytest.mark.parametrize("spec", sorted((SWEEPS / "wandb").glob("*.yaml")))
def test_wandb_sweep_commands_built_by_wandb_are_accepted_by_the_app(spec, tmp_path):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    config = yaml.safe_load(spec.read_text())
    grid = {k: v["values"] if "values" in v else [v["value"]]
            for k, v in config["parameters"].items()}
    point = dict(zip(grid, next(itertools.product(*grid.values()))))
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
    # the macros wandb's agent adds before substituting (wandb_agent.Agent._command_run)
    args |= {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [config["program"]]}
    command = []
    for chunk in create_sweep_command(list(config["command"])):
        if str(chunk).startswith("${") and str(chunk).endswith("}"):
            command += args[chunk[2:-1]]
        else:
            command.append(str(chunk))
    assert command[:4] == ["/usr/bin/env", "python", "-m", "trpo_lab"]
    run_dir = tmp_path / "run"
    result = run_cli([*command[4:], *TINY, "logger=none", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    for key, value in point.items():
        node = saved
        for part in key.split("."):
            node = node[part]
        assert (node["name"] if isinstance(node, dict) else node) == value  # group or value


# --------------------------------------------- hydra/launcher=slurm with group_runs (no cluster)
class _Loader:
    """A stand-in for Hydra's config loader: composes a job's config as the sweep does."""

    def load_sweep_config(self, config, overrides):
        return compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                             *overrides)


def test_slurm_group_runs_plans_one_array_element_per_group_in_job_order():
    from types import SimpleNamespace

    from hydra_plugins.trpo_lab_launchers.slurm_launcher import SlurmLauncher

    config = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                           "hydra.launcher.group_runs=true", "hydra.launcher.max_group=2")
    assert (config.hydra.launcher.group_runs, config.hydra.launcher.max_group) == (True, 2)
    params = {k: v for k, v in config.hydra.launcher.items() if k != "_target_"}
    launcher = SlurmLauncher(**params)
    assert "group_runs" not in launcher.params and "max_group" not in launcher.params  # sbatch
    launcher.config, launcher.hydra_context = config, SimpleNamespace(config_loader=_Loader())
    jobs = [["seed=0"], ["seed=1", "algo.delta=0.02"], ["seed=2"], ["batch_steps=128"],
            ["seed=3", "gamma=0.9"], ["seed=4"]]
    # seeds/deltas/gammas group (2 a group); another batch size is an element of its own
    assert launcher._elements(jobs, 0) == [[0, 1], [2, 4], [3], [5]]
    launcher.max_group = 16
    assert launcher._elements(jobs, 0) == [[0, 1, 2, 4, 5], [3]]
    launcher.group_runs = False
    assert launcher._elements(jobs, 0) is None  # one element per job, as without grouping


def test_slurm_wait_maps_each_array_element_back_to_its_jobs(tmp_path):
    """A grouped element returns one JobReturn per job; one that raised fails all its jobs;
    the sweep gets one JobReturn per job, in job order."""
    from types import SimpleNamespace

    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from trpo_lab.cluster import SlurmWait, forget_launcher_reports, launcher_outcomes

    class Job:
        def __init__(self, job_id, value):
            self.job_id, self.value = job_id, value
            self.paths = SimpleNamespace(result_pickle=tmp_path / "result.pkl",
                                         stderr=tmp_path / f"{job_id}.err")

        def results(self):
            if isinstance(self.value, Exception):
                raise self.value
            return [self.value]

    (tmp_path / "result.pkl").write_bytes(b"")
    done = [JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED, _return_value="completed"),
            JobReturn(overrides=["seed=2"], status=JobStatus.FAILED,
                      _return_value=RuntimeError("boom"))]
    lone = JobReturn(overrides=["seed=1"], status=JobStatus.COMPLETED, _return_value="completed")
    jobs = [Job("7_0", done), Job("7_1", [lone]), Job("7_2", RuntimeError("no python"))]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path),
                                                   "subdir": "${hydra.job.num}"}}})
    launcher = SimpleNamespace(config=config, poll_s=1e6, lost_after_s=30.0)
    forget_launcher_reports()
    overrides = [[f"seed={i}"] for i in range(5)]
    returns = SlurmWait(launcher, jobs, overrides, 0, [[0, 2], [1], [3, 4]]).run()
    assert [r.return_value for r in returns] == ["completed", "completed", "failed", "failed",
                                                "failed"]
    assert [r.overrides for r in returns[2:]] == [["seed=2"], ["seed=3"], ["seed=4"]]
    outcomes = launcher_outcomes()
    assert sorted(int(p.name) for p in outcomes) == [2, 3, 4]
    assert outcomes[tmp_path / "2"].detail == "Slurm job 7_0: RuntimeError: boom"
    for job in (3, 4):  # the element's failure is each of its jobs'
        assert outcomes[tmp_path / str(job)].detail.startswith(
            "Slurm job 7_2 raised outside the run: RuntimeError: no python")
    forget_launcher_reports()


def test_slurm_signals_settle_a_group_then_leave_the_job_to_be_requeued(monkeypatch, tmp_path,
                                                                      capsys):
    import signal

    from trpo_lab.cluster import SlurmSignals
    from trpo_lab.train import StopSignal

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    runs = [({"status": "interrupted", "iterations": 5, "updates_planned": 16}, tmp_path / "0"),
            ({"status": "interrupted", "iterations": 5, "updates_planned": 16}, tmp_path / "1"),
            ({"status": "completed", "iterations": 16, "updates_planned": 16}, tmp_path / "2")]
    slurm = SlurmSignals(StopSignal())
    assert slurm.active
    assert slurm.settle(runs) == ["interrupted", "interrupted", "completed"]  # no signal
    slurm.received = signal.SIGTERM
    with pytest.raises(SystemExit) as exit_:
        slurm.settle(runs)
    assert exit_.value.code == 128 + signal.SIGTERM
    assert "SIGTERM from Slurm (requeue, preemption or scancel): 2 runs checkpointed after 5 " \
           "of 16 updates; the job ends without a result" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        slurm.settle(runs[:1])
    assert ": checkpointed after 5 of 16 updates;" in capsys.readouterr().err  # a lone run
    assert slurm.settle(runs[2:]) == ["completed"]  # nothing to resume: the job returns
