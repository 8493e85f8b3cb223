"""fastln: drop-in torch.nn.LayerNorm and torch.nn.RMSNorm, and fused residual-add
norms, with hand-written CUDA and C++ kernels."""

import warnings

from ._build_check import build_info, check_torch

# Before anything loads fastln._C: an extension built against another torch fails
# there with an undefined-symbol error that names neither version nor the fix.
check_torch()

from . import _integrations  # noqa: E402
from ._ops import cpu_isa, cuda_built  # noqa: E402
from .functional import (  # noqa: E402
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    low_precision_layer_norm,
    rms_norm,
)
from .modules import (  # noqa: E402
    LayerNorm,
    LowPrecisionLayerNorm,
    RMSNorm,
    replace_layernorm,
    replace_norms,
)

_integrations.register_onnx_symbolic()
_integrations.register_dtensor_sharding()  # only if DTensor is loaded already


def _warn_if_gpu_unused() -> None:
    # pip hides the build's output, and so the build's warning, unless the build fails:
    # a GPU user who got a CPU-only build hears of it here, the first time it matters.
    info = build_info()
    if info["CUDA"] or info["TORCH_CUDA"] is None or info["NO_CUDA_REASON"] == "FASTLN_FORCE_CPU=1":
        return
    import torch

    if torch.cuda.is_available():
        warnings.warn(
            "fastln was built without its CUDA kernels, so it cannot run on this GPU: "
            f"{info['NO_CUDA_REASON']}",
            stacklevel=2,
        )


_warn_if_gpu_unused()

__all__ = [
    "LayerNorm",
    "LowPrecisionLayerNorm",
    "RMSNorm",
    "add_layer_norm",
    "add_rms_norm",
    "build_info",
    "cpu_isa",
    "cuda_built",
    "layer_norm",
    "low_precision_layer_norm",
    "replace_layernorm",
    "replace_norms",
    "rms_norm",
]
__version__ = "0.1.0"
