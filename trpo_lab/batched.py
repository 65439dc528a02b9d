"""The numerics of many runs at once: a leading run axis R on every array.

A group of runs (:mod:`trpo_lab.group`) has the same network shapes and batch sizes, and
differs in numbers that do not change shapes (seed, delta, damping, learning rates, ...). These
functions do for all R runs what :mod:`trpo_lab.mlp`, :mod:`trpo_lab.numerics`,
:func:`trpo_lab.algos.trpo.fisher_vector_product` does for one, in one call per operation:

- :class:`StackedNet`: R MLPs of one architecture as stacked weights [R, out, in]; its
  :meth:`~StackedNet.forward_cache`, :meth:`~StackedNet.jvp` and :meth:`~StackedNet.vjp` are
  :mod:`trpo_lab.mlp`'s, batched (numpy matmul over the run axis);
- :func:`conjugate_gradient_runs`: R conjugate-gradient solves, each with its own step sizes
  and its own stopping rule (a run whose residual is small stops; the others go on);
- :func:`fisher_vector_product_runs`: v [R, P] -> (F_r + damping_r I) v_r for every run;
- :func:`surrogate_runs`, :func:`mean_kl_runs`: the surrogate and the mean KL of every run.

:func:`trpo_lab.algos.trpo.trpo_update_runs` (TRPO's and NPG's update) and
:func:`trpo_lab.critic.critic_update_runs` (the critic's Adam steps) are built on them; a lone
run goes through the same functions as a group of one.

Every run's result is the unbatched formula's for that run (tests/test_batched.py checks each
against the single-run functions); the runs never mix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trpo_lab import generic
from trpo_lab.mlp import tanh_
from trpo_lab.networks import fast_layout
from trpo_lab.numerics import flat_params, self_normalised
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


# ----------------------------------------------------------------------------- stacked MLPs
def _layout(net: nn.Sequential) -> tuple[list[tuple[int, int, bool]], list[str]]:
    unknown = fast_layout(net)
    if unknown is not None:  # never guess: the generic backend serves every other network
        raise TypeError(f"the hand-written derivatives cannot serve this network: {unknown}")
    linears = [m for m in net if isinstance(m, nn.Linear)]
    kinds = ["relu" if isinstance(m, nn.ReLU) else "tanh"
             for m in net if not isinstance(m, nn.Linear)]
    return [(m.out_features, m.in_features, m.bias is not None) for m in linears], kinds


@dataclass
class StackedNet:
    """R networks of one architecture; ``flat`` [R, P] holds their parameters in
    ``net.parameters()`` order, and the weights are views of it."""

    shapes: list[tuple[int, int, bool]]  # (out, in, has bias) per Linear layer
    kinds: list[str]  # activation after each hidden layer
    flat: torch.Tensor  # [R, P]

    @staticmethod
    def of(nets: Sequence[nn.Sequential], flat: torch.Tensor | None = None) -> StackedNet:
        shapes, kinds = _layout(nets[0])
        if flat is None:
            flat = torch.stack([flat_params(list(net.parameters())) for net in nets])
        return StackedNet(shapes, kinds, flat)

    @property
    def size(self) -> int:
        return sum(o * i + (o if b else 0) for o, i, b in self.shapes)

    def arrays(self, flat: torch.Tensor | None = None,
               ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(W [R, out, in], b [R, out] or None) per layer, views of ``flat`` (default: own)."""
        flat = self.flat if flat is None else flat
        values = flat.detach().numpy()
        rows, out, offset = values.shape[0], [], 0
        for o, i, has_bias in self.shapes:
            # contiguous copies: BLAS's rounding depends on where a matrix starts
            w = np.ascontiguousarray(values[:, offset:offset + o * i]).reshape(rows, o, i)
            offset += o * i
            b = None
            if has_bias:
                b = np.ascontiguousarray(values[:, offset:offset + o])
                offset += o
            out.append((w, b))
        return out

    def forward_cache(self, x: np.ndarray, flat: torch.Tensor | None = None) -> StackedCache:
        """x [R, B, in]: the networks' outputs [R, B, out] and what the derivatives need."""
        layers = self.arrays(flat)
        inputs, slopes = [], []
        h = x
        last = len(layers) - 1
        for k, (w, b) in enumerate(layers):
            inputs.append(h)
            z = h @ w.transpose(0, 2, 1)
            if b is not None:
                z += b[:, None, :]
            if k < last:
                if self.kinds[k] == "relu":
                    h = np.maximum(z, 0)
                    slopes.append((z > 0).astype(z.dtype))
                else:
                    h = tanh_(z)
                    slopes.append(1 - h * h)
            else:
                h = z
        return StackedCache(layers, inputs, slopes, h)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """[R, P] -> per parameter [R, *shape], in ``net.parameters()`` order."""
        rows, out, offset = flat.shape[0], [], 0
        for o, i, has_bias in self.shapes:
            out.append(flat[:, offset:offset + o * i].reshape(rows, o, i))
            offset += o * i
            if has_bias:
                out.append(flat[:, offset:offset + o])
                offset += o
        return out


