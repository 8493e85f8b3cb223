"""Representative fastln CUDA cases, small enough to run under compute-sanitizer.

Not a pytest module (the name does not start with test_): run it directly,

    S="compute-sanitizer --error-exitcode 1 --tool"
    $S memcheck python tests/cuda_sanitizer_cases.py
    $S racecheck python tests/cuda_sanitizer_cases.py --quick
    $S synccheck python tests/cuda_sanitizer_cases.py --quick
    $S initcheck python tests/cuda_sanitizer_cases.py --quick

It touches every kernel variant once (several rows per warp, a block per row,
the looping kernels with and without the shared-memory row cache, vectorized
and scalar, each dtype, mixed-precision parameters, absent parameters, partial
output masks, ragged last blocks), for layer_norm and for RMSNorm and the fused
residual add (rms_norm_*, add_norm_*), and also checks the results against
float64 torch ops, so a wrong answer fails it too. Prints "ok" at the end.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import fastln  # noqa: F401  (registers the torch.ops.fastln kernels)

# (rows, N): group-per-row kernels (N <= 1024), block-per-row register kernels,
# looping kernels with the row cached in shared memory (12288; 2 * 12288 * 4
# bytes for the backward's x and dy) and without it (65536 floats = 256 KB,
# above every GPU's per-block limit), plus odd N for the scalar kernels.
FULL_SHAPES = [
    (37, 1),
    (37, 7),
    (301, 64),
    (65, 768),
    (9, 1025),
    (5, 4096),
    (3, 12288),
    (2, 65536),
    (2, 65537),
]
QUICK_SHAPES = [(37, 7), (65, 768), (5, 4096), (3, 12288), (2, 65536)]
TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def check(m, n, dtype, param_dtype, affine, mask, misaligned=False):
    x = (torch.randn(m, n, device="cuda", dtype=torch.float64) * 2 + 3).to(dtype)
    g = torch.randn(m, n, device="cuda", dtype=torch.float64).to(dtype)
    if misaligned:
        base = torch.empty(m * n + 1, device="cuda", dtype=dtype)
        base[1:].copy_(x.flatten())
        x = base[1:].view(m, n)
    w = (1 + 0.2 * torch.randn(n, device="cuda")).to(param_dtype) if "w" in affine else None
    b = (0.2 * torch.randn(n, device="cuda")).to(param_dtype) if "b" in affine else None
    out, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [n], w, b, 1e-5)
    dx, dw, db = torch.ops.fastln.layer_norm_bwd(g, x, [n], mean, rstd, w, b, list(mask))

    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.layer_norm(leaves[0], (n,), leaves[1], leaves[2], 1e-5)
    ref.backward(g.double())
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol)
    for got, want, leaf in zip((dx, dw, db), mask, leaves):
        if not want or leaf is None:
            assert got is None
        else:
            torch.testing.assert_close(got.double(), leaf.grad, rtol=tol, atol=tol)


def check_rms(m, n, dtype, w_dtype, mask=(True, True)):
    """RMSNorm (rms_norm_fwd/bwd) against float64 torch ops."""
    x = (torch.randn(m, n, device="cuda", dtype=torch.float64) * 2 + 0.5).to(dtype)
    g = torch.randn(m, n, device="cuda", dtype=torch.float64).to(dtype)
    w = None if w_dtype is None else (1 + 0.2 * torch.randn(n, device="cuda")).to(w_dtype)
    out, rstd = torch.ops.fastln.rms_norm_fwd(x, [n], w, 1e-5)
    dx, dw = torch.ops.fastln.rms_norm_bwd(g, x, [n], rstd, w, list(mask))
    xl = x.detach().double().requires_grad_()
    wl = None if w is None else w.detach().double().requires_grad_()
    ref = xl * torch.rsqrt(xl.pow(2).mean(-1, keepdim=True) + 1e-5)
    if wl is not None:
        ref = ref * wl
    ref.backward(g.double())
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol)
    for got, want, leaf in zip((dx, dw), mask, (xl, wl)):
        if not want or leaf is None:
            assert got is None
        else:
            torch.testing.assert_close(got.double(), leaf.grad, rtol=tol, atol=tol)


def check_add(m, n, x_dtype, h_dtype, r_dtype, rms, grad_h, mask=(True, True, True)):
    """The fused residual add (add_norm_fwd/bwd) against float64 torch ops on
    the kernel's rounded h."""
    x = torch.randn(m, n, device="cuda", dtype=torch.float64).to(x_dtype)
    r = (torch.randn(m, n, device="cuda", dtype=torch.float64) + 1).to(r_dtype)
    w = (1 + 0.2 * torch.randn(n, device="cuda")).to(x_dtype)
    b = None if rms else (0.2 * torch.randn(n, device="cuda")).to(x_dtype)
    out, h, mean, rstd = torch.ops.fastln.add_norm_fwd(x, r, [n], w, b, 1e-5, rms, h_dtype)
    acc = torch.float64 if x_dtype == torch.float64 else torch.float32
    assert torch.equal(h, (x.to(acc) + r.to(acc)).to(h_dtype))
    g = torch.randn(m, n, device="cuda", dtype=torch.float64).to(x_dtype)
    gh = torch.randn(m, n, device="cuda", dtype=torch.float64).to(h_dtype) if grad_h else None
    dh, dw, db = torch.ops.fastln.add_norm_bwd(g, gh, h, [n], mean, rstd, w, b, rms, list(mask))
    hl = h.detach().double().requires_grad_()
    wl = w.detach().double().requires_grad_()
    bl = None if b is None else b.detach().double().requires_grad_()
    if rms:
        ref = hl * torch.rsqrt(hl.pow(2).mean(-1, keepdim=True) + 1e-5) * wl
    else:
        ref = F.layer_norm(hl, (n,), wl, bl, 1e-5)
    ref.backward(g.double())
    tol = TOL[x_dtype]
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol)
    want_dh = hl.grad + (gh.double() if gh is not None else 0)
    for got, want, ref_grad in zip(
        (dh, dw, db), mask, (want_dh, wl.grad, None if bl is None else bl.grad)
    ):
        if not want or ref_grad is None:
            assert got is None
        else:
            torch.testing.assert_close(got.double(), ref_grad, rtol=tol, atol=tol)


def main() -> int:
    quick = "--quick" in sys.argv
    torch.manual_seed(0)
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    dtypes = (
        [torch.float32, torch.float16]
        if quick
        else [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    )
    for m, n in shapes:
        for dtype in dtypes:
            check(m, n, dtype, dtype, "wb", (True, True, True))
            check(m, n, dtype, dtype, "wb", (True, True, True), misaligned=True)
        check(m, n, torch.bfloat16, torch.float32, "wb", (True, True, True))
        check(m, n, torch.float32, torch.float32, "none", (True, False, False))
        check(m, n, torch.float32, torch.float32, "b", (False, False, True))
        check(m, n, torch.float16, torch.float32, "w", (False, True, False))
        # RMSNorm and the fused residual add: the same kernels with their
        # policies (every plan path of these shapes, scalar for odd N).
        for dtype in dtypes:
            check_rms(m, n, dtype, dtype)
            check_add(m, n, dtype, dtype, dtype, rms=False, grad_h=True)
            check_add(m, n, dtype, dtype, dtype, rms=True, grad_h=False)
        check_rms(m, n, torch.bfloat16, torch.float32, (False, True))
        check_add(m, n, torch.bfloat16, torch.float32, torch.bfloat16, rms=True, grad_h=True)
        check_add(
            m, n, torch.float16, torch.float32, torch.float32, False, False, (True, False, True)
        )
    torch.cuda.synchronize()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
