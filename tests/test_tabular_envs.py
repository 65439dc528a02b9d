"""Tabular MDP builders and the gymnasium env that samples them."""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
from scipy import stats

from trpo_lab.envs.tabular import (
    DEFAULT_GRID,
    TabularEnv,
    TabularMDP,
    chain,
    garnet,
    grid_states,
    gridworld,
    horizon_for,
    make_mdp,
    register_envs,
)
from trpo_lab.exact import evaluate

# ------------------------------------------------------------------------------------------------
# horizon_for
# ------------------------------------------------------------------------------------------------


def test_horizon_for_known_values() -> None:
    assert horizon_for(0.9, 1e-6) == 132
    assert horizon_for(0.9) == 132
    assert horizon_for(0.99, 1e-6) == 1375
    assert horizon_for(0.0) == 1
    assert horizon_for(0.5, 0.25) == 2  # gamma^H == tol exactly counts
    assert horizon_for(0.5, 0.2) == 3


@pytest.mark.parametrize("gamma", [1e-3, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999])
@pytest.mark.parametrize("tol", [1e-2, 1e-6, 1e-9])
def test_horizon_for_is_the_smallest_horizon(gamma: float, tol: float) -> None:
    horizon = horizon_for(gamma, tol)
    assert gamma**horizon <= tol
    assert horizon == 1 or gamma ** (horizon - 1) > tol


def test_horizon_for_rejects_bad_arguments() -> None:
    for gamma, tol in [(1.0, 1e-6), (-0.1, 1e-6), (0.9, 0.0), (0.9, 1.0)]:
        with pytest.raises(ValueError):
            horizon_for(gamma, tol)


# ------------------------------------------------------------------------------------------------
# TabularMDP and builders
# ------------------------------------------------------------------------------------------------


def small_mdp() -> TabularMDP:
    """3 states, 2 actions, non-uniform mu, some zero transition probabilities."""
    P = np.array([  # noqa: N806
        [[0.2, 0.8, 0.0], [0.0, 0.0, 1.0]],
        [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]],
        [[0.0, 0.6, 0.4], [0.1, 0.1, 0.8]],
    ])
    R = np.array([[1.0, -1.0], [0.5, 0.0], [2.0, 0.25]])  # noqa: N806
    return TabularMDP(P=P, R=R, mu=np.array([0.6, 0.0, 0.4]), name="small")


def test_mdp_validation_names_the_problem() -> None:
    mdp = small_mdp()
    with pytest.raises(ValueError, match="shape"):
        TabularMDP(P=mdp.P[:, :, :2], R=mdp.R, mu=mdp.mu)
    with pytest.raises(ValueError, match="R must have shape"):
        TabularMDP(P=mdp.P, R=mdp.R[:, :1], mu=mdp.mu)
    with pytest.raises(ValueError, match="mu must have shape"):
        TabularMDP(P=mdp.P, R=mdp.R, mu=mdp.mu[:2])
    with pytest.raises(ValueError, match=r"P\[1, 0, :\] sums to"):
        bad = mdp.P.copy()
        bad[1, 0, 0] = 0.6
        TabularMDP(P=bad, R=mdp.R, mu=mdp.mu)
    with pytest.raises(ValueError, match="negative"):
        bad = mdp.P.copy()
        bad[0, 0] = [1.2, -0.2, 0.0]
        TabularMDP(P=bad, R=mdp.R, mu=mdp.mu)
    with pytest.raises(ValueError, match="mu must be a probability"):
        TabularMDP(P=mdp.P, R=mdp.R, mu=np.array([0.5, 0.0, 0.4]))
    with pytest.raises(ValueError, match="non-finite"):
        TabularMDP(P=mdp.P, R=np.full((3, 2), np.nan), mu=mdp.mu)


def test_mdp_is_immutable() -> None:
    mdp = small_mdp()
    assert (mdp.num_states, mdp.num_actions) == (3, 2)
    assert mdp.P.dtype == np.float64 and not mdp.P.flags.writeable
    with pytest.raises(ValueError):
        mdp.R[0, 0] = 3.0
    np.testing.assert_array_equal(mdp.transition_csr.toarray(), mdp.P.reshape(6, 3))


