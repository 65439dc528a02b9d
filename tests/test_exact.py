"""Exact tabular evaluation against brute force, and TRPO's theory as property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trpo_lab.envs.tabular import TabularMDP, garnet, horizon_for
from trpo_lab.exact import (
    PolicyEvaluation,
    _policy_transition_dense,
    _policy_transition_sparse,
    categorical_kl,
    compare,
    evaluate,
    policy_reward,
    policy_transition,
    q_from_v,
    total_variation,
    trpo_penalty_coefficient,
)

# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def random_mdp(rng: np.random.Generator, num_states: int, num_actions: int,
               sparse: bool = False) -> TabularMDP:
    """Random dense (or sparse: a random number of next states per row) MDP, R ~ U[-1, 1]."""
    P = rng.dirichlet(np.ones(num_states), size=(num_states, num_actions))  # noqa: N806
    if sparse:
        keep = rng.random(P.shape) < 0.5
        keep[np.arange(num_states)[:, None], np.arange(num_actions)[None, :],
             rng.integers(num_states, size=(num_states, num_actions))] = True
        P = np.where(keep, P, 0.0)  # noqa: N806
        P /= P.sum(axis=2, keepdims=True)
    R = rng.uniform(-1.0, 1.0, size=(num_states, num_actions))  # noqa: N806
    mu = rng.dirichlet(np.ones(num_states))
    return TabularMDP(P=P, R=R, mu=mu, name="random")


def random_policy(rng: np.random.Generator, num_states: int, num_actions: int,
                  temperature: float = 1.0) -> np.ndarray:
    return softmax(temperature * rng.normal(size=(num_states, num_actions)))


def power_iteration_values(mdp: TabularMDP, pi: np.ndarray, gamma: float) -> np.ndarray:
    """V by repeated Bellman backups V <- r_pi + gamma P_pi V from 0, to a fixed point."""
    r_pi = (pi * mdp.R).sum(axis=1)
    P_pi = (pi[:, :, None] * mdp.P).sum(axis=1)  # noqa: N806
    V = np.zeros(mdp.num_states)  # noqa: N806
    for _ in range(100_000):
        V_next = r_pi + gamma * P_pi @ V  # noqa: N806
        if np.abs(V_next - V).max() < 1e-15:
            return V_next
        V = V_next  # noqa: N806
    raise AssertionError("power iteration did not converge")


def visitation_by_iteration(mdp: TabularMDP, pi: np.ndarray, gamma: float) -> np.ndarray:
    """rho(s) = sum_t gamma^t P(s_t = s), summing the propagated state distribution."""
    P_pi = (pi[:, :, None] * mdp.P).sum(axis=1)  # noqa: N806
    state_dist = mdp.mu.copy()
    rho = np.zeros(mdp.num_states)
    discount = 1.0
    while discount > 1e-18:
        rho += discount * state_dist
        state_dist = state_dist @ P_pi
        discount *= gamma
    return rho


def inverse_cdf(cumulative: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of [N, K] cumulative probabilities: the first k with u < cum[k]."""
    u = rng.random(cumulative.shape[0])
    return (u[:, None] < cumulative).argmax(axis=1)


def monte_carlo_returns(mdp: TabularMDP, pi: np.ndarray, gamma: float, episodes: int,
                        horizon: int, rng: np.random.Generator) -> np.ndarray:
    """Discounted returns sum_{t<H} gamma^t r_t of ``episodes`` simulated episodes (vectorised)."""
    def cumulative(p: np.ndarray) -> np.ndarray:
        c = np.cumsum(p, axis=-1)
        c[..., -1] = 1.0
        return c

    cum_mu, cum_pi, cum_P = cumulative(mdp.mu), cumulative(pi), cumulative(mdp.P)  # noqa: N806
    states = inverse_cdf(np.broadcast_to(cum_mu, (episodes, mdp.num_states)), rng)
    returns = np.zeros(episodes)
    for t in range(horizon):
        actions = inverse_cdf(cum_pi[states], rng)
        returns += gamma**t * mdp.R[states, actions]
        states = inverse_cdf(cum_P[states, actions], rng)
    return returns


