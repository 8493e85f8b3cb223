// Backward kernels of the fastln CUDA backend (the math is at the top of
// layer_norm_bwd.cu, which launches them). T: the norm's input (x, or h of
// the fused add), W: weight, G: dy. Store: the STORE policy of the input
// gradient (DirectStore<T>: dx; AddStore<T>: dh = grad_h + dx, the gradient
// of the fused add's input and residual alike). kRms: RMSNorm (no mean, no
// bias). Torch-free: nvcc compiles them for the GPU, and the SIMT build
// (csrc/simt) compiles the same source for the CPU.
#pragma once

#include <cstdint>
#include <type_traits>

#include "device_utils.cuh"
#include "plan.h"

namespace fastln {
namespace cuda {

// STORE policies of the backward kernels: how kVec input-gradient values (in
// acc_t) reach memory. As with the forward's LOAD policies
// (layer_norm_fwd_kernels.cuh), a kernel builds its policy from its own
// __restrict__ parameters (dx, grad_in), and the policies live outside the
// anonymous namespace so that kernel names match in the SIMT resource table.
template <typename T>
struct DirectStore {
  using Out = T;
  T* dx;
  const T* grad_in;  // unused (nullptr)

  template <int kVec, typename acc_t>
  __device__ __forceinline__ void store(int64_t i, const acc_t* v) const {
    store_as<kVec>(dx + i, v);
  }
};

// dh = grad_h + dx, added in acc_t and rounded once. grad_in (grad_h) may be
// nullptr: the residual stream's gradient is then dx alone.
template <typename T>
struct AddStore {
  using Out = T;
  T* dx;
  const T* grad_in;

