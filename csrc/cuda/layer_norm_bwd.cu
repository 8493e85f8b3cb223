// The backward of the fastln CUDA backend: its launchers (the kernels are in
// layer_norm_bwd_kernels.cuh; the SIMT build compiles this file too). T: x
// and dx, W: weight and dweight/dbias, G: dy (T, or float32 for 16-bit x: the
// backward of the float-output forward).
//
// With xhat = (x - mean) * rstd and g = dy * weight (g = dy without weight):
//   dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))   (per row)
//   dweight = sum over rows of dy * xhat                      (per column)
//   dbias   = sum over rows of dy                             (per column)
// The saved mean is rounded to acc_t, which for |mean| >> std is off by a
// good fraction of a std (float32 holds 1e4 only to 1e-3). So, as on the CPU,
// each row also sums d = x - mean (exact for such rows), whose average delta
// corrects it: xhat = (d - delta) * rstd, and
// mean(g * xhat) = rstd * (mean(g * d) - delta * mean(g)).
// The row kernels read x and dy once, write dx, and keep per-block column
// sums of dy * xhat and dy in acc_t. Each block writes its sums to its own
// row of a [blocks, 2, N] workspace, and layer_norm_bwd_param_reduce_kernel
// adds the rows in a fixed order. No atomics: dweight and dbias are bitwise
// identical from run to run (the number of blocks depends only on M, N and
// the device).
//
// The same kernels, by their compile-time policies, run
//   rms_norm_bwd:  xhat = x * rstd, dx = rstd * (g - xhat * mean(g * xhat)),
//                  dweight as above, no dbias (kRms: one row sum, no mean);
//   add_norm_bwd:  the gradient of the norm's input h, plus grad_h when
//                  given, written in h's type (AddStore), of a dy in the
//                  forward output's type (G: h's, or half/bfloat16 under a
//                  float32 h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <type_traits>

#include "backend.h"
#include "layer_norm_bwd_kernels.cuh"
#include "layer_norm_cuda.h"

