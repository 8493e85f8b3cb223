"""Forward and backward parity with torch.nn.functional.layer_norm on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, reference, run_layer_norm

import fastln

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# (input shape, normalized_shape): odd and prime sizes, powers of two and
# their neighbours, and normalized_shape over one to all dims.
SHAPES = [
    ((5, 1), (1,)),
    ((7, 3), (3,)),
    ((3, 5, 7), (7,)),
    ((11, 127), (127,)),
    ((4, 768), (768,)),
    ((3, 1023), (1023,)),
    ((3, 1024), (1024,)),
    ((3, 1025), (1025,)),
    ((2, 4096), (4096,)),
    ((2, 12288), (12288,)),
    ((2, 3, 4), (3, 4)),
    ((2, 3, 4, 5), (3, 4, 5)),
    ((2, 3, 4), (2, 3, 4)),
    ((67, 33), (33,)),
]


def _inputs(shape, normalized_shape, dtype, affine, with_bias, param_dtype=None):
    x = torch.randn(shape, dtype=dtype) * 2 + 0.5
    param_dtype = param_dtype or dtype
    w = torch.randn(normalized_shape, dtype=param_dtype) if affine else None
    b = torch.randn(normalized_shape, dtype=param_dtype) if affine and with_bias else None
    g = torch.randn(shape, dtype=dtype)
    return x, w, b, g


def _check(x, normalized_shape, w, b, eps, g):
    got = run_layer_norm(fastln.layer_norm, x, normalized_shape, w, b, eps, g)
    want = reference(x, normalized_shape, w, b, eps, g)
    dtype = x.dtype
    assert got[0].dtype == dtype
    assert_close(got[0], want[0], dtype, what="out")
    for name, a, e, p in zip(("dx", "dweight", "dbias"), got[1:], want[1:], (x, w, b)):
        if a is not None:
            assert a.dtype == p.dtype, name
        assert_close(a, e, dtype, backward=True, what=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    "affine,with_bias",
    [(True, True), (True, False), (False, False)],
    ids=["affine", "weight_only", "no_affine"],
)
def test_parity(dtype, shape, normalized_shape, affine, with_bias):
    x, w, b, g = _inputs(shape, normalized_shape, dtype, affine, with_bias)
    _check(x, normalized_shape, w, b, 1e-5, g)


@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5, 1e-3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_eps(eps, dtype):
    x, w, b, g = _inputs((9, 257), (257,), dtype, True, True)
    _check(x, (257,), w, b, eps, g)


def test_bias_without_weight():
    # F.layer_norm accepts a bias with no weight; so must fastln.
    x, _, b, g = _inputs((6, 40), (40,), torch.float32, True, True)
    _check(x, (40,), None, b, 1e-5, g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_mixed_precision_params(dtype):
    # Low-precision input with float32 weight/bias (torch's CPU kernel allows it
    # too): output in the input dtype, parameter grads in float32.
    x, w, b, g = _inputs((13, 300), (300,), dtype, True, True, param_dtype=torch.float32)
    _check(x, (300,), w, b, 1e-5, g)


@pytest.mark.parametrize("N", [65536, 262144])
def test_wide_rows(N):
    x, w, b, g = _inputs((3, N), (N,), torch.float32, True, True)
    _check(x, (N,), w, b, 1e-5, g)


# Enough rows that the dweight/dbias reduction uses many row blocks, and rows
# per block (ceil(M / 64)) above one group of 32, ragged: 34 = 32 + 2, 65 = 2
# groups + 1 row, 201 = 6 groups + 9 rows (the pairwise carries of 7 groups).
@pytest.mark.parametrize("M,N", [(4099, 96), (2117, 33), (64 * 65, 7), (12817, 130)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_rows_parameter_grads(M, N, dtype):
    x, w, b, g = _inputs((M, N), (N,), dtype, True, True)
    _check(x, (N,), w, b, 1e-5, g)


@pytest.mark.parametrize("view", ["transposed", "strided", "offset"])
def test_non_contiguous_input(view):
    base = torch.randn(64, 130)
    x = {"transposed": base.t(), "strided": base[::2, ::2], "offset": base[:, 1:]}[view]
    assert not x.is_contiguous() or x.storage_offset() != 0
    N = x.shape[-1]
    w, b = torch.randn(N), torch.randn(N)
    _check(x, (N,), w, b, 1e-5, torch.randn(x.shape))


def test_non_contiguous_grad_and_params():
    x = torch.randn(8, 50)
    w = torch.randn(100)[::2]
    b = torch.randn(100)[1::2]
    g = torch.randn(50, 8).t()
    _check(x, (50,), w, b, 1e-5, g)


def test_channels_last_input():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    _check(x, (4, 5), torch.randn(4, 5), torch.randn(4, 5), 1e-5, torch.randn(2, 3, 4, 5))


def test_inference_mode_and_no_grad():
    x = torch.randn(5, 33)
    want = reference(x, (33,), None, None, 1e-5, None)[0]
    with torch.no_grad():
        assert_close(fastln.layer_norm(x, (33,)), want, torch.float32)
    with torch.inference_mode():
        assert_close(fastln.layer_norm(x, (33,)), want, torch.float32)
