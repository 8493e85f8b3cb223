"""fastln wherever torch.nn.LayerNorm works: torch.func, forward AD, TorchScript,
ONNX, nested jagged tensors, autocast, torch.export/AOTInductor, checkpointing,
compiled autograd, tensor subclasses, vmap. (Multi-process: DDP, FSDP2 and
DTensor are in test_distributed.py; torch.compile and opcheck in test_compile.py.)

Each test runs the same thing with torch's layer norm and compares, and, where it
matters, checks that fastln's kernels (not a fallback) did the work.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import tolerance
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import fastln
from fastln import _transforms

NS = (8,)


def _close(actual, expected, dtype: torch.dtype = torch.float64, backward: bool = False) -> None:
    leaves_a = torch.utils._pytree.tree_leaves(actual)
    leaves_e = torch.utils._pytree.tree_leaves(expected)
    assert len(leaves_a) == len(leaves_e) > 0
    tol = tolerance(dtype, backward)
    for a, e in zip(leaves_a, leaves_e):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
        torch.testing.assert_close(a.double(), e.double(), atol=tol.atol, rtol=tol.rtol)


def _data(dtype: torch.dtype = torch.float64, m: int = 5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, *NS, generator=g).to(dtype) * 2 + 1
    w = torch.randn(NS, generator=g).to(dtype)
    b = torch.randn(NS, generator=g).to(dtype)
    return x, w, b


def _loss(ln: Callable) -> Callable:
    # sin(): a nonlinear loss, so that second derivatives are not trivial.
    return lambda x, w, b: ln(x, NS, w, b, 1e-5).sin().sum()


OURS, TORCH = _loss(fastln.layer_norm), _loss(F.layer_norm)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of fastln's forward and backward kernels from the
    torch.func path (fastln/_transforms.py)."""
    calls = {"fwd": 0, "bwd": 0}

    def counting(name, op):
        def call(*args):
            calls[name] += 1
            return op(*args)

        return call

    monkeypatch.setattr(_transforms, "_FWD", counting("fwd", _transforms._FWD))
    monkeypatch.setattr(_transforms, "_BWD", counting("bwd", _transforms._BWD))
    return calls


# --- torch.func -------------------------------------------------------------


@pytest.mark.parametrize("argnums", [0, (0, 1, 2)], ids=["x", "x,w,b"])
def test_func_grad_vjp_jacrev_use_the_kernels(argnums, kernel_calls):
    x, w, b = _data()
    _close(grad(OURS, argnums)(x, w, b), grad(TORCH, argnums)(x, w, b), backward=True)
    _close(jacrev(OURS, argnums)(x, w, b), jacrev(TORCH, argnums)(x, w, b), backward=True)
    one = torch.tensor(1.0, dtype=torch.float64)
    _close(vjp(OURS, x, w, b)[1](one), vjp(TORCH, x, w, b)[1](one), backward=True)
    assert kernel_calls["fwd"] == 3 and kernel_calls["bwd"] == 3, kernel_calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_func_grad_low_precision(dtype):
    x, _, _ = _data(dtype)
    w, b = _data(torch.float32)[1:]  # float32 parameters with 16-bit input

    def f(ln):
        return lambda x, w, b: ln(x, NS, w, b, 1e-5).float().square().sum()

    got = grad(f(fastln.layer_norm), (0, 1, 2))(x, w, b)
    want = grad(f(F.layer_norm), (0, 1, 2))(x, w, b)
    _close(got, want, dtype, backward=True)


def test_func_hessian_is_the_eager_double_backward():
    # Reference: torch's eager double backward of F.layer_norm. (torch.func.hessian
    # of F.layer_norm itself is wrong in its d2/(dw dx) block in torch 2.13.)
    x, w, b = _data(m=3)
    want = torch.autograd.functional.hessian(TORCH, (x, w, b))
    _close(hessian(OURS, (0, 1, 2))(x, w, b), want, backward=True)
    _close(jacfwd(jacrev(OURS))(x, w, b), want[0][0], backward=True)
    # grad of grad
    inner = lambda x: grad(OURS)(x, w, b).square().sum()  # noqa: E731
    _close(grad(inner)(x), grad(lambda x: grad(TORCH)(x, w, b).square().sum())(x), backward=True)


