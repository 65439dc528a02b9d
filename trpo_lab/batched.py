"""The numerics of many runs at once: a leading run axis R on every array.

A group of runs (:mod:`trpo_lab.group`) has the same network shapes and batch sizes, and
differs in numbers that do not change shapes (seed, delta, damping, learning rates, ...). These
functions do for all R runs what :mod:`trpo_lab.mlp`, :mod:`trpo_lab.numerics`,
:mod:`trpo_lab.algos.trpo` and :mod:`trpo_lab.critic` do for one, in one call per operation:

- :class:`StackedNet`: R MLPs of one architecture as stacked weights [R, out, in]; its
  :meth:`~StackedNet.forward_cache`, :meth:`~StackedNet.jvp` and :meth:`~StackedNet.vjp` are
  :mod:`trpo_lab.mlp`'s, batched (numpy matmul over the run axis);
- :func:`conjugate_gradient_runs`: R conjugate-gradient solves, each with its own step sizes
  and its own stopping rule (a run whose residual is small stops; the others go on);
- :func:`fisher_vector_product_runs`: v [R, P] -> (F_r + damping_r I) v_r for every run;
- :func:`trpo_update_runs`: TRPO's (and NPG's) update for R runs, with a line search that
  accepts or rejects each run's step separately (per-run acceptance mask);
- :func:`critic_update_runs`: the critic's minibatch Adam steps for R runs, each with its own
  minibatch order (its own generator) and learning rate.

Every run's result is the unbatched formula's for that run (tests/test_batched.py checks each
against the single-run functions); the runs never mix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trpo_lab.algos.common import minibatch_indices, surrogate
from trpo_lab.mlp import tanh_
from trpo_lab.numerics import explained_variance, flat_grad, flat_params, set_flat_params
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


# ----------------------------------------------------------------------------- stacked MLPs
def _layout(net: nn.Sequential) -> tuple[list[tuple[int, int, bool]], list[str]]:
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
    def of(policies: Sequence[Policy]) -> tuple[StackedActor, torch.Tensor]:
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

    @staticmethod
    def of(batches: Sequence[Batch]) -> StackedBatch:
        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(b, name) for b in batches])

        return StackedBatch(stack("obs"), stack("actions"), stack("weights"),
                            stack("old_params"), stack("old_log_prob"),
                            stack("policy_advantages"))

    def rows(self, index: torch.Tensor) -> StackedBatch:
        return StackedBatch(*(getattr(self, f)[index] for f in (
            "obs", "actions", "weights", "old_params", "old_log_prob", "policy_advantages")))


def surrogate_runs(actor: StackedActor, batch: StackedBatch,
                   params: torch.Tensor) -> torch.Tensor:
    """sum_i w_i ratio_i A_i per run [R] (``algos.common.surrogate``)."""
    log_prob = actor.policy.head.log_prob(params, batch.actions)
    ratio = torch.exp(log_prob - batch.old_log_prob)
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
    collecting policy (``algos.trpo.fisher_vector_product``, batched)."""
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


# ----------------------------------------------------------------------------- TRPO
def trpo_update_runs(policies: Sequence[Policy], batches: Sequence[Batch],
                     cfgs: Sequence) -> list[dict[str, float]]:
    """:class:`trpo_lab.algos.trpo.TRPO`'s update for R runs at once; returns each run's info
    (the same keys and values its own ``update`` returns) and leaves each policy's actor at
    its new (or, rejected, its old) parameters.

    The gradient is one autograd call of the runs' summed surrogates (the runs share no
    parameter, so each row is its own run's gradient); the direction is R conjugate-gradient
    solves on batched Fisher-vector products; the line search evaluates the runs still
    searching in one batched forward pass per backtrack and accepts each run's step when its
    own KL <= its delta and its surrogate improves.
    """
    R = len(policies)  # noqa: N806
    actor, theta_old = StackedActor.of(policies)
    batch = StackedBatch.of(batches)
    iters = cfgs[0].cg_iters
    backtrack_iters = cfgs[0].backtrack_iters
    delta = torch.tensor([c.delta for c in cfgs], dtype=torch.float64)
    damping = torch.tensor([c.cg_damping for c in cfgs], dtype=torch.float64)
    coef = torch.tensor([c.backtrack_coef for c in cfgs], dtype=torch.float64)
    line_search = torch.tensor([bool(c.line_search) for c in cfgs])

    # each run's gradient by its own autograd call: the single-run code's numbers to the bit
    # (conjugate gradient amplifies a 1e-8 difference in g to 1e-5 in the direction)
    g = torch.stack([flat_grad(surrogate(p, b), p.actor_parameters())
                     for p, b in zip(policies, batches)])
    g_finite = torch.isfinite(g).all(1)
    fvp = fisher_vector_product_runs(actor, batch, damping)
    direction, residual = conjugate_gradient_runs(
        fvp, torch.where(g_finite[:, None], g, torch.zeros_like(g)), iters)
    damped = row_dots(direction, g - residual)  # s^T (F + damping I) s
    norms = row_dots(direction, direction)
    dir_finite = torch.isfinite(direction).all(1)
    zero, valid = torch.zeros(R, dtype=torch.bool), torch.zeros(R, dtype=torch.bool)
    full_step = torch.zeros_like(direction)
    for r, cfg in enumerate(cfgs):  # per run in Python floats, as natural_step computes it
        damped_shs = float(damped[r])
        fisher_shs = damped_shs - cfg.cg_damping * float(norms[r])
        shs = fisher_shs if fisher_shs > 0 else damped_shs
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
            index = torch.tensor(npg)
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
            index = torch.tensor(searching)
            trial_step = full_step[index] * (coef[index] ** k).to(full_step.dtype)[:, None]
            trial = theta_old[index] + trial_step
            sub = batch.rows(index)
            params = actor.dist_params(trial, sub.obs)
            surr = surrogate_runs(actor, sub, params).double()
            kl = mean_kl_runs(actor, sub, params).double()
            ok = (kl <= delta[index]) & (surr > surr_old[index])  # NaN compares False
            still = []
            for j, r in enumerate(searching):
                if bool(ok[j]):
                    theta_new[r] = trial[j]
                    infos[r] = {"trpo/backtracks": float(k), "trpo/accepted": 1.0,
                                "trpo/step_norm": float(trial_step[j].norm())}
                else:
                    still.append(r)
            searching = still
        for r in searching:  # no step passed: the old parameters, exactly
            infos[r] = {"trpo/backtracks": float(backtrack_iters), "trpo/accepted": 0.0,
                        "trpo/step_norm": 0.0}
    for r, policy in enumerate(policies):
        set_flat_params(policy.actor_parameters(), theta_new[r])
    return infos  # type: ignore[return-value]


