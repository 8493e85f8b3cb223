// Backward kernels of the fastln CUDA backend and their launcher.
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
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "device_utils.cuh"
#include "layer_norm_cuda.h"
#include "plan.h"

namespace fastln {
namespace cuda {
namespace {

// Loads kVec weights (1 when absent: g = dy).
template <int kVec, typename W, typename acc_t>
__device__ __forceinline__ void load_weight(const W* weight, int64_t col,
                                            acc_t* w) {
  if (weight != nullptr) {
    load_as<acc_t, kVec>(weight + col, w);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) w[j] = 1;
  }
}

// Per-row constants of the backward from the row's sums of d = x - mean,
// g and g * d (see the top of this file).
template <typename acc_t>
struct RowGrad {
  acc_t delta;    // mean(d): the correction of the saved mean
  acc_t mean_g;   // mean(g)
  acc_t mean_gx;  // mean(g * xhat)
};

template <typename acc_t>
__device__ __forceinline__ RowGrad<acc_t> row_grad(const SumTriple<acc_t>& s,
                                                   acc_t rstd, acc_t inv_n) {
  RowGrad<acc_t> r;
  r.delta = s.a * inv_n;
  r.mean_g = s.b * inv_n;
  r.mean_gx = rstd * (s.c * inv_n - r.delta * r.mean_g);
  return r;
}

// dx of one pack from xhat, dy, the weights and the row's constants.
template <int kVec, typename acc_t>
__device__ __forceinline__ void dx_pack(const acc_t* xhat, const acc_t* dy,
                                        const acc_t* w, acc_t rstd,
                                        const RowGrad<acc_t>& rg, acc_t* out) {
#pragma unroll
  for (int j = 0; j < kVec; ++j)
    out[j] = rstd * (dy[j] * w[j] - rg.mean_g - xhat[j] * rg.mean_gx);
}

// Rows held in registers (plan_rows cases 1 and 2 with backward_max_cols),
// with the layout of layer_norm_fwd_reg_kernel: groups of threads_per_row
// threads per row (a power of two up to 32, or the whole block), thread
// `lane` holding the packs starting at columns (p * threads_per_row + lane)
// * kVec. A thread thus owns the same columns in every row it visits, and
// sums their dy * xhat and dy over those rows in registers.
//
// dx == nullptr: no dx (the row sums are still reduced: dweight needs the
// corrected xhat). partial == nullptr: no
// dweight/dbias; else the block writes its column sums to
// partial[blockIdx.x][0][:] (dy * xhat) and partial[blockIdx.x][1][:] (dy),
// all N columns, after adding those of its row groups in group order through
// 2 * rows_per_block * N acc_t of dynamic shared memory (rows_per_block > 1
// only). The grid must not exceed the number of row groups, so that every
// block owns rows. Requires threads_per_row * kCols >= N, and N % kVec == 0
// with aligned pointers when kVec > 1.
template <typename T, typename W, typename acc_t, int kVec, int kCols>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_bwd_reg_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                              const acc_t* __restrict__ mean,
                              const acc_t* __restrict__ rstd,
                              const W* __restrict__ weight, T* __restrict__ dx,
                              acc_t* __restrict__ partial, int64_t M, int N,
                              int threads_per_row) {
  static_assert(kCols % kVec == 0, "a thread holds whole packs");
  constexpr int kPacks = kCols / kVec;
  __shared__ SumTriple<acc_t> scratch[kWarpSize + 1];
  extern __shared__ __align__(16) unsigned char fastln_smem[];
  const int rows_per_block = blockDim.x / threads_per_row;
  const int group = threadIdx.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);

  acc_t dw_sum[kCols];
  acc_t db_sum[kCols];
#pragma unroll
  for (int k = 0; k < kCols; ++k) dw_sum[k] = db_sum[k] = 0;

