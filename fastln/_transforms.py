"""fastln.layer_norm inside torch.func transforms and forward-mode AD.

The eager op's autograd is a C++ node (csrc/autograd.cpp), which functorch cannot
see through ("cannot use C++ torch::autograd::Function with functorch transforms")
and which has no forward-mode formula. Inside a transform (``grad``, ``vjp``,
``jacrev``, ``vmap``, ``jvp``, ``jacfwd``, ``hessian``, ...) or while a
forward-AD level is open, ``fastln.layer_norm`` comes here instead; plain eager
and compiled calls never do (functional.py decides, from two thread-local reads).

- At most one differentiating level (one ``grad``/``vjp``/``jacrev``, or one
  ``jvp``/``jacfwd``/forward-AD level, under any number of ``vmap``):
  :class:`_LayerNormFunction`, whose forward and backward are fastln's kernels,
  whose ``jvp`` is the tangent formula below and whose ``vmap`` rule folds the
  batch into the rows, so ``vmap`` and per-sample gradients run one kernel call.
- Two or more differentiating levels (``hessian``, ``jacfwd(jacrev(f))``, a
  ``grad`` of a ``grad``, forward AD over a backward): the gradient itself gets
  differentiated, which the fused kernels cannot be, so the layer norm is the
  differentiable composite :func:`composite_layer_norm` of torch ops, which every
  transform differentiates to any order. It follows the kernels' math (two-pass
  statistics in the accumulation dtype), so values agree with them to rounding.

Math, with ``xhat = (x - mean) * rstd`` over the normalized dims and ``t`` the
input tangent: ``mean`` moves by ``mean(t)``; with ``u = rstd * (t - mean(t))``,
``xhat`` moves by ``u - xhat * mean(xhat * u)``; then ``y = xhat * w + b`` moves
by ``dxhat * w + xhat * dw + db``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch._C import _functorch
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.autograd import forward_ad as _fwad

from ._ops import stats_dtype

__all__ = ["composite_layer_norm", "layer_norm_in_transform"]

_FWD = torch.ops.fastln.layer_norm_fwd.default
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_BWD = torch.ops.fastln.layer_norm_bwd.default


def _dims(normalized_shape: Sequence[int]) -> list[int]:
    return list(range(-len(normalized_shape), 0))


def composite_layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The layer norm as differentiable torch ops, in the kernels' accumulation
    dtype (float32, float64 for double input), output in out_dtype (default:
    the input's dtype)."""
    acc = stats_dtype(input.dtype)
    dims = _dims(normalized_shape)
    x = input.to(acc)
    centered = x - x.mean(dims, keepdim=True)
    y = centered * torch.rsqrt(centered.square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(out_dtype or input.dtype)


def _autocast_out_dtype(input: torch.Tensor) -> torch.dtype | None:
    """float32 for 16-bit CUDA input under torch.autocast("cuda"): torch's policy,
    which csrc/autocast.cpp applies to the ops (and so to the kernels this path
    calls); the composites follow it here."""
    if input.is_cuda and input.dtype in _LOW_PRECISION and torch.is_autocast_enabled("cuda"):
        return torch.float32
    return None


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    while _functorch.is_functorch_wrapped_tensor(t):
        t = _functorch.get_unwrapped(t)
    return t


def _differentiating_levels(tensors: Sequence[torch.Tensor | None]) -> int:
    keys = [i.key() for i in retrieve_all_functorch_interpreters()]
    grads = keys.count(_functorch.TransformType.Grad)
    # torch.func.jvp opens a forward-AD level of its own, so the open levels
    # (torch.autograd.forward_ad) count beyond the Jvp transforms only.
    forward = max(keys.count(_functorch.TransformType.Jvp), _fwad._current_level + 1)
    # Plain autograd beneath the transforms (torch.func.grad called inside a
    # function that is itself being backpropagated) differentiates once more.
    eager = torch.is_grad_enabled() and any(
        t is not None and _unwrapped(t).requires_grad for t in tensors
    )
    return grads + forward + int(eager)


class _LayerNormFunction(torch.autograd.Function):
    """fastln's kernels as an autograd.Function that torch.func can transform."""

    @staticmethod
    def forward(
        input: torch.Tensor,
        normalized_shape: Sequence[int],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # mean/rstd are outputs (not differentiable) so that setup_context, the
        # form torch.func requires, can save them.
        return _FWD(input, normalized_shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        input, normalized_shape, weight, bias, _ = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.normalized_shape = list(normalized_shape)
        ctx.has_weight = weight is not None
        ctx.has_bias = bias is not None
        ctx.out_dtype = output[0].dtype  # the input's, or float32 (CUDA autocast)
        ctx.save_for_backward(input, weight, bias, mean, rstd)
        ctx.save_for_forward(input, weight, mean, rstd)

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor, _grad_mean: Any, _grad_rstd: Any
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, torch.Tensor | None, None]:
        input, weight, bias, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], ctx.has_weight and needs[2], ctx.has_bias and needs[3]]
        dx, dw, db = _LayerNormBackward.apply(
            grad_out, input, ctx.normalized_shape, mean, rstd, weight, bias, mask
        )
        return dx, None, dw, db, None

    @staticmethod
    def jvp(
        ctx: Any,
        input_t: torch.Tensor | None,
        _shape_t: Any,
        weight_t: torch.Tensor | None,
        bias_t: torch.Tensor | None,
        _eps_t: Any,
    ) -> tuple[torch.Tensor, None, None]:
        input, weight, mean, rstd = ctx.saved_tensors
        acc = mean.dtype
        dims = _dims(ctx.normalized_shape)
        xhat = (input.to(acc) - mean) * rstd
        tangent = torch.zeros_like(xhat)
        if input_t is not None:
            t = input_t.to(acc)
            u = rstd * (t - t.mean(dims, keepdim=True))
            dxhat = u - xhat * (xhat * u).mean(dims, keepdim=True)
            tangent = dxhat * weight.to(acc) if weight is not None else dxhat
        if weight_t is not None:
            tangent = tangent + xhat * weight_t.to(acc)
        if bias_t is not None:
            tangent = tangent + bias_t.to(acc)
        return tangent.to(ctx.out_dtype), None, None

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        input: torch.Tensor,
        normalized_shape: Sequence[int],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[int, int, int]]:
        input_dim, _, weight_dim, bias_dim, _ = in_dims
        if weight_dim is None and bias_dim is None:
            # The normalized dims are trailing, so a batch dim is just more rows.
            if input_dim is None:
                input = input.expand(info.batch_size, *input.shape)
            else:
                input = input.movedim(input_dim, 0)
            return _LayerNormFunction.apply(input, normalized_shape, weight, bias, eps), (0, 0, 0)
        # Per-sample parameters: one weight row per batch element, which no kernel
        # takes; the composite broadcasts them.
        return _batched_params(info, in_dims, input, normalized_shape, weight, bias, eps)


