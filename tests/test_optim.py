"""Our Adam and SGD take exactly torch.optim's steps."""

import pytest
import torch

from trpo_lab.optim import SGD, Adam


@pytest.mark.parametrize("ours,theirs", [(Adam, torch.optim.Adam), (SGD, torch.optim.SGD)])
def test_steps_match_torch_optim(ours, theirs):
    torch.manual_seed(0)
    a = [torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    opt_a, opt_b = ours(a, lr=0.05), theirs(b, lr=0.05)
    for step in range(20):
        for params, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss = (params[0].sin().sum() * params[1].cos().sum()) ** 2 + step * params[1].sum()
            loss.backward()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_adam_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    p = torch.randn(5, requires_grad=True)
    opt = Adam([p], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step()
    q = p.detach().clone().requires_grad_(True)
    clone = Adam([q], lr=0.1)
    clone.load_state_dict(opt.state_dict())
    for params, optimizer in ((p, opt), (q, clone)):
        optimizer.zero_grad()
        (params**2).sum().backward()
        optimizer.step()
    assert torch.equal(p, q)


def test_adam_with_some_gradients_missing_matches_torch_on_the_others():
    """A parameter without a gradient is skipped (torch.optim.Adam's rule); the flat fast path
    and the per-tensor path share one state, so switching between them is exact."""
    torch.manual_seed(1)
    a = [torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    ours, theirs = Adam(a, lr=0.05), torch.optim.Adam(b, lr=0.05)
    for step in range(12):
        for params, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            loss = (params[0] ** 2).sum() * (1 + step)
            if step % 3 == 0:  # both parameters take part in every third step only
                loss = loss + params[1].sin().sum()
            loss.backward()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
