"""Sweeps on Slurm and Ray clusters that end when their runs do.

Two sides of a cluster sweep meet here:

- Inside a Slurm job (submitit), :class:`SlurmSignals` turns SIGTERM (``scontrol requeue``, a
  preemption without a user signal, ``scancel``) and submitit's timeout/preemption signal (USR2)
  into a stop after the current update and a checkpoint, and then keeps the job in Slurm's hands
  instead of finishing it as ``interrupted``: after USR2 submitit requeues it; after SIGTERM Slurm
  requeues it itself (or it was cancelled) and the job ends without a result, so the sweep
  command goes on waiting. The requeued job resumes from ``checkpoint.pt``.
- In the sweep command, the launchers of :mod:`hydra_plugins.trpo_lab_launchers` (Hydra takes
  launchers from the ``hydra_plugins`` package only) make the sweep directory absolute before
  jobs are sent (:func:`pin_sweep_dir`), wait for every job (Slurm: :class:`SlurmWait`), and
  record what they saw of each (:func:`record_outcome`) for the sweep report; a launcher that
  raises records its cause (:func:`reporting_failures`), so that the command exits 1, a failed
  sweep, and never 2, a refused configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


@dataclass(frozen=True)
class JobOutcome:
    """What the launcher saw of one job that did not simply return: ``failed`` (the job ended
    without a result, or raised outside the run) or ``queued`` (still waiting or running on the
    cluster when the command stopped waiting)."""

    status: str
    detail: str


_outcomes: dict[Path, JobOutcome] = {}
_failures: list[str] = []


def record_outcome(run_dir: Path, status: str, detail: str) -> None:
    _outcomes[run_dir] = JobOutcome(status, detail)


def launcher_outcomes() -> dict[Path, JobOutcome]:
    """Outcomes recorded by this process's launcher, by run directory."""
    return dict(_outcomes)


def forget_launcher_reports() -> None:
    """Start a new command: no outcomes, no failure (main() may run more than once a process)."""
    _outcomes.clear()
    _failures.clear()


def launcher_failure() -> str | None:
    """Why this process's launcher raised (None if it did not)."""
    return _failures[-1] if _failures else None


@contextlib.contextmanager
def reporting_failures(launcher: str) -> Iterator[None]:
    """Record any exception of a launcher's ``launch`` except a composition error (a refused
    configuration), then let it propagate."""
    try:
        yield
    except (ConfigCompositionException, MissingConfigException, OverrideParseException):
        raise
    except Exception as error:
        _failures.append(f"the {launcher} launcher failed: {type(error).__name__}: "
                         f"{str(error).strip()}")
        raise


def pin_sweep_dir(config: DictConfig) -> Path:
    """Make ``hydra.sweep.dir`` absolute, as seen from the sweep command's directory: in the
    sweep's config and in the overrides every job's config is composed from. A job that runs
    elsewhere (a Ray worker starts in the directory of ``ray start``) then writes where the
    command, and its sweep report, look."""
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    # Hydra's quoted values: a backslash escapes only a quote (or the backslashes before one),
    # and ${...} is an interpolation unless escaped
    text = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, str(sweep_dir))
    quoted = "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = str(sweep_dir)
        kept = [o for o in config.hydra.overrides.hydra
                if o.split("=", 1)[0].lstrip("+~") != "hydra.sweep.dir"]
        config.hydra.overrides.hydra = [*kept, f"hydra.sweep.dir={quoted}"]
    return sweep_dir


def job_run_dir(launcher: Any, overrides: Sequence[str], job_num: int) -> Path:
    """The run directory of job ``job_num``, composed as the job composes it."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = job_num
        cfg.hydra.job.id = f"job_id_for_{job_num}"
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def outcome_return(overrides: Sequence[str], status: str) -> JobReturn:
    """A stand-in for a job's JobReturn: Hydra's sweeper re-raises a failed job's exception,
    which would end the sweep before its report; the report reads the recorded outcome."""
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=status)


def in_slurm_job() -> bool:
    """True inside a job that submitit started on Slurm (not submitit_local, not Ray)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


