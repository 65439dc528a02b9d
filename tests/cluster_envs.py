"""CartPole that sleeps in every step: cluster jobs that last long enough to be requeued,
preempted or timed out while they train, at almost no CPU cost.

``env.id=tests.cluster_envs:SlowCartPole-v1 +env.kwargs.step_sleep_s=0.01``; without the kwarg
it is the uninterrupted reference (CartPole-v1's dynamics, seeding and time limit; no numpy
vector entry point, so evaluation episodes are paired as for any other env).
The job's process imports this module through gymnasium's ``module:EnvId`` form, so the
repository root must be on its PYTHONPATH (sbatch passes the environment on).
"""

from __future__ import annotations

import time

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class SlowCartPole(CartPoleEnv):
    def __init__(self, step_sleep_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.step_sleep_s = step_sleep_s

    def step(self, action):
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        return super().step(action)


gym.register("SlowCartPole-v1", entry_point=SlowCartPole, max_episode_steps=500,
             reward_threshold=475.0)