# ------------------------------------------------------------------------------------------------
# Evaluation against brute force
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
def test_values_match_power_iteration(seed: int, gamma: float) -> None:
    rng = np.random.default_rng(seed)
    mdp = random_mdp(rng, 5, 3, sparse=seed % 2 == 1)
    pi = random_policy(rng, 5, 3)
    ev = evaluate(mdp, pi, gamma)
    V = power_iteration_values(mdp, pi, gamma)  # noqa: N806
    np.testing.assert_allclose(ev.V, V, rtol=0, atol=1e-10)
    Q = mdp.R + gamma * np.einsum("sat,t->sa", mdp.P, V)  # noqa: N806
    np.testing.assert_allclose(ev.Q, Q, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ev.A, Q - V[:, None], rtol=0, atol=1e-10)
    np.testing.assert_allclose((pi * ev.A).sum(axis=1), 0.0, atol=1e-12)
    assert abs(ev.J - float(mdp.mu @ V)) <= 1e-10


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 0.99])
def test_visitation_matches_iterated_state_distribution(seed: int, gamma: float) -> None:
    rng = np.random.default_rng(100 + seed)
    mdp = random_mdp(rng, 6, 2, sparse=seed % 2 == 0)
    pi = random_policy(rng, 6, 2, temperature=3.0)
    ev = evaluate(mdp, pi, gamma)
    np.testing.assert_allclose(ev.rho, visitation_by_iteration(mdp, pi, gamma),
                               rtol=0, atol=1e-10)
    assert ev.rho.sum() == pytest.approx(1.0 / (1.0 - gamma), rel=1e-12)
    assert np.all(ev.rho >= -1e-15)
    # J two ways: mu . V (values) and rho . r_pi (occupancy).
    assert abs(ev.J - float(ev.rho @ policy_reward(mdp, pi))) <= 1e-10


@pytest.mark.parametrize(("seed", "gamma"), [(0, 0.0), (1, 0.5), (2, 0.9), (3, 0.95)])
def test_J_matches_monte_carlo(seed: int, gamma: float) -> None:
    rng = np.random.default_rng(200 + seed)
    mdp = random_mdp(rng, 4, 3, sparse=seed % 2 == 1)
    pi = random_policy(rng, 4, 3)
    tol = 1e-8
    horizon = horizon_for(gamma, tol)
    returns = monte_carlo_returns(mdp, pi, gamma, 20_000, horizon, rng)
    se = returns.std(ddof=1) / np.sqrt(returns.size)
    truncation_bias = tol * np.abs(mdp.R).max() / (1.0 - gamma)
    J = evaluate(mdp, pi, gamma).J  # noqa: N806
    assert abs(returns.mean() - J) <= 4.0 * se + truncation_bias, (returns.mean(), J, se)


def test_garnet_evaluation_is_self_consistent() -> None:
    """The sparse path (large garnet) satisfies the Bellman equations and the visitation balance."""
    mdp = garnet(150, 10, 3, mdp_seed=4)
    assert mdp.P.size >= 100_000 and mdp.density < 0.25  # exercises the sparse path
    gamma = 0.95
    pi = random_policy(np.random.default_rng(5), 150, 10)
    ev = evaluate(mdp, pi, gamma)
    P_pi = policy_transition(mdp, pi)  # noqa: N806
    np.testing.assert_allclose(P_pi, _policy_transition_dense(mdp, pi), rtol=0, atol=1e-15)
    np.testing.assert_allclose(ev.V, policy_reward(mdp, pi) + gamma * P_pi @ ev.V, atol=1e-12)
    np.testing.assert_allclose(ev.rho, mdp.mu + gamma * P_pi.T @ ev.rho, atol=1e-12)
    np.testing.assert_allclose(q_from_v(mdp, ev.V, gamma),
                               mdp.R + gamma * np.einsum("sat,t->sa", mdp.P, ev.V), atol=1e-12)


def test_sparse_and_dense_transition_agree_on_small_mdp() -> None:
    rng = np.random.default_rng(6)
    mdp = random_mdp(rng, 6, 3, sparse=True)
    pi = random_policy(rng, 6, 3)
    np.testing.assert_allclose(_policy_transition_sparse(mdp, pi),
                               _policy_transition_dense(mdp, pi), rtol=0, atol=1e-15)


def test_chain_values_by_hand() -> None:
    """Deterministic two-state MDP: always-right from 0 -> 1 -> 1 ..., reward 1 in state 1."""
    P = np.zeros((2, 2, 2))  # noqa: N806
    P[:, 0, 0] = 1.0  # action 0 goes to state 0
    P[:, 1, 1] = 1.0  # action 1 goes to state 1
    R = np.array([[0.0, 0.0], [0.0, 1.0]])  # noqa: N806
    mdp = TabularMDP(P=P, R=R, mu=np.array([1.0, 0.0]))
    gamma = 0.9
    ev = evaluate(mdp, np.array([[0.0, 1.0], [0.0, 1.0]]), gamma)
    # V(1) = 1 / (1 - gamma) = 10, V(0) = gamma * V(1) = 9; rho = (1, gamma / (1 - gamma)).
    np.testing.assert_allclose(ev.V, [9.0, 10.0], atol=1e-12)
    np.testing.assert_allclose(ev.rho, [1.0, 9.0], atol=1e-12)
    np.testing.assert_allclose(ev.Q, [[8.1, 9.0], [8.1, 10.0]], atol=1e-12)
    assert abs(ev.J - 9.0) <= 1e-12


