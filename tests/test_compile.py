"""torch.compile (fullgraph, no graph break) and torch.library.opcheck on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, reference, run_layer_norm
from torch import nn

import fastln


def _opcheck_samples():
    x = torch.randn(4, 6, 8)
    w, b = torch.randn(8), torch.randn(8)
    yield torch.ops.fastln.layer_norm_fwd, (x, [8], w, b, 1e-5)
    yield torch.ops.fastln.layer_norm_fwd, (x, [6, 8], None, None, 1e-5)
    yield torch.ops.fastln.layer_norm_fwd, (x.bfloat16(), [8], w, b, 1e-5)
    yield torch.ops.fastln.layer_norm_fwd, (x.double(), [8], w.double(), None, 0.0)
    yield torch.ops.fastln.layer_norm_fwd, (x.bfloat16(), [8], w, b, 1e-5, torch.float32)

    # The op fastln.layer_norm calls, with its C++ autograd: opcheck also
    # checks the autograd registration and traces its backward (aot_dispatch).
    def grad(t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone().requires_grad_()

    yield torch.ops.fastln.layer_norm, (grad(x), [8], grad(w), grad(b), 1e-5)
    yield torch.ops.fastln.layer_norm, (grad(x), [6, 8], None, None, 1e-5)
    yield torch.ops.fastln.layer_norm, (x, [8], grad(w), None, 1e-5)
    yield torch.ops.fastln.layer_norm, (x, [8], None, grad(b), 1e-5)
    yield torch.ops.fastln.layer_norm, (grad(x.bfloat16()), [8], grad(w), grad(b), 1e-5)
    yield torch.ops.fastln.layer_norm, (x.double(), [8], w.double(), b.double(), 0.0)
    # float32 output of 16-bit input (CUDA autocast's layer norm)
    yield (
        torch.ops.fastln.layer_norm,
        (grad(x.bfloat16()), [8], grad(w), grad(b), 1e-5, torch.float32),
    )
    _, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [8], w, b, 1e-5)
    dy = torch.randn_like(x)
    yield torch.ops.fastln.layer_norm_bwd, (dy, x, [8], mean, rstd, w, b, [True, True, True])
    yield torch.ops.fastln.layer_norm_bwd, (dy, x, [8], mean, rstd, w, b, [True, False, True])
    _, mean16, rstd16 = torch.ops.fastln.layer_norm_fwd(x.bfloat16(), [8], w, b, 1e-5)
    yield (
        torch.ops.fastln.layer_norm_bwd,
        (dy, x.bfloat16(), [8], mean16, rstd16, w, b, [True, True, True]),
    )
    yield (
        torch.ops.fastln.layer_norm_bwd,
        (dy, x, [8], mean, rstd, None, None, [True, False, False]),
    )


@pytest.mark.parametrize("op,args", list(_opcheck_samples()))
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="inductor")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compile_functional_fullgraph(dtype):
    def f(x, w, b):
        return fastln.layer_norm(x * 2, (32,), w, b, 1e-5).relu()

    x = torch.randn(8, 32, dtype=dtype)
    w, b = torch.randn(32, dtype=dtype), torch.randn(32, dtype=dtype)
    g = torch.randn(8, 32, dtype=dtype)
    got = run_layer_norm(lambda x, ns, w, b, eps: _compiled(f)(x, w, b), x, (32,), w, b, 1e-5, g)
    want = run_layer_norm(lambda x, ns, w, b, eps: f(x, w, b), x, (32,), w, b, 1e-5, g)
    for a, e in zip(got, want):
        assert_close(a, e.double(), dtype, backward=True)


def test_compile_module_fullgraph_no_graph_break():
    model = nn.Sequential(nn.Linear(16, 24), fastln.LayerNorm(24), nn.GELU(), nn.Linear(24, 4))
    x = torch.randn(5, 16, requires_grad=True)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    compiled = _compiled(model)
    y = compiled(x)
    y.sum().backward()
    gx = x.grad.clone()
    x.grad = None
    model(x).sum().backward()
    torch.testing.assert_close(y, model(x))
    torch.testing.assert_close(gx, x.grad)


def test_compile_dynamic_shapes():
    compiled = torch.compile(lambda x: fastln.layer_norm(x, (40,)), fullgraph=True, dynamic=True)
    for rows in (3, 7, 12):
        x = torch.randn(rows, 40)
        assert_close(compiled(x), reference(x, (40,), None, None, 1e-5, None)[0], torch.float32)


def test_compile_reports_bad_shape_at_trace_time():
    compiled = torch.compile(lambda x: fastln.layer_norm(x, [2]), fullgraph=True)
    with pytest.raises(Exception, match=r"Given normalized_shape=\[2\]"):
        compiled(torch.randn(4, 2, 3))
