"""Hydra's Ray launcher (hydra-ray-launcher 1.2) for a Ray it starts or a running cluster.

Differences from the plugin's own launcher: the sweep directory is made absolute before jobs are
sent (a worker of a running cluster starts in the directory where ``ray start`` ran, so relative
run directories land there and the sweep report finds none); no object store size is passed when
connecting to a running cluster (Ray refuses one: "When connecting to an existing cluster,
object_store_memory must not be provided"); a job whose Ray task failed (a worker died) is a
failed job in the sweep report instead of an exception that ends the sweep before its report;
any other launcher error is a failed sweep (exit 1 with the cause); and Ctrl-C ends with the
sweep report, the unfinished jobs counted as interrupted.

Hydra imports this module at every start to find its plugins: Ray itself is imported only when
a sweep is launched, and without the Ray extra the class only says how to install it.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

from trpo_lab.cluster import (
    job_run_dir,
    outcome_return,
    pin_sweep_dir,
    record_outcome,
    reporting_failures,
)
from trpo_lab.launcher import SignalFlag

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as PluginRayLauncher
except ImportError:  # no Ray extra
    PluginRayLauncher = None

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often the driver looks at its stop flag while it waits for a job
OBJECT_STORE_BYTES = 78_643_200  # the plugin's object store for a Ray it starts (75 MB)
INSTALL_HINT = ('hydra/launcher=ray_local and ray_cluster need the Ray extra: pip install -e '
                '".[ray]" (in a virtual environment of its own: it downgrades cloudpickle)')


if PluginRayLauncher is None:

    class RayLauncher(Launcher):
        """Stands in for the launcher when hydra-ray-launcher is not installed."""

        def __init__(self, **params: Any) -> None:
            raise ImportError(INSTALL_HINT)

        def setup(self, **kwargs: Any) -> None:  # pragma: no cover  (never instantiated)
            raise ImportError(INSTALL_HINT)

        def launch(self, job_overrides: Sequence[Sequence[str]],
                   initial_job_idx: int) -> Sequence[JobReturn]:  # pragma: no cover
            raise ImportError(INSTALL_HINT)

else:

    class RayLauncher(PluginRayLauncher):
        """``hydra/launcher=ray_local`` (starts Ray), ``hydra/launcher=ray_cluster`` (connects)."""

        def __init__(self, ray: Any, n_jobs: int | None = None) -> None:
            super().__init__(ray=ray)  # n_jobs: the named sweeps' joblib setting, ignored here

        def launch(self, job_overrides: Sequence[Sequence[str]],
                   initial_job_idx: int) -> Sequence[JobReturn]:
            with reporting_failures("Ray"):
                from hydra_plugins.hydra_ray_launcher._launcher_util import (
                    launch_job_on_ray,
                    start_ray,
                )

                sweep_dir = pin_sweep_dir(self.config)
                setup_globals()
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                sweep_dir.mkdir(parents=True, exist_ok=True)
                init = self.ray_cfg.init
                address = init.get("address")
                if address is None:
                    with open_dict(init):
                        init.setdefault("object_store_memory", OBJECT_STORE_BYTES)
                start_ray(init)
                where = f"the Ray cluster at {address}" if address else "a Ray started here"
                print(f"trpo-lab: sending {len(job_overrides)} jobs to {where}, sweep dir "
                      f"{sweep_dir}; waiting for all of them", file=sys.stderr, flush=True)
                refs = []
                for num, overrides in enumerate(job_overrides, start=initial_job_idx):
                    log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
                    sweep_config = self.hydra_context.config_loader.load_sweep_config(
                        self.config, list(overrides))
                    with open_dict(sweep_config):
                        sweep_config.hydra.job.id = f"job_id_for_{num}"
                        sweep_config.hydra.job.num = num
                    refs.append(launch_job_on_ray(self.hydra_context, self.ray_cfg.remote,
                                                  sweep_config, self.task_function,
                                                  Singleton.get_state()))
                return self._results(refs, job_overrides, initial_job_idx)

        def _results(self, refs: list[Any], job_overrides: Sequence[Sequence[str]],
                     first_num: int) -> list[JobReturn]:
            """Every job's JobReturn, in order. Ctrl-C or SIGTERM: the jobs not done yet are
            interrupted (Ray kills a departing driver's tasks) and the sweep report says so.

            The signal only sets a flag, read between short ``ray.wait`` calls: raised as
            KeyboardInterrupt inside Ray's own blocking get, it could be lost, and Ray's driver
            turns SIGTERM into ``sys.exit(15)`` without a report."""
            import ray

            jobs = list(enumerate(zip(job_overrides, refs), start=first_num))
            returns: list[JobReturn] = []
            with SignalFlag() as stop:
                for num, (overrides, ref) in jobs:
                    while not stop.count and not ray.wait([ref], timeout=POLL_S)[0]:
                        pass
                    if stop.count:
                        break
                    returns.append(self._result(ref, overrides, num))
            if stop.count:
                print(f"\ntrpo-lab: stopped ({signal.Signals(stop.first).name}); Ray ends the "
                      "sweep's unfinished tasks with this command. Rerun it with "
                      f"hydra.sweep.dir={self.config.hydra.sweep.dir} to resume them.",
                      file=sys.stderr, flush=True)
                for num, (overrides, ref) in jobs[len(returns):]:
                    if ray.wait([ref], timeout=0)[0]:  # done meanwhile
                        returns.append(self._result(ref, overrides, num))
                        continue
                    record_outcome(job_run_dir(self, overrides, num), "interrupted",
                                   "stopped with the sweep command (Ray ended its task)")
                    returns.append(outcome_return(overrides, "interrupted"))
            return returns

        def _result(self, ref: Any, overrides: Sequence[str], num: int) -> JobReturn:
            import ray

            try:
                job_return = ray.get(ref)
            except ray.exceptions.RayError as error:
                first_line = (str(error).strip().splitlines() or [""])[0]
                detail = f"Ray task failed: {type(error).__name__}: {first_line}"
            else:
                if job_return.status == JobStatus.COMPLETED:
                    return job_return
                raised = job_return._return_value
                detail = f"{type(raised).__name__}: {raised}"
            record_outcome(job_run_dir(self, overrides, num), "failed", detail)
            return outcome_return(overrides, "failed")
