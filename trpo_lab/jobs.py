"""The job API: validate, build and train one run or a group of runs as a Hydra job.

The command line (:mod:`trpo_lab.app`), the isolated joblib workers (:mod:`trpo_lab.launcher`)
and the batched, Slurm and Ray launchers (``hydra_plugins.trpo_lab_launchers``) all import it;
it imports none of them, so the package's import graph has no cycle
(tests/test_imports.py). :class:`_State` is what a process's jobs tell the command that ran
them (exit code, failed jobs).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from trpo_lab import PROCESS_STARTED
from trpo_lab.config import ConfigError, to_typed, validate


class _State:
    task_started = False  # set once a job got past validation
    sweep_failed = False
    exit_code = 0  # of a single run that was interrupted: 128 + the signal's number
    kept_ancestor: Path | None = None  # deepest existing ancestor of the run dir before Hydra
    main_pid: int | None = None  # the process that runs main(): a sweep's own, not a worker
    job_status: dict[Path, str] = {}  # job directory -> status its job returned (this process)

    @classmethod
    def reset(cls) -> None:
        from trpo_lab.cluster import forget_launcher_reports

        cls.task_started, cls.sweep_failed, cls.exit_code, cls.kept_ancestor = \
            False, False, 0, None
        cls.job_status = {}
        forget_launcher_reports()


def record_job(job_dir: Path | None, job_return) -> None:
    """Remember what a sweep's job returned: a refused job ("failed") may have left its
    directory's summary.json as another run wrote it."""
    from hydra.core.utils import JobStatus

    if job_dir is None:
        return
    value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
    _State.job_status[Path(job_dir).absolute()] = value if isinstance(value, str) else "failed"


def _refuse(message: str) -> None:
    print(f"trpo-lab: error: {message}", file=sys.stderr)
    sys.exit(2)


def _fail(message: str) -> None:
    """A run that cannot go on (exit 1): one line, no traceback."""
    _State.task_started = True  # past the configuration: not a refusal (exit 2)
    print(f"trpo-lab: error: {message}", file=sys.stderr)
    sys.exit(1)


def sweep_group(sweep_dir: Path, config_name: str | None) -> str:
    """The W&B group of a sweep's jobs: the sweep's name and its start time.

    Named sweeps write to ``multirun/NAME-DATE_TIME``; the default layout is
    ``multirun/DATE/TIME`` (group ``sweep-DATE_TIME``).
    """
    name = config_name if config_name not in (None, "config") else "sweep"
    if sweep_dir.name.startswith(name + "-"):
        return sweep_dir.name
    return f"{name}-{'_'.join(sweep_dir.parts[-2:])}"


def _swept_keys(hc) -> set[str]:
    """Keys that the sweep varies: its sweeper params and the command line's sweep overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {k.lstrip("+~") for k in (hc.sweeper.get("params") or {})}
    try:
        sweep_overrides = OmegaConf.load(Path(hc.sweep.dir) / "multirun.yaml").hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    except (OSError, OmegaConfBaseException, hydra.errors.HydraException):
        return keys
    return keys | {o.key_or_group for o in parsed if o.is_sweep_override()}


def _sweep_identity(hc) -> tuple[str | None, list[str]]:
    """W&B group and one tag per swept value (multirun only)."""
    if hc.mode != RunMode.MULTIRUN:
        return None, []
    swept = _swept_keys(hc)
    tags = [o[:64] for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    return sweep_group(Path(hc.sweep.dir), hc.job.config_name), tags


def deepest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its deepest existing ancestor."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _only_hydra_files(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing but what Hydra writes before the job starts: the
    ``.hydra/*.yaml`` files and the job's ``*.log`` (and the lock of this process)."""
    from trpo_lab.rundir import LOCK_FILE

    for path in run_dir.rglob("*"):
        if path.is_dir():
            continue
        parts = path.relative_to(run_dir).parts
        hydra_yaml = len(parts) == 2 and parts[0] == ".hydra" and path.suffix == ".yaml"
        job_file = len(parts) == 1 and (path.suffix == ".log" or path.name == LOCK_FILE)
        if not (hydra_yaml or job_file):
            return False
    return True


def discard_refused_run_dir(run_dir: Path, kept_ancestor: Path | None) -> bool:
    """Remove the directory Hydra just made for a run whose configuration was then refused, and
    the parents it made with it, up to ``kept_ancestor`` (the deepest path that existed before
    Hydra ran). Only a directory that did not exist before and holds nothing but Hydra's own
    files is removed, so a directory holding a run, or anything else, is never touched.
    Returns whether it was removed."""
    run_dir = run_dir.absolute()
    if kept_ancestor is None or kept_ancestor not in run_dir.parents:
        return False
    if not run_dir.is_dir() or not _only_hydra_files(run_dir):
        return False
    from trpo_lab import rundir

    rundir.release(run_dir)
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:
        if parent == kept_ancestor:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
    return True


