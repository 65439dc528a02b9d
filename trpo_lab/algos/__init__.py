"""One module per update rule; :func:`make_algorithm` builds the one the typed config names,
through the registry (:mod:`trpo_lab.registry`: each algorithm's schema, columns and code)."""

from __future__ import annotations

import torch

from trpo_lab.policies import Policy
from trpo_lab.registry import algorithm_of, resolve


def make_algorithm(policy: Policy, cfg, gamma: float, generator: torch.Generator):
    return resolve(algorithm_of(cfg).build)(policy, cfg, gamma, generator)


def algo_label(cfg) -> str:
    """trpo, npg (TRPO without line search), vpg, kl_penalty, ppo, or a plug-in's label."""
    return algorithm_of(cfg).label_of(cfg)
