"""Sweeps through a real single-node Slurm cluster and a real local Ray cluster.

Start them with ``.ci/slurm-up.sh`` and ``.ci/ray-up.sh`` (``.ci/run`` does, then runs
``pytest -m cluster``), and point the tests at them with ``TRPO_LAB_TEST_SLURM_CONF`` (the test
cluster's slurm.conf) and ``TRPO_LAB_TEST_RAY_ADDRESS`` (HOST:PORT; ``source STATE_DIR/env`` of
ray-up.sh sets it with the Ray variables a driver of that cluster needs). Without them every
test here is skipped, so a plain ``pytest`` passes on a laptop; with
``TRPO_LAB_REQUIRE_CLUSTERS=1`` a missing cluster is a failure instead. The Slurm tests requeue,
preempt and time out jobs of the test cluster (partitions ``debug`` and ``urgent``): never point
them at a real cluster.

Jobs train CartPole through ``tests.cluster_envs:SlowCartPole-v1``, which sleeps in every step:
long enough to be interrupted mid-run, at almost no CPU. Every interrupted job must end
``completed`` with metrics equal to an uninterrupted local run of the same seed. Slurm holds a
requeued job about 2 minutes (BeginTime); the tests, acting as the cluster's admin, release it
with ``scontrol update StartTime=now`` after checking that the sweep command is still waiting.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import clean_env, read_metrics, read_summary, run_cli, wandb_records

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
TIMELESS = ["time/wall_s", "time/sps", "time/eval_s"]
REQUIRE = os.environ.get("TRPO_LAB_REQUIRE_CLUSTERS") == "1"
# 16 updates of 256 CartPole steps; no evaluation episodes, so the sleep is all the waiting
RUN = ["env.id=tests.cluster_envs:SlowCartPole-v1", "total_steps=4096", "batch_steps=256",
       "eval.episodes=0", "eval.heldout_episodes=0", "checkpoint.every=4", "critic.epochs=2"]
QUICK = ["total_steps=1024", "batch_steps=256", "eval.episodes=0", "eval.heldout_episodes=0",
         "critic.epochs=2"]
WAIT_S = 300  # bound of every wait on the cluster; the paths below take 1-3 minutes


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (TRPO_LAB_REQUIRE_CLUSTERS=1)")
    pytest.skip(reason)


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p.parent for p in sweep_dir.glob("*/.hydra")), key=lambda p: int(p.name))


def timeless(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics.drop(columns=[c for c in TIMELESS if c in metrics.columns])


def wandb_run_ids(run_dir: Path) -> set[str]:
    return {p.name.split("-")[-1] for p in (run_dir / "wandb").glob("offline-run-*")}


def assert_same_run(job: Path, reference: Path) -> None:
    """Completed, every update exactly once, metrics equal to the uninterrupted run's."""
    assert read_summary(job)["status"] == "completed"
    got, want = read_metrics(job), read_metrics(reference)
    assert got["iteration"].tolist() == list(range(len(want)))
    pd.testing.assert_frame_equal(timeless(got), timeless(want))


