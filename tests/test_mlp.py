"""The hand-written MLP derivatives against autograd."""

import pytest
import torch
from torch import nn

from trpo_lab import mlp
from trpo_lab.policies import Tanh


@pytest.mark.parametrize("activation", [Tanh, nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("hidden", [[], [5], [6, 4]])
def test_jvp_and_vjp_match_autograd(activation, hidden):
    torch.manual_seed(0)
    sizes = [3, *hidden, 2]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=(i != 0 or bool(hidden))))
        if i < len(sizes) - 2:
            layers.append(activation())
    net = nn.Sequential(*layers).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    params = list(net.parameters())
    cache = mlp.forward_cache(net, x)
    torch.testing.assert_close(cache.output, net(x), rtol=1e-12, atol=1e-12)

    tangents = [torch.randn_like(p) for p in params]
    _, expected_jv = torch.func.jvp(
        lambda *ps: torch.func.functional_call(net, dict(zip(
            [n for n, _ in net.named_parameters()], ps)), (x,)), tuple(params), tuple(tangents))
    torch.testing.assert_close(mlp.jvp(net, cache, tangents), expected_jv, rtol=1e-10,
                               atol=1e-12)

    w = torch.randn(7, 2, dtype=torch.float64)
    expected = torch.autograd.grad(net(x), params, grad_outputs=w)
    for got, want in zip(mlp.vjp(net, cache, w), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("minibatches", [1, 4])
def test_critic_update_matches_autograd_adam_steps(minibatches):
    """Three epochs of the critic's update (the batched code, one run) against torch.optim.Adam
    on autograd gradients over the same minibatches: parameters, Adam's moments and its step
    count agree after every step's scale of gradient has mattered (12 steps with 4
    minibatches, from a critic far from its targets)."""
    import gymnasium as gym

    from trpo_lab.algos.common import minibatch_indices
    from trpo_lab.config import CriticConfig, PolicyConfig
    from trpo_lab.critic import CriticTrainer
    from trpo_lab.policies import Policy
    from trpo_lab.rollout import Batch

    torch.manual_seed(0)
    policy = Policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), PolicyConfig(), [8, 8])
    reference = Policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), PolicyConfig(), [8, 8])
    reference.load_state_dict(policy.state_dict())
    obs, targets = torch.randn(32, 3), 5.0 + 3.0 * torch.randn(32)
    cfg = CriticConfig(lr=1e-2, adam_eps=1e-5, epochs=3, minibatches=minibatches)
    trainer = CriticTrainer(policy, cfg, torch.Generator().manual_seed(7))
    zeros = torch.zeros(32)
    initial = [p.detach().clone() for p in policy.critic_parameters()]
    trainer.update(Batch(obs, zeros.long(), zeros, targets, zeros, zeros + 1 / 32, zeros,
                         torch.zeros(32, 2), zeros, zeros))
    optimizer = torch.optim.Adam(reference.critic_parameters(), lr=1e-2, eps=1e-5)
    order = torch.Generator().manual_seed(7)
    for _ in range(cfg.epochs):
        for index in minibatch_indices(32, minibatches, order):
            optimizer.zero_grad()
            ((reference.value(obs[index]) - targets[index]) ** 2).mean().backward()
            optimizer.step()
    params = reference.critic_parameters()
    for got, want in zip(policy.critic_parameters(), params):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    moved = torch.cat([(p - p0).reshape(-1) for p, p0 in zip(params, initial)])
    assert float(moved.norm()) > 0.05
    state = optimizer.state
    assert trainer.optimizer.steps == [3 * minibatches] * len(params)
    for m, v, p in zip(trainer.optimizer.m, trainer.optimizer.v, params):
        torch.testing.assert_close(m, state[p]["exp_avg"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(v, state[p]["exp_avg_sq"], rtol=1e-4, atol=1e-7)
