"""The ``trpo-lab`` command, a Hydra app, and ``trpo-lab-sweep NAME``, its named sweeps.

Exit codes: 0 completed, 1 a run or a sweep job failed, 2 the configuration was refused before
any training (one line on stderr naming the key and the fix; a refused single run leaves no run
directory behind), 128 + the signal's number for a run interrupted cleanly and resumable (130
after Ctrl-C, 143 after SIGTERM).
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.time()  # this module is the first the console script imports

import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException  # noqa: E402

from trpo_lab.config import ConfigError, register_configs, to_typed, validate  # noqa: E402

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: The named sweeps (``sweeps/NAME.yaml``), run from any directory by ``trpo-lab-sweep NAME``.
SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


class _State:
    task_started = False  # set once a job got past validation
    sweep_failed = False
    exit_code = 0  # of a single run that was interrupted: 128 + the signal's number
    kept_ancestor: Path | None = None  # deepest existing ancestor of the run dir before Hydra

    @classmethod
    def reset(cls) -> None:
        cls.task_started, cls.sweep_failed, cls.exit_code, cls.kept_ancestor = \
            False, False, 0, None


def _refuse(message: str) -> None:
    print(f"trpo-lab: error: {message}", file=sys.stderr)
    sys.exit(2)


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
    ``.hydra/*.yaml`` files and the job's ``*.log``."""
    for path in run_dir.rglob("*"):
        if path.is_dir():
            continue
        parts = path.relative_to(run_dir).parts
        hydra_yaml = len(parts) == 2 and parts[0] == ".hydra" and path.suffix == ".yaml"
        job_log = len(parts) == 1 and path.suffix == ".log"
        if not (hydra_yaml or job_log):
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
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:
        if parent == kept_ancestor:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
    return True


class RunDirGuard(Callback):
    """Remembers, before Hydra creates a single run's directory, the deepest part of its path
    that already exists, so that a refused run can take its directory back
    (:func:`discard_refused_run_dir`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _State.kept_ancestor = deepest_existing(Path(str(config.hydra.run.dir)))


def start_lines(trainer: Any) -> list[str]:
    """What a run says when it starts, also off a terminal: its directory, a resume, the
    rounding of total_steps to whole batches, and where its W&B run goes."""
    cfg = trainer.cfg
    lines = [f"trpo-lab: run directory {trainer.run_dir}"]
    if trainer.resumed:
        lines.append(f"trpo-lab: resuming from iteration {trainer.iteration} "
                     f"({trainer.iteration} of {trainer.updates} updates done)")
    planned_steps = trainer.updates * cfg.batch_steps
    if planned_steps != cfg.total_steps:
        lines.append(f"trpo-lab: training {trainer.updates} updates x {cfg.batch_steps} steps = "
                     f"{planned_steps} env steps (total_steps={cfg.total_steps} rounded up to "
                     f"whole batches)")
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


def end_lines(trainer: Any, summary: dict[str, Any]) -> list[str]:
    """What a run says when it ends: status, size and directory, and its W&B run (the offline
    run's directory and the command that uploads it, or the online run's URL)."""
    lines = [f"trpo-lab: {summary['status']} after {summary['iterations']} updates "
             f"({summary['env_steps']} env steps); results in {trainer.run_dir}"]
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


def run_job(cfg: DictConfig) -> str:
    """Validate, build and train one run; returns its status."""
    from trpo_lab.envs import EnvError
    from trpo_lab.policies import PolicySpaceError
    from trpo_lab.train import StopSignal, Trainer, exit_code, read_summary, write_summary

    job_started = time.time()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    previous = read_summary(run_dir)
    try:
        typed = to_typed(cfg)
        validate(typed)
        if previous is not None and previous.get("status") == "completed" and not typed.resume:
            print(f"trpo-lab: {run_dir} already completed; skipping (resume=true reruns it)")
            return "completed"
        group, tags = _sweep_identity(hc)
        trainer = Trainer(typed, run_dir, wandb_config=OmegaConf.to_container(cfg, resolve=True),
                          group=group, tags=tags,
                          clock_origins={"process": PROCESS_STARTED, "job": job_started})
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
    _say(start_lines(trainer))
    stop = StopSignal()
    stop.install()
    try:
        summary = trainer.run(stop)
    except Exception:
        print(f"trpo-lab: failed; summary.json and metrics.csv in {run_dir}", flush=True)
        if not multirun:
            raise
        traceback.print_exc()
        return "failed"
    finally:
        stop.restore()
    _say(end_lines(trainer, summary))
    if summary["status"] == "interrupted":
        print(f"trpo-lab: interrupted after {summary['iterations']} updates; rerun the same "
              f"command with hydra.run.dir={run_dir} to resume", file=sys.stderr)
        if not multirun:
            _State.exit_code = exit_code("interrupted", stop.signum)
    return summary["status"]


class SweepReport(Callback):
    """At the end of a multirun: count completed and failed jobs from their summary.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import json

        sweep_dir = Path(config.hydra.sweep.dir)
        counts: dict[str, int] = {}
        for hydra_dir in sorted(sweep_dir.glob("**/.hydra")):
            summary = hydra_dir.parent / "summary.json"
            try:
                status = json.loads(summary.read_text()).get("status", "failed")
            except (OSError, ValueError):
                status = "failed"
            counts[status] = counts.get(status, 0) + 1
        failed = counts.get("failed", 0)
        _State.sweep_failed = failed > 0
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"trpo-lab sweep {sweep_dir}: {parts or 'no jobs'}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> str:
    status = run_job(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN and status == "failed":
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
    import os

    key, target = "hydra.run.dir", "outputs"
    for arg in argv:
        for name in ("hydra.run.dir", "hydra.sweep.dir"):
            if arg.startswith(name + "="):
                key, target = name, arg.split("=", 1)[1]
    if "${" in target:
        target = target.split("${")[0] or "."
    path = Path(target).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        return f"invalid value {key}={target!r}: {path} is not a writable directory"
    return None


def main() -> None:
    from hydra.errors import HydraException

    from trpo_lab.refusals import explain

    _State.reset()
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
                sys.exit(2)
            raise
        except (HydraException, OmegaConfBaseException) as error:
            # an unknown option, a value of the wrong type, an unknown key: before any job
            if not ours or _State.task_started:
                raise
            _refuse(explain(error, sweeps=list(named_sweeps())))
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
