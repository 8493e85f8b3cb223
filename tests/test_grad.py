"""gradcheck and gradgradcheck in float64 (double backward uses the composite path)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fastln

CASES = [
    ((3, 5), (5,), True, True),
    ((2, 3, 4), (3, 4), True, True),
    ((4, 7), (7,), True, False),
    ((4, 7), (7,), False, False),
    ((2, 1), (1,), True, True),
    ((6, 33), (33,), True, True),
]


def _args(shape, ns, affine, with_bias):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ns, dtype=torch.float64, requires_grad=True) if affine else None
    b = torch.randn(ns, dtype=torch.float64, requires_grad=True) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("shape,ns,affine,with_bias", CASES, ids=str)
def test_gradcheck(shape, ns, affine, with_bias):
    x, w, b = _args(shape, ns, affine, with_bias)
    assert gradcheck(lambda x, w, b: fastln.layer_norm(x, ns, w, b, 1e-5), (x, w, b))


@pytest.mark.parametrize("shape,ns,affine,with_bias", CASES, ids=str)
def test_gradgradcheck(shape, ns, affine, with_bias):
    x, w, b = _args(shape, ns, affine, with_bias)
    assert gradgradcheck(lambda x, w, b: fastln.layer_norm(x, ns, w, b, 1e-5), (x, w, b))


def test_gradcheck_only_some_inputs_require_grad():
    x = torch.randn(4, 6, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64)
    assert gradcheck(lambda w: fastln.layer_norm(x, (6,), w, b), (w,))
    assert gradgradcheck(lambda w: fastln.layer_norm(x, (6,), w, b), (w,))


def test_double_backward_matches_torch():
    # Gradient-penalty style use: d/dx of ||d out/d x||^2.
    torch.manual_seed(1)
    x0 = torch.randn(5, 9, dtype=torch.float64)
    w0 = torch.randn(9, dtype=torch.float64)
    results = []
    for fn in (fastln.layer_norm, torch.nn.functional.layer_norm):
        x = x0.clone().requires_grad_()
        w = w0.clone().requires_grad_()
        y = fn(x, (9,), w, None, 1e-5)
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        gx.square().sum().backward()
        results.append((x.grad, w.grad))
    torch.testing.assert_close(results[0], results[1])
