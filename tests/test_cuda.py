"""fastln's CUDA kernels against torch's float64 layer_norm (and the CPU backend).

Each test runs on every backend that is present (tests/backends.py): a GPU with
the CUDA build of fastln, and the SIMT backend (a FASTLN_SIMT=1 build), which
executes the same kernel source on the CPU, threads as fibers, with its
checkers on; CI runs the whole matrix there. Tolerances come from
conftest.TOLERANCES, as everywhere else.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import Backend, cuda_available, make_backend, simt_available
from conftest import assert_close, reference, run_layer_norm

import fastln


@pytest.fixture(
    params=[
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not cuda_available(), reason="needs a CUDA device and the CUDA build of fastln"
            ),
        ),
        pytest.param(
            "simt",
            marks=pytest.mark.skipif(
                not simt_available(), reason="needs the SIMT build (FASTLN_SIMT=1)"
            ),
        ),
    ]
)
def backend(request) -> Backend:
    return make_backend(request.param)


def cuda_only(backend: Backend) -> None:
    """For what only a GPU has (streams, graphs, devices, the caching allocator)."""
    if backend.is_simt:
        pytest.skip("CUDA runtime feature: nothing of it runs on the SIMT backend")


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Row lengths around every boundary of the tuning table (csrc/cuda/plan.h):
# tiny rows (many rows per warp), a warp per row up to 1024 (512 for the
# backward), a block per row up to 16384 / 8192, and the looping kernels
# (with the row cached in shared memory up to ~56K floats, from global
# memory above). Odd lengths take the scalar (non-vectorized) kernels.
NS = [1, 3, 7, 127, 768, 1023, 1024, 1025, 2041, 4096, 12288, 65536, 262144]
# weight and bias, weight only, bias only, neither.
AFFINE = ["wb", "w", "b", "none"]


def rows_for(n: int) -> int:
    # Enough rows to give every block several rows (and ragged last blocks),
    # about 2^20 elements in all for the long rows.
    return max(3, min(301, (1 << 20) // n))


def make_case(shape, normalized_shape, dtype, device, affine="wb", param_dtype=None, offset=3.0):
    """Inputs on `device`: x with a mean offset (to catch cancellation), weight
    around 1, bias around 0, grad_out; params in param_dtype (default dtype)."""
    param_dtype = param_dtype or dtype
    x = (torch.randn(shape, device=device, dtype=torch.float64) * 2 + offset).to(dtype)
    weight = bias = None
    if "w" in affine:
        weight = (1 + 0.2 * torch.randn(normalized_shape, device=device, dtype=torch.float64)).to(
            param_dtype
        )
    if "b" in affine:
        bias = (0.2 * torch.randn(normalized_shape, device=device, dtype=torch.float64)).to(
            param_dtype
        )
    grad = torch.randn(shape, device=device, dtype=torch.float64).to(dtype)
    return x, weight, bias, grad


def run_direct(backend, x, normalized_shape, weight, bias, eps, grad):
    """Like conftest.run_layer_norm for fastln, but on leaves that keep the
    inputs' exact layout (strides and storage offset: detach() is a view, while
    run_layer_norm's clone() would realign and compact them)."""
    xl, wl, bl = (None if t is None else t.detach().requires_grad_() for t in (x, weight, bias))
    out = backend.layer_norm(xl, normalized_shape, wl, bl, eps)
    out.backward(grad)
    return out, xl.grad, None if wl is None else wl.grad, None if bl is None else bl.grad


