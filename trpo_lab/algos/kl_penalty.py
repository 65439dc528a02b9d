"""Fixed KL penalty: the penalty form of TRPO's lower bound.

    fixed beta:     maximise  sum_i w_i ratio_i A_i - beta * sum_i w_i KL(pi_old || pi')[s_i]
    beta = theory:  maximise  dL_hat(pi') - C * max_i KL(pi_old || pi')[s_i],
                    C = 4 eps gamma / (1 - gamma)^2,  eps = max_i |A_i|  (raw advantages)

The theory form is the right-hand side of the bound J(pi') - J(pi) >= dL - C KLmax, in units of
J, recomputed every update. With ``algo.estimator=exact`` and ``policy=tabular`` it is exactly
Algorithm 1 of the TRPO paper: the update is the maximiser of dL - C KLmax over all tabular
policies (:func:`trpo_lab.exact.maximize_penalized_surrogate`, to about 1e-10 relative), so
J can never decrease. Other policies (or sampled batches) ascend the same objective by
backtracking gradient steps and keep the best point seen (the old policy scores exactly 0): a
monotone but truncated optimiser.
"""

from __future__ import annotations

import numpy as np
import torch

from trpo_lab.algos.common import (
    guarded_step,
    make_optimizer,
    mean_kl,
    minibatch_indices,
    predicted_improvement,
    subset,
    surrogate,
)
from trpo_lab.config import KLPenaltyConfig
from trpo_lab.numerics import flat_grad, flat_params, set_flat_params
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch

MAX_HALVINGS = 40


def theory_coefficient(advantages: torch.Tensor, gamma: float) -> float:
    """C = 4 eps gamma / (1 - gamma)^2 with eps = max |A| (Schulman et al. 2015, eq. 9)."""
    eps = float(advantages.abs().max())
    return 4.0 * eps * gamma / (1.0 - gamma) ** 2


def is_theory(beta) -> bool:
    return beta == "theory"


def build(policy: Policy, cfg: KLPenaltyConfig, gamma: float,
          generator: torch.Generator) -> KLPenalty:
    """The registry's constructor (:mod:`trpo_lab.registry`)."""
    return KLPenalty(policy, cfg, gamma, generator)


class KLPenalty:
    def __init__(self, policy: Policy, cfg: KLPenaltyConfig, gamma: float,
                 generator: torch.Generator):
        self.policy, self.cfg, self.gamma, self.generator = policy, cfg, gamma, generator
        self.params = policy.actor_parameters()
        self.optimizer = make_optimizer(cfg.optimizer, self.params, cfg.lr)
        self.theory = is_theory(cfg.beta)
        self.beta = 0.0 if self.theory else float(cfg.beta)

    def _theory_objective(self, batch: Batch) -> torch.Tensor:
        params = self.policy.dist_params(batch.obs)
        kl_max = self.policy.head.kl(batch.old_params, params).max()
        return predicted_improvement(self.policy, batch, params) - self.beta * kl_max

    def update(self, batch: Batch) -> dict[str, float]:
        if self.theory:
            self.beta = theory_coefficient(batch.advantages, self.gamma)
            # Algorithm 1's maximiser is a joint table: a product policy (factored actions)
            # cannot hold it, so it takes the gradient ascent below
            if batch.exact and self.policy.policy_name == "tabular" and self.beta > 0 \
                    and self.policy.head.kind == "categorical":
                return self._update_algorithm_1(batch) | {"penalty/beta": self.beta}
            return self._update_theory(batch) | {"penalty/beta": self.beta}
        for _ in range(self.cfg.epochs):
            for index in minibatch_indices(batch.size, self.cfg.minibatches, self.generator):
                mb = subset(batch, index)
                objective = surrogate(self.policy, mb) - self.beta * mean_kl(self.policy, mb)
                if not guarded_step(self.optimizer, -objective, self.params):
                    return {"guard/nonfinite": 1.0, "penalty/beta": self.beta}
        return {"penalty/beta": self.beta}

    def _update_algorithm_1(self, batch: Batch) -> dict[str, float]:
        """The exact maximiser over tabular policies, from the exact batch: its rows are the
        (s, a) pairs in state-major order, ``dl_weights`` = rho(s) pi(a|s)."""
        from trpo_lab.exact import maximize_penalized_surrogate

        num_actions = self.policy.head.n
        num_states = batch.size // num_actions
        pi = self.policy.numpy_actor().probabilities(np.eye(num_states))
        advantages = batch.advantages.double().cpu().numpy().reshape(num_states, num_actions)
        rho = batch.dl_weights.double().cpu().numpy().reshape(num_states, num_actions).sum(
            axis=1)
        optimum = maximize_penalized_surrogate(pi, advantages, rho, self.beta)
        self.policy.set_tabular_probabilities(optimum.pi_new)
        return {}

    def _update_theory(self, batch: Batch) -> dict[str, float]:
        """Monotone gradient ascent on M(theta') = dL - C KLmax, halving steps until M rises.

        M is non-smooth (a max over states) and C is large, so Adam's fixed-size steps overshoot;
        a backtracking ascent from ``lr`` accepts only steps that raise M above its best value
        (the old policy scores exactly 0).
        """
        best_value, best = 0.0, flat_params(self.params)
        for _ in range(self.cfg.epochs):
            grad = flat_grad(self._theory_objective(batch), self.params)
            if not torch.isfinite(grad).all():
                set_flat_params(self.params, best)
                return {"guard/nonfinite": 1.0}
            step, improved = self.cfg.lr, False
            for _ in range(MAX_HALVINGS):
                set_flat_params(self.params, best + step * grad)
                with torch.no_grad():
                    value = float(self._theory_objective(batch))
                if value > best_value:
                    best_value, best, improved = value, flat_params(self.params), True
                    break
                step *= 0.5
            set_flat_params(self.params, best)
            if not improved:
                break
        return {}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
