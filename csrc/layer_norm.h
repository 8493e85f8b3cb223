// Host-side contract shared by the CPU and CUDA backends of the fastln ops.
//
// The two ops (declared once in ops.cpp) are
//   fastln::layer_norm_fwd(input, normalized_shape, weight?, bias?, eps,
//                          out_dtype?) -> (out, mean, rstd)
//   fastln::layer_norm_bwd(grad_out, input, normalized_shape, mean, rstd,
//                          weight?, bias?, output_mask) -> (dx, dweight, dbias)
// Every backend sees the input as an [M, N] row-major matrix: M rows (the
// product of the leading dims) of N elements (the product of
// normalized_shape). mean/rstd have the leading dims of the input followed by
// one 1 per normalized dim (torch's layout), in float32 for half/bfloat16/float
// input and float64 for double input.
//
// out_dtype (default: the input's) may be float32 for half/bfloat16 input:
// the output is then the float32 layer norm of the input, unrounded, which is
// what torch.autocast("cuda") asks of layer_norm (it would otherwise upcast
// the input in a pass of its own). grad_out then comes in float32 too; dx is
// always in the input's dtype.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fastln {

struct RowShape {
  int64_t M;  // number of rows
  int64_t N;  // elements per row (the normalized size)
};

// Checks input/weight/bias against normalized_shape with torch's error
// messages (and the same exception types), plus dtype and device checks for
// weight/bias. Weight/bias must both share one dtype: the input's, or float32
// when the input is half/bfloat16 (mixed precision). Returns the row view.
// op_name names the op in the not-implemented message of other dtypes.
RowShape check_forward_inputs(const at::Tensor& input,
                              at::IntArrayRef normalized_shape,
                              const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias,
                              const char* op_name = "layer_norm");

// add_norm_fwd's checks (schemas.h): the forward checks of input, weight and
// bias (none for rms); residual of the input's shape and device, in the
// input's dtype or residual_dtype; residual_dtype the input's, or float32
// for half/bfloat16 input.
RowShape check_add_norm_inputs(const at::Tensor& input,
                               const at::Tensor& residual,
                               at::IntArrayRef normalized_shape,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, bool rms,
                               at::ScalarType residual_dtype);

// The output dtype: out_dtype when given (the input's dtype, or float32 for
// half/bfloat16 input; anything else is a RuntimeError), else the input's.
at::ScalarType output_dtype(const at::Tensor& input,
                            std::optional<at::ScalarType> out_dtype);

// The forward checks, plus grad_out/mean/rstd shape, dtype and device checks.
// grad_out has the input's dtype, or float32 for half/bfloat16 input.
RowShape check_backward_inputs(const at::Tensor& grad_out,
                               const at::Tensor& input,
                               at::IntArrayRef normalized_shape,
                               const at::Tensor& mean, const at::Tensor& rstd,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias);

// rms_norm_bwd's checks: grad_out in the input's dtype and shape, rstd.
RowShape check_rms_backward_inputs(const at::Tensor& grad_out,
                                   const at::Tensor& input,
                                   at::IntArrayRef normalized_shape,
                                   const at::Tensor& rstd,
                                   const std::optional<at::Tensor>& weight);

// add_norm_bwd's checks: h as the input of the norm; grad_out of h's shape
// in the output's dtype (h's, or half/bfloat16 under a float32 h), which
// weight/bias are checked against; grad_h (optional) like h; mean (no
// elements allowed for rms) and rstd.
RowShape check_add_norm_backward_inputs(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_h,
    const at::Tensor& h, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool rms);

// dtype of mean/rstd for an input dtype: float64 for double, else float32.
at::ScalarType stats_dtype(at::ScalarType input_dtype);

// Shape of mean/rstd: input.shape[:-len(normalized_shape)] + [1] * len(...).
std::vector<int64_t> stats_shape(const at::Tensor& input,
                                 at::IntArrayRef normalized_shape);

// The forward's outputs, allocated like the input: out (in out_dtype), and
// mean/rstd of
// stats_shape in stats_dtype. `done` when there is nothing to normalize
// (M == 0, or N == 0, where mean/rstd already hold torch's convention), so
// that a backend launches no kernel. Shared by every backend.
struct ForwardOutputs {
  at::Tensor out, mean, rstd;
  bool done;
};
ForwardOutputs allocate_forward(const at::Tensor& input,
                                at::IntArrayRef normalized_shape, RowShape rows,
                                at::ScalarType out_dtype);

// An optional parameter in float32 (absent stays absent): the float-output
// paths take float32 weight/bias only.
std::optional<at::Tensor> as_float(const std::optional<at::Tensor>& t);

// Returns a contiguous version of an optional parameter, or an undefined
// tensor when it is absent.
at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t);

// fastln::layer_norm, the op with its autograd (called from C++ by the eager
// binding in ops.cpp and by the autocast kernels; handles defined in ops.cpp).
using LayerNormSignature = at::Tensor(const at::Tensor&, at::IntArrayRef,
                                      const std::optional<at::Tensor>&,
                                      const std::optional<at::Tensor>&, double,
                                      std::optional<at::ScalarType>);
const c10::TypedOperatorHandle<LayerNormSignature>& layer_norm_op();

// fastln::layer_norm_fwd, its forward kernel op.
using LayerNormFwdSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::IntArrayRef, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, double, std::optional<at::ScalarType>);
const c10::TypedOperatorHandle<LayerNormFwdSignature>& layer_norm_fwd_op();

// fastln::add_norm, the fused residual-add norms with their autograd.
using AddNormSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, at::IntArrayRef,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    std::optional<double>, bool, std::optional<at::ScalarType>);
const c10::TypedOperatorHandle<AddNormSignature>& add_norm_op();

// Which CPU row kernels run on this machine: "avx512", "avx2" or "base"
// (FASTLN_CPU_ISA=avx2 or =base at start-up forces a narrower copy).
std::string cpu_isa();

// The output size in bytes from which the CPU kernels write with
// non-temporal stores at the current thread count (INT64_MAX: never).
int64_t cpu_stream_bytes();

}  // namespace fastln