# ------------------------------------------------------------------------------------------------
# Helpers: KL, TV, C
# ------------------------------------------------------------------------------------------------


def test_categorical_kl_closed_form_and_edge_cases() -> None:
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.2, 0.8]])
    q = np.array([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    kl = categorical_kl(p, q)
    assert kl[0] == pytest.approx(0.5 * np.log(2.0) + 0.5 * np.log(0.5 / 0.75), rel=1e-14)
    assert kl[1] == pytest.approx(np.log(2.0), rel=1e-14)  # 0 log 0 = 0
    assert kl[2] == np.inf  # p > 0 where q = 0
    assert kl[3] == 0.0
    assert categorical_kl(q[1:2], p[1:2])[0] == np.inf


def test_total_variation_and_penalty_coefficient() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.25, 0.25, 0.5], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(total_variation(p, q), [0.5, 1.0])
    assert trpo_penalty_coefficient(2.0, 0.9) == pytest.approx(4 * 2.0 * 0.9 / 0.01)
    assert trpo_penalty_coefficient(1.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="gamma"):
        trpo_penalty_coefficient(1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Properties of compare(): performance difference lemma and the lower bounds
# ------------------------------------------------------------------------------------------------

# Sizes of the update pi -> pi': logits' = logits + step * direction.
STEPS = [0.0, 1e-7, 1e-4, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0]


@st.composite
def policy_pairs(draw: st.DrawFn) -> tuple[TabularMDP, np.ndarray, np.ndarray, float]:
    num_states = draw(st.integers(2, 6))
    num_actions = draw(st.integers(2, 4))
    gamma = draw(st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99]),
                           st.floats(0.0, 0.99, allow_nan=False)))
    seed = draw(st.integers(0, 2**32 - 1))
    sparse = draw(st.booleans())
    temperature = draw(st.sampled_from([0.1, 1.0, 3.0, 10.0]))
    step = draw(st.one_of(st.sampled_from(STEPS), st.floats(0.0, 10.0, allow_nan=False)))
    rng = np.random.default_rng(seed)
    mdp = random_mdp(rng, num_states, num_actions, sparse=sparse)
    logits = temperature * rng.normal(size=(num_states, num_actions))
    direction = rng.normal(size=(num_states, num_actions))
    return mdp, softmax(logits), softmax(logits + step * direction), gamma


def value_scale(mdp: TabularMDP, gamma: float) -> float:
    """max |J| over all policies is at most max|R| / (1 - gamma); tolerances scale with it."""
    return max(1.0, float(np.abs(mdp.R).max()) / (1.0 - gamma))


@settings(max_examples=300, deadline=None)
@given(policy_pairs())
def test_performance_difference_lemma_and_bounds(
        case: tuple[TabularMDP, np.ndarray, np.ndarray, float]) -> None:
    mdp, pi_old, pi_new, gamma = case
    d = compare(mdp, pi_old, pi_new, gamma)
    scale = value_scale(mdp, gamma)
    slack = 1e-10 * scale
    assert d.pdl_residual <= 1e-8 * scale
    assert d.true_improvement == pytest.approx(d.J_new - d.J_old, abs=1e-12 * scale)
    assert d.true_improvement >= d.bound_trpo - slack, d
    assert d.true_improvement >= d.bound_trpo_tight - slack, d
    assert d.true_improvement >= d.bound_cpo - slack, d
    assert d.bound_trpo_tight >= d.bound_trpo - 1e-12 * scale, d
    assert abs(d.C - 4 * d.eps * gamma / (1 - gamma) ** 2) <= 1e-12 * d.C
    for value in (d.kl_max, d.kl_mean, d.reverse_kl_max, d.reverse_kl_mean, d.tv_max, d.tv_mean):
        assert value >= 0.0
    assert d.kl_mean <= d.kl_max * (1 + 1e-12) and d.tv_mean <= d.tv_max * (1 + 1e-12)
    assert d.tv_max <= 1.0
    # Pinsker, state by state: TV(s)^2 <= KL(s) / 2, in both directions of the KL.
    tv = total_variation(pi_old, pi_new)
    assert np.all(tv**2 <= categorical_kl(pi_old, pi_new) / 2 + 1e-15)
    assert np.all(tv**2 <= categorical_kl(pi_new, pi_old) / 2 + 1e-15)
    assert d.tv_max**2 <= d.kl_max / 2 + 1e-15