def start_lines(trainer: Any) -> list[str]:
    """What a run says when it starts, also off a terminal: its directory, a resume, what it
    trains (updates x batch_steps, and how total_steps was rounded to whole batches), and
    where its W&B run goes."""
    cfg = trainer.cfg
    lines = [f"trpo-lab: run directory {trainer.run_dir}"]
    if trainer.resumed:
        lines.append(f"trpo-lab: resuming from iteration {trainer.iteration} "
                     f"({trainer.iteration} of {trainer.updates} updates done)")
    planned_steps = trainer.updates * cfg.batch_steps
    rounded = f" (total_steps={cfg.total_steps} rounded up to whole batches)" \
        if planned_steps != cfg.total_steps else ""
    lines.append(f"trpo-lab: training {plural(trainer.updates, 'update')} x {cfg.batch_steps} "
                 f"steps = {planned_steps} env steps{rounded}")
    wandb = trainer.wandb
    if wandb is not None:
        where = wandb.planned_location()
        if wandb.mode == "offline":
            lines.append(f"trpo-lab: W&B: logging offline to {where}; upload later with: "
                         f"wandb sync {where}")
        elif wandb.mode == "online":
            lines.append(f"trpo-lab: W&B: logging online to {where} (offline if its server "
                         f"cannot be reached)")
    return lines