def test_garnet_is_deterministic_and_has_the_branching() -> None:
    a = garnet(20, 4, 3, mdp_seed=7)
    b = garnet(20, 4, 3, mdp_seed=7)
    c = garnet(20, 4, 3, mdp_seed=8)
    np.testing.assert_array_equal(a.P, b.P)
    np.testing.assert_array_equal(a.R, b.R)
    assert not np.array_equal(a.P, c.P)
    assert np.all(np.count_nonzero(a.P, axis=2) == 3)
    np.testing.assert_allclose(a.P.sum(axis=2), 1.0, atol=1e-15)
    assert np.all((a.R >= 0.0) & (a.R < 1.0))
    np.testing.assert_array_equal(a.mu, np.full(20, 1 / 20))
    full = garnet(5, 2, 5, mdp_seed=0)
    assert np.all(full.P > 0.0)
    one = garnet(5, 2, 1, mdp_seed=0)
    assert np.all(np.isin(one.P, [0.0, 1.0]))


def test_garnet_supports_are_uniform() -> None:
    """Every next state is equally likely to be in a row's support (b / S)."""
    mdp = garnet(10, 50, 2, mdp_seed=3)
    in_support = np.count_nonzero(mdp.P, axis=(0, 1))  # per next state, out of 500 rows
    expected = 500 * 2 / 10
    chi2 = ((in_support - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=9) > 1e-3


@pytest.mark.parametrize(("args", "match"), [
    ((5, 2, 0, 0), "branching"), ((5, 2, 6, 0), "branching"), ((0, 2, 1, 0), "num_states"),
    ((5, 0, 1, 0), "num_actions"), ((5, 2, 2.5, 0), "branching")])
def test_garnet_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        garnet(*args)


def test_chain_layout() -> None:
    mdp = chain(num_states=5, slip=0.1)
    P, R = mdp.P, mdp.R  # noqa: N806
    assert (mdp.num_states, mdp.num_actions) == (5, 2)
    np.testing.assert_array_equal(mdp.mu, [1, 0, 0, 0, 0])
    # left: deterministic, towards 0, stays at 0
    assert P[0, 0, 0] == 1.0 and P[3, 0, 2] == 1.0 and P[4, 0, 3] == 1.0
    # right: 0.9 forward, 0.1 stay; stays for sure at the far end
    assert P[0, 1, 1] == pytest.approx(0.9) and P[0, 1, 0] == pytest.approx(0.1)
    assert P[2, 1, 3] == pytest.approx(0.9) and P[2, 1, 2] == pytest.approx(0.1)
    assert P[4, 1, 4] == 1.0
    expected_R = np.zeros((5, 2))  # noqa: N806
    expected_R[0, 0], expected_R[4, 1] = 0.01, 1.0
    np.testing.assert_array_equal(R, expected_R)
    with pytest.raises(ValueError, match="slip"):
        chain(5, slip=1.0)


def test_chain_optimal_policy_swims_right() -> None:
    mdp = chain()
    gamma = 0.95
    right = evaluate(mdp, np.tile([0.0, 1.0], (8, 1)), gamma).J
    left = evaluate(mdp, np.tile([1.0, 0.0], (8, 1)), gamma).J
    assert left == pytest.approx(0.01 / (1 - gamma))
    assert right > 5 * left


def test_gridworld_default_layout() -> None:
    mdp = gridworld()
    index = grid_states()
    assert mdp.num_states == 20 and mdp.num_actions == 4
    assert index[(0, 0)] == 0 and index[(1, 0)] == 5 and index[(2, 2)] == 10
    assert index[(4, 4)] == 19 and (1, 1) not in index
    start, goal, pit = index[(0, 0)], index[(4, 4)], index[(2, 2)]
    np.testing.assert_array_equal(mdp.mu, np.eye(20)[start])
    P = mdp.P  # noqa: N806
    # From S, action right: 0.9 to (0, 1); slips: up (off-grid) and left (off-grid) stay,
    # down goes to (1, 0).
    assert P[start, 1, index[(0, 1)]] == pytest.approx(0.9)
    assert P[start, 1, start] == pytest.approx(2 * 0.1 / 3)
    assert P[start, 1, index[(1, 0)]] == pytest.approx(0.1 / 3)
    # From (0, 1), action down: (1, 1) is a wall, so stay with 0.9; slips right/left/up.
    s = index[(0, 1)]
    assert P[s, 2, s] == pytest.approx(0.9 + 0.1 / 3)  # down blocked + up off-grid
    assert P[s, 2, index[(0, 2)]] == pytest.approx(0.1 / 3)
    assert P[s, 2, index[(0, 0)]] == pytest.approx(0.1 / 3)
    # Goal and pit: any action gives +1 / -1 and sends back to the start distribution.
    for a in range(4):
        np.testing.assert_array_equal(P[goal, a], mdp.mu)
        np.testing.assert_array_equal(P[pit, a], mdp.mu)
    np.testing.assert_array_equal(mdp.R[goal], 1.0)
    np.testing.assert_array_equal(mdp.R[pit], -1.0)
    assert np.count_nonzero(mdp.R) == 8
    assert "S...." in DEFAULT_GRID


def test_gridworld_custom_layout_and_errors() -> None:
    mdp = gridworld("S#G", slip=0.0)
    assert mdp.num_states == 2
    np.testing.assert_array_equal(mdp.P[0, 1], [1.0, 0.0])  # right into the wall: stay
    with pytest.raises(ValueError, match="rectangular"):
        gridworld("S..\n..")
    with pytest.raises(ValueError, match="unknown characters"):
        gridworld("S.Z")
    with pytest.raises(ValueError, match="start"):
        gridworld("..G")


def test_make_mdp_dispatches_and_lists_valid_names() -> None:
    assert make_mdp("chain", num_states=4).num_states == 4
    assert make_mdp("gridworld").num_states == 20
    np.testing.assert_array_equal(
        make_mdp("garnet", num_states=6, num_actions=2, branching=2, mdp_seed=1).P,
        garnet(6, 2, 2, 1).P)
    with pytest.raises(ValueError, match="chain, garnet, gridworld"):
        make_mdp("riverswim")


# ------------------------------------------------------------------------------------------------
# TabularEnv
# ------------------------------------------------------------------------------------------------


def test_env_spaces_observations_and_truncation() -> None:
    env = TabularEnv(small_mdp(), horizon=7)
    assert env.observation_space == gymnasium.spaces.Discrete(3)
    assert env.action_space == gymnasium.spaces.Discrete(2)
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.int64) and env.observation_space.contains(obs) and info == {}
    for t in range(1, 8):
        obs, reward, terminated, truncated, _ = env.step(t % 2)
        assert isinstance(obs, np.int64) and isinstance(reward, float)
        assert terminated is False
        assert truncated is (t == 7)
    env.reset()
    assert env.step(0)[3] is False  # the step count restarts
    with pytest.raises(ValueError, match="action"):
        env.step(2)
    assert env.reset(options={"state": 1})[0] == 1


