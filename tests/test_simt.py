"""What only the SIMT backend can check about the CUDA kernels: its interface,
that results do not depend on the thread schedule (races), the plan paths the
launchers take on each emulated device, and grids past their cap.

tests/test_cuda.py runs the kernels' full parity matrix on the SIMT backend;
tests/test_simt_runtime.py checks the runtime itself. Skipped without the SIMT
build (FASTLN_SIMT=1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import SIMT_SEED, make_backend, simt_available
from conftest import assert_close, reference, run_layer_norm

pytestmark = pytest.mark.skipif(not simt_available(), reason="needs the SIMT build (FASTLN_SIMT=1)")

if simt_available():
    from fastln import _simt


@pytest.fixture(autouse=True)
def _default_device():
    yield
    _simt.configure(device="h100", schedule_seed=SIMT_SEED)


def test_ops_have_the_schemas_of_fastln():
    for op in (
        "layer_norm_fwd",
        "layer_norm_bwd",
        "rms_norm_fwd",
        "rms_norm_bwd",
        "add_norm_fwd",
        "add_norm_bwd",
    ):
        ours = str(getattr(torch.ops.fastln_simt, op).default._schema)
        theirs = str(getattr(torch.ops.fastln, op).default._schema)
        assert ours == theirs.replace("fastln::", "fastln_simt::"), (ours, theirs)


def test_configure():
    _simt.configure(device="a100", schedule_seed=7)
    d = _simt.device()
    assert (d["name"], d["sm_count"], d["smem_per_block_optin"], d["schedule_seed"]) == (
        "a100",
        108,
        163 * 1024,
        7,
    )
    _simt.configure(device="h100", schedule_seed=0)
    assert (_simt.device()["sm_count"], _simt.device()["smem_per_block_optin"]) == (
        132,
        227 * 1024,
    )
    with pytest.raises(ValueError, match="unknown device 'v100'"):
        _simt.configure(device="v100", schedule_seed=0)


def test_bad_input_raises_like_fastln():
    """Bad input raises what fastln's CPU and CUDA ops raise (the shared checks)."""
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="Given normalized_shape"):
        torch.ops.fastln_simt.layer_norm_fwd(x, [7], None, None, 1e-5)
    with pytest.raises(NotImplementedError):
        torch.ops.fastln_simt.layer_norm_fwd(x.int(), [8], None, None, 1e-5)
    with pytest.raises(RuntimeError, match="Expected weight to have the input's dtype"):
        torch.ops.fastln_simt.layer_norm_fwd(x, [8], torch.ones(8, dtype=torch.float64), None, 1e-5)


def run_case(m, n, dtype, seed, device="h100", param_dtype=None):
    _simt.configure(device=device, schedule_seed=seed)
    backend = make_backend("simt-a100" if device == "a100" else "simt")
    _simt.configure(device=device, schedule_seed=seed)  # make_backend sets its own seed
    gen = torch.Generator().manual_seed(1234)
    x = (torch.randn(m, n, generator=gen, dtype=torch.float64) * 2 + 3).to(dtype)
    pd = param_dtype or dtype
    w = (1 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64)).to(pd)
    b = (0.2 * torch.randn(n, generator=gen, dtype=torch.float64)).to(pd)
    g = torch.randn(m, n, generator=gen, dtype=torch.float64).to(dtype)
    return x, w, b, g, run_layer_norm(backend.layer_norm, x, (n,), w, b, 1e-5, g)


# One shape per plan path: groups of 1..32 lanes, a block per row, the looping
# kernels with and without the shared-memory row cache, scalar (odd N) and
# vectorized, and mixed-precision parameters.
SCHEDULE_CASES = [
    (301, 7, torch.float32, None),
    (257, 100, torch.bfloat16, None),
    (129, 1024, torch.float16, torch.float32),
    (33, 4096, torch.float32, None),
    (9, 12288, torch.float64, None),
    (5, 65536, torch.bfloat16, None),
    (3, 70001, torch.float32, None),
]