namespace fastln {
namespace cuda {
namespace {

template <typename T, typename W, typename G, typename acc_t, typename Store>
struct BwdArgs {
  using Out = typename Store::Out;
  const G* dy;
  const T* x;
  const acc_t* mean;  // nullptr for RMSNorm
  const acc_t* rstd;
  const W* weight;
  Out* dx;
  const Out* grad_in;  // AddStore's grad_h, or nullptr
  W* dweight;
  W* dbias;
  int64_t M;
  int64_t N;
  at::TensorOptions workspace_options;  // acc_t on x's device
};

// Blocks of `kernel` that fit on the device at once.
template <auto kernel>
int64_t resident_blocks(int block_threads, size_t smem) {
  return max_active_blocks_per_sm<kernel>(block_threads, smem) * sm_count();
}

// Adds the workspace rows into dweight/dbias (the workspace is then freed
// back to the caching allocator, stream-ordered).
template <typename T, typename W, typename G, typename acc_t, typename Store>
void launch_param_reduce(const BwdArgs<T, W, G, acc_t, Store>& a,
                         const at::Tensor& partial, int64_t num_blocks,
                         Stream stream) {
  const int64_t grid = ceil_div(a.N, kReduceCols);
  launch_kernel<&layer_norm_bwd_param_reduce_kernel<acc_t, W>>(
      dim3(static_cast<unsigned>(grid)), dim3(kReduceCols, kReduceRows), 0,
      stream, partial.const_data_ptr<acc_t>(), num_blocks, a.N, a.dweight,
      a.dbias);
}

// The [blocks, 2, N] workspace of column partial sums.
template <typename T, typename W, typename G, typename acc_t, typename Store>
at::Tensor allocate_partials(const BwdArgs<T, W, G, acc_t, Store>& a,
                             int64_t blocks) {
  at::Tensor partial = at::empty({blocks, 2, a.N}, a.workspace_options);
  poison(partial);
  return partial;
}

template <typename T, typename W, typename G, typename acc_t, int kVec,
          int kCols, typename Store, bool kRms>
void launch_bwd_reg(const BwdArgs<T, W, G, acc_t, Store>& a,
                    const RowPlan& plan, Stream stream) {
  constexpr auto kernel =
      &layer_norm_bwd_reg_kernel<T, W, G, acc_t, kVec, kCols, Store, kRms>;
  const bool want_params = a.dweight != nullptr || a.dbias != nullptr;
  const int rows_per_block = plan.block_threads / plan.threads_per_row;
  const int64_t row_groups = ceil_div(a.M, rows_per_block);
  // Staging of the groups' column sums (dy * xhat, and dy for layer norm):
  // at most 2 * 128 * 16 floats or 2 * 128 * 8 doubles
  // (rows_per_block * N <= 128 * cols), 16 KB.
  constexpr size_t kSums = kRms ? 1 : 2;
  const size_t smem =
      want_params && rows_per_block > 1
          ? kSums * size_t(rows_per_block) * size_t(a.N) * sizeof(acc_t)
          : 0;
  int64_t grid = std::min(row_groups, kMaxGrid);
  at::Tensor partial;
  acc_t* partial_ptr = nullptr;
  if (want_params) {
    grid = backward_blocks(row_groups,
                           resident_blocks<kernel>(plan.block_threads, smem),
                           sm_count(), a.N, static_cast<int>(sizeof(acc_t)),
                           /*loop_kernel=*/false);
    partial = allocate_partials(a, grid);
    partial_ptr = partial.mutable_data_ptr<acc_t>();
  }
  launch_kernel<kernel>(dim3(static_cast<unsigned>(grid)),
                        dim3(plan.block_threads), smem, stream, a.dy, a.x,
                        a.mean, a.rstd, a.weight, a.dx, a.grad_in, partial_ptr,
                        a.M, static_cast<int>(a.N), plan.threads_per_row);
  if (want_params) launch_param_reduce(a, partial, grid, stream);
}

template <typename T, typename W, typename G, typename acc_t, int kVec,
          typename Store, bool kRms>
void launch_bwd_loop(const BwdArgs<T, W, G, acc_t, Store>& a,
                     const RowPlan& plan, Stream stream) {
  constexpr auto kernel =
      &layer_norm_bwd_loop_kernel<T, W, G, acc_t, kVec, Store, kRms>;
  const bool want_params = a.dweight != nullptr || a.dbias != nullptr;
  // Cache x and dy in shared memory for pass 2 when they fit next to the
  // static shared memory within the block's opt-in limit (rows up to ~56K
  // half or ~28K float elements on an H100); x only when dy has another type
  // than x (the kernel's kCacheDy).
  const int64_t rows_bytes =
      (std::is_same_v<G, T> ? 2 : 1) * a.N * static_cast<int64_t>(sizeof(T));
  const int64_t limit = smem_per_block_optin() - static_smem<kernel>();
  const bool cache_rows = rows_bytes <= limit;
  const int smem = cache_rows ? static_cast<int>(rows_bytes) : 0;
  if (smem > max_dynamic_smem<kernel>()) set_max_dynamic_smem<kernel>(smem);
  int64_t grid = std::min(a.M, kMaxGrid);
  at::Tensor partial;
  acc_t* partial_ptr = nullptr;
  if (want_params) {
    grid =
        backward_blocks(a.M, resident_blocks<kernel>(plan.block_threads, smem),
                        sm_count(), a.N, static_cast<int>(sizeof(acc_t)),
                        /*loop_kernel=*/true);
    partial = allocate_partials(a, grid);
    partial_ptr = partial.mutable_data_ptr<acc_t>();
  }
  launch_kernel<kernel>(dim3(static_cast<unsigned>(grid)),
                        dim3(plan.block_threads), smem, stream, a.dy, a.x,
                        a.mean, a.rstd, a.weight, a.dx, a.grad_in, partial_ptr,
                        a.M, a.N, cache_rows);
  if (want_params) launch_param_reduce(a, partial, grid, stream);
}

template <typename T, typename W, typename G, typename acc_t, int kVec,
          typename Store, bool kRms>
void launch_bwd_plan(const BwdArgs<T, W, G, acc_t, Store>& a, Stream stream) {
  const RowPlan plan =
      plan_rows(a.N, backward_max_cols(static_cast<int>(sizeof(acc_t))));
  if (plan.kernel == RowKernel::kLoop)
    return launch_bwd_loop<T, W, G, acc_t, kVec, Store, kRms>(a, plan, stream);
  switch (plan.cols_per_thread) {
    case 8:
      return launch_bwd_reg<T, W, G, acc_t, kVec, 8, Store, kRms>(a, plan,
                                                                  stream);
    case 16:
      // Never planned for double (backward_max_cols), so not compiled.
      if constexpr (sizeof(acc_t) == 4)
        return launch_bwd_reg<T, W, G, acc_t, kVec, 16, Store, kRms>(a, plan,
                                                                     stream);
      break;
  }
  TORCH_INTERNAL_ASSERT(
      false, "fastln: unexpected backward plan, cols = ", plan.cols_per_thread);
}

// mean is undefined for RMSNorm, grad_in unless Store is AddStore with a
// grad_h; w, dx, dw, db when absent or not wanted.
template <typename T, typename W, typename G, typename Store, bool kRms>
void launch_bwd_typed(const at::Tensor& dy, const at::Tensor& x,
                      const at::Tensor& mean, const at::Tensor& rstd,
                      const at::Tensor& w, const at::Tensor& grad_in, int64_t M,
                      int64_t N, const at::Tensor& dx, const at::Tensor& dw,
                      const at::Tensor& db) {
  using acc_t = at::opmath_type<T>;
  using Out = typename Store::Out;
  // 16 bytes of T per vector access: 8 half/bfloat16, 4 float, 2 double.
  constexpr int kVec = 16 / sizeof(T);
  const BwdArgs<T, W, G, acc_t, Store> a{
      dy.const_data_ptr<G>(),
      x.const_data_ptr<T>(),
      mean.defined() ? mean.const_data_ptr<acc_t>() : nullptr,
      rstd.const_data_ptr<acc_t>(),
      w.defined() ? w.const_data_ptr<W>() : nullptr,
      dx.defined() ? dx.mutable_data_ptr<Out>() : nullptr,
      grad_in.defined() ? grad_in.const_data_ptr<Out>() : nullptr,
      dw.defined() ? dw.mutable_data_ptr<W>() : nullptr,
      db.defined() ? db.mutable_data_ptr<W>() : nullptr,
      M,
      N,
      x.options().dtype(c10::CppTypeToScalarType<acc_t>::value)};
  // Alignment is checked on the actual pointers (a contiguous tensor may be
  // a view at an odd offset). dweight/dbias are written by the reduction
  // kernel one element at a time and need no check.
  const bool vectorize = N % kVec == 0 && is_pack_aligned<G, kVec>(a.dy) &&
                         is_pack_aligned<T, kVec>(a.x) &&
                         is_pack_aligned<Out, kVec>(a.dx) &&
                         is_pack_aligned<Out, kVec>(a.grad_in) &&
                         is_pack_aligned<W, kVec>(a.weight);
  const Stream stream = current_stream();
  if (vectorize)
    launch_bwd_plan<T, W, G, acc_t, kVec, Store, kRms>(a, stream);
  else
    launch_bwd_plan<T, W, G, acc_t, 1, Store, kRms>(a, stream);
}

template <typename T>
constexpr bool is_16bit() {
  return !std::is_same_v<T, at::opmath_type<T>>;
}

}  // namespace

void launch_layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                           const at::Tensor& mean, const at::Tensor& rstd,
                           const at::Tensor& w, at::ScalarType param_dtype,
                           int64_t M, int64_t N, const at::Tensor& dx,
                           const at::Tensor& dw, const at::Tensor& db) {
  const at::Tensor none;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_layer_norm_bwd_cuda",
      [&] {
        using Store = DirectStore<scalar_t>;
        if constexpr (is_16bit<scalar_t>()) {
          // float32 dy (the float-output forward; layer_norm_cuda.cu has made
          // its weight/bias float).
          if (dy.scalar_type() == at::kFloat)
            return launch_bwd_typed<scalar_t, float, float, Store, false>(
                dy, x, mean, rstd, w, none, M, N, dx, dw, db);
          if (param_dtype == at::kFloat)
            return launch_bwd_typed<scalar_t, float, scalar_t, Store, false>(
                dy, x, mean, rstd, w, none, M, N, dx, dw, db);
        }
        launch_bwd_typed<scalar_t, scalar_t, scalar_t, Store, false>(
            dy, x, mean, rstd, w, none, M, N, dx, dw, db);
      });
}

