"""fastln's CUDA kernels of RMSNorm and of the fused residual add + norm
(rms_norm_fwd/bwd, add_norm_fwd/bwd, schemas.h) against float64 references
computed with plain torch ops on the same (rounded) inputs.

Like tests/test_cuda.py, each test runs on every backend that is present (a
GPU with the CUDA build, and the SIMT backend, which executes the same kernel
source on the CPU); CI's SIMT lane runs it there. Tolerances come from
conftest.TOLERANCES. The row lengths cover every path of the tuning table
(csrc/cuda/plan.h), with few rows for the long ones to keep the SIMT runtime
modest.
"""

from __future__ import annotations

import pytest
import test_cuda
import torch
from conftest import assert_close

# tests/test_cuda.py's fixture: every backend that is present.
backend = test_cuda.backend

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOW = [torch.float16, torch.bfloat16]
# Every plan path, forward and backward (plan.h; float / 16-bit rows):
#   1, 7, 100, 127, 300: groups of 1..32 lanes per row (several rows per block);
#   768, 1000: a warp per row (forward 32 columns per lane, backward a block);
#   2048: a block per row, 8 columns per thread; 4099, 6144: 16 columns;
#   12288: forward 32 columns per thread, backward the looping kernel with x
#   and dy cached in shared memory; 20000: the looping forward with the row
#   cached; 65536: the looping kernels without the cache (float rows, and the
#   float32 h of the fused add). Odd lengths (1, 7, 127, 4099) and 100, 300,
#   1000 for 16-bit types take the scalar (unvectorized) kernels.
NS = [1, 7, 100, 127, 300, 768, 1000, 2048, 4099, 6144, 12288, 20000, 65536]


