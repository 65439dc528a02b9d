"""One module per update rule; :func:`make_algorithm` picks one from the typed config."""

from __future__ import annotations

import torch

from trpo_lab.algos.kl_penalty import KLPenalty
from trpo_lab.algos.ppo import PPO
from trpo_lab.algos.trpo import TRPO
from trpo_lab.algos.vpg import VPG
from trpo_lab.config import KLPenaltyConfig, PPOConfig, TRPOConfig, VPGConfig
from trpo_lab.policies import Policy


def make_algorithm(policy: Policy, cfg, gamma: float, generator: torch.Generator):
    if isinstance(cfg, TRPOConfig):
        return TRPO(policy, cfg)
    if isinstance(cfg, VPGConfig):
        return VPG(policy, cfg)
    if isinstance(cfg, KLPenaltyConfig):
        return KLPenalty(policy, cfg, gamma, generator)
    if isinstance(cfg, PPOConfig):
        return PPO(policy, cfg, generator)
    raise TypeError(f"unknown algorithm config {type(cfg).__name__}")


def algo_label(cfg) -> str:
    """trpo, npg (TRPO without line search), vpg, kl_penalty or ppo."""
    if isinstance(cfg, TRPOConfig) and not cfg.line_search:
        return "npg"
    return cfg.name
