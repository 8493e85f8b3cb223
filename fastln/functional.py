"""``fastln.layer_norm``: torch.nn.functional.layer_norm on fastln's kernels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import _ops

__all__ = ["layer_norm"]


def _composite_grads(
    grad_out: torch.Tensor,
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    needs: Sequence[bool],
) -> list[torch.Tensor | None]:
    """Gradients that are themselves differentiable (backward with create_graph=True).

    The fused backward kernel is not differentiable, so double backward recomputes
    the forward from torch ops (two-pass statistics in the accumulation dtype, as
    the kernels do) and lets autograd differentiate it with create_graph=True.
    """
    acc = _ops.stats_dtype(input.dtype)
    dims = tuple(range(-len(normalized_shape), 0))
    with torch.enable_grad():
        x = input.to(acc)
        centered = x - x.mean(dims, keepdim=True)
        rstd = torch.rsqrt(centered.square().mean(dims, keepdim=True) + eps)
        y = centered * rstd
        if weight is not None:
            y = y * weight.to(acc)
        if bias is not None:
            y = y + bias.to(acc)
        y = y.to(input.dtype)
    tensors = (input, weight, bias)
    wanted = [t for t, need in zip(tensors, needs) if need and t is not None]
    grads = iter(torch.autograd.grad(y, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if need and t is not None else None for t, need in zip(tensors, needs)]


class LayerNormFunction(torch.autograd.Function):
    """Autograd glue: the forward op saves mean/rstd, the backward op uses them."""

    @staticmethod
    def forward(
        input: torch.Tensor,
        normalized_shape: tuple[int, ...],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.ops.fastln.layer_norm_fwd(input, normalized_shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        input, normalized_shape, weight, bias, eps = inputs
        _, mean, rstd = output
        ctx.save_for_backward(input, weight, bias, mean, rstd)
        ctx.normalized_shape = normalized_shape
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, rstd)

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor, _grad_mean: Any, _grad_rstd: Any
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, torch.Tensor | None, None]:
        input, weight, bias, mean, rstd = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        if torch.is_grad_enabled():
            # backward(create_graph=True): the gradients must carry a graph.
            dx, dw, db = _composite_grads(
                grad_out, input, ctx.normalized_shape, weight, bias, ctx.eps, needs
            )
        else:
            dx, dw, db = torch.ops.fastln.layer_norm_bwd(
                grad_out, input, ctx.normalized_shape, mean, rstd, weight, bias, list(needs)
            )
        return dx, None, dw, db, None


def _supported_device(device: torch.device) -> bool:
    # meta runs the registered fake kernels (shape inference, deferred init).
    return device.type in ("cpu", "meta") or (device.type == "cuda" and _ops.cuda_built())


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
    normalized_shape = tuple(int(s) for s in normalized_shape)
    if not _supported_device(input.device):
        raise NotImplementedError(
            f"fastln.layer_norm has no kernel for {input.device.type} tensors in this build "
            f"(kernels: {'CPU and CUDA' if _ops.cuda_built() else 'CPU only'})"
        )
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias)
    ):
        return LayerNormFunction.apply(input, normalized_shape, weight, bias, eps)[0]
    return torch.ops.fastln.layer_norm_fwd(input, normalized_shape, weight, bias, eps)[0]
