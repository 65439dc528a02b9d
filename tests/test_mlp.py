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


def test_critic_step_matches_an_autograd_adam_step():
    import gymnasium as gym

    from trpo_lab.config import CriticConfig, PolicyConfig
    from trpo_lab.critic import CriticTrainer
    from trpo_lab.policies import Policy
    from trpo_lab.rollout import Batch

    torch.manual_seed(0)
    policy = Policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), PolicyConfig(), [8, 8])
    reference = Policy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), PolicyConfig(), [8, 8])
    reference.load_state_dict(policy.state_dict())
    obs, targets = torch.randn(16, 3), torch.randn(16)
    trainer = CriticTrainer(policy, CriticConfig(lr=1e-2, adam_eps=1e-5, epochs=1,
                                                 minibatches=1), torch.Generator())
    zeros = torch.zeros(16)
    trainer.update(Batch(obs, zeros.long(), zeros, targets, zeros, zeros + 1 / 16, zeros,
                         torch.zeros(16, 2), zeros, zeros))
    optimizer = torch.optim.Adam(reference.critic_parameters(), lr=1e-2, eps=1e-5)
    loss = ((reference.value(obs) - targets) ** 2).mean()
    loss.backward()
    optimizer.step()
    for got, want in zip(policy.critic_parameters(), reference.critic_parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
