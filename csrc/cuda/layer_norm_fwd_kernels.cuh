// Forward kernels of the fastln CUDA backend (the math is at the top of
// layer_norm_fwd.cu, which launches them). T: input, W: weight/bias, Y:
// output (T, or float for half/bfloat16 input: the float-output forward of
// CUDA autocast, which reads the 16-bit input as it is). Torch-free: nvcc
// compiles them for the GPU, and the SIMT build (csrc/simt) compiles the same
// source for the CPU.
#pragma once

#include <cstdint>

#include "device_utils.cuh"
#include "plan.h"

namespace fastln {
namespace cuda {
namespace {

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
// threads_per_row * kCols >= N, and N % kVec == 0 with 16-byte aligned x, y,
// weight, bias when kVec > 1 (a pack is then either wholly inside the row or
// wholly outside). Columns fit in int: N <= 512 * 32.
//
// The blocks loop over groups of rows with a grid stride; the loop bound is
// the same for the whole block, so every lane of every warp reaches the
// shuffles and barriers of the reduction, and lanes of rows past M just
// compute on zeros and store nothing.
template <typename T, typename W, typename Y, typename acc_t, int kVec,
          int kCols>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_fwd_reg_kernel(const T* __restrict__ x,
                              const W* __restrict__ weight,
                              const W* __restrict__ bias, Y* __restrict__ y,
                              acc_t* __restrict__ mean_out,
                              acc_t* __restrict__ rstd_out, int64_t M, int N,
                              int threads_per_row, acc_t eps) {
  static_assert(kCols % kVec == 0, "a thread holds whole packs");
  constexpr int kPacks = kCols / kVec;
  FASTLN_SHARED_ARRAY(WelfordState<acc_t>, scratch, kWarpSize + 1);
  const int rows_per_block = blockDim.x / threads_per_row;
  const int group = threadIdx.x / threads_per_row;
  const int lane = threadIdx.x % threads_per_row;

  for (int64_t first = int64_t{blockIdx.x} * rows_per_block; first < M;
       first += int64_t{gridDim.x} * rows_per_block) {
    const int64_t row = first + group;
    const bool row_ok = row < M;
    const int64_t offset = (row_ok ? row : 0) * N;
    // Every lane of the row reads the same first element (one broadcast).
    const acc_t shift = row_ok ? static_cast<acc_t>(x[offset]) : acc_t(0);

    // Load the row as d = x - shift, and this thread's exact two-pass
    // statistics of its elements; the Chan merge then combines the threads'
    // statistics.
    acc_t v[kCols];
    acc_t sum = 0;
    int count = 0;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int col = (p * threads_per_row + lane) * kVec;
      if (row_ok && col < N) {
        load_as<acc_t, kVec>(x + offset + col, v + p * kVec);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          v[p * kVec + j] -= shift;
          sum += v[p * kVec + j];
        }
        count += kVec;
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[p * kVec + j] = 0;
      }
    }
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
    const acc_t mean_d = stats.mean;
    const acc_t rstd = rsqrt_acc(stats.m2 / static_cast<acc_t>(N) + eps);
    if (row_ok && lane == 0) {
      mean_out[row] = shift + mean_d;
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
// the output. When `cache_row` is set the first pass also copies the row (in
// T) to dynamic shared memory, N * sizeof(T) bytes, and the second pass reads
// it from there, so the row comes from global memory once; otherwise the
// second pass reads global memory again (mostly an L2 hit). Each thread
// touches the same packs in both passes, so the cache needs no barrier.
// Requires N % kVec == 0 and aligned pointers when kVec > 1.
template <typename T, typename W, typename Y, typename acc_t, int kVec>
__global__ void __launch_bounds__(kMaxBlockThreads)
    layer_norm_fwd_loop_kernel(const T* __restrict__ x,
                               const W* __restrict__ weight,
                               const W* __restrict__ bias, Y* __restrict__ y,
                               acc_t* __restrict__ mean_out,
                               acc_t* __restrict__ rstd_out, int64_t M,
                               int64_t N, acc_t eps, bool cache_row) {
  const smem_ptr<Pack<T, kVec>> cache = dynamic_shared<Pack<T, kVec>>();
  FASTLN_SHARED_ARRAY(WelfordState<acc_t>, scratch, kWarpSize + 1);
  const int64_t num_packs = N / kVec;

  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const T* xr = x + row * N;
    Y* yr = y + row * N;
    const acc_t shift = static_cast<acc_t>(xr[0]);
    WelfordState<acc_t> stats{0, 0, 0};
    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<T, kVec> pack = load_pack<T, kVec>(xr + i * kVec);
      if (cache_row) cache[i] = pack;
      acc_t v[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        v[j] = static_cast<acc_t>(pack.val[j]) - shift;
      stats = welford_merge(stats, welford_of<kVec>(v));
    }
    stats = block_allreduce(stats, scratch);
    const acc_t mean_d = stats.mean;
    const acc_t rstd = rsqrt_acc(stats.m2 / static_cast<acc_t>(N) + eps);
    if (threadIdx.x == 0) {
      mean_out[row] = shift + mean_d;
      rstd_out[row] = rstd;
    }
    for (int64_t i = threadIdx.x; i < num_packs; i += blockDim.x) {
      const Pack<T, kVec> pack =
          cache_row ? cache[i] : load_pack<T, kVec>(xr + i * kVec);
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
