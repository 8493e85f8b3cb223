"""fastln.rms_norm / fastln.RMSNorm / replace_norms and the fused residual-add
norms fastln.add_layer_norm / fastln.add_rms_norm on CPU.

The reference is the norm in float64 on the same rounded inputs (conftest's
principle); for the fused add it is h = x + residual summed in float64 and
rounded to h's dtype, then the norm of that h in float64. Tolerances are
conftest's table; where a test measures accuracy it takes torch's own error as
the yardstick (test_accuracy.py's pattern).
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import TOLERANCES, assert_close, reference, run_layer_norm
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import fastln

# (input dtype, weight/bias dtype; None: the input's)
DTYPE_CASES = [
    (torch.float32, None),
    (torch.float64, None),
    (torch.bfloat16, None),
    (torch.float16, None),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
]
DTYPE_IDS = ["float32", "float64", "bfloat16", "float16", "bfloat16-w32", "float16-w32"]

# (input shape, normalized_shape): M rows of N, odd and prime N, and
# normalized_shape over several dims.
SHAPES = [((M, N), (N,)) for M in (1, 3, 65) for N in (1, 7, 64, 127, 768, 1000, 4099)] + [
    ((3, 5, 7), (5, 7)),
    ((2, 3, 4, 5), (3, 4, 5)),
]
# The fused add's grid: every N with the Ms in turn, and the extremes of both.
ADD_SHAPES = [
    ((M, N), (N,)) for M, N in zip((65, 1, 3, 65, 1, 3, 65), (1, 7, 64, 127, 768, 1000, 4099))
] + [
    ((1, 1), (1,)),
    ((65, 127), (127,)),
    ((3, 4099), (4099,)),
    ((3, 5, 7), (5, 7)),
    ((2, 3, 4, 5), (3, 4, 5)),
]
FEW_SHAPES = [((3, 7), (7,)), ((65, 1000), (1000,)), ((2, 3, 4, 5), (3, 4, 5))]


def _acc_eps(dtype: torch.dtype) -> float:
    """What eps=None means in torch's rms_norm (and so in fastln's): the machine
    epsilon of the accumulation dtype."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def _tol_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype of the table whose tolerance is the loosest of `dtypes`: a
    result rounded to, or computed at, the lowest of these precisions."""
    return max(dtypes, key=lambda d: TOLERANCES[d][0].atol)


def _leaf(t: torch.Tensor | None, dtype: torch.dtype | None = None, rg: bool = True):
    if t is None:
        return None
    t = t.detach().to(dtype) if dtype is not None else t.detach()
    return t.clone().requires_grad_(rg)


def _grad(t: torch.Tensor | None):
    return None if t is None else t.grad


def _dims(ns) -> tuple[int, ...]:
    return tuple(range(-len(ns), 0))


def _rms64(h: torch.Tensor, ns, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm written out (not F.rms_norm, whose eps=None would be float64's)."""
    y = h * torch.rsqrt(h.square().mean(_dims(ns), keepdim=True) + eps)
    return y if w is None else y * w


def _inputs(shape, ns, dtype, pdtype, affine, with_bias=False):
    x = torch.randn(shape, dtype=torch.float64).mul(2).add(0.5).to(dtype)
    pdtype = pdtype or dtype
    w = torch.randn(ns, dtype=pdtype) if affine else None
    b = torch.randn(ns, dtype=pdtype) if with_bias else None
    return x, w, b


# --- 1. parity with a float64 reference -----------------------------------------


def _run_rms(fn, x, ns, w, eps, g, cast=None):
    xl, wl = _leaf(x, cast), _leaf(w, cast)
    y = fn(xl, ns, wl, eps)
    y.backward(g if cast is None else g.to(cast))
    return y, xl.grad, _grad(wl)


def _rms_ref(x, ns, w, eps, g):
    resolved = _acc_eps(x.dtype) if eps is None else eps
    return _run_rms(lambda x, ns, w, e: _rms64(x, ns, w, resolved), x, ns, w, eps, g, torch.float64)


def _check_rms(x, ns, w, eps, g):
    y, dx, dw = _run_rms(fastln.rms_norm, x, ns, w, eps, g)
    ry, rdx, rdw = _rms_ref(x, ns, w, eps, g)
    assert y.dtype == x.dtype
    assert_close(y, ry, x.dtype, what="out")
    assert dx.dtype == x.dtype
    assert_close(dx, rdx, x.dtype, backward=True, what="dx")
    if w is not None:
        assert dw.dtype == w.dtype
    assert_close(dw, rdw, x.dtype, backward=True, what="dweight")


@pytest.mark.parametrize("affine", [True, False], ids=["weight", "no_weight"])
@pytest.mark.parametrize("shape,ns", SHAPES, ids=str)
@pytest.mark.parametrize("dtype,pdtype", DTYPE_CASES, ids=DTYPE_IDS)
def test_rms_norm_parity(dtype, pdtype, shape, ns, affine):
    x, w, _ = _inputs(shape, ns, dtype, pdtype, affine)
    _check_rms(x, ns, w, None, torch.randn(shape, dtype=dtype))


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rms_norm_eps(dtype, eps):
    x, w, _ = _inputs((9, 257), (257,), dtype, None, True)
    _check_rms(x, (257,), w, eps, torch.randn(9, 257, dtype=dtype))


def _run_add(fn, x, r, ns, w, b, eps, residual_dtype, gy, gh, rms, rg=None):
    """fastln's fused add norm on fresh leaves; backward from y (gy) and/or h (gh).
    rg: which of (x, r, w, b) require grad (default all)."""
    rg = rg or (True, True, True, True)
    xl, rl, wl, bl = (_leaf(t, rg=q) for t, q in zip((x, r, w, b), rg))
    if rms:
        y, h = fn(xl, rl, ns, wl, eps, residual_dtype=residual_dtype)
    else:
        y, h = fn(xl, rl, ns, wl, bl, eps, residual_dtype=residual_dtype)
    # (an output that does not require grad, as h when only the weight
    # does, takes no gradient)
    pairs = [(o, g) for o, g in ((y, gy), (h, gh)) if g is not None and o.requires_grad]
    outs, grads = [o for o, _ in pairs], [g for _, g in pairs]
    torch.autograd.backward(outs, grads)
    return y, h, *(_grad(t) for t in (xl, rl, wl, bl))


def _add_ref(x, r, ns, w, b, eps, rms, h_dtype, gy, gh):
    """(h, y, dh, dweight, dbias): h = x + r summed in float64 and rounded to
    h's dtype (a residual of another dtype than x's or h's converted to h's
    first), then the norm of that h in float64."""
    if r.dtype not in (x.dtype, h_dtype):
        r = r.to(h_dtype)
    h = (x.double() + r.double()).to(h_dtype)
    hd = h.double().requires_grad_()
    wd, bd = _leaf(w, torch.float64), _leaf(b, torch.float64)
    if rms:
        y = _rms64(hd, ns, wd, _acc_eps(x.dtype) if eps is None else eps)
    else:
        y = F.layer_norm(hd, ns, wd, bd, eps)
    loss = 0
    if gy is not None:
        loss = loss + (y * gy.double()).sum()
    if gh is not None:
        loss = loss + (hd * gh.double()).sum()
    loss.backward()
    dw, db = _grad(wd), _grad(bd)
    if gy is None:  # y unused: torch's composite gives the parameters no gradient
        dw = db = None
    return h, y, hd.grad, dw, db


