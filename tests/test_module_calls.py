"""trpo_lab.module_calls and the generic backend's layer plans: the cheap calls compute what
the modules compute."""

from __future__ import annotations

import copy

import torch
from torch import nn

from trpo_lab import module_calls
from trpo_lab.generic import StackedModule
from trpo_lab.module_calls import sequential_layers, snapshot_call, stacked_call
from trpo_lab.networks import ObservationView, Tanh, mlp


def nets(count: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [mlp(5, [7, 6], 3, "tanh", 0.5) for _ in range(count)]


class Custom(nn.Module):  # not a Sequential: called as it is
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


def test_sequential_layers_accepts_only_linear_and_parameter_free_elementwise_stacks():
    assert sequential_layers(nets(1)[0]) is not None
    assert sequential_layers(ObservationView(nets(1)[0], (5,))) is not None
    assert sequential_layers(ObservationView(nets(1)[0], (1, 5))) is None
    assert sequential_layers(nn.Sequential(nn.Linear(5, 4), nn.PReLU(), nn.Linear(4, 2))) is None
    assert sequential_layers(nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))) is None
    assert sequential_layers(Custom()) is None
    assert sequential_layers(nn.Sequential()) is None


def test_snapshot_call_is_the_module_to_the_bit():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    for net in (nets(1)[0], nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)),
                Custom()):
        with torch.no_grad():
            expected = net(x)
        got = snapshot_call(net)(x)
        assert not got.requires_grad
        assert torch.equal(got, expected)


def test_stacked_calls_are_each_module_on_its_own_rows():
    x = torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(2))
    for members in (nets(6), [Custom() for _ in range(3)], [Custom() for _ in range(6)],
                    nets(1)):
        # 6 Customs: more than LOOP_MAX, vmapped; 3: one by one
        assert len(members) != 6 or len(members) > module_calls.LOOP_MAX
        got = stacked_call(members)(x[:len(members)])
        assert got.shape == (len(members), 4, 3)
        for i, net in enumerate(members):
            with torch.no_grad():
                expected = net(x[i])
            torch.testing.assert_close(got[i], expected, rtol=1e-6, atol=1e-7)
            if len(members) <= module_calls.LOOP_MAX and not isinstance(net, nn.Sequential):
                assert torch.equal(got[i], expected)


def test_stacked_module_plan_equals_functional_call_with_its_gradient():
    members = [ObservationView(n, (5,)) for n in nets(3, seed=4)]
    members[0].net[1] = Tanh()
    planned = StackedModule.of(members)
    plain = StackedModule.of(members)
    plain.plan = None
    assert planned.plan is not None and len(planned.plan) == 5
    x = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(3))
    for rows in (1, 3):
        flat = planned.flat[:rows].clone().requires_grad_(True)
        out = planned.forward(flat, x[:rows])
        (grad,) = torch.autograd.grad(out.square().sum(), flat)
        flat2 = planned.flat[:rows].clone().requires_grad_(True)
        out2 = plain.forward(flat2, x[:rows])
        (grad2,) = torch.autograd.grad(out2.square().sum(), flat2)
        torch.testing.assert_close(out, out2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, grad2, rtol=1e-5, atol=1e-6)
        if rows == 1:
            assert torch.equal(out, out2) and torch.equal(grad, grad2)


def odd_stacks() -> list[nn.Sequential]:
    """Stacks that exercise every branch of sampling_steps: Tanh after a Linear with and
    without bias, Tanh after Tanh, activations first (on the caller's input), nn's own
    in-place-able activations, one that is not (GELU), float64."""
    torch.manual_seed(5)
    return [nn.Sequential(nn.Linear(5, 4, bias=False), Tanh(), Tanh(), nn.Linear(4, 3)),
            nn.Sequential(Tanh(), nn.ReLU(), nn.Linear(5, 4), nn.Sigmoid(), nn.Tanh(),
                          nn.Linear(4, 3)),
            nn.Sequential(nn.ReLU(), nn.Linear(5, 4), nn.GELU(), nn.ReLU(), nn.Linear(4, 3)),
            nn.Sequential(nn.Identity(), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(),
                          nn.Linear(4, 3)),
            mlp(5, [7, 6], 3, "tanh", 0.5).double()]


def test_sampling_plans_are_the_module_to_the_bit_and_leave_the_input_alone():
    gen = torch.Generator().manual_seed(6)
    for net in odd_stacks():
        dtype = next(net.parameters()).dtype
        x = 3.0 * torch.randn(9, 5, generator=gen, dtype=dtype)
        before = x.clone()
        with torch.no_grad():
            expected = net(x)
        got = snapshot_call(net)(x)
        assert torch.equal(got, expected)
        assert torch.equal(x, before)  # no step wrote into the caller's tensor
        xs = 3.0 * torch.randn(3, 9, 5, generator=gen, dtype=dtype)
        before = xs.clone()
        members = [net, *(copy.deepcopy(net) for _ in range(2))]
        for other in members[1:]:
            with torch.no_grad():
                for p in other.parameters():
                    p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=dtype))
        got = stacked_call(members)(xs)
        assert torch.equal(xs, before)
        # the same batched products with the layers as the modules compute them: to the bit
        stacked = [(torch.stack([m.weight.detach() for m in linears]).transpose(1, 2),
                    None if linears[0].bias is None else
                    torch.stack([m.bias.detach() for m in linears])[:, None])
                   for linears in zip(*([m for m in member if isinstance(m, nn.Linear)]
                                        for member in members))]
        with torch.no_grad():
            plain = [None if isinstance(layer, nn.Linear) else layer for layer in net]
            assert torch.equal(got, module_calls.run_layers(plain, stacked, xs))
        for i, member in enumerate(members):  # each member alone: up to the batched rounding
            with torch.no_grad():
                torch.testing.assert_close(got[i], member(xs[i]), rtol=1e-6, atol=1e-6)


def test_sampling_steps_fold_tanhs_factor_two_into_the_linear_before_it():
    net = nets(1)[0]  # Linear, Tanh, Linear, Tanh, Linear
    layers = sequential_layers(net)
    steps, weights = module_calls.sampling_steps(layers, module_calls._weights(layers))
    assert [s is None for s in steps] == [True, False, True, False, True]
    linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
    for k, ((weight_t, bias), linear) in enumerate(zip(weights, linears)):
        factor = 2.0 if k < 2 else 1.0  # the last Linear has no Tanh after it
        assert torch.equal(weight_t, factor * linear.weight.detach().t())
        assert weight_t.stride() == linear.weight.t().stride()  # the layout F.linear uses
        assert torch.equal(bias, factor * linear.bias.detach())
    relu = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    layers = sequential_layers(relu)
    steps, _ = module_calls.sampling_steps(layers, module_calls._weights(layers))
    assert steps[1] is torch.relu_