  for (int64_t first = int64_t{blockIdx.x} * rows_per_block; first < M;
       first += int64_t{gridDim.x} * rows_per_block) {
    const int64_t row = first + group;
    const bool row_ok = row < M;
    const int64_t offset = (row_ok ? row : 0) * N;
    const acc_t mu = row_ok ? mean[row] : acc_t(0);
    const acc_t rs = row_ok ? rstd[row] : acc_t(0);

    acc_t dv[kCols];  // d = x - mean
    acc_t dyv[kCols];
    SumTriple<acc_t> sums{0, 0, 0};  // sum(d), sum(g), sum(g * d)
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = (p * threads_per_row + lane) * kVec;
      acc_t* xp = dv + p * kVec;
      acc_t* dp = dyv + p * kVec;
      if (row_ok && col < N) {
        load_as<acc_t, kVec>(x + offset + col, xp);
        load_as<acc_t, kVec>(dy + offset + col, dp);
        acc_t w[kVec];
        load_weight<kVec>(weight, col, w);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          xp[j] -= mu;
          const acc_t g = dp[j] * w[j];
          sums.a += xp[j];
          sums.b += g;
          sums.c += g * xp[j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) xp[j] = dp[j] = 0;
      }
    }
    sums = row_allreduce(sums, threads_per_row, scratch);
    const RowGrad<acc_t> rg = row_grad(sums, rs, inv_n);

#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = (p * threads_per_row + lane) * kVec;
      if (row_ok && col < N) {
        acc_t xh[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          xh[j] = (dv[p * kVec + j] - rg.delta) * rs;
          dw_sum[p * kVec + j] += dyv[p * kVec + j] * xh[j];
          db_sum[p * kVec + j] += dyv[p * kVec + j];
        }
        if (dx != nullptr) {
          acc_t w[kVec];
          load_weight<kVec>(weight, col, w);
          acc_t out[kVec];
          dx_pack<kVec>(xh, dyv + p * kVec, w, rs, rg, out);
          store_as<kVec>(dx + offset + col, out);
        }
      }
    }
  }

  if (partial == nullptr) return;
  acc_t* dw_out = partial + int64_t{blockIdx.x} * 2 * N;
  acc_t* db_out = dw_out + N;
  if (rows_per_block == 1) {
    // The block's only group owns every column once: write directly.
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = (p * threads_per_row + lane) * kVec;
      if (col < N) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          dw_out[col + j] = dw_sum[p * kVec + j];
          db_out[col + j] = db_sum[p * kVec + j];
        }
      }
    }
    return;
  }
  // Several groups: stage [2][rows_per_block][N] in shared memory, then add
  // the groups of each column in group order.
  acc_t* stage = reinterpret_cast<acc_t*>(fastln_smem);
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int col = (p * threads_per_row + lane) * kVec;
    if (col < N) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        stage[group * N + col + j] = dw_sum[p * kVec + j];
        stage[(rows_per_block + group) * N + col + j] = db_sum[p * kVec + j];
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < N; c += blockDim.x) {
    acc_t tw = 0;
    acc_t tb = 0;
    for (int g = 0; g < rows_per_block; ++g) {
      tw += stage[g * N + c];
      tb += stage[(rows_per_block + g) * N + c];
    }
    dw_out[c] = tw;
    db_out[c] = tb;
  }
}

