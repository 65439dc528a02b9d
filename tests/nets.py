"""Custom torch modules for the network-seam tests (policy=module)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class ResidualNet(nn.Module):
    """Linear in, a LayerNorm + tanh residual block, Linear out: no hand-written path knows it."""

    def __init__(self, observation_space, output_dim: int, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(int(np.prod(observation_space.shape)), width)
        self.norm = nn.LayerNorm(width)
        self.block = nn.Linear(width, width)
        self.out = nn.Linear(width, output_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(obs.flatten(1)))
        h = h + torch.tanh(self.block(self.norm(h)))
        return self.out(h)


class WrongOutput(nn.Module):
    """Breaks the contract: one output too many."""

    def __init__(self, observation_space, output_dim: int):
        super().__init__()
        self.lin = nn.Linear(int(np.prod(observation_space.shape)), output_dim + 1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.lin(obs.flatten(1))


class PlainTanhMLP(nn.Sequential):
    """A Linear + Tanh stack built by the user: the fast backend does not guess at it."""

    def __init__(self, observation_space, output_dim: int):
        super().__init__(nn.Linear(int(np.prod(observation_space.shape)), 8), nn.Tanh(),
                         nn.Linear(8, output_dim))


class DictNet(nn.Module):
    """For trpo_lab/Spaces-v0's Dict observations: one Linear per part, summed. It checks what
    policy=module hands it (the Dict space itself; a dict of float32 tensors [N, *part shape],
    Discrete and MultiDiscrete parts one-hot) and records every call's keys and part shapes in
    ``seen`` (a class attribute: the sampling snapshots are copies)."""

    PARTS = {"flags": (2,), "level": (5,), "noise": (2, 1), "target": (3,)}
    seen: set = set()

    def __init__(self, observation_space, output_dim: int, width: int = 8):
        super().__init__()
        assert isinstance(observation_space, gym.spaces.Dict), observation_space
        self.parts = nn.ModuleDict({key: nn.Linear(int(np.prod(shape)), width)
                                    for key, shape in self.PARTS.items()})
        self.out = nn.Linear(width, output_dim)

    def forward(self, obs: dict) -> torch.Tensor:
        assert isinstance(obs, dict) and set(obs) == set(self.PARTS), obs
        for key, shape in self.PARTS.items():
            assert tuple(obs[key].shape[1:]) == shape and obs[key].dtype == torch.float32, \
                (key, obs[key].shape)
        DictNet.seen.add(tuple(sorted((key, tuple(obs[key].shape[1:])) for key in obs)))
        h = sum(self.parts[key](obs[key].flatten(1)) for key in self.PARTS)
        return self.out(torch.tanh(h))