class Sweep:
    """A ``trpo-lab -m`` command running in the background, its output in files."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.out, self.err = cwd / "sweep.out", cwd / "sweep.err"
        self.started = time.monotonic()
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trpo_lab", "-m", *args], cwd=cwd, stdout=out,
                stderr=err, stdin=subprocess.DEVNULL, text=True,
                env=clean_env({"WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **env}))

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def running(self) -> bool:
        return self.proc.poll() is None

    def array_id(self) -> str:
        match = wait_until(lambda: re.search(r"as Slurm array job (\d+)", self.stderr()),
                           "the sweep to submit its array job", self)
        return match.group(1)

    def finish(self, timeout: float = WAIT_S) -> int:
        code = self.proc.wait(timeout=timeout)
        print(f"sweep took {time.monotonic() - self.started:.0f} s; stderr tail:\n"
              f"{self.stderr()[-3000:]}")
        return code

    def kill(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait()


def wait_until(condition, what: str, sweep: Sweep | None = None, timeout: float = WAIT_S,
               every: float = 0.5):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds or
    when the sweep command ended before (its output in the message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if sweep is not None and not sweep.running():
            raise AssertionError(f"the sweep ended (exit {sweep.proc.returncode}) while waiting "
                                 f"for {what}:\n{sweep.stdout()}\n{sweep.stderr()[-3000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def rows(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return max(path.read_text().count("\n") - 1, 0) if path.exists() else 0


# ----------------------------------------------------------------------------- Slurm


class Slurm:
    """The test cluster's commands, with its slurm.conf."""

    def __init__(self, conf: str):
        self.env = {"SLURM_CONF": conf, "PYTHONPATH": str(ROOT)}

    def run(self, *command: str) -> str:
        out = subprocess.run(command, env={**os.environ, **self.env}, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"{' '.join(command)}: {out.stderr}"
        return out.stdout

    def elements(self, array_id: str) -> dict[str, tuple[str, str]]:
        """(state, reason) of each element of an array job, e.g. {"12_0": ("PENDING",
        "BeginTime")}; a one-job array is listed as "12"."""
        out = self.run("squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
                       f"--jobs={array_id}")
        return {element: (state, reason) for element, state, reason
                in (line.strip().split("|") for line in out.splitlines())}

    def release_requeued(self, sweep: Sweep, array_id: str) -> dict[str, int]:
        """Until the sweep command ends: whenever an element of the array is requeued
        (PENDING, held by BeginTime) while the command still waits, let it start now instead
        of in about 2 minutes. Returns how often each element was released."""
        released: dict[str, int] = {}
        deadline = time.monotonic() + WAIT_S
        while sweep.running():
            assert time.monotonic() < deadline, f"the sweep still runs after {WAIT_S} s"
            for element, state in self.elements(array_id).items():
                if state == ("PENDING", "BeginTime") and sweep.running():
                    self.run("scontrol", "update", f"JobId={element}", "StartTime=now")
                    released[element] = released.get(element, 0) + 1
                    wait_until(lambda e=element: self.elements(array_id).get(e) != (
                        "PENDING", "BeginTime"), f"{element} to start again", timeout=120)
            time.sleep(1)
        return released

    def cancel_array(self, array_id: str) -> None:
        subprocess.run(["scancel", array_id], env={**os.environ, **self.env},
                       capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def slurm() -> Slurm:
    conf = os.environ.get("TRPO_LAB_TEST_SLURM_CONF")
    if not conf:
        unavailable("no Slurm test cluster: start one with .ci/slurm-up.sh and set "
                    "TRPO_LAB_TEST_SLURM_CONF to its slurm.conf (see .ci/run)")
    if shutil.which("sbatch") is None:
        unavailable("Slurm's commands are not installed (apt-get install slurm-wlm munge)")
    cluster = Slurm(conf)
    try:
        ping = cluster.run("scontrol", "ping")
    except AssertionError as error:
        ping = str(error)
    if "UP" not in ping:
        unavailable(f"the Slurm test cluster of {conf} does not answer: {ping.strip()}")
    return cluster


@pytest.fixture
def slurm_sweep(slurm, tmp_path):
    """Start sweeps through the test cluster's debug partition; cancel what is left after."""
    started: list[Sweep] = []

    def start(*args: str, launcher: list[str] | None = None) -> Sweep:
        sweep = Sweep(["hydra/launcher=slurm", "hydra.launcher.partition=debug",
                       *(launcher or []), *args], tmp_path, slurm.env)
        started.append(sweep)
        return sweep

    yield start
    for sweep in started:
        sweep.kill()
        match = re.search(r"as Slurm array job (\d+)", sweep.stderr())
        if match:
            slurm.cancel_array(match.group(1))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, Path]:
    """Local runs of seeds 0 and 1 with the jobs' settings (the env without its sleep)."""
    base = tmp_path_factory.mktemp("uninterrupted")
    env = {"PYTHONPATH": str(ROOT)}
    procs = {seed: subprocess.Popen(
        [sys.executable, "-m", "trpo_lab", *RUN, f"seed={seed}", "logger=none",
         f"hydra.run.dir={base / str(seed)}"], cwd=base, env=clean_env(env),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for seed in (0, 1)}
    for proc in procs.values():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return {seed: base / str(seed) for seed in procs}


def slow(step_sleep_s: float) -> list[str]:
    return [*RUN, f"+env.kwargs.step_sleep_s={step_sleep_s}"]


def test_slurm_sweep_completes_every_job_in_its_run_dir_with_its_wandb_run(
        slurm_sweep, tmp_path):
    local = tmp_path / "local"
    assert run_cli(["-m", "seed=0,1", *QUICK, "logger=none", f"hydra.sweep.dir={local}"],
                   cwd=tmp_path).returncode == 0
    sweep = slurm_sweep("seed=0,1", *QUICK, "hydra.sweep.dir=multirun/slurm")  # relative
    assert sweep.finish() == 0, sweep.stderr()
    sweep_dir = tmp_path / "multirun" / "slurm"
    assert f"trpo-lab sweep {sweep_dir}: 2 completed" in sweep.stdout()
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1"]
    run_ids = set()
    for job, reference in zip(jobs, job_dirs(local)):
        assert_same_run(job, reference)
        run = next(r["run"] for r in wandb_records(job) if r["type"] == "run")
        assert run["tags"] == [f"seed={job.name}"]
        assert run["run_id"] == read_summary(job)["wandb_run_id"]
        run_ids.add(run["run_id"])
        assert (job / ".hydra" / "overrides.yaml").exists()
    assert len(run_ids) == 2
    # one Slurm array job, its logs beside the runs
    assert len({p.name.split("_")[0] for p in (sweep_dir / ".submitit").glob("[0-9]*")}) == 1


VINE = ["algo.sampler=vine", "algo.vine.states=8", "algo.vine.horizon=16", "total_steps=768",
        "batch_steps=256", "eval.episodes=4", "eval.heldout_episodes=2", "critic.epochs=2"]


def test_slurm_vine_job_equals_its_local_run_and_counts_its_branch_steps(slurm_sweep,
                                                                         tmp_path):
    """One vine run (CartPole, 3 updates, 8 rollout states with both actions branched for 16
    steps) as a Slurm job: completed, its metrics equal to the same run trained locally, every
    update's env steps the trunk's 256 plus 2 x 8 branches of at most 16 steps."""
    local = tmp_path / "local"
    assert run_cli(["-m", "seed=0", *VINE, "logger=none", f"hydra.sweep.dir={local}"],
                   cwd=tmp_path).returncode == 0
    sweep = slurm_sweep("seed=0", *VINE, "hydra.sweep.dir=vine")
    assert sweep.finish() == 0, sweep.stderr()
    sweep_dir = tmp_path / "vine"
    assert f"trpo-lab sweep {sweep_dir}: 1 completed" in sweep.stdout()
    (job,) = job_dirs(sweep_dir)
    assert_same_run(job, job_dirs(local)[0])
    metrics = read_metrics(job)
    assert len(metrics) == 3
    steps = metrics["env_steps"].diff().fillna(metrics["env_steps"].iloc[0])
    assert (steps > 256).all() and (steps <= 256 + 2 * 8 * 16).all(), steps.tolist()
    assert (metrics["trpo/accepted"] == 1).any()
    assert metrics[["surrogate/improvement", "true/improvement", "kl/mean"]].notna().all().all()


def test_slurm_failing_job_is_isolated_and_the_sweep_fails(slurm_sweep):
    sweep = slurm_sweep("algo.delta=0.01,-1", *QUICK, "logger=none", "hydra.sweep.dir=sweep")
    assert sweep.finish() == 1
    assert "1 completed, 1 failed" in sweep.stdout()
    good, bad = job_dirs(Path(sweep.out.parent / "sweep"))
    assert read_summary(good)["status"] == "completed"
    failed = read_summary(bad)
    assert failed["status"] == "failed" and "algo.delta" in failed["error"]


def submitit_logs(sweep_dir: Path) -> str:
    return "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))


def test_slurm_requeue_resumes_the_run_and_the_sweep_waits_for_it(
        slurm, slurm_sweep, uninterrupted, tmp_path):
    sweep = slurm_sweep("seed=0,1", *slow(0.01), "hydra.sweep.dir=sweep")
    array = sweep.array_id()
    job = tmp_path / "sweep" / "0"
    wait_until(lambda: rows(job) >= 3, "3 updates of job 0", sweep)
    slurm.run("scontrol", "requeue", f"{array}_0")  # SIGTERM to the running job
    released = slurm.release_requeued(sweep, array)
    assert sweep.finish() == 0
    assert "2 completed" in sweep.stdout()
    assert released == {f"{array}_0": 1}  # requeued once, the sweep waiting meanwhile
    logs = submitit_logs(tmp_path / "sweep")
    stopped_at = int(re.search(r"SIGTERM from Slurm .*: checkpointed after (\d+) of 16", logs)[1])
    assert 3 <= stopped_at < 16
    for seed in (0, 1):
        assert_same_run(tmp_path / "sweep" / str(seed), uninterrupted[seed])
    # the resumed W&B run is the same run
    assert wandb_run_ids(job) == {read_summary(job)["wandb_run_id"]}


def test_slurm_preemption_with_a_user_signal_requeues_and_completes(
        slurm, slurm_sweep, uninterrupted, tmp_path):
    sweep = slurm_sweep("seed=0,1", *slow(0.01), "logger=none", "hydra.sweep.dir=sweep")
    array = sweep.array_id()
    jobs = [tmp_path / "sweep" / str(seed) for seed in (0, 1)]
    wait_until(lambda: all(rows(job) >= 3 for job in jobs), "3 updates of both jobs", sweep)
    # a job of the higher-tier partition that needs the whole node preempts both
    slurm.run("sbatch", "--partition=urgent", "--cpus-per-task=2", "--output=/dev/null",
              "--wrap=sleep 2")
    released = slurm.release_requeued(sweep, array)
    assert sweep.finish() == 0
    assert "2 completed" in sweep.stdout()
    assert set(released) == {f"{array}_0", f"{array}_1"}, released  # both were requeued
    logs = submitit_logs(tmp_path / "sweep")
    assert logs.count("this job is preempted") >= 2  # submitit saw USR2, not a timeout
    assert "Slurm timeout/preemption signal: checkpointed after" in logs
    for seed, job in enumerate(jobs):
        assert_same_run(job, uninterrupted[seed])


def test_slurm_timeout_requeues_and_the_resumed_run_completes(
        slurm, slurm_sweep, uninterrupted, tmp_path):
    # About 94 s of training in jobs of 2 minutes. Slurm checks time limits every 30 s and sends
    # USR2 signal_delay_s (30 s) to 60 s before the limit: after 54-84 s of training in the
    # first job (a timeout for sure), and the second has more than the 10-40 s that are left.
    sweep = slurm_sweep("seed=0", *slow(0.0225), "logger=none", "hydra.sweep.dir=sweep",
                        launcher=["hydra.launcher.timeout_min=2",
                                  "hydra.launcher.signal_delay_s=30"])
    array = sweep.array_id()
    released = slurm.release_requeued(sweep, array)
    assert sweep.finish() == 0
    assert "1 completed" in sweep.stdout()
    assert 1 <= sum(released.values()) <= 3, released  # max_num_timeout
    logs = submitit_logs(tmp_path / "sweep")
    assert "this job is timed-out" in logs
    stopped_at = int(re.search(r"timeout/preemption signal: checkpointed after (\d+) of 16",
                               logs)[1])
    assert 1 <= stopped_at < 16
    assert_same_run(tmp_path / "sweep" / "0", uninterrupted[0])


def test_slurm_job_that_times_out_more_than_max_num_timeout_is_failed(slurm_sweep, tmp_path):
    # about 125 s of training in a job of 2 minutes: USR2 after 54-84 s, and no requeue left
    sweep = slurm_sweep("seed=0", *slow(0.03), "logger=none", "hydra.sweep.dir=sweep",
                        launcher=["hydra.launcher.timeout_min=2",
                                  "hydra.launcher.signal_delay_s=30",
                                  "hydra.launcher.max_num_timeout=0"])
    assert sweep.finish() == 1
    out = sweep.stdout()
    assert "1 failed" in out
    job = tmp_path / "sweep" / "0"
    summary = read_summary(job)
    assert summary["status"] == "failed"
    assert "timed-out too many times" in summary["error"]
    assert 1 <= summary["iterations"] < 16


def test_slurm_cancelled_job_is_reported_failed_instead_of_waited_for(slurm, slurm_sweep,
                                                                     tmp_path):
    sweep = slurm_sweep("seed=0,1", *slow(0.01), "logger=none", "hydra.sweep.dir=sweep")
    array = sweep.array_id()
    job = tmp_path / "sweep" / "1"
    wait_until(lambda: rows(job) >= 2, "2 updates of job 1", sweep)
    slurm.run("scancel", f"{array}_1")
    assert sweep.finish() == 1
    out = sweep.stdout()
    assert "1 completed, 1 failed" in out
    assert re.search(rf"1: failed: Slurm job {array}_1 ended without a result \(CANCELLED", out)
    assert read_summary(tmp_path / "sweep" / "0")["status"] == "completed"


def test_slurm_ctrl_c_while_jobs_wait_says_which_are_queued_and_fails(slurm, slurm_sweep,
                                                                     tmp_path):
    sweep = slurm_sweep("seed=0,1", *QUICK, "logger=none", "hydra.sweep.dir=sweep",
                        launcher=["++hydra.launcher.additional_parameters.hold=true"])
    array = sweep.array_id()
    wait_until(lambda: "PENDING (JobHeldUser)" in sweep.stderr(), "the held jobs", sweep)
    sweep.proc.send_signal(signal.SIGINT)
    assert sweep.finish(timeout=60) == 1
    out = sweep.stdout()
    assert "2 queued" in out
    for seed in (0, 1):
        assert f"{seed}: queued: Slurm job {array}_{seed} PENDING (JobHeldUser)" in out
    assert "stopped waiting" in sweep.stderr()
    assert slurm.elements(array)[f"{array}_0"][0] == "PENDING"  # the jobs are still there


# ------------------------------------------------- Slurm: groups of runs as array elements
GROUPED = ["hydra.launcher.group_runs=true"]


def element_dirs(sweep_dir: Path) -> list[str]:
    """The submitit folders of the sweep's array elements ("12_0", ...; beside them "12", the
    array's submission)."""
    return sorted(p.name for p in (sweep_dir / ".submitit").glob("[0-9]*_[0-9]*") if p.is_dir())


def test_slurm_grouped_sweep_trains_each_group_in_one_array_element(slurm, slurm_sweep,
                                                                    tmp_path):
    """Four seeds, at most three a group: two array elements, a group of three (trained
    together in one process) and one job alone; every run its own directory, W&B run and
    metrics equal to the same seed trained alone."""
    local = tmp_path / "local"
    assert run_cli(["-m", "seed=0,1,2,3", *QUICK, "logger=none", f"hydra.sweep.dir={local}"],
                   cwd=tmp_path).returncode == 0
    sweep = slurm_sweep("seed=0,1,2,3", *QUICK, "hydra.sweep.dir=sweep",
                        launcher=[*GROUPED, "hydra.launcher.max_group=3"])
    array = sweep.array_id()
    assert sweep.finish() == 0, sweep.stderr()
    sweep_dir = tmp_path / "sweep"
    assert f"trpo-lab sweep {sweep_dir}: 4 completed" in sweep.stdout()
    assert "4 jobs in 1 group(s) (3) and 1 alone: 2 array element(s)" in sweep.stderr()
    assert f"submitted 4 jobs as Slurm array job {array} of 2 element(s)" in sweep.stderr()
    assert sorted(slurm.elements(array)) == [f"{array}_0", f"{array}_1"]  # 2 elements, not 4
    assert element_dirs(sweep_dir) == [f"{array}_0", f"{array}_1"]
    group_log = (sweep_dir / ".submitit" / f"{array}_0" / f"{array}_0_0_log.out").read_text()
    assert [int(n) for n in re.findall(r"run directory .*/sweep/(\d+)\n", group_log)] == [0, 1, 2]
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    run_ids = set()
    for job, reference in zip(jobs, job_dirs(local)):
        assert_same_run(job, reference)
        assert len(read_metrics(job)) == 4
        run = next(r["run"] for r in wandb_records(job) if r["type"] == "run")
        assert run["tags"] == [f"seed={job.name}"]
        assert run["run_id"] == read_summary(job)["wandb_run_id"]
        run_ids.add(run["run_id"])
    assert len(run_ids) == 4


def test_slurm_requeued_group_element_resumes_every_run_of_the_group(
        slurm, slurm_sweep, uninterrupted, tmp_path):
    sweep = slurm_sweep("seed=0,1", *slow(0.01), "hydra.sweep.dir=sweep", launcher=GROUPED)
    array = sweep.array_id()
    jobs = [tmp_path / "sweep" / str(seed) for seed in (0, 1)]
    wait_until(lambda: rows(jobs[0]) >= 3, "3 updates of the group", sweep)
    assert list(slurm.elements(array)) == [array]  # one element trains both runs
    slurm.run("scontrol", "requeue", array)  # SIGTERM to the group's process
    released = slurm.release_requeued(sweep, array)
    assert sweep.finish() == 0
    assert "2 completed" in sweep.stdout()
    assert released == {array: 1}
    logs = submitit_logs(tmp_path / "sweep")
    stopped_at = int(re.search(r"SIGTERM from Slurm .*: 2 runs checkpointed after (\d+) of 16",
                               logs)[1])
    assert 3 <= stopped_at < 16
    assert logs.count("resuming from iteration") == 2  # both runs, in the requeued element
    for seed, job in enumerate(jobs):
        assert_same_run(job, uninterrupted[seed])
        assert wandb_run_ids(job) == {read_summary(job)["wandb_run_id"]}  # the same W&B run


def test_slurm_preempted_group_element_is_requeued_by_submitit_and_completes(
        slurm, slurm_sweep, uninterrupted, tmp_path):
    sweep = slurm_sweep("seed=0,1", *slow(0.01), "logger=none", "hydra.sweep.dir=sweep",
                        launcher=GROUPED)
    array = sweep.array_id()
    jobs = [tmp_path / "sweep" / str(seed) for seed in (0, 1)]
    wait_until(lambda: all(rows(job) >= 3 for job in jobs), "3 updates of the group", sweep)
    slurm.run("sbatch", "--partition=urgent", "--cpus-per-task=2", "--output=/dev/null",
              "--wrap=sleep 2")
    released = slurm.release_requeued(sweep, array)
    assert sweep.finish() == 0
    assert "2 completed" in sweep.stdout()
    assert released == {array: 1}, released
    logs = submitit_logs(tmp_path / "sweep")
    assert "this job is preempted" in logs  # submitit's USR2 ...
    assert "Calling checkpoint method." in logs  # ... resubmits the element (GroupElement)
    assert re.search(r"timeout/preemption signal: 2 runs checkpointed after \d+ of 16", logs)
    for seed, job in enumerate(jobs):
        assert_same_run(job, uninterrupted[seed])


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_address() -> str:
    address = os.environ.get("TRPO_LAB_TEST_RAY_ADDRESS")
    if not address:
        unavailable("no Ray test cluster: start one with .ci/ray-up.sh STATE_DIR (in the [ray] "
                    "extra's virtual environment) and source STATE_DIR/env")
    try:
        import hydra_plugins.hydra_ray_launcher  # noqa: F401
    except ImportError:
        unavailable("the Ray extra is not installed here (pip install -e '.[ray]' in a "
                    "virtual environment of its own)")
    return address


def ray_cli(args: list[str], cwd: Path, address: str) -> subprocess.CompletedProcess:
    # a cluster on loopback only (.ci/ray-up.sh): the driver must not turn 127.0.0.1 into the
    # machine's outside address either
    return run_cli(["-m", "hydra/launcher=ray_cluster",
                    f"hydra.launcher.ray.init.address={address}", *args], cwd=cwd,
                   timeout=WAIT_S, env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})


def test_ray_cluster_sweep_writes_every_run_under_the_command_directory(ray_address, tmp_path):
    local = tmp_path / "local"
    assert run_cli(["-m", "seed=0,1", *QUICK, "logger=none", f"hydra.sweep.dir={local}"],
                   cwd=tmp_path).returncode == 0
    result = ray_cli(["seed=0,1", *QUICK, "hydra.sweep.dir=multirun/ray"], tmp_path, ray_address)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir = tmp_path / "multirun" / "ray"  # relative to the command, not to `ray start`
    assert f"trpo-lab sweep {sweep_dir}: 2 completed" in result.stdout
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1"]
    for job, reference in zip(jobs, job_dirs(local)):
        assert_same_run(job, reference)
        run = next(r["run"] for r in wandb_records(job) if r["type"] == "run")
        assert run["tags"] == [f"seed={job.name}"]
        saved = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())
        assert saved["hydra"]["sweep"]["dir"] == str(sweep_dir)


