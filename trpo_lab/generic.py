"""The generic backend: derivatives of any torch module by autograd and ``torch.func``.

This is the definition that the hand-written numpy path (:mod:`trpo_lab.mlp`,
:mod:`trpo_lab.batched`) optimises for plain Linear + tanh/ReLU stacks; it serves every module
(conv nets, LayerNorm, residual blocks, a user's class), and many runs of one architecture as
stacked parameters under ``torch.func.vmap``:

- :class:`StackedModule`: R copies of one module as a flat parameter matrix [R, P] (in
  ``module.parameters()`` order); :meth:`~StackedModule.forward` evaluates all R on their own
  inputs [R, B, ...] with ``vmap(functional_call)``, differentiably in the flat matrix;
- :class:`GenericStackedActor`: the actors of R policies (the Gaussian's log-std as the last
  entries of each row, the order of ``Policy.actor_parameters``), the generic twin of
  :class:`trpo_lab.batched.StackedActor`;
- :func:`fisher_vector_product_runs`: v [R, P] -> (J_r^T diag(w_r) M_r J_r + damping_r I) v_r,
  the Gauss-Newton form of the Hessian of each run's mean KL at its collecting policy: J^T u by
  the pull-back of one ``torch.func.vjp``, J v by the vjp of that (linear) pull-back, both
  built once per update, M the head's closed form (``head.fisher_operator``). The network's
  second-order terms, which a double backward of the KL computes only to multiply them by
  zero, are never formed.

Runs never mix: the Jacobian of the stacked forward is block-diagonal in the runs, so one
``jvp``/``vjp`` of the stacked function is R per-run products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trpo_lab.module_calls import run_layers, sequential_layers
from trpo_lab.numerics import flat_params


@dataclass
class StackedModule:
    """R modules of one architecture; ``flat`` [R, P] holds their parameters. ``plan``: for an
    nn.Sequential of Linear and parameter-free elementwise activations
    (:func:`trpo_lab.module_calls.sequential_layers`), its layers as (weight name, bias name or
    None) per Linear and the activation modules, which :meth:`forward` walks with
    :func:`trpo_lab.module_calls.run_layers` (the sampling calls' walker too); None:
    ``functional_call``."""

    module: nn.Module  # the first run's: its structure (and buffers) for functional_call
    names: list[str]
    shapes: list[torch.Size]
    flat: torch.Tensor
    plan: list[tuple[str, str | None] | nn.Module] | None = None

    @staticmethod
    def of(modules: Sequence[nn.Module], flat: torch.Tensor | None = None) -> StackedModule:
        named = list(modules[0].named_parameters())
        if flat is None:
            flat = torch.stack([flat_params(list(m.parameters())) for m in modules])
        return StackedModule(modules[0], [n for n, _ in named], [p.shape for _, p in named],
                             flat, layer_plan(modules[0]))

    @property
    def size(self) -> int:
        return sum(s.numel() for s in self.shapes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """[R, P] -> {name: [R, *shape]} (views)."""
        rows = flat.shape[0]
        chunks = flat.split([s.numel() for s in self.shapes], dim=1)
        return {n: c.reshape(rows, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Run r's module on x[r]: [R, B, ...] -> [R, B, out], differentiable in ``flat``. A
        group of one skips vmap (the same function; vmap's dispatch costs a few ms a call); a
        ``plan`` applies its layers' operations to the parameters' views (a group: one
        ``baddbmm`` per Linear), without functional_call's parameter swapping (a third of a
        critic step's time on a 64x64 MLP); the same numbers."""
        module = self.module
        if self.plan is not None:
            return self._planned(flat, x)
        if flat.shape[0] == 1:
            params = {n: p[0] for n, p in self.split(flat).items()}
            return torch.func.functional_call(module, params, (x[0],))[None]

        def call(params: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(module, params, (xi,))

        return torch.func.vmap(call)(self.split(flat), x)

    def _planned(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        linears = [step for step in self.plan if not isinstance(step, nn.Module)]
        if x.shape[0] == 1:  # the row as a view: no select (and select_backward) per tensor
            params = dict(zip(self.names, (c.view(s) for c, s in zip(
                flat.view(-1).split([s.numel() for s in self.shapes]), self.shapes))))
            weights = [(params[w].t(), None if b is None else params[b]) for w, b in linears]
            return run_layers(self.plan, weights, x[0])[None]
        params = self.split(flat)
        weights = [(params[w].transpose(1, 2), None if b is None else params[b][:, None])
                   for w, b in linears]
        return run_layers(self.plan, weights, x)


def layer_plan(module: nn.Module) -> list[tuple[str, str | None] | nn.Module] | None:
    """:attr:`StackedModule.plan` of ``module``: its Linear layers by their parameters' names,
    its activations as they are; None when it is not such a stack."""
    layers = sequential_layers(module)
    if layers is None:
        return None
    name_of = {id(p): n for n, p in module.named_parameters()}
    return [(name_of[id(layer.weight)], None if layer.bias is None else name_of[id(layer.bias)])
            if isinstance(layer, nn.Linear) else layer for layer in layers]


@dataclass
class GenericStackedActor:
    """The actors of R policies for the generic backend: the interface of
    :class:`trpo_lab.batched.StackedActor` (``dist_params``, ``policy``, ``gaussian``,
    ``net.size``)."""

    net: StackedModule
    policy: nn.Module  # the first run's Policy (its head: pure functions of dist. parameters)
    gaussian: bool
    flat: torch.Tensor  # [R, P]: every run's actor parameters at theta_old

    @staticmethod
    def of(policies: Sequence) -> tuple[GenericStackedActor, torch.Tensor]:
        flat = torch.stack([flat_params(p.actor_parameters()) for p in policies])
        size = sum(p.numel() for p in policies[0].actor.parameters())
        net = StackedModule.of([p.actor for p in policies], flat[:, :size])
        first = policies[0]
        return GenericStackedActor(net, first, first.log_std is not None, flat), flat

    def dist_params(self, flat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        out = self.net.forward(flat[:, :self.net.size], obs)
        if not self.gaussian:
            return out
        log_std = flat[:, self.net.size:]
        return torch.cat([out, log_std[:, None, :].expand_as(out)], dim=-1)


def fisher_vector_product_runs(actor: GenericStackedActor, batch, damping: torch.Tensor):
    """v [R, P] -> (F_r + damping_r I) v_r (the module docstring), F_r = J_r^T diag(w_r) M_r J_r
    at run r's collecting parameters; ``batch`` a :class:`trpo_lab.batched.StackedBatch`."""
    n_net = actor.net.size
    theta = actor.flat[:, :n_net].detach()
    obs = batch.obs

    def outputs(flat: torch.Tensor) -> torch.Tensor:
        return actor.net.forward(flat, obs)

    out, pullback = torch.func.vjp(outputs, theta)
    # J v as the vjp of the (linear) pull-back u -> J^T u: reverse over reverse, built once for
    # all of CG's products (forward mode, torch.func.jvp, recomputes the network every product
    # and runs tanh/sigmoid through slow decompositions: 30x the time on a 64x64 MLP)
    _, push = torch.func.vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
    weighted_fisher = actor.policy.head.fisher_operator(batch.old_params, batch.weights)
    damping = damping[:, None]

    def fvp(v: torch.Tensor) -> torch.Tensor:
        (u,) = push(v[:, :n_net].to(theta.dtype))
        if actor.gaussian:
            u = torch.cat([u, v[:, None, n_net:].to(u.dtype).expand_as(u)], dim=-1)
        w = weighted_fisher(u)
        if actor.gaussian:
            w_mean, w_log_std = w.split(w.shape[-1] // 2, dim=-1)
            (g,) = pullback(w_mean)
            g = torch.cat([g, w_log_std.sum(1)], dim=1)
        else:
            (g,) = pullback(w)
        return g.to(v.dtype) + damping.to(v.dtype) * v

    return fvp


def outputs_and_pullback(net: StackedModule, flat: torch.Tensor, x: torch.Tensor):
    """The stacked outputs [R, B, out] (detached) and u -> J^T u as [R, P]: a critic's
    gradient from the cotangent of its loss; the pull-back may be applied once (the critic's
    one gradient per minibatch). Plain reverse-mode autograd: ``torch.func.vjp``'s wrapping
    costs about as much as the backward of a 64x64 critic on 512 rows; the same numbers."""
    leaf = flat.detach().requires_grad_(True)
    with torch.enable_grad():
        out = net.forward(leaf, x)

    def back(cotangent: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(out, leaf, cotangent.to(out.dtype))
        return grad

    return out.detach(), back