def test_env_is_reproducible_with_a_seed() -> None:
    env = TabularEnv(garnet(8, 3, 4, mdp_seed=0), horizon=50)

    def trajectory(seed: int) -> list:
        obs, _ = env.reset(seed=seed)
        out = [int(obs)]
        for t in range(50):
            obs, reward, *_ = env.step(t % 3)
            out += [int(obs), reward]
        return out

    assert trajectory(3) == trajectory(3)
    assert trajectory(3) != trajectory(4)


def test_env_reset_distribution_matches_mu() -> None:
    mdp = small_mdp()
    env = TabularEnv(mdp, horizon=10)
    env.reset(seed=1)
    counts = np.bincount([int(env.reset()[0]) for _ in range(20_000)], minlength=3)
    assert counts[1] == 0  # mu(1) = 0
    support = mdp.mu > 0
    result = stats.chisquare(counts[support], 20_000 * mdp.mu[support])
    assert result.pvalue > 1e-3


def test_env_transitions_and_rewards_match_the_model() -> None:
    """A long random-action trajectory: every reward equals R[s, a], next-state frequencies of
    every (s, a) pass a chi-square test against P[s, a, :], zero-probability moves never happen."""
    mdp = garnet(5, 3, 3, mdp_seed=11)
    env = TabularEnv(mdp, horizon=10**9)
    rng = np.random.default_rng(0)
    state = int(env.reset(seed=2)[0])
    counts = np.zeros((5, 3, 5))
    for action in rng.integers(3, size=60_000):
        next_state, reward, *_ = env.step(action)
        assert reward == mdp.R[state, action]
        counts[state, action, next_state] += 1
        state = int(next_state)
    assert np.all(counts[mdp.P == 0.0] == 0)
    visits = counts.sum(axis=2, keepdims=True)
    expected = visits * mdp.P
    support = mdp.P > 0.0
    chi2 = (((counts - expected) ** 2)[support] / expected[support]).sum()
    dof = int(support.sum()) - 5 * 3
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)