def _mlp(norm: type[nn.Module]) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(8, 8), norm(8), nn.Tanh(), nn.Linear(8, 2)).double()


def test_per_sample_gradients_functional_call(kernel_calls):
    ours, ref = _mlp(fastln.LayerNorm), _mlp(nn.LayerNorm)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x, _, _ = _data(m=6)
    target = torch.randn(6, 2, dtype=torch.float64)

    def per_sample(model):
        def loss(p, xb, tb):
            return F.mse_loss(functional_call(model, p, (xb[None],)), tb[None])

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)

    _close(per_sample(ours), per_sample(ref), backward=True)
    # One forward and one backward kernel call for the whole batch (the vmap
    # rule folds the batch into the rows), not one per sample.
    assert kernel_calls == {"fwd": 1, "bwd": 1}, kernel_calls


def test_vmap_over_stacked_parameters():
    # Model ensembling: per-member weights, which the vmap rule hands to the
    # composite (no kernel takes one weight row per batch element).
    ours, ref = _mlp(fastln.LayerNorm), _mlp(nn.LayerNorm)
    x, _, _ = _data(m=4)
    stacked = {k: torch.stack([v.detach(), 2 * v.detach()]) for k, v in ref.named_parameters()}

    def outputs(model):
        return vmap(lambda p: functional_call(model, p, (x,)))(stacked)

    def grads(model):
        return vmap(grad(lambda p: functional_call(model, p, (x,)).square().sum()))(stacked)

    _close(outputs(ours), outputs(ref))
    _close(grads(ours), grads(ref), backward=True)


@pytest.mark.parametrize("in_dim", [0, 1])
def test_vmap_uses_one_kernel_call(in_dim, kernel_calls):
    x = torch.randn(4, 3, *NS, dtype=torch.float64)
    w, b = _data()[1:]
    got = vmap(fastln.layer_norm, in_dims=(in_dim, None, None, None))(x, NS, w, b)
    want = vmap(F.layer_norm, in_dims=(in_dim, None, None, None))(x, NS, w, b)
    _close(got, want)
    assert kernel_calls["fwd"] == 1, kernel_calls


# --- forward-mode AD --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_forward_ad_dual_tensors(dtype, kernel_calls):
    x, w, b = _data(dtype)
    tx, tw, tb = (torch.randn_like(t) for t in (x, w, b))
    results = []
    for ln in (fastln.layer_norm, F.layer_norm):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in ((x, tx), (w, tw), (b, tb))]
            y = ln(duals[0], NS, duals[1], duals[2], 1e-5)
            primal, tangent = fwAD.unpack_dual(y)
            results.append((primal.clone(), tangent.clone()))
    _close(results[0], results[1], dtype, backward=True)
    assert kernel_calls["fwd"] == 1


def test_func_jvp_and_jacfwd(kernel_calls):
    x, w, b = _data()
    tangents = tuple(torch.randn_like(t) for t in (x, w, b))
    _close(jvp(OURS, (x, w, b), tangents), jvp(TORCH, (x, w, b), tangents), backward=True)
    for argnums in (0, (0, 1, 2)):
        _close(jacfwd(OURS, argnums)(x, w, b), jacfwd(TORCH, argnums)(x, w, b), backward=True)
    # fastln's forward kernel each time, with the tangent rule (not the composite)
    assert kernel_calls["fwd"] == 3, kernel_calls


def test_forward_ad_over_backward():
    # Forward AD of a gradient (forward-over-reverse): two differentiating levels.
    x, w, b = _data()
    t = torch.randn_like(x)

    def g(ln):
        return lambda x: torch.func.grad(_loss(ln))(x, w, b)

    _close(jvp(g(fastln.layer_norm), (x,), (t,)), jvp(g(F.layer_norm), (x,), (t,)), backward=True)


def test_plain_eager_never_takes_the_transform_path(kernel_calls):
    x, w, b = (t.clone().requires_grad_() for t in _data())
    fastln.layer_norm(x, NS, w, b).sum().backward()
    assert kernel_calls == {"fwd": 0, "bwd": 0}  # the C++ autograd node did it
    assert x.grad is not None and w.grad is not None


# --- TorchScript --------------------------------------------------------------


