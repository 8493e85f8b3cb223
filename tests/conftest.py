"""Shared test helpers: the one tolerance table and the float64 reference.

fastln is checked against torch.nn.functional.layer_norm evaluated in float64 on
the very same (already rounded) inputs, so a tolerance only has to cover
fastln's own rounding: the final cast to the output dtype plus accumulation
error. Tolerances travel with the dtype, in this table and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


# (forward, backward) tolerances per input dtype. float16/bfloat16: a few ulps
# of the output dtype (eps 2^-11 and 2^-8) on values of order 1..10; backward
# adds the error of row and column sums accumulated in float32.
TOLERANCES: dict[torch.dtype, tuple[Tol, Tol]] = {
    torch.float64: (Tol(1e-10, 1e-10), Tol(1e-9, 1e-9)),
    torch.float32: (Tol(2e-5, 2e-5), Tol(1e-4, 1e-4)),
    torch.float16: (Tol(4e-3, 2e-3), Tol(2e-2, 4e-3)),
    torch.bfloat16: (Tol(3e-2, 1.6e-2), Tol(1e-1, 1.6e-2)),
}


def tolerance(dtype: torch.dtype, backward: bool = False) -> Tol:
    return TOLERANCES[dtype][1 if backward else 0]


def assert_close(
    actual: torch.Tensor | None,
    expected: torch.Tensor | None,
    dtype: torch.dtype,
    backward: bool = False,
    what: str = "",
) -> None:
    """Compares a result with its float64 reference under the dtype's tolerance."""
    if expected is None:
        assert actual is None, f"{what}: expected no gradient"
        return
    assert actual is not None, f"{what}: gradient missing"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    tol = tolerance(dtype, backward)
    torch.testing.assert_close(
        actual.detach().double().cpu(),
        expected.detach().double().cpu(),
        atol=tol.atol,
        rtol=tol.rtol,
        equal_nan=True,
        msg=lambda m: f"{what} ({dtype}): {m}",
    )


def run_layer_norm(
    fn,
    x: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    grad_out: torch.Tensor | None,
    cast: torch.dtype | None = None,
    center: bool = False,
):
    """Runs fn (fastln.layer_norm or F.layer_norm) forward and, when grad_out is
    given, backward on fresh leaf copies of the inputs (cast to `cast` if set).
    center=True first subtracts from each row its first element, which changes
    neither the output nor any gradient of a layer norm but removes a large
    offset before fn sees it. Returns (out, dx, dweight, dbias)."""

    def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.detach().to(cast) if cast is not None else t.detach()
        return t.clone().requires_grad_(grad_out is not None)

    xl, wl, bl = leaf(x), leaf(weight), leaf(bias)
    xin = xl
    if center and x.numel() > 0:
        rows = xl.detach().flatten(xl.dim() - len(normalized_shape))
        first = rows[..., :1].reshape(*rows.shape[:-1], *([1] * len(normalized_shape)))
        xin = xl - first
    out = fn(xin, normalized_shape, wl, bl, eps)
    if grad_out is None:
        return out, None, None, None
    g = grad_out.to(cast) if cast is not None else grad_out
    out.backward(g)
    return out, xl.grad, None if wl is None else wl.grad, None if bl is None else bl.grad


def reference(
    x: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    grad_out: torch.Tensor | None,
):
    """torch's layer_norm in float64 on the same inputs: (out, dx, dweight, dbias).

    Rows are centered on their first element (exact in float64 for values
    within a factor two of each other) so that even the float64 reference
    keeps full accuracy on rows with a large offset."""
    return run_layer_norm(
        F.layer_norm,
        x,
        normalized_shape,
        weight,
        bias,
        eps,
        grad_out,
        cast=torch.float64,
        center=True,
    )


def cpu_flags() -> set[str]:
    """The processor's feature flags (/proc/cpuinfo), empty where unknown: which
    copies of the CPU kernels this machine runs, so that tests know which to check."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


AVX2_FLAGS = {"avx2", "fma", "f16c"}
AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
