"""Envs with spaces no head or encoder serves, for the refusal tests
(``env.id=tests.space_envs:TextObs-v0`` imports this module, which registers them)."""

from __future__ import annotations

import gymnasium as gym
from gymnasium import spaces

SPACES = {
    "TextObs-v0": (spaces.Text(8), spaces.Discrete(2)),
    "SequenceObs-v0": (spaces.Sequence(spaces.Discrete(3)), spaces.Discrete(2)),
    "GraphAction-v0": (spaces.Box(-1, 1, (2,)),
                       spaces.Graph(spaces.Box(-1, 1, (2,)), spaces.Discrete(2))),
    "HugeDiscrete-v0": (spaces.Discrete(2**40), spaces.Discrete(2)),
    "TupleWithText-v0": (spaces.Tuple((spaces.Discrete(2), spaces.Text(4))), spaces.Discrete(2)),
}


class Unserved(gym.Env):
    def __init__(self, name: str = "TextObs-v0", render_mode=None):
        self.observation_space, self.action_space = SPACES[name]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, True, {}


for _name in SPACES:
    if _name not in gym.registry:
        gym.register(id=_name, entry_point=f"{__name__}:Unserved", kwargs={"name": _name})