  template <int kVec, typename acc_t>
  __device__ __forceinline__ void store(int64_t i, const acc_t* v) const {
    if (grad_in == nullptr) return store_as<kVec>(dx + i, v);
    acc_t g[kVec];
    load_as<acc_t, kVec>(grad_in + i, g);
#pragma unroll
    for (int j = 0; j < kVec; ++j) g[j] += v[j];
    store_as<kVec>(dx + i, g);
  }
};

namespace {

// The row sums of the backward: sum(d), sum(g), sum(g * d) for layer norm,
// sum(g * x) alone for RMSNorm.
template <bool kRms, typename acc_t>
using BwdSums = std::conditional_t<kRms, SumState<acc_t>, SumTriple<acc_t>>;

template <typename acc_t>
__device__ __forceinline__ void accumulate(SumTriple<acc_t>& s, acc_t d,
                                           acc_t g) {
  s.a += d;
  s.b += g;
  s.c += g * d;
}

template <typename acc_t>
__device__ __forceinline__ void accumulate(SumState<acc_t>& s, acc_t d,
                                           acc_t g) {
  s.sum += g * d;
}

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

// RMSNorm: xhat = x * rstd, so no mean correction and no mean(g) term:
// dx = rstd * (g - xhat * mean(g * xhat)).
template <typename acc_t>
__device__ __forceinline__ RowGrad<acc_t> row_grad(const SumState<acc_t>& s,
                                                   acc_t rstd, acc_t inv_n) {
  return {acc_t(0), acc_t(0), rstd * (s.sum * inv_n)};
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
// corrected xhat). grad_in: Store's second operand (AddStore's grad_h).
// partial == nullptr: no dweight/dbias; else the block writes its column sums
// to partial[blockIdx.x][0][:] (dy * xhat) and, for layer norm,
// partial[blockIdx.x][1][:] (dy), all N columns, after adding those of its
// row groups in group order through kSums * rows_per_block * N acc_t of
// dynamic shared memory (rows_per_block > 1 only; kSums = 1 for RMSNorm, 2
// for layer norm). The grid must not exceed the number of row groups, so
// that every block owns rows. kRms: mean is unused (nullptr). Requires
// threads_per_row * kCols >= N, and N % kVec == 0 with aligned pointers when
// kVec > 1.
template <typename T, typename W, typename G, typename acc_t, int kVec,
          int kCols, typename Store, bool kRms>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_bwd_reg_kernel(const G* __restrict__ dy, const T* __restrict__ x,
                              const acc_t* __restrict__ mean,
                              const acc_t* __restrict__ rstd,
                              const W* __restrict__ weight,
                              typename Store::Out* __restrict__ dx,
                              const typename Store::Out* __restrict__ grad_in,
                              acc_t* __restrict__ partial, int64_t M, int N,
                              int threads_per_row) {
  static_assert(kCols % kVec == 0, "a thread holds whole packs");
  constexpr int kPacks = kCols / kVec;
  using Sums = BwdSums<kRms, acc_t>;
  const Store st{dx, grad_in};
  FASTLN_SHARED_ARRAY(Sums, scratch, kWarpSize + 1);
  const int rows_per_block = blockDim.x / threads_per_row;
  const int group = threadIdx.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);

  acc_t dw_sum[kCols];
  acc_t db_sum[kCols];  // layer norm only
#pragma unroll
  for (int k = 0; k < kCols; ++k) dw_sum[k] = db_sum[k] = 0;

  for (int64_t first = int64_t{blockIdx.x} * rows_per_block; first < M;
       first += int64_t{gridDim.x} * rows_per_block) {
    const int64_t row = first + group;
    const bool row_ok = row < M;
    const int64_t offset = (row_ok ? row : 0) * N;
    const acc_t mu = !kRms && row_ok ? mean[row] : acc_t(0);
    const acc_t rs = row_ok ? rstd[row] : acc_t(0);

    acc_t dv[kCols];  // d = x - mean
    acc_t dyv[kCols];
    Sums sums{};
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
          accumulate(sums, xp[j], dp[j] * w[j]);
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
          if constexpr (!kRms) db_sum[p * kVec + j] += dyv[p * kVec + j];
        }
        if (dx != nullptr) {
          acc_t w[kVec];
          load_weight<kVec>(weight, col, w);
          acc_t out[kVec];
          dx_pack<kVec>(xh, dyv + p * kVec, w, rs, rg, out);
          st.template store<kVec>(offset + col, out);
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
          if constexpr (!kRms) db_out[col + j] = db_sum[p * kVec + j];
        }
      }
    }
    return;
  }
  // Several groups: stage [kSums][rows_per_block][N] in shared memory, then
  // add the groups of each column in group order.
  const smem_ptr<acc_t> stage = dynamic_shared<acc_t>();
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int col = (p * threads_per_row + lane) * kVec;
    if (col < N) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        stage[group * N + col + j] = dw_sum[p * kVec + j];
        if constexpr (!kRms)
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
      if constexpr (!kRms) tb += stage[(rows_per_block + g) * N + c];
    }
    dw_out[c] = tw;
    if constexpr (!kRms) db_out[c] = tb;
  }
}

// Rows too long for registers (any N): a block per row, looping over the
// row's packs. Pass 1 reduces the row sums (BwdSums) and, with `cache_rows`,
// copies x (in T) and, when G is T, dy to dynamic shared memory
// (N * sizeof(T) bytes each) for pass 2, which writes dx (when wanted,
// through Store) and adds dy * xhat and (layer norm) dy to the block's
// workspace row partial[blockIdx.x] (stored by the block's first row, added
// by the following ones: the row is the block's own, so this needs no atomics
// and no zeroing). Each thread touches the same packs in both passes, so the
// cache needs no barrier. The grid must not exceed M (every block owns a row
// and so writes its whole workspace row). Requires N % kVec == 0 and aligned
// pointers when kVec > 1.
template <typename T, typename W, typename G, typename acc_t, int kVec,
          typename Store, bool kRms>
