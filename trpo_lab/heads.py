"""Action heads for factored action spaces: MultiDiscrete and MultiBinary.

A head turns one parameter vector per state into a distribution over actions; every function
is pure in those parameter tensors, batched over any leading axes (states, or runs x states),
like :class:`trpo_lab.policies.CategoricalHead` and :class:`~trpo_lab.policies.GaussianHead`
(which serve Discrete and Box actions of any shape; a Box of shape (k, m) is a diagonal
Gaussian over its k m entries, reshaped for the env by :func:`trpo_lab.spaces.to_env_actions`).

- :class:`MultiCategoricalHead` (MultiDiscrete ``nvec``): independent Categoricals, one per
  component; the parameters are the components' logits side by side, [..., sum(nvec)], split
  in ``nvec`` order. Actions are the component indices [..., k] (long).
- :class:`BernoulliHead` (MultiBinary ``n``): independent Bernoullis; the parameters are
  logits [..., n], p = sigmoid(logit). Actions are 0/1 [..., n] (float).

Each head has ``log_prob``, ``entropy``, the analytic ``kl`` (old policy first, summed over
components: the KL of a product of independent distributions is the sum of theirs), the
analytic ``fisher_operator`` (the Hessian M of the KL in the parameters at the old policy, the
M of the Gauss-Newton Fisher-vector product J^T M J: block-diagonal diag(p) - p p^T per
Categorical, diagonal p (1 - p) per Bernoulli), and sampling from given noise, in torch
(``sample``) and numpy (:func:`categorical_from_uniform` and friends, which
:class:`trpo_lab.policies.NumpyActor` calls), with the same noise layout, so the paired
evaluator's common random numbers hold: ``noise(rng, n)`` draws one uniform per component
and state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from trpo_lab.numerics import categorical_entropy, categorical_kl


# ------------------------------------------------------------------------------ numpy sampling
def categorical_from_uniform(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sample of the Categorical softmax(logits) [..., n] from uniforms u [...]:
    the first index whose cumulative probability exceeds u (the lowest on ties)."""
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    cdf = np.cumsum(probs, axis=-1)
    threshold = u[..., None] * cdf[..., -1:]
    actions = (cdf <= threshold).sum(axis=-1)
    return np.minimum(actions, logits.shape[-1] - 1)


def segments(components: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) of each component's logits in the concatenated parameter vector."""
    bounds = np.cumsum([0, *components])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def multi_categorical_from_uniform(logits: np.ndarray, u: np.ndarray,
                                   components: Sequence[int]) -> np.ndarray:
    """One inverse-CDF sample per component: logits [..., sum(nvec)], u [..., k] -> [..., k]."""
    return np.stack([categorical_from_uniform(logits[..., a:b], u[..., j])
                     for j, (a, b) in enumerate(segments(components))], axis=-1)


def multi_categorical_mode(logits: np.ndarray, components: Sequence[int]) -> np.ndarray:
    return np.stack([logits[..., a:b].argmax(axis=-1) for a, b in segments(components)], axis=-1)