// Rows too long for registers (any N): a block per row, looping over the
// row's packs. Pass 1 reduces sum(d), sum(g), sum(g * d) and, with
// `cache_rows`, copies x and dy (in T) to dynamic shared memory
// (2 * N * sizeof(T) bytes) for pass 2, which writes dx (when wanted) and
// adds dy * xhat and dy to the block's workspace row partial[blockIdx.x]
// (stored by the block's first row, added by the following ones: the row is
// the block's own, so this needs no atomics and no zeroing). Each thread
// touches the same packs in both passes, so the cache needs no barrier. The
// grid must not exceed M (every block owns a row and so writes its whole
// workspace row). Requires N % kVec == 0 and aligned pointers when kVec > 1.
template <typename T, typename W, typename acc_t, int kVec>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_bwd_loop_kernel(const T* __restrict__ dy,
                               const T* __restrict__ x,
                               const acc_t* __restrict__ mean,
                               const acc_t* __restrict__ rstd,
                               const W* __restrict__ weight, T* __restrict__ dx,
                               acc_t* __restrict__ partial, int64_t M,
                               int64_t N, bool cache_rows) {
  extern __shared__ __align__(16) unsigned char fastln_smem[];
  const int64_t num_packs = N / kVec;
  Pack<T, kVec>* x_cache = reinterpret_cast<Pack<T, kVec>*>(fastln_smem);
  Pack<T, kVec>* dy_cache = x_cache + num_packs;
  __shared__ SumTriple<acc_t> scratch[kWarpSize + 1];
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);
  acc_t* dw_out =
      partial != nullptr ? partial + int64_t{blockIdx.x} * 2 * N : nullptr;
  bool first_row = true;

  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const T* xr = x + row * N;
    const T* dyr = dy + row * N;
    const acc_t mu = mean[row];
    const acc_t rs = rstd[row];
    SumTriple<acc_t> sums{0, 0, 0};  // sum(d), sum(g), sum(g * d)
    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<T, kVec> px = load_pack<T, kVec>(xr + i * kVec);
      const Pack<T, kVec> pd = load_pack<T, kVec>(dyr + i * kVec);
      if (cache_rows) {
        x_cache[i] = px;
        dy_cache[i] = pd;
      }
      acc_t w[kVec];
      load_weight<kVec>(weight, i * kVec, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const acc_t d = static_cast<acc_t>(px.val[j]) - mu;
        const acc_t g = static_cast<acc_t>(pd.val[j]) * w[j];
        sums.a += d;
        sums.b += g;
        sums.c += g * d;
      }
    }
    sums = block_allreduce(sums, scratch);
    const RowGrad<acc_t> rg = row_grad(sums, rs, inv_n);

    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<T, kVec> px =
          cache_rows ? x_cache[i] : load_pack<T, kVec>(xr + i * kVec);
      const Pack<T, kVec> pd =
          cache_rows ? dy_cache[i] : load_pack<T, kVec>(dyr + i * kVec);
      acc_t xh[kVec];
      acc_t dv[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        xh[j] = ((static_cast<acc_t>(px.val[j]) - mu) - rg.delta) * rs;
        dv[j] = static_cast<acc_t>(pd.val[j]);
      }
      if (dx != nullptr) {
        acc_t w[kVec];
        load_weight<kVec>(weight, i * kVec, w);
        acc_t out[kVec];
        dx_pack<kVec>(xh, dv, w, rs, rg, out);
        store_as<kVec>(dx + row * N + i * kVec, out);
      }
      if (dw_out != nullptr) {
        // The workspace rows start at multiples of 2 * N elements and N is
        // a multiple of kVec, so acc_t packs are aligned here too.
        acc_t* pw = dw_out + i * kVec;
        acc_t* pb = dw_out + N + i * kVec;
        acc_t sw[kVec];
        acc_t sb[kVec];
        if (first_row) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) sw[j] = sb[j] = 0;
        } else {
          load_as<acc_t, kVec>(pw, sw);
          load_as<acc_t, kVec>(pb, sb);
        }
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          sw[j] += dv[j] * xh[j];
          sb[j] += dv[j];
        }
        store_as<kVec>(pw, sw);
        store_as<kVec>(pb, sb);
      }
    }
    first_row = false;
  }
}

// Block shape of the parameter reduction: 32 columns (one coalesced 128-byte
// line of float per workspace row) by 8 threads that split the workspace
// rows between them.
constexpr int kReduceCols = 32;
constexpr int kReduceRows = 8;

// dweight[c] = sum_b partial[b][0][c], dbias[c] = sum_b partial[b][1][c]
// (each nullptr when not wanted), cast to W. Thread (tx, ty) adds rows
// b = ty, ty + 8, ... in order, then thread (tx, 0) adds the 8 results in ty
// order: a fixed order, so the result is reproducible bit for bit.
template <typename acc_t, typename W>
__global__ void __launch_bounds__(kReduceCols* kReduceRows)
    layer_norm_bwd_param_reduce_kernel(const acc_t* __restrict__ partial,
                                       int64_t num_blocks, int64_t N,
                                       W* __restrict__ dweight,
                                       W* __restrict__ dbias) {
  __shared__ acc_t sums[2][kReduceRows][kReduceCols];
  const int64_t col = int64_t{blockIdx.x} * kReduceCols + threadIdx.x;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    acc_t t = 0;
    if (col < N)
      for (int64_t b = threadIdx.y; b < num_blocks; b += kReduceRows)
        t += partial[(b * 2 + k) * N + col];
    sums[k][threadIdx.y][threadIdx.x] = t;
  }
  __syncthreads();
  if (threadIdx.y != 0 || col >= N) return;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    W* out = k == 0 ? dweight : dbias;
    if (out == nullptr) continue;
    acc_t t = 0;
