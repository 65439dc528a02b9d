"""Hand-written derivatives of the small MLPs used here (Linear layers and tanh/ReLU).

Autograd's per-node overhead dominates for 64x64 networks on a CPU: a conjugate-gradient step
spends most of its time in the engine, not in arithmetic. These functions compute the same
products with a handful of matrix multiplications, in numpy on zero-copy views of the torch
tensors (at these sizes numpy's matmul takes about half the time of torch's; tanh is torch's
sigmoid form, :func:`tanh_`):

- :func:`forward_cache` runs the network once and keeps what the derivatives need;
- :func:`jvp` gives J v (the output's directional derivative for parameter tangents v);
- :func:`vjp` gives J^T w (parameter gradients for output cotangents w).

Inputs and outputs are torch tensors. Every function is checked against autograd in
tests/test_mlp.py. Training runs (alone or in a group) use the stacked versions in
:mod:`trpo_lab.batched`; these single-network ones are the reference formulas that
:func:`trpo_lab.algos.trpo.fisher_vector_product` builds on and tests/test_batched.py holds the
stacked ones to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Cache:
    weights: list[np.ndarray]  # [out, in] per Linear layer (views of the parameters)
    biases: list[np.ndarray | None]
    inputs: list[np.ndarray]  # the input of each Linear layer
    slopes: list[np.ndarray]  # activation derivative after each hidden Linear layer
    output_array: np.ndarray

    @property
    def output(self) -> torch.Tensor:
        return torch.from_numpy(self.output_array)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def tanh_(z: np.ndarray) -> np.ndarray:
    """tanh in place as :class:`trpo_lab.policies.Tanh` computes it, 2 sigmoid(2 z) - 1, with
    the same float32 operations (the activation is the module's to the bit); torch's
    sigmoid on a zero-copy view is 2x (one network) to 3.5x (a group's stacked networks) faster
    than numpy's tanh here."""
    torch.from_numpy(z).mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
    return z


def forward_cache(net: nn.Sequential, x: torch.Tensor) -> Cache:
    linears = [m for m in net if isinstance(m, nn.Linear)]
    activations = [m for m in net if not isinstance(m, nn.Linear)]
    weights = [_array(m.weight) for m in linears]
    biases = [None if m.bias is None else _array(m.bias) for m in linears]
    inputs, slopes = [], []
    h = _array(x)
    for i, (w, b) in enumerate(zip(weights, biases)):
        inputs.append(h)
        z = h @ w.T
        if b is not None:
            z += b
        if i < len(activations):
            if isinstance(activations[i], nn.ReLU):
                h = np.maximum(z, 0)
                slopes.append((z > 0).astype(z.dtype))
            else:
                h = tanh_(z)
                slopes.append(1 - h * h)
        else:
            h = z
    return Cache(weights, biases, inputs, slopes, h)


def jvp(net: nn.Sequential, cache: Cache, tangents: list[torch.Tensor]) -> torch.Tensor:
    """J v for tangents given per parameter, in ``net.parameters()`` order."""
    it = iter(tangents)
    dh = None
    for i, (w, b) in enumerate(zip(cache.weights, cache.biases)):
        dz = cache.inputs[i] @ _array(next(it)).T
        if b is not None:
            dz += _array(next(it))
        if dh is not None:
            dz += dh @ w.T
        dh = dz * cache.slopes[i] if i < len(cache.slopes) else dz
    return torch.from_numpy(dh)


def vjp(net: nn.Sequential, cache: Cache, cotangent: torch.Tensor) -> list[torch.Tensor]:
    """J^T w as gradients per parameter, in ``net.parameters()`` order."""
    grads: list[np.ndarray] = []
    dz = _array(cotangent)
    # the bias gradients sum over rows: as a product with ones (BLAS) that is many times
    # faster than numpy's axis-0 reduction for these shapes
    ones = np.ones(dz.shape[0], dz.dtype)
    for i in range(len(cache.weights) - 1, -1, -1):
        layer_grads = [dz.T @ cache.inputs[i]]
        if cache.biases[i] is not None:
            layer_grads.append(ones @ dz)
        grads = layer_grads + grads
        if i > 0:
            # a one-column dz (a value head, a 1-d Gaussian) makes dz @ W an outer product,
            # for which OpenBLAS's inner-dimension-1 matrix product is about 4x slower than
            # numpy's broadcast multiply
            back = dz * cache.weights[i] if dz.shape[1] == 1 else dz @ cache.weights[i]
            dz = back * cache.slopes[i - 1]
    return [torch.from_numpy(np.ascontiguousarray(g)) for g in grads]
