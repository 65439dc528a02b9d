"""Env snapshots (trpo_lab/envs/snapshot.py): restore, then the same actions and the same
noise replay the original trajectory to the bit, in the same env and in a fresh instance."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest

import trpo_lab.envs.tabular  # noqa: F401  (registers the tabular ids)
from trpo_lab.envs.snapshot import reseed, restore, snapshot, unsupported

CASES = [
    ("trpo_lab/Garnet-v0", {"num_states": 20, "num_actions": 3, "branching": 4, "horizon": 40}),
    ("trpo_lab/Chain-v0", {"horizon": 40}),
    ("trpo_lab/GridWorld-v0", {"horizon": 40}),
    ("CartPole-v1", {"max_episode_steps": 25}),
    ("Acrobot-v1", {"max_episode_steps": 25}),
    ("Pendulum-v1", {"max_episode_steps": 25}),
    ("MountainCar-v0", {"max_episode_steps": 25}),
    ("MountainCarContinuous-v0", {"max_episode_steps": 25}),
    ("Hopper-v5", {"max_episode_steps": 25}),
    ("HalfCheetah-v5", {"max_episode_steps": 25}),
    ("Ant-v5", {"max_episode_steps": 25}),  # its reward reads derived quantities (xpos, cfrc)
    ("Humanoid-v5", {"max_episode_steps": 25}),
    ("InvertedPendulum-v5", {"max_episode_steps": 25}),
]


def actions_for(env: gym.Env, n: int, seed: int) -> list:
    space = env.action_space
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Discrete):
        return [int(a) for a in rng.integers(space.n, size=n)]
    return list(rng.uniform(space.low, space.high, (n, *space.shape)))


def play(env: gym.Env, actions: list) -> list[tuple]:
    """Step until the episode ends (or the actions run out): (obs, reward, term, trunc)."""
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((np.array(obs, copy=True), float(reward), terminated, truncated))
        if terminated or truncated:
            break
    return out


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for (o1, r1, t1, u1), (o2, r2, t2, u2) in zip(a, b):
        assert o1.dtype == o2.dtype and np.array_equal(o1, o2)
        assert r1 == r2 and t1 == t2 and u1 == u2


def make(env_id: str, kwargs: dict) -> gym.Env:
    return gym.make(env_id, disable_env_checker=True, **kwargs)


def check_replay(env_id: str, kwargs: dict, prefix: int = 15) -> None:
    env = make(env_id, kwargs)
    env.reset(seed=3)
    actions = actions_for(env, 60, seed=4)
    for a in actions[:prefix]:
        *_, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    snap = snapshot(env)
    original = play(env, actions[prefix:])
    # the env's own noise continues the original stream: restore replays it
    restore(env, snap)
    assert_same(play(env, actions[prefix:]), original)
    # into another instance of the same constructor, twice (a snapshot is not used up)
    fresh = make(env_id, kwargs)
    fresh.reset(seed=99)
    for _ in range(2):
        restore(fresh, snap)
        assert_same(play(fresh, actions[prefix:]), original)
    # the time limit's counter travels: an episode cut at 25 steps is cut at the same step
    if "max_episode_steps" in kwargs and not original[-1][2]:
        assert len(original) == kwargs["max_episode_steps"] - prefix and original[-1][3]
    # a reseeded env draws the same noise for the same seed
    restore(env, snap)
    reseed(env, 7)
    first = play(env, actions[prefix:])
    restore(fresh, snap)
    reseed(fresh, 7)
    assert_same(play(fresh, actions[prefix:]), first)


@pytest.mark.parametrize(("env_id", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_restore_replays_to_the_bit(env_id, kwargs):
    if "-v5" in env_id and importlib.util.find_spec("mujoco") is None:
        pytest.skip("MuJoCo not installed")
    check_replay(env_id, kwargs)


def test_tabular_noise_is_in_the_snapshot():
    """The tabular env's transitions are random: the snapshot's RNG state is what replays
    them, and a reseed with another seed gives another path."""
    env = make("trpo_lab/Garnet-v0", {"num_states": 30, "num_actions": 2, "branching": 10,
                                      "horizon": 200})
    env.reset(seed=0)
    snap = snapshot(env)
    actions = [0] * 100
    base = [o for o, *_ in play(env, actions)]
    restore(env, snap)
    reseed(env, 1)
    other = [o for o, *_ in play(env, actions)]
    assert base != other


def test_minatar_replays_to_the_bit():
    if importlib.util.find_spec("minatar") is None:
        pytest.skip("minatar not installed")
    import minatar.gym

    minatar.gym.register_envs()
    for game in ("Breakout", "SpaceInvaders", "Asterix", "Freeway", "Seaquest"):
        check_replay(f"MinAtar/{game}-v1", {}, prefix=10)


def test_unsupported_envs_are_named():
    env = gym.make("CartPole-v1", disable_env_checker=True)
    wrapped = gym.wrappers.RecordEpisodeStatistics(env)
    assert "RecordEpisodeStatistics" in unsupported(wrapped)
    with pytest.raises(TypeError, match="RecordEpisodeStatistics"):
        snapshot(wrapped)
    lunar = gym.make("Blackjack-v1", disable_env_checker=True)
    assert "BlackjackEnv has no snapshot" in unsupported(lunar)
    assert unsupported(env) is None
    other = make("Acrobot-v1", {})
    other.reset(seed=0)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="CartPoleEnv cannot be restored into AcrobotEnv"):
        restore(other, snapshot(env))