def multi_categorical_joint(logits: np.ndarray, components: Sequence[int]) -> np.ndarray:
    """The joint distribution [..., prod(nvec)] of the independent components, in C order of
    the joint index (``numpy.ravel_multi_index(actions, nvec)``): the exact evaluator's pi."""
    joint = None
    for a, b in segments(components):
        z = logits[..., a:b] - logits[..., a:b].max(axis=-1, keepdims=True)
        p = np.exp(z)
        p = p / p.sum(axis=-1, keepdims=True)
        joint = p if joint is None else (joint[..., :, None] * p[..., None, :]).reshape(
            *p.shape[:-1], -1)
    return joint


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bernoulli_from_uniform(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """1 where u < sigmoid(logit), else 0 (int64), elementwise."""
    return (u < sigmoid(logits)).astype(np.int64)


# ------------------------------------------------------------------------------ torch heads
class MultiCategoricalHead:
    """Independent Categoricals over ``nvec`` = (n_1, ..., n_k) choices; parameters are the
    k logit vectors side by side [..., sum n_j]; actions [..., k] component indices."""

    kind = "multi_categorical"
    action_dtype = torch.long

    def __init__(self, nvec: Sequence[int]):
        self.components = tuple(int(n) for n in nvec)
        self.param_dim = sum(self.components)
        self.segments = segments(self.components)

    def split(self, params: torch.Tensor) -> list[torch.Tensor]:
        return list(params.split(self.components, dim=-1))

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        actions = actions.long()
        return sum(torch.log_softmax(z, dim=-1).gather(-1, actions[..., j:j + 1]).squeeze(-1)
                   for j, z in enumerate(self.split(params)))

    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return sum(categorical_kl(a, b) for a, b in zip(self.split(p), self.split(q)))

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        return sum(categorical_entropy(z) for z in self.split(params))

    def fisher_operator(self, params: torch.Tensor, weights: torch.Tensor):
        """u -> w M u row-wise, M block-diagonal with diag(p_j) - p_j p_j^T per component j:
        the Hessian of KL(p || q(z)) in the logits z at z = params."""
        p = torch.cat([torch.softmax(z, dim=-1) for z in self.split(params)], dim=-1)
        wp = weights.unsqueeze(-1) * p
        sizes = self.components

        def product(u: torch.Tensor) -> torch.Tensor:
            pu = wp * u
            sums = torch.cat([s.sum(-1, keepdim=True).expand_as(s)
                              for s in pu.split(sizes, dim=-1)], dim=-1)
            return pu - p * sums

        return product

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.random((n, len(self.components)))

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF samples [..., k] from uniforms [..., k] (the numpy sampler's rule)."""
        out = []
        for j, z in enumerate(self.split(params)):
            probs = torch.softmax(z - z.max(-1, keepdim=True).values, dim=-1)
            cdf = probs.cumsum(-1)
            index = (cdf <= noise[..., j:j + 1] * cdf[..., -1:]).sum(-1)
            out.append(index.clamp(max=z.shape[-1] - 1))
        return torch.stack(out, dim=-1)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return torch.stack([z.argmax(-1) for z in self.split(params)], dim=-1)

    def joint_actions(self) -> np.ndarray:
        """Every joint action as component indices [prod nvec, k], in joint-index order."""
        grid = np.unravel_index(np.arange(int(np.prod(self.components))), self.components)
        return np.stack(grid, axis=-1).astype(np.int64)

    def joint_index(self, actions: np.ndarray) -> np.ndarray:
        """Component indices [..., k] -> joint index [...] (C order)."""
        return np.ravel_multi_index(tuple(np.moveaxis(np.asarray(actions), -1, 0)),
                                    self.components)


class BernoulliHead:
    """Independent Bernoullis on ``n`` bits; parameters are logits [..., n], p = sigmoid;
    actions [..., n] in {0, 1}."""

    kind = "bernoulli"
    action_dtype = torch.float32

    def __init__(self, n: int):
        self.n = int(n)
        self.param_dim = self.n

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # a log p + (1 - a) log(1 - p) = a z - softplus(z)
        return (actions.to(params.dtype) * params - F.softplus(params)).sum(-1)

    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """sum_i p_i (log p_i - log q_i) + (1 - p_i) (log(1 - p_i) - log(1 - q_i))."""
        prob = torch.sigmoid(p)
        return (prob * (F.logsigmoid(p) - F.logsigmoid(q))
                + (1 - prob) * (F.logsigmoid(-p) - F.logsigmoid(-q))).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(params)
        return -(prob * F.logsigmoid(params) + (1 - prob) * F.logsigmoid(-params)).sum(-1)

    def fisher_operator(self, params: torch.Tensor, weights: torch.Tensor):
        """u -> w M u row-wise, M = diag(p (1 - p)): the Hessian of the KL in the logits."""
        prob = torch.sigmoid(params)
        diagonal = weights.unsqueeze(-1) * prob * (1 - prob)

        def product(u: torch.Tensor) -> torch.Tensor:
            return diagonal * u

        return product

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.random((n, self.n))

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (noise < torch.sigmoid(params)).to(self.action_dtype)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return (params > 0).to(self.action_dtype)
