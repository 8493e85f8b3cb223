"""``fastln.layer_norm``: torch.nn.functional.layer_norm on fastln's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _ops

__all__ = ["layer_norm"]


_CUDA_BUILT = _ops.cuda_built()
# The op, whose autograd is a C++ node (csrc/autograd.cpp): a Python
# autograd.Function cost more than the kernels on small inputs. Eager calls
# enter it through _C.layer_norm, which skips the schema-driven argument
# parsing of torch.ops (about 1 us of a 3 us call); traced code calls the op
# itself (the overload, skipping the packet's overload lookup), which
# torch.compile sees.
_LAYER_NORM = torch.ops.fastln.layer_norm.default
_LAYER_NORM_EAGER = _ops._C.layer_norm
_is_compiling = torch.compiler.is_compiling


def _supported_device(input: torch.Tensor) -> bool:
    # meta runs the registered fake kernels (shape inference, deferred init).
    return input.is_cpu or (input.is_cuda and _CUDA_BUILT) or input.is_meta


def layer_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Layer normalization over the trailing ``normalized_shape`` dims of ``input``.

    Same signature and semantics as :func:`torch.nn.functional.layer_norm`:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance,
    statistics accumulated in float32 (float64 for double input). Weight and bias
    may be float32 when the input is float16/bfloat16; the output has the input's
    dtype.
    """
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    elif type(normalized_shape) not in (tuple, list):
        normalized_shape = tuple(int(s) for s in normalized_shape)
    if not _supported_device(input):
        raise NotImplementedError(
            f"fastln.layer_norm has no kernel for {input.device.type} tensors in this build "
            f"(kernels: {'CPU and CUDA' if _CUDA_BUILT else 'CPU only'})"
        )
    if _is_compiling():
        return _LAYER_NORM(input, normalized_shape, weight, bias, eps)
    return _LAYER_NORM_EAGER(input, normalized_shape, weight, bias, eps)
