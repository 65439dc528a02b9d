"""TRPO's update (Schulman et al. 2015), and the natural policy gradient with line_search=false.

    maximise_theta'  L(theta') = sum_i w_i ratio_i A_i   s.t.  mean KL(pi_old || pi_theta') <= delta

Direction s = (F + damping I)^-1 g by conjugate gradient on Fisher-vector products (F the
Hessian of the mean KL at theta_old); full step sqrt(2 delta / s^T F s) s, the largest step
whose quadratic KL model equals delta. s^T F s uses the undamped F, from CG's residual r:
(F + damping I) s = g - r, so s^T F s = s^T (g - r) - damping |s|^2 (no extra product).
Damping regularises the direction only; measuring the step with the damped matrix would
shrink it wherever damping dominates F (a tabular policy's Fisher entries are about
d_pi(s) pi (1 - pi), so damping 0.1 gave steps of 5% of delta). If s^T F s is not positive
(CG's rounding), the damped value is used. The line
search shrinks it by ``backtrack_coef`` until the measured mean KL <= delta AND the surrogate
improves; if no step passes, the old parameters are restored exactly and ``trpo/accepted`` = 0.
Non-finite g, s, s^T F s, KL or surrogate reject the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trpo_lab import mlp
from trpo_lab.algos.common import mean_kl, surrogate
from trpo_lab.config import TRPOConfig
from trpo_lab.numerics import conjugate_gradient_residual, flat_grad, flat_params, set_flat_params
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


@dataclass
class NaturalStep:
    full_step: torch.Tensor  # sqrt(2 delta / s^T F s) s
    gradient: torch.Tensor  # g, gradient of the surrogate at theta_old
    shs: float  # s^T F s (undamped F)

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.full_step).all()) and self.shs >= 0

    @property
    def zero(self) -> bool:
        """g = 0 (e.g. a policy that is deterministic on every batch state): nothing to do."""
        return self.shs == 0


def fisher_vector_product(policy: Policy, batch: Batch, damping: float):
    """v -> (F + damping I) v, F = the Hessian of the mean KL(pi_old || pi) at pi = pi_old.

    At pi = pi_old that Hessian is the Fisher matrix J^T diag(w) M J, with J the Jacobian of the
    distribution parameters in the actor's parameters, w the batch weights and M the Hessian of
    the KL in the distribution parameters (closed form per head). J v and J^T u come from the
    hand-written MLP derivatives in :mod:`trpo_lab.mlp` on one cached forward pass, which skips
    the network's second-order terms that a double backward of the KL computes only to
    multiply them by zero (and autograd's per-node overhead).
    """
    params = policy.actor_parameters()
    sizes = [p.numel() for p in params]
    n_net = len(list(policy.actor.parameters()))
    cache = mlp.forward_cache(policy.actor, batch.obs)
    weighted_fisher = policy.head.fisher_operator(batch.old_params, batch.weights)
    gaussian = policy.log_std is not None

    def fvp(v: torch.Tensor) -> torch.Tensor:
        chunks = [c.view_as(p) for c, p in zip(torch.split(v, sizes), params)]
        u = mlp.jvp(policy.actor, cache, chunks[:n_net])
        if gaussian:
            u = torch.cat([u, chunks[-1].expand_as(u)], dim=-1)
        w = weighted_fisher(u)
        if gaussian:
            w_mean, w_log_std = w.split(w.shape[-1] // 2, dim=-1)
            grads = [*mlp.vjp(policy.actor, cache, w_mean), w_log_std.sum(0)]
        else:
            grads = mlp.vjp(policy.actor, cache, w)
        return torch.cat([g.reshape(-1) for g in grads]) + damping * v

    return fvp


def natural_step(policy: Policy, batch: Batch, cfg: TRPOConfig) -> NaturalStep:
    params = policy.actor_parameters()
    g = flat_grad(surrogate(policy, batch), params)
    if not torch.isfinite(g).all():
        return NaturalStep(torch.full_like(g, float("nan")), g, float("nan"))
    fvp = fisher_vector_product(policy, batch, cfg.cg_damping)
    direction, residual = conjugate_gradient_residual(fvp, g, cfg.cg_iters)
    damped_shs = float(direction @ (g - residual))  # s^T (F + damping I) s
    fisher_shs = damped_shs - cfg.cg_damping * float(direction @ direction)
    shs = fisher_shs if fisher_shs > 0 else damped_shs
    if shs == 0 and not direction.any():
        return NaturalStep(direction, g, 0.0)
    if not (shs > 0 and torch.isfinite(direction).all()):
        return NaturalStep(torch.full_like(g, float("nan")), g, shs)
    return NaturalStep(direction * (2.0 * cfg.delta / shs) ** 0.5, g, shs)


class TRPO:
    def __init__(self, policy: Policy, cfg: TRPOConfig):
        self.policy, self.cfg = policy, cfg

    def _evaluate(self, batch: Batch) -> tuple[float, float]:
        with torch.no_grad():
            params = self.policy.dist_params(batch.obs)
            return float(surrogate(self.policy, batch, params)), float(
                mean_kl(self.policy, batch, params))

    def update(self, batch: Batch) -> dict[str, float]:
        params = self.policy.actor_parameters()
        old = flat_params(params)
        step = natural_step(self.policy, batch, self.cfg)
        rejected = {"trpo/backtracks": float(self.cfg.backtrack_iters * self.cfg.line_search),
                    "trpo/accepted": 0.0, "trpo/step_norm": 0.0}
        if not step.finite:
            return rejected | {"guard/nonfinite": 1.0}
        if step.zero:
            return {"trpo/backtracks": 0.0, "trpo/accepted": 0.0, "trpo/step_norm": 0.0}
        if not self.cfg.line_search:
            set_flat_params(params, old + step.full_step)
            surr, kl = self._evaluate(batch)
            if not (torch.isfinite(torch.tensor([surr, kl])).all()):
                set_flat_params(params, old)
                return rejected | {"guard/nonfinite": 1.0}
            return {"trpo/backtracks": 0.0, "trpo/accepted": 1.0,
                    "trpo/step_norm": float(step.full_step.norm())}
        # at theta_old every ratio is 1: the surrogate is sum_i w_i A_i, no forward pass needed
        surr_old = float((batch.weights * batch.policy_advantages).sum())
        for k in range(self.cfg.backtrack_iters + 1):
            trial = step.full_step * self.cfg.backtrack_coef**k
            set_flat_params(params, old + trial)
            surr, kl = self._evaluate(batch)
            if kl <= self.cfg.delta and surr > surr_old:  # NaN compares False: rejected
                return {"trpo/backtracks": float(k), "trpo/accepted": 1.0,
                        "trpo/step_norm": float(trial.norm())}
        set_flat_params(params, old)
        return rejected

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
