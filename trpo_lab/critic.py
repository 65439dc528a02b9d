"""The critic's training, identical for every algorithm: regression of V on the GAE returns."""

from __future__ import annotations

import torch

from trpo_lab import mlp
from trpo_lab.algos.common import minibatch_indices
from trpo_lab.config import CriticConfig
from trpo_lab.numerics import explained_variance
from trpo_lab.optim import Adam
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


class CriticTrainer:
    def __init__(self, policy: Policy, cfg: CriticConfig, generator: torch.Generator):
        self.policy, self.cfg, self.generator = policy, cfg, generator
        self.params = policy.critic_parameters()
        self.optimizer = Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps)

    def update(self, batch: Batch) -> dict[str, float]:
        """``epochs`` passes of minibatch MSE steps; explained variance is of the old values."""
        ev = explained_variance(batch.values.double().numpy(), batch.returns.double().numpy())
        for _ in range(self.cfg.epochs):
            for index in minibatch_indices(batch.size, self.cfg.minibatches, self.generator):
                self._step(batch.obs[index], batch.returns[index])
        with torch.no_grad():
            final = float(((self.policy.value(batch.obs) - batch.returns) ** 2).mean())
        return {"value/loss": final, "value/explained_variance": ev}

    def _step(self, obs: torch.Tensor, targets: torch.Tensor) -> None:
        """One Adam step on mean (V(s) - target)^2, gradients by hand (see trpo_lab.mlp)."""
        cache = mlp.forward_cache(self.policy.critic, obs)
        error = cache.output.squeeze(-1) - targets
        if not torch.isfinite(error).all():  # finite errors and weights: finite gradients
            return
        grads = mlp.vjp(self.policy.critic, cache, (2.0 / error.numel()) * error.unsqueeze(-1))
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
