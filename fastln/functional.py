"""``fastln.layer_norm``: torch.nn.functional.layer_norm on fastln's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch._C._functorch import maybe_current_level as _functorch_level
from torch.autograd import forward_ad as _fwad

from . import _integrations, _ops, _transforms

__all__ = ["layer_norm", "low_precision_layer_norm"]


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
_in_onnx_export = torch.onnx.is_in_onnx_export
_Tensor = torch.Tensor


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
    if type(normalized_shape) is not tuple and type(normalized_shape) is not list:
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        else:
            normalized_shape = tuple(int(s) for s in normalized_shape)
    if _is_compiling():
        _check_device(input)
        if _in_onnx_export():
            # torch.onnx.export(dynamo=True) traces through here: torch's own op
            # becomes ONNX LayerNormalization (fastln's op has no ONNX form).
            return F.layer_norm(input, normalized_shape, weight, bias, eps)
        if input.is_nested:
            return _integrations.nested_layer_norm(input, normalized_shape, weight, bias, eps)
        return _LAYER_NORM(input, normalized_shape, weight, bias, eps)
    # The common case first, in checks that cost less than a function call: a
    # plain tensor, no functorch transform, no forward-AD level. Everything
    # else (transforms, forward AD, nested tensors, DTensor, Parameter) takes
    # _special_input. A device without kernels is told apart only when the op
    # fails (the dispatcher raises NotImplementedError), which costs nothing
    # until then.
    if type(input) is _Tensor and _functorch_level() is None and _fwad._current_level < 0:
        try:
            return _LAYER_NORM_EAGER(input, normalized_shape, weight, bias, eps)
        except NotImplementedError:
            _check_device(input)
            raise
    _check_device(input)
    return _special_input(input, normalized_shape, weight, bias, eps)


def _supported_device(input: torch.Tensor) -> bool:
    # meta runs the registered fake kernels (shape inference, deferred init).
    return input.is_cpu or (input.is_cuda and _CUDA_BUILT) or input.is_meta


def _check_device(input: torch.Tensor) -> None:
    if not _supported_device(input):
        raise NotImplementedError(
            f"fastln.layer_norm has no kernel for {input.device.type} tensors in this build "
            f"(kernels: {'CPU and CUDA' if _CUDA_BUILT else 'CPU only'})"
        )


def _special_input(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    if input.is_nested:
        return _integrations.nested_layer_norm(input, normalized_shape, weight, bias, eps)
    if _functorch_level() is not None or _fwad._current_level >= 0:
        return _transforms.layer_norm_in_transform(input, normalized_shape, weight, bias, eps)
    _integrations.register_dtensor_sharding()
    # torch.ops, unlike the binding of the fast path, honours __torch_function__
    # (tensor subclasses see the call and get their type back).
    return _LAYER_NORM(input, normalized_shape, weight, bias, eps)


def low_precision_layer_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """:func:`layer_norm` whose output, under ``torch.autocast``, has the autocast
    dtype (an explicit opt-in: torch's own policy gives float32 on CUDA and the
    input's dtype on the CPU).

    What timm's ``fast_norm`` and MosaicML's ``LPLayerNorm`` write by hand: the
    input is cast to the autocast dtype when it is not in it already (16-bit
    input is read as it is), and the layer norm runs with autocast off. Unlike
    them, float32 weight/bias are not rounded to 16 bits: fastln's kernels read
    them as they are, next to the 16-bit input. Outside autocast this is
    :func:`layer_norm`.
    """
    device = input.device.type
    if not torch.is_autocast_enabled(device):
        return layer_norm(input, normalized_shape, weight, bias, eps)
    dtype = torch.get_autocast_dtype(device)

    def cast(t: torch.Tensor | None, keep_float: bool) -> torch.Tensor | None:
        if t is None or t.dtype == dtype or (keep_float and t.dtype == torch.float32):
            return t
        return t.to(dtype) if t.is_floating_point() else t

    with torch.autocast(device_type=device, enabled=False):
        return layer_norm(
            cast(input, False), normalized_shape, cast(weight, True), cast(bias, True), eps
        )
