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
search shrinks it by ``backtrack_coef`` until the measured mean KL <= delta AND the tested
objective improves; if no step passes, the old parameters are restored exactly and
``trpo/accepted`` = 0. Non-finite g, s, s^T F s, KL or surrogate reject the step.

What the line search tests (``line_search_on``): ``standardized`` (the default, the classic
check) the policy objective sum_i w_i ratio_i A_i that g is the gradient of, on the policy's
advantages (standardised when ``normalize_advantages``), against its value sum_i w_i A_i at
theta_old; ``dL`` the dL estimate in units of J, sum_i dl_weights_i (ratio_i - 1) A_i on raw
advantages (what ``surrogate/improvement`` reports), against 0. The improvement of the tested
objective at the accepted step is ``trpo/surrogate_tested`` (empty when no step was accepted,
and for NPG, which tests nothing): in the standardized mode it is not in units of J, and its
sign can differ from that of ``surrogate/improvement`` (standardising shifts and rescales the
advantages, and the weights are per sample, not gamma^t per episode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch

from trpo_lab import mlp
from trpo_lab.algos.common import surrogate
from trpo_lab.batched import (
    StackedActor,
    StackedBatch,
    conjugate_gradient_runs,
    fisher_vector_product_runs,
    mean_kl_runs,
    row_dots,
    surrogate_runs,
)
from trpo_lab.config import TRPOConfig
from trpo_lab.grouping import require_shared
from trpo_lab.numerics import flat_grad, set_flat_params
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


def fisher_vector_product(policy: Policy, batch: Batch, damping: float):
    """v -> (F + damping I) v, F = the Hessian of the mean KL(pi_old || pi) at pi = pi_old, for
    one run: the formula that :func:`trpo_lab.batched.fisher_vector_product_runs` computes
    for every run of a group (tests/test_batched.py holds it to this one).

    At pi = pi_old that Hessian is the Fisher matrix J^T diag(w) M J, with J the Jacobian of the
    distribution parameters in the actor's parameters, w the batch weights and M the Hessian of
    the KL in the distribution parameters (closed form per head). J v and J^T u come from the
    hand-written MLP derivatives in :mod:`trpo_lab.mlp` on one cached forward pass, which skips
    the network's second-order terms that a double backward of the KL computes only to
    multiply them by zero (and autograd's per-node overhead).
    """
    if not policy.fast_actor:  # the generic backend: its group-of-one product
        actor, _ = StackedActor.of([policy])
        product = fisher_vector_product_runs(actor, StackedBatch.of([batch]),
                                             torch.tensor([float(damping)], dtype=torch.float64,
                                                          device=batch.obs.device))
        return lambda v: product(v[None])[0]
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


def predicted_improvement_runs(actor: StackedActor, batch: StackedBatch,
                               params: torch.Tensor) -> torch.Tensor:
    """sum_i dl_weights_i (ratio_i - 1) A_i per run [R] (``algos.common.predicted_improvement``)
    on a :class:`StackedBatch` whose ``weights`` are the dL weights and ``policy_advantages``
    the raw advantages."""
    log_prob = actor.policy.head.log_prob(params, batch.actions)
    ratio = torch.exp(log_prob - batch.old_log_prob)
    return (batch.weights * (ratio - 1.0) * batch.policy_advantages).sum(-1)


def fvp_rows(batch: StackedBatch, fraction: float) -> StackedBatch:
    """The rows of every run's batch that ``algo.fvp_subsample`` = ``fraction`` keeps for the
    Fisher-vector products: k = ceil(fraction B) rows spread evenly (row floor(i B / k) for
    i < k), each run's weights rescaled to sum as its whole batch's do, so that the subsample's
    F estimates the batch's."""
    size = batch.obs.shape[1]
    k = max(1, math.ceil(fraction * size))
    rows = torch.arange(k, device=batch.obs.device) * size // k
    sub = StackedBatch(*(getattr(batch, f)[:, rows] for f in (
        "obs", "actions", "weights", "old_params", "old_log_prob", "policy_advantages")))
    sub.weights = sub.weights * (batch.weights.sum(1, keepdim=True)
                                 / sub.weights.sum(1, keepdim=True))
    return sub


def trpo_update_runs(policies: Sequence[Policy], batches: Sequence[Batch],
                     cfgs: Sequence) -> list[dict[str, float]]:
    """TRPO's update (the module docstring) for R runs of one shape at once; a lone run is a
    group of one. Returns each run's info and leaves each policy's actor at its new (or,
    rejected, its old) parameters.

    Each run's gradient is its own autograd call; the direction is R conjugate-gradient solves
    on batched Fisher-vector products; the line search evaluates the runs still searching in
    one batched forward pass per backtrack and accepts each run's step when its own KL <= its
    delta and its surrogate improves (a per-run acceptance mask).
    """
    R = len(policies)  # noqa: N806
    require_shared(cfgs, ("cg_iters", "backtrack_iters", "fvp_subsample"), "algo")
    actor, theta_old = StackedActor.of(policies)
    batch = StackedBatch.of(batches)
    iters = cfgs[0].cg_iters
    backtrack_iters = cfgs[0].backtrack_iters
    device = theta_old.device
    as_run_tensor = partial(torch.tensor, dtype=torch.float64, device=device)
    delta = as_run_tensor([c.delta for c in cfgs])
    damping = as_run_tensor([c.cg_damping for c in cfgs])
    coef = as_run_tensor([c.backtrack_coef for c in cfgs])
    line_search = torch.tensor([bool(c.line_search) for c in cfgs], device=device)
    on_dl = torch.tensor([c.line_search_on == "dL" for c in cfgs], device=device)
    if bool(on_dl.any()):  # the dL estimator's weights and raw advantages, for those runs
        dl_batch = StackedBatch(batch.obs, batch.actions,
                                torch.stack([b.dl_weights for b in batches]), batch.old_params,
                                batch.old_log_prob, torch.stack([b.advantages for b in batches]))

    # each run's gradient by its own autograd call: the single-run code's numbers to the bit
    # (conjugate gradient amplifies a 1e-8 difference in g to 1e-5 in the direction)
    g = torch.stack([flat_grad(surrogate(p, b), p.actor_parameters())
                     for p, b in zip(policies, batches)])
    g_finite = torch.isfinite(g).all(1)
    fvp_batch = batch if cfgs[0].fvp_subsample == 1 else fvp_rows(batch, cfgs[0].fvp_subsample)
    fvp = fisher_vector_product_runs(actor, fvp_batch, damping)
    direction, residual = conjugate_gradient_runs(
        fvp, torch.where(g_finite[:, None], g, torch.zeros_like(g)), iters)
    damped = row_dots(direction, g - residual)  # s^T (F + damping I) s
    norms = row_dots(direction, direction)
    dir_finite = torch.isfinite(direction).all(1)
    zero, valid = (torch.zeros(R, dtype=torch.bool, device=device) for _ in range(2))
    full_step = torch.zeros_like(direction)
    for r, cfg in enumerate(cfgs):  # per run in Python floats (the module docstring's rules)
        damped_shs = float(damped[r])
        fisher_shs = damped_shs - cfg.cg_damping * float(norms[r])
        shs = fisher_shs if cfg.step_length == "undamped" and fisher_shs > 0 else damped_shs
        if not bool(g_finite[r]):
            continue
        if shs == 0 and not bool(direction[r].any()):
            zero[r] = True
        elif shs > 0 and bool(dir_finite[r]):
            valid[r] = True
            full_step[r] = direction[r] * (2.0 * cfg.delta / shs) ** 0.5

    infos: list[dict[str, float] | None] = [None] * R
    theta_new = theta_old.clone()
    for r in range(R):
        rejected = {"trpo/backtracks": float(backtrack_iters * bool(line_search[r])),
                    "trpo/accepted": 0.0, "trpo/step_norm": 0.0}
        if not bool(valid[r]) and not bool(zero[r]):
            infos[r] = rejected | {"guard/nonfinite": 1.0}
        elif bool(zero[r]):
            infos[r] = {"trpo/backtracks": 0.0, "trpo/accepted": 0.0, "trpo/step_norm": 0.0}
    with torch.no_grad():
        npg = [r for r in range(R) if infos[r] is None and not bool(line_search[r])]
        if npg:
            index = torch.tensor(npg, device=device)
            trial = theta_old[index] + full_step[index]
            sub = batch.rows(index)
            params = actor.dist_params(trial, sub.obs)
            surr, kl = surrogate_runs(actor, sub, params), mean_kl_runs(actor, sub, params)
            for j, r in enumerate(npg):
                if bool(torch.isfinite(surr[j])) and bool(torch.isfinite(kl[j])):
                    theta_new[r] = trial[j]
                    infos[r] = {"trpo/backtracks": 0.0, "trpo/accepted": 1.0,
                                "trpo/step_norm": float(full_step[r].norm())}
                else:
                    infos[r] = {"trpo/backtracks": 0.0, "trpo/accepted": 0.0,
                                "trpo/step_norm": 0.0, "guard/nonfinite": 1.0}
        # at theta_old every ratio is 1: the surrogate is sum_i w_i A_i
        surr_old = (batch.weights * batch.policy_advantages).sum(-1).double()
        searching = [r for r in range(R) if infos[r] is None]
        for k in range(backtrack_iters + 1):
            if not searching:
                break
            index = torch.tensor(searching, device=device)
            trial_step = full_step[index] * (coef[index] ** k).to(full_step.dtype)[:, None]
            trial = theta_old[index] + trial_step
            sub = batch.rows(index)
            params = actor.dist_params(trial, sub.obs)
            surr = surrogate_runs(actor, sub, params).double()
            kl = mean_kl_runs(actor, sub, params).double()
            tested = surr - surr_old[index]
            if bool(on_dl.any()):
                dl = predicted_improvement_runs(actor, dl_batch.rows(index), params).double()
                tested = torch.where(on_dl[index], dl, tested)
            ok = (kl <= delta[index]) & (tested > 0)  # NaN compares False
            still = []
            for j, r in enumerate(searching):
                if bool(ok[j]):
                    theta_new[r] = trial[j]
                    infos[r] = {"trpo/backtracks": float(k), "trpo/accepted": 1.0,
                                "trpo/step_norm": float(trial_step[j].norm()),
                                "trpo/surrogate_tested": float(tested[j])}
                else:
                    still.append(r)
            searching = still
        for r in searching:  # no step passed: the old parameters, exactly
            infos[r] = {"trpo/backtracks": float(backtrack_iters), "trpo/accepted": 0.0,
                        "trpo/step_norm": 0.0}
    for r, policy in enumerate(policies):
        set_flat_params(policy.actor_parameters(), theta_new[r])
    return infos  # type: ignore[return-value]


def build(policy: Policy, cfg: TRPOConfig, gamma: float, generator: torch.Generator) -> TRPO:
    """The registry's constructor (:mod:`trpo_lab.registry`)."""
    return TRPO(policy, cfg)


class TRPO:
    """TRPO's (line_search=true) or the natural policy gradient's update of one run: the
    group-of-one call of :func:`trpo_update_runs`, the code every group of runs goes through."""

    def __init__(self, policy: Policy, cfg: TRPOConfig):
        self.policy, self.cfg = policy, cfg

    def update(self, batch: Batch) -> dict[str, float]:
        return trpo_update_runs([self.policy], [batch], [self.cfg])[0]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
