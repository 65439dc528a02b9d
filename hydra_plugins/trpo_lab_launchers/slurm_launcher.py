"""``hydra/launcher=slurm``: Hydra's Slurm launcher (hydra-submitit-launcher 1.2) with a wait
that tells the truth.

The plugin submits one array job, then waits on ``job.results()`` one job after another. With
accounting off ``sacct`` fails ("Bypassing sacct error ... status may be inaccurate"), so a job
that leaves the queue without a result (cancelled, killed outside the run) is waited for forever,
and a job that raised makes the whole sweep raise before its report. This launcher submits the
same array job, then waits with :class:`trpo_lab.cluster.SlurmWait` (result files and
``squeue``): requeued jobs are waited for, lost ones are failed, Ctrl-C reports what is queued.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from trpo_lab.cluster import SlurmWait, pin_sweep_dir, reporting_failures

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: the plugin's submission, this module's wait."""

    poll_s = 10.0  # seconds between squeue calls
    lost_after_s = 30.0  # out of the queue this long without a result: ended without one

    def __init__(self, n_jobs: int | None = None, **params: Any) -> None:
        super().__init__(**params)  # n_jobs: the named sweeps' joblib setting, ignored here

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        with reporting_failures("Slurm"):
            sweep_dir = pin_sweep_dir(self.config)
            jobs = self._submit(job_overrides, initial_job_idx, sweep_dir)
            return SlurmWait(self, jobs, job_overrides, initial_job_idx).run()

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                sweep_dir: Path) -> list[Any]:
        """hydra-submitit-launcher 1.2's submission, as in its ``launch``, without the wait."""
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"))
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in queue_keys else f"slurm_{k}": v
                                      for k, v in params.items()})
        log.info(f"Slurm sweep output dir: {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                               Singleton.get_state()))
        return executor.map_array(self, *zip(*job_params))
