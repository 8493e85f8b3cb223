// The forward of the fastln CUDA backend: its launchers (the kernels are in
// layer_norm_fwd_kernels.cuh; the SIMT build compiles this file too).
//
// y = (x - mean) * rstd * weight + bias over rows of N elements, with the
// row's mean and rstd = 1 / sqrt(var + eps) (biased variance) computed in
// acc_t by Welford / Chan merging and saved for the backward. The statistics
// are of d = x - shift, shift being the row's first element, and the output
// is (d - mean(d)) * rstd: a row of 1e4 + 1e-3 * noise in float32 then keeps
// full accuracy, while a float32 mean of 1e4 is off by up to 5e-4 (half a
// std of that row), so x - mean would not (see device_utils.cuh). Each row is
// read from global memory once: it stays in registers (or, in the looping
// kernel, in shared memory when it fits) between the statistics and the
// output. plan.h picks the kernel by N.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <type_traits>

#include "backend.h"
#include "layer_norm_cuda.h"
#include "layer_norm_fwd_kernels.cuh"

namespace fastln {
namespace cuda {
namespace {

template <typename T, typename W, typename Y, typename acc_t>
struct FwdArgs {
  const T* x;
  const W* weight;
  const W* bias;
  Y* y;
  acc_t* mean;
  acc_t* rstd;
  int64_t M;
  int64_t N;
  acc_t eps;
};

template <typename T, typename W, typename Y, typename acc_t, int kVec,
          int kCols>
void launch_fwd_reg(const FwdArgs<T, W, Y, acc_t>& a, const RowPlan& plan,
                    Stream stream) {
  const int64_t rows_per_block = plan.block_threads / plan.threads_per_row;
  const int64_t grid = std::min(ceil_div(a.M, rows_per_block), kMaxGrid);
  launch_kernel<&layer_norm_fwd_reg_kernel<T, W, Y, acc_t, kVec, kCols>>(
      dim3(static_cast<unsigned>(grid)), dim3(plan.block_threads), 0, stream,
      a.x, a.weight, a.bias, a.y, a.mean, a.rstd, a.M, static_cast<int>(a.N),
      plan.threads_per_row, a.eps);
}

template <typename T, typename W, typename Y, typename acc_t, int kVec>
void launch_fwd_loop(const FwdArgs<T, W, Y, acc_t>& a, const RowPlan& plan,
                     Stream stream) {
  constexpr auto kernel = &layer_norm_fwd_loop_kernel<T, W, Y, acc_t, kVec>;
  // Cache the row in shared memory when it fits next to the kernel's static
  // shared memory within the block's opt-in limit (227 KB on H100, 163 KB on
  // A100): rows up to ~113K half or ~56K float elements.
  const int64_t row_bytes = a.N * static_cast<int64_t>(sizeof(T));
  const int64_t limit = smem_per_block_optin() - static_smem<kernel>();
  const bool cache_row = row_bytes <= limit;
  const int smem = cache_row ? static_cast<int>(row_bytes) : 0;
  if (smem > max_dynamic_smem<kernel>()) set_max_dynamic_smem<kernel>(smem);
  const int64_t grid = std::min(a.M, kMaxGrid);
  launch_kernel<kernel>(
      dim3(static_cast<unsigned>(grid)), dim3(plan.block_threads), smem, stream,
      a.x, a.weight, a.bias, a.y, a.mean, a.rstd, a.M, a.N, a.eps, cache_row);
}

template <typename T, typename W, typename Y, typename acc_t, int kVec>
void launch_fwd_plan(const FwdArgs<T, W, Y, acc_t>& a, Stream stream) {
  const RowPlan plan =
      plan_rows(a.N, forward_max_cols(static_cast<int>(sizeof(acc_t))));
  if (plan.kernel == RowKernel::kLoop)
    return launch_fwd_loop<T, W, Y, acc_t, kVec>(a, plan, stream);
  switch (plan.cols_per_thread) {
    case 8:
      return launch_fwd_reg<T, W, Y, acc_t, kVec, 8>(a, plan, stream);
    case 16:
      return launch_fwd_reg<T, W, Y, acc_t, kVec, 16>(a, plan, stream);
    case 32:
      // Never planned for double (forward_max_cols), so not compiled.
      if constexpr (sizeof(acc_t) == 4)
        return launch_fwd_reg<T, W, Y, acc_t, kVec, 32>(a, plan, stream);
      break;
  }
  TORCH_INTERNAL_ASSERT(
      false, "fastln: unexpected forward plan, cols = ", plan.cols_per_thread);
}

template <typename T, typename W, typename Y = T>
void launch_fwd_typed(const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& b, double eps, int64_t M, int64_t N,
                      const at::Tensor& y, const at::Tensor& mean,
                      const at::Tensor& rstd) {
  using acc_t = at::opmath_type<T>;
  // 16 bytes of T per vector access: 8 half/bfloat16, 4 float, 2 double.
  constexpr int kVec = 16 / sizeof(T);
  const FwdArgs<T, W, Y, acc_t> a{x.const_data_ptr<T>(),
                                  w.defined() ? w.const_data_ptr<W>() : nullptr,
                                  b.defined() ? b.const_data_ptr<W>() : nullptr,
                                  y.mutable_data_ptr<Y>(),
                                  mean.mutable_data_ptr<acc_t>(),
                                  rstd.mutable_data_ptr<acc_t>(),
                                  M,
                                  N,
                                  static_cast<acc_t>(eps)};
  // A contiguous tensor may still start at any element of its storage (a
  // view at an offset), so alignment is checked on the actual pointers.
  const bool vectorize = N % kVec == 0 && is_pack_aligned<T, kVec>(a.x) &&
                         is_pack_aligned<Y, kVec>(a.y) &&
                         is_pack_aligned<W, kVec>(a.weight) &&
                         is_pack_aligned<W, kVec>(a.bias);
  const Stream stream = current_stream();
  if (vectorize)
    launch_fwd_plan<T, W, Y, acc_t, kVec>(a, stream);
  else
    launch_fwd_plan<T, W, Y, acc_t, 1>(a, stream);
}

}  // namespace

void launch_layer_norm_fwd(const at::Tensor& x, const at::Tensor& w,
                           const at::Tensor& b, at::ScalarType param_dtype,
                           double eps, int64_t M, int64_t N,
                           const at::Tensor& y, const at::Tensor& mean,
                           const at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_layer_norm_fwd_cuda",
      [&] {
        // Float parameters of half/bfloat16 input (mixed precision) are read
        // as they are, without a cast kernel.
        if constexpr (!std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
          // The float-output forward (layer_norm_cuda.cu has made its
          // weight/bias float).
          if (y.scalar_type() == at::kFloat)
            return launch_fwd_typed<scalar_t, float, float>(x, w, b, eps, M, N,
                                                            y, mean, rstd);
          if (param_dtype == at::kFloat)
            return launch_fwd_typed<scalar_t, float>(x, w, b, eps, M, N, y,
                                                     mean, rstd);
        }
        launch_fwd_typed<scalar_t, scalar_t>(x, w, b, eps, M, N, y, mean, rstd);
      });
}

}  // namespace cuda
}  // namespace fastln