def plural(n: int, noun: str) -> str:
    """``1 update``, ``2 updates``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def result_line(summary: dict[str, Any], exact: bool = False) -> str | None:
    """How the run did, from summary.json: the last batch's mean return, J (true/J of the last
    evaluated update, with its SE; ``exact`` on tabular envs) and the deterministic evaluation;
    None when the run measured none of them."""
    parts = []
    if summary.get("final_return_mean") is not None:
        parts.append(f"return {summary['final_return_mean']:.2f} (mean of the last batch's "
                     f"episodes)")
    if summary.get("final_true_J") is not None:
        se = summary.get("final_true_J_se")
        spread = "exact" if exact else "SE unknown" if se is None else f"+/- {se:.2g} SE"
        parts.append(f"J {summary['final_true_J']:.2f} ({spread}; true/J of the last "
                     f"evaluated update)")
    if summary.get("final_eval_return") is not None:
        parts.append(f"deterministic return {summary['final_eval_return']:.2f} "
                     f"({plural(len(summary['final_eval_returns']), 'episode')})")
    return f"trpo-lab: final {'; '.join(parts)}" if parts else None


def end_lines(trainer: Any, summary: dict[str, Any]) -> list[str]:
    """What a run says when it ends: status, size and directory, how it did (the final return
    and J), the command that draws its figures, and its W&B run (the offline run's directory
    and the command that uploads it, or the online run's URL)."""
    lines = [f"trpo-lab: {summary['status']} after {plural(summary['iterations'], 'update')} "
             f"({summary['env_steps']} env steps); results in {trainer.run_dir}"]
    result = result_line(summary, exact=trainer.mdp is not None)
    if result is not None:
        lines.append(result)
    if summary["iterations"]:
        lines.append(f"trpo-lab: figures: python -m analysis.figures {trainer.run_dir} "
                     f"--out {trainer.run_dir / 'figures'}")
    if trainer.wandb is not None:
        local, url = trainer.wandb.location()
        if url:
            lines.append(f"trpo-lab: W&B run {url}")
        elif local:
            lines.append(f"trpo-lab: W&B offline run {local}; upload with: wandb sync {local}")
    return lines


def _say(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


@dataclasses.dataclass
class PreparedRun:
    """A job past validation with its Trainer built, not yet trained (a group of them trains
    together: :func:`train_group`)."""

    trainer: Any
    hc: Any  # the job's HydraConfig
    run_dir: Path


def run_job(cfg: DictConfig) -> str:
    """Validate, build and train one run; returns its status."""
    prepared = prepare_run(cfg)
    if isinstance(prepared, str):
        return prepared
    return train_prepared(prepared)


def prepare_run(cfg: DictConfig, in_group: bool = False) -> PreparedRun | str:
    """Validate and build one run (its Trainer), or the status of a job that ends here:
    refused, failed to build, or completed already. ``in_group``: it will train with others
    in this process (:func:`train_group`)."""
    from trpo_lab import preflight, rundir
    from trpo_lab.envs import EnvError
    from trpo_lab.policies import PolicySpaceError
    from trpo_lab.resume import ResumeMismatch
    from trpo_lab.train import (
        CHECKPOINT,
        RunWriteError,
        Trainer,
        load_resume_state,
        read_summary,
        write_summary,
    )

    job_started = time.time()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        rundir.claim(run_dir)  # a single run holds it since on_run_start
    except rundir.RunDirBusy as busy:
        return _stop_leaving_files(str(busy), hc, code=2)
    previous = read_summary(run_dir)
    try:
        typed = to_typed(cfg)
        validate(typed)
        preflight.check(typed)
        if previous is not None and previous.get("status") == "completed" and not typed.resume:
            if (run_dir / CHECKPOINT).exists():
                load_resume_state(typed, run_dir)  # the same run, or a refusal
            print(f"trpo-lab: {run_dir} already completed; skipping (resume=true reruns it)")
            return "completed"
        notes = preflight.warnings(typed)
        group, tags = _sweep_identity(hc)
        trainer = Trainer(typed, run_dir, wandb_config=OmegaConf.to_container(cfg, resolve=True),
                          group=group, tags=tags,
                          clock_origins={"process": PROCESS_STARTED, "job": job_started},
                          in_group=in_group)
        for warning in notes:  # once the env is built: a refused env says only why
            print(f"trpo-lab: warning: {warning}", file=sys.stderr)
    except ResumeMismatch as error:  # the run directory holds another run: leave it as it is
        return _stop_leaving_files(str(error), hc, code=2)
    except rundir.RunFileError as error:
        return _stop_leaving_files(str(error), hc, code=error.exit_code)
    except RunWriteError as error:
        return _stop_leaving_files(str(error), hc, code=1)
    except (ConfigError, EnvError, PolicySpaceError, OmegaConfBaseException) as error:
        message = str(error).splitlines()[0]
        if isinstance(error, MissingMandatoryValue):
            message = f"missing value for {error.full_key}: set it as an override, " \
                      f"e.g. {error.full_key}=..."
        if not multirun:
            discard_refused_run_dir(run_dir, _State.kept_ancestor)
            _refuse(message)
        write_summary(run_dir, {"status": "failed", "error": message})
        print(f"trpo-lab: job {hc.job.num} refused: {message}", file=sys.stderr)
        return "failed"
    except Exception as error:  # noqa: BLE001  (recorded, then handled like a failed run)
        write_summary(run_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        if not multirun:
            raise
        traceback.print_exc()
        return "failed"
    _State.task_started = True
    return PreparedRun(trainer, hc, run_dir)


def train_prepared(prepared: PreparedRun) -> str:
    """Train a prepared run alone; returns its status."""
    from trpo_lab.cluster import SlurmSignals
    from trpo_lab.rollout import NonFiniteObservation
    from trpo_lab.train import NumericalFailure, RunWriteError, StopSignal, exit_code

    trainer, hc, run_dir = prepared.trainer, prepared.hc, prepared.run_dir
    multirun = hc.mode == RunMode.MULTIRUN
    _say(start_lines(trainer))
    stop = StopSignal()
    stop.install()
    slurm = SlurmSignals(stop)  # inside a Slurm job: requeue, not "interrupted"
    slurm.install()
    try:
        summary = trainer.run(stop)
    except (RunWriteError, NumericalFailure, NonFiniteObservation) as error:
        return _stop_leaving_files(str(error), hc, code=1)  # summary.json says failed if it can
    except Exception:
        print(f"trpo-lab: failed; summary.json and metrics.csv in {run_dir}", flush=True)
        if not multirun:
            raise
        traceback.print_exc()
        return "failed"
    finally:
        slurm.restore()
        stop.restore()
        if not multirun and stop.requested:  # saved and ending: a late Ctrl-C changes nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    summary["status"] = slurm.settle([(summary, run_dir)])[0]
    _say(end_lines(trainer, summary))
    if summary["status"] == "interrupted" and multirun and stop.signum is not None \
            and os.getpid() == _State.main_pid:
        # a sweep's job in the sweep's own process (hydra/launcher=basic): the signal stops
        # the sweep as it stops a single run, with its exit code; no later job starts
        print(f"trpo-lab: sweep {hc.sweep.dir} interrupted in job {hc.job.num} after "
              f"{summary['iterations']} updates (checkpointed); the jobs after it did not "
              f"start; rerun the same command with hydra.sweep.dir={hc.sweep.dir} to resume",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # saved and ending, as a single run
        raise SystemExit(exit_code("interrupted", stop.signum))
    if summary["status"] == "interrupted":
        print(f"trpo-lab: interrupted after {summary['iterations']} updates; rerun the same "
              f"command with hydra.run.dir={run_dir} to resume", file=sys.stderr)
        if not multirun:
            _State.exit_code = exit_code("interrupted", stop.signum)
    return summary["status"]


def train_group(prepared: list[PreparedRun]) -> list[str]:
    """Train prepared runs of one shape together (:class:`trpo_lab.group.GroupTrainer`, for
    ``hydra/launcher=batched`` and grouped Slurm elements); returns each run's status. Each run
    says what a lone run says when it starts and ends; a run that fails is reported as a failed
    job, the others go on. Ctrl-C or SIGTERM interrupts every run of the group after its
    current update; inside a Slurm job the group's element is then requeued, as a lone run's
    job is (:class:`trpo_lab.cluster.SlurmSignals`)."""
    from trpo_lab.cluster import SlurmSignals
    from trpo_lab.group import GroupTrainer
    from trpo_lab.rollout import NonFiniteObservation
    from trpo_lab.train import NumericalFailure, RunWriteError, StopSignal

    for run in prepared:
        _say(start_lines(run.trainer))
    stop = StopSignal()
    stop.install()
    slurm = SlurmSignals(stop)
    slurm.install()
    try:
        results = GroupTrainer([run.trainer for run in prepared]).run(stop)
    finally:
        slurm.restore()
        stop.restore()
    statuses: list[str | None] = [None] * len(prepared)
    for k, (run, (_, error)) in enumerate(zip(prepared, results)):
        if error is None:
            continue
        if isinstance(error, (RunWriteError, NumericalFailure, NonFiniteObservation)):
            statuses[k] = _stop_leaving_files(str(error), run.hc, code=1)
        else:
            print(f"trpo-lab: job {run.hc.job.num}: failed: {type(error).__name__}: "
                  f"{error}; summary.json and metrics.csv in {run.run_dir}", file=sys.stderr,
                  flush=True)
            traceback.print_exception(error)
            statuses[k] = "failed"
    ended = [k for k, status in enumerate(statuses) if status is None]
    settled = slurm.settle([(results[k][0], prepared[k].run_dir) for k in ended])
    for k, status in zip(ended, settled):
        run, summary = prepared[k], results[k][0]
        summary["status"] = status
        _say(end_lines(run.trainer, summary))
        if status == "interrupted":
            print(f"trpo-lab: interrupted after {summary['iterations']} updates; rerun the "
                  f"same command with hydra.sweep.dir={run.hc.sweep.dir} to resume",
                  file=sys.stderr)
        statuses[k] = status
    return [str(status) for status in statuses]


def _stop_leaving_files(message: str, hc, code: int) -> str:
    """A refusal or failure that must not touch the run directory's files (summary.json
    included): one line; exit ``code`` for a single run, a failed job in a sweep."""
    if hc.mode != RunMode.MULTIRUN:
        if code == 2:
            _refuse(message)
        _fail(message)
    print(f"trpo-lab: job {hc.job.num}: error: {message}", file=sys.stderr)
    return "failed"


def prepare_task(cfg: DictConfig) -> Any:
    """The task function of a grouped job: validate and build its run (trained later with its
    group)."""
    return prepare_run(cfg, in_group=True)


def run_group(hydra_context: Any, configs: list[DictConfig]) -> list[JobReturn]:
    """Set every job up as Hydra sets up a lone job (with :func:`prepare_task` as its task),
    train the prepared runs together, and give each job its own status."""
    from trpo_lab import rundir

    returns: list[JobReturn] = []
    prepared: list[tuple[int, Any]] = []
    for sweep_config in configs:
        ret = hydra_run_job(hydra_context=hydra_context, task_function=prepare_task,
                            config=sweep_config, job_dir_key="hydra.sweep.dir",
                            job_subdir_key="hydra.sweep.subdir")
        run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) if ret.hydra_cfg else None
        value = ret._return_value
        if ret.status == JobStatus.COMPLETED and isinstance(value, PreparedRun):
            prepared.append((len(returns), value))
        else:  # refused, failed to build, or completed already: the job ends here
            if ret.status != JobStatus.COMPLETED:
                print(f"trpo-lab: job {sweep_config.hydra.job.num}: failed: {value!r}",
                      file=sys.stderr)
                ret = JobReturn(overrides=ret.overrides, status=JobStatus.COMPLETED,
                                _return_value="failed")
            record_job(run_dir, ret)
            if run_dir is not None:
                rundir.release(run_dir)
        returns.append(ret)
    if len(prepared) > 1:
        statuses = train_group([run for _, run in prepared])
    else:
        statuses = [train_prepared(run) for _, run in prepared]
    for (index, run), status in zip(prepared, statuses):
        returns[index]._return_value = status
        record_job(run.run_dir, returns[index])
        rundir.release(run.run_dir)
    return returns