void launch_rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                         const at::Tensor& rstd, const at::Tensor& w,
                         at::ScalarType param_dtype, int64_t M, int64_t N,
                         const at::Tensor& dx, const at::Tensor& dw) {
  const at::Tensor none;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_rms_norm_bwd_cuda",
      [&] {
        using Store = DirectStore<scalar_t>;
        if constexpr (is_16bit<scalar_t>()) {
          if (param_dtype == at::kFloat)
            return launch_bwd_typed<scalar_t, float, scalar_t, Store, true>(
                dy, x, none, rstd, w, none, M, N, dx, dw, none);
        }
        launch_bwd_typed<scalar_t, scalar_t, scalar_t, Store, true>(
            dy, x, none, rstd, w, none, M, N, dx, dw, none);
      });
}

namespace {

// add_norm_bwd for residual stream H and output G: the parameter type (G,
// or float for 16-bit G), then the norm.
template <typename H, typename G>
void launch_add_norm_bwd_typed(const at::Tensor& dy, const at::Tensor& grad_h,
                               const at::Tensor& h, const at::Tensor& mean,
                               const at::Tensor& rstd, const at::Tensor& w,
                               at::ScalarType param_dtype, bool rms, int64_t M,
                               int64_t N, const at::Tensor& dh,
                               const at::Tensor& dw, const at::Tensor& db) {
  using Store = AddStore<H>;
  const auto run = [&](auto weight_type) {
    using W = decltype(weight_type);
    if (rms)
      launch_bwd_typed<H, W, G, Store, true>(dy, h, at::Tensor(), rstd, w,
                                             grad_h, M, N, dh, dw, db);
    else
      launch_bwd_typed<H, W, G, Store, false>(dy, h, mean, rstd, w, grad_h, M,
                                              N, dh, dw, db);
  };
  if constexpr (is_16bit<G>()) {
    if (param_dtype == at::kFloat) return run(float{});
  }
  run(G{});
}

}  // namespace

