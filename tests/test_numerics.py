"""Closed-form checks of the numerical routines."""

import numpy as np
import pytest
import torch

from trpo_lab.config import PolicyConfig
from trpo_lab.numerics import (
    RunningMeanStd,
    categorical_entropy,
    categorical_kl,
    conjugate_gradient,
    conjugate_gradient_residual,
    discounted_running_returns,
    flat_grad,
    gae,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
)
from trpo_lab.policies import Policy

torch.set_default_dtype(torch.float32)


def test_conjugate_gradient_solves_random_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 12))
    a = torch.tensor(m @ m.T + 12 * np.eye(12), dtype=torch.float64)
    b = torch.tensor(rng.normal(size=12), dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=12, residual_tol=1e-30)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a.numpy(), b.numpy()), rtol=1e-9)


@pytest.mark.parametrize("iters", [1, 3, 8])
def test_conjugate_gradient_residual_is_b_minus_a_x(iters):
    """The recursion's residual equals b - A x, also when CG stops early (TRPO's s^T F s)."""
    rng = np.random.default_rng(iters)
    m = rng.normal(size=(8, 8))
    a = torch.tensor(m @ m.T + 0.1 * np.eye(8))
    b = torch.tensor(rng.normal(size=8))
    x, r = conjugate_gradient_residual(lambda v: a @ v, b, iters=iters)
    torch.testing.assert_close(r, b - a @ x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x @ (b - r), x @ a @ x, rtol=1e-9, atol=1e-9)


def test_conjugate_gradient_is_exact_in_k_steps_for_k_distinct_eigenvalues():
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    a = torch.tensor(q @ np.diag([1.0, 1.0, 1.0, 5.0, 5.0, 5.0]) @ q.T)
    b = torch.ones(6, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=2)
    np.testing.assert_allclose((a @ x).numpy(), b.numpy(), atol=1e-10)


