"""Hand-written derivatives of the small MLPs used here (Linear layers and tanh/ReLU).

Autograd's per-node overhead dominates for 64x64 networks on a CPU: a conjugate-gradient step
spends most of its time in the engine, not in arithmetic. These functions compute the same
products with a handful of matrix multiplications:

- :func:`forward_cache` runs the network once and keeps what the derivatives need;
- :func:`jvp` gives J v (the output's directional derivative for parameter tangents v);
- :func:`vjp` gives J^T w (parameter gradients for output cotangents w).

Every function is checked against autograd in tests/test_mlp.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Cache:
    inputs: list[torch.Tensor]  # the input of each Linear layer
    slopes: list[torch.Tensor]  # activation derivative after each hidden Linear layer
    output: torch.Tensor


def _layers(net: nn.Sequential) -> tuple[list[nn.Linear], list[nn.Module]]:
    linears = [m for m in net if isinstance(m, nn.Linear)]
    activations = [m for m in net if not isinstance(m, nn.Linear)]
    return linears, activations


def _slope(activation: nn.Module, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    if isinstance(activation, nn.ReLU):
        return (pre > 0).to(post.dtype)
    return 1.0 - post * post  # tanh


@torch.no_grad()
def forward_cache(net: nn.Sequential, x: torch.Tensor) -> Cache:
    linears, activations = _layers(net)
    inputs, slopes = [], []
    h = x
    for i, layer in enumerate(linears):
        inputs.append(h)
        z = torch.nn.functional.linear(h, layer.weight, layer.bias)
        if i < len(activations):
            h = activations[i](z)
            slopes.append(_slope(activations[i], z, h))
        else:
            h = z
    return Cache(inputs, slopes, h)


@torch.no_grad()
def jvp(net: nn.Sequential, cache: Cache, tangents: list[torch.Tensor]) -> torch.Tensor:
    """J v for tangents given per parameter, in ``net.parameters()`` order."""
    linears, _ = _layers(net)
    it = iter(tangents)
    dh = None
    for i, layer in enumerate(linears):
        d_weight = next(it)
        dz = cache.inputs[i] @ d_weight.T
        if layer.bias is not None:
            dz = dz + next(it)
        if dh is not None:
            dz = dz + dh @ layer.weight.T
        dh = dz * cache.slopes[i] if i < len(cache.slopes) else dz
    return dh


@torch.no_grad()
def vjp(net: nn.Sequential, cache: Cache, cotangent: torch.Tensor) -> list[torch.Tensor]:
    """J^T w as gradients per parameter, in ``net.parameters()`` order."""
    linears, _ = _layers(net)
    grads: list[torch.Tensor] = []
    dz = cotangent
    for i in range(len(linears) - 1, -1, -1):
        layer = linears[i]
        layer_grads = [dz.T @ cache.inputs[i]]
        if layer.bias is not None:
            layer_grads.append(dz.sum(0))
        grads = layer_grads + grads
        if i > 0:
            dz = (dz @ layer.weight) * cache.slopes[i - 1]
    return grads
