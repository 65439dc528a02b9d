"""The ``trpo-lab`` command: a Hydra app.

Exit codes: 0 completed (or interrupted cleanly, resumable), 1 a run or a sweep job failed,
2 the configuration was refused before any training (one line on stderr naming the key).
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.time()  # this module is the first the console script imports

import sys  # noqa: E402
import traceback  # noqa: E402
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


class _State:
    task_started = False  # set once a job got past validation
    sweep_failed = False


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


def run_job(cfg: DictConfig) -> str:
    """Validate, build and train one run; returns its status."""
    from trpo_lab.envs import EnvError
    from trpo_lab.policies import PolicySpaceError
    from trpo_lab.train import StopSignal, Trainer, read_summary, write_summary

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
    stop = StopSignal()
    stop.install()
    try:
        summary = trainer.run(stop)
    except Exception:
        if not multirun:
            raise
        traceback.print_exc()
        return "failed"
    finally:
        stop.restore()
    if summary["status"] == "interrupted":
        print(f"trpo-lab: interrupted after {summary['iterations']} updates; rerun the same "
              f"command with hydra.run.dir={run_dir} to resume", file=sys.stderr)
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
    register_configs()
    problem = _output_dir_problem(sys.argv[1:])
    if problem:
        _refuse(problem)
    try:
        _hydra_main()
    except SystemExit as exit_:
        # Hydra reports composition errors (unknown option, wrong type) with exit code 1
        # before any job starts: those are refusals of the configuration.
        if exit_.code == 1 and not _State.task_started:
            sys.exit(2)
        raise
    if _State.sweep_failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
