"""PPO's clipped surrogate (Schulman et al. 2017), on the same batch as every other algorithm.

    L_clip(theta') = sum_i w_i min(ratio_i A_i, clip(ratio_i, 1 - eps, 1 + eps) A_i)

maximised by ``epochs`` passes of ``minibatches`` Adam steps.
"""

from __future__ import annotations

import torch

from trpo_lab.algos.common import guarded_step, make_optimizer, minibatch_indices, ratio, subset
from trpo_lab.config import PPOConfig
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


def clipped_surrogate(ratios: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                      clip: float) -> torch.Tensor:
    clipped = torch.clamp(ratios, 1.0 - clip, 1.0 + clip)
    return (weights * torch.minimum(ratios * advantages, clipped * advantages)).sum()


def build(policy: Policy, cfg: PPOConfig, gamma: float, generator: torch.Generator) -> PPO:
    """The registry's constructor (:mod:`trpo_lab.registry`)."""
    return PPO(policy, cfg, generator)


class PPO:
    def __init__(self, policy: Policy, cfg: PPOConfig, generator: torch.Generator):
        self.policy, self.cfg, self.generator = policy, cfg, generator
        self.params = policy.actor_parameters()
        self.optimizer = make_optimizer("adam", self.params, cfg.lr)

    def update(self, batch: Batch) -> dict[str, float]:
        for _ in range(self.cfg.epochs):
            for index in minibatch_indices(batch.size, self.cfg.minibatches, self.generator):
                mb = subset(batch, index)
                objective = clipped_surrogate(ratio(self.policy, mb), mb.policy_advantages,
                                              mb.weights, self.cfg.clip)
                if not guarded_step(self.optimizer, -objective, self.params):
                    return {"guard/nonfinite": 1.0}
        return {}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