def _batched_params(
    info: Any,
    in_dims: tuple[int | None, ...],
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[int, int, int]]:
    input_dim, _, weight_dim, bias_dim, _ = in_dims
    batch = info.batch_size
    x = input.movedim(input_dim, 0) if input_dim is not None else input.expand(batch, *input.shape)
    ndim = len(normalized_shape)
    view = [batch] + [1] * (x.dim() - 1 - ndim) + list(normalized_shape)

    def per_sample(param: torch.Tensor | None, dim: int | None) -> torch.Tensor | None:
        if param is None or dim is None:
            return param
        return param.movedim(dim, 0).reshape(view)

    acc = stats_dtype(x.dtype)
    dims = _dims(normalized_shape)
    xa = x.to(acc)
    mean = xa.mean(dims, keepdim=True)
    rstd = torch.rsqrt((xa - mean).square().mean(dims, keepdim=True) + eps)
    out = composite_layer_norm(
        x,
        normalized_shape,
        per_sample(weight, weight_dim),
        per_sample(bias, bias_dim),
        eps,
        _autocast_out_dtype(x),
    )
    return (out, mean, rstd), (0, 0, 0)


class _LayerNormBackward(torch.autograd.Function):
    """The backward kernel, with a vmap rule: under ``jacrev`` and per-sample
    gradients the batch folds into the rows for dx, and dweight/dbias, which must
    stay per sample, are summed per batch element."""

    @staticmethod
    def forward(
        grad_out: torch.Tensor,
        input: torch.Tensor,
        normalized_shape: list[int],
        mean: torch.Tensor,
        rstd: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        mask: list[bool],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        return _BWD(grad_out, input, normalized_shape, mean, rstd, weight, bias, mask)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        # Only reached when a gradient is differentiated again, which
        # _differentiating_levels sends to the composite instead.
        raise RuntimeError(
            "fastln: the layer_norm backward kernel was differentiated; please report this"
        )

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        grad_out: torch.Tensor,
        input: torch.Tensor,
        normalized_shape: list[int],
        mean: torch.Tensor,
        rstd: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        mask: list[bool],
    ) -> tuple[tuple[torch.Tensor | None, ...], tuple[int | None, ...]]:
        batch = info.batch_size

        def batched(t: torch.Tensor, dim: int | None) -> torch.Tensor:
            return t.movedim(dim, 0) if dim is not None else t.expand(batch, *t.shape)

        g, x, m, r = (
            batched(t, d) for t, d in zip((grad_out, input, mean, rstd), in_dims[:2] + in_dims[3:5])
        )
        ndim = len(normalized_shape)
        if in_dims[5] is None:
            # dx from the kernel, the batch folded into its rows.
            dx = None
            if mask[0]:
                dx, _, _ = _LayerNormBackward.apply(
                    g, x, normalized_shape, m, r, weight, bias, [True, False, False]
                )
            per_sample_weight = weight
        else:
            # Per-sample weights (vmap over stacked parameters): no kernel takes
            # one weight row per batch element.
            view = [batch] + [1] * (x.dim() - 1 - ndim) + list(normalized_shape)
            per_sample_weight = weight.movedim(in_dims[5], 0).reshape(view)
            dx = None
        return _backward_composite(g, x, m, r, per_sample_weight, bias, mask, ndim, dx)


