"""What fastln's op needs to work with torch's tensor subclasses and exporters.

- Nested jagged tensors: the layer norm of each row of the packed values.
- DTensor: sharding rules for the ops, registered the first time a DTensor
  reaches fastln (importing torch.distributed.tensor costs ~0.5 s, which
  ``import fastln`` should not pay) or at import when DTensor is already loaded.
- ONNX, TorchScript-based exporter: a symbolic that emits ``LayerNormalization``
  (the dynamo exporter traces fastln.layer_norm, which hands it torch's op).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["nested_layer_norm", "register_dtensor_sharding", "register_onnx_symbolic"]


def nested_layer_norm(
    input: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Layer norm of a nested tensor of layout ``torch.jagged`` over trailing dims
    that are not ragged: fastln's op on ``input.values()``, rewrapped with the
    input's offsets (the same nested structure, so ``y + input`` works).
    Anything else (strided nested tensors, the ragged dim normalized) goes to
    torch, which supports what it supports and raises its own errors."""
    from .functional import layer_norm

    ragged = getattr(input, "_ragged_idx", None)
    if (
        input.layout != torch.jagged
        or ragged is None
        or len(normalized_shape) >= input.dim() - ragged
    ):
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    values = layer_norm(input.values(), normalized_shape, weight, bias, eps)
    return torch.nested.nested_tensor_from_jagged(
        values, offsets=input.offsets(), lengths=input.lengths(), jagged_dim=ragged
    )


_dtensor_registered = False


def register_dtensor_sharding() -> None:
    """Registers the ops' DTensor sharding rules once DTensor has been imported.

    The rules: any dim before the normalized ones may be sharded (the rows are
    independent), weight and bias replicated. Forward: output, mean and rstd
    sharded like the input. Backward: dx sharded like the input, dweight/dbias
    partial sums over the shards (reduced when they are read), as torch's rule for
    ``native_layer_norm_backward`` gives. Everything replicated is allowed too.
    """
    global _dtensor_registered
    if _dtensor_registered or "torch.distributed.tensor" not in sys.modules:
        return
    _dtensor_registered = True
    from torch.distributed.tensor import Partial, Replicate, Shard
    from torch.distributed.tensor.experimental import register_sharding

    def param(t: Any) -> Replicate | None:
        return Replicate() if t is not None else None

    def sharded_dims(input: Any, normalized_shape: Sequence[int]) -> range:
        return range(input.ndim - len(normalized_shape))

    ops = torch.ops.fastln

    def forward_rules(
        input: Any, normalized_shape: Any, weight: Any, bias: Any, outputs: int, rest: tuple
    ) -> list:
        # The arguments: input, normalized_shape, weight, bias, eps[, out_dtype].
        def rule(p: Any) -> tuple:
            return [p] * outputs, [p, None, param(weight), param(bias), None] + [None] * len(rest)

        return [rule(Replicate())] + [rule(Shard(d)) for d in sharded_dims(input, normalized_shape)]

    @register_sharding([ops.layer_norm_fwd.default])
    def _fwd(
        input: Any, normalized_shape: Any, weight: Any, bias: Any, eps: Any, *rest: Any
    ) -> list:
        return forward_rules(input, normalized_shape, weight, bias, 3, rest)

    @register_sharding([ops.layer_norm.default])
    def _op(
        input: Any,
        normalized_shape: Any,
        weight: Any = None,
        bias: Any = None,
        eps: Any = 1e-5,
        *rest: Any,
    ) -> list:
        return forward_rules(input, normalized_shape, weight, bias, 1, rest)

    @register_sharding([ops.layer_norm_bwd.default])
    def _bwd(
        grad_out: Any,
        input: Any,
        normalized_shape: Sequence[int],
        mean: Any,
        rstd: Any,
        weight: Any,
        bias: Any,
        output_mask: Sequence[bool],
    ) -> list:
        def rule(dx: Any, reduced: Any) -> tuple:
            outs = [
                dx if output_mask[0] else None,
                reduced if output_mask[1] and weight is not None else None,
                reduced if output_mask[2] and bias is not None else None,
            ]
            return outs, [dx, dx, None, dx, dx, param(weight), param(bias), None]

        rules = [rule(Replicate(), Replicate())]
        for d in sharded_dims(input, normalized_shape):
            rules.append(rule(Shard(d), Partial()))
        return rules


def register_onnx_symbolic() -> None:
    """fastln::layer_norm as ONNX ``LayerNormalization`` (opset 17, the first to
    have it) in the TorchScript-based exporter, by torch's own symbolic for
    ``aten::layer_norm``."""
    from torch.onnx import register_custom_op_symbolic, symbolic_helper, symbolic_opset17

    def symbolic(
        g: Any,
        input: Any,
        normalized_shape: Any,
        weight: Any,
        bias: Any,
        eps: Any,
        out_dtype: Any = None,
    ) -> Any:
        if out_dtype is not None and not symbolic_helper._is_none(out_dtype):
            # float32 output of 16-bit input: the layer norm of the upcast input.
            input = g.op("Cast", input, to_i=torch._C._onnx.TensorProtoDataType.FLOAT)
        return symbolic_opset17.layer_norm(g, input, normalized_shape, weight, bias, eps, False)

    register_custom_op_symbolic("fastln::layer_norm", symbolic, 17)
