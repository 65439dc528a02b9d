"""The baselines share TRPO's data path; they differ only in the update step."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import compose_typed, train_in_process
from trpo_lab.algos.kl_penalty import KLPenalty
from trpo_lab.algos.ppo import clipped_surrogate
from trpo_lab.algos.trpo import TRPO
from trpo_lab.algos.vpg import VPG
from trpo_lab.config import KLPenaltyConfig, TRPOConfig, VPGConfig
from trpo_lab.envs import make_vector_env
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.numerics import flat_params
from trpo_lab.policies import Policy
from trpo_lab.rollout import Collector, build_batch

ALGOS = {
    "trpo": ["algo=trpo"],
    "npg": ["algo=trpo", "algo.line_search=false"],
    "vpg": ["algo=vpg"],
    "kl_penalty": ["algo=kl_penalty", "algo.epochs=2"],
    "ppo": ["algo=ppo", "algo.epochs=2", "algo.minibatches=4"],
}
SMALL = ["total_steps=256", "batch_steps=128", "critic.epochs=1", "eval.episodes=2"]


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_every_algorithm_logs_the_same_columns_and_is_deterministic(env, tmp_path):
    frames = {}
    for name, overrides in ALGOS.items():
        first = train_in_process(tmp_path / f"{name}-a", f"env={env}", *SMALL, *overrides)
        again = train_in_process(tmp_path / f"{name}-b", f"env={env}", *SMALL, *overrides)
        timeless = TIME_COLUMNS
        pd.testing.assert_frame_equal(first.drop(columns=timeless), again.drop(columns=timeless))
        assert len(first) == 2
        for key in ("kl/mean", "kl/max", "kl/reverse_mean", "policy/max_ratio", "policy/entropy",
                    "surrogate/linear", "surrogate/improvement", "true/J", "true/improvement",
                    "value/loss"):
            assert first[key].notna().all(), (name, key)
        line_search = first[["trpo/backtracks", "trpo/accepted", "trpo/step_norm"]]
        assert line_search.notna().all().all() == (name in ("trpo", "npg")), name
        frames[name] = first
    columns = {tuple(frame.columns) for frame in frames.values()}
    assert len(columns) == 1
    assert (frames["trpo"]["kl/mean"] <= 0.01 + 1e-7).all()


def fixed_batch(env: str = "cartpole", seed: int = 0, steps: int = 512):
    cfg = compose_typed(f"env={env}", f"seed={seed}", f"batch_steps={steps}")
    torch.manual_seed(seed)
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [64])
    data = Collector(envs, steps, seed, False).collect(policy.numpy_actor())
    return policy, build_batch(policy, data, cfg.gamma, cfg.gae_lambda, True)


def kl_after(policy: Policy, batch) -> float:
    with torch.no_grad():
        return float((batch.weights * policy.kl(batch.obs, batch.old_params)).sum())


def test_kl_penalty_with_large_beta_moves_less_than_with_small_beta():
    policy, batch = fixed_batch()
    kls = {}
    for beta in (0.01, 100.0):
        moved = copy.deepcopy(policy)
        cfg = KLPenaltyConfig(beta=beta, lr=1e-2, epochs=20)
        KLPenalty(moved, cfg, 0.99, torch.Generator().manual_seed(0)).update(batch)
        kls[beta] = kl_after(moved, batch)
    assert kls[100.0] < 0.5 * kls[0.01]
    assert kls[100.0] > 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_kl_penalty_with_beta_zero_and_one_epoch_takes_the_vpg_step(optimizer):
    policy, batch = fixed_batch()
    a, b = copy.deepcopy(policy), copy.deepcopy(policy)
    KLPenalty(a, KLPenaltyConfig(beta=0.0, lr=3e-3, epochs=1, minibatches=1,
                                 optimizer=optimizer), 0.99, torch.Generator()).update(batch)
    VPG(b, VPGConfig(lr=3e-3, optimizer=optimizer, steps=1)).update(batch)
    start = flat_params(policy.actor_parameters())
    step_a = flat_params(a.actor_parameters()) - start
    step_b = flat_params(b.actor_parameters()) - start
    assert float(step_a.norm()) > 0
    torch.testing.assert_close(step_a, step_b, rtol=0, atol=0)


def test_npg_and_trpo_take_the_same_direction_and_only_trpo_respects_delta():
    # Gaussian policy, large delta: the quadratic KL model underestimates, NPG overshoots
    delta = 0.5
    policy, batch = fixed_batch("pendulum", seed=0, steps=1024)
    start = flat_params(policy.actor_parameters())
    steps, kls = {}, {}
    for line_search in (True, False):
        moved = copy.deepcopy(policy)
        cfg = TRPOConfig(delta=delta, cg_damping=1e-3, line_search=line_search)
        info = TRPO(moved, cfg).update(batch)
        assert info["trpo/accepted"] == 1.0
        steps[line_search] = flat_params(moved.actor_parameters()) - start
        kls[line_search] = kl_after(moved, batch)
    cosine = float(steps[True] @ steps[False] / (steps[True].norm() * steps[False].norm()))
    assert cosine == pytest.approx(1.0, abs=1e-5)
    assert kls[True] <= delta
    assert kls[False] > delta
    assert float(steps[True].norm()) < float(steps[False].norm())


def test_trpo_rejection_restores_the_exact_old_parameters():
    policy, batch = fixed_batch()
    before = flat_params(policy.actor_parameters()).clone()
    batch.policy_advantages = -batch.policy_advantages * 0  # no direction improves: all zero
    info = TRPO(policy, TRPOConfig(delta=0.01)).update(batch)
    assert info["trpo/accepted"] == 0.0
    assert torch.equal(flat_params(policy.actor_parameters()), before)


def test_trpo_line_search_rejects_when_the_surrogate_cannot_improve(monkeypatch):
    from trpo_lab.algos import trpo

    policy, batch = fixed_batch()
    before = flat_params(policy.actor_parameters()).clone()
    # flip the sign of the advantages in the line search's surrogate only: every trial step
    # along the ascent direction now lowers it, so all backtracks fail
    surrogate_runs = trpo.surrogate_runs

    def flipped(actor, stacked, params):
        return -surrogate_runs(actor, stacked, params)

    monkeypatch.setattr(trpo, "surrogate_runs", flipped)
    info = TRPO(policy, TRPOConfig(backtrack_iters=5)).update(batch)
    assert info == {"trpo/backtracks": 5.0, "trpo/accepted": 0.0, "trpo/step_norm": 0.0}
    assert torch.equal(flat_params(policy.actor_parameters()), before)
    monkeypatch.undo()
    info = TRPO(policy, TRPOConfig(backtrack_iters=5)).update(batch)
    assert info["trpo/accepted"] == 1.0  # the same update without the flip takes a step


def test_line_search_logs_the_improvement_it_tested():
    """trpo/surrogate_tested is the tested objective's improvement at the accepted step: the
    standardised surrogate's by default, the dL estimate's (= surrogate/improvement) with
    line_search_on=dL; when the two disagree in sign, each mode accepts only what its own
    objective says improves; NPG tests nothing and logs nothing."""
    from trpo_lab.algos.common import predicted_improvement, surrogate

    policy, batch = fixed_batch()
    old_surrogate = float((batch.weights * batch.policy_advantages).sum())
    for mode in ("standardized", "dL"):
        moved = copy.deepcopy(policy)
        info = TRPO(moved, TRPOConfig(line_search_on=mode)).update(batch)
        assert info["trpo/accepted"] == 1.0
        with torch.no_grad():
            expected = float(predicted_improvement(moved, batch)) if mode == "dL" else \
                float(surrogate(moved, batch)) - old_surrogate
        assert info["trpo/surrogate_tested"] > 0
        assert info["trpo/surrogate_tested"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    # raw advantages of the opposite sign: the standardised step lowers dL
    batch.advantages = -batch.advantages
    moved = copy.deepcopy(policy)
    info = TRPO(moved, TRPOConfig()).update(batch)
    with torch.no_grad():
        assert info["trpo/accepted"] == 1.0 and float(predicted_improvement(moved, batch)) < 0
    before = flat_params(policy.actor_parameters()).clone()
    info = TRPO(policy, TRPOConfig(line_search_on="dL")).update(batch)
    assert info == {"trpo/backtracks": 10.0, "trpo/accepted": 0.0, "trpo/step_norm": 0.0}
    assert torch.equal(flat_params(policy.actor_parameters()), before)
    info = TRPO(copy.deepcopy(policy), TRPOConfig(line_search=False)).update(batch)
    assert "trpo/surrogate_tested" not in info and info["trpo/accepted"] == 1.0


def test_ppo_clipped_objective_matches_hand_computation():
    ratios = torch.tensor([0.5, 0.9, 1.1, 1.5, 1.5, 0.7])
    adv = torch.tensor([1.0, -2.0, 3.0, 2.0, -1.0, -1.0])
    weights = torch.full((6,), 1 / 6)
    # clip 0.2: min(r A, clip(r) A) per sample
    expected = [min(0.5 * 1, 0.8 * 1), min(0.9 * -2, 0.9 * -2), min(1.1 * 3, 1.1 * 3),
                min(1.5 * 2, 1.2 * 2), min(1.5 * -1, 1.2 * -1), min(0.7 * -1, 0.8 * -1)]
    value = clipped_surrogate(ratios, adv, weights, 0.2)
    assert float(value) == pytest.approx(np.mean(expected), rel=1e-6)


@pytest.mark.parametrize("step_length", ["undamped", "damped"])
@pytest.mark.parametrize("line_search", [False, True])
def test_trpo_step_is_the_closed_form_natural_step_of_the_dense_fisher(line_search,
                                                                        step_length):
    """Independent of the hand-written derivatives and of CG's code: on a tiny float64 policy
    (31 parameters) F is the dense Hessian of the mean KL at theta_old (autograd), g the
    surrogate's gradient, s = (F + damping I)^-1 g solved exactly, and the full step is
    sqrt(2 delta / s^T M s) s with M = F (step_length=undamped) or M = F + damping I (damped).
    NPG takes it; TRPO takes it times backtrack_coef^k for the k it reports, with the measured
    KL within delta."""
    import gymnasium as gym
    from torch.func import functional_call

    from trpo_lab.config import PolicyConfig
    from trpo_lab.numerics import categorical_kl
    from trpo_lab.rollout import Batch

    torch.manual_seed(3)
    policy = Policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(3),
                    PolicyConfig(hidden_sizes=[4]), [4]).double()
    with torch.no_grad():  # logits far from uniform, so F is far from a multiple of I
        for p in policy.actor.parameters():
            p.copy_(torch.randn_like(p))
    n = 64
    obs = torch.randn(n, 3, dtype=torch.float64)
    actions = torch.randint(0, 3, (n,))
    # large advantages: CG stops at an absolute r.r <= 1e-10, which at |g| = 0.55 leaves the
    # direction 1.3e-5 (relative) from the exact solve; at |g| = 550 it is within 1e-8
    advantages = 1000.0 * torch.randn(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    with torch.no_grad():
        old_params = policy.dist_params(obs)
        old_log_prob = policy.head.log_prob(old_params, actions)
    batch = Batch(obs, actions, advantages, advantages, advantages, weights, weights,
                  old_params, old_log_prob, advantages)
    names = [name for name, _ in policy.actor.named_parameters()]
    shapes = [p.shape for p in policy.actor.parameters()]
    theta_old = flat_params(policy.actor_parameters()).clone()

    def logits(theta):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        params = {k: c.view(s) for k, c, s in zip(names, chunks, shapes)}
        return functional_call(policy.actor, params, (obs,))

    def mean_kl(theta):
        return (weights * categorical_kl(old_params, logits(theta))).sum()

    def surrogate(theta):
        log_prob = torch.log_softmax(logits(theta), -1).gather(1, actions[:, None])[:, 0]
        return (weights * torch.exp(log_prob - old_log_prob) * advantages).sum()

    fisher = torch.autograd.functional.hessian(mean_kl, theta_old)
    g = torch.autograd.functional.jacobian(surrogate, theta_old)
    size = theta_old.numel()
    cfg = TRPOConfig(delta=0.01, cg_damping=0.1, cg_iters=size, line_search=line_search,
                     backtrack_coef=0.8, step_length=step_length)
    damped = fisher + cfg.cg_damping * torch.eye(size, dtype=torch.float64)
    s = torch.linalg.solve(damped, g)
    metric = fisher if step_length == "undamped" else damped
    full_step = s * (2 * cfg.delta / float(s @ metric @ s)) ** 0.5
    # the two lengths differ here by the factor sqrt(s^T (F + damping I) s / s^T F s)
    assert float(s @ damped @ s) / float(s @ fisher @ s) > 1.05
    info = TRPO(policy, cfg).update(batch)
    assert info["trpo/accepted"] == 1.0
    step = flat_params(policy.actor_parameters()) - theta_old
    expected = full_step * cfg.backtrack_coef ** info["trpo/backtracks"]
    assert float((step - expected).norm() / expected.norm()) < 1e-6  # CG's error: 1e-8
    if line_search:
        assert float(mean_kl(theta_old + step)) <= cfg.delta
    else:  # the quadratic model's KL of the full step (in the chosen metric) is delta exactly
        assert 0.5 * float(step @ metric @ step) == pytest.approx(cfg.delta, rel=1e-9)
