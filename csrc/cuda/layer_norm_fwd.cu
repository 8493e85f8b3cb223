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
//
// The same kernels, by their compile-time policies, run
//   rms_norm_fwd:  y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps)
//                  (kRms: a sum of squares, no mean, no bias);
//   add_norm_fwd:  h = x + residual rounded to the residual stream's type H,
//                  then layer norm or RMSNorm of that rounded h (AddLoad),
//                  with the output in x's type.
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

template <typename Load, typename W, typename Y, typename acc_t>
struct FwdArgs {
  const typename Load::Input* x;
  const typename Load::Residual* residual;  // AddLoad only
  typename Load::Stored* h;                 // AddLoad only
  const W* weight;
  const W* bias;
  Y* y;
  acc_t* mean;  // nullptr for RMSNorm
  acc_t* rstd;
  int64_t M;
  int64_t N;
  acc_t eps;
};

template <typename Load, typename W, typename Y, typename acc_t, int kVec,
          int kCols, bool kRms>
void launch_fwd_reg(const FwdArgs<Load, W, Y, acc_t>& a, const RowPlan& plan,
                    Stream stream) {
  const int64_t rows_per_block = plan.block_threads / plan.threads_per_row;
  const int64_t grid = std::min(ceil_div(a.M, rows_per_block), kMaxGrid);
  launch_kernel<
      &layer_norm_fwd_reg_kernel<Load, W, Y, acc_t, kVec, kCols, kRms>>(
      dim3(static_cast<unsigned>(grid)), dim3(plan.block_threads), 0, stream,
      a.x, a.residual, a.h, a.weight, a.bias, a.y, a.mean, a.rstd, a.M,
      static_cast<int>(a.N), plan.threads_per_row, a.eps);
}

template <typename Load, typename W, typename Y, typename acc_t, int kVec,
          bool kRms>
void launch_fwd_loop(const FwdArgs<Load, W, Y, acc_t>& a, const RowPlan& plan,
                     Stream stream) {
  constexpr auto kernel =
      &layer_norm_fwd_loop_kernel<Load, W, Y, acc_t, kVec, kRms>;
  // Cache the row in shared memory when it fits next to the kernel's static
  // shared memory within the block's opt-in limit (227 KB on H100, 163 KB on
  // A100): rows up to ~113K half or ~56K float elements (of h for the fused
  // add, the type the kernel normalizes).
  const int64_t row_bytes =
      a.N * static_cast<int64_t>(sizeof(typename Load::Stored));
  const int64_t limit = smem_per_block_optin() - static_smem<kernel>();
  const bool cache_row = row_bytes <= limit;
  const int smem = cache_row ? static_cast<int>(row_bytes) : 0;
  if (smem > max_dynamic_smem<kernel>()) set_max_dynamic_smem<kernel>(smem);
  const int64_t grid = std::min(a.M, kMaxGrid);
  launch_kernel<kernel>(dim3(static_cast<unsigned>(grid)),
                        dim3(plan.block_threads), smem, stream, a.x, a.residual,
                        a.h, a.weight, a.bias, a.y, a.mean, a.rstd, a.M, a.N,
                        a.eps, cache_row);
}

template <typename Load, typename W, typename Y, typename acc_t, int kVec,
          bool kRms>
void launch_fwd_plan(const FwdArgs<Load, W, Y, acc_t>& a, Stream stream) {
  const RowPlan plan =
      plan_rows(a.N, forward_max_cols(static_cast<int>(sizeof(acc_t))));
  if (plan.kernel == RowKernel::kLoop)
    return launch_fwd_loop<Load, W, Y, acc_t, kVec, kRms>(a, plan, stream);
  switch (plan.cols_per_thread) {
    case 8:
      return launch_fwd_reg<Load, W, Y, acc_t, kVec, 8, kRms>(a, plan, stream);
    case 16:
      return launch_fwd_reg<Load, W, Y, acc_t, kVec, 16, kRms>(a, plan, stream);
    case 32:
      // Never planned for double (forward_max_cols), so not compiled.
      if constexpr (sizeof(acc_t) == 4)
        return launch_fwd_reg<Load, W, Y, acc_t, kVec, 32, kRms>(a, plan,
                                                                 stream);
      break;
  }
  TORCH_INTERNAL_ASSERT(
      false, "fastln: unexpected forward plan, cols = ", plan.cols_per_thread);
}

template <typename T>
const T* const_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
T* mutable_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// residual and h are undefined for DirectLoad, mean for RMSNorm, w and b when
// absent.
template <typename Load, typename W, typename Y, bool kRms>
void launch_fwd_typed(const at::Tensor& x, const at::Tensor& residual,
                      const at::Tensor& h, const at::Tensor& w,
                      const at::Tensor& b, double eps, int64_t M, int64_t N,
                      const at::Tensor& y, const at::Tensor& mean,
                      const at::Tensor& rstd) {
  using T = typename Load::Input;
  using R = typename Load::Residual;
  using H = typename Load::Stored;
  using acc_t = at::opmath_type<T>;
  // 16 bytes of T per vector access: 8 half/bfloat16, 4 float, 2 double.
  constexpr int kVec = 16 / sizeof(T);
  const FwdArgs<Load, W, Y, acc_t> a{x.const_data_ptr<T>(),
                                     const_ptr_or_null<R>(residual),
                                     mutable_ptr_or_null<H>(h),
                                     const_ptr_or_null<W>(w),
                                     const_ptr_or_null<W>(b),
                                     y.mutable_data_ptr<Y>(),
                                     mutable_ptr_or_null<acc_t>(mean),
                                     rstd.mutable_data_ptr<acc_t>(),
                                     M,
                                     N,
                                     static_cast<acc_t>(eps)};
  // A contiguous tensor may still start at any element of its storage (a
  // view at an offset), so alignment is checked on the actual pointers.
  const bool vectorize =
      N % kVec == 0 && is_pack_aligned<T, kVec>(a.x) &&
      is_pack_aligned<R, kVec>(a.residual) && is_pack_aligned<H, kVec>(a.h) &&
      is_pack_aligned<Y, kVec>(a.y) && is_pack_aligned<W, kVec>(a.weight) &&
      is_pack_aligned<W, kVec>(a.bias);
  const Stream stream = current_stream();
  if (vectorize)
    launch_fwd_plan<Load, W, Y, acc_t, kVec, kRms>(a, stream);
  else
    launch_fwd_plan<Load, W, Y, acc_t, 1, kRms>(a, stream);
}

