"""CartPole envs stepped as one numpy vector env give the single envs' numbers, to the bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import compose_typed
from trpo_lab.envs import make_vector_env
from trpo_lab.evaluation import (
    EpisodeSampler,
    MergedEpisodes,
    SamplerRequest,
    episode_envs,
    run_samplers,
)
from trpo_lab.policies import Policy, encode_observations
from trpo_lab.rollout import CartPoleSteps, Collector, collect_runs


def collectors_and_actors(runs: int, num_envs: int, steps: int, *overrides: str):
    cfg = compose_typed("env=cartpole", *overrides)
    collectors, actors = [], []
    for seed in range(runs):
        torch.manual_seed(seed)
        envs = make_vector_env(cfg.env, num_envs, cfg.gamma)
        policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy,
                        [8])
        collectors.append(Collector(envs, steps, seed, False))
        actors.append(policy.numpy_actor())
    return collectors, actors


def env_states(collectors: list[Collector]) -> list[tuple[np.ndarray, int]]:
    out = []
    for c in collectors:
        for env in c.envs.envs:
            out.append((np.asarray(env.unwrapped.state, np.float64).copy(),
                        int(env._elapsed_steps)))
    return out


@pytest.mark.parametrize("overrides", [(), ("+env.kwargs.max_episode_steps=7",)])
def test_vector_stepping_equals_single_env_stepping(monkeypatch, overrides):
    """Three runs of two envs, four batches of 60 steps: every buffer, the episodes that end
    (terminated, and truncated by a 7-step limit), the bootstrap observations and the envs'
    states between batches are the same whether the 6 envs step one by one or as one
    CartPoleVectorEnv."""
    single, actors = collectors_and_actors(3, 2, 60, *overrides)
    vector, _ = collectors_and_actors(3, 2, 60, *overrides)
    assert CartPoleSteps.of(vector) is not None
    ended = truncated = 0
    for _ in range(4):
        with monkeypatch.context() as patch:
            patch.setattr(CartPoleSteps, "MIN_ENVS", 10**9)
            assert CartPoleSteps.of(single) is None
            expected = collect_runs(single, actors)
        got = collect_runs(vector, actors)
        for want, have in zip(expected, got):
            for field in dataclasses.fields(want):
                a, b = getattr(want, field.name), getattr(have, field.name)
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, b, err_msg=field.name)
                elif field.name == "stats":
                    assert (a.returns, a.lengths) == (b.returns, b.lengths)
                else:
                    assert a == b, field.name
            ended += int(want.done.sum())
            truncated += int((want.done & ~want.terminated).sum())
        for (s1, t1), (s2, t2) in zip(env_states(single), env_states(vector)):
            np.testing.assert_array_equal(s1, s2)
            assert t1 == t2
    assert ended > 20
    assert (truncated > 10) == bool(overrides)


def test_a_lone_run_of_two_envs_steps_its_envs_one_by_one():
    """Below MIN_ENVS the per-call cost of a vector step is not worth it."""
    collectors, _ = collectors_and_actors(1, 2, 10)
    assert CartPoleSteps.of(collectors) is None
    collectors, _ = collectors_and_actors(1, CartPoleSteps.MIN_ENVS, 10)
    assert CartPoleSteps.of(collectors) is not None
    pendulum = compose_typed("env=pendulum")
    envs = make_vector_env(pendulum.env, 8, pendulum.gamma)
    assert CartPoleSteps.of([Collector(envs, 10, 0, False)]) is None


def test_merged_episode_envs_equal_each_runs_own():
    """Three runs' paired samplers (12 episodes x 2 copies each, recorded) in one
    CartPoleVectorEnv: every return, length and recorded step of every episode is the run's
    own call's."""
    cfg = compose_typed("env=cartpole")
    space = make_vector_env(cfg.env, 1, cfg.gamma).single_observation_space

    def encode(raw):
        return encode_observations(space, raw)

    requests = []
    for seed in range(3):
        torch.manual_seed(seed)
        old = Policy(space, make_vector_env(cfg.env, 1, cfg.gamma).single_action_space,
                     cfg.policy, [8])
        new = Policy(space, make_vector_env(cfg.env, 1, cfg.gamma).single_action_space,
                     cfg.policy, [8])
        sampler = EpisodeSampler(episode_envs(cfg.env, cfg.gamma, 12, 2), cfg.gamma, seed)
        requests.append(SamplerRequest(sampler, [old.numpy_actor(), new.numpy_actor()], encode,
                                       (seed, 4), record=True))
    assert MergedEpisodes.of([r.sampler.envs for r in requests]) is not None
    together = run_samplers(requests)
    for request, got in zip(requests, together):
        alone = run_samplers([request])[0]
        for want, have in zip(alone, got):
            np.testing.assert_array_equal(want.returns, have.returns)
            np.testing.assert_array_equal(want.lengths, have.lengths)
            if want.alive is None:
                assert have.alive is None
                continue
            np.testing.assert_array_equal(want.alive, have.alive)
            # after an episode's end its column holds a new episode nobody counts (reset by
            # the vector env's own stream): the steps of the episodes are compared
            for name in ("raw_obs", "obs", "next_obs", "actions", "rewards", "terminated",
                         "done"):
                np.testing.assert_array_equal(getattr(want, name)[want.alive],
                                              getattr(have, name)[have.alive], err_msg=name)
    assert len({float(g[0].returns.sum()) for g in together}) == 3


def test_runs_stepped_as_one_vector_env_resume_from_their_checkpoints():
    """The sub-envs hold every run's state between batches: three runs collect a batch in one
    vector env, their collectors' state (pickled, as in checkpoint.pt) is loaded into fresh
    collectors, and the next two batches of both equal each other."""
    import pickle

    original, actors = collectors_and_actors(3, 2, 40)
    collect_runs(original, actors)
    saved = pickle.dumps([c.state_dict() for c in original])
    resumed, _ = collectors_and_actors(3, 2, 40)
    for collector, state in zip(resumed, pickle.loads(saved)):
        collector.load_state_dict(state)
    assert CartPoleSteps.of(resumed) is not None
    for _ in range(2):
        for want, have in zip(collect_runs(original, actors), collect_runs(resumed, actors)):
            np.testing.assert_array_equal(want.obs, have.obs)
            np.testing.assert_array_equal(want.actions, have.actions)
            np.testing.assert_array_equal(want.done, have.done)
            np.testing.assert_array_equal(want.episode_time, have.episode_time)
    for (a, s), (b, t) in zip(env_states(original), env_states(resumed)):
        np.testing.assert_array_equal(a, b)
        assert s == t


def test_envs_that_are_not_plain_cartpole_step_one_by_one():
    """A wrapper between the TimeLimit and CartPoleEnv, or runs with different env kwargs,
    would change what one vector env computes: those step one by one."""
    import gymnasium as gym

    collectors, _ = collectors_and_actors(3, 2, 10)
    env = collectors[0].envs.envs[0]
    collectors[0].envs.envs[0] = gym.wrappers.TimeLimit(
        gym.wrappers.TransformReward(env.env, lambda r: 2 * r), env._max_episode_steps)
    assert CartPoleSteps.of(collectors) is None
    mixed = collectors_and_actors(2, 2, 10)[0] + collectors_and_actors(
        1, 2, 10, "+env.kwargs.sutton_barto_reward=true")[0]
    assert CartPoleSteps.of(mixed) is None
    same = collectors_and_actors(3, 2, 10, "+env.kwargs.sutton_barto_reward=true")[0]
    assert CartPoleSteps.of(same) is not None
