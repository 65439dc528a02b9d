"""Calls of frozen module snapshots, built once per snapshot: the generic backend's sampling.

Rollouts and the evaluator call an actor snapshot (:class:`trpo_lab.policies.ModuleActor`)
once per env step on a few rows, so torch's fixed cost per call, not the arithmetic, is what
they pay. The functions here build, once per snapshot, the cheapest call that computes what
the module computes (no autograd: the results are for sampling):

- :func:`snapshot_call`: one module on [N, ...]. For an nn.Sequential of ``nn.Linear`` and
  parameter-free elementwise activations (:data:`ELEMENTWISE`; :func:`sequential_layers`), its
  layers' own operations on detached weights, in the fewest torch calls that give the
  module's numbers to the bit (:func:`sampling_steps`, walked by :func:`run_layers`); any other
  module is called as it is, under no_grad.
- :func:`stacked_call`: m modules of one architecture on [m, N, ...], row-block i through
  module i. A Sequential as above: one ``baddbmm`` per Linear over the stacked weights [m, out,
  in] (the numbers of module i alone up to the rounding of the batched product); any other
  module: the members one by one while m <= :data:`LOOP_MAX` (each its own call, the numbers of
  the module alone), else one ``torch.func.vmap`` of ``functional_call`` over their stacked
  state, whose dispatch costs about as much as :data:`LOOP_MAX` plain calls of a small net.

Measured on a 4-64-64-2 tanh MLP (2 cores, CPU torch, one thread): the module called as it is
48-55 us on 2 rows, its layers one by one 36 us, :func:`snapshot_call` 14 us; on [m, 16, 4],
vmap(functional_call) 300 us for m = 1, 2 and 10, the baddbmm plan 26 us for m = 2 (42-49
without :func:`sampling_steps`), the members one by one 55 us each.
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
#: activations whose in-place kernels :func:`sampling_steps` uses (the same kernels as theirs)
IN_PLACE = {nn.Tanh: torch.tanh_, nn.ReLU: torch.relu_, nn.Sigmoid: torch.sigmoid_}
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


def run_layers(steps: Sequence, weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
               x: torch.Tensor) -> torch.Tensor:
    """x through a Linear+activation plan: each callable step (an activation module, or a
    function of :func:`sampling_steps`) is applied as it is, every other step (a Linear's
    place: None, or its parameters' names) takes the next (W^T, bias or None) of ``weights``,
    W^T the Linear's weight transposed (a view). W^T [in, out] (bias [out]): ``addmm`` on x
    [N, in], the call ``F.linear`` makes, so its numbers, without its dispatch (F.linear
    itself for other inputs); stacked W^T [m, in, out] (bias [m, 1, out]): one ``baddbmm`` on
    x [m, N, in], row-block i through layer i. Differentiable in the weights (the caller
    detaches them for sampling)."""
    linears = iter(weights)
    for step in steps:
        if callable(step):
            x = step(x)
            continue
        weight_t, bias = next(linears)
        if weight_t.dim() == 3:
            x = torch.bmm(x, weight_t) if bias is None else torch.baddbmm(bias, x, weight_t)
        elif bias is not None and x.dim() == 2:
            x = torch.addmm(bias, x, weight_t)
        else:
            x = F.linear(x, weight_t.t(), bias)
    return x


def _tanh_tail(minus_one: torch.Tensor) -> Call:
    """h = 2x (the doubled Linear's output, owned by the call) -> 2 sigmoid(h) - 1 in place:
    :class:`~trpo_lab.networks.Tanh`'s operations after its 2x, in two calls."""
    return lambda h: torch.add(minus_one, h.sigmoid_(), alpha=2, out=h)


def sampling_steps(layers: list[nn.Module],
                   weights: list[tuple[torch.Tensor, torch.Tensor | None]]
                   ) -> tuple[list, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """The cheapest plan for :func:`run_layers` without autograd that gives the module's
    numbers to the bit (a sampling call pays torch's few us per operation, not arithmetic):
    ``weights`` (unstacked or stacked, as :func:`run_layers` takes them) are the Linears' in
    order; returns (steps, weights).

    - :class:`~trpo_lab.networks.Tanh` (2 sigmoid(2x) - 1) right after a Linear: that Linear's
      weights and bias doubled, so it yields 2x to the bit (a power of two commutes with
      rounding: every product and partial sum is exactly doubled), then ``sigmoid_`` and one
      ``torch.add(-1, s, alpha=2)`` (2s is exact, so one rounding as in ``2s - 1``) in place:
      3 operations instead of 5 and a module call (16 against 36 us a call of a 4-64-64-2 MLP
      on 2 rows);
    - the activations of :data:`IN_PLACE` on a tensor the call made itself (right after a
      Linear or another in-place step) by their in-place kernels;
    - any other activation by its ``forward`` (no ``nn.Module.__call__``), which never writes
      into its input, so the caller's input tensor is never written to."""
    steps: list = []
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    linears = iter(weights)
    owned = False  # whether the current tensor is the call's own (a step may write into it)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            steps.append(None)
            out.append(next(linears))
            owned = True
        elif type(layer) is Tanh and steps and steps[-1] is None:
            weight_t, bias = out[-1]  # doubled as W, then transposed: the same layout
            out[-1] = ((2.0 * weight_t.transpose(-1, -2)).transpose(-1, -2),
                       None if bias is None else 2.0 * bias)
            steps.append(_tanh_tail(torch.full((), -1.0, dtype=weight_t.dtype,
                                               device=weight_t.device)))
        elif type(layer) in IN_PLACE and owned:
            steps.append(IN_PLACE[type(layer)])
        else:
            steps.append(layer.forward)
            owned = False
    return steps, out


def _weights(layers: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each Linear's (W^T, bias) for :func:`run_layers`, detached."""
    return [(layer.weight.detach().t(), None if layer.bias is None else layer.bias.detach())
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
    steps, weights = sampling_steps(layers, _weights(layers))
    return lambda x: run_layers(steps, weights, x)


def stacked_call(modules: Sequence[nn.Module]) -> Call:
    """x [m, N, ...] -> [m, N, out], row-block i = modules[i](x[i]), no autograd (the module
    docstring); the modules are snapshots of one architecture."""
    if len(modules) == 1:
        one = snapshot_call(modules[0])
        return lambda x: one(x[0])[None]
    layer_lists = [sequential_layers(m) for m in modules]
    if all(layers is not None for layers in layer_lists):
        weights = [(torch.stack([w.t() for w, _ in per_layer]).transpose(1, 2),
                    None if per_layer[0][1] is None else
                    torch.stack([b for _, b in per_layer])[:, None])
                   for per_layer in zip(*(_weights(layers) for layers in layer_lists))]
        steps, stacked = sampling_steps(layer_lists[0], weights)
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
