"""The critic's training, identical for every algorithm: regression of V on the GAE returns."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from trpo_lab import generic
from trpo_lab.algos.common import minibatch_indices
from trpo_lab.batched import StackedNet, stacked_vjp
from trpo_lab.config import CriticConfig
from trpo_lab.grouping import require_shared
from trpo_lab.numerics import explained_variance, set_flat_params
from trpo_lab.optim import Adam
from trpo_lab.policies import Policy
from trpo_lab.rollout import Batch


class CriticTrainer:
    def __init__(self, policy: Policy, cfg: CriticConfig, generator: torch.Generator):
        self.policy, self.cfg, self.generator = policy, cfg, generator
        self.params = policy.critic_parameters()
        self.optimizer = Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps)

    def update(self, batch: Batch) -> dict[str, float]:
        """``epochs`` passes of minibatch MSE steps; explained variance is of the old values.
        The group-of-one call of :func:`critic_update_runs`."""
        return critic_update_runs([self], [batch])[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def _outputs_and_pullback(net, fast: bool, flat: torch.Tensor, x: torch.Tensor):
    """The stacked critics' outputs [R, B, 1] and u -> J^T u as [R, P]: by the hand-written
    derivatives (``fast``: a :class:`~trpo_lab.batched.StackedNet`) or by torch.func (a
    :class:`~trpo_lab.generic.StackedModule`)."""
    if not fast:
        return generic.outputs_and_pullback(net, flat, x)
    cache = net.forward_cache(x.numpy(), flat)
    rows = flat.shape[0]

    def pullback(cotangent: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.reshape(rows, -1) for g in stacked_vjp(cache, cotangent)], dim=1)

    return torch.from_numpy(cache.output), pullback


def critic_update_runs(trainers: Sequence, batches: Sequence[Batch]) -> list[dict[str, float]]:
    """The critic's update for R runs at once (``trainers``: their CriticTrainers; a lone run
    is a group of one): ``epochs`` passes of minibatch Adam steps on mean (V - target)^2, each
    run's minibatches drawn from its own generator, each run's step size its own; a run whose
    errors are not finite skips that step. Each run's critic parameters and Adam state are
    written back, so its checkpoint holds them; explained variance is of the old values."""
    R = len(trainers)  # noqa: N806
    first = trainers[0]
    cfg = first.cfg
    require_shared([t.cfg for t in trainers], ("epochs", "minibatches", "adam_eps"), "critic")
    evs = [explained_variance(b.values.double().cpu().numpy(),
                              b.returns.double().cpu().numpy())
           for b in batches]
    fast = first.policy.fast_critic
    critics = [t.policy.critic for t in trainers]
    net = StackedNet.of(critics) if fast else generic.StackedModule.of(critics)
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
    device = obs.device
    rows = torch.arange(R, device=device)[:, None]
    for _ in range(cfg.epochs):
        parts = [minibatch_indices(size, cfg.minibatches, t.generator) for t in trainers]
        for j in range(len(parts[0])):
            if isinstance(parts[0][j], slice):
                x, target = obs, returns
            else:
                index = torch.stack([p[j] for p in parts]).to(device)
                x, target = obs[rows, index], returns[rows, index]
            output, pullback = _outputs_and_pullback(net, fast, flat, x)
            error = output[..., 0] - target
            live = torch.isfinite(error).all(1)
            if not bool(live.any()):
                continue
            cot = (2.0 / error.shape[1]) * torch.where(live[:, None], error,
                                                       torch.zeros_like(error))
            g = pullback(cot.unsqueeze(-1))
            live_np = live.cpu().numpy()
            steps = steps + live_np
            # Adam with Python-float step sizes, as trpo_lab.optim.Adam computes it (a tensor of
            # per-run step sizes rounds differently: torch divides by a scalar as a product
            # with its reciprocal); one block per distinct (lr, t), usually the whole group
            blocks: dict[tuple[float, int], list[int]] = {}
            for r in np.flatnonzero(live_np):
                blocks.setdefault((float(lr[r]), int(steps[r])), []).append(int(r))
            for (rate, t), members in blocks.items():
                whole = len(members) == R
                index = None if whole else torch.tensor(members, device=device)
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
        values = _outputs_and_pullback(net, fast, flat, obs)[0][..., 0]
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
