"""The network seam: a policy's actor is any torch module from observations to the head's
distribution parameters, its critic any module to V.

The contract for a user's module (``policy=module policy.actor._target_=pkg.mod.Class``; the
other keys of ``policy.actor`` are keyword arguments)::

    Class(observation_space=space, output_dim=k, **kwargs)   # an nn.Module
    forward(obs [N, *obs_shape]) -> [N, k]

``k`` is the actor's output size (the logits of a Categorical, the mean of a Gaussian whose
log-std is a separate, state-independent parameter) or 1 for a critic. ``obs`` is the
observation encoding every run shares (:func:`trpo_lab.policies.encode_observations`: one-hot
for Discrete, float32 for Box, normalised when ``env.normalize_obs``), reshaped to
:func:`observation_shape`. For a Tuple or Dict observation space the class gets that space
(not its packed form) and ``obs`` is a tuple or dict like it of float32 tensors
[N, *:func:`part_shape`] (Discrete parts one-hot, Box parts normalised when
``env.normalize_obs``). The rollout and batch code keep observations flat; the module sees
them through :class:`ObservationView` or :class:`StructuredView` (:func:`module_view`).

This module builds the networks: :func:`mlp` (the hand-written backend knows it),
:class:`ConvNet` (``policy=cnn``), :func:`instantiate` (``policy=module``), and
:func:`fast_layout`, which says whether a network is a plain Linear + tanh/ReLU stack that the
hand-written derivatives (:mod:`trpo_lab.mlp`, :mod:`trpo_lab.batched`) serve.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from trpo_lab import spaces
from trpo_lab.config import ConfigError, module_target


class Tanh(nn.Module):
    """tanh(x) computed as 2 sigmoid(2x) - 1.

    The same function (|difference| < 2e-7 in float32), but CPU torch's own tanh kernel is
    several times slower than its sigmoid; with 64x64 nets the activation dominates the critic
    and Fisher-vector-product time.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(2.0 * x) - 1.0