#pragma unroll
    for (int y = 0; y < kReduceRows; ++y) t += sums[k][y][threadIdx.x];
    out[col] = static_cast<W>(t);
  }
}

template <typename T, typename W, typename acc_t>
struct BwdArgs {
  const T* dy;
  const T* x;
  const acc_t* mean;
  const acc_t* rstd;
  const W* weight;
  T* dx;
  W* dweight;
  W* dbias;
  int64_t M;
  int64_t N;
  at::TensorOptions workspace_options;  // acc_t on x's device
};

int64_t sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

// Blocks of `kernel` that fit on the device at once.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int block_threads, size_t smem) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, kernel, block_threads, smem));
  return int64_t{per_sm} * sm_count();
}

// Adds the workspace rows into dweight/dbias (the workspace is then freed
// back to the caching allocator, stream-ordered).
template <typename T, typename W, typename acc_t>
void launch_param_reduce(const BwdArgs<T, W, acc_t>& a,
                         const at::Tensor& partial, int64_t num_blocks,
                         cudaStream_t stream) {
  const dim3 block(kReduceCols, kReduceRows);
  const int64_t grid = ceil_div(a.N, kReduceCols);
  layer_norm_bwd_param_reduce_kernel<acc_t, W>
      <<<static_cast<unsigned>(grid), block, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), num_blocks, a.N, a.dweight, a.dbias);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename W, typename acc_t, int kVec, int kCols>
void launch_bwd_reg(const BwdArgs<T, W, acc_t>& a, const RowPlan& plan,
                    cudaStream_t stream) {
  auto* kernel = &layer_norm_bwd_reg_kernel<T, W, acc_t, kVec, kCols>;
  const bool want_params = a.dweight != nullptr || a.dbias != nullptr;
  const int rows_per_block = plan.block_threads / plan.threads_per_row;
  const int64_t row_groups = ceil_div(a.M, rows_per_block);
  // Staging of the groups' column sums: at most 2 * 128 * 16 floats or
  // 2 * 128 * 8 doubles (rows_per_block * N <= 128 * cols), 16 KB.
  const size_t smem =
      want_params && rows_per_block > 1
          ? 2 * size_t(rows_per_block) * size_t(a.N) * sizeof(acc_t)
          : 0;
  int64_t grid = std::min(row_groups, kMaxGrid);
  at::Tensor partial;
  acc_t* partial_ptr = nullptr;
  if (want_params) {
    grid = backward_blocks(row_groups,
                           resident_blocks(kernel, plan.block_threads, smem),
                           sm_count(), a.N, static_cast<int>(sizeof(acc_t)),
                           /*loop_kernel=*/false);
    partial = at::empty({grid, 2, a.N}, a.workspace_options);
    partial_ptr = partial.mutable_data_ptr<acc_t>();
  }
  kernel<<<static_cast<unsigned>(grid), plan.block_threads, smem, stream>>>(
      a.dy, a.x, a.mean, a.rstd, a.weight, a.dx, partial_ptr, a.M,
      static_cast<int>(a.N), plan.threads_per_row);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (want_params) launch_param_reduce(a, partial, grid, stream);
}

