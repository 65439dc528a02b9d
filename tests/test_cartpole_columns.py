"""The evaluator's CartPole episodes on live columns (trpo_lab/cartpole_columns.py) are the
general loop's, to the bit: returns, lengths, every recorded step and the held-out batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import compose_typed
from trpo_lab import cartpole_columns
from trpo_lab import evaluation as ev
from trpo_lab.envs import make_vector_env
from trpo_lab.policies import Policy, encode_observations
from trpo_lab.rollout import heldout_batch

STEPPED = ("raw_obs", "obs", "next_obs", "actions", "rewards", "terminated", "done")


def policy_pair(cfg, seed: int, scale: float):
    """A policy and its actor before and after a random step of size ``scale``."""
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    torch.manual_seed(seed)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy,
                    [16, 16])
    old = policy.numpy_actor()
    with torch.no_grad():
        for p in policy.actor_parameters():
            p.add_(scale * torch.randn_like(p))
    return policy, old, policy.numpy_actor(), envs.single_observation_space


def both_ways(monkeypatch, requests):
    with monkeypatch.context() as patch:
        patch.setattr(ev, "LIVE_COLUMNS", False)
        assert not ev.cartpole_columns(requests)
        general = ev.run_samplers(requests)
    assert ev.cartpole_columns(requests)
    return general, ev.run_samplers(requests)


def assert_same_episodes(want: ev.Episodes, have: ev.Episodes, rows: slice) -> None:
    np.testing.assert_array_equal(want.returns[rows], have.returns[rows])
    np.testing.assert_array_equal(want.lengths[rows], have.lengths[rows])
    if want.alive is None:
        assert have.alive is None
        return
    # the general loop pads to its run's longest episode (pi' included), live columns to
    # copy 0's; past an episode's end both hold filler that readers mask with alive
    T = have.alive.shape[0]  # noqa: N806
    assert T == int(want.lengths.max()) <= want.alive.shape[0]
    np.testing.assert_array_equal(want.alive[:T], have.alive)
    assert not want.alive[T:].any()
    for name in STEPPED:
        np.testing.assert_array_equal(getattr(want, name)[:T][have.alive],
                                      getattr(have, name)[have.alive], err_msg=name)


@pytest.mark.parametrize("overrides", [(), ("+env.kwargs.max_episode_steps=30",)])
def test_first_round_with_heldout_rows_equals_the_general_loop(monkeypatch, overrides):
    """64 pairs and 64 held-out rows (recorded; pi's held-out rows not stepped): every pair's
    return and length, every recorded step and the held-out batch built from them are the
    general loop's, with and without truncation; the unstepped rows come back empty."""
    cfg = compose_typed("env=cartpole", *overrides)
    policy, old, new, space = policy_pair(cfg, 0, 0.05)
    sampler = ev.EpisodeSampler(ev.episode_envs(cfg.env, cfg.gamma, 128, 2), cfg.gamma, 3)

    def encode(raw):
        return encode_observations(space, raw)

    request = ev.SamplerRequest(sampler, [old, new], encode, (5,), True, 64)
    (general,), (live,) = both_ways(monkeypatch, [request])
    assert_same_episodes(general[0], live[0], slice(None))
    assert_same_episodes(general[1], live[1], slice(0, 64))
    assert not live[1].lengths[64:].any() and not live[1].returns[64:].any()
    assert general[0].steps > 128 * 15
    assert 0 < np.count_nonzero(general[0].returns[:64] - general[1].returns[:64]) < 64
    if overrides:
        assert (general[0].lengths == 30).sum() > 10
    want = heldout_batch(policy, general[0].columns(slice(64, None)), cfg.gamma, 0.95, 1.3)
    have = heldout_batch(policy, live[0].columns(slice(64, None)), cfg.gamma, 0.95, 1.3)
    assert (want.episodes, want.env_steps) == (have.episodes, have.env_steps)
    torch.testing.assert_close(want.episode, have.episode, rtol=0, atol=0)
    for name, value in vars(want.batch).items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, getattr(have.batch, name), rtol=0, atol=0,
                                       equal_nan=True, msg=name)


def test_rounds_sharing_actors_and_runs_of_a_group_equal_the_general_loop(monkeypatch):
    """Three rounds of one run's pairs (the same actor objects: one slice each) beside two
    other runs with their own actors, gamma and normalising encoders, one of them recorded:
    every episode is what the general loop gives."""
    cfg = compose_typed("env=cartpole")
    requests = []
    policy, old, new, space = policy_pair(cfg, 1, 0.02)

    def plain(raw):
        return encode_observations(space, raw)

    for k in range(3):
        sampler = ev.EpisodeSampler(ev.episode_envs(cfg.env, cfg.gamma, 24, 2), cfg.gamma, 9)
        requests.append(ev.SamplerRequest(sampler, [old, new], plain, (2, k, 1)))
    for seed, gamma in ((2, 0.95), (3, 0.999)):
        _, old_r, new_r, _ = policy_pair(cfg, seed, 0.1)
        shift = np.array([0.1, -0.2, 0.01, 0.3], np.float32) * seed

        def scaled(raw, shift=shift):
            return (encode_observations(space, raw) - shift) / np.float32(1.5)

        sampler = ev.EpisodeSampler(ev.episode_envs(cfg.env, gamma, 24, 2), gamma, seed)
        requests.append(ev.SamplerRequest(sampler, [old_r, new_r], scaled, (7,), seed == 2))
    actors, slot, slice_of, owner = cartpole_columns.segments(requests)
    assert len(actors) == 6 and slot.size == 5 * 48
    assert sorted(np.bincount(slice_of).tolist()) == [24] * 4 + [72] * 2
    general, live = both_ways(monkeypatch, requests)
    for want, have in zip(general, live):
        for w, h in zip(want, have):
            assert_same_episodes(w, h, slice(None))
    returns = [float(run[0].returns.sum()) for run in live]
    assert len(set(returns)) == 5