@dataclass
class StackedCache:
    layers: list[tuple[np.ndarray, np.ndarray | None]]
    inputs: list[np.ndarray]
    slopes: list[np.ndarray]
    output: np.ndarray  # [R, B, out]


def stacked_jvp(cache: StackedCache, tangents: list[torch.Tensor]) -> torch.Tensor:
    """J_r v_r for every run: tangents per parameter [R, *shape] -> [R, B, out]."""
    it = iter(tangents)
    dh = None
    for k, (w, b) in enumerate(cache.layers):
        dz = cache.inputs[k] @ next(it).detach().numpy().transpose(0, 2, 1)
        if b is not None:
            dz += next(it).detach().numpy()[:, None, :]
        if dh is not None:
            dz += dh @ w.transpose(0, 2, 1)
        dh = dz * cache.slopes[k] if k < len(cache.slopes) else dz
    return torch.from_numpy(dh)


def stacked_vjp(cache: StackedCache, cotangent: torch.Tensor) -> list[torch.Tensor]:
    """J_r^T w_r for every run: cotangent [R, B, out] -> gradients per parameter [R, *shape]."""
    grads: list[np.ndarray] = []
    dz = cotangent.detach().numpy()
    # the same products as mlp.vjp, slice by slice (numpy's stacked matmul is the 2-d one per
    # run, to the bit): bias gradients as ones @ dz, a one-column dz as a broadcast multiply
    ones = np.ones(dz.shape[1], dz.dtype)
    for k in range(len(cache.layers) - 1, -1, -1):
        w, b = cache.layers[k]
        layer = [dz.transpose(0, 2, 1) @ cache.inputs[k]]
        if b is not None:
            layer.append(ones @ dz)
        grads = layer + grads
        if k > 0:
            back = dz * w if dz.shape[2] == 1 else dz @ w
            dz = back * cache.slopes[k - 1]
    return [torch.from_numpy(np.ascontiguousarray(g)) for g in grads]