def _check_add(x, r, ns, w, b, rms, residual_dtype=None, grads=("y", "h"), eps=None):
    fn = fastln.add_rms_norm if rms else fastln.add_layer_norm
    if eps is None and not rms:
        eps = 1e-5
    h_dtype = residual_dtype or x.dtype
    gy = torch.randn(x.shape, dtype=x.dtype) if "y" in grads else None
    gh = torch.randn(x.shape, dtype=h_dtype) if "h" in grads else None
    y, h, dx, dr, dw, db = _run_add(fn, x, r, ns, w, b, eps, residual_dtype, gy, gh, rms)
    rh, ry, rdh, rdw, rdb = _add_ref(x, r, ns, w, b, eps, rms, h_dtype, gy, gh)

    # h: x + residual exactly as torch adds them, in h's dtype
    assert h.dtype == h_dtype
    r_in = r if r.dtype in (x.dtype, h_dtype) else r.to(h_dtype)
    assert torch.equal(h, x.to(h_dtype) + r_in.to(h_dtype)), "h != x + residual"
    assert_close(h, rh.double(), h_dtype, what="h")
    assert y.dtype == x.dtype
    assert_close(y, ry, _tol_dtype(x.dtype, h_dtype), what="out")

    assert dx.dtype == x.dtype and dr.dtype == r.dtype
    if gy is None:
        # Only h is used: both gradients are grad_h itself.
        assert torch.equal(dx, gh.to(x.dtype)), "dx != grad_h"
        assert torch.equal(dr, gh.to(r.dtype)), "dresidual != grad_h"
        for name, p, g in (("dweight", w, dw), ("dbias", b, db)):
            if p is not None:
                assert g is None or torch.equal(g, torch.zeros_like(p)), f"{name}: {g}"
        return
    assert_close(dx, rdh, _tol_dtype(x.dtype, h_dtype), backward=True, what="dx")
    assert_close(dr, rdh, _tol_dtype(r.dtype, h_dtype), backward=True, what="dresidual")
    for name, p, g, e in (("dweight", w, dw, rdw), ("dbias", b, db, rdb)):
        if p is not None:
            assert g is not None and g.dtype == p.dtype, name
            assert_close(g, e, _tol_dtype(p.dtype, h_dtype), backward=True, what=name)
        else:
            assert e is None


ADD_AFFINE = [
    (False, True, True),
    (False, True, False),
    (False, False, False),
    (True, True, False),
    (True, False, False),
]
ADD_AFFINE_IDS = ["ln-weight-bias", "ln-weight", "ln-none", "rms-weight", "rms-none"]


@pytest.mark.parametrize("rms,affine,with_bias", ADD_AFFINE, ids=ADD_AFFINE_IDS)
@pytest.mark.parametrize("shape,ns", ADD_SHAPES, ids=str)
@pytest.mark.parametrize("dtype,pdtype", DTYPE_CASES, ids=DTYPE_IDS)
def test_add_norm_parity(dtype, pdtype, shape, ns, rms, affine, with_bias):
    x, w, b = _inputs(shape, ns, dtype, pdtype, affine, with_bias)
    r = torch.randn(shape, dtype=dtype)
    _check_add(x, r, ns, w, b, rms)


