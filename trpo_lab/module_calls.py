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
  module i. A Sequential as above: one ``baddbmm`` per Linear over the stacked weights [m, out,
  in] (the numbers of module i alone up to the rounding of the batched product); any other
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


def layer_steps(layers: list[nn.Module]) -> list[nn.Module | None]:
    """The plan of a :func:`sequential_layers` list for :func:`run_layers`: None in each
    Linear's place (its weights come with the call), the activations as they are."""
    return [None if isinstance(layer, nn.Linear) else layer for layer in layers]


def run_layers(steps: Sequence, weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
               x: torch.Tensor) -> torch.Tensor:
    """x through a Linear+activation plan: each step that is an nn.Module is applied as it is,
    every other step (a Linear's place: None, or its parameters' names) takes the next (weight,
    bias or None) of ``weights``. Weights [out, in] (bias [out]): ``F.linear`` on x [N, in];
    stacked weights [m, out, in] (bias [m, out]): one ``baddbmm`` on x [m, N, in], row-block i
    through layer i. Differentiable in the weights (the caller detaches them for sampling)."""
    linears = iter(weights)
    for step in steps:
        if isinstance(step, nn.Module):
            x = step(x)
            continue
        weight, bias = next(linears)
        if weight.dim() == 2:
            x = F.linear(x, weight, bias)
        elif bias is None:
            x = torch.bmm(x, weight.transpose(1, 2))
        else:
            x = torch.baddbmm(bias[:, None], x, weight.transpose(1, 2))
    return x


def _weights(layers: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    return [(layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
            for layer in layers if isinstance(layer, nn.Linear)]


def snapshot_call(module: nn.Module) -> Call:
    """x [N, ...] -> module(x), no autograd (the module docstring); ``module`` must not change
    afterwards (a snapshot)."""
    layers = sequential_layers(module)
    if layers is None:
        def call(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return call
    steps, weights = layer_steps(layers), _weights(layers)
    return lambda x: run_layers(steps, weights, x)


def stacked_call(modules: Sequence[nn.Module]) -> Call:
    """x [m, N, ...] -> [m, N, out], row-block i = modules[i](x[i]), no autograd (the module
    docstring); the modules are snapshots of one architecture."""
    if len(modules) == 1:
        one = snapshot_call(modules[0])
        return lambda x: one(x[0])[None]
    layer_lists = [sequential_layers(m) for m in modules]
    if all(layers is not None for layers in layer_lists):
        steps = layer_steps(layer_lists[0])
        stacked = [(torch.stack([w for w, _ in per_layer]),
                    None if per_layer[0][1] is None else torch.stack([b for _, b in per_layer]))
                   for per_layer in zip(*(_weights(layers) for layers in layer_lists))]
        return lambda x: run_layers(steps, stacked, x)
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