def test_categorical_kl_and_entropy_match_formulas():
    p = torch.tensor([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]], dtype=torch.float64)
    q = torch.tensor([[0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    expected = (p * (p / q).log()).sum(1)
    np.testing.assert_allclose(categorical_kl(p.log() + 7.0, q.log() - 2.0), expected, rtol=1e-12)
    np.testing.assert_allclose(categorical_entropy(p.log()), -(p * p.log()).sum(1), rtol=1e-12)
    assert float(categorical_kl(p.log(), p.log()).abs().max()) < 1e-15


def test_gaussian_kl_log_prob_entropy_match_formulas():
    m1, s1, m2, s2 = 0.3, 0.5, -0.2, 1.5
    kl = gaussian_kl(torch.tensor([[m1, 0.0]]), torch.log(torch.tensor([[s1, 1.0]])),
                     torch.tensor([[m2, 0.0]]), torch.log(torch.tensor([[s2, 1.0]])))
    expected = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert float(kl) == pytest.approx(expected, rel=1e-6)
    lp = gaussian_log_prob(torch.tensor([[m1]]), torch.log(torch.tensor([[s1]])),
                           torch.tensor([[1.0]]))
    expected_lp = -0.5 * ((1.0 - m1) / s1) ** 2 - np.log(s1) - 0.5 * np.log(2 * np.pi)
    assert float(lp) == pytest.approx(expected_lp, rel=1e-6)
    ent = gaussian_entropy(torch.log(torch.tensor([[s1, s2]])))
    assert float(ent) == pytest.approx(sum(0.5 * np.log(2 * np.pi * np.e * s**2)
                                           for s in (s1, s2)), rel=1e-6)


def test_gae_matches_hand_computation_with_truncation_and_termination():
    # one env, 5 steps: an episode truncated at t=1 (bootstrap from V(final obs) = 10),
    # then an episode terminated at t=3 (no bootstrap), then one cut by the batch end.
    g, lam = 0.9, 0.5
    r = np.array([[1.0], [2.0], [0.0], [3.0], [1.0]])
    v = np.array([[0.5], [1.0], [2.0], [1.5], [4.0]])
    next_v = np.array([[1.0], [10.0], [1.5], [99.0], [5.0]])  # 99 is ignored (terminal)
    term = np.array([[0], [0], [0], [1], [0]], bool)
    done = np.array([[0], [1], [0], [1], [0]], bool)
    adv = gae(r, v, next_v, term, done, g, lam)
    d0 = 1.0 + g * 1.0 - 0.5
    d1 = 2.0 + g * 10.0 - 1.0
    d2 = 0.0 + g * 1.5 - 2.0
    d3 = 3.0 - 1.5
    d4 = 1.0 + g * 5.0 - 4.0
    expected = [d0 + g * lam * d1, d1, d2 + g * lam * d3, d3, d4]
    np.testing.assert_allclose(adv[:, 0], expected, rtol=1e-12)


def test_gae_lambda_one_gives_discounted_return_minus_value():
    r = np.array([[1.0], [1.0], [1.0]])
    v = np.array([[0.3], [0.2], [0.1]])
    next_v = np.array([[0.2], [0.1], [0.0]])
    term = np.array([[0], [0], [1]], bool)
    adv = gae(r, v, next_v, term, term, 0.5, 1.0)
    np.testing.assert_allclose(adv[:, 0], [1.75 - 0.3, 1.5 - 0.2, 1.0 - 0.1], rtol=1e-12)


@pytest.mark.parametrize("space", ["discrete", "box"])
def test_fisher_vector_product_matches_explicit_hessian_of_kl(space):
    import gymnasium as gym

    from trpo_lab.algos.trpo import fisher_vector_product
    from trpo_lab.rollout import finish_batch

    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-1, 1, (3,))
    act_space = gym.spaces.Discrete(3) if space == "discrete" else gym.spaces.Box(-1, 1, (2,))
    policy = Policy(obs_space, act_space, PolicyConfig(name="mlp", hidden_sizes=[4]), [4])
    policy.double()
    obs = torch.randn(7, 3, dtype=torch.float64)
    actions = torch.zeros(7, dtype=torch.long) if space == "discrete" else torch.zeros(7, 2)
    ones = torch.ones(7, dtype=torch.float64)
    batch = finish_batch(policy, obs, actions, ones, ones, ones, ones / 7, ones, False, False)
    params = policy.actor_parameters()
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    names = {id(p): n for n, p in policy.named_parameters()}

    def kl_of(flat):
        chunks = torch.split(flat, sizes)
        replaced = {names[id(p)]: c.view_as(p) for p, c in zip(params, chunks)}
        new = _dist_params_with(policy, replaced, obs)
        return (policy.head.kl(batch.old_params, new) * batch.weights).sum()

    hessian = torch.autograd.functional.hessian(kl_of, theta)
    v = torch.randn(theta.numel(), dtype=torch.float64)
    fvp = fisher_vector_product(policy, batch, damping=0.1)
    np.testing.assert_allclose(fvp(v).numpy(), (hessian @ v + 0.1 * v).numpy(), rtol=1e-8,
                               atol=1e-10)


def _dist_params_with(policy, replaced, obs):
    class Call(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.dist_params(x)

    return torch.func.functional_call(Call(policy), {f"inner.{k}": v for k, v in replaced.items()},
                                      (obs,))


def test_flat_grad_of_quadratic():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = torch.tensor([3.0], requires_grad=True)
    g = flat_grad((x**2).sum() + 5 * y.sum(), [x, y])
    np.testing.assert_allclose(g.numpy(), [2.0, 4.0, 5.0])


def test_running_mean_std_matches_batch_statistics():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 2))
    rms = RunningMeanStd((2,), epsilon=0.0)
    for chunk in np.split(data, 10):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-10)


def test_numpy_actor_matches_torch_policy():
    import gymnasium as gym

    torch.manual_seed(1)
    for act_space in (gym.spaces.Discrete(4), gym.spaces.Box(-1, 1, (2,))):
        policy = Policy(gym.spaces.Box(-1, 1, (5,)), act_space,
                        PolicyConfig(name="mlp", hidden_sizes=[8, 8], init_log_std=-0.5), [8])
        with torch.no_grad():  # move off the near-zero output initialisation
            for p in policy.actor_parameters():
                p.add_(torch.randn_like(p) * 0.5)
        obs = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
        torch_out = policy.dist_params(torch.as_tensor(obs)).detach().numpy()
        actor = policy.numpy_actor()
        np.testing.assert_allclose(actor.forward(obs), torch_out[:, : actor.forward(obs).shape[1]],
                                   rtol=1e-5, atol=1e-6)