template <typename T>
constexpr bool is_16bit() {
  return !std::is_same_v<T, at::opmath_type<T>>;
}

}  // namespace

void launch_layer_norm_fwd(const at::Tensor& x, const at::Tensor& w,
                           const at::Tensor& b, at::ScalarType param_dtype,
                           double eps, int64_t M, int64_t N,
                           const at::Tensor& y, const at::Tensor& mean,
                           const at::Tensor& rstd) {
  const at::Tensor none;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_layer_norm_fwd_cuda",
      [&] {
        using Load = DirectLoad<scalar_t>;
        // Float parameters of half/bfloat16 input (mixed precision) are read
        // as they are, without a cast kernel.
        if constexpr (is_16bit<scalar_t>()) {
          // The float-output forward (layer_norm_cuda.cu has made its
          // weight/bias float).
          if (y.scalar_type() == at::kFloat)
            return launch_fwd_typed<Load, float, float, false>(
                x, none, none, w, b, eps, M, N, y, mean, rstd);
          if (param_dtype == at::kFloat)
            return launch_fwd_typed<Load, float, scalar_t, false>(
                x, none, none, w, b, eps, M, N, y, mean, rstd);
        }
        launch_fwd_typed<Load, scalar_t, scalar_t, false>(
            x, none, none, w, b, eps, M, N, y, mean, rstd);
      });
}

void launch_rms_norm_fwd(const at::Tensor& x, const at::Tensor& w,
                         at::ScalarType param_dtype, double eps, int64_t M,
                         int64_t N, const at::Tensor& y,
                         const at::Tensor& rstd) {
  const at::Tensor none;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_rms_norm_fwd_cuda",
      [&] {
        using Load = DirectLoad<scalar_t>;
        if constexpr (is_16bit<scalar_t>()) {
          if (param_dtype == at::kFloat)
            return launch_fwd_typed<Load, float, scalar_t, true>(
                x, none, none, w, none, eps, M, N, y, none, rstd);
        }
        launch_fwd_typed<Load, scalar_t, scalar_t, true>(
            x, none, none, w, none, eps, M, N, y, none, rstd);
      });
}

namespace {

// add_norm_fwd for input X, residual R and residual stream H: the parameter
// type (X, or float for 16-bit X), then the norm.
template <typename X, typename R, typename H>
void launch_add_norm_fwd_typed(const at::Tensor& x, const at::Tensor& residual,
                               const at::Tensor& h, const at::Tensor& w,
                               const at::Tensor& b, at::ScalarType param_dtype,
                               double eps, bool rms, int64_t M, int64_t N,
                               const at::Tensor& y, const at::Tensor& mean,
                               const at::Tensor& rstd) {
  using Load = AddLoad<X, R, H>;
  const auto run = [&](auto weight_type) {
    using W = decltype(weight_type);
    if (rms)
      launch_fwd_typed<Load, W, X, true>(x, residual, h, w, b, eps, M, N, y,
                                         mean, rstd);
    else
      launch_fwd_typed<Load, W, X, false>(x, residual, h, w, b, eps, M, N, y,
                                          mean, rstd);
  };
  if constexpr (is_16bit<X>()) {
    if (param_dtype == at::kFloat) return run(float{});
  }
  run(X{});
}

}  // namespace

void launch_add_norm_fwd(const at::Tensor& x, const at::Tensor& residual,
                         const at::Tensor& w, const at::Tensor& b,
                         at::ScalarType param_dtype, double eps, bool rms,
                         int64_t M, int64_t N, const at::Tensor& y,
                         const at::Tensor& h, const at::Tensor& mean,
                         const at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_add_norm_fwd_cuda",
      [&] {
        using X = scalar_t;
        // A float32 residual stream of half/bfloat16 input; its residual in
        // either type.
        if constexpr (is_16bit<X>()) {
          if (h.scalar_type() == at::kFloat) {
            if (residual.scalar_type() == at::kFloat)
              return launch_add_norm_fwd_typed<X, float, float>(
                  x, residual, h, w, b, param_dtype, eps, rms, M, N, y, mean,
                  rstd);
            return launch_add_norm_fwd_typed<X, X, float>(x, residual, h, w, b,
                                                          param_dtype, eps, rms,
                                                          M, N, y, mean, rstd);
          }
        }
        launch_add_norm_fwd_typed<X, X, X>(x, residual, h, w, b, param_dtype,
                                           eps, rms, M, N, y, mean, rstd);
      });
}

}  // namespace cuda
}  // namespace fastln
