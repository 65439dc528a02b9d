"""Custom torch modules for the network-seam tests (policy=module)."""

from __future__ import annotations

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