@pytest.mark.parametrize("device", ["h100", "a100"])
@pytest.mark.parametrize("m,n,dtype,param_dtype", SCHEDULE_CASES)
def test_results_do_not_depend_on_the_schedule(m, n, dtype, param_dtype, device):
    """The race checker on the real kernels: the same launches under several
    schedule seeds (index order, and pseudo-random orders of the threads
    between synchronization points) give bitwise-identical outputs."""
    *_, first = run_case(m, n, dtype, 0, device, param_dtype)
    for seed in (1, 2, 99991):
        *_, again = run_case(m, n, dtype, seed, device, param_dtype)
        for name, a, e in zip(("out", "dx", "dweight", "dbias"), again, first):
            assert torch.equal(a, e), f"{name} depends on the schedule (seed {seed} vs 0)"


def kernels_of(fn) -> list[tuple[str, int]]:
    _simt.clear_launches()
    fn()
    return [(r["kernel"].split("<")[0], r["dynamic_smem"]) for r in _simt.launches()]


@pytest.mark.parametrize(
    "n,dtype,device,fwd,bwd",
    [
        # Few columns: groups of threads per row, several rows per block.
        (64, torch.float32, "h100", ("reg", 0), ("reg", 1)),
        # A block per row, row in registers (forward up to 32 * 512).
        (2048, torch.float32, "h100", ("reg", 0), ("reg", 0)),
        # Backward past 16 * 512: looping kernel, x and dy cached in shared memory.
        (12288, torch.float32, "h100", ("reg", 0), ("loop", 1)),
        # Forward past 32 * 512: looping kernel with the row cached (192 KB
        # fits the H100's 227 KB but not the A100's 163 KB).
        (49152, torch.float32, "h100", ("loop", 1), ("loop", 0)),
        (49152, torch.float32, "a100", ("loop", 0), ("loop", 0)),
        # bfloat16 rows of 96 KB: cached forward on both, backward (2 rows,
        # 192 KB) only on the H100.
        (49152, torch.bfloat16, "h100", ("loop", 1), ("loop", 1)),
        (49152, torch.bfloat16, "a100", ("loop", 1), ("loop", 0)),
    ],
)
def test_plan_paths(n, dtype, device, fwd, bwd):
    """The launchers' decisions, as the launch log shows them: which kernel and
    whether it got dynamic shared memory (the row cache, or the staging of
    the backward's column sums when several rows share a block)."""
    m = 5
    launched = kernels_of(lambda: run_case(m, n, dtype, SIMT_SEED, device))
    (fk, fs), (bk, bs), (rk, _) = launched
    assert fk == f"layer_norm_fwd_{fwd[0]}_kernel" and (fs > 0) == bool(fwd[1]), launched
    assert bk == f"layer_norm_bwd_{bwd[0]}_kernel" and (bs > 0) == bool(bwd[1]), launched
    assert rk == "layer_norm_bwd_param_reduce_kernel", launched
    x, w, b, g, got = run_case(m, n, dtype, SIMT_SEED, device)
    want = reference(x, (n,), w, b, 1e-5, g)
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), got, want):
        assert_close(a, e, dtype, backward=name != "out", what=f"{device} {name}")


