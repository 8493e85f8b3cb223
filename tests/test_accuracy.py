"""Accumulation error of the CPU kernels on long rows and many rows.

A sum of n terms added one after another can be off by n * eps, so an error that
grows linearly with the row length (or the number of rows, for dweight/dbias)
shows up here as a fastln error well above torch's, whose cascade sums grow like
log n. Each case compares fastln and torch eager with torch in float64 on the
same (rounded) inputs and allows fastln twice torch's maximum error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import reference, run_layer_norm

import fastln


def _max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).abs().max().item()


def _forward_errors(x: torch.Tensor, normalized_shape: list[int]) -> tuple[float, float]:
    want = F.layer_norm(x.double(), normalized_shape)
    return (
        _max_err(fastln.layer_norm(x, normalized_shape), want),
        _max_err(F.layer_norm(x, normalized_shape), want),
    )


@pytest.mark.parametrize(
    "make,normalized_shape",
    [
        # PyTorch's own test_LayerNorm_numeric: uniform [0, 1), 9.4M-element rows.
        (lambda: torch.rand(2, 256, 256, 144), [256, 256, 144]),
        (lambda: torch.randn(1, 2**24), [2**24]),
        (lambda: torch.randn(2, 2**22), [2**22]),
        # Offset rows: the statistics' sums are of large, same-signed terms.
        (lambda: torch.randn(2, 2**22) + 10, [2**22]),
    ],
    ids=["numeric_256x256x144", "1x2^24", "2x2^22", "2x2^22_offset"],
)
def test_forward_long_rows(make, normalized_shape):
    ours, theirs = _forward_errors(make(), normalized_shape)
    assert ours <= 2 * theirs, f"fastln {ours:.3g} vs torch {theirs:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_row_statistics_long_rows(dtype):
    # 16-bit outputs hide the sums' error behind their own rounding; the
    # float32 mean and rstd the op returns show it.
    N = 2**22
    x = (torch.randn(2, N) + 3).to(dtype)
    _, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [N], None, None, 1e-5)
    _, t_mean, t_rstd = torch.ops.aten.native_layer_norm(x, [N], None, None, 1e-5)
    xd = x.double()
    want_mean = xd.mean(-1, keepdim=True)
    want_rstd = (xd.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt()
    for what, ours, theirs, want in (
        ("mean", mean, t_mean, want_mean),
        ("rstd", rstd, t_rstd, want_rstd),
    ):
        e_ours, e_theirs = _max_err(ours, want), _max_err(theirs.reshape(want.shape), want)
        # A floor of one float32 ulp of the value: both may round exactly.
        floor = want.abs().max().item() * 2**-23
        assert e_ours <= max(2 * e_theirs, floor), f"{what}: {e_ours:.3g} vs {e_theirs:.3g}"


def _backward_errors(x, normalized_shape, w, b, g):
    want = reference(x, normalized_shape, w, b, 1e-5, g)
    ours = run_layer_norm(fastln.layer_norm, x, normalized_shape, w, b, 1e-5, g)
    theirs = run_layer_norm(F.layer_norm, x, normalized_shape, w, b, 1e-5, g)
    return [
        (name, _max_err(o, r), _max_err(t, r), r.abs().max().item())
        for name, o, t, r in zip(("dx", "dweight", "dbias"), ours[1:], theirs[1:], want[1:])
        if r is not None
    ]


def test_backward_long_rows():
    N = 2**22
    x, g = torch.randn(4, N), torch.randn(4, N)
    for name, ours, theirs, _ in _backward_errors(x, [N], None, None, g):
        assert ours <= 2 * theirs, f"{name}: fastln {ours:.3g} vs torch {theirs:.3g}"


def test_backward_long_rows_with_weight():
    N = 2**21 + 5  # a scalar tail after the vector blocks
    x, g = torch.randn(2, N) * 3 + 1, torch.randn(2, N)
    w, b = torch.randn(N), torch.randn(N)
    for name, ours, theirs, _ in _backward_errors(x, [N], w, b, g):
        if name == "dx":
            assert ours <= 2 * theirs, f"{name}: fastln {ours:.3g} vs torch {theirs:.3g}"


def test_parameter_grads_over_many_rows():
    # dweight/dbias are column sums over 2^20 rows. Summed one row after
    # another within a row block (16384 rows each) they were off by 2e-6 of
    # their magnitude; pairwise over groups of rows, by 2e-7 (torch: 2e-5).
    M, N = 2**20, 64
    x, g = torch.randn(M, N), torch.randn(M, N)
    w, b = torch.randn(N), torch.randn(N)
    for name, ours, theirs, scale in _backward_errors(x, [N], w, b, g):
        assert ours <= 2 * theirs, f"{name}: fastln {ours:.3g} vs torch {theirs:.3g}"
        if name != "dx":
            assert ours <= 1e-6 * scale, f"{name}: {ours:.3g} of {scale:.3g}"