@pytest.mark.parametrize("grads", [("y",), ("h",)], ids=["h_unused", "y_unused"])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("shape,ns", FEW_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_add_norm_one_output_used(dtype, shape, ns, rms, grads):
    x, w, b = _inputs(shape, ns, dtype, None, True, not rms)
    _check_add(x, torch.randn(shape, dtype=dtype), ns, w, b, rms, grads=grads)


# (x dtype, residual dtype, residual_dtype, weight dtype)
RESIDUAL_CASES = [
    (torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float32, torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float32, torch.float32, torch.float32),
    (torch.float16, torch.float16, torch.float32, torch.float32),
    (torch.float16, torch.float32, torch.float32, torch.float16),
    # residual of neither x's dtype nor residual_dtype: converted to h's
    (torch.bfloat16, torch.float32, None, torch.bfloat16),
    (torch.float32, torch.float64, None, torch.float32),
    (torch.float32, torch.bfloat16, None, torch.float32),
    (torch.bfloat16, torch.float16, torch.float32, torch.float32),
    (torch.float64, torch.float32, None, torch.float64),
]


@pytest.mark.parametrize(
    "grads", [("y", "h"), ("y",), ("h",)], ids=["both", "h_unused", "y_unused"]
)
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("shape,ns", [((3, 7), (7,)), ((65, 1000), (1000,))], ids=str)
@pytest.mark.parametrize("dtype,rdtype,residual_dtype,pdtype", RESIDUAL_CASES, ids=str)
def test_add_norm_residual_dtype(dtype, rdtype, residual_dtype, pdtype, shape, ns, rms, grads):
    x, w, b = _inputs(shape, ns, dtype, pdtype, True, not rms)
    r = torch.randn(shape, dtype=torch.float64).to(rdtype)
    _check_add(x, r, ns, w, b, rms, residual_dtype=residual_dtype, grads=grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_add_layer_norm_uses_the_rounded_h(dtype):
    # x ~ N(0, 1) on a residual of 1500: a 16-bit h = x + 1500 keeps about one
    # bit of x (spacing 8 or 1), so the norm of the rounded h and that of the
    # exact sum differ by far more than any tolerance. A float32 h keeps x.
    N = 512
    x = torch.randn(4, N).to(dtype)
    r = torch.full((4, N), 1500.0, dtype=dtype)
    exact = F.layer_norm(x.double() + r.double(), (N,))
    rounded = F.layer_norm((x.double() + r.double()).to(dtype).double(), (N,))
    assert not torch.allclose(exact, rounded, atol=0.1), "the data must tell them apart"
    y, h = fastln.add_layer_norm(x, r, (N,))
    assert h.dtype == dtype
    assert_close(y, rounded, dtype, what="16-bit h")
    y, h = fastln.add_layer_norm(x, r, (N,), residual_dtype=torch.float32)
    assert h.dtype == torch.float32 and y.dtype == dtype
    assert_close(y, exact, dtype, what="float32 h")


@pytest.mark.parametrize("fn", ["rms_norm", "RMSNorm", "add_rms_norm"])
@pytest.mark.parametrize(
    "dtype,scale",
    [
        (torch.bfloat16, 1e-2),
        (torch.bfloat16, 1e-3),
        (torch.float16, 1e-3),
        (torch.float32, 1e-3),
        (torch.float64, 1e-7),
    ],
    ids=str,
)
def test_eps_none_is_torchs(dtype, scale, fn):
    # torch's eps=None on the CPU: the epsilon of the accumulation dtype
    # (float32's for 16-bit input), not finfo(input.dtype).eps as documented.
    # Small values make the choice visible.
    N = 64
    x = (torch.randn(4, N, dtype=torch.float64) * scale).to(dtype)
    w = torch.randn(N, dtype=dtype)
    want = _rms64(x.double(), (N,), w.double(), _acc_eps(dtype))
    documented = _rms64(x.double(), (N,), w.double(), torch.finfo(dtype).eps)
    if dtype in (torch.bfloat16, torch.float16):
        assert not torch.allclose(want, documented, atol=0.1), "the data must tell them apart"
    no_eps = _rms64(x.double(), (N,), w.double(), 0.0)
    tol = TOLERANCES[dtype][0]
    if scale <= 1e-3:
        assert not torch.allclose(want, no_eps, atol=tol.atol, rtol=tol.rtol), "eps must matter"
    theirs = F.rms_norm(x, (N,), w)
    assert_close(theirs, want, dtype, what="torch itself")  # the premise
    if fn == "rms_norm":
        ours = fastln.rms_norm(x, (N,), w)
    elif fn == "RMSNorm":
        m = fastln.RMSNorm(N, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(w)
        ours = m(x)
    else:
        ours, _ = fastln.add_rms_norm(x, torch.zeros_like(x), (N,), w)
    assert ours.dtype == dtype
    assert_close(ours, want, dtype, what=fn)
    assert_close(ours, theirs.double(), dtype, what=f"{fn} vs F.rms_norm")


# --- 2. against torch's own functions and modules --------------------------------


def test_rms_norm_signature_matches_torch():
    ours, theirs = inspect.signature(fastln.rms_norm), inspect.signature(F.rms_norm)
    assert list(ours.parameters) == list(theirs.parameters)
    for name, p in theirs.parameters.items():
        assert ours.parameters[name].default == p.default, name
    assert inspect.signature(fastln.RMSNorm) == inspect.signature(nn.RMSNorm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_rms_norm_vs_torch(dtype):
    x = torch.randn(6, 5, 33, dtype=dtype)
    w = torch.randn(5, 33, dtype=dtype)
    for ns in ((33,), [5, 33], torch.Size([33]), 33):
        wi = None if ns == [5, 33] else w[0]
        tns = (ns,) if isinstance(ns, int) else ns  # F.rms_norm takes no int
        for eps in (None, 1e-6):
            assert_close(
                fastln.rms_norm(x, ns, wi, eps),
                F.rms_norm(x, tns, wi, eps).double(),
                dtype,
                what=f"{ns} {eps}",
            )


# Weight dtypes the kernels do not take (neither the input's nor float32 under
# float16/bfloat16 input): torch's rms_norm accepts them through its composite.
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MIXED_WEIGHT_DTYPES = [
    (x, w)
    for x in _FLOATS
    for w in _FLOATS
    if w != x and not (w == torch.float32 and x in (torch.bfloat16, torch.float16))
]


@pytest.mark.parametrize("dtype,wdtype", MIXED_WEIGHT_DTYPES, ids=str)
def test_rms_norm_any_weight_dtype_like_torch(dtype, wdtype):
    x, w, _ = _inputs((5, 37), (37,), dtype, wdtype, True)
    g = torch.randn(5, 37, dtype=dtype)
    ours = _run_rms(fastln.rms_norm, x, (37,), w, None, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "Mismatch dtype" (no fused kernel)
        theirs = _run_rms(F.rms_norm, x, (37,), w, None, g)
    assert [t.dtype for t in ours] == [t.dtype for t in theirs] == [dtype, dtype, wdtype]
    # Both round the weight's gradient to its dtype, and a float64 weight under
    # lower-precision input is rounded once more in fastln (see _rms_weight).
    tol = _tol_dtype(dtype, wdtype)
    for what, a, b in zip(("out", "dx", "dweight"), ours, theirs):
        assert_close(a, b.double(), tol, backward=what != "out", what=what)
    for what, a, b in zip(("out", "dx", "dweight"), ours, _rms_ref(x, (37,), w, None, g)):
        assert_close(a, b, tol, backward=what != "out", what=f"{what} vs float64")


def test_rms_module_float64_weight_float32_input():
    # A float64 model fed float32 activations: nn.RMSNorm runs it, eager and scripted.
    ours, theirs = fastln.RMSNorm(37, dtype=torch.float64), nn.RMSNorm(37, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 37)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "Mismatch dtype" and jit's deprecation
        expected = theirs(x)
        for module in (ours, torch.jit.script(ours)):
            y = module(x)
            assert y.dtype == expected.dtype == torch.float32
            assert_close(y, expected.double(), torch.float32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalized_shape": 10},
        {"normalized_shape": [3, 4], "eps": 1e-6},
        {"normalized_shape": (8,), "elementwise_affine": False},
        {"normalized_shape": torch.Size([5])},
        {"normalized_shape": 8, "dtype": torch.float64},
        {"normalized_shape": 8, "device": "cpu", "dtype": torch.bfloat16},
    ],
    ids=str,
)
def test_rms_module_matches_torch(kwargs):
    ours, theirs = fastln.RMSNorm(**kwargs), nn.RMSNorm(**kwargs)
    assert isinstance(ours, nn.RMSNorm)
    assert repr(ours) == repr(theirs) and ours.extra_repr() == theirs.extra_repr()
    assert ours.normalized_shape == theirs.normalized_shape
    assert ours.eps == theirs.eps and ours.elementwise_affine == theirs.elementwise_affine
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if theirs.weight is not None:
        with torch.no_grad():
            theirs.weight.normal_()
    ours.load_state_dict(theirs.state_dict())
    dtype = kwargs.get("dtype", torch.float32)
    x = torch.randn(4, *theirs.normalized_shape, dtype=dtype)
    assert_close(ours(x), theirs(x).double(), dtype)
    back = nn.RMSNorm(**kwargs)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(back.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the exception is the result
        return e
    raise AssertionError("no exception")


RMS_BAD_INPUTS = [
    pytest.param(lambda: (torch.randn(4, 2, 3), [2], None), True, id="ns_last_dim"),
    pytest.param(lambda: (torch.randn(4, 2, 3), [4, 2], None), True, id="ns_two_dims"),
    pytest.param(lambda: (torch.randn(3), [2, 3], None), True, id="ns_longer_than_input"),
    pytest.param(lambda: (torch.randn(4, 3), [], None), True, id="ns_empty"),
    pytest.param(lambda: (torch.randn(4, 3), [3], torch.ones(4)), True, id="weight_shape"),
    pytest.param(lambda: (torch.randn(4, 3), [3], torch.ones(2, 3)), True, id="weight_dims"),
    pytest.param(lambda: (torch.ones(4, 3, dtype=torch.int32), [3], None), False, id="int"),
    pytest.param(lambda: (torch.ones(4, 3, dtype=torch.int64), [3], None), False, id="long"),
]


@pytest.mark.parametrize("make,same_message", RMS_BAD_INPUTS)
def test_rms_norm_bad_input_raises_like_torch(make, same_message):
    x, ns, w = make()
    ours = _raises(lambda: fastln.rms_norm(x, ns, w))
    theirs = _raises(lambda: F.rms_norm(x, ns, w))
    assert type(ours) is type(theirs), (ours, theirs)
    if same_message:
        assert str(ours).splitlines()[0] == str(theirs).splitlines()[0]


def test_rms_module_bad_input_raises_like_torch():
    x = torch.rand(4, 2, 3)
    ours = _raises(lambda: fastln.RMSNorm([2])(x))
    theirs = _raises(lambda: nn.RMSNorm([2])(x))
    assert type(ours) is type(theirs)
    assert str(ours).splitlines()[0] == str(theirs).splitlines()[0]


def test_add_norm_signatures():
    ln = inspect.signature(fastln.add_layer_norm).parameters
    rms = inspect.signature(fastln.add_rms_norm).parameters
    assert list(ln) == [
        "input",
        "residual",
        "normalized_shape",
        "weight",
        "bias",
        "eps",
        "residual_dtype",
    ]
    assert list(rms) == ["input", "residual", "normalized_shape", "weight", "eps", "residual_dtype"]
    assert ln["eps"].default == 1e-5 and rms["eps"].default is None
    for p in (ln, rms):
        assert p["residual_dtype"].kind is inspect.Parameter.KEYWORD_ONLY
        assert p["residual_dtype"].default is None
    x = torch.randn(3, 8)
    with pytest.raises(TypeError):
        fastln.add_rms_norm(x, x, [8], bias=torch.zeros(8))


ADD_BAD_INPUTS = [
    pytest.param(
        lambda: (torch.randn(4, 8), torch.randn(3, 8), [8], None),
        RuntimeError,
        r"residual",
        id="residual_shape",
    ),
    pytest.param(
        lambda: (torch.randn(4, 8), torch.randn(8), [8], None),
        RuntimeError,
        r"residual",
        id="residual_broadcast",
    ),
    pytest.param(
        lambda: (torch.randn(4, 8), torch.randn(4, 8), [8], torch.float16),
        RuntimeError,
        r"residual_dtype",
        id="fp16_residual_dtype_fp32_x",
    ),
    pytest.param(
        lambda: (torch.randn(4, 8), torch.randn(4, 8), [8], torch.float64),
        RuntimeError,
        r"residual_dtype",
        id="fp64_residual_dtype_fp32_x",
    ),
    pytest.param(
        lambda: (torch.randn(4, 8).bfloat16(), torch.randn(4, 8), [8], torch.float16),
        RuntimeError,
        r"residual_dtype",
        id="fp16_residual_dtype_bf16_x",
    ),
    pytest.param(
        lambda: (torch.randn(4, 8).half(), torch.randn(4, 8), [8], torch.float64),
        RuntimeError,
        r"residual_dtype",
        id="fp64_residual_dtype_fp16_x",
    ),
    pytest.param(
        lambda: (torch.randn(4, 2, 3), torch.randn(4, 2, 3), [2], None),
        RuntimeError,
        r"Given normalized_shape=\[2\]",
        id="ns_last_dim",
    ),
    pytest.param(
        lambda: (torch.randn(4, 3), torch.randn(4, 3), [], None),
        RuntimeError,
        r"Expected normalized_shape to be at least 1-dimensional",
        id="ns_empty",
    ),
    pytest.param(
        lambda: (
            torch.ones(4, 3, dtype=torch.int32),
            torch.ones(4, 3, dtype=torch.int32),
            [3],
            None,
        ),
        NotImplementedError,
        r"not implemented for 'Int'",
        id="int",
    ),
]


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("make,exc,message", ADD_BAD_INPUTS)
def test_add_norm_bad_input(make, exc, message, rms):
    x, r, ns, rd = make()
    fn = fastln.add_rms_norm if rms else fastln.add_layer_norm
    with pytest.raises(exc, match=message):
        fn(x, r, ns, residual_dtype=rd)


def test_add_norm_bad_weight_like_layer_norm():
    x = torch.randn(4, 3)
    for w in (torch.ones(4), torch.ones(3, dtype=torch.float64)):
        theirs = _raises(lambda w=w: fastln.layer_norm(x, [3], w))
        for fn in (fastln.add_layer_norm, fastln.add_rms_norm):
            ours = _raises(lambda fn=fn, w=w: fn(x, x, [3], w))
            assert type(ours) is type(theirs) and str(ours) == str(theirs)


def test_rms_op_rejects_bias():
    x = torch.randn(3, 8)
    for call in (
        lambda: torch.ops.fastln.add_norm(x, x, [8], None, torch.zeros(8), None, True),
        lambda: torch.ops.fastln.add_norm_fwd(
            x, x, [8], None, torch.zeros(8), 1e-5, True, torch.float32
        ),
    ):
        with pytest.raises(RuntimeError, match="RMSNorm has no bias"):
            call()


# --- 3. accuracy on long rows (torch's error as the yardstick) -------------------


def _max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).abs().max().item()


def test_rms_norm_forward_long_row():
    N = 2**22
    x = torch.randn(1, N) + 3
    want = _rms64(x.double(), (N,), None, 1e-5)
    ours = _max_err(fastln.rms_norm(x, (N,), None, 1e-5), want)
    theirs = _max_err(F.rms_norm(x, (N,), None, 1e-5), want)
    assert ours <= 2 * theirs, f"fastln {ours:.3g} vs torch {theirs:.3g}"


@pytest.mark.parametrize("affine", [False, True], ids=["no_weight", "weight"])
def test_rms_norm_backward_long_rows(affine):
    N = 2**21
    x, g = torch.randn(2, N) + 3, torch.randn(2, N)
    w = torch.randn(N) if affine else None
    _, rdx, _ = _rms_ref(x, (N,), w, 1e-5, g)
    _, dx, _ = _run_rms(fastln.rms_norm, x, (N,), w, 1e-5, g)
    _, tdx, _ = _run_rms(F.rms_norm, x, (N,), w, 1e-5, g)
    ours, theirs = _max_err(dx, rdx), _max_err(tdx, rdx)
    assert ours <= 2 * theirs, f"dx: fastln {ours:.3g} vs torch {theirs:.3g}"


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_add_norm_forward_long_row(rms):
    N = 2**22
    x, r = torch.randn(1, N) + 3, torch.randn(1, N)
    if rms:
        y, h = fastln.add_rms_norm(x, r, (N,), None, 1e-5)
        want = _rms64((x + r).double(), (N,), None, 1e-5)
        theirs = _max_err(F.rms_norm(x + r, (N,), None, 1e-5), want)
    else:
        y, h = fastln.add_layer_norm(x, r, (N,))
        want = F.layer_norm((x + r).double(), (N,))
        theirs = _max_err(F.layer_norm(x + r, (N,)), want)
    assert torch.equal(h, x + r)
    ours = _max_err(y, want)
    assert ours <= 2 * theirs, f"fastln {ours:.3g} vs torch {theirs:.3g}"


# Outputs past a threshold together (y + h forward, dx + grad_h backward) are
# written with non-temporal stores (layer_norm_cpu.cpp, stream_output: threads x
# L2, at most half the L3, 4 MiB on a 2-thread Xeon, 16 MiB on a 32 MiB L3);
# these 12.8 MB tensors are streamed on either, at 16 MiB only by the fused add's
# count, and rows of 5000 elements start at 64-byte boundaries only every few rows
# (the rest take the plain stores up to their first boundary).
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize(
    "dtype,residual_dtype", [(torch.float32, None), (torch.bfloat16, torch.float32)], ids=str
)
def test_add_norm_streamed_outputs(dtype, residual_dtype, rms):
    shape, ns = (640, 5000), (5000,)
    x, w, b = _inputs(shape, ns, dtype, None, True, not rms)
    r = torch.randn(shape, dtype=dtype)
    _check_add(x, r, ns, w, b, rms, residual_dtype=residual_dtype)


# LayerNorm and RMSNorm outputs of 16.8 MB, streamed wherever the threshold is at
# most that (up to 8 threads of 2 MiB L2; every machine in
# test_every_output_streamed_keeps_parity); rows of 4099 elements start at every
# offset from a 64-byte boundary: each row is written plainly up to its first
# boundary and streamed from there (kernels.h, rows_map).
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("dtype,M", [(torch.float32, 1024), (torch.bfloat16, 2048)], ids=str)
def test_streamed_rows_at_every_alignment(dtype, M, rms):
    N = 4099
    x, w, b = _inputs((M, N), (N,), dtype, None, True, not rms)
    g = torch.randn(M, N, dtype=dtype)
    if rms:
        _check_rms(x, (N,), w, 1e-5, g)
        return
    ours = run_layer_norm(fastln.layer_norm, x, (N,), w, b, 1e-5, g)
    want = reference(x, (N,), w, b, 1e-5, g)
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), ours, want):
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, backward=name != "out", what=name)


def _python_with_stream_env(value: str, *args: str):
    """A child Python process with FASTLN_CPU_STREAM set, importing the fastln this
    process imported (an in-place build is found through the working directory,
    which the child keeps)."""
    import os
    import subprocess
    import sys

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastln.__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "FASTLN_CPU_STREAM": value, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=900
    )