ACTIVATIONS = {"tanh": (Tanh, np.tanh), "relu": (nn.ReLU, lambda x: np.maximum(x, 0.0))}


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: str, out_gain: float,
        bias: bool = True) -> nn.Sequential:
    """Linear layers with ``activation`` between them; orthogonal init (gain sqrt 2 inside,
    ``out_gain`` on the output layer, zeros when 0)."""
    layers: list[nn.Module] = []
    sizes = [in_dim, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        linear = nn.Linear(a, b)
        nn.init.orthogonal_(linear.weight, gain=np.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, ACTIVATIONS[activation][0]()]
    out = nn.Linear(sizes[-1], out_dim, bias=bias)
    if out_gain == 0.0:
        nn.init.zeros_(out.weight)
    else:
        nn.init.orthogonal_(out.weight, gain=out_gain)
    if bias:
        nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


def observation_shape(space: gym.Space) -> tuple[int, ...]:
    """The shape a module sees one observation in: the Box's shape for Box, else the flat
    encoding's (one-hot for Discrete, the parts concatenated for Tuple and Dict:
    :func:`trpo_lab.spaces.observation_dim`)."""
    if isinstance(space, gym.spaces.Box) and not isinstance(space, spaces.PackedSpace):
        return tuple(int(d) for d in space.shape)
    return (spaces.observation_dim(space),)


class ObservationView(nn.Module):
    """``net`` applied to flat encoded observations [N, prod(shape)] viewed as [N, *shape]."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.net, self.shape = net, tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], *self.shape))


def part_shape(leaf: gym.Space) -> tuple[int, ...]:
    """The shape of one part of a Tuple or Dict observation as a module sees it (per row):
    Discrete(n) its one-hot (n,); MultiDiscrete(nvec) its components' one-hots concatenated
    (sum(nvec),); Box and MultiBinary their own shape."""
    if isinstance(leaf, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        return (spaces.observation_dim(leaf),)
    return tuple(int(d) for d in leaf.shape)


def split_encoded(space: spaces.PackedSpace, x: torch.Tensor):
    """Encoded observations [N, observation_dim] (:func:`trpo_lab.spaces.encode_observations`,
    normalised Box parts included) as the structure of ``space.structure``: a dict (Dict) or
    tuple (Tuple), nested like the space, of tensors [N, *:func:`part_shape`] (views of ``x``,
    its dtype)."""
    parts: dict[tuple, torch.Tensor] = {}
    offset = 0
    for path, leaf, _ in space.leaves:
        shape = part_shape(leaf)
        size = int(np.prod(shape))
        parts[path] = x[:, offset:offset + size].reshape(x.shape[0], *shape)
        offset += size

    def build(part: gym.Space, path: tuple):
        if isinstance(part, gym.spaces.Dict):
            return {key: build(sub, (*path, key)) for key, sub in part.spaces.items()}
        if isinstance(part, gym.spaces.Tuple):
            return tuple(build(sub, (*path, i)) for i, sub in enumerate(part.spaces))
        return parts[path]

    return build(space.structure, ())


class StructuredView(nn.Module):
    """``net`` applied to flat encoded Tuple or Dict observations [N, observation_dim] handed
    over as their structure (:func:`split_encoded`): what ``policy=module`` gives a user's
    module for such spaces."""

    def __init__(self, net: nn.Module, space: spaces.PackedSpace):
        super().__init__()
        self.net, self.space = net, space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(split_encoded(self.space, x))


def module_view(net: nn.Module, observation_space: gym.Space) -> nn.Module:
    """A user's module as the policy calls it (flat encoded observations in): a
    :class:`StructuredView` for Tuple and Dict spaces, else an :class:`ObservationView`."""
    if isinstance(observation_space, spaces.PackedSpace):
        return StructuredView(net, observation_space)
    return ObservationView(net, observation_shape(observation_space))


def fast_layout(net: nn.Module) -> str | None:
    """None when ``net`` is an nn.Sequential of nn.Linear layers with tanh (:class:`Tanh`,
    nn.Tanh) or nn.ReLU between
    them (ending in a Linear): the networks the hand-written backend differentiates; else what
    it is not, for the refusal of ``policy.backend=fast``."""
    if not isinstance(net, nn.Sequential):
        return f"{type(net).__name__} is not an nn.Sequential of Linear and Tanh/ReLU layers"
    modules = list(net)
    for k, module in enumerate(modules):
        want_linear = k % 2 == 0
        if want_linear and not isinstance(module, nn.Linear):
            return f"layer {k} is {type(module).__name__}, not Linear"
        if not want_linear and type(module) not in (Tanh, nn.Tanh, nn.ReLU):
            return f"layer {k} is {type(module).__name__}, not Tanh or ReLU"
    if not modules or not isinstance(modules[-1], nn.Linear):
        return "it does not end in a Linear layer"
    return None


class ConvNet(nn.Module):
    """Conv layers, then a small fully connected layer, in the spirit of the TRPO paper's Atari
    policy (two conv layers of 16 channels, 4x4 filters, stride 2, then 20 hidden units).

    ``observation_space`` is a Box of shape (H, W), (H, W, C) or (C, H, W): the channel axis is
    the smaller of the first and last (ties: last, as gymnasium's image envs); uint8 images are
    scaled to [0, 1]. ``kernel_size`` / ``stride`` 0 pick by size: 3 / 1 below 32 pixels
    (MinAtar's 10x10 grids), 4 / 2 above (Atari frames).
    """

    def __init__(self, observation_space: gym.Space, output_dim: int,
                 channels: tuple[int, ...] = (16, 16), hidden_sizes: tuple[int, ...] = (64,),
                 kernel_size: int = 0, stride: int = 0, activation: str = "relu",
                 out_gain: float = 0.01):
        super().__init__()
        shape = tuple(getattr(observation_space, "shape", None) or ())
        if not isinstance(observation_space, gym.spaces.Box) or len(shape) not in (2, 3):
            raise ConfigError("policy", "cnn",
                              f"needs image observations (a Box of 2 or 3 dimensions), got "
                              f"{observation_space}")
        if len(shape) == 2:
            self.channel_axis, (h, w), c = None, shape, 1
        elif shape[0] < shape[-1]:
            self.channel_axis, (c, h, w) = 1, shape
        else:
            self.channel_axis, (h, w, c) = 3, shape
        self.scale = 1.0 / 255.0 if observation_space.dtype == np.uint8 else 1.0
        small = min(h, w) < 32
        k = kernel_size or (3 if small else 4)
        s = stride or (1 if small else 2)
        act = ACTIVATIONS[activation][0]
        layers: list[nn.Module] = []
        size, depth = (h, w), c
        for out_channels in channels:
            size = ((size[0] - k) // s + 1, (size[1] - k) // s + 1)
            if min(size) < 1:
                raise ConfigError("policy.channels", list(channels),
                                  f"{len(channels)} conv layers of kernel {k}, stride {s} do "
                                  f"not fit a {h}x{w} image: use fewer layers or set "
                                  "policy.kernel_size / policy.stride")
            conv = nn.Conv2d(depth, out_channels, k, s)
            nn.init.orthogonal_(conv.weight, gain=np.sqrt(2))
            nn.init.zeros_(conv.bias)
            layers += [conv, act()]
            depth = out_channels
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.head = mlp(depth * size[0] * size[1], list(hidden_sizes), output_dim, activation,
                        out_gain)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        if self.channel_axis is None:
            x = x.unsqueeze(1)
        elif self.channel_axis == 3:
            x = x.permute(0, 3, 1, 2)
        if self.scale != 1.0:
            x = x * self.scale
        return self.head(self.features(x))


def import_target(key: str, target: Any) -> type:
    """The class named by a ``_target_`` (``pkg.mod.Class``)."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(key, target, "must name a class as package.module.Class")
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(key, target, f"cannot import module {module_name!r} ({error})") \
            from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ConfigError(key, target, f"{module_name} has no torch.nn.Module class {name!r}")
    return cls


def instantiate(spec: dict[str, Any], key: str, observation_space: gym.Space,
                output_dim: int) -> nn.Module:
    """``spec['_target_'](observation_space=..., output_dim=..., **other keys)``, checked: it
    maps [2, *obs_shape] to [2, output_dim]. ``key`` names the config node in errors."""
    if module_target(spec) is None:
        raise ConfigError(f"{key}._target_", None,
                          "policy=module needs the actor's class: "
                          f"{key}._target_=package.module.Class")
    cls = import_target(f"{key}._target_", spec["_target_"])
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    packed = isinstance(observation_space, spaces.PackedSpace)
    given = observation_space.structure if packed else observation_space
    try:
        net = cls(observation_space=given, output_dim=output_dim, **kwargs)
    except TypeError as error:
        raise ConfigError(f"{key}._target_", spec["_target_"],
                          f"must accept (observation_space=..., output_dim=..., "
                          f"**{sorted(kwargs)}): {error}") from None
    shape = observation_shape(observation_space)
    zeros = torch.zeros((2, *shape))
    with torch.no_grad():
        out = net(split_encoded(observation_space, zeros) if packed else zeros)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, output_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        takes = f"the {type(given).__name__} of [N, *part shape]" if packed else \
            f"[N, *{shape}]"
        raise ConfigError(f"{key}._target_", spec["_target_"],
                          f"forward must map {takes} to [N, {output_dim}], got {got}")
    return net
