"""The evaluator's fast paths (issue 27) give the numbers of the plain code, to the bit:
CartPole's vector step without gymnasium's checks, the two-action inverse CDF, noise drawn many
steps at once, and the paired episodes of run_samplers against a reference loop that steps
gymnasium's own env with one policy call per step."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.conftest import compose_typed
from trpo_lab.envs import make_vector_env
from trpo_lab.envs.cartpole_physics import fast_steppable, vector_step
from trpo_lab.evaluation import EpisodeSampler, SamplerRequest, episode_envs, run_samplers
from trpo_lab.policies import NumpyActor, Policy


def _pair(n: int, **kwargs):
    envs = [gym.make_vec("CartPole-v1", n, vectorization_mode="vector_entry_point", **kwargs)
            for _ in range(2)]
    for env in envs:
        env.reset(seed=3)
    return envs


@pytest.mark.parametrize("n, kwargs", [(7, {}), (300, {"max_episode_steps": 40}),
                                       (50, {"sutton_barto_reward": True})])
def test_vector_step_is_gymnasiums_step_to_the_bit(n, kwargs):
    reference, fast = _pair(n, **kwargs)
    assert fast_steppable(fast)
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(600):
        action = rng.integers(0, 2, n)
        expected = reference.step(action)[:4]
        got = vector_step(fast, action)
        for e, g in zip(expected, got):
            assert e.dtype == g.dtype and e.shape == g.shape
            np.testing.assert_array_equal(e, g)
        resets += int(reference.prev_done.sum())
        np.testing.assert_array_equal(reference.state, fast.state)
        np.testing.assert_array_equal(reference.steps, fast.steps)
        np.testing.assert_array_equal(reference.prev_done, fast.prev_done)
    assert resets > n  # the autoreset path ran, many times
    # the same random stream afterwards (the autoresets drew the same numbers)
    assert reference.np_random.random() == fast.np_random.random()


def test_only_gymnasiums_euler_cartpole_is_fast_steppable():
    env = gym.make_vec("CartPole-v1", 3, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    assert fast_steppable(env)
    env.kinematics_integrator = "semi-implicit euler"
    assert not fast_steppable(env)
    assert not fast_steppable(gym.make("CartPole-v1").unwrapped)


def _general_inverse_cdf(out: np.ndarray, noise: np.ndarray) -> np.ndarray:
    logits = out - out.max(axis=-1, keepdims=True)
    cdf = np.cumsum(np.exp(logits), axis=-1)
    return np.minimum((cdf <= noise[..., None] * cdf[..., -1:]).sum(axis=-1), out.shape[-1] - 1)


def test_two_action_sampling_is_the_general_inverse_cdf():
    rng = np.random.default_rng(1)
    out = rng.standard_normal((3, 4000, 2)).astype(np.float32) * 5
    out[0, :100, 1] = out[0, :100, 0]  # ties
    noise = rng.random((3, 4000)).astype(np.float32)
    noise[1, :50] = np.float32(1.0)  # float32 rounding of u close to 1
    noise[2, :50] = 0.0
    expected = _general_inverse_cdf(out, noise)
    got = NumpyActor._sample_two(out.copy(), noise)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    assert 0.3 < got.mean() < 0.7


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_noise_of_many_steps_is_the_steps_drawn_one_by_one(kind):
    actor = NumpyActor([(np.zeros((4, 3)), None)], np.tanh, kind,
                       None if kind == "categorical" else np.zeros(3))
    one_by_one = np.random.default_rng(5)
    block = actor.noise(np.random.default_rng(5), 64 * 10)
    block = block.reshape(64, 10, *block.shape[1:])
    for t in range(64):
        np.testing.assert_array_equal(block[t], actor.noise(one_by_one, 10))


def _reference_episodes(sampler: EpisodeSampler, actors, encode, key):
    """The paired episodes of one run as the evaluator defines them, stepped plainly: one
    ``env.step`` of gymnasium's vector env and one policy noise draw per step."""
    n, m = sampler.episodes, sampler.copies
    seeds = np.random.SeedSequence([sampler.seed, *key]).generate_state(n)
    rng = np.random.default_rng([sampler.seed, *key, 1])
    raw = sampler.envs.reset(seeds)
    stacked = NumpyActor.stack([a.as_float32() for a in actors])
    returns, lengths = np.zeros((m, n)), np.zeros((m, n), np.int64)
    active, discount = np.ones((m, n), bool), 1.0
    while active.any():
        noise = np.repeat(stacked.noise(rng, n)[None].astype(np.float32), m, axis=0)
        actions = stacked.sample_from_noise(encode(raw).reshape(m, n, -1), noise)
        raw, reward, terminated, truncated, _ = sampler.envs.envs.step(actions.reshape(-1))
        returns += np.where(active, discount * reward.astype(np.float64).reshape(m, n), 0.0)
        lengths += active
        active &= ~(terminated | truncated).reshape(m, n)
        discount *= sampler.gamma
    return returns, lengths


@pytest.mark.parametrize("runs", [1, 3])
def test_paired_episodes_equal_a_plain_gymnasium_loop(runs):
    cfg = compose_typed("env=cartpole")
    requests = []
    for seed in range(runs):
        torch.manual_seed(seed)
        envs = make_vector_env(cfg.env, 1, cfg.gamma)
        policies = [Policy(envs.single_observation_space, envs.single_action_space,
                           cfg.policy, [8]) for _ in range(2)]
        with torch.no_grad():  # a policy that balances for a while: long, varied episodes
            for p in policies:
                p.actor[-1].weight.mul_(300.0)
        sampler = EpisodeSampler(episode_envs(cfg.env, cfg.gamma, 24, 2), cfg.gamma, seed)
        requests.append(SamplerRequest(sampler, [p.numpy_actor() for p in policies],
                                       lambda o: o.astype(np.float32), (seed, 7), True))
    got = run_samplers(requests)
    for request, episodes in zip(requests, got):
        returns, lengths = _reference_episodes(request.sampler, request.actors,
                                               request.encode, request.key)
        for c in range(2):
            np.testing.assert_array_equal(episodes[c].returns, returns[c])
            np.testing.assert_array_equal(episodes[c].lengths, lengths[c])
        recorded = episodes[0]
        assert recorded.alive.sum() == lengths[0].sum()
        assert lengths.max() > 30 and lengths.min() < lengths.max()