def _pytest_with_stream_env(value: str, *args: str):
    """pytest on test files of this folder in a child process with FASTLN_CPU_STREAM
    set (_python_with_stream_env)."""
    import os

    tests = os.path.dirname(os.path.abspath(__file__))
    args = tuple(os.path.join(tests, a) if a.endswith(".py") else a for a in args)
    return _python_with_stream_env(value, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args)


def test_every_output_streamed_keeps_parity():
    # FASTLN_CPU_STREAM=1 streams every output, whatever its size: the parity
    # tests of every norm then run the streaming paths (non-temporal stores, the
    # plain head of each misaligned row, tiles of short rows written plainly) at
    # every shape and dtype of their grids.
    proc = _pytest_with_stream_env(
        "1",
        "test_parity.py",
        "test_norms.py",
        "-k",
        "(test_parity or rms_norm_parity or add_norm_parity or residual_dtype or streamed"
        " or long_row) and not every_output",
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


_GRADS_SCRIPT = """
import sys, torch, fastln
torch.manual_seed(0)
out = {}
for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
    # 257 columns: 16-bit rows that are not a multiple of 64 bytes; 3001 rows
    # leave a partial tile of four.
    x, r, g = (torch.randn(3001, 257, dtype=dtype) for _ in range(3))
    w, b = torch.randn(257, requires_grad=True), torch.randn(257, requires_grad=True)
    x.requires_grad_()
    runs = {
        "layer_norm": lambda: (fastln.layer_norm(x, (257,), w, b),),
        "rms_norm": lambda: (fastln.rms_norm(x, (257,), w),),
        "add_layer_norm": lambda: fastln.add_layer_norm(x, r, (257,), w, b),
    }
    for norm, run in runs.items():
        ys = run()
        out[name, norm] = torch.autograd.grad(ys, (x, w, b), (g,) * len(ys), allow_unused=True)
torch.save(out, sys.argv[1])
"""


def test_grads_do_not_depend_on_streaming(tmp_path):
    # Whether an output is streamed depends on the thread count (the threshold
    # is threads x L2), so a kernel path chosen by it must not change the
    # summation order of dweight/dbias: every output streamed (=1) and none
    # (=0) give the same bits. (Rows taken one at a time instead of in tiles
    # when dx was streamed made bfloat16 dweight differ between thread counts.)
    results = []
    for value in ("1", "0"):
        path = tmp_path / f"grads_{value}.pt"
        proc = _python_with_stream_env(value, "-c", _GRADS_SCRIPT, str(path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(torch.load(path))
    assert results[0].keys() == results[1].keys() and len(results[0]) == 6
    for key, streamed in results[0].items():
        for i, (a, e) in enumerate(zip(streamed, results[1][key])):
            assert (a is None) == (e is None), (key, i)
            assert a is None or torch.equal(a, e), (key, ("dx", "dweight", "dbias")[i])


def test_bad_stream_env_raises():
    proc = _pytest_with_stream_env("16MiB", "test_norms.py", "-k", "test_add_norm_streamed_outputs")
    assert proc.returncode != 0
    assert "FASTLN_CPU_STREAM must be a byte count (0: never stream), got '16MiB'" in proc.stdout


def _cache_bytes(level: int, fallback: int) -> int:
    """sysconf(_SC_LEVEL<level>_CACHE_SIZE) of the C library, as the kernels ask it
    (Python's os.sysconf does not know the names: glibc numbers them 191 and 194)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return fallback
    sysconf = ctypes.CDLL(None).sysconf
    sysconf.restype = ctypes.c_long
    value = sysconf({2: 191, 3: 194}[level])
    return value if value > 0 else fallback


@pytest.mark.skipif("FASTLN_CPU_STREAM" in __import__("os").environ, reason="threshold set")
def test_stream_threshold_follows_caches():
    # The default threshold is the writing threads' L2 caches, at most half the L3
    # (layer_norm_cpu.cpp, stream_threshold), with the same fallbacks.
    from fastln._ops import cpu_stream_bytes

    l2 = _cache_bytes(2, 1 << 20)
    l3 = _cache_bytes(3, 32 << 20)
    before = torch.get_num_threads()
    try:
        for threads in sorted({1, before}):
            torch.set_num_threads(threads)
            assert cpu_stream_bytes() == min(threads * l2, l3 // 2), threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value,want", [("12345", 12345), ("0", None)])
def test_stream_env_sets_threshold(value, want):
    code = "from fastln._ops import cpu_stream_bytes; print(repr(cpu_stream_bytes()))"
    proc = _python_with_stream_env(value, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == repr(want)


# --- 4. gradcheck / gradgradcheck in float64 --------------------------------------

GRAD_CASES = [
    ((3, 5), (5,), True),
    ((2, 3, 4), (3, 4), True),
    ((4, 7), (7,), False),
    ((2, 1), (1,), True),
    ((3, 33), (33,), True),
]


def _f64(shape, rg=True):
    return torch.randn(shape, dtype=torch.float64, requires_grad=rg)


@pytest.mark.parametrize("check", [gradcheck, gradgradcheck], ids=["grad", "gradgrad"])
@pytest.mark.parametrize("eps", [1e-5, None])
@pytest.mark.parametrize("shape,ns,affine", GRAD_CASES, ids=str)
def test_rms_norm_gradcheck(shape, ns, affine, eps, check):
    x, w = _f64(shape), _f64(ns) if affine else None
    assert check(lambda x, w: fastln.rms_norm(x, ns, w, eps), (x, w))


def _add_fn(rms, ns):
    if rms:
        return lambda x, r, w, b: fastln.add_rms_norm(x, r, ns, w)
    return lambda x, r, w, b: fastln.add_layer_norm(x, r, ns, w, b)


ADD_GRAD_CASES = {
    f"{'x'.join(map(str, shape))}-{name}": (shape, ns, rms, affine, with_bias)
    for shape, ns in (((3, 5), (5,)), ((2, 3, 4), (3, 4)))
    for (rms, affine, with_bias), name in zip(ADD_AFFINE, ADD_AFFINE_IDS)
}


def _add_grad_args(shape, ns, affine, with_bias):
    return _f64(shape), _f64(shape), _f64(ns) if affine else None, _f64(ns) if with_bias else None


@pytest.mark.parametrize("case", list(ADD_GRAD_CASES))
def test_add_norm_gradcheck(case):
    shape, ns, rms, affine, with_bias = ADD_GRAD_CASES[case]
    assert gradcheck(_add_fn(rms, ns), _add_grad_args(shape, ns, affine, with_bias))
    for i in (0, 1):  # each output alone (the other gets no gradient)
        f = _add_fn(rms, ns)
        assert gradcheck(
            lambda *a, f=f, i=i: f(*a)[i], _add_grad_args(shape, ns, affine, with_bias)
        )


def _composite_add(x, r, ns, w, b, rms):
    h = x + r
    return (F.rms_norm(h, ns, w) if rms else F.layer_norm(h, ns, w, b)), h


def _double_backward_vs_torch(which):
    # Gradient-penalty style: d/d(x, r, w, b) of ||d loss/d x||^2, create_graph=True.
    x0, r0, w0, b0 = (torch.randn(s, dtype=torch.float64) for s in ((5, 9), (5, 9), 9, 9))
    results = []
    for ours in (True, False):
        x, r, w, b = (t.clone().requires_grad_() for t in (x0, r0, w0, b0))
        if which == "rms_norm":
            y = (fastln.rms_norm if ours else F.rms_norm)(x, (9,), w)
            loss = (y * y.sin()).sum()
        else:
            rms = which == "add_rms_norm"
            if ours:
                y, h = (
                    fastln.add_rms_norm(x, r, (9,), w)
                    if rms
                    else fastln.add_layer_norm(x, r, (9,), w, b)
                )
            else:
                y, h = _composite_add(x, r, (9,), w, b, rms)
            loss = (y * y.sin()).sum() + (h * y).sum()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        gx.square().sum().backward()
        results.append([_grad(t) for t in (x, r, w, b)])
    for a, e, name in zip(*results, ("x", "residual", "weight", "bias")):
        assert_close(a, e, torch.float64, backward=True, what=name)


def test_rms_norm_double_backward_matches_torch():
    _double_backward_vs_torch("rms_norm")


# The double backward of the fused add norms runs in a child process: one that
# never returns (as a backward re-entering its own node does) must fail the
# tests, not hang the suite. The child gives each case 30 s (its real cost is
# well under a second), then dumps its stack and exits.
# (After a case that hangs the child stops, so those with a weight, the
# likelier to re-enter, come last.)
DOUBLE_BACKWARD_CASES = sorted(
    ["vs-torch-add_layer_norm", "vs-torch-add_rms_norm"]
    + [f"gradgradcheck-{c}" for c in ADD_GRAD_CASES]
    + [f"gradgradcheck-{c}-output{i}" for c in ADD_GRAD_CASES for i in (0, 1)],
    key=lambda n: ("weight" in n and not n.endswith("output1"), n),
)


def _double_backward_case(name: str) -> None:
    torch.manual_seed(0)
    if name.startswith("vs-torch-"):
        _double_backward_vs_torch(name[len("vs-torch-") :])
        return
    case = name[len("gradgradcheck-") :]
    output = None
    if case.endswith(("-output0", "-output1")):
        case, output = case[: -len("-output0")], int(case[-1])
    shape, ns, rms, affine, with_bias = ADD_GRAD_CASES[case]
    f = _add_fn(rms, ns)
    g = f if output is None else (lambda *a: f(*a)[output])
    assert gradgradcheck(g, _add_grad_args(shape, ns, affine, with_bias))


_CHILD = """
import faulthandler, os, sys, traceback
sys.path.insert(0, {tests!r})
import test_norms
for name in {names!r}:
    print("START", name, flush=True)
    faulthandler.dump_traceback_later({limit}, exit=True)
    try:
        test_norms._double_backward_case(name)
    except Exception:
        print("FAIL", name, repr(traceback.format_exc()), flush=True)
    else:
        print("OK", name, flush=True)
    faulthandler.cancel_dump_traceback_later()
"""


@pytest.fixture(scope="module")
def double_backward_results() -> dict[str, str]:
    import os
    import subprocess
    import sys

    script = _CHILD.format(
        tests=os.path.dirname(os.path.abspath(__file__)), names=DOUBLE_BACKWARD_CASES, limit=30
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    results: dict[str, str] = {}
    last = None
    for line in proc.stdout.splitlines():
        tag, _, rest = line.partition(" ")
        name, _, detail = rest.partition(" ")
        if tag == "START":
            last = name
        elif tag == "OK":
            results[name] = "ok"
        elif tag == "FAIL":
            results[name] = eval(detail)  # noqa: S307 - the repr of the child's traceback
    for name in DOUBLE_BACKWARD_CASES:
        if name in results:
            continue
        if name == last:
            results[name] = f"no result within 30 s (rc {proc.returncode}): {proc.stderr[-3000:]}"
        else:
            results[name] = f"not run: the child process stopped at {last}"
    return results


@pytest.mark.parametrize("name", DOUBLE_BACKWARD_CASES)
def test_add_norm_double_backward(name, double_backward_results):
    assert double_backward_results[name] == "ok", double_backward_results[name]


# --- 5. torch.compile and opcheck ---------------------------------------------------


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 24)
        self.w1, self.w2, self.b2 = (nn.Parameter(torch.randn(24)) for _ in range(3))

    def forward(self, x, res):
        a = fastln.rms_norm(self.lin(x), (24,), self.w1)
        y, h = fastln.add_rms_norm(a, res, (24,), self.w1, 1e-6)
        z, h2 = fastln.add_layer_norm(y, h, (24,), self.w2, self.b2)
        return (z * h2).relu() + h2


def _compile_vs_eager(backend):
    torch._dynamo.reset()
    model = _Block()
    x, res = torch.randn(5, 16), torch.randn(5, 24)
    results = []
    for fn in (torch.compile(model, fullgraph=True, backend=backend), model):
        xl, rl = _leaf(x), _leaf(res)
        model.zero_grad()
        out = fn(xl, rl)
        out.sum().backward()
        results.append([out, xl.grad, rl.grad] + [p.grad.clone() for p in model.parameters()])
    for i, (a, e) in enumerate(zip(*results)):
        assert_close(a, e.double(), torch.float32, backward=i > 0, what=f"output {i}")


def test_compile_aot_eager_fullgraph():
    _compile_vs_eager("aot_eager")


def test_compile_inductor_fullgraph():
    _compile_vs_eager("inductor")


def test_compile_no_graph_break():
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_Block())(torch.randn(5, 16), torch.randn(5, 24))
    assert explanation.graph_break_count == 0


def test_compile_rms_module_bf16_residual_dtype():
    torch._dynamo.reset()

    def f(x, r, w):
        y, h = fastln.add_rms_norm(x, r, (32,), w, residual_dtype=torch.float32)
        return fastln.rms_norm(y, (32,)), h

    x, r = torch.randn(4, 32).bfloat16(), torch.randn(4, 32)
    w = torch.randn(32)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, r, w)
    want = f(x, r, w)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert_close(got[0], want[0].double(), torch.bfloat16)
    assert torch.equal(got[1], want[1])


def _opcheck_samples():
    x = torch.randn(4, 6, 8)
    r = torch.randn(4, 6, 8)
    w, b = torch.randn(8), torch.randn(8)
    xb, rb = x.bfloat16(), r.bfloat16()

    def grad(t):
        return t.detach().clone().requires_grad_()

    # kernel ops
    yield "rms_norm_fwd", (x, [8], w, 1e-5)
    yield "rms_norm_fwd", (x, [6, 8], None, 1e-5)
    yield "rms_norm_fwd", (xb, [8], w, 1e-5)
    yield "rms_norm_fwd", (x.double(), [8], w.double(), 0.0)
    _, rstd = torch.ops.fastln.rms_norm_fwd(x, [8], w, 1e-5)
    _, rstd16 = torch.ops.fastln.rms_norm_fwd(xb, [8], w, 1e-5)
    dy = torch.randn_like(x)
    yield "rms_norm_bwd", (dy, x, [8], rstd, w, [True, True])
    yield "rms_norm_bwd", (dy, x, [8], rstd, w, [True, False])
    yield "rms_norm_bwd", (dy, x, [8], rstd, None, [True, False])
    yield "rms_norm_bwd", (dy.bfloat16(), xb, [8], rstd16, w, [True, True])
    yield "add_norm_fwd", (x, r, [8], w, b, 1e-5, False, torch.float32)
    yield "add_norm_fwd", (x, r, [8], w, None, 1e-6, True, torch.float32)
    yield "add_norm_fwd", (xb, rb, [8], w, b, 1e-5, False, torch.float32)
    yield "add_norm_fwd", (xb, r, [8], w, None, 1e-6, True, torch.float32)
    yield "add_norm_fwd", (xb, rb, [8], None, None, 1e-5, False, torch.bfloat16)
    yield "add_norm_fwd", (x.double(), r.double(), [6, 8], None, None, 0.0, True, torch.float64)
    gh = torch.randn_like(x)
    _, h, mean, rstd = torch.ops.fastln.add_norm_fwd(x, r, [8], w, b, 1e-5, False, torch.float32)
    yield "add_norm_bwd", (dy, gh, h, [8], mean, rstd, w, b, False, [True, True, True])
    yield "add_norm_bwd", (dy, None, h, [8], mean, rstd, w, b, False, [True, False, True])
    yield "add_norm_bwd", (dy, gh, h, [8], mean, rstd, None, None, False, [True, False, False])
    _, h, mean, rstd = torch.ops.fastln.add_norm_fwd(x, r, [8], w, None, 1e-5, True, torch.float32)
    yield "add_norm_bwd", (dy, gh, h, [8], mean, rstd, w, None, True, [True, True, False])
    _, h, mean, rstd = torch.ops.fastln.add_norm_fwd(xb, rb, [8], w, b, 1e-5, False, torch.float32)
    yield "add_norm_bwd", (dy.bfloat16(), gh, h, [8], mean, rstd, w, b, False, [True, True, True])
    # the autograd ops fastln's functions call
    yield "rms_norm", (grad(x), [8], grad(w), 1e-5)
    yield "rms_norm", (grad(x), [6, 8], None, None)
    yield "rms_norm", (x, [8], grad(w), None)
    yield "rms_norm", (grad(xb), [8], grad(w), None)
    yield "rms_norm", (x.double(), [8], w.double(), None)
    yield "add_norm", (grad(x), grad(r), [8], grad(w), grad(b), 1e-5, False, None)
    yield "add_norm", (grad(x), r, [8], grad(w), None, None, True, None)
    yield "add_norm", (grad(xb), grad(rb), [8], grad(w), grad(b), 1e-5, False, torch.float32)
    yield "add_norm", (grad(xb), grad(r), [8], grad(w), None, None, True, torch.float32)
    yield "add_norm", (x, grad(r), [8], None, None, None, True, None)
    yield "add_norm", (x, r, [6, 8], w.expand(6, 8), None, 1e-5, False, None)


@pytest.mark.parametrize(
    "op,args", list(_opcheck_samples()), ids=lambda v: v if isinstance(v, str) else None
)
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.fastln, op).default, args)


def test_opcheck_covers_every_new_op():
    ops = {op for op, _ in _opcheck_samples()}
    assert ops == {
        "rms_norm_fwd",
        "rms_norm_bwd",
        "add_norm_fwd",
        "add_norm_bwd",
        "rms_norm",
        "add_norm",
    }


# --- 6. replace_norms -------------------------------------------------------------


class _MyLN(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x) * 2


class _MyRMS(nn.RMSNorm):
    def forward(self, x):
        return super().forward(x) * 3


def _model():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(16, 16),
        nn.LayerNorm(16),
        nn.RMSNorm(16),
        _MyLN(16),
        _MyRMS(16),
        nn.Sequential(nn.RMSNorm(16, elementwise_affine=False), nn.LayerNorm(16, bias=False)),
    ).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_replace_norms():
    model = _model()
    x = torch.randn(5, 16, dtype=torch.float64)
    want = model(x)
    params = list(model.parameters())
    modules = list(model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in params]

    assert fastln.replace_norms(model) is model
    assert list(model.modules()) == modules  # the same module objects
    assert [type(m) for m in model] == [
        nn.Linear,
        fastln.LayerNorm,
        fastln.RMSNorm,
        _MyLN,
        _MyRMS,
        nn.Sequential,
    ]
    assert [type(m) for m in model[5]] == [fastln.RMSNorm, fastln.LayerNorm]
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert model[1].weight.dtype == torch.float64
    assert model[5][0].weight is None and model[5][1].bias is None

    got = model(x)
    assert_close(got, want, torch.float64)
    got.square().sum().backward()
    opt.step()
    for p, p0 in zip(params, before):
        if p.grad is not None:
            assert not torch.equal(p, p0)  # the optimizer built before still updates them
    for m in (model[1], model[2]):
        (i,) = (i for i, p in enumerate(params) if p is m.weight)
        assert not torch.equal(m.weight, before[i])


def test_replace_norms_root_and_replace_layernorm():
    assert type(fastln.replace_norms(nn.RMSNorm(4))) is fastln.RMSNorm
    assert type(fastln.replace_norms(nn.LayerNorm(4))) is fastln.LayerNorm
    model = nn.Sequential(nn.LayerNorm(4), nn.RMSNorm(4))
    fastln.replace_layernorm(model)  # replace_layernorm stays, LayerNorm only
    assert type(model[0]) is fastln.LayerNorm and type(model[1]) is nn.RMSNorm


# --- 7. determinism -----------------------------------------------------------------


def test_parameter_grads_deterministic_across_thread_counts():
    M, N = 3001, 257
    x, g, r = torch.randn(M, N), torch.randn(M, N), torch.randn(M, N)
    w, b = torch.randn(N), torch.randn(N)
    _, rstd = torch.ops.fastln.rms_norm_fwd(x, [N], w, 1e-5)
    _, h, mean, hrstd = torch.ops.fastln.add_norm_fwd(x, r, [N], w, b, 1e-5, False, torch.float32)
    _, h2, mean2, hrstd2 = torch.ops.fastln.add_norm_fwd(
        x, r, [N], w, None, 1e-5, True, torch.float32
    )
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(
                torch.ops.fastln.rms_norm_bwd(g, x, [N], rstd, w, [True, True])
                + torch.ops.fastln.add_norm_bwd(
                    g, g, h, [N], mean, hrstd, w, b, False, [True, True, True]
                )
                + torch.ops.fastln.add_norm_bwd(
                    g, None, h2, [N], mean2, hrstd2, w, None, True, [True, True, False]
                )[:2]
            )
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for i, (a, e) in enumerate(zip(results[0], other)):
            assert torch.equal(a, e), i


# --- 8. edge cases ------------------------------------------------------------------

EMPTY = [((0, 8), (8,)), ((2, 0, 8), (8,)), ((4, 0), (0,)), ((3, 2, 0), (2, 0))]


@pytest.mark.parametrize("shape,ns", EMPTY, ids=str)
def test_rms_norm_empty(shape, ns):
    x, w, g = torch.randn(shape), torch.randn(ns), torch.randn(shape)
    ours = _run_rms(fastln.rms_norm, x, ns, w, None, g)
    theirs = _run_rms(F.rms_norm, x, ns, w, None, g)
    for a, e in zip(ours, theirs):
        assert a.shape == e.shape and a.dtype == e.dtype and torch.equal(a, e)
    assert torch.equal(ours[2], torch.zeros(ns))
    _, rstd = torch.ops.fastln.rms_norm_fwd(x, list(ns), None, 1e-5)
    axis = len(shape) - len(ns)
    assert list(rstd.shape) == list(shape[:axis]) + [1] * len(ns)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("shape,ns", EMPTY, ids=str)
def test_add_norm_empty(shape, ns, rms):
    x, r, w, b = torch.randn(shape), torch.randn(shape), torch.randn(ns), torch.randn(ns)
    b = None if rms else b
    gy, gh = torch.randn(shape), torch.randn(shape)
    fn = fastln.add_rms_norm if rms else fastln.add_layer_norm
    y, h, dx, dr, dw, db = _run_add(fn, x, r, ns, w, b, None if rms else 1e-5, None, gy, gh, rms)
    ty, th = _composite_add(x, r, ns, w, b, rms)
    assert y.shape == ty.shape and torch.equal(y, ty) and torch.equal(h, th)
    assert dx.shape == x.shape and dr.shape == r.shape
    assert torch.equal(dx, gh) and torch.equal(dr, gh)
    assert torch.equal(dw, torch.zeros(ns))
    if not rms:
        assert torch.equal(db, torch.zeros(ns))


def _views(base):
    return {"transposed": base.t(), "strided": base[::2, ::2], "offset": base[:, 1:]}


@pytest.mark.parametrize("view", ["transposed", "strided", "offset"])
def test_rms_norm_non_contiguous(view):
    x = _views(torch.randn(64, 130))[view]
    N = x.shape[-1]
    _check_rms(x, (N,), torch.randn(2 * N)[::2], None, torch.randn(x.shape[1], x.shape[0]).t())


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("view", ["transposed", "strided", "offset"])
def test_add_norm_non_contiguous(view, rms):
    x = _views(torch.randn(64, 130))[view]
    r = _views(torch.randn(64, 130))[view]
    N = x.shape[-1]
    w = torch.randn(2 * N)[::2]
    b = None if rms else torch.randn(N + 1)[1:]
    _check_add(x, r, (N,), w, b, rms)
    _check_add(x.contiguous(), r, (N,), w, b, rms)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("which", ["residual", "input", "weight"])
def test_add_norm_some_inputs_require_grad(which, rms):
    x, r, w, b = torch.randn(5, 33), torch.randn(5, 33), torch.randn(33), torch.randn(33)
    b = None if rms else b
    gy, gh = torch.randn(5, 33), torch.randn(5, 33)
    fn = fastln.add_rms_norm if rms else fastln.add_layer_norm
    eps = None if rms else 1e-5
    rg = tuple(name == which for name in ("input", "residual", "weight", "bias"))
    y, h, dx, dr, dw, db = _run_add(fn, x, r, (33,), w, b, eps, None, gy, gh, rms, rg=rg)
    assert y.requires_grad
    if which == "weight":
        gh = None  # h's gradient reaches no weight (see the test below)
    _, _, rdh, rdw, _ = _add_ref(x, r, (33,), w, b, eps, rms, torch.float32, gy, gh)
    for name, got, want in (("input", dx, rdh), ("residual", dr, rdh), ("weight", dw, rdw)):
        if name == which:
            assert_close(got, want, torch.float32, backward=True, what=name)
        else:
            assert got is None, name
    assert db is None


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_add_norm_h_requires_grad_like_torch(rms):
    # torch's h = x + residual requires grad iff x or the residual does; a
    # weight that requires grad makes only y require it.
    x, r, w = torch.randn(5, 33), torch.randn(5, 33), torch.randn(33, requires_grad=True)
    fn = fastln.add_rms_norm if rms else fastln.add_layer_norm
    y, h = fn(x, r, (33,), w)
    assert y.requires_grad and not h.requires_grad


def test_no_grad_paths():
    x, r, w = torch.randn(3, 17), torch.randn(3, 17), torch.randn(17, requires_grad=True)
    for call in (
        lambda: (fastln.rms_norm(x, [17], w),),
        lambda: fastln.add_rms_norm(x, r, [17], w),
        lambda: fastln.add_layer_norm(x, r, [17], w),
    ):
        with torch.no_grad():
            assert all(not t.requires_grad for t in call())
        with torch.inference_mode():
            assert all(t.is_inference() for t in call())
    y = fastln.rms_norm(x, [17])
    assert not y.requires_grad and y.grad_fn is None
    y, h = fastln.add_rms_norm(x, r, [17])
    assert not y.requires_grad and not h.requires_grad


# --- 9. torch.func --------------------------------------------------------------------


def test_func_grad_rms_norm():
    x, w = torch.randn(5, 16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def loss(fn):
        return lambda x, w: fn(x, (16,), w).sin().sum()

    ours = torch.func.grad(loss(fastln.rms_norm), argnums=(0, 1))(x, w)
    theirs = torch.func.grad(loss(F.rms_norm), argnums=(0, 1))(x, w)
    for a, e in zip(ours, theirs):
        assert_close(a, e, torch.float64, backward=True)


@pytest.mark.parametrize("in_dim", [0, 1])
def test_func_vmap_rms_norm(in_dim):
    x, w = torch.randn(4, 5, 16), torch.randn(16)
    ours = torch.func.vmap(fastln.rms_norm, in_dims=(in_dim, None, None))(x, (16,), w)
    theirs = torch.func.vmap(F.rms_norm, in_dims=(in_dim, None, None))(x, (16,), w)
    assert_close(ours, theirs.double(), torch.float32)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_func_grad_add_norm(rms):
    x, r, w, b = (torch.randn(s, dtype=torch.float64) for s in ((5, 16), (5, 16), 16, 16))

    def ours(x, r, w, b):
        y, h = (
            fastln.add_rms_norm(x, r, (16,), w) if rms else fastln.add_layer_norm(x, r, (16,), w, b)
        )
        return y.sin().sum() + (h * h).sum()

    def theirs(x, r, w, b):
        y, h = _composite_add(x, r, (16,), w, b, rms)
        return y.sin().sum() + (h * h).sum()

    argnums = (0, 1, 2) if rms else (0, 1, 2, 3)
    got = torch.func.grad(ours, argnums=argnums)(x, r, w, b)
    want = torch.func.grad(theirs, argnums=argnums)(x, r, w, b)
    for a, e in zip(got, want):
        assert_close(a, e, torch.float64, backward=True)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
def test_func_vmap_add_norm(rms):
    x, r, w = torch.randn(4, 5, 16), torch.randn(4, 5, 16), torch.randn(16)

    def ours(x, r):
        return fastln.add_rms_norm(x, r, (16,), w) if rms else fastln.add_layer_norm(x, r, (16,), w)

    got = torch.func.vmap(ours)(x, r)
    want = torch.func.vmap(lambda x, r: _composite_add(x, r, (16,), w, None, rms))(x, r)
    for a, e in zip(got, want):
        assert_close(a, e.double(), torch.float32)
