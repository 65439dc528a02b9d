"""The chi-square divergence of a new policy from an old one, state by state, in closed form.

chi2(pi' || pi)(s) = E_{a ~ pi(.|s)}[(pi'(a|s) / pi(a|s) - 1)^2] = sum_a pi'(a|s)^2 / pi(a|s) - 1:
the variance of the importance ratio that the held-out dL weighs, known exactly at every visited
state whether or not the actions that carry it were drawn (:func:`trpo_lab.algos.common.
heldout_improvement` uses it for the action-sampling part of its standard error). Independent
parts multiply: 1 + chi2 of a product distribution is the product of the parts' 1 + chi2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def _categorical(old_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """log(1 + chi2) of Categoricals over the last axis: logsumexp(2 log q - log p)."""
    log_p, log_q = torch.log_softmax(old_logits, -1), torch.log_softmax(new_logits, -1)
    return torch.logsumexp(2 * log_q - log_p, dim=-1)


def _bernoulli(old_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """log(1 + chi2) of independent Bernoullis, summed over the last axis."""
    one = 2 * F.logsigmoid(new_logits) - F.logsigmoid(old_logits)
    zero = 2 * F.logsigmoid(-new_logits) - F.logsigmoid(-old_logits)
    return torch.logaddexp(one, zero).sum(-1)


def _gaussian(old_mean, old_log_std, new_mean, new_log_std) -> torch.Tensor:
    """log(1 + chi2) of diagonal Gaussians, summed over the last axis: per dimension
    log v0 - (log v1 + log(2 v0 - v1)) / 2 + (m1 - m0)^2 / (2 v0 - v1), v the variances;
    +inf where 2 v0 <= v1 (the ratio's variance is infinite)."""
    v0, v1 = torch.exp(2 * old_log_std), torch.exp(2 * new_log_std)
    room = 2 * v0 - v1
    finite = room > 0
    safe = torch.where(finite, room, torch.ones_like(room))
    log_one_plus = 2 * old_log_std - new_log_std - 0.5 * torch.log(safe) \
        + (new_mean - old_mean) ** 2 / safe
    return torch.where(finite, log_one_plus, torch.full_like(room, float("inf"))).sum(-1)


def chi_square(head, old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor:
    """chi2(pi' || pi) per row of distribution parameters [N, P] (pi from ``old_params``, pi'
    from ``new_params``), in float64: >= 0, exactly 0 where the parameters agree."""
    old, new = old_params.double(), new_params.double()
    if head.kind == "categorical":
        log_one_plus = _categorical(old, new)
    elif head.kind == "multi_categorical":
        log_one_plus = sum(_categorical(p, q) for p, q in zip(head.split(old), head.split(new)))
    elif head.kind == "bernoulli":
        log_one_plus = _bernoulli(old, new)
    elif head.kind == "gaussian":
        log_one_plus = _gaussian(*head.split(old), *head.split(new))
    else:
        raise ValueError(f"no chi-square divergence for a {head.kind!r} head")
    moved = (old != new).any(-1)  # rounding would leave ~1e-16 where nothing changed
    return torch.where(moved, torch.expm1(log_one_plus).clamp(min=0.0), 0.0)
