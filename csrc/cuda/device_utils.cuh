// Device building blocks of the fastln CUDA kernels: vector packs, Welford /
// Chan statistics, plain sums, and warp / block all-reductions.
//
// This header is deliberately torch-free (it includes only the device seam,
// device_runtime.cuh) so that it can be read, reused and tested on its own,
// and so that the SIMT build runs it on the CPU. Element types are
// template parameters converted with static_cast, which c10::Half and
// c10::BFloat16 support in device code.
//
// Conventions: acc_t is the accumulation type (float, or double for double
// input). Every block has a multiple of 32 threads and at most 1024, so warps
// are always full and a block has at most 32 warps.
#pragma once

#include <cstdint>

#include "device_runtime.cuh"

namespace fastln {
namespace cuda {

constexpr int kWarpSize = 32;
// Every warp lane takes part in every shuffle (warps are always full, see
// above), so the shuffles use the full-warp mask.
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------
// Vector packs.

// kSize consecutive elements accessed with one (or, above 16 bytes, several)
// vector instruction(s). The alignment is the pack's size capped at 16 bytes,
// the widest vector access of the GPU: Pack<half, 8> and Pack<float, 4> are
// single 16-byte accesses; Pack<float, 8> (float weights of half input) is
// two. A pointer may be cast to Pack only when it is aligned to alignof(Pack),
// which the host checks before it picks a vectorized kernel.
template <typename T, int kSize>
struct alignas(sizeof(T) * kSize > 16 ? 16 : sizeof(T) * kSize) Pack {
  T val[kSize];
};

template <typename T, int kSize>
__device__ __forceinline__ Pack<T, kSize> load_pack(const T* ptr) {
  return *reinterpret_cast<const Pack<T, kSize>*>(ptr);
}

template <typename T, int kSize>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, kSize>& p) {
  *reinterpret_cast<Pack<T, kSize>*>(ptr) = p;
}

// Loads kSize elements of type T from ptr into acc_t registers.
template <typename acc_t, int kSize, typename T>
__device__ __forceinline__ void load_as(const T* ptr, acc_t* out) {
  const Pack<T, kSize> p = load_pack<T, kSize>(ptr);
#pragma unroll
  for (int j = 0; j < kSize; ++j) out[j] = static_cast<acc_t>(p.val[j]);
}

// Stores kSize acc_t values to ptr as type T.
template <int kSize, typename T, typename acc_t>
__device__ __forceinline__ void store_as(T* ptr, const acc_t* in) {
  Pack<T, kSize> p;
#pragma unroll
  for (int j = 0; j < kSize; ++j) p.val[j] = static_cast<T>(in[j]);
  store_pack<T, kSize>(ptr, p);
}

// True when ptr may be accessed as Pack<T, kSize> (host and device).
template <typename T, int kSize>
__host__ __device__ inline bool is_pack_aligned(const void* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % alignof(Pack<T, kSize>) == 0;
}

// ---------------------------------------------------------------------------
// Math in acc_t. No fast math: IEEE division, and rsqrtf (<= 2 ulp, the
// function torch's own CUDA layer norm uses) for float.

__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

// ---------------------------------------------------------------------------
// Welford / Chan statistics.
//
// A state summarizes `count` values by their mean and their sum of squared
// deviations m2 = sum (x - mean)^2. Unlike sum(x) / sum(x^2), it does not
// cancel when |mean| >> std. The kernels feed it x - shift, with shift the
// row's first element: the merges then work on values of the scale of the
// row's spread rather than of its offset, where the rounded partial means
// would carry errors of a good fraction of a std (float32 holds 1e4 only to
// 1e-3), and the output is formed as ((x - shift) - mean) * rstd. count is kept
// in acc_t so that it shuffles and divides like the rest; float counts are
// exact up to 2^24 elements per row, and above that a count's relative rounding
// (< 2^-24) is far below the rounding of the statistics themselves.
template <typename acc_t>
struct WelfordState {
  acc_t mean;
  acc_t m2;
  acc_t count;
};

// Chan et al.'s pairwise merge of two states. An empty state (count 0, the
// state of a thread that owns no element of the row) is the identity, and
// two empty states give an empty state instead of 0 / 0.
template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> welford_merge(
    const WelfordState<acc_t>& a, const WelfordState<acc_t>& b) {
  // An empty operand returns the other one exactly. The general formula only
  // makes it the identity in exact arithmetic: its delta * delta * a.count *
  // nb_over_n is inf * 0 = NaN once delta^2 overflows (|mean| > ~1.8e19 in
  // float, a finite row), and a.mean + (b.mean - a.mean) * 0 is NaN for an
  // infinite mean. Empty states are common: the lanes past a row's end in the
  // register kernels, and the padding lanes of block_allreduce's last step.
  if (b.count == acc_t(0)) return a;
  if (a.count == acc_t(0)) return b;
  const acc_t count = a.count + b.count;
  const acc_t nb_over_n = count == acc_t(0) ? acc_t(0) : b.count / count;
  const acc_t delta = b.mean - a.mean;
  WelfordState<acc_t> r;
  r.mean = a.mean + delta * nb_over_n;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * nb_over_n;
  r.count = count;
  return r;
}

// The state of kSize values held in registers, by an exact two-pass over
// them (their sum, then the squared deviations from their mean).
template <int kSize, typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> welford_of(const acc_t* v) {
  acc_t sum = 0;
#pragma unroll
  for (int j = 0; j < kSize; ++j) sum += v[j];
  const acc_t mean = sum / static_cast<acc_t>(kSize);
  acc_t m2 = 0;
#pragma unroll
  for (int j = 0; j < kSize; ++j) {
    const acc_t d = v[j] - mean;
    m2 += d * d;
  }
  return {mean, m2, static_cast<acc_t>(kSize)};
}

// ---------------------------------------------------------------------------
// Shuffles of the reduction states. __shfl_*_sync handle 64-bit types
// (double) as two 32-bit shuffles.

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> shfl_down(
    const WelfordState<acc_t>& s, int offset, int width) {
  return {__shfl_down_sync(kFullMask, s.mean, offset, width),
          __shfl_down_sync(kFullMask, s.m2, offset, width),
          __shfl_down_sync(kFullMask, s.count, offset, width)};
}

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> shfl_leader(
    const WelfordState<acc_t>& s, int width) {
  return {__shfl_sync(kFullMask, s.mean, 0, width),
          __shfl_sync(kFullMask, s.m2, 0, width),
          __shfl_sync(kFullMask, s.count, 0, width)};
}

// Three sums reduced together (the backward's sum(d), sum(g), sum(g * d)).
template <typename acc_t>
struct SumTriple {
  acc_t a;
  acc_t b;
  acc_t c;
};

template <typename acc_t>
__device__ __forceinline__ SumTriple<acc_t> shfl_down(const SumTriple<acc_t>& s,
                                                      int offset, int width) {
  return {__shfl_down_sync(kFullMask, s.a, offset, width),
          __shfl_down_sync(kFullMask, s.b, offset, width),
          __shfl_down_sync(kFullMask, s.c, offset, width)};
}

template <typename acc_t>
__device__ __forceinline__ SumTriple<acc_t> shfl_leader(
    const SumTriple<acc_t>& s, int width) {
  return {__shfl_sync(kFullMask, s.a, 0, width),
          __shfl_sync(kFullMask, s.b, 0, width),
          __shfl_sync(kFullMask, s.c, 0, width)};
}

// One sum (RMSNorm's sum of squares in the forward, sum(g * x) in the
// backward): the mean-free norm needs neither Welford's state nor the
// backward's other two sums, so it shuffles a third of the data.
template <typename acc_t>
struct SumState {
  acc_t sum;
};

template <typename acc_t>
__device__ __forceinline__ SumState<acc_t> shfl_down(const SumState<acc_t>& s,
                                                     int offset, int width) {
  return {__shfl_down_sync(kFullMask, s.sum, offset, width)};
}

template <typename acc_t>
__device__ __forceinline__ SumState<acc_t> shfl_leader(const SumState<acc_t>& s,
                                                       int width) {
  return {__shfl_sync(kFullMask, s.sum, 0, width)};
}

template <typename acc_t>
__device__ __forceinline__ SumState<acc_t> reduce_op(const SumState<acc_t>& a,
                                                     const SumState<acc_t>& b) {
  return {a.sum + b.sum};
}

template <typename acc_t>
__device__ __forceinline__ WelfordState<acc_t> reduce_op(
    const WelfordState<acc_t>& a, const WelfordState<acc_t>& b) {
  return welford_merge(a, b);
}

template <typename acc_t>
__device__ __forceinline__ SumTriple<acc_t> reduce_op(
    const SumTriple<acc_t>& a, const SumTriple<acc_t>& b) {
  return {a.a + b.a, a.b + b.b, a.c + b.c};
}

// ---------------------------------------------------------------------------
// All-reductions.

// Reduces `s` over each aligned group of `width` lanes (width a power of two,
// 1..32) and returns the group's result to every lane of the group. The tree
// uses shuffle-down, so only the group's first lane holds the full result,
// which is then broadcast: the merge is not symmetric in its arguments, and a
// butterfly would leave the lanes of a row with results that differ in the
// last bit. Every lane of the warp must call this with the same width.
template <typename State>
__device__ __forceinline__ State group_allreduce(State s, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2)
    s = reduce_op(s, shfl_down(s, offset, width));
  return shfl_leader(s, width);
}

