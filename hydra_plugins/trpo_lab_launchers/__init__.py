"""trpo-lab's Hydra launchers for Slurm and Ray (Hydra loads launchers from hydra_plugins only).

``hydra/launcher=slurm`` -> :mod:`.slurm_launcher`; ``hydra/launcher=ray_local`` and ``ray_cluster``
-> :mod:`.ray_launcher`. What they share with the jobs is in :mod:`trpo_lab.cluster`.
"""
