"""Monte Carlo estimates of J and of J(pi') - J(pi) with common random numbers, and the
deterministic evaluation of a final policy.

Each update k draws ``episodes`` fresh episodes twice, once with pi and once with pi', on the
same reset seeds and the same per-episode action noise (seeded by (seed, k, j)), so most of the
randomness cancels in the paired difference. J is the discounted return sum_t gamma^t r_t at the
run's gamma; standard errors are std / sqrt(n) (ddof = 1) of the returns and of the paired
differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from trpo_lab.policies import NumpyActor

MAX_EVAL_STEPS = 1_000_000


@dataclass(frozen=True)
class MonteCarloEstimate:
    mean: float
    se: float

    @staticmethod
    def of(samples: np.ndarray) -> MonteCarloEstimate:
        n = samples.shape[0]
        se = float(samples.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        return MonteCarloEstimate(float(samples.mean()), se)


class PairedEvaluator:
    def __init__(self, make_env: Callable[[], gym.Env], episodes: int, gamma: float, seed: int,
                 encode: Callable[[np.ndarray], np.ndarray]):
        self.envs = [make_env() for _ in range(episodes)]
        self.episodes, self.gamma, self.seed, self.encode = episodes, gamma, seed, encode
        space = self.envs[0].action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.low = None if self.discrete else space.low
        self.high = None if self.discrete else space.high

    def discounted_returns(self, actor: NumpyActor, update: int) -> np.ndarray:
        """Discounted return of each of the update's episodes under ``actor``."""
        n = self.episodes
        seeds = np.random.SeedSequence([self.seed, update]).generate_state(n)
        rngs = [np.random.default_rng([self.seed, update, j]) for j in range(n)]
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)])
        returns = np.zeros(n)
        discount = np.ones(n)
        active = np.ones(n, bool)
        for _ in range(MAX_EVAL_STEPS):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            noise = np.stack([actor.noise(rngs[j], 1)[0] for j in idx])
            actions = actor.sample_from_noise(self.encode(obs[idx]), noise)
            if not self.discrete:
                actions = np.clip(actions, self.low, self.high)
            for a, j in zip(actions, idx):
                next_obs, reward, terminated, truncated, _ = self.envs[j].step(a)
                returns[j] += discount[j] * reward
                discount[j] *= self.gamma
                obs[j] = next_obs
                if terminated or truncated:
                    active[j] = False
        return returns

    def close(self) -> None:
        for env in self.envs:
            env.close()


def deterministic_returns(make_env: Callable[[], gym.Env], actor: NumpyActor,
                          encode: Callable[[np.ndarray], np.ndarray], episodes: int,
                          seed: int) -> list[float]:
    """Undiscounted returns of ``episodes`` fresh episodes with the deterministic policy: the
    figure papers and the rl-baselines3-zoo report. Reset seeds come from a SeedSequence of
    the run's seed, so runs with neighbouring seeds do not share start states."""
    env = make_env()
    space = env.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    returns = []
    reset_seeds = np.random.SeedSequence([seed, 0xE7A1]).generate_state(episodes)
    try:
        for reset_seed in reset_seeds:
            obs, _ = env.reset(seed=int(reset_seed))
            total, done, steps = 0.0, False, 0
            while not done and steps < MAX_EVAL_STEPS:
                action = actor.mode(encode(np.asarray(obs)[None]))[0]
                if not discrete:
                    action = np.clip(action, space.low, space.high)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done, steps = terminated or truncated, steps + 1
            returns.append(total)
    finally:
        env.close()
    return returns
