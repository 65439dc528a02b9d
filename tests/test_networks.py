"""The network seam (trpo_lab.networks) and the generic backend (trpo_lab.generic).

The generic Fisher-vector product against double backward of the mean KL for an MLP, a CNN
and a custom module with LayerNorm and a residual connection; the generic backend's TRPO
update against the hand-written one on the same MLP and batch; a group of generic runs against
its runs alone (TRPO and the critic); the CNN's channel order and uint8 scaling; the module
contract's refusals.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from tests.nets import ResidualNet
from trpo_lab.algos.trpo import fisher_vector_product, trpo_update_runs
from trpo_lab.batched import StackedActor, StackedBatch, StackedNet, fisher_vector_product_runs
from trpo_lab.config import ConfigError, CriticConfig, PolicyConfig, TRPOConfig
from trpo_lab.critic import CriticTrainer, critic_update_runs
from trpo_lab.generic import GenericStackedActor
from trpo_lab.networks import ConvNet, fast_layout
from trpo_lab.numerics import flat_params
from trpo_lab.policies import ModuleActor, NumpyActor, Policy
from trpo_lab.rollout import finish_batch

IMAGE = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
VECTOR = gym.spaces.Box(-1, 1, (5,))
RESIDUAL = {"_target_": "tests.nets.ResidualNet", "width": 6}


def make_policy(kind: str, action: str, seed: int, dtype=torch.float64, backend="auto"):
    torch.manual_seed(seed)
    act = gym.spaces.Discrete(3) if action == "discrete" else gym.spaces.Box(-1, 1, (2,))
    if kind == "cnn":
        cfg = PolicyConfig(name="cnn", channels=[4, 4], hidden_sizes=[8], activation="relu",
                           backend=backend)
        obs = IMAGE
    elif kind == "module":
        cfg = PolicyConfig(name="module", actor=dict(RESIDUAL), critic=dict(RESIDUAL),
                           backend=backend)
        obs = VECTOR
    else:
        cfg = PolicyConfig(name="mlp", hidden_sizes=[6, 6], backend=backend)
        obs = VECTOR
    return Policy(obs, act, cfg, [5]).to(dtype), obs


def observations(space, size: int, generator: torch.Generator, dtype) -> torch.Tensor:
    if space is IMAGE:
        return torch.randint(0, 256, (size, int(np.prod(space.shape))),
                             generator=generator).to(dtype)
    return torch.randn(size, int(np.prod(space.shape)), generator=generator, dtype=dtype)


def make_batch(policy: Policy, space, action: str, size: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(100 + seed)
    obs = observations(space, size, g, dtype)
    actions = torch.randint(0, 3, (size,), generator=g) if action == "discrete" else \
        torch.randn(size, 2, dtype=dtype, generator=g)
    adv = torch.randn(size, dtype=dtype, generator=g)
    w = torch.rand(size, dtype=dtype, generator=g)
    w = w / w.sum()
    return finish_batch(policy, obs, actions, adv, adv + 1.0, adv, w, w, False, False)


def kl_hvp(policy: Policy, batch, v: torch.Tensor) -> torch.Tensor:
    """H v, H the Hessian of the mean KL(pi_old || pi) at pi_old, by double backward."""
    params = policy.actor_parameters()
    kl = (batch.weights * policy.head.kl(batch.old_params, policy.dist_params(batch.obs))).sum()
    grads = torch.autograd.grad(kl, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad(flat @ v, params)
    return torch.cat([h.reshape(-1) for h in hv])


@pytest.mark.parametrize("action", ["discrete", "box"])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "module"])
def test_generic_fvp_is_double_backward_of_the_mean_kl(kind, action):
    policy, space = make_policy(kind, action, 0, backend="generic")
    assert not policy.fast_actor
    batch = make_batch(policy, space, action, 12, 0)
    n = sum(p.numel() for p in policy.actor_parameters())
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = kl_hvp(policy, batch, v)
    got = fisher_vector_product(policy, batch, damping=0.0)(v)
    assert float(expected.norm()) > 1e-6  # a real product, not two zeros
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
    damped = fisher_vector_product(policy, batch, damping=0.3)(v)
    torch.testing.assert_close(damped, expected + 0.3 * v, rtol=1e-6,
                               atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("action", ["discrete", "box"])
def test_generic_and_fast_backends_take_the_same_trpo_step_on_an_mlp(action):
    fast, space = make_policy("mlp", action, 3, torch.float32, backend="fast")
    slow, _ = make_policy("mlp", action, 3, torch.float32, backend="generic")
    assert fast.fast_actor and not slow.fast_actor
    assert torch.equal(flat_params(fast.actor_parameters()), flat_params(slow.actor_parameters()))
    batch = make_batch(fast, space, action, 256, 3, torch.float32)
    cfg = TRPOConfig(delta=0.02)
    info_fast = trpo_update_runs([fast], [batch], [cfg])[0]
    info_slow = trpo_update_runs([slow], [batch], [cfg])[0]
    assert info_fast["trpo/accepted"] == info_slow["trpo/accepted"] == 1.0
    assert info_fast["trpo/backtracks"] == info_slow["trpo/backtracks"]
    theta_fast = flat_params(fast.actor_parameters())
    theta_slow = flat_params(slow.actor_parameters())
    assert float((theta_fast - flat_params(make_policy("mlp", action, 3, torch.float32)[0]
                                           .actor_parameters())).norm()) > 1e-3  # it moved
    torch.testing.assert_close(theta_slow, theta_fast, rtol=1e-5, atol=1e-5)
    assert info_slow["trpo/step_norm"] == pytest.approx(info_fast["trpo/step_norm"], rel=1e-5)


@pytest.mark.parametrize("kind", ["module", "cnn"])
def test_a_group_of_generic_runs_equals_its_runs_alone(kind):
    action = "box" if kind == "module" else "discrete"
    cfgs = [TRPOConfig(delta=d, cg_damping=c) for d, c in ((0.01, 0.1), (0.05, 0.01), (0.002, 1))]
    # float64: in float32 the stacked products' rounding (vmap's batched matmuls) differs from
    # a lone run's by 1e-7, which conjugate gradient amplifies to 1e-4 in the step
    group = [make_policy(kind, action, s)[0] for s in range(3)]
    alone = [make_policy(kind, action, s)[0] for s in range(3)]
    space = make_policy(kind, action, 0)[1]
    batches = [make_batch(p, space, action, 64, s) for s, p in enumerate(group)]
    infos = trpo_update_runs(group, batches, cfgs)
    for r in range(3):
        info = trpo_update_runs([alone[r]], [batches[r]], [cfgs[r]])[0]
        assert info["trpo/backtracks"] == infos[r]["trpo/backtracks"]
        assert info["trpo/accepted"] == infos[r]["trpo/accepted"]
        torch.testing.assert_close(flat_params(group[r].actor_parameters()),
                                   flat_params(alone[r].actor_parameters()), rtol=1e-9,
                                   atol=1e-11)
    assert sum(i["trpo/accepted"] for i in infos) >= 2
    # the critic: Adam over epochs and minibatches, each run its own generator and step size
    if kind == "module":
        critic_cfg = CriticConfig(lr=3e-3, epochs=3, minibatches=4)
        trainers = [CriticTrainer(p, critic_cfg, torch.Generator().manual_seed(r))
                    for r, p in enumerate(group)]
        rows = critic_update_runs(trainers, batches)
        for r in range(3):
            single = CriticTrainer(alone[r], critic_cfg, torch.Generator().manual_seed(r))
            row = single.update(batches[r])
            assert row["value/loss"] == pytest.approx(rows[r]["value/loss"], rel=1e-9)
            torch.testing.assert_close(flat_params(group[r].critic_parameters()),
                                       flat_params(alone[r].critic_parameters()),
                                       rtol=1e-9, atol=1e-11)


def test_generic_critic_steps_equal_the_fast_ones_on_an_mlp_critic():
    fast, space = make_policy("mlp", "discrete", 5, torch.float32, backend="fast")
    slow, _ = make_policy("mlp", "discrete", 5, torch.float32, backend="generic")
    batch = make_batch(fast, space, "discrete", 128, 5, torch.float32)
    cfg = CriticConfig(lr=1e-2, epochs=4, minibatches=4)
    row_fast = CriticTrainer(fast, cfg, torch.Generator().manual_seed(0)).update(batch)
    row_slow = CriticTrainer(slow, cfg, torch.Generator().manual_seed(0)).update(batch)
    start = make_policy("mlp", "discrete", 5, torch.float32)[0]
    moved = flat_params(fast.critic_parameters()) - flat_params(start.critic_parameters())
    assert float(moved.norm()) > 1e-2
    torch.testing.assert_close(flat_params(slow.critic_parameters()),
                               flat_params(fast.critic_parameters()), rtol=1e-5, atol=1e-6)
    assert row_slow["value/loss"] == pytest.approx(row_fast["value/loss"], rel=1e-5)


def test_module_actor_samples_as_the_numpy_actor_and_stacks():
    policy, _ = make_policy("mlp", "discrete", 0, torch.float32, backend="fast")
    generic, _ = make_policy("mlp", "discrete", 0, torch.float32, backend="generic")
    numpy_actor, module_actor = policy.numpy_actor(), generic.numpy_actor()
    assert isinstance(numpy_actor, NumpyActor) and isinstance(module_actor, ModuleActor)
    obs = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    np.testing.assert_allclose(module_actor.forward(obs), numpy_actor.forward(obs), rtol=1e-5,
                               atol=1e-6)
    # a snapshot: later training does not move it
    before = module_actor.forward(obs)
    with torch.no_grad():
        next(generic.actor.parameters()).add_(1.0)
    np.testing.assert_array_equal(module_actor.forward(obs), before)
    others = [make_policy("module", "box", s, torch.float32)[0].numpy_actor() for s in range(3)]
    stacked = NumpyActor.stack(others)
    x = np.random.default_rng(1).normal(size=(3, 7, 5)).astype(np.float32)
    noise = np.random.default_rng(2).standard_normal((3, 7, 2))
    together = stacked.sample_from_noise(x, noise)
    for r, actor in enumerate(others):
        np.testing.assert_allclose(together[r], actor.sample_from_noise(x[r], noise[r]),
                                   rtol=1e-5, atol=1e-6)


def test_cnn_detects_channel_order_and_scales_uint8():
    torch.manual_seed(0)
    last = ConvNet(gym.spaces.Box(0, 255, (9, 9, 3), np.uint8), 4, (5,), (6,))
    first = ConvNet(gym.spaces.Box(0, 255, (3, 9, 9), np.uint8), 4, (5,), (6,))
    floats = ConvNet(gym.spaces.Box(0, 1, (9, 9, 3), np.float32), 4, (5,), (6,))
    first.load_state_dict(last.state_dict())
    floats.load_state_dict(last.state_dict())
    assert last.features[0].kernel_size == (3, 3) and last.features[0].stride == (1, 1)
    image = torch.randint(0, 256, (2, 9, 9, 3)).float()
    out = last(image)
    torch.testing.assert_close(first(image.permute(0, 3, 1, 2)), out)
    torch.testing.assert_close(floats(image / 255.0), out)
    atari = ConvNet(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8), 6)
    assert atari.features[0].kernel_size == (4, 4) and atari.features[0].stride == (2, 2)
    assert atari(torch.zeros(1, 84, 84, 4)).shape == (1, 6)
    with pytest.raises(ConfigError, match="policy.channels"):
        ConvNet(gym.spaces.Box(0, 1, (4, 4, 1)), 2, (8, 8, 8))
    with pytest.raises(ConfigError, match="image observations"):
        ConvNet(VECTOR, 2)


def test_fast_layout_knows_only_linear_tanh_relu_stacks():
    assert fast_layout(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))) is None
    assert "Sigmoid" in fast_layout(nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(),
                                                  nn.Linear(3, 1)))
    assert "LayerNorm" in fast_layout(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3),
                                                    nn.Linear(3, 1)))
    assert fast_layout(ResidualNet(VECTOR, 2)) is not None
    with pytest.raises(TypeError, match="Sigmoid"):  # never treated as tanh again
        StackedNet.of([nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))])


def test_backend_choice_and_refusals():
    assert make_policy("mlp", "discrete", 0)[0].fast_actor  # auto: the hand-written path
    module_policy = make_policy("module", "discrete", 0)[0]
    assert not module_policy.fast_actor and not module_policy.fast_critic
    actor, _ = StackedActor.of([module_policy])
    assert isinstance(actor, GenericStackedActor)
    with pytest.raises(ConfigError, match="policy.backend"):
        make_policy("cnn", "discrete", 0, backend="fast")
    cfg = PolicyConfig(name="module", actor={"_target_": "tests.nets.PlainTanhMLP"},
                       backend="fast")
    with pytest.raises(ConfigError, match="policy.backend"):
        Policy(VECTOR, gym.spaces.Discrete(2), cfg, [4])
    for target, message in (("tests.nets.WrongOutput", r"\[N, 2\]"),
                            ("tests.nets.Missing", "no torch.nn.Module class"),
                            ("no_such_pkg.Net", "cannot import"),
                            ("ResidualNet", "package.module.Class")):
        cfg = PolicyConfig(name="module", actor={"_target_": target})
        with pytest.raises(ConfigError, match=message) as error:
            Policy(VECTOR, gym.spaces.Discrete(2), cfg, [4])
        assert error.value.key == "policy.actor._target_"
    cfg = PolicyConfig(name="module", actor={"_target_": "tests.nets.ResidualNet", "depth": 3})
    with pytest.raises(ConfigError, match="depth"):
        Policy(VECTOR, gym.spaces.Discrete(2), cfg, [4])


def test_stacked_fvp_dispatches_to_the_generic_backend_for_modules():
    pols = [make_policy("module", "discrete", s)[0] for s in range(2)]
    bats = [make_batch(p, VECTOR, "discrete", 9, s) for s, p in enumerate(pols)]
    actor, _ = StackedActor.of(pols)
    v = torch.randn(2, actor.flat.shape[1], dtype=torch.float64)
    product = fisher_vector_product_runs(actor, StackedBatch.of(bats),
                                         torch.tensor([0.0, 0.5], dtype=torch.float64))(v)
    for r in range(2):
        torch.testing.assert_close(product[r], kl_hvp(pols[r], bats[r], v[r]) + [0.0, 0.5][r]
                                   * v[r], rtol=1e-6, atol=1e-9)