// Reduces `s` over the whole block and returns the result to every thread.
// `scratch` is shared memory for kWarpSize + 1 states. Every thread of the
// block must call this (it synchronizes). A second call may follow at once
// with the same scratch: its first write to scratch[warp] cannot overtake a
// read of this call, since warp 0 reads scratch[0..31] before the second
// barrier here, and scratch[kWarpSize] is written only after the next call's
// first barrier, which every thread reaches after reading the result.
template <typename State>
__device__ __forceinline__ State block_allreduce(State s,
                                                 smem_ptr<State> scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    s = reduce_op(s, shfl_down(s, offset, kWarpSize));
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  if (warp == 0) {
    // Warp results in warp order; lanes past the last warp contribute the
    // identity (a zero state is the identity of both reductions).
    State t{};
    if (lane < num_warps) t = scratch[lane];
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
      t = reduce_op(t, shfl_down(t, offset, kWarpSize));
    if (lane == 0) scratch[kWarpSize] = t;
  }
  __syncthreads();
  return scratch[kWarpSize];
}

// The reduction over one row's group of threads: a warp-shuffle reduction
// when the group is at most a warp (width a power of two), else the block
// reduction (the group is then the whole block: one row per block).
template <typename State>
__device__ __forceinline__ State row_allreduce(State s, int threads_per_row,
                                               smem_ptr<State> scratch) {
  if (threads_per_row <= kWarpSize) return group_allreduce(s, threads_per_row);
  return block_allreduce(s, scratch);
}

}  // namespace cuda
}  // namespace fastln