def test_categorical_sampling_frequencies_match_probabilities():
    import gymnasium as gym

    policy = Policy(gym.spaces.Discrete(1), gym.spaces.Discrete(3), PolicyConfig(name="tabular"),
                    [])
    with torch.no_grad():
        policy.actor[0].weight.copy_(torch.log(torch.tensor([[0.2], [0.5], [0.3]])))
    actor = policy.numpy_actor()
    actions = actor.sample(np.ones((200_000, 1)), np.random.default_rng(0))
    freq = np.bincount(actions, minlength=3) / actions.size
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=4 * np.sqrt(0.25 / 200_000))


def test_runs_with_neighbouring_seeds_do_not_share_environment_streams():
    from tests.conftest import compose_typed
    from trpo_lab.envs import make_vector_env
    from trpo_lab.rollout import Collector

    cfg = compose_typed("env=pendulum", "num_envs=2")
    first = {}
    for seed in (0, 1):
        collector = Collector(make_vector_env(cfg.env, 2, 0.9), 1, seed, False)
        first[seed] = [tuple(np.round(o, 6)) for o in collector.raw_obs]
    starts = first[0] + first[1]
    assert len(set(starts)) == 4


def test_discounted_running_returns_by_hand():
    rewards = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    done = np.array([[False, False], [True, False], [False, False]])
    got = discounted_running_returns(rewards, done, 0.5, np.array([10.0, 0.0]))
    want = [[11.0, 2.0], [3.0 + 0.5 * 11.0, 4.0 + 0.5 * 2.0], [5.0, 6.0 + 0.5 * 5.0]]
    np.testing.assert_allclose(got, want)


def per_step_return_statistics(rewards: np.ndarray, done: np.ndarray, gamma: float):
    """sb3 VecNormalize's reward bookkeeping, one env step at a time, as the reference:
    returns = returns * gamma + r; ret_rms.update(returns); returns[dones] = 0."""
    rms = RunningMeanStd(())
    returns = np.zeros(rewards.shape[1])
    for r, d in zip(rewards, done):
        returns = returns * gamma + r
        rms.update(returns)
        returns[d] = 0.0
    return rms


def test_reward_normalisation_statistics_equal_per_step_updates_across_batches():
    from tests.conftest import compose_typed
    from trpo_lab.envs import make_vector_env
    from trpo_lab.rollout import Collector

    cfg = compose_typed("env=pendulum")
    torch.manual_seed(0)
    envs = make_vector_env(cfg.env, 2, 0.9)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [8])
    collector = Collector(envs, 150, 0, False, normalize_reward=True, gamma=0.9)
    batches = [collector.collect(policy.numpy_actor()) for _ in range(3)]
    reference = per_step_return_statistics(np.concatenate([b.rewards for b in batches]),
                                           np.concatenate([b.done for b in batches]), 0.9)
    assert sum(int(b.done.sum()) for b in batches) == 4  # 200-step episodes end inside batches
    np.testing.assert_allclose(collector.return_rms.mean, reference.mean, rtol=1e-10)
    np.testing.assert_allclose(collector.return_rms.var, reference.var, rtol=1e-10)
    assert batches[-1].reward_scale == pytest.approx(np.sqrt(reference.var + 1e-8), rel=1e-10)


def test_reward_scaled_batch_keeps_advantages_in_reward_units():
    """With a zero critic GAE is linear in the rewards: the scaled batch's advantages, mapped
    back to reward units, equal the unscaled ones, and its critic targets are 1/scale of them."""
    from dataclasses import replace

    from tests.conftest import compose_typed
    from trpo_lab.envs import make_vector_env
    from trpo_lab.rollout import Collector, build_batch

    cfg = compose_typed("env=pendulum")
    envs = make_vector_env(cfg.env, 2, 0.9)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [8])
    with torch.no_grad():
        for p in policy.critic_parameters():
            p.zero_()
    data = Collector(envs, 300, 0, False).collect(policy.numpy_actor())
    scale = 3.7  # |r| <= 16.3 on Pendulum: nothing is clipped at 10 * 3.7
    plain = build_batch(policy, data, 0.9, 0.95, False)
    scaled = build_batch(policy, replace(data, reward_scale=scale), 0.9, 0.95, False)
    np.testing.assert_allclose(scaled.advantages, plain.advantages, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scale * scaled.returns, plain.returns, rtol=1e-5, atol=1e-5)
    assert float(plain.advantages.abs().max()) > 10.0
