"""The two places fastln's CUDA kernels run in the tests: a GPU, and the SIMT
backend (fastln._simt, a FASTLN_SIMT=1 build), which executes the same kernel
source on the CPU. tests/test_cuda.py takes a `backend` fixture and runs its
whole matrix on each one that is present.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import fastln

try:
    from fastln import _simt
except ImportError:  # a build without FASTLN_SIMT=1
    _simt = None

# The schedule seed of the SIMT matrix: a pseudo-random thread order between
# synchronization points (seed 0 would run threads in index order, which hides
# races that a GPU's scheduler may expose).
SIMT_SEED = 20261201


def simt_available() -> bool:
    return _simt is not None


def cuda_available() -> bool:
    return torch.cuda.is_available() and fastln.cuda_built()


class _SimtLayerNorm(torch.autograd.Function):
    """fastln.layer_norm's autograd over the torch.ops.fastln_simt kernels
    (fastln's own autograd node calls torch.ops.fastln, i.e. the CPU kernels
    for CPU tensors)."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        out, mean, rstd = torch.ops.fastln_simt.layer_norm_fwd(
            x, list(normalized_shape), weight, bias, eps
        )
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.normalized_shape = list(normalized_shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]]
        dx, dw, db = torch.ops.fastln_simt.layer_norm_bwd(
            grad.contiguous(), x, ctx.normalized_shape, mean, rstd, weight, bias, mask
        )
        return dx, None, dw, db, None


def simt_layer_norm(
    x: torch.Tensor,
    normalized_shape: Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    return _SimtLayerNorm.apply(x, tuple(normalized_shape), weight, bias, eps)


@dataclass(frozen=True)
class Backend:
    name: str
    device: str
    layer_norm: Callable[..., torch.Tensor]
    fwd: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    bwd: Callable[..., tuple[torch.Tensor | None, ...]]
    # The kernel ops of RMSNorm and of the fused residual add (schemas.h).
    rms_fwd: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rms_bwd: Callable[..., tuple[torch.Tensor | None, ...]]
    add_fwd: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    add_bwd: Callable[..., tuple[torch.Tensor | None, ...]]

    @property
    def is_simt(self) -> bool:
        return self.name.startswith("simt")


def make_backend(name: str) -> Backend:
    if name == "cuda":
        ops = torch.ops.fastln
        return Backend(
            "cuda",
            "cuda",
            fastln.layer_norm,
            ops.layer_norm_fwd,
            ops.layer_norm_bwd,
            ops.rms_norm_fwd,
            ops.rms_norm_bwd,
            ops.add_norm_fwd,
            ops.add_norm_bwd,
        )
    # "simt" (H100) or "simt-a100".
    _simt.configure(device="a100" if name.endswith("a100") else "h100", schedule_seed=SIMT_SEED)
    ops = torch.ops.fastln_simt
    return Backend(
        name,
        "cpu",
        simt_layer_norm,
        ops.layer_norm_fwd,
        ops.layer_norm_bwd,
        ops.rms_norm_fwd,
        ops.rms_norm_bwd,
        ops.add_norm_fwd,
        ops.add_norm_bwd,
    )