class SlurmSignals:
    """Inside a submitit Slurm job: stop the run cleanly on SIGTERM or on submitit's signal,
    then hand the job back to the queue (see the module's docstring). Outside one: nothing.

    Install after the run's :class:`~trpo_lab.train.StopSignal`, restore before it, and pass the
    run's (or the group's runs') final summaries through :meth:`settle`.
    """

    def __init__(self, stop: Any):
        self.stop = stop
        self.active = in_slurm_job()
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.requeue_signal: int | None = None

    def install(self) -> None:
        if not self.active:
            return
        import submitit

        self.requeue_signal = signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]
        for sig in (signal.SIGTERM, self.requeue_signal):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received != self.requeue_signal:  # submitit's signal decides: requeue
            self.received = signum
        if signum == signal.SIGTERM and callable(self.previous[signal.SIGTERM]):
            self.previous[signal.SIGTERM](signum, frame)  # the run's StopSignal
        self.stop.requested = True

    def settle(self, runs: Sequence[tuple[dict[str, Any], Path]]) -> list[str]:
        """The final statuses of the runs this process trained (one, or a group:
        ``(summary, run_dir)`` each), or no return: when a signal stopped them, the job
        leaves without a result, to be requeued, and every interrupted run resumes from its
        checkpoint."""
        statuses = [summary["status"] for summary, _ in runs]
        if not self.active or self.received is None or "interrupted" not in statuses:
            return statuses
        stopped = [summary for summary, _ in runs if summary["status"] == "interrupted"]
        counts = Counter((s["iterations"], s["updates_planned"]) for s in stopped)
        done = ", ".join(
            (f"{n} run{'s' if n > 1 else ''} " if len(stopped) > 1 else "")
            + f"checkpointed after {iterations} of {planned} updates"
            for (iterations, planned), n in sorted(counts.items()))
        if self.received == self.requeue_signal:
            from submitit.core.utils import UncompletedJobError

            print(f"trpo-lab: Slurm timeout/preemption signal: {done}; submitit requeues the job, "
                  "which resumes from checkpoint.pt", file=sys.stderr, flush=True)
            submitit_handler = self.previous[self.requeue_signal]
            try:
                if callable(submitit_handler):
                    submitit_handler(self.requeue_signal, None)  # requeues, then sys.exit
            except UncompletedJobError as error:  # timed out more than max_num_timeout times
                from trpo_lab.train import write_summary

                for summary, run_dir in runs:
                    if summary["status"] == "interrupted":
                        write_summary(run_dir, {**summary, "status": "failed",
                                                "error": str(error)})
                print(f"trpo-lab: {error}", file=sys.stderr)
                return ["failed" if status == "interrupted" else status for status in statuses]
            except (OSError, subprocess.SubprocessError) as error:
                print(f"trpo-lab: scontrol requeue failed ({error}); the job ends without a "
                      "result (a preempted job is requeued by Slurm all the same)",
                      file=sys.stderr, flush=True)
            raise SystemExit(128 + self.requeue_signal)
        print(f"trpo-lab: SIGTERM from Slurm (requeue, preemption or scancel): {done}; the job "
              "ends without a result so that the sweep waits for its requeued run",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)


# ----------------------------------------------------------------- the sweep command's wait
# Slurm job states after which a job runs no more (squeue shows them for MinJobAge seconds)
FINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED",
                          "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"})
SHOWN_ONE_BY_ONE = 6  # up to this many waiting jobs are listed by id, more are counted by state


@dataclass(frozen=True)
class QueueEntry:
    """One array element as ``squeue`` shows it."""

    state: str
    reason: str
    start: str

    def describe(self) -> str:
        if self.state != "PENDING":
            return self.state
        if self.reason == "BeginTime":  # Slurm holds a requeued job about 2 minutes
            return f"PENDING (BeginTime: eligible at {self.start})"
        return "PENDING" if self.reason in ("", "None") else f"PENDING ({self.reason})"