def test_env_discounted_return_matches_exact_J() -> None:
    """Monte Carlo discounted returns of the env itself (fixed random policy, default horizon)
    agree with the exact J within 4 standard errors plus the truncation bias."""
    mdp = garnet(6, 3, 3, mdp_seed=5)
    gamma = 0.9
    horizon = horizon_for(gamma)
    env = TabularEnv(mdp, horizon=horizon)
    rng = np.random.default_rng(1)
    pi = rng.dirichlet(np.ones(3), size=6)
    cum_pi = np.cumsum(pi, axis=1)
    cum_pi[:, -1] = 1.0
    discounts = gamma ** np.arange(horizon)
    episodes = 2_000
    returns = np.empty(episodes)
    env.reset(seed=3)
    for i in range(episodes):
        state = int(env.reset()[0])
        rewards = np.empty(horizon)
        uniforms = rng.random(horizon)
        truncated = False
        for t in range(horizon):
            assert not truncated
            action = int(np.searchsorted(cum_pi[state], uniforms[t], side="right"))
            obs, rewards[t], _, truncated, _ = env.step(action)
            state = int(obs)
        assert truncated
        returns[i] = discounts @ rewards
    se = returns.std(ddof=1) / math.sqrt(episodes)
    bias = 1e-6 * np.abs(mdp.R).max() / (1 - gamma)
    J = evaluate(mdp, pi, gamma).J  # noqa: N806
    assert abs(returns.mean() - J) <= 4 * se + bias, (returns.mean(), J, se)


# ------------------------------------------------------------------------------------------------
# Gymnasium registration
# ------------------------------------------------------------------------------------------------


def test_gymnasium_make_with_registered_ids() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the env checker must have nothing to say
        env = gymnasium.make("trpo_lab/Garnet-v0", num_states=12, num_actions=3, branching=4,
                             mdp_seed=2, horizon=5)
        env.reset(seed=0)
        truncated = [env.step(env.action_space.sample())[3] for _ in range(5)]
    inner = env.unwrapped
    assert isinstance(inner, TabularEnv) and inner.horizon == 5
    assert truncated == [False] * 4 + [True]
    np.testing.assert_array_equal(inner.mdp.P, garnet(12, 3, 4, 2).P)

    chain_env = gymnasium.make("trpo_lab/Chain-v0", num_states=6, slip=0.2, gamma=0.9)
    assert chain_env.unwrapped.horizon == horizon_for(0.9)
    assert chain_env.unwrapped.mdp.num_states == 6
    grid_env = gymnasium.make("trpo_lab/GridWorld-v0", horizon=0)
    assert grid_env.unwrapped.horizon == horizon_for(0.99)
    assert grid_env.observation_space == gymnasium.spaces.Discrete(20)
    assert gymnasium.spec("trpo_lab/GridWorld-v0").max_episode_steps is None


def test_registration_is_idempotent() -> None:
    spec = gymnasium.spec("trpo_lab/Chain-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    assert gymnasium.spec("trpo_lab/Chain-v0") is spec
    env = gymnasium.make("trpo_lab.envs.tabular:trpo_lab/Chain-v0")
    assert isinstance(env.unwrapped, TabularEnv)


@pytest.mark.parametrize("right_logit,expected", [(0.0, 0.5), (1.0, 43.0)])
def test_deterministic_evaluation_on_a_deterministic_chain(right_logit, expected):
    """Chain, 8 states, no slip, 50 steps. Tied logits: argmax takes action 0 (left) and
    collects 0.01 at state 0 every step: 0.5. Right preferred: 7 steps to the end, then 1 per
    step for the remaining 43."""
    import gymnasium as gym
    import torch

    from tests.conftest import compose_typed
    from trpo_lab.config import PolicyConfig
    from trpo_lab.envs import env_factory
    from trpo_lab.evaluation import deterministic_returns
    from trpo_lab.policies import Policy, encode_observations

    cfg = compose_typed("env=chain", "env.horizon=50", "+env.kwargs.slip=0.0")
    make_env = env_factory(cfg.env, 0.99)
    probe = make_env()
    policy = Policy(probe.observation_space, probe.action_space, PolicyConfig(name="tabular"), [])
    with torch.no_grad():
        policy.actor[0].weight[1].fill_(right_logit)
    space = probe.observation_space
    returns = deterministic_returns(make_env, policy.numpy_actor(),
                                    lambda obs: encode_observations(space, obs), 2, seed=0)
    assert returns == pytest.approx([expected, expected])
    assert isinstance(space, gym.spaces.Discrete)