void launch_add_norm_bwd(const at::Tensor& dy, const at::Tensor& grad_h,
                         const at::Tensor& h, const at::Tensor& mean,
                         const at::Tensor& rstd, const at::Tensor& w,
                         at::ScalarType param_dtype, bool rms, int64_t M,
                         int64_t N, const at::Tensor& dh, const at::Tensor& dw,
                         const at::Tensor& db) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, h.scalar_type(), "fastln_add_norm_bwd_cuda",
      [&] {
        using H = scalar_t;
        // A float32 residual stream under a half/bfloat16 output.
        if constexpr (std::is_same_v<H, float>) {
          if (dy.scalar_type() == at::kHalf)
            return launch_add_norm_bwd_typed<H, at::Half>(
                dy, grad_h, h, mean, rstd, w, param_dtype, rms, M, N, dh, dw,
                db);
          if (dy.scalar_type() == at::kBFloat16)
            return launch_add_norm_bwd_typed<H, at::BFloat16>(
                dy, grad_h, h, mean, rstd, w, param_dtype, rms, M, N, dh, dw,
                db);
        }
        launch_add_norm_bwd_typed<H, H>(dy, grad_h, h, mean, rstd, w,
                                        param_dtype, rms, M, N, dh, dw, db);
      });
}

}  // namespace cuda
}  // namespace fastln
