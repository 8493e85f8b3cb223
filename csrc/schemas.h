// The schemas of the fastln kernel ops, one place for every library that
// declares them: torch.ops.fastln (ops.cpp) and torch.ops.fastln_simt (the
// SIMT build of the CUDA kernels, csrc/simt/module.cpp), which must match.
#pragma once

namespace fastln {

inline constexpr const char* kLayerNormFwdSchema =
    "layer_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
    "Tensor? bias, float eps, ScalarType? out_dtype=None) -> "
    "(Tensor, Tensor, Tensor)";
inline constexpr const char* kLayerNormBwdSchema =
    "layer_norm_bwd(Tensor grad_out, Tensor input, int[] normalized_shape, "
    "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, "
    "bool[3] output_mask) -> (Tensor, Tensor, Tensor)";

}  // namespace fastln