# ----------------------------------------------------------------------------- critic
def critic_update_runs(trainers: Sequence, batches: Sequence[Batch]) -> list[dict[str, float]]:
    """:meth:`trpo_lab.critic.CriticTrainer.update` for R runs (``trainers``: their
    CriticTrainers) at once: the same epochs of minibatch Adam steps on mean (V - target)^2,
    each run's minibatches drawn from its own generator, each run's step size its own; a run
    whose errors are not finite skips that step, as alone. Each run's critic parameters and
    Adam state are written back, so its checkpoint is what a lone run's would be."""
    R = len(trainers)  # noqa: N806
    first = trainers[0]
    cfg = first.cfg
    evs = [explained_variance(b.values.double().numpy(), b.returns.double().numpy())
           for b in batches]
    net = StackedNet.of([t.policy.critic for t in trainers])
    flat = net.flat
    optimizers = [t.optimizer for t in trainers]
    m = torch.stack([o._m for o in optimizers])
    v = torch.stack([o._v for o in optimizers])
    steps = np.array([o.steps[0] if o.steps else 0 for o in optimizers], np.int64)
    lr = np.array([o.lr for o in optimizers])
    b1, b2 = first.optimizer.betas
    eps = first.optimizer.eps
    obs = torch.stack([b.obs for b in batches])
    returns = torch.stack([b.returns for b in batches])
    size = batches[0].size
    rows = torch.arange(R)[:, None]
    for _ in range(cfg.epochs):
        parts = [minibatch_indices(size, cfg.minibatches, t.generator) for t in trainers]
        for j in range(len(parts[0])):
            if isinstance(parts[0][j], slice):
                x, target = obs, returns
            else:
                index = torch.stack([p[j] for p in parts])
                x, target = obs[rows, index], returns[rows, index]
            cache = net.forward_cache(x.numpy(), flat)
            error = torch.from_numpy(cache.output[..., 0]) - target
            live = torch.isfinite(error).all(1)
            if not bool(live.any()):
                continue
            cot = (2.0 / error.shape[1]) * torch.where(live[:, None], error,
                                                       torch.zeros_like(error))
            grads = stacked_vjp(cache, cot.unsqueeze(-1))
            g = torch.cat([gr.reshape(R, -1) for gr in grads], dim=1)
            live_np = live.numpy()
            steps = steps + live_np
            # Adam with Python-float step sizes, as trpo_lab.optim.Adam computes it (a tensor of
            # per-run step sizes rounds differently: torch divides by a scalar as a product
            # with its reciprocal); one block per distinct (lr, t), usually the whole group
            blocks: dict[tuple[float, int], list[int]] = {}
            for r in np.flatnonzero(live_np):
                blocks.setdefault((float(lr[r]), int(steps[r])), []).append(int(r))
            for (rate, t), members in blocks.items():
                whole = len(members) == R
                index = None if whole else torch.tensor(members)
                m_b, v_b = (m, v) if whole else (m[index], v[index])
                g_b, p_b = (g, flat) if whole else (g[index], flat[index])
                m_b = m_b.mul(b1).add_(g_b, alpha=1 - b1)
                v_b = v_b.mul(b2).addcmul_(g_b, g_b, value=1 - b2)
                denom = v_b.sqrt().div_(math.sqrt(1 - b2**t)).add_(eps)
                p_b = p_b + torch.div(m_b, denom).mul_(-(rate / (1 - b1**t)))
                if whole:
                    m, v, flat = m_b, v_b, p_b
                else:
                    m, v = m.index_copy(0, index, m_b), v.index_copy(0, index, v_b)
                    flat = flat.index_copy(0, index, p_b)
    with torch.no_grad():
        values = torch.from_numpy(net.forward_cache(obs.numpy(), flat).output[..., 0])
        losses = ((values - returns) ** 2).mean(1)
    out = []
    for r, trainer in enumerate(trainers):
        set_flat_params(trainer.params, flat[r])
        opt = trainer.optimizer
        opt._m.copy_(m[r])
        opt._v.copy_(v[r])
        opt.steps = [int(steps[r])] * len(opt.params)
        out.append({"value/loss": float(losses[r]), "value/explained_variance": evs[r]})
    return out
