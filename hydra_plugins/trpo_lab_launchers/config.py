"""Schemas of trpo-lab's launchers, registered when Hydra scans its plugins at start-up."""

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class SlurmLauncherConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.trpo_lab_launchers.slurm_launcher.SlurmLauncher"
    # The named sweeps' local parallelism (they set hydra.launcher.n_jobs for joblib): accepted
    # so that they run on Slurm unchanged, and ignored; array_parallelism says how many jobs of
    # the array run at once.
    n_jobs: Optional[int] = None  # noqa: UP045  (OmegaConf's schemas want typing.Optional)
    # One array element per group of jobs (hydra/launcher=batched's grouping), trained together
    # in one process; at most max_group jobs a group (slurm_launcher.py).
    group_runs: bool = False
    max_group: int = 16


ConfigStore.instance().store(group="hydra/launcher", name="trpo_lab_slurm",
                             node=SlurmLauncherConf, provider="trpo_lab")