def _backward_composite(
    grad_out: torch.Tensor,
    input: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mask: list[bool],
    ndim: int,
    dx: torch.Tensor | None,
) -> tuple[tuple[torch.Tensor | None, ...], tuple[int | None, ...]]:
    """The layer norm backward per batch element (dim 0) in torch ops: ``dx``
    unless given, and dweight/dbias summed over each element's own rows."""
    acc = rstd.dtype
    dims = _dims(range(ndim))
    rows = list(range(1, grad_out.dim() - ndim))
    g = grad_out.to(acc)
    xhat = (input.to(acc) - mean) * rstd
    if mask[0] and dx is None:
        gw = g * weight.to(acc) if weight is not None else g
        dx = rstd * (gw - gw.mean(dims, keepdim=True) - xhat * (gw * xhat).mean(dims, keepdim=True))
        dx = dx.to(input.dtype)
    dw = (g * xhat).sum(rows).to(weight.dtype) if mask[1] else None
    db = g.sum(rows).to(bias.dtype) if mask[2] else None
    outs = (dx if mask[0] else None, dw, db)
    return outs, tuple(0 if t is not None else None for t in outs)


def layer_norm_in_transform(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """fastln.layer_norm under torch.func transforms or forward AD (see the module doc)."""
    if _differentiating_levels((input, weight, bias)) >= 2:
        from ._ops import check_forward_inputs

        check_forward_inputs(input, normalized_shape, weight, bias)
        return composite_layer_norm(
            input, normalized_shape, weight, bias, eps, _autocast_out_dtype(input)
        )
    return _LayerNormFunction.apply(input, list(normalized_shape), weight, bias, eps)[0]
