"""chi2(pi' || pi) = E_pi[(pi'/pi - 1)^2] of every action head against enumeration, quadrature
and the Gaussian closed form."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from trpo_lab.chi_square import chi_square
from trpo_lab.heads import BernoulliHead, MultiCategoricalHead
from trpo_lab.policies import CategoricalHead, GaussianHead


def _by_enumeration(p: np.ndarray, q: np.ndarray) -> float:
    return float((q**2 / p).sum() - 1.0)


def test_categorical_and_multi_categorical_against_enumeration():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    got = chi_square(CategoricalHead(4), old, new)
    for i in range(5):
        p, q = (torch.softmax(x[i].double(), -1).numpy() for x in (old, new))
        assert got[i].item() == pytest.approx(_by_enumeration(p, q), rel=1e-12)
    head = MultiCategoricalHead([2, 3])
    old, new = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    got = chi_square(head, old, new)
    for i in range(3):
        joint = [np.outer(*(torch.softmax(z.double(), -1).numpy() for z in head.split(x[i])))
                 .ravel() for x in (old, new)]
        assert got[i].item() == pytest.approx(_by_enumeration(*joint), rel=1e-12)


def test_bernoulli_against_enumeration_of_every_bit_pattern():
    g = torch.Generator().manual_seed(1)
    old, new = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    got = chi_square(BernoulliHead(3), old, new)
    for i in range(2):
        po, pn = torch.sigmoid(old[i].double()).numpy(), torch.sigmoid(new[i].double()).numpy()
        bits = np.array(list(itertools.product([0, 1], repeat=3)))
        p = np.prod(np.where(bits, po, 1 - po), axis=1)
        q = np.prod(np.where(bits, pn, 1 - pn), axis=1)
        assert got[i].item() == pytest.approx(_by_enumeration(p, q), rel=1e-12)


def test_gaussian_closed_form_quadrature_and_infinite_variance():
    head = GaussianHead(1)
    # equal variances: chi2 = exp((m1 - m0)^2 / sigma^2) - 1
    sigma = 0.7
    old = torch.tensor([[0.2, math.log(sigma)]])
    new = torch.tensor([[0.5, math.log(sigma)]])
    assert chi_square(head, old, new).item() == pytest.approx(
        math.expm1(0.3**2 / sigma**2), rel=1e-6)
    # unequal variances: quadrature of q^2 / p on a fine grid
    m0, s0, m1, s1 = 0.1, 1.0, -0.4, 1.2
    x = np.linspace(-30, 30, 600_001)
    p = np.exp(-0.5 * ((x - m0) / s0) ** 2) / (s0 * math.sqrt(2 * math.pi))
    q = np.exp(-0.5 * ((x - m1) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
    quadrature = float(np.sum(q**2 / p) * (x[1] - x[0])) - 1.0
    got = chi_square(head, torch.tensor([[m0, math.log(s0)]], dtype=torch.float64),
                     torch.tensor([[m1, math.log(s1)]], dtype=torch.float64)).item()
    assert got == pytest.approx(quadrature, rel=1e-8)
    # two dimensions multiply; a new variance of 2 v0 or more has no finite chi2
    two = GaussianHead(2)
    both = chi_square(two, torch.tensor([[m0, m0, math.log(s0), math.log(s0)]]),
                      torch.tensor([[m1, m1, math.log(s1), math.log(s1)]]))
    assert both.item() == pytest.approx((1 + got) ** 2 - 1, rel=1e-6)
    wide = chi_square(head, torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.5 * math.log(2)]]))
    assert math.isinf(wide.item())


def test_unchanged_rows_are_exactly_zero():
    old = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    new = old.clone()
    new[1, 0] += 0.1
    got = chi_square(CategoricalHead(3), old, new)
    assert got[0].item() == 0.0 and got[2].item() == 0.0 and got[3].item() == 0.0
    assert got[1].item() > 0
