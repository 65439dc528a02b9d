"""The batched numerics (trpo_lab.batched): every run's result is its unbatched formula's.

Closed forms where there are some (CG against a direct solve, the Fisher-vector product
against the explicit Hessian of each run's KL, KL against its formula, GAE by hand), and the
single-run functions otherwise (to the bit, where the group's equivalence depends on it).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.test_numerics import _dist_params_with
from trpo_lab import mlp
from trpo_lab.algos.trpo import TRPO, fisher_vector_product, trpo_update_runs
from trpo_lab.batched import (
    StackedActor,
    StackedBatch,
    StackedNet,
    conjugate_gradient_runs,
    fisher_vector_product_runs,
    mean_kl_runs,
    stacked_jvp,
    stacked_vjp,
)
from trpo_lab.config import PolicyConfig, TRPOConfig
from trpo_lab.numerics import conjugate_gradient_residual, flat_params, gae
from trpo_lab.policies import Policy
from trpo_lab.rollout import RolloutData, build_batch, build_batches, finish_batch


def spd(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    m = rng.normal(size=(n, n))
    return m @ m.T + shift * np.eye(n)


def test_batched_cg_solves_each_runs_system():
    rng = np.random.default_rng(0)
    a = torch.tensor(np.stack([spd(rng, 10, s) for s in (10.0, 1.0, 0.01)]))
    b = torch.tensor(rng.normal(size=(3, 10)))
    x, r = conjugate_gradient_runs(lambda v: torch.einsum("rij,rj->ri", a, v), b, iters=10,
                                   residual_tol=1e-30)
    for i in range(3):
        np.testing.assert_allclose(x[i].numpy(), np.linalg.solve(a[i].numpy(), b[i].numpy()),
                                   rtol=1e-6)
        torch.testing.assert_close(r[i], b[i] - a[i] @ x[i], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("iters", [1, 3, 8])
def test_batched_cg_equals_single_cg_per_row_also_when_rows_stop_early(iters):
    """Row 1 is solved at once (b an eigenvector): it stops while the others go on."""
    rng = np.random.default_rng(iters)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    mats = [spd(rng, 8, 0.1), q @ np.diag(np.arange(1.0, 9.0)) @ q.T, spd(rng, 8, 2.0)]
    a = torch.tensor(np.stack(mats))
    b = torch.tensor(rng.normal(size=(3, 8)))
    b[1] = torch.tensor(q[:, 2])
    x, r = conjugate_gradient_runs(lambda v: torch.einsum("rij,rj->ri", a, v), b, iters)
    for i in range(3):
        xi, ri = conjugate_gradient_residual(lambda v, i=i: a[i] @ v, b[i], iters)
        torch.testing.assert_close(x[i], xi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r[i], ri, rtol=1e-9, atol=1e-10)  # both near 0 at the end
    np.testing.assert_allclose((a[1] @ x[1]).numpy(), b[1].numpy(), atol=1e-10)


def policies(space: str, n: int, dtype=torch.float64) -> list[Policy]:
    obs_space = gym.spaces.Box(-1, 1, (3,))
    act_space = gym.spaces.Discrete(3) if space == "discrete" else gym.spaces.Box(-1, 1, (2,))
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        policy = Policy(obs_space, act_space, PolicyConfig(name="mlp", hidden_sizes=[5]), [4])
        out.append(policy.to(dtype))
    return out


def batches(policies_: list[Policy], space: str, size: int, dtype=torch.float64):
    out = []
    for seed, policy in enumerate(policies_):
        g = torch.Generator().manual_seed(100 + seed)
        obs = torch.randn(size, 3, dtype=dtype, generator=g)
        actions = torch.randint(0, 3, (size,), generator=g) if space == "discrete" else \
            torch.randn(size, 2, dtype=dtype, generator=g)
        adv = torch.randn(size, dtype=dtype, generator=g)
        w = torch.rand(size, dtype=dtype, generator=g)
        w = w / w.sum()
        out.append(finish_batch(policy, obs, actions, adv, adv, adv, w, w, False, False))
    return out


@pytest.mark.parametrize("space", ["discrete", "box"])
def test_batched_fvp_matches_each_runs_explicit_kl_hessian(space):
    pols = policies(space, 3)
    bats = batches(pols, space, 7)
    actor, _ = StackedActor.of(pols)
    damping = torch.tensor([0.1, 0.0, 1.0], dtype=torch.float64)
    fvp = fisher_vector_product_runs(actor, StackedBatch.of(bats), damping)
    v = torch.randn(3, actor.net.size + (2 if space == "box" else 0), dtype=torch.float64)
    product = fvp(v)
    for i, (policy, batch) in enumerate(zip(pols, bats)):
        params = policy.actor_parameters()
        names = {id(p): n for n, p in policy.named_parameters()}
        sizes = [p.numel() for p in params]

        def kl_of(flat, policy=policy, batch=batch, names=names, sizes=sizes, params=params):
            chunks = torch.split(flat, sizes)
            new = _dist_params_with(policy, {names[id(p)]: c.view_as(p)
                                             for p, c in zip(params, chunks)}, batch.obs)
            return (policy.head.kl(batch.old_params, new) * batch.weights).sum()

        hessian = torch.autograd.functional.hessian(kl_of, flat_params(params))
        np.testing.assert_allclose(product[i].numpy(),
                                   (hessian @ v[i] + float(damping[i]) * v[i]).numpy(),
                                   rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("space", ["discrete", "box"])
def test_batched_fvp_is_the_single_runs_to_the_bit(space):
    pols = policies(space, 3, torch.float32)
    bats = batches(pols, space, 64, torch.float32)
    actor, _ = StackedActor.of(pols)
    fvp = fisher_vector_product_runs(actor, StackedBatch.of(bats),
                                     torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64))
    v = torch.randn(3, actor.net.size + (2 if space == "box" else 0))
    product = fvp(v)
    for i, (policy, batch) in enumerate(zip(pols, bats)):
        assert torch.equal(product[i], fisher_vector_product(policy, batch, 0.1)(v[i].clone()))


def test_batched_kl_matches_the_gaussian_formula_per_run():
    pols = policies("box", 2)
    bats = batches(pols, "box", 5)
    actor, theta = StackedActor.of(pols)
    sb = StackedBatch.of(bats)
    moved = theta + 0.05 * torch.randn_like(theta)
    kl = mean_kl_runs(actor, sb, actor.dist_params(moved, sb.obs))
    new = actor.dist_params(moved, sb.obs)
    for i in range(2):
        m_p, s_p = sb.old_params[i, :, :2], sb.old_params[i, :, 2:].exp()
        m_q, s_q = new[i, :, :2], new[i, :, 2:].exp()
        per_state = (torch.log(s_q / s_p) + (s_p**2 + (m_p - m_q) ** 2) / (2 * s_q**2)
                     - 0.5).sum(-1)
        torch.testing.assert_close(kl[i], (sb.weights[i] * per_state).sum(), rtol=1e-12,
                                   atol=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_stacked_jvp_and_vjp_are_mlps_per_run(activation):
    torch.manual_seed(0)
    nets = [mlp_net(activation) for _ in range(3)]
    stacked = StackedNet.of(nets)
    x = torch.randn(3, 32, 4)
    cache = stacked.forward_cache(x.numpy())
    tangents = stacked.split(torch.randn(3, stacked.size))
    cotangent = torch.randn(3, 32, 2)
    out, back = stacked_jvp(cache, tangents), stacked_vjp(cache, cotangent)
    for i, net in enumerate(nets):
        single = mlp.forward_cache(net, x[i])
        assert np.array_equal(cache.output[i], single.output_array)
        assert torch.equal(out[i], mlp.jvp(net, single, [t[i] for t in tangents]))
        for mine, theirs in zip(back, mlp.vjp(net, single, cotangent[i])):
            assert torch.equal(mine[i], theirs)


def mlp_net(activation: str) -> torch.nn.Sequential:
    act = torch.nn.Tanh() if activation == "tanh" else torch.nn.ReLU()
    return torch.nn.Sequential(torch.nn.Linear(4, 6), act, torch.nn.Linear(6, 2))


def test_batched_gae_uses_each_runs_gamma_and_lambda():
    rng = np.random.default_rng(3)
    T, N = 6, 2  # noqa: N806
    datas, pols = [], policies("discrete", 2, torch.float32)
    for _ in range(2):
        done = np.zeros((T, N), bool)
        done[2, 0] = True
        datas.append(RolloutData(rng.normal(size=(T, N, 3)).astype(np.float32),
                                 rng.integers(0, 3, (T, N)), rng.normal(size=(T, N)),
                                 done.copy(), done, np.tile(np.arange(T)[:, None], (1, N)),
                                 rng.normal(size=(N, 3)).astype(np.float32), [(2, 0)],
                                 rng.normal(size=(1, 3)).astype(np.float32), None))
    together = build_batches(pols, datas, [0.9, 0.5], [0.95, 0.0], False)
    for i, (policy, data, gamma, lam) in enumerate(zip(pols, datas, [0.9, 0.5], [0.95, 0.0])):
        alone = build_batch(policy, data, gamma, lam, False)
        assert torch.equal(together[i].advantages, alone.advantages)
        assert torch.equal(together[i].dl_weights, alone.dl_weights)
    # lambda 0: the advantage is the one-step TD error r + gamma V(s') (1 - term) - V(s)
    with torch.no_grad():
        def value(x):
            return pols[1].value(torch.as_tensor(x)).double().numpy()

        v = value(datas[1].obs.reshape(T * N, 3)).reshape(T, N)
        next_v = np.vstack([v[1:], value(datas[1].last_obs)[None]])
        next_v[2, 0] = value(datas[1].final_obs)[0]
    expected = datas[1].rewards + 0.5 * (1 - datas[1].terminated) * next_v - v
    np.testing.assert_allclose(together[1].advantages.numpy().reshape(T, N), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gae(datas[1].rewards, v, next_v, datas[1].terminated,
                                   datas[1].done, 0.5, 0.0), expected, rtol=1e-12)


@pytest.mark.parametrize("line_search", [True, False])
def test_batched_trpo_update_is_each_runs_own_update(line_search):
    """Three runs with their own delta, damping and backtracking factor: each one's new
    parameters and info are those of TRPO.update alone (to the bit); a delta too small for any
    step is rejected (old parameters exactly) while the others are accepted."""
    import copy

    pols = policies("discrete", 3, torch.float32)
    bats = batches(pols, "discrete", 64, torch.float32)
    cfgs = [TRPOConfig(delta=0.01, cg_damping=0.1, backtrack_coef=0.8, line_search=line_search),
            TRPOConfig(delta=0.05, cg_damping=0.01, backtrack_coef=0.5,
                       line_search=line_search),
            TRPOConfig(delta=1e-9, cg_damping=0.1, backtrack_coef=0.9, backtrack_iters=2,
                       line_search=line_search)]
    cfgs[2].backtrack_iters = cfgs[0].backtrack_iters
    alone = [copy.deepcopy(p) for p in pols]
    before = [flat_params(p.actor_parameters()) for p in pols]
    infos = trpo_update_runs(pols, bats, cfgs)
    for i in range(3):
        expected = TRPO(alone[i], cfgs[i]).update(bats[i])
        assert infos[i] == expected
        assert torch.equal(flat_params(pols[i].actor_parameters()),
                           flat_params(alone[i].actor_parameters()))
    assert infos[0]["trpo/accepted"] == 1.0 and infos[1]["trpo/accepted"] == 1.0
    if line_search:
        assert infos[2]["trpo/accepted"] == 0.0
        assert torch.equal(flat_params(pols[2].actor_parameters()), before[2])
