// Forward kernels of the fastln CUDA backend (the math is at the top of
// layer_norm_fwd.cu, which launches them). Load: the LOAD policy, which says
// what a row's elements are (DirectLoad<T>: the input x of type T;
// AddLoad<X, R, H>: the rounded sum h of an input x and a residual, which it
// also stores). W: weight/bias, Y: output (the input's type, or float for
// half/bfloat16 input: the float-output forward of CUDA autocast, which reads
// the 16-bit input as it is). kRms: RMSNorm (no mean, no bias: the
// statistics are a plain sum of squares) instead of layer norm. Torch-free:
// nvcc compiles them for the GPU, and the SIMT build (csrc/simt) compiles the
// same source for the CPU.
#pragma once

#include <cstdint>
#include <type_traits>

#include "device_utils.cuh"
#include "plan.h"

namespace fastln {
namespace cuda {

// LOAD policies of the forward kernels (after OneFlow's layer_norm.cuh). A
// kernel builds its policy object from its own __restrict__ pointer
// parameters, (x, residual, h), rather than taking it as a parameter: nvcc
// does not carry __restrict__ on struct members, and the no-alias
// information is what lets it read x through the read-only path. Element
// offsets are from the start of the [M, N] matrix. The policies live outside
// the anonymous namespace so that a kernel's name spells them the same in the
// host compiler's __PRETTY_FUNCTION__ and in cuobjdump (the SIMT resource
// table's key).
//   Stored:            the type of the normalized values as they are in
//                      memory (the looping kernel's row cache holds them).
//   load<acc_t, k>(i): the k elements at i, as Stored, for the statistics.
//   reload<k>(i):      the same elements again, for the output pass.
//   first<acc_t>(i):   element i in acc_t (the layer norm's shift).

// Layer norm / RMSNorm of x itself.
template <typename T>
struct DirectLoad {
  using Input = T;
  using Residual = T;  // no residual
  using Stored = T;
  const T* x;
  const T* residual;  // unused (nullptr)
  T* h;               // unused (nullptr)

  template <typename acc_t, int kVec>
  __device__ __forceinline__ Pack<T, kVec> load(int64_t i) const {
    return load_pack<T, kVec>(x + i);
  }
  template <int kVec>
  __device__ __forceinline__ Pack<T, kVec> reload(int64_t i) const {
    return load_pack<T, kVec>(x + i);
  }
  template <typename acc_t>
  __device__ __forceinline__ acc_t first(int64_t i) const {
    return static_cast<acc_t>(x[i]);
  }
};

// The fused residual add: h = x + residual, added in acc_t and rounded to H
// (the residual stream's type), stored once, and normalized as rounded, so
// that the norm's input is exactly the h the next residual add will read. X:
// the input, R: the residual (X or H). The output pass re-reads h (the
// thread's own writes, so no barrier), which is smaller than x and residual.
template <typename X, typename R, typename H>
struct AddLoad {
  using Input = X;
  using Residual = R;
  using Stored = H;
  const X* x;
  const R* residual;
  H* h;

  template <typename acc_t, int kVec>
  __device__ __forceinline__ Pack<H, kVec> load(int64_t i) const {
    const Pack<X, kVec> px = load_pack<X, kVec>(x + i);
    const Pack<R, kVec> pr = load_pack<R, kVec>(residual + i);
    Pack<H, kVec> ph;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      ph.val[j] = static_cast<H>(static_cast<acc_t>(px.val[j]) +
                                 static_cast<acc_t>(pr.val[j]));
    store_pack<H, kVec>(h + i, ph);
    return ph;
  }
  template <int kVec>
  __device__ __forceinline__ Pack<H, kVec> reload(int64_t i) const {
    return load_pack<H, kVec>(h + i);
  }
  template <typename acc_t>
  __device__ __forceinline__ acc_t first(int64_t i) const {
    return static_cast<acc_t>(static_cast<H>(static_cast<acc_t>(x[i]) +
                                             static_cast<acc_t>(residual[i])));
  }
};

namespace {

// The row statistics' reduction state: Welford / Chan for layer norm, the
// sum of squares for RMSNorm.
template <bool kRms, typename acc_t>
using FwdStats = std::conditional_t<kRms, SumState<acc_t>, WelfordState<acc_t>>;

// Output of one pack from d = x - shift: (d - mean_d) * rstd, then the
// affine. The difference is formed first: d * rstd - mean_d * rstd would
// cancel when |mean_d| >> std.
template <int kVec, typename W, typename acc_t>
__device__ __forceinline__ void normalize_pack(const acc_t* d, acc_t mean_d,
                                               acc_t rstd, const W* weight,
                                               const W* bias, int64_t col,
                                               acc_t* out) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = (d[j] - mean_d) * rstd;
  if (weight != nullptr) {
    acc_t w[kVec];
    load_as<acc_t, kVec>(weight + col, w);
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] *= w[j];
  }
  if (bias != nullptr) {
    acc_t b[kVec];
    load_as<acc_t, kVec>(bias + col, b);
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] += b[j];
  }
}