def squeue(array_ids: set[str]) -> dict[str, QueueEntry] | None:
    """squeue's entries of these array jobs by element ("12_3"); None if squeue failed."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r|%S",
               f"--jobs={','.join(sorted(array_ids))}"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None
    entries = {}
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 4:
            entries[fields[0]] = QueueEntry(*fields[1:])
    return entries


def _cause(error: Exception) -> str:
    """The last line of a job's traceback as submitit reports it, or the error's first line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if "----------------------" in lines:
        start = lines.index("----------------------") + 1
        end = lines.index("----------------------", start) if "----------------------" in \
            lines[start:] else len(lines)
        if end > start:
            return lines[end - 1].strip()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class SlurmWait:
    """Waits for a sweep's Slurm jobs (submitit Job objects, one per array element), watching
    their result files and, every ``launcher.poll_s`` seconds, ``squeue``:

    - an element with a result is done (a failed run is in its summary.json, as with any
      launcher);
    - a requeued element (SIGTERM under :class:`SlurmSignals`, a timeout or a preemption
      through submitit) is pending again, and the wait goes on;
    - an element out of the queue (or in a final state) for ``launcher.lost_after_s`` without a
      result is failed, with its Slurm state and the path of its log;
    - Ctrl-C stops waiting: the elements still queued or running are ``queued`` (they go on on
      the cluster), and the sweep report says so.

    ``elements``: the sweep's job indices that each element trains (``group_runs``: a group of
    jobs in one element, which returns one JobReturn per job); by default one job each. What
    the wait sees of an element holds for each of its jobs: the wait returns one JobReturn per
    job. While jobs wait, one line on stderr says what Slurm says of them whenever that changes.
    """

    def __init__(self, launcher: Any, jobs: list[Any],
                 job_overrides: Sequence[Sequence[str]], first_num: int,
                 elements: Sequence[Sequence[int]] | None = None):
        self.launcher, self.jobs = launcher, dict(enumerate(jobs))
        self.overrides, self.first_num = job_overrides, first_num
        self.elements = [list(e) for e in elements] if elements is not None else \
            [[i] for i in range(len(jobs))]
        self.returns: dict[int, JobReturn] = {}  # by job index
        self.last_seen: dict[int, QueueEntry] = {}  # by element
        self.out_of_queue_since: dict[int, float] = {}
        self.shown = ""
        self.squeue_failed = False
        self.arrays = {job.job_id.split("_")[0] for job in jobs}

    def pending(self) -> dict[int, Any]:
        """The elements (index -> submitit job) with a job that has no return yet."""
        return {e: job for e, job in self.jobs.items()
                if any(i not in self.returns for i in self.elements[e])}

    def run(self) -> list[JobReturn]:
        grouped = len(self.jobs) != len(self.overrides)
        print(f"trpo-lab: submitted {len(self.overrides)} jobs as Slurm array job "
              f"{', '.join(sorted(self.arrays))}"
              f"{f' of {len(self.jobs)} element(s)' if grouped else ''}; waiting for all of "
              "them to finish (Ctrl-C stops waiting; the jobs go on)", file=sys.stderr, flush=True)
        next_poll = 0.0
        try:
            while self.pending():
                for e, job in self.pending().items():
                    if job.paths.result_pickle.exists():
                        self._result(e, job)
                now = time.monotonic()
                if self.pending() and now >= next_poll:
                    next_poll = now + self.launcher.poll_s
                    self._poll(now)
                if self.pending():
                    time.sleep(1.0)
        except KeyboardInterrupt:
            self._stop_waiting()
        return [self.returns[i] for i in sorted(self.returns)]

    def _result(self, e: int, job: Any) -> None:
        try:
            value = job.results()[0]
        except Exception as error:  # noqa: BLE001  (submitit: the job raised outside the run)
            self._outcome(e, "failed", f"Slurm job {job.job_id} raised outside the run: "
                                       f"{_cause(error)} (log: {job.paths.stderr})")
            return
        job_returns = value if isinstance(value, list) else [value]
        for n, i in enumerate(self.elements[e]):
            job_return = job_returns[n] if n < len(job_returns) else None
            if job_return is None:
                self._job_outcome(i, "failed", f"Slurm job {job.job_id} returned no result "
                                               f"for this job (log: {job.paths.stderr})")
            elif job_return.status != JobStatus.COMPLETED:
                error = job_return._return_value
                self._job_outcome(i, "failed", f"Slurm job {job.job_id}: "
                                               f"{type(error).__name__}: {error}")
            else:
                self.returns[i] = job_return

    def _outcome(self, e: int, status: str, detail: str) -> None:
        for i in self.elements[e]:
            self._job_outcome(i, status, detail)

    def _job_outcome(self, i: int, status: str, detail: str) -> None:
        record_outcome(self._run_dir(i), status, detail)
        self.returns[i] = outcome_return(self.overrides[i], status)

    def _run_dir(self, i: int) -> Path:
        sweep = OmegaConf.to_container(self.launcher.config.hydra.sweep, resolve=False)
        if sweep["subdir"] == "${hydra.job.num}":  # the default: no need to compose the job
            return Path(str(self.launcher.config.hydra.sweep.dir)) / str(self.first_num + i)
        return job_run_dir(self.launcher, self.overrides[i], self.first_num + i)

    def _poll(self, now: float) -> None:
        entries = squeue(self.arrays)
        if entries is None:
            if not self.squeue_failed:
                print("trpo-lab: squeue failed; still waiting for the jobs' result files",
                      file=sys.stderr, flush=True)
            self.squeue_failed = True
            return
        self.squeue_failed = False
        for e, job in self.pending().items():
            entry = entries.get(job.job_id)
            if entry is not None and entry.state not in FINAL_STATES:
                self.last_seen[e] = entry
                self.out_of_queue_since.pop(e, None)
                continue
            since = self.out_of_queue_since.setdefault(e, now)
            if now - since >= self.launcher.lost_after_s and not job.paths.result_pickle.exists():
                state = entry.state if entry is not None else "no longer in squeue"
                self._outcome(e, "failed", f"Slurm job {job.job_id} ended without a result "
                                           f"({state}; log: {job.paths.stderr})")
        self._show()

    def _show(self) -> None:
        waiting = [(job.job_id, self.last_seen.get(e)) for e, job in self.pending().items()]
        described = [entry.describe() if entry else "not in squeue" for _, entry in waiting]
        if len(waiting) <= SHOWN_ONE_BY_ONE:
            parts = [f"{job_id} {text}" for (job_id, _), text in zip(waiting, described)]
        else:
            parts = [f"{n} {text}" for text, n in sorted(Counter(described).items())]
        line = f"trpo-lab: {len(self.returns)} of {len(self.overrides)} jobs finished"
        if parts:
            line += "; waiting: " + ", ".join(parts)
        if line != self.shown:
            print(line, file=sys.stderr, flush=True)
            self.shown = line

    def _stop_waiting(self) -> None:
        arrays = " ".join(sorted(self.arrays))
        pending = self.pending()
        print(f"\ntrpo-lab: stopped waiting; "
              f"{sum(i not in self.returns for e in pending for i in self.elements[e])} jobs "
              f"are still on the cluster (squeue -j {arrays.replace(' ', ',')}; cancel them "
              f"with scancel {arrays}). Rerun the same command with hydra.sweep.dir="
              f"{self.launcher.config.hydra.sweep.dir} when they are done: finished runs are "
              "skipped, interrupted ones resume.", file=sys.stderr, flush=True)
        for e, job in pending.items():
            entry = self.last_seen.get(e)
            detail = f"Slurm job {job.job_id} {entry.describe() if entry else 'submitted'}"
            for i in self.elements[e]:
                if i not in self.returns:
                    self._job_outcome(i, "queued", detail)
