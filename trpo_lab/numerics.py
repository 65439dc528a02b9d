"""Small pure numerical routines, each with a closed-form test in tests/test_numerics.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def conjugate_gradient(
    Avp: Callable[[torch.Tensor], torch.Tensor],  # noqa: N803 (the usual name for A v)
    b: torch.Tensor,
    iters: int,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive-definite A, given only v -> A v.

    Starts from x = 0, so after k iterations x minimises the A-norm error over the Krylov space
    span{b, Ab, ..., A^{k-1} b}; exact after dim(b) iterations in exact arithmetic.
    """
    return conjugate_gradient_residual(Avp, b, iters, residual_tol)[0]


def conjugate_gradient_residual(
    Avp: Callable[[torch.Tensor], torch.Tensor],  # noqa: N803
    b: torch.Tensor,
    iters: int,
    residual_tol: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conjugate_gradient`, also returning its residual r = b - A x, updated by the
    recursion: A x = b - r then costs no extra product (TRPO's x^T A x for the step size)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    r_dot = r @ r
    for _ in range(iters):
        if r_dot <= residual_tol:
            break
        Ap = Avp(p)  # noqa: N806
        alpha = r_dot / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        new_r_dot = r @ r
        p = r + (new_r_dot / r_dot) * p
        r_dot = new_r_dot
    return x, r


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    done: np.ndarray,
    gamma: float,
    lam: float,
) -> np.ndarray:
    """Generalised advantage estimation over a [T, num_envs] rollout.

    ``next_values[t]`` is V of the state reached at step t: the next observation, or the final
    observation of an episode that ended at t. ``terminated[t]``: the episode reached a terminal
    state (no bootstrap, V(terminal) = 0). ``done[t]`` = terminated or truncated: the recursion
    stops there; on truncation it still bootstraps from V(final observation).

        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    """
    not_terminal = 1.0 - terminated.astype(np.float64)
    deltas = rewards + gamma * not_terminal * next_values - values
    carry = gamma * lam * (1.0 - done.astype(np.float64))
    advantages = np.zeros_like(deltas)
    running = np.zeros(deltas.shape[1:], dtype=deltas.dtype)
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages


def discounted_running_returns(rewards: np.ndarray, done: np.ndarray, gamma: float,
                               initial: np.ndarray) -> np.ndarray:
    """R_t = gamma * (1 - done_{t-1}) * R_{t-1} + r_t over a [T, num_envs] rollout, with
    R_0 = ``initial`` + r_0: the backward-looking discounted return that reward normalisation
    tracks. ``initial`` carries an earlier rollout's gamma * (1 - done) * R (zeros at start)."""
    returns = np.empty_like(rewards, dtype=np.float64)
    running = np.asarray(initial, dtype=np.float64)
    keep = gamma * (1.0 - done.astype(np.float64))
    for t in range(rewards.shape[0]):
        running = running + rewards[t]
        returns[t] = running
        running = keep[t] * running
    return returns


def self_normalised(ratio: torch.Tensor, weights: torch.Tensor,
                    groups: torch.Tensor) -> torch.Tensor:
    """ratio_i / D_g(i), D_g = sum_{j in g} w_j ratio_j / sum_{j in g} w_j: each group's
    importance weights divided by their weighted mean, along the last axis (``groups`` [B] or
    of ratio's shape: the group index of each entry, 0..G-1).

    With w_j = c_j / N inside a group of c summing to 1, sum_i w_i (ratio_i / D_g(i)) A_i is
    (1/N) sum_g sum_{i in g} c_i ratio_i A_i / sum_{i in g} c_i ratio_i: the mean over groups
    of the self-normalised importance-sampling estimate (the vine surrogate with sampled
    actions, :mod:`trpo_lab.vine`). D = 1 where every ratio is 1."""
    index = groups.expand_as(ratio)
    count = int(groups.max()) + 1
    shape = (*ratio.shape[:-1], count)
    weighted = torch.zeros(shape, dtype=ratio.dtype, device=ratio.device).scatter_add(
        -1, index, weights * ratio)
    total = torch.zeros(shape, dtype=ratio.dtype, device=ratio.device).scatter_add(
        -1, index, weights.to(ratio.dtype).expand_as(ratio))
    return ratio / (weighted / total).gather(-1, index)


def flat_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def set_flat_params(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n


def flat_grad(output: torch.Tensor, params: Sequence[torch.Tensor], **kwargs) -> torch.Tensor:
    grads = torch.autograd.grad(output, params, allow_unused=True, **kwargs)
    return torch.cat([
        (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)
    ])


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row for categorical distributions given by logits."""
    p_log = torch.log_softmax(p_logits, dim=-1)
    q_log = torch.log_softmax(q_logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor,
                mean_q: torch.Tensor, log_std_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) for diagonal Gaussians, summed over action dimensions.

    KL = sum_i [ log(s_q/s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2 ].
    """
    var_p = torch.exp(2 * log_std_p)
    var_q = torch.exp(2 * log_std_q)
    per_dim = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5
    return per_dim.sum(-1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor,
                      actions: torch.Tensor) -> torch.Tensor:
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1)


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var[target - predicted] / Var[target]; NaN when the target is constant."""
    var = np.var(target)
    return float("nan") if var == 0 else float(1.0 - np.var(target - predicted) / var)


class RunningMeanStd:
    """Running mean and variance (Chan et al. parallel update), for observation normalisation."""

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, n = batch.mean(0), batch.var(0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var = m2 / total
        self.count = total

    def normalize(self, obs: np.ndarray, clip: float = 10.0) -> np.ndarray:
        return np.clip((obs - self.mean) / np.sqrt(self.var + 1e-8), -clip, clip)

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