// Rows held in registers (plan_rows cases 1 and 2).
//
// A group of `threads_per_row` consecutive threads handles a row: a power of
// two up to 32 (several rows per block, one group per row), or the whole
// block (one row per block). Thread `lane` of a group holds kCols elements of
// the row, as kCols / kVec packs of kVec consecutive elements: its pack p
// starts at column (p * threads_per_row + lane) * kVec, so that the lanes of
// a group access consecutive packs (coalesced). Requires
// threads_per_row * kCols >= N, and N % kVec == 0 with 16-byte aligned x,
// residual, h, y, weight, bias when kVec > 1 (a pack is then either wholly
// inside the row or wholly outside). Columns fit in int: N <= 512 * 32.
// kRms: no mean (mean_out is not written, bias is nullptr).
//
// The blocks loop over groups of rows with a grid stride; the loop bound is
// the same for the whole block, so every lane of every warp reaches the
// shuffles and barriers of the reduction, and lanes of rows past M just
// compute on zeros and store nothing.
template <typename Load, typename W, typename Y, typename acc_t, int kVec,
          int kCols, bool kRms>
__global__ void __launch_bounds__(kMaxBlockThreads) layer_norm_fwd_reg_kernel(
    const typename Load::Input* __restrict__ x,
    const typename Load::Residual* __restrict__ residual,
    typename Load::Stored* __restrict__ h, const W* __restrict__ weight,
    const W* __restrict__ bias, Y* __restrict__ y, acc_t* __restrict__ mean_out,
    acc_t* __restrict__ rstd_out, int64_t M, int N, int threads_per_row,
    acc_t eps) {
  static_assert(kCols % kVec == 0, "a thread holds whole packs");
  constexpr int kPacks = kCols / kVec;
  using Stored = typename Load::Stored;
  const Load ld{x, residual, h};
  using Stats = FwdStats<kRms, acc_t>;
  FASTLN_SHARED_ARRAY(Stats, scratch, kWarpSize + 1);
  const int rows_per_block = blockDim.x / threads_per_row;
  const int group = threadIdx.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;

  for (int64_t first = int64_t{blockIdx.x} * rows_per_block; first < M;
       first += int64_t{gridDim.x} * rows_per_block) {
    const int64_t row = first + group;
    const bool row_ok = row < M;
    const int64_t offset = (row_ok ? row : 0) * N;
    // Every lane of the row reads the same first element (one broadcast).
    // RMSNorm's statistic is of x itself: no shift.
    const acc_t shift =
        !kRms && row_ok ? ld.template first<acc_t>(offset) : acc_t(0);

    // Load the row as d = x - shift, and this thread's exact two-pass
    // statistics of its elements (layer norm; the Chan merge then combines
    // the threads' statistics), or its sum of squares (RMSNorm).
    acc_t v[kCols];
    acc_t sum = 0;
    int count = 0;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = (p * threads_per_row + lane) * kVec;
      if (row_ok && col < N) {
        const Pack<Stored, kVec> pack =
            ld.template load<acc_t, kVec>(offset + col);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const acc_t d = static_cast<acc_t>(pack.val[j]) - shift;
          v[p * kVec + j] = d;
          if constexpr (kRms)
            sum += d * d;
          else
            sum += d;
        }
        count += kVec;
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[p * kVec + j] = 0;
      }
    }
    acc_t mean_d = 0;
    acc_t rstd;
    if constexpr (kRms) {
      const SumState<acc_t> sq =
          row_allreduce(SumState<acc_t>{sum}, threads_per_row, scratch);
      rstd = rsqrt_acc(sq.sum / static_cast<acc_t>(N) + eps);
    } else {
      const acc_t local_mean =
          count > 0 ? sum / static_cast<acc_t>(count) : acc_t(0);
      acc_t m2 = 0;
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        const int col = (p * threads_per_row + lane) * kVec;
        if (row_ok && col < N) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const acc_t d = v[p * kVec + j] - local_mean;
            m2 += d * d;
          }
        }
      }
      WelfordState<acc_t> stats{local_mean, m2, static_cast<acc_t>(count)};
      stats = row_allreduce(stats, threads_per_row, scratch);
      mean_d = stats.mean;
      rstd = rsqrt_acc(stats.m2 / static_cast<acc_t>(N) + eps);
    }
    if (row_ok && lane == 0) {
      if constexpr (!kRms) mean_out[row] = shift + mean_d;
      rstd_out[row] = rstd;
    }