def rows_for(n: int) -> int:
    # Several rows per block with a ragged last block for short rows, about
    # 2^16 elements in all (a few rows for the long ones).
    return max(2, min(67, (1 << 16) // n))


def randn(shape, dtype, device, scale=1.0, offset=0.0):
    return (torch.randn(shape, dtype=torch.float64, device=device) * scale + offset).to(dtype)


def make_weight(n, dtype, device):
    return randn((n,), dtype, device, 0.2, 1.0)


def grad_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad_out with a mean and a component along x: with independent noise
    alone, the backward's mean(g) and mean(g * xhat) terms would be of order
    1 / sqrt(N), below the 16-bit tolerances on long rows, and a wrong sign
    there would go unnoticed."""
    noise = torch.randn(x.shape, dtype=torch.float64, device=x.device)
    return (noise + 0.5 * x.double() + 0.3).to(dtype)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# float64 references.


def ref_norm(h, n, weight, bias, eps, rms):
    """Layer norm or RMSNorm of h in float64, over the last dim of size n."""
    hd = h.double()
    if rms:
        rstd = torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + eps)
        out = hd * rstd
        mean = None
    else:
        # Centered on the row's first element, which changes nothing but keeps
        # float64 exact on offset rows (as conftest.reference does).
        shifted = hd - hd[..., :1]
        mu = shifted.mean(-1, keepdim=True)
        var = (shifted - mu).pow(2).mean(-1, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        out = (shifted - mu) * rstd
        mean = mu + hd[..., :1]
    if weight is not None:
        out = out * weight.double()
    if bias is not None:
        out = out + bias.double()
    return out, mean, rstd


def ref_grads(h, n, weight, bias, eps, rms, grad_out):
    """(dh, dweight, dbias) of the float64 norm of h for grad_out."""
    leaves = [
        None if t is None else t.detach().double().requires_grad_() for t in (h, weight, bias)
    ]
    out, _, _ = ref_norm(leaves[0], n, leaves[1], leaves[2], eps, rms)
    out.backward(grad_out.double())
    return tuple(None if t is None else t.grad for t in leaves)


# ---------------------------------------------------------------------------
# RMSNorm.


def check_rms(backend, m, n, dtype, w_dtype, eps=1e-5, mask=(True, True)):
    dev = backend.device
    x = randn((m, n), dtype, dev, 2.0, 0.5)
    w = None if w_dtype is None else make_weight(n, w_dtype, dev)
    g = grad_like(x, dtype)
    out, rstd = backend.rms_fwd(x, [n], w, eps)
    assert out.dtype == dtype and out.shape == x.shape
    assert rstd.dtype == acc_dtype(dtype) and rstd.shape == (m, 1)
    r_out, _, r_rstd = ref_norm(x, n, w, None, eps, rms=True)
    assert_close(out, r_out, dtype, what=f"rms N={n} out")
    assert_close(rstd, r_rstd, acc_dtype(dtype), what=f"rms N={n} rstd")
    dx, dw = backend.rms_bwd(g, x, [n], rstd, w, list(mask))
    r_dx, r_dw, _ = ref_grads(x, n, w, None, eps, True, g)
    if mask[0]:
        assert dx.dtype == dtype
        assert_close(dx, r_dx, dtype, backward=True, what=f"rms N={n} dx")
    else:
        assert dx is None
    if mask[1] and w is not None:
        assert dw.dtype == w.dtype
        assert_close(dw, r_dw, w.dtype, backward=True, what=f"rms N={n} dweight")
    else:
        assert dw is None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", NS)
def test_rms_norm(backend, n, dtype):
    check_rms(backend, rows_for(n), n, dtype, dtype)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("n", [7, 768, 4096, 12288, 20000])
def test_rms_norm_float_weight(backend, n, dtype):
    """half/bfloat16 input with a float32 weight: output in the input's dtype,
    dweight in float32."""
    check_rms(backend, rows_for(n), n, dtype, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [7, 1000, 12288])
def test_rms_norm_no_weight(backend, n, dtype):
    check_rms(backend, rows_for(n), n, dtype, None)


@pytest.mark.parametrize("m", [1, 3, 301])
def test_rms_norm_rows(backend, m):
    check_rms(backend, m, 256, torch.float32, torch.float32)
    check_rms(backend, m, 3000, torch.bfloat16, torch.bfloat16)


@pytest.mark.parametrize("mask", [(True, False), (False, True)])
@pytest.mark.parametrize("n", [64, 4096, 12288])
def test_rms_norm_output_mask(backend, n, mask):
    check_rms(backend, rows_for(n), n, torch.float32, torch.float32, mask=mask)


def test_rms_norm_eps_zero(backend):
    check_rms(backend, 9, 768, torch.float32, torch.float32, eps=0.0)


def test_rms_norm_empty(backend):
    dev = backend.device
    for dtype in (torch.float32, torch.bfloat16):
        w = make_weight(16, dtype, dev)
        x = torch.empty(0, 16, dtype=dtype, device=dev)
        out, rstd = backend.rms_fwd(x, [16], w, 1e-5)
        assert out.shape == (0, 16) and rstd.shape == (0, 1)
        dx, dw = backend.rms_bwd(x, x, [16], rstd, w, [True, True])
        assert dx.shape == (0, 16) and torch.equal(dw, torch.zeros_like(w))
        # Empty rows: rstd NaN (1 / sqrt(0 / 0)), as for layer_norm.
        x = torch.empty(5, 0, dtype=dtype, device=dev)
        w0 = torch.empty(0, dtype=dtype, device=dev)
        out, rstd = backend.rms_fwd(x, [0], w0, 1e-5)
        assert out.shape == (5, 0) and rstd.shape == (5, 1) and torch.isnan(rstd).all()
        dx, dw = backend.rms_bwd(x, x, [0], rstd, w0, [True, True])
        assert dx.shape == (5, 0) and dw.shape == (0,)


def test_rms_norm_multidim(backend):
    dev = backend.device
    x = randn((3, 5, 4, 64), torch.float32, dev)
    w = make_weight(256, torch.float32, dev).view(4, 64)
    out, rstd = backend.rms_fwd(x, [4, 64], w, 1e-5)
    assert rstd.shape == (3, 5, 1, 1)
    r_out, _, _ = ref_norm(x.view(15, 256), 256, w.view(256), None, 1e-5, True)
    assert_close(out, r_out.view(x.shape), torch.float32, what="multidim out")


# ---------------------------------------------------------------------------
# The fused residual add.

# (input X, residual stream H, residual R, parameters W): H is X, or float32
# under half/bfloat16 input; R is X or H; W is X or float32 for 16-bit X.
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
ADD_TYPES = [
    (F32, F32, F32, F32),
    (F64, F64, F64, F64),
    (F16, F16, F16, F16),
    (BF16, BF16, BF16, BF16),
    (F16, F16, F16, F32),
    (BF16, F32, F32, BF16),
    (BF16, F32, BF16, F32),
    (F16, F32, F16, F16),
]


ADD_NS = [7, 127, 768, 1000, 4099, 12288, 20000, 65536]


def type_id(t) -> str:
    return "-".join(str(d).removeprefix("torch.") for d in t)


def add_case(backend, m, n, types, affine, rms, offset=0.0):
    x_t, h_t, r_t, w_t = types
    dev = backend.device
    x = randn((m, n), x_t, dev, 1.0, offset)
    r = randn((m, n), r_t, dev, 1.5, 0.5)
    w = make_weight(n, w_t, dev) if "w" in affine else None
    b = randn((n,), w_t, dev, 0.2) if "b" in affine and not rms else None
    return x, r, w, b


def check_add(
    backend,
    m,
    n,
    types,
    rms,
    affine="wb",
    grad_h=True,
    mask=(True, True, True),
    eps=1e-5,
    offset=0.0,
):
    x_t, h_t, r_t, w_t = types
    x, r, w, b = add_case(backend, m, n, types, affine, rms, offset)
    out, h, mean, rstd = backend.add_fwd(x, r, [n], w, b, eps, rms, h_t)
    acc = acc_dtype(x_t)
    # h: the sum in the accumulation type, rounded once to H (exactly).
    h_ref = (x.to(acc) + r.to(acc)).to(h_t)
    assert h.dtype == h_t and out.dtype == x_t and out.shape == x.shape
    assert torch.equal(h, h_ref), f"h differs from (x + residual) in {acc} rounded to {h_t}"
    r_out, r_mean, r_rstd = ref_norm(h_ref, n, w, b, eps, rms)
    what = f"add {'rms' if rms else 'ln'} {type_id(types)} N={n}"
    assert_close(out, r_out, x_t, what=f"{what} out")
    assert rstd.dtype == acc and rstd.shape == (m, 1)
    assert_close(rstd, r_rstd, acc, what=f"{what} rstd")
    if rms:
        assert mean.shape == (0,) and mean.dtype == acc
    else:
        assert mean.dtype == acc and mean.shape == (m, 1)
        assert_close(mean, r_mean, acc, what=f"{what} mean")

    dev = backend.device
    g = grad_like(h_ref, x_t)
    gh = randn((m, n), h_t, dev) if grad_h else None
    dh, dw, db = backend.add_bwd(g, gh, h, [n], mean, rstd, w, b, rms, list(mask))
    r_dh, r_dw, r_db = ref_grads(h_ref, n, w, b, eps, rms, g)
    if gh is not None:
        r_dh = r_dh + gh.double()
    for got, want, param, ref, name, dt in (
        (dh, mask[0], h, r_dh, "dh", h_t),
        (dw, mask[1], w, r_dw, "dweight", w_t),
        (db, mask[2], b, r_db, "dbias", w_t),
    ):
        if want and param is not None:
            assert got.dtype == dt, f"{what} {name} dtype {got.dtype}"
            assert_close(got, ref, dt, backward=True, what=f"{what} {name}")
        else:
            assert got is None, f"{what} {name} computed although not requested"


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("types", ADD_TYPES, ids=type_id)
@pytest.mark.parametrize("n", ADD_NS)
def test_add_norm(backend, n, types, rms):
    # grad_h alternates along ADD_NS, so that both forms meet every type and
    # the register and looping kernels.
    check_add(backend, rows_for(n), n, types, rms, grad_h=ADD_NS.index(n) % 2 == 0)


@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("types", ADD_TYPES[:4], ids=type_id)
@pytest.mark.parametrize("n", [1, 100, 300, 2048, 6144])
def test_add_norm_more_lengths(backend, n, types, rms):
    check_add(backend, rows_for(n), n, types, rms, grad_h=n % 3 != 0)


@pytest.mark.parametrize("affine", ["w", "b", "none"])
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("n", [64, 1024, 12288])
def test_add_norm_affine(backend, n, rms, affine):
    if rms and affine == "b":
        pytest.skip("RMSNorm has no bias")
    check_add(backend, rows_for(n), n, (BF16, F32, BF16, F32), rms, affine=affine)
    check_add(backend, rows_for(n), n, (F32, F32, F32, F32), rms, affine=affine, grad_h=False)


@pytest.mark.parametrize("m", [1, 3, 301])
def test_add_norm_rows(backend, m):
    for rms in (False, True):
        check_add(backend, m, 512, (F16, F32, F32, F32), rms)
        check_add(backend, m, 3000, (BF16, BF16, BF16, BF16), rms, grad_h=False)


@pytest.mark.parametrize(
    "mask", [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]
)
@pytest.mark.parametrize("rms", [False, True], ids=["ln", "rms"])
@pytest.mark.parametrize("n", [64, 4096, 65536])
def test_add_norm_output_mask(backend, n, rms, mask):
    check_add(backend, rows_for(n), n, (F32, F32, F32, F32), rms, mask=mask)


def test_add_norm_offset_rows(backend):
    """A large common offset in h: the layer norm keeps the shifted statistics
    (and the backward's mean correction) of layer_norm_fwd on the fused path."""
    for n in (512, 4096, 65536):
        check_add(backend, 4, n, (F32, F32, F32, F32), False, offset=300.0)


def test_add_norm_empty(backend):
    dev = backend.device
    for rms in (False, True):
        for x_t, h_t in ((F32, F32), (BF16, F32)):
            for m, n in ((0, 16), (5, 0)):
                x = torch.empty(m, n, dtype=x_t, device=dev)
                w = make_weight(n, x_t, dev)
                b = None if rms else randn((n,), x_t, dev)
                out, h, mean, rstd = backend.add_fwd(x, x, [n], w, b, 1e-5, rms, h_t)
                assert out.shape == h.shape == (m, n) and h.dtype == h_t
                assert rstd.shape == (m, 1)
                if rms:
                    assert mean.shape == (0,) and mean.dtype == torch.float32
                else:
                    assert mean.shape == (m, 1)
                if m > 0:
                    assert torch.isnan(rstd).all()
                dh, dw, db = backend.add_bwd(
                    out, None, h, [n], mean, rstd, w, b, rms, [True, True, True]
                )
                assert dh.shape == (m, n) and dh.dtype == h_t
                assert torch.equal(dw, torch.zeros_like(w))
                assert db is None if rms else torch.equal(db, torch.zeros_like(b))


def offset_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t one element into its storage (not 16-byte aligned)."""
    base = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = base[1:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("which", ["residual", "h", "grad_h"])
@pytest.mark.parametrize("n", [1024, 65536])
def test_add_norm_misaligned(backend, n, which):
    """Vectorizable N with one operand of the fused add off its 16-byte
    alignment: the launchers must take the scalar kernels (SIMT checks every
    access's alignment) and the results must not change."""
    types = (BF16, F32, F32, F32)
    m = rows_for(n)
    x, r, w, b = add_case(backend, m, n, types, "wb", False)
    out, h, mean, rstd = backend.add_fwd(x, r, [n], w, b, 1e-5, False, F32)
    if which == "residual":
        out2, h2, mean2, rstd2 = backend.add_fwd(x, offset_copy(r), [n], w, b, 1e-5, False, F32)
        assert torch.equal(h2, h)
        assert_close(out2, out, BF16)
        assert_close(rstd2, rstd, F32)
        return
    g = randn((m, n), BF16, backend.device)
    gh = randn((m, n), F32, backend.device)
    dh, dw, db = backend.add_bwd(g, gh, h, [n], mean, rstd, w, b, False, [True, True, True])
    if which == "h":
        got = backend.add_bwd(g, gh, offset_copy(h), [n], mean, rstd, w, b, False, [True] * 3)
    else:
        got = backend.add_bwd(g, offset_copy(gh), h, [n], mean, rstd, w, b, False, [True] * 3)
    for a, e in zip(got, (dh, dw, db)):
        assert_close(a, e, F32, backward=True, what=f"misaligned {which}")


def test_add_norm_backward_deterministic(backend):
    for rms in (False, True):
        x, r, w, b = add_case(backend, 300, 1024, (BF16, F32, BF16, F32), "wb", rms)
        _, h, mean, rstd = backend.add_fwd(x, r, [1024], w, b, 1e-5, rms, F32)
        g = randn(x.shape, BF16, backend.device)
        first = backend.add_bwd(g, None, h, [1024], mean, rstd, w, b, rms, [True] * 3)
        again = backend.add_bwd(g, None, h, [1024], mean, rstd, w, b, rms, [True] * 3)
        for a, e in zip(again, first):
            assert (a is None and e is None) or torch.equal(a, e)