@settings(max_examples=100, deadline=None)
@given(policy_pairs())
def test_identical_policies_have_zero_improvement(
        case: tuple[TabularMDP, np.ndarray, np.ndarray, float]) -> None:
    mdp, pi, _, gamma = case
    d = compare(mdp, pi, pi.copy(), gamma)
    scale = value_scale(mdp, gamma)
    assert d.true_improvement == 0.0
    assert abs(d.surrogate_improvement) <= 1e-12 * scale
    assert d.kl_max == d.kl_mean == d.reverse_kl_max == d.tv_max == d.tv_mean == 0.0
    assert d.bound_trpo == d.bound_trpo_tight == d.bound_cpo == pytest.approx(
        d.surrogate_improvement, abs=1e-15)


def test_bounds_with_zero_probabilities() -> None:
    """A new policy with zero where the old one is positive: KL = inf, bound_trpo = -inf, the
    TV-based bounds stay finite and valid."""
    rng = np.random.default_rng(7)
    mdp = random_mdp(rng, 4, 3)
    pi_old = random_policy(rng, 4, 3)
    pi_new = np.zeros((4, 3))
    pi_new[:, 0] = 1.0
    gamma = 0.9
    d = compare(mdp, pi_old, pi_new, gamma)
    assert d.kl_max == np.inf and d.kl_mean == np.inf and d.bound_trpo == -np.inf
    assert np.isfinite(d.reverse_kl_max)
    assert np.isfinite(d.bound_trpo_tight) and np.isfinite(d.bound_cpo)
    assert d.true_improvement >= max(d.bound_trpo_tight, d.bound_cpo) - 1e-10
    assert d.pdl_residual <= 1e-10
    # Deterministic old policy, gamma = 0: C = 0 and the bound is dL = dJ, even with KL = inf.
    d0 = compare(mdp, pi_new, pi_old, 0.0)
    assert d0.C == 0.0 and d0.reverse_kl_max == np.inf
    assert d0.bound_trpo == pytest.approx(d0.true_improvement, abs=1e-14)


def test_surrogate_is_first_order_accurate() -> None:
    """dJ - dL = O(step^2): halving the step divides the gap by about 4 (the policy gradient
    theorem: L and J have the same gradient at pi)."""
    rng = np.random.default_rng(8)
    mdp = random_mdp(rng, 5, 3)
    logits = rng.normal(size=(5, 3))
    direction = rng.normal(size=(5, 3))
    pi = softmax(logits)
    old = evaluate(mdp, pi, 0.9)
    gaps = []
    for step in (1e-2, 5e-3):
        d = compare(mdp, pi, softmax(logits + step * direction), 0.9, old=old)
        gaps.append(d.true_improvement - d.surrogate_improvement)
        assert abs(gaps[-1]) < 0.1 * abs(d.surrogate_improvement)
    assert gaps[0] / gaps[1] == pytest.approx(4.0, rel=0.05)


def test_compare_reuses_precomputed_evaluations() -> None:
    rng = np.random.default_rng(9)
    mdp = random_mdp(rng, 5, 3)
    pi_old, pi_new = random_policy(rng, 5, 3), random_policy(rng, 5, 3)
    gamma = 0.8
    old, new = evaluate(mdp, pi_old, gamma), evaluate(mdp, pi_new, gamma)
    assert compare(mdp, pi_old, pi_new, gamma) == compare(mdp, pi_old, pi_new, gamma, old=old,
                                                          new=new)
    with pytest.raises(ValueError, match="old"):
        compare(mdp, pi_old, pi_new, gamma, old=new)


def test_input_validation() -> None:
    rng = np.random.default_rng(10)
    mdp = random_mdp(rng, 3, 2)
    pi = random_policy(rng, 3, 2)
    with pytest.raises(ValueError, match="gamma"):
        evaluate(mdp, pi, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        evaluate(mdp, pi, -0.1)
    with pytest.raises(ValueError, match="shape"):
        evaluate(mdp, pi[:, :1], 0.9)
    with pytest.raises(ValueError, match="sum to 1"):
        evaluate(mdp, 2 * pi, 0.9)
    with pytest.raises(ValueError, match="non-negative"):
        evaluate(mdp, np.array([[1.5, -0.5], [0.5, 0.5], [0.5, 0.5]]), 0.9)
    assert isinstance(evaluate(mdp, pi, 0.9), PolicyEvaluation)
