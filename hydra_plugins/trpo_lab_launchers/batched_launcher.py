"""``hydra/launcher=batched``: a sweep's jobs of one shape trained together, one process per
group (:mod:`trpo_lab.group`).

The launcher composes every job's configuration, groups the jobs whose configurations differ
only in keys that keep every array's shape (:data:`GROUPABLE`: seeds, delta, gamma, lambda,
learning rates, a numeric beta, clip, damping, backtrack factor), at most ``max_group`` jobs a
group, and trains each group of two or more in this process with a leading run axis. Every job
of a group is set up by Hydra exactly as a lone job (its run directory, ``.hydra/``, callbacks),
and writes exactly a lone job's outputs: metrics.csv, summary.json, checkpoint.pt, its own W&B
run. The other jobs (a configuration alone in its shape, one that does not compose or resolve)
run as ``hydra/launcher=joblib`` runs them, on ``n_jobs`` isolated worker processes
(:mod:`trpo_lab.launcher`). The sweep report and exit code are the same as with any launcher.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from trpo_lab.jobs import prepare_task, run_group  # noqa: F401  (the slurm launcher's too)
from trpo_lab.registry import groupable_keys

log = logging.getLogger(__name__)

#: Keys in which the jobs of a group may differ: none changes an array's shape (the core's and
#: every registered algorithm's, :func:`trpo_lab.registry.groupable_keys`).
GROUPABLE = groupable_keys()


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def group_key(sweep_config: DictConfig) -> str | None:
    """What a job's configuration holds apart from the :data:`GROUPABLE` keys (a non-numeric
    ``algo.beta``, e.g. ``theory``, stays in it), as a string; None when the configuration
    does not resolve (the job then runs alone and reports the problem itself)."""
    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    try:
        flat = _flatten(OmegaConf.to_container(task, resolve=True))
    except Exception:  # noqa: BLE001  (any resolution problem: not grouped)
        return None
    for key in groupable_keys():
        if key == "algo.beta" and not isinstance(flat.get(key), (int, float)):
            continue
        flat.pop(key, None)
    return json.dumps(flat, sort_keys=True, default=str)


def plan_groups(keys: Sequence[str | None], max_group: int) -> tuple[list[list[int]], list[int]]:
    """Job indices in groups (same key, at most ``max_group``, two or more) and the rest."""
    by_key: dict[str, list[int]] = {}
    singles: list[int] = []
    for index, key in enumerate(keys):
        if key is None:
            singles.append(index)
        else:
            by_key.setdefault(key, []).append(index)
    groups = []
    size = max(int(max_group), 1)
    for members in by_key.values():
        for start in range(0, len(members), size):
            part = members[start:start + size]
            if len(part) > 1:
                groups.append(part)
            else:
                singles += part
    return groups, sorted(singles)


def plan(hydra_context: Any, config: DictConfig, job_overrides: Sequence[Sequence[str]],
         initial_job_idx: int, max_group: int) -> tuple[list[list[int]], list[int]]:
    """Compose every job's configuration as its job will, and group the jobs
    (:func:`plan_groups` of their :func:`group_key`); indices into ``job_overrides``. Used by
    this launcher and by ``hydra/launcher=slurm`` with ``group_runs=true``."""
    from trpo_lab.launcher import sweep_config_of

    keys = []
    for num, overrides in enumerate(job_overrides, start=initial_job_idx):
        sweep_config = sweep_config_of(hydra_context, config, num, overrides)
        HydraConfig.instance().set_config(sweep_config)  # for ${hydra:...} in the job's config
        keys.append(group_key(sweep_config))
    return plan_groups(keys, max_group)


class BatchedLauncher(Launcher):
    def __init__(self, max_group: int = 64, n_jobs: int | None = -1) -> None:
        self.max_group = max_group
        self.joblib = {"n_jobs": n_jobs}  # for the jobs that run alone (trpo_lab.launcher)
        self.config: DictConfig | None = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from trpo_lab.launcher import launch_tasks, worker_count

        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        groups, singles = plan(self.hydra_context, self.config, job_overrides, initial_job_idx,
                               self.max_group)
        groups = spread(groups, worker_count(self.joblib["n_jobs"], len(job_overrides)))
        workers = worker_count(self.joblib["n_jobs"], len(groups) + len(singles))
        print(f"trpo-lab: batched launcher: {len(job_overrides)} jobs in {len(groups)} groups "
              f"({', '.join(str(len(g)) for g in groups) or 'none'}) and {len(singles)} alone, "
              f"on {workers} worker processes", file=sys.stderr, flush=True)
        for group in groups:
            log.info("\tgroup: " + ", ".join(f"#{initial_job_idx + i}" for i in group))
        order = [*groups, *[[i] for i in singles]]
        tasks = [[(initial_job_idx + i, list(job_overrides[i])) for i in task] for task in order]
        results: list[JobReturn | None] = [None] * len(job_overrides)
        for task, rets in zip(order, launch_tasks(self, tasks)):
            for index, ret in zip(task, rets):
                results[index] = ret
        return [r for r in results if r is not None]


def spread(groups: list[list[int]], workers: int) -> list[list[int]]:
    """Split the largest groups in halves until there is a group for every worker (a group
    uses one core): 10 seeds on 2 workers train as two groups of 5."""
    groups = [list(g) for g in groups]
    while len(groups) < workers:
        largest = max(groups, key=len, default=None)
        if largest is None or len(largest) < 4:
            break
        groups.remove(largest)
        half = len(largest) // 2
        groups += [largest[:half], largest[half:]]
    return sorted(groups, key=lambda g: g[0])