def _torch_activation(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "relu":
        return torch.relu
    return lambda z: 2.0 * torch.sigmoid(2.0 * z) - 1.0  # policies.Tanh, the same function


def stacked_forward(net: StackedNet, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The networks' outputs in torch (differentiable in ``flat`` [R, P]); x [R, B, in]."""
    params = iter(net.split(flat))
    h = x
    last = len(net.shapes) - 1
    for k, (_, _, has_bias) in enumerate(net.shapes):
        h = torch.bmm(h, next(params).transpose(1, 2))
        if has_bias:
            h = h + next(params)[:, None, :]
        if k < last:
            h = _torch_activation(net.kinds[k])(h)
    return h


# ----------------------------------------------------------------------------- actors
@dataclass
class StackedActor:
    """The actors of R policies: the network and, for a Gaussian, the log-std as the last
    ``dim`` entries of each run's flat vector (the order of ``Policy.actor_parameters``)."""

    net: StackedNet
    policy: Policy  # the first run's (its head: pure functions of distribution parameters)
    gaussian: bool

    @staticmethod
    def of(policies: Sequence[Policy],
           ) -> tuple[StackedActor | generic.GenericStackedActor, torch.Tensor]:
        """The stacked actors of ``policies``: this hand-written one when their networks are
        plain Linear + tanh/ReLU stacks (``Policy.fast_actor``), else the generic backend's
        :class:`trpo_lab.generic.GenericStackedActor` (the same interface)."""
        if not policies[0].fast_actor:
            return generic.GenericStackedActor.of(policies)
        flat = torch.stack([flat_params(p.actor_parameters()) for p in policies])
        net = StackedNet.of([p.actor for p in policies], flat[:, :_net_size(policies[0])])
        return StackedActor(net, policies[0], policies[0].log_std is not None), flat

    def dist_params(self, flat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        out = stacked_forward(self.net, flat[:, :self.net.size], obs)
        if not self.gaussian:
            return out
        log_std = flat[:, self.net.size:]
        return torch.cat([out, log_std[:, None, :].expand_as(out)], dim=-1)


def _net_size(policy: Policy) -> int:
    return sum(p.numel() for p in policy.actor.parameters())


@dataclass
class StackedBatch:
    """R batches of one size, stacked: every field [R, B, ...]."""

    obs: torch.Tensor
    actions: torch.Tensor
    weights: torch.Tensor
    old_params: torch.Tensor
    old_log_prob: torch.Tensor
    policy_advantages: torch.Tensor
    groups: torch.Tensor | None = None  # Batch.groups, stacked (vine batches)

    @staticmethod
    def of(batches: Sequence[Batch]) -> StackedBatch:
        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(b, name) for b in batches])

        return StackedBatch(stack("obs"), stack("actions"), stack("weights"),
                            stack("old_params"), stack("old_log_prob"),
                            stack("policy_advantages"),
                            None if batches[0].groups is None else stack("groups"))

    def rows(self, index: torch.Tensor) -> StackedBatch:
        return StackedBatch(*(getattr(self, f)[index] for f in (
            "obs", "actions", "weights", "old_params", "old_log_prob", "policy_advantages")),
            None if self.groups is None else self.groups[index])


def surrogate_runs(actor: StackedActor, batch: StackedBatch,
                   params: torch.Tensor) -> torch.Tensor:
    """sum_i w_i ratio_i A_i per run [R] (``algos.common.surrogate``)."""
    log_prob = actor.policy.head.log_prob(params, batch.actions)
    ratio = torch.exp(log_prob - batch.old_log_prob)
    if batch.groups is not None:
        ratio = self_normalised(ratio, batch.weights, batch.groups)
    return (batch.weights * ratio * batch.policy_advantages).sum(-1)


def mean_kl_runs(actor: StackedActor, batch: StackedBatch, params: torch.Tensor) -> torch.Tensor:
    """sum_i w_i KL(pi_old || pi') per run [R] (``algos.common.mean_kl``)."""
    return (batch.weights * actor.policy.head.kl(batch.old_params, params)).sum(-1)


# ----------------------------------------------------------------------------- CG and FVP
def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a_r . b_r per row [R]: one dot product per run, the very operation (and rounding) of
    the single-run code; conjugate gradient amplifies any other summation order's rounding
    (a batched reduction gave 6e-5 relative differences in the direction after 10 steps).
    The rows are copied first: a row of [R, P] starts wherever r P lands, and BLAS's dot kernel
    sums in an order that depends on the start's alignment (freshly allocated vectors, as in
    the single-run code, are aligned)."""
    return torch.stack([x.clone() @ y.clone() for x, y in zip(a, b)])


def conjugate_gradient_runs(
    Avp: Callable[[torch.Tensor], torch.Tensor],  # noqa: N803
    b: torch.Tensor,
    iters: int,
    residual_tol: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R conjugate-gradient solves A_r x_r = b_r at once (``b`` [R, P], ``Avp`` maps [R, P] to
    [R, P] row by row); returns x and the recursion's residual r = b - A x, as
    :func:`trpo_lab.numerics.conjugate_gradient_residual` does for each row. A row whose
    residual r.r falls to ``residual_tol`` stops changing; the others go on."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    r_dot = row_dots(r, r)
    active = r_dot > residual_tol
    for _ in range(iters):
        if not bool(active.any()):
            break
        Ap = Avp(p)  # noqa: N806
        alpha = torch.where(active, r_dot / row_dots(p, Ap), torch.zeros_like(r_dot))
        x += alpha[:, None] * p
        r -= alpha[:, None] * Ap
        new_r_dot = row_dots(r, r)
        beta = torch.where(active, new_r_dot / r_dot, torch.zeros_like(r_dot))
        p = torch.where(active[:, None], r + beta[:, None] * p, p)
        r_dot = torch.where(active, new_r_dot, r_dot)
        active = active & (r_dot > residual_tol)
    return x, r


def fisher_vector_product_runs(actor: StackedActor, batch: StackedBatch,
                               damping: torch.Tensor):
    """v [R, P] -> (F_r + damping_r I) v_r, F_r the Fisher matrix of run r's mean KL at its
    collecting policy (``algos.trpo.fisher_vector_product``, batched); a generic actor's by
    :func:`trpo_lab.generic.fisher_vector_product_runs`."""
    if isinstance(actor, generic.GenericStackedActor):
        return generic.fisher_vector_product_runs(actor, batch, damping)
    net = actor.net
    cache = net.forward_cache(batch.obs.numpy())
    weighted_fisher = actor.policy.head.fisher_operator(batch.old_params, batch.weights)
    n_net = net.size
    damping = damping[:, None]

    def fvp(v: torch.Tensor) -> torch.Tensor:
        u = stacked_jvp(cache, net.split(v[:, :n_net]))
        if actor.gaussian:
            u = torch.cat([u, v[:, None, n_net:].expand_as(u)], dim=-1)
        w = weighted_fisher(u)
        if actor.gaussian:
            w_mean, w_log_std = w.split(w.shape[-1] // 2, dim=-1)
            grads = [*stacked_vjp(cache, w_mean), torch.stack([x.sum(0) for x in w_log_std])]
        else:
            grads = stacked_vjp(cache, w)
        rows = v.shape[0]
        return torch.cat([g.reshape(rows, -1) for g in grads], dim=1) + damping.to(v.dtype) * v

    return fvp
