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


def worker_main(conn: Connection, payload: bytes, parent_pid: int) -> None:
    """Run the jobs the parent sends, one at a time, until it sends None or goes away."""
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
        idx, overrides = message
        setup_globals()
        Singleton.set_state(singleton_state)
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        try:
            conn.send(("started", str(job_dir(sweep_config))))
            ret = run_job(hydra_context=hydra_context, config=sweep_config,
                          task_function=task_function, job_dir_key="hydra.sweep.dir",
                          job_subdir_key="hydra.sweep.subdir")
            conn.send(("done", cloudpickle.dumps(ret)))
        except (BrokenPipeError, ConnectionResetError):
            return  # the sweep's process is gone; the job has saved what it had


# ----------------------------------------------------------------------------- in the parent
@dataclass
class Worker:
    process: Any
    conn: Connection
    job: int | None = None  # index into the launch's jobs
    job_dir: Path | None = None


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


class _Stop:
    """SIGINT/SIGTERM in the sweep's process during launch: counted and passed on."""

    def __init__(self, pool: Pool):
        self.pool, self.count, self.previous = pool, 0, {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.pool.signal_busy(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def launch_isolated(launcher, job_overrides: Sequence[Sequence[str]],
                    initial_job_idx: int,
                    job_numbers: Sequence[int] | None = None) -> list[JobReturn]:
    """Run the jobs on isolated workers; ``job_numbers``: each job's ``hydra.job.num``
    (default: consecutive from ``initial_job_idx``)."""
    from trpo_lab.app import record_job

    if job_numbers is None:
        job_numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))

    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    payload = cloudpickle.dumps((launcher.hydra_context, launcher.config,
                                 launcher.task_function, Singleton.get_state()))
    n_workers = worker_count(launcher.joblib["n_jobs"], len(job_overrides))
    pool = Pool(payload)
    results: list[JobReturn | None] = [None] * len(job_overrides)
    pending = deque(range(len(job_overrides)))
    with _Stop(pool) as stop:
        try:
            while (pending and not stop.count) or pool.busy():
                while pending and not stop.count:
                    worker = pool.idle() or (pool.spawn() if len(pool.workers) < n_workers
                                             else None)
                    if worker is None:
                        break
                    worker.job = pending.popleft()
                    worker.conn.send((job_numbers[worker.job],
                                      list(job_overrides[worker.job])))
                _collect(pool, job_overrides, results, record_job)
        finally:
            pool.close()
    if stop.count:
        done = sum(r is not None for r in results)
        print(f"trpo-lab: sweep {launcher.config.hydra.sweep.dir} interrupted ({done} of "
              f"{len(results)} jobs ended, the running ones checkpointed); rerun the same "
              f"command to resume", file=sys.stderr, flush=True)
        sys.exit(130)
    return [r for r in results if r is not None]


def _collect(pool: Pool, job_overrides, results, record_job) -> None:
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
                    worker.job_dir = Path(value)
                    continue
                ret = cloudpickle.loads(value)
                results[worker.job] = ret
                record_job(worker.job_dir, ret)
                worker.job, worker.job_dir = None, None
                continue
        except (EOFError, OSError):
            pass  # the pipe broke: the worker is dead or dying
        if ready is worker.process.sentinel or not worker.process.is_alive():
            worker.process.join(timeout=5)
            reason = _mark_dead_job(worker.job_dir, worker.process.exitcode)
            print(f"trpo-lab: job {worker.job_dir or worker.job}: {reason}", file=sys.stderr,
                  flush=True)
            ret = _dead_job_return(job_overrides[worker.job], worker.job_dir)
            results[worker.job] = ret
            record_job(worker.job_dir, ret)
            pool.remove(worker)


def install() -> None:
    """Make ``hydra/launcher=joblib`` launch through :func:`launch_isolated`."""
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
    except ImportError:
        return  # the joblib launcher is not installed: nothing to replace
    _core.launch = launch_isolated