def test_torchscript_script_runs_fastln_op():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 8), fastln.LayerNorm(8), nn.ReLU(), fastln.LayerNorm(8, bias=False)
    )
    x = torch.randn(3, 8)
    want = model(x).detach()
    scripted = torch.jit.script(model)
    assert "fastln::layer_norm" in str(scripted.inlined_graph)
    _close(scripted(x).detach(), want, torch.float32)
    # Saved and loaded (the op is found by name, registered by `import fastln`).
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    _close(loaded(x).detach(), want, torch.float32)
    # Gradients flow through the scripted op.
    xg = x.clone().requires_grad_()
    loaded(xg).sum().backward()
    xr = x.clone().requires_grad_()
    model(xr).sum().backward()
    _close(xg.grad, xr.grad, torch.float32, backward=True)
    # The eager model keeps working, still a fastln (and nn) LayerNorm.
    assert isinstance(model[1], fastln.LayerNorm) and isinstance(model[1], nn.LayerNorm)
    _close(model(x).detach(), want, torch.float32)


def test_torchscript_trace():
    m = fastln.LayerNorm(8)
    x = torch.randn(2, 8)
    traced = torch.jit.trace(m, (x,))
    assert "fastln::layer_norm" in str(traced.inlined_graph)
    _close(traced(x).detach(), m(x).detach(), torch.float32)


# --- ONNX -----------------------------------------------------------------------


def _onnx_modules():
    # Test extras (README's test command installs them); CI must have them.
    required = os.environ.get("CI") == "true"
    mods = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        mods.append(__import__(name) if required else pytest.importorskip(name))
    return mods[0], mods[2]


