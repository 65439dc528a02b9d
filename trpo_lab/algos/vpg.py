"""Vanilla policy gradient: ``steps`` optimiser steps on the surrogate sum_i w_i ratio_i A_i.

At the collecting policy ratio = 1 and the gradient is the REINFORCE/GAE estimator
sum_i w_i grad log pi(a_i|s_i) A_i; with steps = 1 this is the textbook update.
"""

from __future__ import annotations

import torch

from trpo_lab.algos.common import guarded_step, make_optimizer, surrogate
from trpo_lab.config import VPGConfig
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


def build(policy: Policy, cfg: VPGConfig, gamma: float, generator: torch.Generator) -> VPG:
    """The registry's constructor (:mod:`trpo_lab.registry`)."""
    return VPG(policy, cfg)


class VPG:
    def __init__(self, policy: Policy, cfg: VPGConfig):
        self.policy, self.cfg = policy, cfg
        self.params = policy.actor_parameters()
        self.optimizer = make_optimizer(cfg.optimizer, self.params, cfg.lr)

    def update(self, batch: Batch) -> dict[str, float]:
        for _ in range(self.cfg.steps):
            if not guarded_step(self.optimizer, -surrogate(self.policy, batch), self.params):
                return {"guard/nonfinite": 1.0}
        return {}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
