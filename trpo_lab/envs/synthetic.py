"""A tiny synthetic env for every action and observation space the policy serves.

``trpo_lab/Spaces-v0`` (``gymnasium.make("trpo_lab/Spaces-v0", action=..., observation=...)``,
or ``trpo-lab env=custom env.id=trpo_lab/Spaces-v0 +env.kwargs.action=multi_discrete``): at every
step a target c in {0, 1, 2} is drawn uniformly (``self.np_random``) and shown in the
observation; the reward says how well the action matches it; an episode is truncated after
``horizon`` steps (default 8). Rewards per step, in [0, 1] or below:

- ``discrete`` (Discrete(3)): 1 if a = c;
- ``box`` (Box(-2, 2, (1,))) and ``box2d`` (Box(-2, 2, (2, 2))): -mean((a - (c - 1))^2);
- ``multi_discrete`` (MultiDiscrete([3, 3])): the fraction of components j with a_j = (c + j)
  mod 3 (uniform random: 1/3; optimal: 1);
- ``multi_binary`` (MultiBinary(3)): the fraction of bits j with a_j = [j = c] (uniform random:
  1/2; optimal: 1).

Observations of c:

- ``box``: Box(0, 1, (3,)), the one-hot of c;
- ``discrete``: Discrete(3), c itself;
- ``tuple``: Tuple(Discrete(3), Box(-1, 1, (2,))): c and two uniform distractors;
- ``dict``: Dict(target=Discrete(3), noise=Box(-1, 1, (2, 1)), flags=MultiBinary(2),
  level=MultiDiscrete([2, 3])): c and distractors of every kind.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ACTIONS = ("discrete", "box", "box2d", "multi_discrete", "multi_binary")
OBSERVATIONS = ("box", "discrete", "tuple", "dict")
TARGETS = 3


def action_space(kind: str) -> spaces.Space:
    return {
        "discrete": spaces.Discrete(TARGETS),
        "box": spaces.Box(-2.0, 2.0, (1,), np.float32),
        "box2d": spaces.Box(-2.0, 2.0, (2, 2), np.float32),
        "multi_discrete": spaces.MultiDiscrete([TARGETS, TARGETS]),
        "multi_binary": spaces.MultiBinary(TARGETS),
    }[kind]


def observation_space(kind: str) -> spaces.Space:
    return {
        "box": spaces.Box(0.0, 1.0, (TARGETS,), np.float32),
        "discrete": spaces.Discrete(TARGETS),
        "tuple": spaces.Tuple((spaces.Discrete(TARGETS), spaces.Box(-1.0, 1.0, (2,), np.float32))),
        "dict": spaces.Dict({
            "target": spaces.Discrete(TARGETS),
            "noise": spaces.Box(-1.0, 1.0, (2, 1), np.float32),
            "flags": spaces.MultiBinary(2),
            "level": spaces.MultiDiscrete([2, 3]),
        }),
    }[kind]


def reward(kind: str, target: int, action: Any) -> float:
    """The reward of ``action`` when the target is ``target`` (see the module docstring)."""
    a = np.asarray(action)
    if kind == "discrete":
        return float(int(a) == target)
    if kind in ("box", "box2d"):
        return -float(np.mean((a.astype(np.float64) - (target - 1)) ** 2))
    if kind == "multi_discrete":
        wanted = (target + np.arange(a.size)) % TARGETS
        return float(np.mean(a.reshape(-1) == wanted))
    wanted = (np.arange(a.size) == target).astype(np.int64)
    return float(np.mean(a.reshape(-1).astype(np.int64) == wanted))


class SpacesEnv(gymnasium.Env):
    """See the module docstring."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, action: str = "discrete", observation: str = "box", horizon: int = 8,
                 render_mode: str | None = None):
        if action not in ACTIONS:
            raise TypeError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if observation not in OBSERVATIONS:
            raise TypeError(f"observation must be one of {', '.join(OBSERVATIONS)}, "
                            f"got {observation!r}")
        if render_mode is not None:
            raise TypeError(f"SpacesEnv does not render (render_mode={render_mode!r})")
        self.kind, self.obs_kind, self.horizon = action, observation, int(horizon)
        self.action_space = action_space(action)
        self.observation_space = observation_space(observation)
        self._target = 0
        self._steps = 0

    def _observe(self):
        c = self._target
        if self.obs_kind == "box":
            return np.eye(TARGETS, dtype=np.float32)[c]
        if self.obs_kind == "discrete":
            return np.int64(c)
        rng = self.np_random
        if self.obs_kind == "tuple":
            return (np.int64(c), rng.uniform(-1, 1, 2).astype(np.float32))
        return {"target": np.int64(c),
                "noise": rng.uniform(-1, 1, (2, 1)).astype(np.float32),
                "flags": rng.integers(0, 2, 2).astype(np.int8),
                "level": rng.integers(0, [2, 3]).astype(np.int64)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._target = int(self.np_random.integers(TARGETS))
        self._steps = 0
        return self._observe(), {}

    def step(self, action: Any):
        r = reward(self.kind, self._target, action)
        self._steps += 1
        self._target = int(self.np_random.integers(TARGETS))
        return self._observe(), r, False, self._steps >= self.horizon, {}


def register_envs() -> None:
    if "trpo_lab/Spaces-v0" not in gymnasium.registry:
        gymnasium.register(id="trpo_lab/Spaces-v0", entry_point=f"{__name__}:SpacesEnv")


register_envs()