class _OnnxModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 16)
        self.ln = fastln.LayerNorm(16)
        self.ln_plain = fastln.LayerNorm([4, 16], elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_plain(self.ln(self.proj(x)))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript", "torchscript-scripted"])
def test_onnx_export_is_layer_normalization(exporter, tmp_path):
    onnx, ort = _onnx_modules()
    model = _OnnxModel().eval()
    x = torch.randn(3, 4, 8)
    path = str(tmp_path / "model.onnx")
    if exporter == "dynamo":
        torch.onnx.export(model, (x,), path, dynamo=True)
    else:
        target = torch.jit.script(model) if exporter.endswith("scripted") else model
        torch.onnx.export(target, (x,), path, dynamo=False, opset_version=17)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("LayerNormalization") == 2, ops
    assert all(o.version >= 17 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = nn.Sequential(model.proj, _as_torch(model.ln), _as_torch(model.ln_plain))(x)
    _close(torch.from_numpy(got), want, torch.float32)


class _OnnxNormsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(8, 16)
        self.rms = fastln.RMSNorm(16)
        self.w = nn.Parameter(torch.randn(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, h = fastln.add_rms_norm(self.rms(self.proj(x)), x.repeat(1, 1, 2), 16, self.w)
        return y * h


def test_onnx_export_of_rms_norm_and_add_norm(tmp_path):
    # The dynamo exporter traces the norms as torch's own ops (no ONNX form for
    # fastln's kernels): the graph runs in onnxruntime with torch's numerics.
    onnx, ort = _onnx_modules()
    model = _OnnxNormsModel().eval()
    x = torch.randn(3, 4, 8)
    path = str(tmp_path / "norms.onnx")
    torch.onnx.export(model, (x,), path, dynamo=True)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert not any(n.domain.startswith("fastln") for n in proto.graph.node)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        z = F.rms_norm(model.proj(x), [16], model.rms.weight)
        h = z + x.repeat(1, 1, 2)
        want = F.rms_norm(h, [16], model.w) * h
    _close(torch.from_numpy(got), want, torch.float32)


def _as_torch(m: nn.LayerNorm) -> nn.LayerNorm:
    ref = nn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None)
    ref.load_state_dict(m.state_dict())
    return ref


# --- nested jagged tensors ------------------------------------------------------


def _jagged(dtype=torch.float32, inner=(8,)):
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, *inner, generator=g).to(dtype) for n in (3, 5, 1, 4)]
    return [
        torch.nested.nested_tensor(parts, layout=torch.jagged, requires_grad=True) for _ in "ab"
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inner,shape", [((8,), (8,)), ((4, 8), (8,)), ((4, 8), (4, 8))])
def test_nested_jagged_forward_backward(dtype, inner, shape):
    ours_in, ref_in = _jagged(dtype, inner)
    w = torch.randn(shape, dtype=dtype, requires_grad=True)
    b = torch.randn(shape, dtype=dtype, requires_grad=True)
    ours = fastln.layer_norm(ours_in, shape, w, b)
    ref = F.layer_norm(ref_in, shape, w, b)
    assert ours.is_nested and ours.layout == torch.jagged
    assert ours.shape == ours_in.shape and ref.shape == ref_in.shape
    _close(ours.values(), ref.values(), dtype)
    (ours + ours_in).values()  # the same nested structure as its input
    go = torch.autograd.grad(ours.values().sin().sum(), (ours_in, w, b))
    gr = torch.autograd.grad(ref.values().sin().sum(), (ref_in, w, b))
    _close(go[0].values(), gr[0].values(), dtype, backward=True)
    _close(go[1:], gr[1:], dtype, backward=True)


def test_nested_jagged_module_and_compile():
    ours_in, ref_in = _jagged()
    ln = fastln.LayerNorm(8)
    want = F.layer_norm(ref_in, (8,), ln.weight, ln.bias).values()
    _close(ln(ours_in).values(), want, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(ln, fullgraph=True)
    _close(compiled(ours_in).values(), want, torch.float32)


def test_nested_jagged_ragged_dim_is_torchs():
    ours_in, ref_in = _jagged()
    # Normalizing over the ragged dim too: torch's own op (what it supports).
    got = fastln.layer_norm(ours_in, (ours_in.shape[1], 8))
    want = F.layer_norm(ref_in, (ref_in.shape[1], 8))
    _close(got.values(), want.values(), torch.float32)


# --- autocast ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_cpu_keeps_the_input_dtype_like_torch(dtype, autocast_dtype):
    x, w, b = _data(dtype)
    w, b = w.float(), b.float()
    with torch.autocast("cpu", dtype=autocast_dtype):
        ours = fastln.LayerNorm(8)
        ours.load_state_dict({"weight": w, "bias": b})
        got = ours(x)
        want = F.layer_norm(x, NS, w, b)
        assert got.dtype == want.dtype == dtype
        # after an autocast Linear, both see its low-precision output
        lin = nn.Linear(8, 8)
        h = lin(x.float())
        assert fastln.layer_norm(h, NS, w, b).dtype == F.layer_norm(h, NS, w, b).dtype
    _close(got.detach(), want, dtype)


_AUTOCAST_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)


def _under_cuda_autocast_policy(x, w, b, out_dtype=None):
    """fastln's AutocastCUDA kernel (csrc/autocast.cpp) called through the
    dispatcher on CPU tensors: the policy's decisions, testable without a GPU
    (the weight cache only casts CUDA tensors; the op casts 16-bit weights
    itself for a float output)."""
    return torch.ops.fastln.layer_norm.default.redispatch(
        _AUTOCAST_CUDA, x, list(NS), w, b, 1e-5, out_dtype
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("param_dtype", ["float32", "input"])
def test_autocast_cuda_policy_gives_torchs_float32(dtype, param_dtype):
    # torch under autocast("cuda"): layer_norm(x.float(), w.float(), b.float()).
    x, w, b = _data(dtype)
    if param_dtype == "float32":
        w, b = w.float(), b.float()
    xl, wl, bl = (t.clone().requires_grad_() for t in (x, w, b))
    got = _under_cuda_autocast_policy(xl, wl, bl)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    want = F.layer_norm(xr.float(), NS, wr.float(), br.float())
    assert got.dtype == torch.float32
    _close(got.detach(), want.detach(), torch.float32)
    g = torch.randn_like(want)
    got.backward(g)
    want.backward(g)
    assert xl.grad.dtype == dtype and wl.grad.dtype == w.dtype
    _close((xl.grad, wl.grad, bl.grad), (xr.grad, wr.grad, br.grad), dtype, backward=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_autocast_cuda_policy_is_torchs_float32(dtype):
    # torch's rms_norm is on CUDA autocast's float32 list (an AutocastCUDA
    # kernel of aten::rms_norm): rms_norm(x.float(), w.float()).
    x, w, _ = _data(dtype)
    xl, wl = (t.clone().requires_grad_() for t in (x, w))
    got = torch.ops.fastln.rms_norm.default.redispatch(_AUTOCAST_CUDA, xl, list(NS), wl, None)
    xr, wr = (t.clone().requires_grad_() for t in (x, w))
    want = F.rms_norm(xr.float(), NS, wr.float())
    assert got.dtype == torch.float32
    _close(got.detach(), want.detach(), torch.float32)
    g = torch.randn_like(want)
    got.backward(g)
    want.backward(g)
    assert xl.grad.dtype == dtype and wl.grad.dtype == dtype
    _close((xl.grad, wl.grad), (xr.grad, wr.grad), dtype, backward=True)
    assert "AutocastCUDA" in torch._C._dispatch_dump("aten::rms_norm")  # torch's policy exists


def test_torch_func_under_the_cuda_autocast_policy(monkeypatch):
    # The torch.func path calls layer_norm_fwd, which has the same autocast
    # kernel: with it (through the dispatcher, on CPU tensors), grad and jvp see
    # a float32 output of bfloat16 input and differentiate it like torch's
    # layer_norm of the upcast input.
    fwd = _transforms._FWD
    monkeypatch.setattr(_transforms, "_FWD", lambda *args: fwd.redispatch(_AUTOCAST_CUDA, *args))
    x, w, b = _data(torch.bfloat16)
    w, b = w.float(), b.float()

    def loss(ln, cast):
        return lambda x, w, b: ln(cast(x), NS, w, b, 1e-5).square().sum()

    def as_float(t):
        return t.float()

    ours = grad(loss(fastln.layer_norm, lambda t: t), (0, 1, 2))(x, w, b)
    want = grad(loss(F.layer_norm, as_float), (0, 1, 2))(x, w, b)
    _close(ours, want, torch.bfloat16, backward=True)
    y_ours, t_ours = jvp(lambda x: fastln.layer_norm(x, NS, w, b), (x,), (torch.ones_like(x),))
    y_want, t_want = jvp(lambda x: F.layer_norm(x.float(), NS, w, b), (x,), (torch.ones_like(x),))
    assert y_ours.dtype == t_ours.dtype == torch.float32
    _close((y_ours, t_ours), (y_want, t_want), torch.float32, backward=True)


def test_autocast_cuda_policy_leaves_float_and_explicit_requests():
    x, w, b = _data(torch.float32)
    _close(_under_cuda_autocast_policy(x, w, b), F.layer_norm(x, NS, w, b), torch.float32)
    xd, wd, bd = _data(torch.float64)
    assert _under_cuda_autocast_policy(xd, wd, bd).dtype == torch.float64
    xh = x.bfloat16()
    # an explicit out_dtype is obeyed: the input's dtype stays
    assert _under_cuda_autocast_policy(xh, w, b, torch.bfloat16).dtype == torch.bfloat16


def test_out_dtype_checks_like_the_op_doc():
    x, w, b = _data(torch.float32)
    with pytest.raises(RuntimeError, match="out_dtype must be the input's dtype"):
        torch.ops.fastln.layer_norm(x, [8], w, b, 1e-5, torch.bfloat16)
    with pytest.raises(RuntimeError, match="out_dtype must be the input's dtype"):
        torch.ops.fastln.layer_norm(x.bfloat16(), [8], w, b, 1e-5, torch.float16)
    with pytest.raises(RuntimeError, match="Expected grad_out to have the input's dtype"):
        _, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [8], w, b, 1e-5)
        torch.ops.fastln.layer_norm_bwd(x.double(), x, [8], mean, rstd, w, b, [True, True, True])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_low_precision_opt_in_cpu(dtype):
    x, w, b = _data(dtype)
    w, b = w.float(), b.float()
    ln = fastln.LowPrecisionLayerNorm(8)
    ln.load_state_dict({"weight": w, "bias": b})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ln(x)
        got_f = fastln.low_precision_layer_norm(x, NS, w, b)
    # timm's fast_norm / MosaicML's LPLayerNorm by hand: everything in bfloat16.
    want = F.layer_norm(x.bfloat16(), NS, w.bfloat16(), b.bfloat16())
    assert got.dtype == got_f.dtype == torch.bfloat16
    _close(got.detach(), want, torch.bfloat16)
    _close(got_f, want, torch.bfloat16)
    # outside autocast: fastln.LayerNorm
    _close(ln(x).detach(), F.layer_norm(x, NS, w, b), dtype)
    model = fastln.replace_layernorm(nn.Sequential(nn.LayerNorm(8)), low_precision=True)
    assert type(model[0]) is fastln.LowPrecisionLayerNorm


@pytest.mark.skipif(not (torch.cuda.is_available() and fastln.cuda_built()), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autocast_cuda_on_a_gpu(dtype):
    lin = nn.Linear(8, 8).cuda()
    ours, ref = fastln.LayerNorm(8).cuda(), nn.LayerNorm(8).cuda()
    x = torch.randn(64, 8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        h = lin(x)
        got, want = ours(h), ref(h)
        low = fastln.LowPrecisionLayerNorm(8).cuda()(h)
    assert h.dtype == dtype and got.dtype == want.dtype == torch.float32
    assert low.dtype == dtype
    _close(got.detach().cpu(), want.detach().cpu(), torch.float32)
    _close(low.detach().cpu(), want.detach().cpu().to(dtype), dtype)


# --- what already worked, kept working ---------------------------------------------


def test_export_dynamic_batch_and_aoti_package(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), fastln.LayerNorm(8)).eval()
    x = torch.randn(4, 8)
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes={"input": {0: batch}})
    assert any("fastln.layer_norm" in str(n.target) for n in ep.graph.nodes)
    for m in (3, 17):
        xm = torch.randn(m, 8)
        _close(ep.module()(xm).detach(), model(xm).detach(), torch.float32)
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "m.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    for m in (2, 33):
        xm = torch.randn(m, 8)
        _close(loaded(xm), model(xm).detach(), torch.float32)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(reentrant):
    ours, ref = _mlp(fastln.LayerNorm), _mlp(nn.LayerNorm)
    x = _data(m=4)[0].requires_grad_()
    losses = []
    for model in (ours, ref):
        y = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=reentrant)
        y.square().sum().backward()
        losses.append([p.grad.clone() for p in model.parameters()])
    _close(losses[0], losses[1], backward=True)


class _Logged(torch.Tensor):
    """A __torch_function__ subclass that records the functions it sees."""

    seen: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclasses_and_parameters():
    x, w, b = _data()
    want = F.layer_norm(x, NS, w, b)
    _Logged.seen.clear()
    got = fastln.layer_norm(x.as_subclass(_Logged), NS, w, b)
    assert type(got) is _Logged and _Logged.seen, _Logged.seen
    _close(got.as_subclass(torch.Tensor), want)
    # A Parameter as the input (not only as weight).
    p = nn.Parameter(x.clone())
    y = fastln.layer_norm(p, NS, w, b)
    y.sum().backward()
    _close(y.detach(), want)
    assert p.grad is not None


# --- compiled autograd ------------------------------------------------------


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm", "add_layer_norm"])
def test_compiled_autograd(norm):
    """torch.compile of the backward graph (compiled autograd) traces fastln's
    autograd nodes and gives torch's gradients."""
    x, w, b = _data()
    r = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))

    def loss(lib, x, w, b, r):
        if norm == "layer_norm":
            y = lib.layer_norm(x, NS, w, b)
        elif norm == "rms_norm":
            y = lib.rms_norm(x, NS, w)
        elif lib is fastln:
            y, h = fastln.add_layer_norm(x, r, NS, w, b)
            y = y + h.cos()
        else:
            h = x + r
            y = F.layer_norm(h, NS, w, b) + h.cos()
        return y.sin().sum()

    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(gm)
        return gm.forward

    grads = []
    for lib in (fastln, F):
        leaves = [t.detach().requires_grad_() for t in (x, w, b, r)]
        compiled = torch._dynamo.compiled_autograd._enable(torch.compile(backend=backend))
        with compiled if lib is fastln else contextlib.nullcontext():
            loss(lib, *leaves).backward()
        grads.append([t.grad for t in leaves if t.grad is not None])
    assert graphs, "compiled autograd compiled no backward graph"
    _close(grads[0], grads[1], backward=True)