def test_more_rows_than_the_grid_cap():
    """8M rows of 3 elements: 128 rows per block of the group kernel, so the
    65536-block grid cap (plan.h kMaxGrid) leaves rows to the grid-stride loop
    in the forward and in the dx-only backward (whose grid is capped too)."""
    _simt.configure(device="h100", schedule_seed=SIMT_SEED)
    n, m = 3, 128 * 65536 + 77
    gen = torch.Generator().manual_seed(5)
    # Rows spread around -2, 0, 2: well conditioned in float32.
    x = torch.randn(m, n, generator=gen) * 0.3 + torch.tensor([-2.0, 0.0, 2.0])
    w = torch.randn(n, generator=gen)
    b = torch.randn(n, generator=gen)
    _simt.clear_launches()
    out, mean, rstd = torch.ops.fastln_simt.layer_norm_fwd(x, [n], w, b, 1e-5)
    assert _simt.launches()[0]["grid"] == (65536, 1, 1)
    want = F.layer_norm(x.double(), (n,), w.double(), b.double())
    assert_close(out, want, torch.float32, what="out past the grid cap")
    g = torch.randn(m, n, generator=gen)
    _simt.clear_launches()
    dx, dw, db = torch.ops.fastln_simt.layer_norm_bwd(
        g, x, [n], mean, rstd, w, b, [True, False, False]
    )
    assert _simt.launches()[0]["grid"] == (65536, 1, 1) and dw is None and db is None
    rows = torch.cat([torch.arange(0, 50), torch.arange(m - 5000, m)])
    _, r_dx, _, _ = reference(x[rows], (n,), w, b, 1e-5, g[rows])
    assert_close(dx[rows], r_dx, torch.float32, backward=True, what="dx past the grid cap")


