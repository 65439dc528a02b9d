"""``hydra/launcher=slurm``: Hydra's Slurm launcher (hydra-submitit-launcher 1.2) with a wait
that tells the truth, and groups of runs as array elements.

The plugin submits one array job, then waits on ``job.results()`` one job after another. With
accounting off ``sacct`` fails ("Bypassing sacct error ... status may be inaccurate"), so a job
that leaves the queue without a result (cancelled, killed outside the run) is waited for forever,
and a job that raised makes the whole sweep raise before its report. This launcher submits the
same array job, then waits with :class:`trpo_lab.cluster.SlurmWait` (result files and
``squeue``): requeued jobs are waited for, lost ones are failed, Ctrl-C reports what is queued.

``group_runs=true``: the jobs are grouped as ``hydra/launcher=batched`` groups them
(:func:`~hydra_plugins.trpo_lab_launchers.batched_launcher.plan`, at most ``max_group`` a
group), and each group is one array element that trains its runs together in one process
(:func:`~hydra_plugins.trpo_lab_launchers.batched_launcher.run_group`, as a batched worker
does); a job that cannot be grouped is an element of its own, run as without grouping.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from trpo_lab.cluster import SlurmWait, pin_sweep_dir, reporting_failures

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: the plugin's submission, this module's wait."""

    poll_s = 10.0  # seconds between squeue calls
    lost_after_s = 30.0  # out of the queue this long without a result: ended without one

    def __init__(self, n_jobs: int | None = None, group_runs: bool = False, max_group: int = 16,
                 **params: Any) -> None:
        super().__init__(**params)  # n_jobs: the named sweeps' joblib setting, ignored here
        self.group_runs, self.max_group = bool(group_runs), int(max_group)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        with reporting_failures("Slurm"):
            sweep_dir = pin_sweep_dir(self.config)
            elements = self._elements(job_overrides, initial_job_idx)
            jobs = self._submit(job_overrides, initial_job_idx, sweep_dir, elements)
            return SlurmWait(self, jobs, job_overrides, initial_job_idx, elements).run()

    def _elements(self, job_overrides: Sequence[Sequence[str]],
                  initial_job_idx: int) -> list[list[int]] | None:
        """With ``group_runs``: the job indices of each array element (a group, or a job that
        cannot be grouped), in the order of their first job; else None (one job each)."""
        if not self.group_runs:
            return None
        from hydra_plugins.trpo_lab_launchers.batched_launcher import plan

        groups, singles = plan(self.hydra_context, self.config, job_overrides, initial_job_idx,
                               self.max_group)
        print(f"trpo-lab: Slurm: {len(job_overrides)} jobs in {len(groups)} group(s) "
              f"({', '.join(str(len(g)) for g in groups) or 'none'}) and {len(singles)} alone: "
              f"{len(groups) + len(singles)} array element(s)", file=sys.stderr, flush=True)
        return sorted([*groups, *[[i] for i in singles]], key=lambda element: element[0])

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                sweep_dir: Path, elements: list[list[int]] | None = None) -> list[Any]:
        """hydra-submitit-launcher 1.2's submission, as in its ``launch``, without the wait;
        with ``elements``, one array element per element, trained by :class:`GroupElement`."""
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
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        if elements is None:
            job_params = [(list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", state)
                          for num, overrides in enumerate(job_overrides, start=initial_job_idx)]
            return executor.map_array(self, *zip(*job_params))
        tasks = [[(initial_job_idx + i, list(job_overrides[i])) for i in element]
                 for element in elements]
        for k, task in enumerate(tasks):
            log.info(f"\tarray element {k}: " + ", ".join(f"#{num}" for num, _ in task))
        return executor.map_array(GroupElement(self), tasks, [state] * len(tasks))


class GroupElement:
    """What an array element of a ``group_runs`` sweep runs: its jobs ``(num, overrides)``,
    one JobReturn each. One job runs as a ``hydra/launcher=slurm`` job; several train together
    in this process, as a ``hydra/launcher=batched`` worker trains a group. A signal stops every
    run of the group after its update with a checkpoint, and the requeued element resumes them
    all (:meth:`trpo_lab.cluster.SlurmSignals.settle`; :meth:`checkpoint` resubmits the same
    element after submitit's timeout/preemption signal)."""

    def __init__(self, launcher: SlurmLauncher):
        self.launcher = launcher

    def __call__(self, jobs: list[tuple[int, list[str]]],
                 singleton_state: dict[Any, Any]) -> list[JobReturn]:
        launcher = self.launcher
        if len(jobs) == 1:
            num, overrides = jobs[0]
            return [launcher(overrides, "hydra.sweep.dir", num, f"job_id_for_{num}",
                             singleton_state)]
        from hydra_plugins.trpo_lab_launchers.batched_launcher import run_group
        from trpo_lab.launcher import sweep_config_of

        Singleton.set_state(singleton_state)
        setup_globals()
        configs = [sweep_config_of(launcher.hydra_context, launcher.config, num, overrides)
                   for num, overrides in jobs]
        return run_group(launcher.hydra_context, configs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
