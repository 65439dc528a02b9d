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


def _tiny_batch(n: int = 64):
    import gymnasium as gym

    from trpo_lab.config import PolicyConfig
    from trpo_lab.rollout import Batch

    torch.manual_seed(3)
    policy = Policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3),
                    PolicyConfig(hidden_sizes=[4]), [4]).double()
    with torch.no_grad():  # logits far from uniform, so F is far from a multiple of I
        for p in policy.actor.parameters():
            p.copy_(torch.randn_like(p))
    obs = torch.randn(n, 3, dtype=torch.float64)
    actions = torch.randint(0, 3, (n,))
    advantages = 1000.0 * torch.randn(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    with torch.no_grad():
        old_params = policy.dist_params(obs)
        old_log_prob = policy.head.log_prob(old_params, actions)
    return policy, Batch(obs, actions, advantages, advantages, advantages, weights, weights,
                         old_params, old_log_prob, advantages)


def test_fvp_subsample_one_is_the_default_update_to_the_bit():
    from trpo_lab.algos.trpo import TRPO
    from trpo_lab.config import TRPOConfig
    from trpo_lab.numerics import flat_params

    steps = []
    for cfg in (TRPOConfig(), TRPOConfig(fvp_subsample=1.0), TRPOConfig(fvp_subsample=0.5)):
        policy, batch = _tiny_batch()
        TRPO(policy, cfg).update(batch)
        steps.append(flat_params(policy.actor_parameters()))
    assert torch.equal(steps[0], steps[1])
    assert not torch.equal(steps[0], steps[2])


@pytest.mark.parametrize("fraction, rows", [(0.25, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44,
                                                    48, 52, 56, 60]),
                                            (0.1, [0, 9, 18, 27, 36, 45, 54])])
def test_npg_step_with_fvp_subsample_uses_the_subsample_fisher(fraction, rows):
    """Closed form: with ``fvp_subsample`` = f the NPG step is sqrt(2 delta / s^T F_sub s) s,
    s = (F_sub + damping I)^-1 g, g the WHOLE batch's surrogate gradient and F_sub the dense
    Hessian (autograd) of the mean KL over the rows floor(i B / k), k = ceil(f B), weighted
    uniformly over them."""
    from torch.func import functional_call

    from trpo_lab.algos.trpo import TRPO
    from trpo_lab.config import TRPOConfig
    from trpo_lab.numerics import categorical_kl, flat_params

    policy, batch = _tiny_batch()
    names = [name for name, _ in policy.actor.named_parameters()]
    shapes = [p.shape for p in policy.actor.parameters()]
    theta_old = flat_params(policy.actor_parameters()).clone()
    index = torch.tensor(rows)

    def logits(theta, obs):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {k: c.view(s) for k, c, s in zip(names, chunks, shapes)}
        return functional_call(policy.actor, params, (obs,))

    def sub_kl(theta):
        return categorical_kl(batch.old_params[index], logits(theta, batch.obs[index])).mean()

    def surrogate(theta):
        log_prob = torch.log_softmax(logits(theta, batch.obs), -1).gather(
            1, batch.actions[:, None])[:, 0]
        return (batch.weights * torch.exp(log_prob - batch.old_log_prob)
                * batch.advantages).sum()

    fisher = torch.autograd.functional.hessian(sub_kl, theta_old)
    g = torch.autograd.functional.jacobian(surrogate, theta_old)
    size = theta_old.numel()
    cfg = TRPOConfig(delta=0.01, cg_damping=0.1, cg_iters=size, line_search=False,
                     fvp_subsample=fraction)
    s = torch.linalg.solve(fisher + cfg.cg_damping * torch.eye(size, dtype=torch.float64), g)
    expected = s * (2 * cfg.delta / float(s @ fisher @ s)) ** 0.5
    info = TRPO(policy, cfg).update(batch)
    assert info["trpo/accepted"] == 1.0
    step = flat_params(policy.actor_parameters()) - theta_old
    assert float((step - expected).norm() / expected.norm()) < 1e-6


def test_adaptive_rounds_stepped_together_equal_rounds_one_by_one(tmp_path, monkeypatch):
    """CartPole's adaptive rounds of pairs are stepped several at a time (1, 2, 4, ... rounds
    in one vector env); every logged number equals stepping them one round per call, and the
    env steps of rounds the stopping rule did not reach are not counted."""
    from tests.conftest import train_in_process
    from trpo_lab.logging import TIME_COLUMNS
    from trpo_lab.train import Trainer

    overrides = ("env=cartpole", "total_steps=768", "batch_steps=256", "critic.epochs=1",
                 "eval.episodes=8", "eval.heldout_episodes=4", "eval.min_differing=40",
                 "eval.max_pairs=64")
    asked: list[int] = []
    ahead = Trainer._rounds_ahead

    def spy(self, round_index):
        asked.append(ahead(self, round_index))
        return asked[-1]

    monkeypatch.setattr(Trainer, "_rounds_ahead", spy)
    together = train_in_process(tmp_path / "together", *overrides)
    monkeypatch.setattr(Trainer, "_rounds_ahead", lambda self, round_index: 1)
    one_by_one = train_in_process(tmp_path / "alone", *overrides)
    assert max(asked) >= 2  # rounds really were stepped together
    assert together["eval/pairs"].max() > 16
    columns = [c for c in together.columns if c not in TIME_COLUMNS]
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(together[columns], one_by_one[columns])
