"""Edge cases: empty inputs, tiny and constant rows, non-finite values, large
offsets, determinism, both CPU instruction sets, more than 2**31 elements."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import AVX2_FLAGS, AVX512_FLAGS, assert_close, cpu_flags, reference, run_layer_norm

import fastln


@pytest.mark.parametrize(
    "shape,ns", [((0, 8), (8,)), ((2, 0, 8), (8,)), ((4, 0), (0,)), ((3, 2, 0), (2, 0))], ids=str
)
def test_empty(shape, ns):
    x = torch.randn(shape)
    w = torch.randn(ns, requires_grad=True)
    b = torch.randn(ns, requires_grad=True)
    xr = x.clone().requires_grad_()
    y = fastln.layer_norm(xr, ns, w, b)
    assert y.shape == x.shape
    y.sum().backward()
    assert xr.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros(ns)) and torch.equal(b.grad, torch.zeros(ns))
    out, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, list(ns), None, None, 1e-5)
    t_out, t_mean, t_rstd = torch.native_layer_norm(x, list(ns), None, None, 1e-5)
    assert mean.shape == t_mean.shape and rstd.shape == t_rstd.shape
    torch.testing.assert_close(mean, t_mean.float(), equal_nan=True)
    torch.testing.assert_close(rstd, t_rstd.float(), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_one_element_rows(dtype):
    # A row of one element normalizes to exactly 0 (then the bias).
    x = torch.randn(10, 1, dtype=dtype) * 100
    b = torch.randn(1, dtype=dtype)
    out = fastln.layer_norm(x, (1,), torch.randn(1, dtype=dtype), b)
    assert torch.equal(out, b.expand(10, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_constant_rows(dtype):
    x = torch.full((4, 1000), 3.25, dtype=dtype)
    w, b = torch.randn(1000, dtype=dtype), torch.randn(1000, dtype=dtype)
    g = torch.randn(4, 1000, dtype=dtype)
    out, dx, dw, db = run_layer_norm(fastln.layer_norm, x, (1000,), w, b, 1e-5, g)
    assert torch.equal(out, b.expand(4, 1000))  # exactly: x - mean is exactly 0
    want = reference(x, (1000,), w, b, 1e-5, g)
    assert_close(dx, want[1], dtype, backward=True, what="dx")
    assert torch.equal(dw, torch.zeros_like(dw))
    assert_close(db, want[3], dtype, backward=True, what="db")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_propagates_like_torch(value, dtype):
    x = torch.randn(3, 17, dtype=dtype)
    x[1, 5] = value
    w, b = torch.randn(17, dtype=dtype), torch.randn(17, dtype=dtype)
    g = torch.randn(3, 17, dtype=dtype)
    ours = run_layer_norm(fastln.layer_norm, x, (17,), w, b, 1e-5, g)
    theirs = run_layer_norm(F.layer_norm, x, (17,), w, b, 1e-5, g)
    for a, t in zip(ours, theirs):
        # The same positions are non-finite (a poisoned row poisons its row,
        # and dweight/dbias columns it touches) ...
        assert torch.equal(torch.isfinite(a), torch.isfinite(t))
        # ... and the untouched rows still match.
    assert_close(ours[0][[0, 2]], theirs[0][[0, 2]].double(), dtype)
    assert_close(ours[1][[0, 2]], theirs[1][[0, 2]].double(), dtype, backward=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_huge_offset_keeps_accuracy(dtype):
    # x * 1e-3 + 1e4: E[x^2] - E[x]^2 would lose every digit in float32.
    base = torch.randn(16, 512, dtype=torch.float64)
    x = (base * 1e-3 + 1e4).to(dtype)
    w, b = torch.randn(512, dtype=dtype), torch.randn(512, dtype=dtype)
    g = torch.randn(16, 512, dtype=dtype)
    got = run_layer_norm(fastln.layer_norm, x, (512,), w, b, 1e-12, g)
    want = reference(x, (512,), w, b, 1e-12, g)
    # float32 holds 1e4 with a resolution of 1e-3, the same scale as the
    # signal; the float64 reference is taken on the same rounded input, so
    # fastln must still meet the ordinary float32 tolerance (scaled by the
    # 1e3 amplification of dx through rstd).
    assert_close(got[0], want[0], dtype, what="out")
    assert_close(got[1] * 1e-3, want[1] * 1e-3, dtype, backward=True, what="dx")
    assert_close(got[2], want[2], dtype, backward=True, what="dweight")


@pytest.mark.parametrize(
    "dtype,pdtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
    ],
    ids=["float32", "bfloat16", "bfloat16-w32"],
)
def test_parameter_grads_are_deterministic_across_thread_counts(dtype, pdtype):
    # float32 rows of 257 go one at a time, bfloat16 rows in tiles of four
    # (kernels.h, kTileMaxRowBytes); 3001 rows leave a partial tile. Rounding
    # dweight/dbias to bfloat16 hides most changes of the float32 summation
    # order, so the float32 weight under bfloat16 input is what shows that the
    # bfloat16 kernels' column sums do not depend on the thread count.
    x = torch.randn(3001, 257, dtype=dtype)
    w, b = torch.randn(257, dtype=pdtype), torch.randn(257, dtype=pdtype)
    g = torch.randn(3001, 257, dtype=dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 1):
            torch.set_num_threads(n)
            results.append(run_layer_norm(fastln.layer_norm, x, (257,), w, b, 1e-5, g))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, e in zip(results[0], other):
            assert torch.equal(a, e)


_ISA_SCRIPT = (
    "import torch, fastln\n"
    "torch.manual_seed(0)\n"
    "print(fastln.cpu_isa())\n"
    "for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):\n"
    "    x = torch.randn(37, 1031, dtype=dt) * 3 + 1\n"
    "    w, b = torch.randn(1031, dtype=dt), torch.randn(1031, dtype=dt)\n"
    "    xr = x.clone().requires_grad_(); wr = w.clone().requires_grad_()\n"
    "    br = b.clone().requires_grad_()\n"
    "    y = fastln.layer_norm(xr, (1031,), wr, br); y.backward(torch.ones_like(y))\n"
    "    got = {'out': y, 'dx': xr.grad, 'dweight': wr.grad, 'dbias': br.grad}\n"
    "    res = torch.randn(37, 1031, dtype=dt) * 2\n"
    "    for name, fn, args in (('add_ln', fastln.add_layer_norm, (w, b)),\n"
    "                           ('add_rms', fastln.add_rms_norm, (w,))):\n"
    "        xa = x.clone().requires_grad_()\n"
    "        ya, ha = fn(xa, res, (1031,), *args)\n"
    "        (ya.sum() + ha.sum()).backward()\n"
    "        got.update({f'{name} out': ya, f'{name} h': ha, f'{name} dx': xa.grad})\n"
    "    torch.save(got, f'{OUT}_{dt}.pt')\n"
)


# The forward results _ISA_SCRIPT saves; every other key is a gradient.
_ISA_FORWARD_KEYS = frozenset({"out", "add_ln out", "add_ln h", "add_rms out", "add_rms h"})


def test_every_cpu_kernel_copy_agrees(tmp_path):
    # Each copy of the row kernels this processor can run (FASTLN_CPU_ISA picks
    # a narrower one; unset, the widest), on the same inputs, within tolerance
    # of the portable one: layer_norm and the fused add norms.
    flags = cpu_flags()
    has_avx2 = AVX2_FLAGS <= flags
    has_avx512 = has_avx2 and AVX512_FLAGS <= flags
    expected = {"base": "base"}
    if has_avx2:
        expected["avx2"] = "avx2"
    expected["native"] = "avx512" if has_avx512 else "avx2" if has_avx2 else "base"
    for isa, want in expected.items():
        env = dict(os.environ)
        env.pop("FASTLN_CPU_ISA", None)
        if isa != "native":
            env["FASTLN_CPU_ISA"] = isa
        prefix = str(tmp_path / isa)
        proc = subprocess.run(
            [sys.executable, "-c", f"OUT = {prefix!r}\n" + _ISA_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert proc.stdout.strip() == want, (isa, proc.stdout)
    for isa in expected:
        for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            a = torch.load(tmp_path / f"base_{dt}.pt")
            b = torch.load(tmp_path / f"{isa}_{dt}.pt")
            assert a.keys() == b.keys()
            for what, ta in a.items():
                backward = what not in _ISA_FORWARD_KEYS
                assert_close(b[what], ta.double(), dt, backward=backward, what=f"{isa} {what}")


def _available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(
    _available_memory_bytes() < 16 * 2**30,
    reason="needs 16 GiB of free memory for a > 2**31-element tensor",
)
def test_more_than_2_31_elements():
    # bfloat16 [524289, 4096]: 2**31 + 4096 elements (4 GiB); indices past
    # 2**31 must not wrap. Every row is the same, so the last rows can be
    # checked against one small reference row.
    N = 4096
    M = 2**31 // N + 1
    row = (torch.randn(N) * 2 + 1).to(torch.bfloat16)
    w = torch.randn(N, dtype=torch.bfloat16)
    x = row.expand(M, N).contiguous()
    out, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [N], w, None, 1e-5)
    want = reference(row[None], (N,), w, None, 1e-5, None)[0]
    assert_close(out[-2:], want.expand(2, N), torch.bfloat16, what="last rows")
    assert_close(out[:1], want, torch.bfloat16, what="first row")
    assert torch.equal(mean[-1], mean[0]) and torch.equal(rstd[-1], rstd[0])
    del out
    dy = x  # any grad; reuse the buffer to stay within memory
    dx, dw, _ = torch.ops.fastln.layer_norm_bwd(
        dy, x, [N], mean, rstd, w, None, [True, True, False]
    )
    del x
    want_bwd = reference(row[None], (N,), w, None, 1e-5, row[None])
    assert_close(dx[-1:], want_bwd[1], torch.bfloat16, backward=True, what="dx last row")
    # dweight = M * (per-row dy * xhat): compare per row.
    assert_close(dw.double() / M, want_bwd[2], torch.bfloat16, backward=True, what="dweight")
