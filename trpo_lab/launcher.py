"""``hydra/launcher=joblib`` with workers that cannot take a sweep down.

Hydra's joblib launcher runs jobs on a loky pool. When one worker dies (SIGKILL, the
out-of-memory killer) loky marks the pool broken and SIGKILLs every other worker: the whole
sweep aborts with ``TerminatedWorkerError`` and the running jobs stop without a summary. And when
the sweep's own process dies, loky's workers go on as orphans.

This launcher keeps joblib's settings (``hydra.launcher.n_jobs``, with joblib's meaning of -1)
and its reuse of worker processes, but gives every worker its own pipe instead of a shared queue:

- a worker that dies fails only its own job (``summary.json`` status ``failed``, naming the
  signal); a fresh worker takes the remaining jobs and the sweep ends with its
  "N completed, M failed" line (exit 1); re-running the sweep finishes what is missing;
- a worker stops when the sweep's process dies (``PR_SET_PDEATHSIG`` on Linux, else a thread
  watching the parent): SIGTERM, so its job checkpoints, is marked ``interrupted`` and resumes
  when the sweep is submitted again;
- workers run in their own process group; Ctrl-C (SIGINT) and SIGTERM reach the sweep's process,
  which stops handing out jobs and passes each signal on to the running workers, so a Ctrl-C
  ends the jobs as it ends a single run (a second one stops them at once).

The other joblib keys (``backend``, ``batch_size``, ...) have no effect here. :func:`install`
(called when a ``trpo-lab`` sweep starts) puts :func:`launch_isolated` in the place of the
plugin's ``_core.launch``, which its ``JoblibLauncher.launch`` looks up at every call; the
plugin's config, its name and its ``n_jobs`` stay as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals

try:
    import cloudpickle  # joblib >= 1.6 depends on it
except ImportError:  # older joblib vendors it
    from joblib.externals import cloudpickle
from omegaconf import open_dict

PR_SET_PDEATHSIG = 1


def worker_count(n_jobs: int | None, jobs: int) -> int:
    """joblib's meaning of n_jobs: -1 all CPUs, -2 all but one, None 1; at most one per job."""
    cpus = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        wanted = 1
    elif n_jobs < 0:
        wanted = max(cpus + 1 + n_jobs, 1)
    else:
        wanted = n_jobs
    return max(min(wanted, jobs), 1)


def signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


# ----------------------------------------------------------------------------- in the worker
def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when the sweep's process dies (the job then checkpoints)."""
    libc = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL(None, use_errno=True)
    if libc is not None and libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def job_dir(sweep_config) -> Path:
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def sweep_config_of(hydra_context, config, idx: int, overrides: Sequence[str]):
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    return sweep_config


def worker_main(conn: Connection, payload: bytes, parent_pid: int) -> None:
    """Run the tasks the parent sends, one at a time, until it sends None or goes away. A task
    is a list of jobs ``(idx, overrides)``: one job runs as a lone run, several train together
    as a group (``hydra/launcher=batched``: :func:`~hydra_plugins.trpo_lab_launchers.
    batched_launcher.run_group`)."""
    os.setpgrp()  # the terminal's Ctrl-C goes to the sweep's process, which passes it on
    stop_with_parent(parent_pid)
    hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        setup_globals()
        Singleton.set_state(singleton_state)
        configs = [sweep_config_of(hydra_context, config, idx, overrides)
                   for idx, overrides in message]
        try:
            conn.send(("started", [str(job_dir(c)) for c in configs]))
            if len(configs) == 1:
                HydraConfig.instance().set_config(configs[0])
                rets = [run_job(hydra_context=hydra_context, config=configs[0],
                                task_function=task_function, job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir")]
            else:
                from trpo_lab.jobs import run_group

                rets = run_group(hydra_context, configs)
            conn.send(("done", cloudpickle.dumps(rets)))
        except (BrokenPipeError, ConnectionResetError):
            return  # the sweep's process is gone; the jobs have saved what they had


# ----------------------------------------------------------------------------- in the parent
@dataclass
class Worker:
    process: Any
    conn: Connection
    job: int | None = None  # index into the launch's tasks
    job_dirs: list[Path] = field(default_factory=list)  # of the task's jobs, once started


@dataclass
class Pool:
    """Worker processes, each with its own pipe: one death leaves the others untouched."""

    payload: bytes
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")

    def spawn(self) -> Worker:
        parent_end, child_end = self.context.Pipe()
        process = self.context.Process(target=worker_main, name="trpo-lab-worker",
                                       args=(child_end, self.payload, os.getpid()), daemon=False)
        process.start()
        child_end.close()
        worker = Worker(process, parent_end)
        self.workers.append(worker)
        return worker

    def idle(self) -> Worker | None:
        for worker in [w for w in self.workers if w.job is None]:
            if worker.process.is_alive():
                return worker
            self.remove(worker)  # died between jobs: nothing was lost
        return None

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.job is not None]

    def signal_busy(self, signum: int) -> None:
        for worker in self.busy():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, signum)

    def remove(self, worker: Worker) -> None:
        self.workers.remove(worker)
        worker.conn.close()
        worker.process.join(timeout=5)

    def close(self) -> None:
        for worker in list(self.workers):
            with contextlib.suppress(OSError):
                worker.conn.send(None)
            self.remove(worker)


