"""Pieces every update rule shares: the surrogate, the mean KL, guarded optimiser steps."""

from __future__ import annotations

import torch

from trpo_lab.chi_square import chi_square
from trpo_lab.intervals import heldout_se
from trpo_lab.numerics import self_normalised
from trpo_lab.optim import SGD, Adam
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch, HeldoutBatch


def ratio(policy: Policy, batch: Batch, params: torch.Tensor | None = None) -> torch.Tensor:
    """pi'(a|s) / pi(a|s) on the batch, pi the policy that collected it."""
    if params is None:
        params = policy.dist_params(batch.obs)
    return torch.exp(policy.head.log_prob(params, batch.actions) - batch.old_log_prob)


def surrogate_ratio(policy: Policy, batch: Batch,
                    params: torch.Tensor | None = None) -> torch.Tensor:
    """The ratios the surrogate weighs: :func:`ratio`, self-normalised per rollout state in a
    vine batch with sampled actions (``batch.groups``; numerics.self_normalised)."""
    r = ratio(policy, batch, params)
    return r if batch.groups is None else self_normalised(r, batch.weights, batch.groups)


def surrogate(policy: Policy, batch: Batch, params: torch.Tensor | None = None) -> torch.Tensor:
    """The policy objective sum_i w_i ratio_i A_i (A standardised if switched on)."""
    return (batch.weights * surrogate_ratio(policy, batch, params)
            * batch.policy_advantages).sum()


def mean_kl(policy: Policy, batch: Batch, params: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i KL(pi_old(.|s_i) || pi'(.|s_i)): the quantity TRPO's constraint bounds."""
    if params is None:
        params = policy.dist_params(batch.obs)
    return (batch.weights * policy.head.kl(batch.old_params, params)).sum()


def predicted_improvement(policy: Policy, batch: Batch,
                          params: torch.Tensor | None = None) -> torch.Tensor:
    """dL_hat = sum_i dl_weights_i (ratio_i - 1) A_i with raw advantages: units of J."""
    return (batch.dl_weights * (surrogate_ratio(policy, batch, params) - 1.0)
            * batch.advantages).sum()


def action_probabilities(policy: Policy, params: torch.Tensor) -> torch.Tensor:
    """pi(a|s) of every joint action a (``head.joint_actions()`` order) for each row of
    distribution parameters ``params`` [N, P]: [N, joint actions], in float64."""
    actions = torch.as_tensor(policy.head.joint_actions(), device=params.device)
    rows, count = params.shape[0], actions.shape[0]
    every = actions.unsqueeze(0).expand(rows, *actions.shape)
    log_p = policy.head.log_prob(params.double().unsqueeze(1).expand(rows, count, -1), every)
    return torch.exp(log_p)


def heldout_improvement(policy: Policy, heldout: HeldoutBatch,
                        params: torch.Tensor | None = None) -> tuple[float, float]:
    """dL_hat on the held-out episodes and its standard error: the estimate is the mean over
    the n episodes of Y_j = sum_t gamma^t (ratio_t - 1) A_t.

    The standard error (:func:`trpo_lab.intervals.heldout_se`) is the larger of sd(Y) /
    sqrt(n) and the action-sampling SE that the ratios imply, sqrt(sigma_A^2 mean_j
    sum_t gamma^2t chi2(pi' || pi)(s_jt) / n) (chi2 exact at every visited state,
    :mod:`trpo_lab.chi_square`; sigma_A^2 the gamma^t-weighted mean A_t^2): late in training
    most of dL sits in actions pi rarely takes, which the episodes rarely draw, and sd(Y)
    alone was far too small (README, 'Calibration').

    With exact advantages (``heldout.action_advantages``) the sampled action's term is
    replaced by its expectation over actions, Y_j = sum_t gamma^t sum_a (pi'(a|s_t) -
    pi(a|s_t)) A_pi(s_t, a) (the same mean, by E_a~pi[(ratio - 1) A] = sum_a (pi' - pi) A):
    only the states are sampled, so a rarely drawn action counts wherever its state is
    visited, and the SE is sd(Y) / sqrt(n)."""
    batch = heldout.batch
    n = heldout.episodes
    discount = batch.dl_weights.double() * n  # gamma^t of each step
    with torch.no_grad():
        new_params = policy.dist_params(batch.obs) if params is None else params
        if heldout.action_advantages is not None:
            change = action_probabilities(policy, new_params) - action_probabilities(
                policy, batch.old_params)
            terms = batch.dl_weights.double() * (change * heldout.action_advantages).sum(-1)
        else:
            terms = batch.dl_weights * (ratio(policy, batch, new_params) - 1.0) \
                * batch.advantages
        # each episode's sum on the CPU (a no-op there): CUDA's index_add_ adds in no fixed
        # order, and these are the logged metrics, which a rerun must reproduce
        episode = heldout.episode.cpu()
        per_episode = torch.zeros(n, dtype=terms.dtype).index_add_(0, episode, terms.cpu()) * n
        if heldout.action_advantages is not None:
            return float(per_episode.mean()), heldout_se(per_episode.double().numpy())
        spread = discount**2 * chi_square(policy.head, batch.old_params, new_params)
        ratio_variance = torch.zeros(n, dtype=torch.float64).index_add_(0, episode, spread.cpu())
        advantages = batch.advantages.double()
        scale = float((discount * advantages**2).sum() / discount.sum())
    return float(per_episode.mean()), heldout_se(per_episode.double().numpy(),
                                                 ratio_variance.numpy(), scale)


def guarded_step(optimizer: Adam | SGD, loss: torch.Tensor,
                 params: list[torch.nn.Parameter]) -> bool:
    """Backpropagate and step only if the loss and every gradient are finite."""
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    loss.backward()
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    if not torch.isfinite(torch.cat(grads)).all():
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> Adam | SGD:
    return SGD(params, lr=lr) if name == "sgd" else Adam(params, lr=lr)


def minibatch_indices(size: int, minibatches: int, generator: torch.Generator):
    """A random partition of range(size) into ``minibatches`` near-equal parts."""
    if minibatches == 1:
        return [slice(None)]
    return torch.randperm(size, generator=generator).tensor_split(minibatches)


def subset(batch: Batch, index) -> Batch:
    """A minibatch; weights are renormalised so means stay means. ``index``: a slice or row
    indices (drawn on the CPU, :func:`minibatch_indices`; moved to the batch's device)."""
    if isinstance(index, torch.Tensor):
        index = index.to(batch.obs.device)
    weights = batch.weights[index]
    return Batch(batch.obs[index], batch.actions[index], batch.advantages[index],
                 batch.returns[index], batch.values[index], weights / weights.sum(),
                 batch.dl_weights[index], batch.old_params[index], batch.old_log_prob[index],
                 batch.policy_advantages[index], batch.exact)
