"""The vine sampler (trpo_lab/vine.py) against the exact truth of a tabular MDP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import compose_typed
from trpo_lab import exact
from trpo_lab.algos.common import predicted_improvement, surrogate
from trpo_lab.config import ConfigError
from trpo_lab.envs import env_factory, make_vector_env, tabular_model
from trpo_lab.envs.snapshot import snapshot
from trpo_lab.envs.tabular import horizon_for
from trpo_lab.numerics import flat_grad, flat_params, self_normalised, set_flat_params
from trpo_lab.policies import Policy
from trpo_lab.rollout import Collector, build_batch, exact_batch
from trpo_lab.vine import VineSampler, coupled_meeting_probability

# a held-out shape: no other test or sweep uses it
GAMMA = 0.7
SHAPE = ["env=garnet", "policy=tabular", "env.num_states=7", "env.num_actions=3",
         "env.branching=3", "env.mdp_seed=11", f"gamma={GAMMA}", "critic.hidden_sizes=[]",
         "algo.sampler=vine"]
EPISODE = horizon_for(GAMMA)  # 39 steps: a trunk of one whole episode per batch


def test_self_normalised_closed_form():
    ratio = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.2, 0.25, 0.25], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1])
    d0, d1 = (0.1 + 0.4 + 0.6) / 0.5, (1.0 + 1.25) / 0.5
    expected = ratio / torch.tensor([d0, d0, d0, d1, d1], dtype=torch.float64)
    torch.testing.assert_close(self_normalised(ratio, weights, groups), expected,
                               rtol=1e-15, atol=0)
    # a stacked [R, B] form, row by row
    stacked = self_normalised(torch.stack([ratio, torch.ones(5, dtype=torch.float64)]),
                              torch.stack([weights, weights]), torch.stack([groups, groups]))
    torch.testing.assert_close(stacked[0], expected, rtol=1e-15, atol=0)
    assert torch.equal(stacked[1], torch.ones(5, dtype=torch.float64))
    # the weighted sum is the mean over groups of sum_k c r A / sum_k c r (c = w / group sum)
    adv = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.7], dtype=torch.float64)
    c = weights / torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    snis = [(c[g] * ratio[g] * adv[g]).sum() / (c[g] * ratio[g]).sum()
            for g in (slice(0, 3), slice(3, 5))]
    torch.testing.assert_close((weights * self_normalised(ratio, weights, groups) * adv).sum(),
                               0.5 * snis[0] + 0.5 * snis[1], rtol=1e-14, atol=0)


def setup(*overrides: str, seed: int = 0):
    cfg = compose_typed(*SHAPE, f"batch_steps={EPISODE}", *overrides)
    torch.set_num_threads(1)  # as a run has it (torch_threads=1): small products, one core
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    torch.manual_seed(seed)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [])
    with torch.no_grad():
        policy.actor[0].weight.copy_(torch.randn_like(policy.actor[0].weight))
    collector = Collector(envs, EPISODE, seed, False, False, cfg.gamma)
    vine = VineSampler(cfg, collector, env_factory(cfg.env, cfg.gamma))
    return cfg, collector, vine, policy, tabular_model(envs)


def pi_table(policy: Policy, mdp) -> np.ndarray:
    return policy.numpy_actor().probabilities(np.eye(mdp.num_states))


def repeated_estimates(collector, vine, policy, theta_new, repeats: int):
    """Per repeat (one whole trunk episode, its vine batch): dL at theta_new and the gradient
    of dL at theta_old."""
    params = policy.actor_parameters()
    theta_old = flat_params(params)
    actor = policy.numpy_actor()
    dls, grads, steps = [], [], []
    for _ in range(repeats):
        data = collector.collect(actor)
        assert int((data.episode_time == 0).sum()) == 1  # one whole episode
        trunk = build_batch(policy, data, GAMMA, 1.0, False)
        batch, branch_steps = vine.batch(policy, data, trunk, collector.encode, actor)
        grads.append(flat_grad(predicted_improvement(policy, batch), params).double().numpy())
        set_flat_params(params, theta_new)
        with torch.no_grad():
            dls.append(float(predicted_improvement(policy, batch)))
        set_flat_params(params, theta_old)
        steps.append(branch_steps)
    return np.array(dls), np.array(grads), np.array(steps)


def exact_truth(policy, mdp, theta_new):
    params = policy.actor_parameters()
    theta_old = flat_params(params)
    pi_old = pi_table(policy, mdp)
    old = exact.evaluate(mdp, pi_old, GAMMA)
    grad = flat_grad(predicted_improvement(
        policy, exact_batch(policy, pi_old, old.A, old.rho, GAMMA, False)), params)
    set_flat_params(params, theta_new)
    dl = exact.compare(mdp, pi_old, pi_table(policy, mdp), GAMMA, old=old).surrogate_improvement
    set_flat_params(params, theta_old)
    return dl, grad.double().numpy()


def within(samples: np.ndarray, truth: float, ses: float = 2.0) -> tuple[float, float]:
    mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(len(samples))
    assert abs(mean - truth) <= ses * se, (mean, truth, se)
    return mean, se


def directions(grad_exact: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [grad_exact / np.linalg.norm(grad_exact)]
    for _ in range(count):
        d = rng.standard_normal(grad_exact.shape)
        out.append(d / np.linalg.norm(d))
    return out


def test_vine_all_actions_dl_and_gradient_are_unbiased():
    """Every action branched: E[dL_hat] = dL and E[grad dL_hat] = grad dL at theta_old (the
    exact policy gradient), within 2 SE over 1,000 trunk episodes; the gradient along the
    exact gradient and along two random directions."""
    cfg, collector, vine, policy, mdp = setup("algo.vine.states=6", "algo.vine.proposal=all")
    d = torch.randn(flat_params(policy.actor_parameters()).shape,
                    generator=torch.Generator().manual_seed(5))
    theta_new = flat_params(policy.actor_parameters()) + 0.6 * d
    dl_exact, grad_exact = exact_truth(policy, mdp, theta_new)
    dls, grads, steps = repeated_estimates(collector, vine, policy, theta_new, 1000)
    assert steps.min() >= 6 * 3  # every branch took at least its own action
    mean, se = within(dls, dl_exact)
    # power: a dL off by half of itself (a wrong weight, a lost factor) is > 3 SE away
    assert se < abs(dl_exact) / 6
    for u in directions(grad_exact, 2, seed=6):
        within(grads @ u, float(grad_exact @ u))


def test_vine_policy_proposal_gradient_is_k_minus_1_over_k_of_the_truth():
    """K actions from the old policy, self-normalised: at theta_old the gradient's expectation
    is (K-1)/K of the exact one (the weights' normaliser includes each action's own Qhat)."""
    k = 3
    cfg, collector, vine, policy, mdp = setup("algo.vine.states=6", "algo.vine.proposal=policy",
                                              f"algo.vine.actions={k}", seed=1)
    theta = flat_params(policy.actor_parameters())
    _, grad_exact = exact_truth(policy, mdp, theta)
    _, grads, _ = repeated_estimates(collector, vine, policy, theta, 1000)
    for u in directions(grad_exact, 2, seed=7):
        within(grads @ u, (k - 1) / k * float(grad_exact @ u))
    # and not the full gradient: the factor is resolved
    along = grads @ (grad_exact / np.linalg.norm(grad_exact))
    assert abs(along.mean() - np.linalg.norm(grad_exact)) > 2 * along.std() / np.sqrt(1000)


def test_sampled_surrogate_is_the_self_normalised_estimate():
    """With proposal=uniform the surrogate the line search evaluates is, per rollout state,
    sum_k w_k Qhat_k / sum_k w_k with w_k = pi_theta(a_k|s) / q(a_k|s), averaged over the
    states, up to the constant baseline; and the dL estimate is its difference in units of J."""
    cfg, collector, vine, policy, mdp = setup("algo.vine.states=5", "algo.vine.proposal=uniform",
                                              "algo.vine.actions=4", seed=2)
    actor = policy.numpy_actor()
    data = collector.collect(actor)
    trunk = build_batch(policy, data, GAMMA, 1.0, False)
    batch, _ = vine.batch(policy, data, trunk, collector.encode, actor)
    params = policy.actor_parameters()
    theta_old = flat_params(params)
    q = batch.returns.double().view(5, 4)
    horvitz = (batch.dl_weights.double() / (batch.weights.double() * 5)).view(5, 4)[:, 0] / 5
    old_value = surrogate(policy, batch).double()
    for step in (0.0, 0.7):
        set_flat_params(params, theta_old + step)  # every logit moved: ratios change
        with torch.no_grad():
            pi = policy.head.log_prob(policy.dist_params(batch.obs), batch.actions).exp()
            w = pi.double().view(5, 4) * mdp.num_actions  # q = 1 / A
            snis = (w * q).sum(1) / w.sum(1)
            baseline = batch.values.double().view(5, 4)[:, 0]
            torch.testing.assert_close(surrogate(policy, batch).double() - old_value,
                                       (snis - baseline).mean() - 0.0, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(predicted_improvement(policy, batch).double(),
                                       (horvitz * 5 * (snis - baseline)).sum(),
                                       rtol=1e-5, atol=1e-6)
    set_flat_params(params, theta_old)


CHAIN = ["env=chain", "policy=tabular", "gamma=0.95", "critic.hidden_sizes=[]",
         "algo.sampler=vine", "algo.vine.states=6", f"batch_steps={EPISODE}"]


def qhat_differences(common: bool, state: int, repeats: int = 300,
                     setting: tuple[str, ...] = tuple(CHAIN)) -> np.ndarray:
    """Qhat(s, 1) - Qhat(s, 0) over ``repeats`` independent visits of state s of ``setting``
    (the chain: right - left), under the uniform policy (a zero logit table)."""
    cfg = compose_typed(*setting, f"algo.vine.common_random_numbers={str(common).lower()}")
    torch.set_num_threads(1)
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [])
    with torch.no_grad():
        policy.actor[0].weight.zero_()
    collector = Collector(envs, EPISODE, 0, False, False, cfg.gamma)
    vine = VineSampler(cfg, collector, env_factory(cfg.env, cfg.gamma))
    env = collector.envs.envs[0]
    env.reset(options={"state": state})
    seeds = np.random.default_rng(8 + state).integers(2**63, size=(repeats, 2), dtype=np.int64)
    if common:
        seeds[:, 1] = seeds[:, 0]
    q, _ = vine.branch_returns(policy, policy.numpy_actor(), collector.encode, 1.0,
                               [snapshot(env)] * repeats, 2, torch.arange(2).repeat(repeats),
                               seeds.reshape(-1))
    return q[1::2] - q[0::2]


@pytest.mark.parametrize("state", [0, 1, 2])
def test_common_random_numbers_cut_the_variance_of_qhat_differences_5x(state):
    """On the chain the branches' shared noise couples them (the same slips, the same policy
    draws), so Var[Qhat(s, a) - Qhat(s, a')] falls >= 5x; the mean difference stays."""
    independent, common = qhat_differences(False, state), qhat_differences(True, state)
    assert independent.var() >= 5 * common.var(), (independent.var(), common.var())
    se = np.sqrt(independent.var() / len(independent) + common.var() / len(common))
    assert abs(independent.mean() - common.mean()) <= 3 * se


def test_coupled_meeting_probability_closed_form():
    assert coupled_meeting_probability(np.array([0.3, 0.7]), np.array([0.3, 0.7])) == 1.0
    assert coupled_meeting_probability(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0
    # [0, .5) & [0, .25) + [.5, 1) & [.25, 1) = .25 + .5 (independent: .125 + .375 = .5)
    assert coupled_meeting_probability(np.array([0.5, 0.5]),
                                       np.array([0.25, 0.75])) == pytest.approx(0.75, abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(100):  # a coupling: never above the maximal one, 1 - TV = sum min(p, q)
        p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
        assert coupled_meeting_probability(p, q) <= np.minimum(p, q).sum() + 1e-12


def meeting(setting: list[str]) -> tuple[float, float]:
    """The mean one-step meeting probability of two branches in distinct (s, a) rows of the
    garnet, with one shared uniform (CRN) and with independent ones."""
    cfg = compose_typed(*setting)
    rows = tabular_model(make_vector_env(cfg.env, 1, cfg.gamma)).P.reshape(
        -1, cfg.env.num_states)
    pairs = [(x, y) for x in range(len(rows)) for y in range(len(rows)) if x != y]
    return (float(np.mean([coupled_meeting_probability(rows[x], rows[y]) for x, y in pairs])),
            float(np.mean([rows[x] @ rows[y] for x, y in pairs])))


# held-out garnet shapes: a small one with full support, and the default 50-state garnet
GARNET_CRN = ["env=garnet", "policy=tabular", "gamma=0.9", "critic.hidden_sizes=[]",
              "algo.sampler=vine", "algo.vine.states=6", f"batch_steps={EPISODE}"]
SMALL_GARNET = [*GARNET_CRN, "env.num_states=3", "env.branching=3", "env.num_actions=2"]
DEFAULT_GARNET = [*GARNET_CRN, "env.num_actions=2"]


@pytest.mark.parametrize("state", [0, 1, 2])
def test_common_random_numbers_cut_the_variance_5x_on_a_small_garnet(state):
    """A 3-state garnet with full support: one shared uniform puts two branches on the same
    next state with probability 0.64 (independent: 0.37), and once together they stay
    together, so the variance of the Qhat differences falls far more than 5x (60-120x)."""
    crn, independent_meeting = meeting(SMALL_GARNET)
    assert crn > 0.6 and independent_meeting < 0.4
    independent = qhat_differences(False, state, setting=tuple(SMALL_GARNET))
    common = qhat_differences(True, state, setting=tuple(SMALL_GARNET))
    assert independent.var() >= 5 * common.var(), (independent.var(), common.var())
    se = np.sqrt(independent.var() / len(independent) + common.var() / len(common))
    assert abs(independent.mean() - common.mean()) <= 3 * se


def test_common_random_numbers_barely_help_on_the_default_garnet():
    """The default garnet shape (50 states, 5 next states per row; 2 actions): two branches
    in different rows meet with probability 0.03 a step with one shared uniform (independent:
    0.02), so they
    almost never couple and the variance ratio stays below 2, while the env noise IS shared:
    branches of the same action with the same seeds are identical."""
    crn, independent_meeting = meeting(DEFAULT_GARNET)
    assert 0.02 < crn < 0.04 and 0.01 < independent_meeting < 0.03
    independent = qhat_differences(False, 0, repeats=200, setting=tuple(DEFAULT_GARNET))
    common = qhat_differences(True, 0, repeats=200, setting=tuple(DEFAULT_GARNET))
    assert 0.7 < independent.var() / common.var() < 2.0, (independent.var(), common.var())
    cfg = compose_typed(*DEFAULT_GARNET)
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [])
    collector = Collector(envs, EPISODE, 0, False, False, cfg.gamma)
    vine = VineSampler(cfg, collector, env_factory(cfg.env, cfg.gamma))
    env = collector.envs.envs[0]
    env.reset(options={"state": 0})
    q, _ = vine.branch_returns(policy, policy.numpy_actor(), collector.encode, 1.0,
                               [snapshot(env)] * 2, 2, torch.tensor([1, 1, 1, 1]),
                               np.array([5, 5, 6, 7]))
    assert q[0] == q[1] and q[2] != q[3]


def test_vine_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="algo.vine.actions"):
        compose_typed(*SHAPE, "algo.vine.proposal=policy", "algo.vine.actions=1")
    with pytest.raises(ConfigError, match="algo.vine.states"):
        compose_typed(*SHAPE, "batch_steps=16", "algo.vine.states=17")
    cfg = compose_typed("env=pendulum", "algo.sampler=vine", "algo.vine.proposal=all")
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    collector = Collector(envs, 8, 0, False)
    with pytest.raises(ConfigError, match="algo.vine.proposal.*Discrete"):
        VineSampler(cfg, collector, env_factory(cfg.env, cfg.gamma))