def check_against_reference(backend, x, normalized_shape, weight, bias, eps, grad, dtype, what=""):
    out, dx, dw, db = run_direct(backend, x, normalized_shape, weight, bias, eps, grad)
    r_out, r_dx, r_dw, r_db = reference(x, normalized_shape, weight, bias, eps, grad)
    assert out.dtype == x.dtype and out.device == x.device
    if weight is not None:
        assert dw.dtype == weight.dtype
    if bias is not None:
        assert db.dtype == bias.dtype
    assert_close(out, r_out, dtype, what=f"{what} out")
    assert_close(dx, r_dx, dtype, backward=True, what=f"{what} dx")
    assert_close(dw, r_dw, dtype, backward=True, what=f"{what} dweight")
    assert_close(db, r_db, dtype, backward=True, what=f"{what} dbias")


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", NS)
def test_parity(backend, n, dtype, affine):
    shape = (rows_for(n), n)
    x, w, b, g = make_case(shape, (n,), dtype, backend.device, affine)
    check_against_reference(backend, x, (n,), w, b, 1e-5, g, dtype, what=f"N={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [3, 768, 1025, 4096, 65536])
def test_eps_zero(backend, n, dtype):
    x, w, b, g = make_case((rows_for(n), n), (n,), dtype, backend.device)
    check_against_reference(backend, x, (n,), w, b, 0.0, g, dtype, what=f"eps=0 N={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,normalized_shape",
    [
        ((5, 6, 7, 8), (7, 8)),
        ((5, 6, 7, 8), (6, 7, 8)),
        ((2, 3, 32, 64), (32, 64)),
        ((4, 3, 5), (3, 5)),
        ((7, 2, 4, 256), (4, 256)),
    ],
)
def test_multidim_normalized_shape(backend, shape, normalized_shape, dtype):
    x, w, b, g = make_case(shape, normalized_shape, dtype, backend.device)
    check_against_reference(
        backend, x, normalized_shape, w, b, 1e-5, g, dtype, what=f"{shape}/{normalized_shape}"
    )


@pytest.mark.parametrize("affine", ["wb", "w", "b"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [7, 768, 1025, 4096, 12288, 65536])
def test_mixed_precision_params(backend, n, dtype, affine):
    """half/bfloat16 input with float32 weight/bias: output in the input dtype,
    parameter gradients in float32."""
    x, w, b, g = make_case(
        (rows_for(n), n), (n,), dtype, backend.device, affine, param_dtype=torch.float32
    )
    check_against_reference(backend, x, (n,), w, b, 1e-5, g, dtype, what=f"mixed N={n}")


@pytest.mark.parametrize("param_dtype", ["float32", "input"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [7, 768, 1025, 4096, 12288, 65536, 262144])
def test_float_output_of_16bit_input(backend, n, dtype, param_dtype):
    """out_dtype=float32 (CUDA autocast's layer norm): the 16-bit input read as
    it is, a float32 output of float32 accuracy; the backward takes a float32
    grad_out and gives dx in the input's dtype, dweight/dbias in theirs. Every
    kernel: registers and looping (row cached in shared memory, and not)."""
    p_dtype = torch.float32 if param_dtype == "float32" else dtype
    x, w, b, _ = make_case((rows_for(n), n), (n,), dtype, backend.device, "wb", p_dtype)
    g = torch.randn(x.shape, dtype=torch.float32, device=backend.device)
    out, mean, rstd = backend.fwd(x, [n], w, b, 1e-5, torch.float32)
    assert out.dtype == torch.float32
    dx, dw, db = backend.bwd(g, x, [n], mean, rstd, w, b, [True, True, True])
    assert dx.dtype == dtype and dw.dtype == db.dtype == p_dtype
    r_out, r_dx, r_dw, r_db = reference(x, (n,), w, b, 1e-5, g)
    assert_close(out, r_out, torch.float32, what=f"float out N={n}")
    assert_close(dx, r_dx, dtype, backward=True, what="dx")
    assert_close(dw, r_dw, p_dtype, backward=True, what="dweight")
    assert_close(db, r_db, p_dtype, backward=True, what="dbias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_million_columns(backend, dtype):
    n = 1 << 20
    x, w, b, g = make_case((3, n), (n,), dtype, backend.device)
    check_against_reference(backend, x, (n,), w, b, 1e-5, g, dtype, what="N=2^20")


def offset_view(t: torch.Tensor, elements: int = 1) -> torch.Tensor:
    """A contiguous copy of t that starts `elements` into its storage, so that
    its data pointer is not 16-byte aligned."""
    base = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    view = base[elements:].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous() and view.data_ptr() % 16 != 0
    return view


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [8, 1024, 4096, 65536])
@pytest.mark.parametrize("which", ["x", "weight", "grad"])
def test_misaligned_views(backend, n, dtype, which):
    """Vectorizable N, but one operand starts at an odd element: the kernels
    must notice from the pointer and take the scalar path."""
    x, w, b, g = make_case((rows_for(n), n), (n,), dtype, backend.device)
    if which == "x":
        x = offset_view(x)
    elif which == "weight":
        w = offset_view(w)
    else:
        g = offset_view(g)
    check_against_reference(backend, x, (n,), w, b, 1e-5, g, dtype, what=f"misaligned {which}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_misaligned_forward_op(backend, dtype):
    """The op on an offset input directly (autograd would not copy it either)."""
    x, w, b, _ = make_case((33, 1024), (1024,), dtype, backend.device)
    xv = offset_view(x)
    out, mean, rstd = backend.fwd(xv, [1024], w, b, 1e-5)
    out_ref, mean_ref, rstd_ref = backend.fwd(x, [1024], w, b, 1e-5)
    assert_close(out, out_ref, dtype)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(rstd, rstd_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_inputs(backend, dtype):
    base, w, b, gbase = make_case((64, 2 * 1030), (2 * 1030,), dtype, backend.device)
    x = base[:, ::2]  # strided rows of 1030
    g = gbase[:, 1::2]
    w, b = w[::2], b[::2]
    assert not x.is_contiguous() and not w.is_contiguous()
    check_against_reference(backend, x, (1030,), w, b, 1e-5, g, dtype, what="strided")
    xt = base.reshape(64, 20, 103).transpose(0, 1)  # [20, 64, 103], rows not contiguous
    gt = gbase.reshape(64, 20, 103).transpose(0, 1)
    check_against_reference(backend, xt, (103,), None, None, 1e-5, gt, dtype, what="transposed")


@pytest.mark.parametrize("n", [4, 1024, 65536])
def test_cuda_matches_cpu_backend(backend, n):
    for dtype in (torch.float32, torch.float64):
        x, w, b, g = make_case((rows_for(n), n), (n,), dtype, backend.device)
        cuda = run_layer_norm(backend.layer_norm, x, (n,), w, b, 1e-5, g)
        cpu = run_layer_norm(fastln.layer_norm, x.cpu(), (n,), w.cpu(), b.cpu(), 1e-5, g.cpu())
        for name, a, e in zip(("out", "dx", "dweight", "dbias"), cuda, cpu):
            assert_close(a, e, dtype, backward=name != "out", what=f"cuda vs cpu {name}")


@pytest.mark.parametrize(
    "shape,n",
    [
        ((4096, 1024), 1024),
        ((3000, 100), 100),
        ((96, 12288), 12288),
        ((24, 65536), 65536),
        ((5, 3, 262144), 262144),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_deterministic(backend, shape, n, dtype):
    x, w, b, g = make_case(shape, (n,), dtype, backend.device)
    first = run_layer_norm(backend.layer_norm, x, (n,), w, b, 1e-5, g)
    for _ in range(2):
        again = run_layer_norm(backend.layer_norm, x, (n,), w, b, 1e-5, g)
        for a, e in zip(again, first):
            assert torch.equal(a, e), "results differ from run to run"


def test_empty_inputs(backend):
    for dtype in (torch.float32, torch.float16):
        # No rows.
        x, w, b, g = make_case((0, 16), (16,), dtype, backend.device)
        check_against_reference(backend, x, (16,), w, b, 1e-5, g, dtype, what="M=0")
        out, mean, rstd = backend.fwd(x, [16], w, b, 1e-5)
        assert out.shape == (0, 16) and mean.shape == (0, 1) and rstd.shape == (0, 1)
        # Empty rows: mean 0, rstd NaN, zero parameter gradients.
        x, w, b, g = make_case((5, 0), (0,), dtype, backend.device)
        out, mean, rstd = backend.fwd(x, [0], w, b, 1e-5)
        assert out.shape == (5, 0)
        assert torch.equal(mean.cpu(), torch.zeros(5, 1))
        assert torch.isnan(rstd).all()
        dx, dw, db = backend.bwd(g, x, [0], mean, rstd, w, b, [True, True, True])
        assert dx.shape == (5, 0) and dw.shape == (0,) and db.shape == (0,)
        # M == 0 with parameters: zero gradients of the right dtype.
        x, w, b, g = make_case((0, 3, 8), (8,), dtype, backend.device)
        _, mean, rstd = backend.fwd(x, [8], w, b, 1e-5)
        dx, dw, db = backend.bwd(g, x, [8], mean, rstd, w, b, [True, True, True])
        assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


@pytest.mark.parametrize(
    "mask", [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]
)
@pytest.mark.parametrize("n", [64, 4096, 65536])
def test_output_mask(backend, n, mask):
    dtype = torch.float32
    x, w, b, g = make_case((rows_for(n), n), (n,), dtype, backend.device)
    _, mean, rstd = backend.fwd(x, [n], w, b, 1e-5)
    dx, dw, db = backend.bwd(g, x, [n], mean, rstd, w, b, list(mask))
    _, r_dx, r_dw, r_db = reference(x, (n,), w, b, 1e-5, g)
    for got, want, ref, name in (
        (dx, mask[0], r_dx, "dx"),
        (dw, mask[1], r_dw, "dweight"),
        (db, mask[2], r_db, "dbias"),
    ):
        if want:
            assert_close(got, ref, dtype, backward=True, what=name)
        else:
            assert got is None, f"{name} computed although not requested"


@pytest.mark.parametrize("n", [8, 1024, 65536])
def test_nan_inf_propagate_like_torch(backend, n):
    dtype = torch.float32
    x, w, b, g = make_case((6, n), (n,), dtype, backend.device)
    x[1, n // 2] = float("nan")
    x[3, 0] = float("inf")
    x[4, n - 1] = float("-inf")
    out, dx, dw, db = run_layer_norm(backend.layer_norm, x, (n,), w, b, 1e-5, g)
    r_out, r_dx, r_dw, r_db = reference(x, (n,), w, b, 1e-5, g)
    for name, a, e in (
        ("out", out, r_out),
        ("dx", dx, r_dx),
        ("dweight", dw, r_dw),
        ("dbias", db, r_db),
    ):
        assert torch.equal(torch.isnan(a).cpu(), torch.isnan(e).cpu()), f"{name}: NaN pattern"
        assert_close(a, e, dtype, backward=name != "out", what=name)
    assert torch.isfinite(out[[0, 2, 5]]).all()


def test_cpu_cuda_mix_raises(backend):
    cuda_only(backend)
    x, w, b, g = make_case((4, 32), (32,), torch.float32, "cuda")
    with pytest.raises(RuntimeError):
        fastln.layer_norm(x, (32,), w.cpu(), b.cpu())
    with pytest.raises(RuntimeError):
        fastln.layer_norm(x.cpu(), (32,), w, b)
    with pytest.raises(RuntimeError):
        torch.ops.fastln.layer_norm_fwd(x, [32], w, b.cpu(), 1e-5)
    _, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [32], w, b, 1e-5)
    with pytest.raises(RuntimeError):
        torch.ops.fastln.layer_norm_bwd(g.cpu(), x, [32], mean, rstd, w, b, [True, True, True])
    with pytest.raises(RuntimeError):
        torch.ops.fastln.layer_norm_bwd(g, x, [32], mean.cpu(), rstd, w, b, [True, True, True])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device(backend):
    cuda_only(backend)
    device = torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    for n in (1024, 65536):
        x, w, b, g = make_case((rows_for(n), n), (n,), torch.float32, device)
        out, dx, dw, db = run_layer_norm(fastln.layer_norm, x, (n,), w, b, 1e-5, g)
        assert out.device == dx.device == dw.device == db.device == device
        check_against_reference(backend, x, (n,), w, b, 1e-5, g, torch.float32, what="cuda:1")
    assert torch.cuda.current_device() == 0


def test_over_2_31_elements(backend):
    """64-bit indexing: the last rows of a bfloat16 input of more than 2^31
    elements (only a few rows are checked, against the float64 reference)."""
    cuda_only(backend)
    free, total = torch.cuda.mem_get_info()
    if total < 40 * 2**30 or free < 24 * 2**30:
        pytest.skip("needs a GPU with ~40 GB")
    n = 1024
    m = (2**31) // n + 3
    dtype = torch.bfloat16
    x = torch.randn(m, n, device="cuda", dtype=dtype)
    w = torch.randn(n, device="cuda", dtype=dtype)
    b = torch.randn(n, device="cuda", dtype=dtype)
    out, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [n], w, b, 1e-5)
    g = torch.randn_like(x)
    dx, dw, db = torch.ops.fastln.layer_norm_bwd(g, x, [n], mean, rstd, w, b, [True, True, True])
    for rows in (slice(0, 4), slice(m - 5, m)):
        r_out, r_dx, _, _ = reference(x[rows], (n,), w, b, 1e-5, g[rows])
        assert_close(out[rows], r_out, dtype, what="out (2^31)")
        assert_close(dx[rows], r_dx, dtype, backward=True, what="dx (2^31)")
    # dbias = column sums of grad_out: compare with a float64 sum by chunks.
    want = torch.zeros(n, device="cuda", dtype=torch.float64)
    for start in range(0, m, 1 << 18):
        want += g[start : start + (1 << 18)].double().sum(0)
    torch.testing.assert_close(db.double(), want.to(dtype).double(), rtol=2e-2, atol=1.0)
    del x, g, out, dx


def test_torch_compile_fullgraph(backend):
    cuda_only(backend)
    n = 1024
    x, w, b, g = make_case((64, n), (n,), torch.float16, "cuda", param_dtype=torch.float32)

    def f(x, w, b):
        return fastln.layer_norm(x, (n,), w, b, 1e-5)

    compiled = torch.compile(f, fullgraph=True)
    got = run_layer_norm(lambda x, s, w, b, e: compiled(x, w, b), x, (n,), w, b, 1e-5, g)
    eager = run_layer_norm(fastln.layer_norm, x, (n,), w, b, 1e-5, g)
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), got, eager):
        assert a.dtype == e.dtype
        assert_close(a, e, torch.float16, backward=name != "out", what=f"compiled {name}")


@pytest.mark.parametrize("n", [1024, 65536])
def test_cuda_graph_capture(backend, n):
    cuda_only(backend)
    dtype = torch.float32
    x, w, b, gy = make_case((16, n), (n,), dtype, "cuda")
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)

    def step():
        out = fastln.layer_norm(x, (n,), w, b, 1e-5)
        out.backward(gy)
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            x.grad = w.grad = b.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    x.grad = w.grad = b.grad = None
    with torch.cuda.graph(graph):
        static_out = step()

    for _ in range(2):
        with torch.no_grad():
            x.copy_(torch.randn_like(x) * 2 + 1)
            gy.copy_(torch.randn_like(gy))
        graph.replay()
        torch.cuda.synchronize()
        r_out, r_dx, r_dw, r_db = reference(x.detach(), (n,), w.detach(), b.detach(), 1e-5, gy)
        assert_close(static_out, r_out, dtype, what="graph out")
        assert_close(x.grad, r_dx, dtype, backward=True, what="graph dx")
        assert_close(w.grad, r_dw, dtype, backward=True, what="graph dweight")
        assert_close(b.grad, r_db, dtype, backward=True, what="graph dbias")


def test_module_on_cuda_matches_torch(backend):
    cuda_only(backend)
    torch_ln = torch.nn.LayerNorm(768, device="cuda")
    with torch.no_grad():
        torch_ln.weight.normal_(1, 0.1)
        torch_ln.bias.normal_(0, 0.1)
    ours = fastln.replace_layernorm(torch.nn.Sequential(torch.nn.LayerNorm(768, device="cuda")))
    ours[0].load_state_dict(torch_ln.state_dict())
    x = torch.randn(8, 128, 768, device="cuda")
    torch.testing.assert_close(ours(x), torch_ln(x), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(
        ours(x), F.layer_norm(x, (768,), torch_ln.weight, torch_ln.bias), rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [512, 4096, 65536])
def test_huge_offset_keeps_accuracy(backend, n, dtype):
    """Rows of 1e4 + 1e-3 * noise: float32 holds 1e4 only to 1e-3, the scale of
    the signal, so the kernels must normalize x - shift (forward) and correct
    the rounded saved mean (backward), like the CPU backend."""
    dev = backend.device
    base = torch.randn(16, n, dtype=torch.float64, device=dev)
    x = (base * 1e-3 + 1e4).to(dtype)
    w = torch.randn(n, dtype=dtype, device=dev)
    b = torch.randn(n, dtype=dtype, device=dev)
    g = torch.randn(16, n, dtype=dtype, device=dev)
    got = run_direct(backend, x, (n,), w, b, 1e-12, g)
    want = reference(x, (n,), w, b, 1e-12, g)
    assert_close(got[0], want[0], dtype, what="out")
    assert_close(got[1] * 1e-3, want[1] * 1e-3, dtype, backward=True, what="dx")
    assert_close(got[2], want[2], dtype, backward=True, what="dweight")
    assert_close(got[3], want[3], dtype, backward=True, what="dbias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n", [1000, 4096, 65536])
def test_constant_rows(backend, n, dtype):
    dev = backend.device
    x = torch.full((4, n), 3.25, dtype=dtype, device=dev)
    w = torch.randn(n, dtype=dtype, device=dev)
    b = torch.randn(n, dtype=dtype, device=dev)
    g = torch.randn(4, n, dtype=dtype, device=dev)
    out, dx, dw, db = run_direct(backend, x, (n,), w, b, 1e-5, g)
    assert torch.equal(out, b.expand(4, n))  # exactly: x - mean is exactly 0
    want = reference(x, (n,), w, b, 1e-5, g)
    assert_close(dx, want[1], dtype, backward=True, what="dx")
    assert torch.equal(dw, torch.zeros_like(dw))
    assert_close(db, want[3], dtype, backward=True, what="db")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_element_rows(backend, dtype):
    dev = backend.device
    x = torch.randn(10, 1, dtype=dtype, device=dev) * 100
    b = torch.randn(1, dtype=dtype, device=dev)
    out = backend.layer_norm(x, (1,), torch.randn(1, dtype=dtype, device=dev), b)
    assert torch.equal(out, b.expand(10, 1))