__global__ void __launch_bounds__(kMaxBlockThreads) layer_norm_bwd_loop_kernel(
    const G* __restrict__ dy, const T* __restrict__ x,
    const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
    const W* __restrict__ weight, typename Store::Out* __restrict__ dx,
    const typename Store::Out* __restrict__ grad_in,
    acc_t* __restrict__ partial, int64_t M, int64_t N, bool cache_rows) {
  using Sums = BwdSums<kRms, acc_t>;
  const Store st{dx, grad_in};
  const int64_t num_packs = N / kVec;
  const smem_ptr<Pack<T, kVec>> x_cache = dynamic_shared<Pack<T, kVec>>();
  // dy is cached next to x only when it has x's type (a float32 dy of
  // 16-bit x, the float-output backward, is read from global memory twice).
  constexpr bool kCacheDy = std::is_same_v<G, T>;
  const smem_ptr<Pack<T, kVec>> dy_cache = x_cache + num_packs;
  FASTLN_SHARED_ARRAY(Sums, scratch, kWarpSize + 1);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);
  acc_t* dw_out =
      partial != nullptr ? partial + int64_t{blockIdx.x} * 2 * N : nullptr;
  bool first_row = true;

  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const T* xr = x + row * N;
    const G* dyr = dy + row * N;
    const acc_t mu = kRms ? acc_t(0) : mean[row];
    const acc_t rs = rstd[row];
    Sums sums{};
    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<T, kVec> px = load_pack<T, kVec>(xr + i * kVec);
      const Pack<G, kVec> pd = load_pack<G, kVec>(dyr + i * kVec);
      if (cache_rows) {
        x_cache[i] = px;
        if constexpr (kCacheDy) dy_cache[i] = pd;
      }
      acc_t w[kVec];
      load_weight<kVec>(weight, i * kVec, w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const acc_t d = static_cast<acc_t>(px.val[j]) - mu;
        accumulate(sums, d, static_cast<acc_t>(pd.val[j]) * w[j]);
      }
    }
    sums = block_allreduce(sums, scratch);
    const RowGrad<acc_t> rg = row_grad(sums, rs, inv_n);

    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<T, kVec> px =
          cache_rows ? x_cache[i] : load_pack<T, kVec>(xr + i * kVec);
      Pack<G, kVec> pd;
      if constexpr (kCacheDy)
        pd = cache_rows ? dy_cache[i] : load_pack<G, kVec>(dyr + i * kVec);
      else
        pd = load_pack<G, kVec>(dyr + i * kVec);
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
        st.template store<kVec>(row * N + i * kVec, out);
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
          if constexpr (!kRms) load_as<acc_t, kVec>(pb, sb);
        }
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          sw[j] += dv[j] * xh[j];
          if constexpr (!kRms) sb[j] += dv[j];
        }
        store_as<kVec>(pw, sw);
        if constexpr (!kRms) store_as<kVec>(pb, sb);
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
// (each nullptr when not wanted, and its partials then unread), cast to W.
// Thread (tx, ty) adds rows b = ty, ty + 8, ... in order, then thread (tx, 0)
// adds the 8 results in ty order: a fixed order, so the result is reproducible
// bit for bit.
template <typename acc_t, typename W>
__global__ void __launch_bounds__(kReduceCols* kReduceRows)
    layer_norm_bwd_param_reduce_kernel(const acc_t* __restrict__ partial,
                                       int64_t num_blocks, int64_t N,
                                       W* __restrict__ dweight,
                                       W* __restrict__ dbias) {
  // [2][kReduceRows][kReduceCols], flat.
  FASTLN_SHARED_ARRAY(acc_t, sums, 2 * kReduceRows * kReduceCols);
  const int64_t col = int64_t{blockIdx.x} * kReduceCols + threadIdx.x;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    acc_t t = 0;
    // An unwanted sum is not read: RMSNorm's kernels write no dy partials.
    if (col < N && (k == 0 ? dweight : dbias) != nullptr)
      for (int64_t b = threadIdx.y; b < num_blocks; b += kReduceRows)
        t += partial[(b * 2 + k) * N + col];
    sums[(k * kReduceRows + threadIdx.y) * kReduceCols + threadIdx.x] = t;
  }
  __syncthreads();
  if (threadIdx.y != 0 || col >= N) return;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    W* out = k == 0 ? dweight : dbias;
    if (out == nullptr) continue;
    acc_t t = 0;
#pragma unroll
    for (int y = 0; y < kReduceRows; ++y)
      t += sums[(k * kReduceRows + y) * kReduceCols + threadIdx.x];
    out[col] = static_cast<W>(t);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace fastln
