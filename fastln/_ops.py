"""Loads the native ops and registers what torch needs to trace them.

The ops are declared in C++ (csrc/ops.cpp): ``torch.ops.fastln.layer_norm``
(what fastln.layer_norm calls; its autograd is in csrc/autograd.cpp) and its two
kernels ``layer_norm_fwd`` and ``layer_norm_bwd``, which each backend registers
from its own file. This module adds their fake (meta) implementations, which give
torch.compile and FakeTensor output shapes and dtypes without running a kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _C  # noqa: F401  (loading it registers the ops)

__all__ = ["cuda_built", "cpu_isa", "cpu_stream_bytes", "stats_dtype", "check_forward_inputs"]


def cuda_built() -> bool:
    """Whether this build of fastln contains the CUDA kernels."""
    return bool(_C.cuda_built())


def cpu_isa() -> str:
    """The CPU row kernels in use on this machine: ``"avx512"``, ``"avx2"`` or ``"base"``
    (the widest copy the processor runs unless ``FASTLN_CPU_ISA`` asks for a narrower one)."""
    return str(_C.cpu_isa())


def cpu_stream_bytes() -> int | None:
    """Output size in bytes from which the CPU kernels write with non-temporal stores at
    torch's current thread count (threads x L2 cache, at most half the L3, unless
    ``FASTLN_CPU_STREAM`` sets it), or None when they never do (``FASTLN_CPU_STREAM=0``)."""
    value = int(_C.cpu_stream_bytes())
    return None if value == 2**63 - 1 else value


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved mean/rstd: float64 for double input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_forward_inputs(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
    op_name: str = "layer_norm",
) -> torch.dtype:
    """The checks of csrc/checks.cpp, for tracing (the C++ op runs its own);
    returns the output dtype.

    Same exception types and messages as torch's layer_norm, so a traced model
    fails the way an eager one does.
    """
    shape = list(normalized_shape)
    if len(shape) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            f"least one element, but got normalized_shape = {shape}"
        )
    # torch's rms_norm checks the weight's shape first, raises ValueError for too
    # few input dims and spells the expected shape [*4, 2] (layer_norm: [*, 4, 2]).
    rms_style = "rms" in op_name
    if rms_style:
        if weight is not None and list(weight.shape) != shape:
            raise RuntimeError(
                "Expected weight to be of same shape as normalized_shape, but got weight of "
                f"shape {list(weight.shape)} and normalized_shape = {shape}"
            )
        if input.dim() < len(shape):
            raise ValueError(
                f"Input tensor must have at least {len(shape)} dimensions, but got {input.dim()}"
            )
    if input.dim() < len(shape) or list(input.shape[input.dim() - len(shape) :]) != shape:
        if rms_style:
            expected = "*" + ", ".join(str(s) for s in shape)
        else:
            expected = ", ".join(["*"] + [str(s) for s in shape])
        raise RuntimeError(
            f"Given normalized_shape={shape}, expected input with shape [{expected}], "
            f"but got input of size{list(input.shape)}"
        )
    if input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise NotImplementedError(
            f"fastln {op_name}: not implemented for '{input.dtype}'; supported dtypes are "
            "Float, Double, Half and BFloat16"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is None:
            continue
        if list(param.shape) != shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(param.shape)} and normalized_shape = {shape}"
            )
        if param.device != input.device:
            raise RuntimeError(
                f"Expected {name} to be on the same device as input ({input.device}), but got "
                f"{name} on {param.device}"
            )
        low_precision = input.dtype in (torch.float16, torch.bfloat16)
        if param.dtype != input.dtype and not (low_precision and param.dtype == torch.float32):
            raise RuntimeError(
                f"Expected {name} to have the input's dtype ({input.dtype})"
                f"{' or Float' if low_precision else ''}, but got {name} of dtype {param.dtype}"
            )
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        raise RuntimeError(
            "Expected weight and bias to have the same dtype, but got weight of dtype "
            f"{weight.dtype} and bias of dtype {bias.dtype}"
        )
    return output_dtype(input.dtype, out_dtype)


def _low_precision(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def output_dtype(input_dtype: torch.dtype, out_dtype: torch.dtype | None) -> torch.dtype:
    """out_dtype if given (the input's, or float32 for 16-bit input), else the
    input's dtype; csrc/checks.cpp's output_dtype."""
    if out_dtype is None or out_dtype == input_dtype:
        return input_dtype
    if not (_low_precision(input_dtype) and out_dtype == torch.float32):
        raise RuntimeError(
            f"fastln layer_norm: out_dtype must be the input's dtype ({input_dtype})"
            f"{' or Float' if _low_precision(input_dtype) else ''}, but got {out_dtype}"
        )
    return out_dtype


def _stats_shape(input: torch.Tensor, normalized_shape: Sequence[int]) -> list[int]:
    axis = input.dim() - len(normalized_shape)
    return list(input.shape[:axis]) + [1] * len(normalized_shape)


@torch.library.register_fake("fastln::layer_norm_fwd")
def _layer_norm_fwd_fake(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = check_forward_inputs(input, normalized_shape, weight, bias, out_dtype)
    stats = _stats_shape(input, normalized_shape)
    acc = stats_dtype(input.dtype)
    return (
        input.new_empty(input.shape, dtype=out),
        input.new_empty(stats, dtype=acc),
        input.new_empty(stats, dtype=acc),
    )


@torch.library.register_fake("fastln::layer_norm")
def _layer_norm_fake(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    out = check_forward_inputs(input, normalized_shape, weight, bias, out_dtype)
    return input.new_empty(input.shape, dtype=out)


@torch.library.register_fake("fastln::layer_norm_bwd")
def _layer_norm_bwd_fake(
    grad_out: torch.Tensor,
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    check_forward_inputs(input, normalized_shape, weight, bias)
    if grad_out.shape != input.shape:
        raise RuntimeError(
            f"Expected grad_out to have the input's shape {list(input.shape)}, but got "
            f"{list(grad_out.shape)}"
        )
    float_grad = _low_precision(input.dtype) and grad_out.dtype == torch.float32
    if grad_out.dtype != input.dtype and not float_grad:
        raise RuntimeError(
            f"Expected grad_out to have the input's dtype {input.dtype}"
            f"{' or Float' if _low_precision(input.dtype) else ''}, but got {grad_out.dtype}"
        )
    dx = input.new_empty(input.shape) if output_mask[0] else None
    dw = weight.new_empty(weight.shape) if output_mask[1] and weight is not None else None
    db = bias.new_empty(bias.shape) if output_mask[2] and bias is not None else None
    return dx, dw, db


def _check_add_norm_inputs(
    input: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    rms: bool,
    residual_dtype: torch.dtype,
) -> None:
    """csrc/checks.cpp's check_add_norm_inputs, for tracing."""
    op = "add_rms_norm" if rms else "add_layer_norm"
    if rms and bias is not None:
        raise RuntimeError(f"fastln {op}: RMSNorm has no bias")
    check_forward_inputs(input, normalized_shape, weight, bias, op_name=op)
    low = _low_precision(input.dtype)
    if residual_dtype != input.dtype and not (low and residual_dtype == torch.float32):
        raise RuntimeError(
            f"fastln {op}: residual_dtype must be the input's dtype ({input.dtype})"
            f"{' or Float' if low else ''}, but got {residual_dtype}"
        )
    if residual.dtype not in (input.dtype, residual_dtype):
        raise RuntimeError(
            f"fastln {op}: expected residual to have the input's dtype ({input.dtype}) or "
            f"residual_dtype ({residual_dtype}), but got {residual.dtype}"
        )
    if residual.shape != input.shape:
        raise RuntimeError(
            f"Expected residual to have the input's shape {list(input.shape)}, but got "
            f"{list(residual.shape)}"
        )


@torch.library.register_fake("fastln::rms_norm_fwd")
def _rms_norm_fwd_fake(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_forward_inputs(input, normalized_shape, weight, None, op_name="rms_norm")
    stats = _stats_shape(input, normalized_shape)
    return input.new_empty(input.shape), input.new_empty(stats, dtype=stats_dtype(input.dtype))


@torch.library.register_fake("fastln::rms_norm")
def _rms_norm_fake(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    check_forward_inputs(input, normalized_shape, weight, None, op_name="rms_norm")
    return input.new_empty(input.shape)


@torch.library.register_fake("fastln::rms_norm_bwd")
def _rms_norm_bwd_fake(
    grad_out: torch.Tensor,
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    check_forward_inputs(input, normalized_shape, weight, None, op_name="rms_norm")
    if grad_out.shape != input.shape or grad_out.dtype != input.dtype:
        raise RuntimeError(
            f"Expected grad_out to have the input's shape {list(input.shape)} and dtype "
            f"{input.dtype}, but got {list(grad_out.shape)} and {grad_out.dtype}"
        )
    dx = input.new_empty(input.shape) if output_mask[0] else None
    dw = weight.new_empty(weight.shape) if output_mask[1] and weight is not None else None
    return dx, dw


@torch.library.register_fake("fastln::add_norm_fwd")
def _add_norm_fwd_fake(
    input: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    rms: bool,
    residual_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_add_norm_inputs(input, residual, normalized_shape, weight, bias, rms, residual_dtype)
    stats = _stats_shape(input, normalized_shape)
    acc = stats_dtype(input.dtype)
    mean = input.new_empty((0,) if rms else stats, dtype=acc)
    return (
        input.new_empty(input.shape),
        input.new_empty(input.shape, dtype=residual_dtype),
        mean,
        input.new_empty(stats, dtype=acc),
    )


@torch.library.register_fake("fastln::add_norm")
def _add_norm_fake(
    input: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float | None = None,
    rms: bool = False,
    residual_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    h_dtype = input.dtype if residual_dtype is None else residual_dtype
    _check_add_norm_inputs(input, residual, normalized_shape, weight, bias, rms, h_dtype)
    return input.new_empty(input.shape), input.new_empty(input.shape, dtype=h_dtype)


@torch.library.register_fake("fastln::add_norm_bwd")
def _add_norm_bwd_fake(
    grad_out: torch.Tensor,
    grad_h: torch.Tensor | None,
    h: torch.Tensor,
    normalized_shape: Sequence[int],
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    rms: bool,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    if grad_out.shape != h.shape:
        raise RuntimeError(
            f"Expected grad_out to have the h's shape {list(h.shape)}, but got "
            f"{list(grad_out.shape)}"
        )
    dh = h.new_empty(h.shape) if output_mask[0] else None
    dw = weight.new_empty(weight.shape) if output_mask[1] and weight is not None else None
    db = bias.new_empty(bias.shape) if output_mask[2] and bias is not None and not rms else None
    return dh, dw, db
