"""``fastln.layer_norm``, ``fastln.rms_norm`` and the fused residual-add norms
``fastln.add_layer_norm`` / ``fastln.add_rms_norm``, on fastln's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch._C._functorch import maybe_current_level as _functorch_level
from torch.autograd import forward_ad as _fwad

from . import _integrations, _ops, _transforms

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "layer_norm",
    "low_precision_layer_norm",
    "rms_norm",
]


_CUDA_BUILT = _ops.cuda_built()
# The op, whose autograd is a C++ node (csrc/autograd.cpp): a Python
# autograd.Function cost more than the kernels on small inputs. Eager calls
# enter it through _C.layer_norm, which skips the schema-driven argument
# parsing of torch.ops (about 1 us of a 3 us call); traced code calls the op
# itself (the overload, skipping the packet's overload lookup), which
# torch.compile sees.
_LAYER_NORM = torch.ops.fastln.layer_norm.default
_LAYER_NORM_EAGER = _ops._C.layer_norm
_RMS_NORM = torch.ops.fastln.rms_norm.default
_ADD_NORM = torch.ops.fastln.add_norm.default
_ADD_NORM_EAGER = _ops._C.add_norm
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


def _check_device(input: torch.Tensor, op: str = "layer_norm") -> None:
    if not _supported_device(input):
        raise NotImplementedError(
            f"fastln.{op} has no kernel for {input.device.type} tensors in this build "
            f"(kernels: {'CPU and CUDA' if _CUDA_BUILT else 'CPU only'})"
        )


def _shape(normalized_shape: int | Sequence[int]) -> Sequence[int]:
    if type(normalized_shape) is tuple or type(normalized_shape) is list:
        return normalized_shape
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(s) for s in normalized_shape)


def _plain(input: torch.Tensor) -> bool:
    # The kernels' own path: a plain tensor, no functorch transform, no forward-AD
    # level (layer_norm's fast-path test).
    return type(input) is _Tensor and _functorch_level() is None and _fwad._current_level < 0


def _composite(input: torch.Tensor) -> bool:
    # Where rms_norm and the fused add norms take torch's own ops, which every
    # transform differentiates: functorch transforms, forward AD, nested tensors
    # and ONNX export (fastln.layer_norm has its own rules and kernels for these).
    return (
        input.is_nested
        or _functorch_level() is not None
        or _fwad._current_level >= 0
        or (_is_compiling() and _in_onnx_export())
    )


def _rms_weight(input: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | None:
    """The weight in a dtype fastln's RMSNorm kernels take.

    torch's rms_norm accepts a floating weight of any dtype: where the pair is
    not one its fused kernel takes, its composite multiplies by the weight in
    the promoted dtype and rounds to the input's. The kernels take the input's
    dtype (or float32 under float16/bfloat16 input), so any other floating
    weight is converted once to that dtype. Every widening conversion is
    exact, which makes the result torch's; a float64 weight under float32 (or
    float16/bfloat16) input is rounded to float32 first, one rounding more
    than torch's, within one unit of the output's last place. The conversion
    is differentiable, so the weight's gradient has the weight's dtype, as
    torch's does.
    """
    if weight is None or weight.dtype == input.dtype or not weight.is_floating_point():
        return weight
    if input.dtype == torch.float16 or input.dtype == torch.bfloat16:
        target = torch.float32
    elif input.dtype == torch.float32 or input.dtype == torch.float64:
        target = input.dtype
    else:
        return weight  # the op raises for the input's dtype
    return weight if weight.dtype == target else weight.to(target)


def rms_norm(
    input: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """Root mean square normalization over the trailing ``normalized_shape`` dims.

    Same signature and semantics as :func:`torch.nn.functional.rms_norm`:
    ``y = x / sqrt(mean(x^2) + eps) * weight``, accumulated in float32 (float64
    for double input); ``eps=None`` is the machine epsilon of that accumulation
    dtype, as torch's own kernels take it. The weight may have any floating
    dtype, as torch's (see :func:`_rms_weight`); the output has the input's
    dtype.
    """
    normalized_shape = _shape(normalized_shape)
    if weight is not None and weight.dtype != input.dtype:  # the common case skips the call
        weight = _rms_weight(input, weight)
    if _plain(input) and not _is_compiling():
        try:
            return _RMS_NORM(input, normalized_shape, weight, eps)
        except NotImplementedError:
            _check_device(input, "rms_norm")
            raise
    _check_device(input, "rms_norm")
    if _composite(input):
        return F.rms_norm(input, normalized_shape, weight, eps)
    return _RMS_NORM(input, normalized_shape, weight, eps)


def _add_norm(
    input: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float | None,
    rms: bool,
    residual_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    normalized_shape = _shape(normalized_shape)
    h_dtype = input.dtype if residual_dtype is None else residual_dtype
    if residual.dtype != input.dtype and residual.dtype != h_dtype:
        # The kernels read a residual of the input's dtype or h's; any other is
        # converted once (torch's promotion would do the same work).
        residual = residual.to(h_dtype)
    if _plain(input) and not _is_compiling():
        try:
            return _ADD_NORM_EAGER(
                input, residual, normalized_shape, weight, bias, eps, rms, h_dtype
            )
        except NotImplementedError:
            _check_device(input, "add_rms_norm" if rms else "add_layer_norm")
            raise
    _check_device(input, "add_rms_norm" if rms else "add_layer_norm")
    if _composite(input):
        h = input.to(h_dtype) + residual.to(h_dtype)
        # The norm of h at h's precision, then the input's dtype.
        w = None if weight is None else weight.to(h.dtype) if h.dtype == torch.float32 else weight
        if rms:
            y = F.rms_norm(h, normalized_shape, w, eps)
        else:
            b = None if bias is None else bias.to(h.dtype) if h.dtype == torch.float32 else bias
            y = F.layer_norm(h, normalized_shape, w, b, 1e-5 if eps is None else eps)
        return y.to(input.dtype), h
    return _ADD_NORM(input, residual, normalized_shape, weight, bias, eps, rms, h_dtype)


def add_layer_norm(
    input: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm residual step in one kernel: ``h = input + residual`` and
    ``y = layer_norm(h)``; returns ``(y, h)``.

    ``h`` is kept in ``residual_dtype`` (default: the input's; ``torch.float32``
    keeps a float32 residual stream under half/bfloat16 activations) and ``y``,
    in the input's dtype, is computed from ``h`` at ``h``'s precision. Gradients
    reach ``input``, ``residual``, ``weight`` and ``bias`` from both ``y`` and
    ``h``. The kernel reads ``input`` and ``residual`` once and writes ``h`` and
    ``y``; the backward writes one gradient, that of ``input`` and ``residual``.
    """
    return _add_norm(input, residual, normalized_shape, weight, bias, eps, False, residual_dtype)


def add_rms_norm(
    input: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    residual_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`add_layer_norm` with :func:`rms_norm`: ``h = input + residual``,
    ``y = rms_norm(h)``; returns ``(y, h)`` (``eps=None`` as in :func:`rms_norm`)."""
    return _add_norm(input, residual, normalized_shape, weight, None, eps, True, residual_dtype)


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
