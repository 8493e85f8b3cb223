// Host-side contract shared by the CPU and CUDA backends of the fastln ops.
//
// The two ops (declared once in ops.cpp) are
//   fastln::layer_norm_fwd(input, normalized_shape, weight?, bias?, eps)
//       -> (out, mean, rstd)
//   fastln::layer_norm_bwd(grad_out, input, normalized_shape, mean, rstd,
//                          weight?, bias?, output_mask) -> (dx, dweight, dbias)
// Every backend sees the input as an [M, N] row-major matrix: M rows (the
// product of the leading dims) of N elements (the product of
// normalized_shape). mean/rstd have the leading dims of the input followed by
// one 1 per normalized dim (torch's layout), in float32 for half/bfloat16/float
// input and float64 for double input.
#pragma once

#include <ATen/core/Tensor.h>
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
RowShape check_forward_inputs(const at::Tensor& input,
                              at::IntArrayRef normalized_shape,
                              const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias);

// The forward checks, plus grad_out/mean/rstd shape, dtype and device checks.
RowShape check_backward_inputs(const at::Tensor& grad_out,
                               const at::Tensor& input,
                               at::IntArrayRef normalized_shape,
                               const at::Tensor& mean, const at::Tensor& rstd,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias);

// dtype of mean/rstd for an input dtype: float64 for double, else float32.
at::ScalarType stats_dtype(at::ScalarType input_dtype);

// Shape of mean/rstd: input.shape[:-len(normalized_shape)] + [1] * len(...).
std::vector<int64_t> stats_shape(const at::Tensor& input,
                                 at::IntArrayRef normalized_shape);

// The forward's outputs, allocated like the input: out, and mean/rstd of
// stats_shape in stats_dtype. `done` when there is nothing to normalize
// (M == 0, or N == 0, where mean/rstd already hold torch's convention), so
// that a backend launches no kernel. Shared by every backend.
struct ForwardOutputs {
  at::Tensor out, mean, rstd;
  bool done;
};
ForwardOutputs allocate_forward(const at::Tensor& input,
                                at::IntArrayRef normalized_shape,
                                RowShape rows);

// Returns a contiguous version of an optional parameter, or an undefined
// tensor when it is absent.
at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t);

// Which CPU row kernels run on this machine: "avx2" or "base"
// (FASTLN_CPU_ISA=base at start-up forces the baseline).
std::string cpu_isa();

}  // namespace fastln