def test_ray_local_starts_ray_for_the_sweep_and_completes(ray_address, tmp_path):
    result = run_cli(["-m", "hydra/launcher=ray_local", "seed=0,1", *QUICK, "logger=none",
                      "hydra.sweep.dir=sweep"], cwd=tmp_path, timeout=WAIT_S,
                     env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray instance" in result.stderr  # not the test cluster
    assert "a Ray started here" in result.stderr
    assert f"trpo-lab sweep {tmp_path / 'sweep'}: 2 completed" in result.stdout
    assert [read_summary(j)["status"] for j in job_dirs(tmp_path / "sweep")] == ["completed"] * 2


def test_ray_failing_job_is_isolated_and_the_sweep_fails(ray_address, tmp_path):
    result = ray_cli(["algo.delta=0.01,-1", *QUICK, "logger=none", "hydra.sweep.dir=sweep"],
                     tmp_path, ray_address)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 completed, 1 failed" in result.stdout
    good, bad = job_dirs(tmp_path / "sweep")
    assert read_summary(good)["status"] == "completed"
    assert read_summary(bad)["status"] == "failed"


def test_ray_launcher_failure_is_a_failed_sweep_with_its_cause(ray_address, tmp_path):
    # Ray refuses an object store size when connecting to a running cluster
    result = ray_cli(["seed=0,1", *QUICK, "logger=none", "hydra.sweep.dir=sweep",
                      "+hydra.launcher.ray.init.object_store_memory=100000000"],
                     tmp_path, ray_address)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "trpo-lab: sweep failed: the Ray launcher failed: ValueError" in result.stderr
    assert "object_store_memory must not be provided" in result.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ray_ctrl_c_reports_the_unfinished_jobs_as_interrupted(ray_address, tmp_path,
                                                                stop_signal):
    sweep = Sweep(["hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_address}",
                   "seed=0", "total_steps=400000", "batch_steps=1024", "eval.episodes=0",
                   "eval.heldout_episodes=0", "logger=none", "hydra.sweep.dir=sweep"], tmp_path,
                  {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    try:
        wait_until(lambda: rows(tmp_path / "sweep" / "0") >= 2, "2 updates", sweep)
        sweep.proc.send_signal(signal.SIGINT)
        assert sweep.finish(timeout=60) == 1
    finally:
        sweep.kill()
    assert f"trpo-lab sweep {tmp_path / 'sweep'}: 1 interrupted" in sweep.stdout()
    assert "0: interrupted: stopped with the sweep command" in sweep.stdout()
    assert "to resume the interrupted jobs" in sweep.stderr()