#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = (p * threads_per_row + lane) * kVec;
      if (row_ok && col < N) {
        acc_t out[kVec];
        normalize_pack<kVec>(v + p * kVec, mean_d, rstd, weight, bias, col,
                             out);
        store_as<kVec>(y + offset + col, out);
      }
    }
  }
}

// Rows too long for registers (plan_rows case 3; any N): one block per row,
// looping over the row's packs twice, first for the statistics and then for
// the output. When `cache_row` is set the first pass also copies the row (as
// Load::Stored) to dynamic shared memory, N * sizeof(Stored) bytes, and the
// second pass reads it from there, so the row comes from global memory once;
// otherwise the second pass reads global memory again (mostly an L2 hit).
// Each thread touches the same packs in both passes, so the cache needs no
// barrier. Requires N % kVec == 0 and aligned pointers when kVec > 1.
template <typename Load, typename W, typename Y, typename acc_t, int kVec,
          bool kRms>
__global__ void __launch_bounds__(kMaxBlockThreads) layer_norm_fwd_loop_kernel(
    const typename Load::Input* __restrict__ x,
    const typename Load::Residual* __restrict__ residual,
    typename Load::Stored* __restrict__ h, const W* __restrict__ weight,
    const W* __restrict__ bias, Y* __restrict__ y, acc_t* __restrict__ mean_out,
    acc_t* __restrict__ rstd_out, int64_t M, int64_t N, acc_t eps,
    bool cache_row) {
  using Stored = typename Load::Stored;
  const Load ld{x, residual, h};
  const smem_ptr<Pack<Stored, kVec>> cache =
      dynamic_shared<Pack<Stored, kVec>>();
  using Stats = FwdStats<kRms, acc_t>;
  FASTLN_SHARED_ARRAY(Stats, scratch, kWarpSize + 1);
  const int64_t num_packs = N / kVec;

  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const int64_t offset = row * N;
    Y* yr = y + offset;
    const acc_t shift = kRms ? acc_t(0) : ld.template first<acc_t>(offset);
    Stats stats{};
    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<Stored, kVec> pack =
          ld.template load<acc_t, kVec>(offset + i * kVec);
      if (cache_row) cache[i] = pack;
      acc_t v[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        v[j] = static_cast<acc_t>(pack.val[j]) - shift;
      if constexpr (kRms) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) stats.sum += v[j] * v[j];
      } else {
        stats = welford_merge(stats, welford_of<kVec>(v));
      }
    }
    stats = block_allreduce(stats, scratch);
    acc_t mean_d = 0;
    acc_t rstd;
    if constexpr (kRms) {
      rstd = rsqrt_acc(stats.sum / static_cast<acc_t>(N) + eps);
    } else {
      mean_d = stats.mean;
      rstd = rsqrt_acc(stats.m2 / static_cast<acc_t>(N) + eps);
    }
    if (threadIdx.x == 0) {
      if constexpr (!kRms) mean_out[row] = shift + mean_d;
      rstd_out[row] = rstd;
    }
    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<Stored, kVec> pack =
          cache_row ? cache[i] : ld.template reload<kVec>(offset + i * kVec);
      acc_t v[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        v[j] = static_cast<acc_t>(pack.val[j]) - shift;
      acc_t out[kVec];
      normalize_pack<kVec>(v, mean_d, rstd, weight, bias, i * kVec, out);
      store_as<kVec>(yr + i * kVec, out);
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace fastln
