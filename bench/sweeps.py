"""What gets measured: the norms, modes, dtype configurations and the shape sweeps.

A shape is (M, N): M rows (batch x sequence) normalized over N (hidden size).
The full M x N cross product is far too big to time, so each sweep picks a few
M per N and caps M * N by an element budget; the largest power-of-two M under
the budget is always included, so every N has one point in the
bandwidth-bound regime next to its latency-bound small-M points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("fwd", "bwd", "fwdbwd")


@dataclass(frozen=True)
class Norm:
    """One normalization the harness benchmarks; everything else (implementations,
    inputs, byte model, check, outputs) is derived from these flags.

    rms: RMSNorm (no mean, no bias); add: the fused residual add, which takes
    (x, residual) and returns (y, h) with h = x + residual and y = norm(h).
    """

    name: str  # CLI name, and the fastln function of that name
    rms: bool
    add: bool

    @property
    def suffix(self) -> str:
        """Appended to the file stem of the results: none for LayerNorm, whose
        files keep the names they always had."""
        return "" if self.name == "layer_norm" else f"_{self.name}"


NORMS: dict[str, Norm] = {
    n.name: n
    for n in (
        Norm("layer_norm", rms=False, add=False),
        Norm("rms_norm", rms=True, add=False),
        Norm("add_layer_norm", rms=False, add=True),
        Norm("add_rms_norm", rms=True, add=True),
    )
}
LAYER_NORM = NORMS["layer_norm"]


@dataclass(frozen=True)
class DtypeConfig:
    """Input dtype plus the dtype of weight and bias (they may differ) and, for
    the add norms, of the residual stream (residual and h; None: the input's)."""

    name: str
    input: torch.dtype
    param: torch.dtype
    residual: torch.dtype | None = None

    @property
    def residual_dtype(self) -> torch.dtype:
        return self.residual or self.input


DTYPES: dict[str, DtypeConfig] = {
    c.name: c
    for c in (
        DtypeConfig("float32", torch.float32, torch.float32),
        DtypeConfig("float16", torch.float16, torch.float16),
        DtypeConfig("bfloat16", torch.bfloat16, torch.bfloat16),
        # Mixed precision training keeps fp32 master weights next to bf16 activations.
        DtypeConfig("bf16_fp32w", torch.bfloat16, torch.float32),
        # The add norms only: bfloat16 activations on a float32 residual stream
        # (residual_dtype=float32, flash-attn's residual_in_fp32), fp32 weights.
        DtypeConfig("bf16_fp32res", torch.bfloat16, torch.float32, torch.float32),
    )
}
DTYPE_ALIASES = {
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bf16+fp32": "bf16_fp32w",
    "bf16_fp32": "bf16_fp32w",
    "bf16+fp32res": "bf16_fp32res",
}

# Hidden sizes of real models (GPT-2 1600, GPT-3 12288, ...) plus odd sizes
# that defeat vector-width and power-of-two assumptions.
MODEL_N = (64, 128, 256, 384, 512, 768, 1024, 1600, 2048, 2560, 4096, 5120, 8192, 12288, 16384,
           32768, 65536)  # fmt: skip
ODD_N = (1000, 1025, 2041)
MAX_M = 65536


@dataclass(frozen=True)
class SweepSpec:
    """A default sweep: N values, the small M values tried for each, and the
    element budget that caps M * N."""

    n_values: tuple[int, ...]
    m_values: tuple[int, ...]
    max_elements: int

    def shapes(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for n in sorted(self.n_values):
            ms = {m for m in self.m_values if m * n <= self.max_elements}
            m_big = 1
            while m_big * 2 * n <= self.max_elements and m_big * 2 <= MAX_M:
                m_big *= 2
            ms.add(m_big)
            out.extend((m, n) for m in sorted(ms))
        return out


# GPU: all hidden sizes; 2^27 elements is 512 MiB per fp32 tensor, well past
# any L2 yet small enough for the five tensors of fwd+bwd on a 16 GiB card.
CUDA_SWEEP = SweepSpec(MODEL_N + ODD_N, (1, 64, 1024, 8192), 1 << 27)
# CPU (the 2-core target of the CPU kernels): N up to 16384 and 2^22 elements
# (16 MiB per fp32 tensor, past a 2 MiB L2, about half a 32 MiB L3) so that the
# whole sweep takes a few minutes.
CPU_SWEEP = SweepSpec(tuple(n for n in MODEL_N + ODD_N if n <= 16384), (1, 64, 1024), 1 << 22)

# --quick: one latency-bound, a few typical and one odd shape; < 1 minute on CPU
# with a cold torch.compile cache. M=16 rather than 1: torch.compile specializes
# size-1 dims, and the extra graphs would double the demo's compile time.
QUICK_SHAPES = [(16, 4096), (64, 768), (4096, 1024), (512, 4096), (256, 16384), (2048, 1025)]

DEFAULT_DTYPES = {
    "cuda": ("float32", "float16", "bfloat16", "bf16_fp32w"),
    "cpu": ("float32", "bfloat16", "float16"),
}
QUICK_DTYPES = {"cuda": ("float32", "bfloat16", "bf16_fp32w"), "cpu": ("float32", "bfloat16")}


def default_dtypes(device: str, quick: bool, norm: Norm) -> list[DtypeConfig]:
    names = (QUICK_DTYPES if quick else DEFAULT_DTYPES)[device]
    if norm.add and not quick:
        names = (*names, "bf16_fp32res")
    return [DTYPES[d] for d in names]


def norm_dtypes(configs: list[DtypeConfig], norm: Norm) -> tuple[list[DtypeConfig], list[str]]:
    """The configs that apply to norm (a residual dtype only to the add norms)
    and notes on the ones left out."""
    keep = [c for c in configs if norm.add or c.residual is None]
    notes = [
        f"{c.name}: skipped for {norm.name} (a residual dtype applies to the add norms only)"
        for c in configs
        if c not in keep
    ]
    return keep, notes


def parse_norms(text: str) -> list[Norm]:
    norms = []
    for item in text.split(","):
        item = item.strip().lower().replace("-", "_")
        if not item:
            continue
        if item not in NORMS:
            raise ValueError(f"unknown norm {item!r}; choose from {', '.join(NORMS)}")
        if NORMS[item] not in norms:
            norms.append(NORMS[item])
    return norms


def default_shapes(device: str, quick: bool) -> list[tuple[int, int]]:
    if quick:
        return list(QUICK_SHAPES)
    return (CUDA_SWEEP if device == "cuda" else CPU_SWEEP).shapes()


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'4096x1024,1x768' -> [(4096, 1024), (1, 768)]."""
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            m, n = (int(v) for v in item.split("x"))
        except ValueError:
            raise ValueError(f"bad shape {item!r}: expected MxN, e.g. 4096x1024") from None
        if m < 1 or n < 1:
            raise ValueError(f"bad shape {item!r}: M and N must be positive")
        shapes.append((m, n))
    return shapes


def parse_dtypes(text: str) -> list[DtypeConfig]:
    configs = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        name = DTYPE_ALIASES.get(item, item)
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {item!r}; choose from {', '.join(DTYPES)}")
        configs.append(DTYPES[name])
    return configs


def parse_modes(text: str) -> list[str]:
    modes = [m.strip().lower().replace("+", "") for m in text.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    return modes