template <typename T, typename W, typename acc_t, int kVec>
void launch_bwd_loop(const BwdArgs<T, W, acc_t>& a, const RowPlan& plan,
                     cudaStream_t stream) {
  auto* kernel = &layer_norm_bwd_loop_kernel<T, W, acc_t, kVec>;
  const bool want_params = a.dweight != nullptr || a.dbias != nullptr;
  // Cache x and dy in shared memory for pass 2 when they fit next to the
  // static shared memory within the block's opt-in limit (rows up to ~56K
  // half or ~28K float elements on an H100).
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const int64_t rows_bytes = 2 * a.N * static_cast<int64_t>(sizeof(T));
  const int64_t limit =
      static_cast<int64_t>(
          at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) -
      static_cast<int64_t>(attr.sharedSizeBytes);
  const bool cache_rows = rows_bytes <= limit;
  const int smem = cache_rows ? static_cast<int>(rows_bytes) : 0;
  if (smem > attr.maxDynamicSharedSizeBytes)
    C10_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int64_t grid = std::min(a.M, kMaxGrid);
  at::Tensor partial;
  acc_t* partial_ptr = nullptr;
  if (want_params) {
    grid =
        backward_blocks(a.M, resident_blocks(kernel, plan.block_threads, smem),
                        sm_count(), a.N, static_cast<int>(sizeof(acc_t)),
                        /*loop_kernel=*/true);
    partial = at::empty({grid, 2, a.N}, a.workspace_options);
    partial_ptr = partial.mutable_data_ptr<acc_t>();
  }
  kernel<<<static_cast<unsigned>(grid), plan.block_threads, smem, stream>>>(
      a.dy, a.x, a.mean, a.rstd, a.weight, a.dx, partial_ptr, a.M, a.N,
      cache_rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (want_params) launch_param_reduce(a, partial, grid, stream);
}

template <typename T, typename W, typename acc_t, int kVec>
void launch_bwd_plan(const BwdArgs<T, W, acc_t>& a, cudaStream_t stream) {
  const RowPlan plan =
      plan_rows(a.N, backward_max_cols(static_cast<int>(sizeof(acc_t))));
  if (plan.kernel == RowKernel::kLoop)
    return launch_bwd_loop<T, W, acc_t, kVec>(a, plan, stream);
  switch (plan.cols_per_thread) {
    case 8:
      return launch_bwd_reg<T, W, acc_t, kVec, 8>(a, plan, stream);
    case 16:
      // Never planned for double (backward_max_cols), so not compiled.
      if constexpr (sizeof(acc_t) == 4)
        return launch_bwd_reg<T, W, acc_t, kVec, 16>(a, plan, stream);
      break;
  }
  TORCH_INTERNAL_ASSERT(
      false, "fastln: unexpected backward plan, cols = ", plan.cols_per_thread);
}

template <typename T, typename W>
void launch_bwd_typed(const at::Tensor& dy, const at::Tensor& x,
                      const at::Tensor& mean, const at::Tensor& rstd,
                      const at::Tensor& w, int64_t M, int64_t N,
                      const at::Tensor& dx, const at::Tensor& dw,
                      const at::Tensor& db) {
  using acc_t = at::opmath_type<T>;
  // 16 bytes of T per vector access: 8 half/bfloat16, 4 float, 2 double.
  constexpr int kVec = 16 / sizeof(T);
  const BwdArgs<T, W, acc_t> a{
      dy.const_data_ptr<T>(),
      x.const_data_ptr<T>(),
      mean.const_data_ptr<acc_t>(),
      rstd.const_data_ptr<acc_t>(),
      w.defined() ? w.const_data_ptr<W>() : nullptr,
      dx.defined() ? dx.mutable_data_ptr<T>() : nullptr,
      dw.defined() ? dw.mutable_data_ptr<W>() : nullptr,
      db.defined() ? db.mutable_data_ptr<W>() : nullptr,
      M,
      N,
      x.options().dtype(c10::CppTypeToScalarType<acc_t>::value)};
  // Alignment is checked on the actual pointers (a contiguous tensor may be
  // a view at an odd offset). dweight/dbias are written by the reduction
  // kernel one element at a time and need no check.
  const bool vectorize = N % kVec == 0 && is_pack_aligned<T, kVec>(a.dy) &&
                         is_pack_aligned<T, kVec>(a.x) &&
                         is_pack_aligned<T, kVec>(a.dx) &&
                         is_pack_aligned<W, kVec>(a.weight);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (vectorize)
    launch_bwd_plan<T, W, acc_t, kVec>(a, stream);
  else
    launch_bwd_plan<T, W, acc_t, 1>(a, stream);
}

}  // namespace

void launch_layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                           const at::Tensor& mean, const at::Tensor& rstd,
                           const at::Tensor& w, at::ScalarType param_dtype,
                           int64_t M, int64_t N, const at::Tensor& dx,
                           const at::Tensor& dw, const at::Tensor& db) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_layer_norm_bwd_cuda",
      [&] {
        if constexpr (!std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
          if (param_dtype == at::kFloat)
            return launch_bwd_typed<scalar_t, float>(dy, x, mean, rstd, w, M, N,
                                                     dx, dw, db);
        }
        launch_bwd_typed<scalar_t, scalar_t>(dy, x, mean, rstd, w, M, N, dx, dw,
                                             db);
      });
}

}  // namespace cuda
}  // namespace fastln
