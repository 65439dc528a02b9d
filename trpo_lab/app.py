"""The ``trpo-lab`` command, a Hydra app, and ``trpo-lab-sweep NAME``, its named sweeps.

Exit codes (README, "Interrupting and resuming"): 0 completed, 1 a run failed (also a run
refused because a file of its run directory is unreadable or damaged), or a sweep did not
complete every job (a job failed, is still queued on a cluster or was interrupted, or the
launcher failed), 2 the configuration was refused before any training (one line on stderr naming
the key and the fix; a refused single run leaves no run directory behind; also a run directory in
use by another process, a resume with a configuration that differs from the run's, a checkpoint
that does not fit the model, a file the checkpoint stands on deleted), 128 + the signal's number
for a single run or a sweep interrupted cleanly and resumable (130 after Ctrl-C, 143 after
SIGTERM; :mod:`trpo_lab.cli`: also a Ctrl-C during start-up).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from trpo_lab import PROCESS_STARTED  # noqa: F401  (re-exported: the process's start)
from trpo_lab.config import ConfigError, register_configs, to_typed
from trpo_lab.jobs import (  # the job API, re-exported for callers of app.*
    PreparedRun,  # noqa: F401
    _fail,
    _refuse,
    _State,
    deepest_existing,
    discard_refused_run_dir,  # noqa: F401
    end_lines,  # noqa: F401
    prepare_run,  # noqa: F401
    record_job,  # noqa: F401
    run_job,
    start_lines,  # noqa: F401
    sweep_group,  # noqa: F401
    train_group,  # noqa: F401
    train_prepared,  # noqa: F401
)
from trpo_lab.registry import load_plugins

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: The named sweeps (``sweeps/NAME.yaml``), run from any directory by ``trpo-lab-sweep NAME``.
SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


class RunDirGuard(Callback):
    """Remembers, before Hydra creates a single run's directory, the deepest part of its path
    that already exists, so that a refused run can take its directory back
    (:func:`discard_refused_run_dir`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _State.kept_ancestor = deepest_existing(Path(str(config.hydra.run.dir)))


class RunDirOwner(Callback):
    """Takes the run (or sweep) directory before Hydra writes anything into it.

    A single run locks ``hydra.run.dir`` here, so a second process refuses before it
    overwrites the first's ``.hydra/``; a sweep locks ``hydra.sweep.dir`` for its life, and each
    job locks its own directory when it starts.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = self._claim(config, "hydra.run.dir")
        if run_dir is not None:
            _check_existing_run(config, run_dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        from trpo_lab import rundir

        rundir.release(Path(config.hydra.runtime.output_dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from trpo_lab.launcher import install

        self._claim(config, "hydra.sweep.dir")
        install()  # hydra/launcher=joblib with isolated workers (before Hydra makes it)

    @staticmethod
    def _claim(config: DictConfig, key: str) -> Path | None:
        from trpo_lab import rundir

        try:
            directory = Path(str(OmegaConf.select(config, key))).absolute()
        except OmegaConfBaseException:
            return None  # resolvable only inside the job: the job claims its directory
        try:
            rundir.claim(directory)
        except rundir.RunDirBusy as busy:
            _refuse(str(busy))
        return directory


def _check_existing_run(config: DictConfig, run_dir: Path) -> None:
    """Before Hydra rewrites ``.hydra/``: refuse a resume with another configuration (exit 2)
    or from unreadable files (exit 1), so that a refused command changes nothing. A config that
    does not even convert is left to the job, which reports it."""
    from trpo_lab.resume import ResumeMismatch
    from trpo_lab.rundir import RunFileError, free_space_problem
    from trpo_lab.train import check_run_dir

    problem = free_space_problem(run_dir)
    if problem:
        _fail(problem)

    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    try:
        typed = to_typed(task_cfg)
    except (OmegaConfBaseException, ValueError, TypeError):
        return
    try:
        check_run_dir(typed, run_dir)
    except (ResumeMismatch, ConfigError) as error:
        _refuse(str(error))
    except RunFileError as error:
        if error.exit_code == 2:
            _refuse(str(error))
        _fail(str(error))


class SweepReport(Callback):
    """At the end of a multirun: count the jobs' statuses from their summary.json (and as failed
    a job that returned "failed" without writing one: a refusal), and from what a cluster
    launcher saw of jobs that left no summary (or an out-of-date one).

    The sweep failed (exit 1) unless every job completed: a failed job, one still queued on a
    cluster, an interrupted one (rerun the command to resume it) or no job at all.
    """

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            record_job(Path(config.hydra.runtime.output_dir), job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import json

        from trpo_lab.cluster import launcher_outcomes

        sweep_dir = Path(config.hydra.sweep.dir)
        statuses: dict[Path, str] = {}
        for hydra_dir in sorted(sweep_dir.glob("**/.hydra")):
            summary = hydra_dir.parent / "summary.json"
            try:
                status = json.loads(summary.read_text()).get("status", "failed")
            except (OSError, ValueError):
                status = "failed"
            if _State.job_status.get(hydra_dir.parent.absolute()) == "failed":
                status = "failed"
            statuses[hydra_dir.parent] = status
        outcomes = launcher_outcomes()
        statuses.update({run_dir: outcome.status for run_dir, outcome in outcomes.items()})
        counts: dict[str, int] = {}
        for status in statuses.values():
            counts[status] = counts.get(status, 0) + 1
        _State.sweep_failed = set(counts) != {"completed"}
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"trpo-lab sweep {sweep_dir}: {parts or 'no jobs'}")
        for run_dir, outcome in sorted(outcomes.items(), key=lambda item: (
                len(str(item[0])), str(item[0]))):  # job 2 before job 10
            print(f"trpo-lab sweep: {run_dir.name}: {outcome.status}: {outcome.detail}")
        if not statuses:
            print(f"trpo-lab sweep: error: no job wrote a run directory under {sweep_dir}",
                  file=sys.stderr)
        elif counts.get("interrupted"):
            print(f"trpo-lab sweep: rerun the same command with hydra.sweep.dir={sweep_dir} "
                  "to resume the interrupted jobs from their checkpoints", file=sys.stderr)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        from trpo_lab import rundir

        try:
            return run_job(cfg)
        finally:  # a worker runs many jobs: each gives its directory up when it ends
            rundir.release(Path(hc.runtime.output_dir))
    status = run_job(cfg)
    if status == "failed":
        sys.exit(1)
    return status


def named_sweeps() -> dict[str, str]:
    """The named sweeps that ship with the package: name -> the first sentence of its header
    comment (``# Sweep "delta": TRPO over ...``)."""
    sweeps = {}
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        text = " ".join(header).split(": ", 1)[-1]
        sweeps[path.stem] = text.split(". ", 1)[0].rstrip(".")
    return sweeps


@contextlib.contextmanager
def _composition_errors_raised() -> Iterator[bool]:
    """Make Hydra raise its errors instead of printing them (HYDRA_FULL_ERROR), so that
    :func:`main` can refuse in one line; yields False when the user asked for Hydra's full
    errors, which are then left alone."""
    asked = "HYDRA_FULL_ERROR" in os.environ
    if not asked:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield not asked
    finally:
        if not asked:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def _output_dir_problem(argv: list[str]) -> str | None:
    """Refuse an output directory that cannot be created, before Hydra tries (and traces)."""
    from trpo_lab.rundir import unwritable_dir_problem

    key, target = "hydra.run.dir", "outputs"
    for arg in argv:
        for name in ("hydra.run.dir", "hydra.sweep.dir"):
            if arg.startswith(name + "="):
                key, target = name, arg.split("=", 1)[1]
    if "${" in target:
        target = target.split("${")[0] or "."
    problem = unwritable_dir_problem(Path(target))
    return f"invalid value {key}={target!r}: {problem}" if problem else None


def _exit_if_launcher_failed() -> None:
    """A cluster launcher that raised (Ray cannot connect, sbatch refuses a partition): a failed
    sweep, exit 1 with its cause, never a refused configuration."""
    from trpo_lab.cluster import launcher_failure

    failure = launcher_failure()
    if failure:
        print(f"trpo-lab: sweep failed: {failure}", file=sys.stderr)
        sys.exit(1)


def importable_from_cwd() -> None:
    """Put the current directory last on sys.path (``python -m`` puts it first; a console
    script does not), so that ``env.id=myenvs:MyEnv-v0`` finds a ``myenvs.py`` there; last,
    so that it shadows no installed package."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def main() -> None:
    from hydra.errors import HydraException

    from trpo_lab.refusals import explain

    _State.reset()
    importable_from_cwd()
    _State.main_pid = os.getpid()
    load_plugins()  # TRPO_LAB_ALGORITHMS: their schemas before Hydra composes
    register_configs()
    problem = _output_dir_problem(sys.argv[1:])
    if problem:
        _refuse(problem)
    with _composition_errors_raised() as ours:
        try:
            _hydra_main()
        except SystemExit as exit_:
            # Hydra reports some errors (argument parsing) with exit code 1 before any job
            # starts: those are refusals of the configuration.
            if exit_.code == 1 and not _State.task_started:
                _exit_if_launcher_failed()
                sys.exit(2)
            raise
        except (HydraException, OmegaConfBaseException) as error:
            # an unknown option, a value of the wrong type, an unknown key: before any job
            if not ours or _State.task_started:
                raise
            _exit_if_launcher_failed()
            _refuse(explain(error, sweeps=list(named_sweeps())))
        except Exception:
            _exit_if_launcher_failed()
            raise
    if _State.sweep_failed:
        sys.exit(1)
    if _State.exit_code:
        sys.exit(_State.exit_code)


def sweep_main() -> None:
    """``trpo-lab-sweep NAME [OVERRIDE ...]``: run the named sweep ``sweeps/NAME.yaml`` that
    ships with the package, from any directory (its runs go to ``multirun/NAME-DATE_TIME`` in
    the current directory); the same as ``trpo-lab --config-dir sweeps --config-name NAME`` in
    the repository. Without NAME (or with ``--list``): the sweeps and what each one is."""
    from trpo_lab.refusals import closest

    sweeps = named_sweeps()
    args = sys.argv[1:]
    if not args or args[0] in ("--list", "-h", "--help"):
        print("usage: trpo-lab-sweep NAME [OVERRIDE ...]   e.g. trpo-lab-sweep delta "
              "+scale=quick\nnamed sweeps:")
        for name, what in sweeps.items():
            print(f"  {name:<10} {what}")
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in sweeps:
        guess = closest(name, list(sweeps))
        hint = f"did you mean {guess}? " if guess else ""
        _refuse(f"unknown sweep {name!r}: {hint}named sweeps: {', '.join(sweeps)}")
    sys.argv = [sys.argv[0], "--config-dir", str(SWEEPS_DIR), "--config-name", name, *rest]
    main()


if __name__ == "__main__":
    main()
