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
output masks, ragged last blocks) and also checks the results against torch's
float64 layer_norm, so a wrong answer fails it too. Prints "ok" at the end.
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
    torch.cuda.synchronize()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