@pytest.mark.parametrize("n", [7, 1024, 4096, 12288, 65536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_parity_on_a100(n, dtype):
    """The A100's 108 SMs and 163 KB give other grids, workspaces and cache
    decisions than the H100's that the rest of the matrix runs on."""
    m = max(3, min(301, (1 << 18) // n))
    x, w, b, g, got = run_case(m, n, dtype, SIMT_SEED, "a100")
    want = reference(x, (n,), w, b, 1e-5, g)
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), got, want):
        assert_close(a, e, dtype, backward=name != "out", what=f"a100 {name}")


def launched(fn) -> list[tuple[str, int]]:
    """(full kernel name, dynamic shared memory) of each launch of fn()."""
    _simt.clear_launches()
    fn()
    return [(r["kernel"], r["dynamic_smem"]) for r in _simt.launches()]


def norm_case(m, n, x_t, h_t=None, r_t=None, w_t=None, seed=1234):
    gen = torch.Generator().manual_seed(seed)
    h_t = h_t or x_t
    x = (torch.randn(m, n, generator=gen, dtype=torch.float64) * 2 + 1).to(x_t)
    r = torch.randn(m, n, generator=gen, dtype=torch.float64).to(r_t or h_t)
    w = (1 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64)).to(w_t or x_t)
    b = (0.2 * torch.randn(n, generator=gen, dtype=torch.float64)).to(w_t or x_t)
    g = torch.randn(m, n, generator=gen, dtype=torch.float64).to(x_t)
    gh = torch.randn(m, n, generator=gen, dtype=torch.float64).to(h_t)
    return x, r, w, b, g, gh


def run_rms(m, n, dtype, w_t=None):
    x, _, w, _, g, _ = norm_case(m, n, dtype, w_t=w_t)
    ops = torch.ops.fastln_simt
    out, rstd = ops.rms_norm_fwd(x, [n], w, 1e-5)
    dx, dw = ops.rms_norm_bwd(g, x, [n], rstd, w, [True, True])
    return out, rstd, dx, dw


def run_add(m, n, x_t, h_t, r_t, rms, w_t=None):
    x, r, w, b, g, gh = norm_case(m, n, x_t, h_t, r_t, w_t)
    b = None if rms else b
    ops = torch.ops.fastln_simt
    out, h, mean, rstd = ops.add_norm_fwd(x, r, [n], w, b, 1e-5, rms, h_t)
    dh, dw, db = ops.add_norm_bwd(g, gh, h, [n], mean, rstd, w, b, rms, [True] * 3)
    return out, h, mean, rstd, dh, dw, db


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.mark.parametrize(
    "case,fwd,bwd",
    [
        # RMSNorm: the layer norm kernels with kRms (the last template
        # argument), x read directly. Several rows per block: the backward
        # stages its dweight sums (one sum, no dbias) in shared memory.
        (
            ("rms", 5, 64, F32),
            ("reg", "DirectLoad<float>", True, 0),
            ("reg", "DirectStore<float>", True, 1),
        ),
        (
            ("rms", 5, 12288, BF16),
            ("reg", "DirectLoad<c10::BFloat16>", True, 0),
            ("loop", "DirectStore<c10::BFloat16>", True, 1),
        ),
        (
            ("rms", 3, 65536, F32),
            ("loop", "DirectLoad<float>", True, 0),
            ("loop", "DirectStore<float>", True, 0),
        ),
        # The fused add: AddLoad<X, R, H> forward, AddStore<H> backward.
        (
            ("add", 5, 1024, BF16, BF16, BF16, False),
            ("reg", "AddLoad<c10::BFloat16, c10::BFloat16, c10::BFloat16>", False, 0),
            ("reg", "AddStore<c10::BFloat16>", False, 0),
        ),
        # A float32 h of bfloat16 input: rows of 80 KB cached, 256 KB not.
        (
            ("add", 3, 20000, BF16, F32, BF16, True),
            ("loop", "AddLoad<c10::BFloat16, c10::BFloat16, float>", True, 1),
            ("loop", "AddStore<float>", True, 1),
        ),
        (
            ("add", 3, 65536, F16, F32, F32, False),
            ("loop", "AddLoad<c10::Half, float, float>", False, 0),
            ("loop", "AddStore<float>", False, 0),
        ),
    ],
)
def test_norm_plan_paths(case, fwd, bwd):
    """The RMSNorm and fused-add ops run the layer norm kernels with their
    policies: which kernel, which LOAD / STORE policy, kRms, and whether it got
    dynamic shared memory (row cache or staging), as the launch log shows."""
    _simt.configure(device="h100", schedule_seed=SIMT_SEED)
    if case[0] == "rms":
        _, m, n, dtype = case
        log = launched(lambda: run_rms(m, n, dtype))
    else:
        _, m, n, x_t, h_t, r_t, rms = case
        log = launched(lambda: run_add(m, n, x_t, h_t, r_t, rms))
    (fk, fs), (bk, bs), (rk, _) = log
    for direction, name, smem, (kind, policy, rms_flag, has_smem) in (
        ("fwd", fk, fs, fwd),
        ("bwd", bk, bs, bwd),
    ):
        assert name.startswith(f"layer_norm_{direction}_{kind}_kernel<"), log
        assert f"fastln::cuda::{policy}" in name, log
        assert name.endswith(", true>" if rms_flag else ", false>"), log
        assert (smem > 0) == bool(has_smem), log
    assert rk.startswith("layer_norm_bwd_param_reduce_kernel<"), log


NORM_SCHEDULE_CASES = [
    ("rms", 129, 100, F16),
    ("rms", 5, 4096, BF16),
    ("rms", 3, 20000, F32),
    ("add", 129, 64, BF16, F32, BF16, False),
    ("add", 33, 1000, F16, F16, F16, True),
    ("add", 3, 12288, BF16, F32, F32, False),
]


@pytest.mark.parametrize("case", NORM_SCHEDULE_CASES, ids=str)
def test_norm_results_do_not_depend_on_the_schedule(case):
    """The race checker on the RMSNorm and fused-add launches: bitwise-equal
    results under index order and pseudo-random thread orders."""

    def run(seed):
        _simt.configure(device="h100", schedule_seed=seed)
        if case[0] == "rms":
            return run_rms(*case[1:])
        return run_add(*case[1:])

    first = run(0)
    for seed in (1, 99991):
        for i, (a, e) in enumerate(zip(run(seed), first)):
            assert a is None and e is None or torch.equal(a, e), f"output {i} (seed {seed})"
