"""What a run writes: its recorder owns metrics.csv, probes.csv, the W&B run, the progress bar
and summary.json.

A :class:`Recorder` is made per run (alone or in a group: :mod:`trpo_lab.pipeline`), so every
run of a group has its own files, W&B run and progress bar. The trainer decides what to write
and when (rows, checkpoints, the summary); the recorder writes it, turning an OSError into a
:class:`RunWriteError` that names the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from trpo_lab.checkpoint import atomic_write_bytes, remove_quietly
from trpo_lab.logging import MetricsCSV, MetricsPosition, WandbRun
from trpo_lab.probes import COLUMNS as PROBE_COLUMNS
from trpo_lab.probes import PROBES, probe_tables

SUMMARY = "summary.json"
METRICS = "metrics.csv"
#: The W&B id of a run that has no checkpoint yet (the checkpoint holds it from then on), written
#: before W&B starts: a restart after a kill before the first checkpoint logs to the same W&B run.
WANDB_ID = ".trpo-lab-wandb-id"


class RunWriteError(RuntimeError):
    """A file of the run directory could not be written (disk full, quota, read-only, ...)."""

    def __init__(self, path: Path, error: OSError, saved_iteration: int | None = None):
        reason = error.strerror or str(error)
        if saved_iteration:
            state = (f"the last checkpoint (update {saved_iteration}) is intact: fix it and "
                     f"rerun the same command to resume")
        else:
            state = "no checkpoint was written yet: fix it and rerun the same command"
        super().__init__(f"cannot write {path} ({reason}); {state}")
        self.path, self.os_error = path, error


@contextlib.contextmanager
def writing(path: Path):
    """Turn an OSError while writing ``path`` into a :class:`RunWriteError` naming it."""
    try:
        yield
    except OSError as error:
        raise RunWriteError(path, error) from None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2, default=float) + "\n"
    with writing(run_dir / SUMMARY):
        atomic_write_bytes(run_dir / SUMMARY, lambda f: f.write(text.encode()))


def on_terminal() -> bool:
    """Progress bars are drawn only when stdout is a terminal."""
    return sys.stdout.isatty()


class Recorder:
    """One run's outputs. ``resume_rows`` and ``metrics_at``/``probes_at``: the rows and
    positions the checkpoint recorded (a resume keeps exactly those rows); ``probes``: the run
    writes probes.csv; ``wandb``: the keyword arguments of its :class:`WandbRun` (None: no
    W&B), whose ``run_id`` is replaced by an interrupted first attempt's (:meth:`run_id`)."""

    def __init__(self, run_dir: Path, *, resume_rows: int | None,
                 metrics_at: MetricsPosition | None, probes_at: MetricsPosition | None,
                 probes: bool, wandb: dict[str, Any] | None, resumed: bool):
        self.run_dir = run_dir
        with writing(run_dir / METRICS):
            self.metrics = MetricsCSV(run_dir / METRICS, resume_rows=resume_rows,
                                      expected=metrics_at)
        self.probes: MetricsCSV | None = None
        if probes:
            with writing(run_dir / PROBES):
                self.probes = MetricsCSV(
                    run_dir / PROBES, resume_rows=None if probes_at is None else probes_at.rows,
                    expected=probes_at, columns=PROBE_COLUMNS)
        self.progress = None
        self.wandb: WandbRun | None = None
        self.run_id = wandb["run_id"] if wandb is not None else None
        if wandb is not None:
            if not resumed:
                self.run_id = self._restart_wandb_id(wandb["run_id"])
            self.wandb = WandbRun(**(wandb | {"run_id": self.run_id}))

    def _restart_wandb_id(self, run_id: str) -> str:
        """A run starting without a checkpoint: if an earlier attempt in this directory was
        killed before its first checkpoint (its W&B id is in :data:`WANDB_ID`), take its id
        over and remove its offline W&B data, whose rows are recomputed (as metrics.csv starts
        again); then record the id, before W&B starts. One W&B run per run directory."""
        path = self.run_dir / WANDB_ID
        with contextlib.suppress(OSError, UnicodeDecodeError):
            recorded = path.read_text().strip()
            if recorded.isalnum() and "WANDB_RUN_ID" not in os.environ:
                run_id = recorded
                for orphan in (self.run_dir / "wandb").glob(f"offline-run-*-{recorded}"):
                    shutil.rmtree(orphan, ignore_errors=True)
        with writing(path):
            atomic_write_bytes(path, lambda f: f.write(f"{run_id}\n".encode()))
        return run_id

    # ----------------------------------------------------------------- during training
    def open_progress(self, show: bool, total: int, initial: int, desc: str,
                      position: int | None = None) -> None:
        """The progress bar (env steps), when ``show`` and stdout is a terminal; a group's
        runs each get a bar of their own, at ``position``."""
        if not (show and on_terminal()):
            return
        from tqdm import tqdm  # a terminal only: runs off one never import it

        self.progress = tqdm(total=total, initial=initial, unit="step", unit_scale=True,
                             dynamic_ncols=True, desc=desc, position=position)

    def write_row(self, row: dict[str, Any]) -> None:
        """An update's row in metrics.csv (W&B follows in :meth:`log_row`)."""
        with writing(self.run_dir / METRICS):
            self.metrics.write(row)

    def log_row(self, row: dict[str, Any]) -> None:
        """The row to W&B."""
        if self.wandb is not None:
            self.wandb.log(row)

    def advance(self, row: dict[str, Any], steps: int) -> None:
        """``steps`` more env steps on the progress bar, with the row's return and KL."""
        if self.progress is not None:
            self.progress.update(steps)
            self.progress.set_postfix(ret=f"{row.get('rollout/return_mean', math.nan):.1f}",
                                      kl=f"{row['kl/mean']:.4f}", refresh=False)

    def write_probes(self, rows: list[dict[str, Any]]) -> None:
        with writing(self.run_dir / PROBES):
            for row in rows:
                self.probes.write(row)

    def positions(self) -> tuple[MetricsPosition, MetricsPosition | None]:
        """Where metrics.csv and probes.csv end now."""
        return self.metrics.position(), None if self.probes is None else self.probes.position()

    def sync(self) -> None:
        """Both files on disk (before a checkpoint records their positions)."""
        with writing(self.run_dir / METRICS):
            self.metrics.sync()
        if self.probes is not None:
            with writing(self.run_dir / PROBES):
                self.probes.sync()

    def checkpointed(self, path: Path, iteration: int, env_steps: int,
                     log_checkpoints: bool) -> None:
        """After a checkpoint: it holds the W&B id now; an artifact when asked."""
        remove_quietly(self.run_dir / WANDB_ID)
        if self.wandb is not None and log_checkpoints:
            self.wandb.log_checkpoint(path, iteration, env_steps)

    def truncate_to(self, metrics: MetricsPosition, probes: MetricsPosition | None) -> None:
        """Both files cut back to a checkpoint's positions (an update dropped midway)."""
        with writing(self.run_dir / METRICS):
            self.metrics.truncate_to(metrics)
        if self.probes is not None:
            with writing(self.run_dir / PROBES):
                self.probes.truncate_to(probes)

    # ----------------------------------------------------------------- at the end
    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_summary(self.run_dir, summary)

    def close_files(self) -> None:
        with writing(self.run_dir / METRICS):
            self.metrics.close()
        if self.probes is not None:
            self.probes.close()

    def probe_tables(self) -> dict[str, tuple[list[str], list[list]]]:
        """probes.csv as two W&B tables (landscape and gradient rows, each with its columns),
        read back from the file so that a resumed run's table holds every probed update."""
        if self.probes is None or not (self.run_dir / PROBES).exists():
            return {}
        return probe_tables((self.run_dir / PROBES).read_text())

    def finish_wandb(self, status: str, summary: dict[str, Any], exit_code: int,
                     quiet: bool) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.finish(status, summary, exit_code=exit_code,
                              tables=self.probe_tables(), quiet=quiet)
        except KeyboardInterrupt:
            print("trpo-lab: the W&B run was not finished (interrupted)", file=sys.stderr)
