"""Calls of frozen module snapshots, built once per snapshot: the generic backend's sampling.

Rollouts and the evaluator call an actor snapshot (:class:`trpo_lab.policies.ModuleActor`)
once per env step on a few rows, so torch's fixed cost per call, not the arithmetic, is what
they pay. The functions here build, once per snapshot, the cheapest call that computes what
the module computes (no autograd: the results are for sampling):

- :func:`snapshot_call`: one module on [N, ...]. For an nn.Sequential of ``nn.Linear`` and
  parameter-free elementwise activations (:data:`ELEMENTWISE`; :func:`sequential_layers`), its
  layers' own operations on detached weights (``F.linear`` and the activation's ``forward``:
  the same numbers as the module, without ``nn.Module.__call__``'s hooks per layer); any other
  module is called as it is, under no_grad.
- :func:`stacked_call`: m modules of one architecture on [m, N, ...], row-block i through
  module i. A Sequential as above: one ``baddbmm`` per Linear over the stacked weights [m, in,
  out] (the numbers of module i alone up to the rounding of the batched product); any other
  module: the members one by one while m <= :data:`LOOP_MAX` (each its own call, the numbers of
  the module alone), else one ``torch.func.vmap`` of ``functional_call`` over their stacked
  state, whose dispatch costs about as much as :data:`LOOP_MAX` plain calls of a small net.

Measured on a 4-64-64-2 tanh MLP (2 cores, CPU torch, one thread): the module called as it is
48-55 us on 2 rows, :func:`snapshot_call` 36 us; on [m, 16, 4], vmap(functional_call) 300 us
for m = 1, 2 and 10, the baddbmm plan 42-49 us, the members one by one 55 us each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from trpo_lab.networks import ObservationView, Tanh

#: parameter-free activations that act entry by entry, so one call on a stacked [m, N, h]
#: tensor is m calls on [N, h] (exact types: a subclass may do anything)
ELEMENTWISE = (Tanh, nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU,
               nn.Softplus, nn.Identity)
#: the most members :func:`stacked_call` calls one by one before it turns to vmap
LOOP_MAX = 4

Call = Callable[[torch.Tensor], torch.Tensor]


def sequential_layers(module: nn.Module) -> list[nn.Module] | None:
    """The layers of ``module`` when it is an nn.Sequential (possibly in an
    :class:`~trpo_lab.networks.ObservationView` of flat vectors) of ``nn.Linear`` and
    :data:`ELEMENTWISE` activations without parameters or buffers; else None."""
    if isinstance(module, ObservationView) and len(module.shape) == 1:
        module = module.net
    if type(module) is not nn.Sequential or len(module) == 0:
        return None
    layers = list(module)
    for layer in layers:
        if type(layer) is nn.Linear:
            continue
        if type(layer) not in ELEMENTWISE or any(True for _ in layer.parameters()) or any(
                True for _ in layer.buffers()):
            return None
    return layers


def _plan(layers: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor | None] | nn.Module]:
    return [(layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
            if isinstance(layer, nn.Linear) else layer for layer in layers]


def snapshot_call(module: nn.Module) -> Call:
    """x [N, ...] -> module(x), no autograd (the module docstring); ``module`` must not change
    afterwards (a snapshot)."""
    layers = sequential_layers(module)
    if layers is None:
        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return call
    plan = _plan(layers)

    def plain(x: torch.Tensor) -> torch.Tensor:
        for step in plan:
            x = F.linear(x, *step) if isinstance(step, tuple) else step(x)
        return x

    return plain


def stacked_call(modules: Sequence[nn.Module]) -> Call:
    """x [m, N, ...] -> [m, N, out], row-block i = modules[i](x[i]), no autograd (the module
    docstring); the modules are snapshots of one architecture."""
    if len(modules) == 1:
        one = snapshot_call(modules[0])
        return lambda x: one(x[0])[None]
    layer_lists = [sequential_layers(m) for m in modules]
    if all(layers is not None for layers in layer_lists):
        plans = [_plan(layers) for layers in layer_lists]
        stacked: list = []
        for k, step in enumerate(plans[0]):
            if isinstance(step, tuple):
                weight = torch.stack([p[k][0] for p in plans]).transpose(1, 2)  # [m, in, out]
                bias = None if step[1] is None else torch.stack([p[k][1] for p in plans])[:, None]
                stacked.append((weight, bias))
            else:
                stacked.append(step)

        def batched(x: torch.Tensor) -> torch.Tensor:
            for step in stacked:
                if isinstance(step, tuple):
                    weight, bias = step
                    x = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)
                else:
                    x = step(x)
            return x

        return batched
    if len(modules) <= LOOP_MAX:
        calls = [snapshot_call(m) for m in modules]
        return lambda x: torch.stack([call(x[i]) for i, call in enumerate(calls)])
    params, buffers = torch.func.stack_module_state(list(modules))
    first = modules[0]

    def member(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(first, (p, b), (xi,))

    vmapped = torch.func.vmap(member)

    def vmap_call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vmapped(params, buffers, x)

    return vmap_call