def _mark_dead_job(directory: Path | None, exitcode: int | None) -> str:
    """A job whose worker died: its summary says so, unless another process owns the dir."""
    from trpo_lab import rundir
    from trpo_lab.train import write_summary

    reason = f"the worker process running this job {signal_name(exitcode)}"
    if directory is None:
        return reason
    try:
        rundir.claim(directory)
    except rundir.RunDirBusy:
        return reason
    try:
        write_summary(directory, {"status": "failed", "error": reason})
    except RuntimeError:
        pass  # could not write (disk full): the sweep's line still counts it failed
    finally:
        rundir.release(directory)
    return reason


def _dead_job_return(overrides: Sequence[str], directory: Path | None) -> JobReturn:
    # COMPLETED with the value "failed", as run_job's own failed jobs: the sweep goes on
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value="failed")
    if directory is not None:
        ret.working_dir = str(directory)
    return ret


class SignalFlag:
    """Within the block, SIGINT and SIGTERM in this process are counted (``first``: the first
    one) and passed to :meth:`on_signal` instead of acting; the previous handlers come back at
    the end. A loop that waits polls ``count``."""

    def __init__(self) -> None:
        self.count, self.previous = 0, {}
        self.first: int | None = None  # the first signal: the sweep's exit code is 128 + it

    def __enter__(self) -> SignalFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: left as it is
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.first = signum if self.first is None else self.first
        self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        """What a signal does besides being counted: nothing here."""

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Stop(SignalFlag):
    """SIGINT/SIGTERM in the sweep's process during launch: counted and passed on to the
    workers that are busy."""

    def __init__(self, pool: Pool):
        super().__init__()
        self.pool = pool

    def on_signal(self, signum: int) -> None:
        self.pool.signal_busy(signum)


def launch_isolated(launcher, job_overrides: Sequence[Sequence[str]],
                    initial_job_idx: int) -> list[JobReturn]:
    """``hydra/launcher=joblib``: every job a task of its own on the isolated workers."""
    tasks = [[(initial_job_idx + i, list(o))] for i, o in enumerate(job_overrides)]
    return [ret for rets in launch_tasks(launcher, tasks) for ret in rets]


def launch_tasks(launcher, tasks: Sequence[Sequence[tuple[int, Sequence[str]]]]
                 ) -> list[list[JobReturn]]:
    """Run ``tasks`` (each a list of jobs ``(hydra.job.num, overrides)``; several jobs train
    together as a group) on ``launcher.joblib["n_jobs"]`` isolated workers; the JobReturns of
    each task's jobs. A worker that dies fails the jobs of its task."""
    from trpo_lab.jobs import record_job

    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    payload = cloudpickle.dumps((launcher.hydra_context, launcher.config,
                                 launcher.task_function, Singleton.get_state()))
    n_workers = worker_count(launcher.joblib["n_jobs"], len(tasks))
    pool = Pool(payload)
    results: list[list[JobReturn] | None] = [None] * len(tasks)
    pending = deque(range(len(tasks)))
    with _Stop(pool) as stop:
        try:
            while (pending and not stop.count) or pool.busy():
                while pending and not stop.count:
                    worker = pool.idle() or (pool.spawn() if len(pool.workers) < n_workers
                                             else None)
                    if worker is None:
                        break
                    worker.job = pending.popleft()
                    worker.conn.send([(num, list(o)) for num, o in tasks[worker.job]])
                _collect(pool, tasks, results, record_job)
        finally:
            pool.close()
    if stop.count:
        done = sum(len(r) for r in results if r is not None)
        total = sum(len(t) for t in tasks)
        print(f"trpo-lab: sweep {launcher.config.hydra.sweep.dir} interrupted ({done} of "
              f"{total} jobs ended, the running ones checkpointed); rerun the same "
              f"command to resume", file=sys.stderr, flush=True)
        sys.exit(128 + (stop.first or signal.SIGINT))  # 130 after Ctrl-C, 143 after SIGTERM
    return [r for r in results if r is not None]


def _collect(pool: Pool, tasks, results, record_job) -> None:
    """Wait for a message or a death among the busy workers and act on it."""
    busy = pool.busy()
    by_handle = {}
    for worker in busy:
        by_handle[worker.conn] = worker
        by_handle[worker.process.sentinel] = worker
    for ready in wait(list(by_handle), timeout=1.0):
        worker = by_handle[ready]
        if worker not in pool.workers or worker.job is None:
            continue  # handled through its other handle already
        try:
            if worker.conn.poll():
                kind, value = worker.conn.recv()
                if kind == "started":
                    worker.job_dirs = [Path(v) for v in value]
                    continue
                rets = cloudpickle.loads(value)
                results[worker.job] = rets
                for directory, ret in zip(worker.job_dirs, rets):
                    record_job(directory, ret)
                worker.job, worker.job_dirs = None, []
                continue
        except (EOFError, OSError):
            pass  # the pipe broke: the worker is dead or dying
        if ready is worker.process.sentinel or not worker.process.is_alive():
            worker.process.join(timeout=5)
            task = tasks[worker.job]
            directories = worker.job_dirs or [None] * len(task)
            rets = []
            for (num, overrides), directory in zip(task, directories):
                reason = _mark_dead_job(directory, worker.process.exitcode)
                print(f"trpo-lab: job {directory or num}: {reason}", file=sys.stderr,
                      flush=True)
                ret = _dead_job_return(overrides, directory)
                record_job(directory, ret)
                rets.append(ret)
            results[worker.job] = rets
            pool.remove(worker)


def install() -> None:
    """Make ``hydra/launcher=joblib`` launch through :func:`launch_isolated`."""
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
    except ImportError:
        return  # the joblib launcher is not installed: nothing to replace
    _core.launch = launch_isolated
