"""The exact laboratory in training: every claim of the derivation as a number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import compose_typed, train_in_process
from trpo_lab import exact
from trpo_lab.algos.common import predicted_improvement
from trpo_lab.envs import make_vector_env, tabular_model
from trpo_lab.numerics import flat_grad
from trpo_lab.policies import Policy
from trpo_lab.rollout import Collector, build_batch, exact_batch

GARNET = ["env=garnet", "policy=tabular", "env.num_states=12", "env.num_actions=3",
          "gamma=0.9"]


def test_algorithm_1_exact_theory_penalty_never_decreases_J(tmp_path):
    metrics = train_in_process(tmp_path, *GARNET, "algo=kl_penalty", "algo.beta=theory",
                               "algo.estimator=exact", "algo.lr=1.0", "algo.epochs=5",
                               "eval.episodes=0", "batch_steps=128", "total_steps=3840")
    assert len(metrics) == 30
    assert (metrics["true/improvement"] >= -1e-12).all()
    assert (metrics["true/improvement"] >= metrics["bound/trpo"] - 1e-10).all()
    assert (metrics["bound/trpo"] >= -1e-12).all()  # the penalised objective never went down
    assert metrics["true/J"].iloc[-1] > metrics["true/J"].iloc[0]
    gamma = 0.9
    c = 4 * metrics["bound/eps"] * gamma / (1 - gamma) ** 2
    np.testing.assert_allclose(metrics["bound/C"], c, rtol=1e-12)
    np.testing.assert_allclose(metrics["penalty/beta"], metrics["bound/C"], rtol=1e-5)


def test_exact_trpo_respects_delta_and_logs_exact_columns(tmp_path):
    delta = 0.02
    metrics = train_in_process(tmp_path, *GARNET, "algo=trpo", f"algo.delta={delta}",
                               "algo.cg_damping=0.001", "algo.estimator=exact",
                               "eval.episodes=0", "batch_steps=128", "total_steps=2560")
    accepted = metrics[metrics["trpo/accepted"] == 1]
    assert len(accepted) >= 15
    assert (accepted["kl/mean"] <= delta + 1e-7).all()
    # exact mode: the batch estimate of dL is the exact dL (float32 vs float64)
    np.testing.assert_allclose(metrics["surrogate/improvement"],
                               metrics["exact/surrogate_improvement"], rtol=1e-3, atol=1e-6)
    assert (metrics["exact/pdl_residual"] < 1e-8).all()
    for bound in ("bound/trpo", "bound/cpo"):
        assert (metrics["true/improvement"] >= metrics[bound] - 1e-10).all()
    assert metrics[["rollout/return_mean", "value/loss", "mc/J"]].isna().all().all()
    assert (metrics["true/J_se"] == 0).all()


def make_tabular(seed: int = 0, num_envs: int = 1):
    cfg = compose_typed(*GARNET, "critic.hidden_sizes=[]")
    torch.manual_seed(seed)
    envs = make_vector_env(cfg.env, num_envs, cfg.gamma)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [])
    with torch.no_grad():
        policy.actor[0].weight.copy_(torch.randn_like(policy.actor[0].weight))
    return cfg, envs, tabular_model(envs), policy


def exact_J(mdp, logits: np.ndarray, gamma: float) -> float:
    pi = np.exp(logits - logits.max(1, keepdims=True))
    return exact.evaluate(mdp, pi / pi.sum(1, keepdims=True), gamma).J


def test_surrogate_gradient_at_pi_equals_exact_policy_gradient():
    cfg, _, mdp, policy = make_tabular()
    logits = policy.actor[0].weight.detach().double().numpy().T  # [S, A]
    pi = policy.numpy_actor().probabilities(np.eye(mdp.num_states))
    evaluation = exact.evaluate(mdp, pi, cfg.gamma)
    batch = exact_batch(policy, pi, evaluation.A, evaluation.rho, cfg.gamma, False)
    grad = flat_grad(predicted_improvement(policy, batch), policy.actor_parameters())
    grad = grad.double().numpy().reshape(mdp.num_actions, mdp.num_states).T
    h = 1e-6
    finite = np.zeros_like(logits)
    for s in range(mdp.num_states):
        for a in range(mdp.num_actions):
            up, down = logits.copy(), logits.copy()
            up[s, a] += h
            down[s, a] -= h
            finite[s, a] = (exact_J(mdp, up, cfg.gamma) - exact_J(mdp, down, cfg.gamma)) / (2 * h)
    np.testing.assert_allclose(grad, finite, atol=2e-4 * np.abs(finite).max())

    # and the sampled surrogate gradient on a large batch points the same way
    _, envs, _, _ = make_tabular(num_envs=8)
    with torch.no_grad():  # critic = exact V (a table), so advantages are unbiased
        policy.critic[0].weight.copy_(torch.tensor(evaluation.V, dtype=torch.float32)[None])
        policy.critic[0].bias.zero_()
    data = Collector(envs, 12_500, 0, False).collect(policy.numpy_actor())
    sampled = build_batch(policy, data, cfg.gamma, 0.95, False)
    sampled_grad = flat_grad(predicted_improvement(policy, sampled), policy.actor_parameters())
    exact_grad = torch.tensor(grad.T.reshape(-1), dtype=torch.float32)
    cosine = float(sampled_grad @ exact_grad / (sampled_grad.norm() * exact_grad.norm()))
    assert cosine > 0.97


def test_sampled_predicted_improvement_of_a_fixed_step_matches_exact_dl():
    cfg, envs, mdp, policy = make_tabular(num_envs=8)
    pi = policy.numpy_actor().probabilities(np.eye(mdp.num_states))
    evaluation = exact.evaluate(mdp, pi, cfg.gamma)
    with torch.no_grad():
        policy.critic[0].weight.copy_(torch.tensor(evaluation.V, dtype=torch.float32)[None])
        policy.critic[0].bias.zero_()
    data = Collector(envs, 12_500, 0, False).collect(policy.numpy_actor())
    batch = build_batch(policy, data, cfg.gamma, 0.95, False)
    # a step along the exact advantages (a policy-iteration-like move): dL clearly positive
    step = torch.tensor((evaluation.A / np.abs(evaluation.A).max()).T, dtype=torch.float32)
    new_logits = policy.actor[0].weight.detach() + 1.0 * step
    with torch.no_grad():
        params = batch.obs @ new_logits.T
        estimate = float(predicted_improvement(policy, batch, params))
        ratio = torch.exp(policy.head.log_prob(params, batch.actions) - batch.old_log_prob)
    # per-env estimates (independent streams) give the standard error
    terms = (gamma_t(data, cfg.gamma) * (ratio - 1).double().numpy().reshape(data.rewards.shape)
             * batch.advantages.double().numpy().reshape(data.rewards.shape))
    per_env = terms.sum(0) / (data.episode_time == 0).sum(0)
    se = per_env.std(ddof=1) / np.sqrt(per_env.size)
    pi_new = torch.softmax(new_logits.T.double(), -1).numpy()
    truth = exact.compare(mdp, pi, pi_new, cfg.gamma, old=evaluation).surrogate_improvement
    assert abs(estimate - truth) <= 4 * se
    assert se < 0.5 * abs(truth)  # the comparison has power


def gamma_t(data, gamma: float) -> np.ndarray:
    return gamma ** data.episode_time.astype(np.float64)


@pytest.fixture(scope="module")
def sampled_garnet_run(tmp_path_factory):
    # the default garnet (50 states, 4 actions): its policy stays stochastic for 120 updates
    return train_in_process(tmp_path_factory.mktemp("calibration"), "env=garnet",
                            "policy=tabular", "gamma=0.8",
                            "algo.cg_damping=0.001", "eval.episodes=40", "batch_steps=256",
                            "total_steps=30720")


def test_sampled_trpo_estimates_correlate_with_exact_dl(sampled_garnet_run):
    metrics = sampled_garnet_run
    corr = np.corrcoef(metrics["surrogate/improvement"], metrics["exact/surrogate_improvement"])
    assert corr[0, 1] > 0.3
    assert (metrics["exact/pdl_residual"] < 1e-8).all()
    assert (metrics["true/improvement"] >= metrics["bound/trpo"] - 1e-10).all()


def test_monte_carlo_improvement_intervals_are_calibrated(sampled_garnet_run):
    metrics = sampled_garnet_run
    assert len(metrics) == 120
    covered = (metrics["mc/improvement"] - metrics["true/improvement"]).abs() \
        <= 1.96 * metrics["mc/improvement_se"]
    # 120 updates: the binomial sd of the coverage at 95% is 0.02; the band allows for the
    # small-sample t correction of 40 paired episodes
    assert 0.85 <= covered.mean() <= 1.0
    j_covered = (metrics["mc/J"] - metrics["true/J"]).abs() <= 1.96 * metrics["mc/J"].std()
    assert j_covered.mean() > 0.8
