// The tuning table of the fastln CUDA kernels: which kernel, and with how
// many threads, runs a row of N elements.
//
// Host-only and torch-free, so that tests/test_cuda_plan.py can compile it
// with a plain C++ compiler and check its invariants on a machine without a
// GPU. The kernels rely on those invariants (see the comments below).
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastln {
namespace cuda {

// Threads of a block that runs several rows (groups of at most a warp per
// row): 4 warps, small enough that a block is cheap to schedule even when M
// is small, large enough to amortize the block's own cost.
constexpr int kRowsBlockThreads = 128;
// Largest block of the register kernels (one row per block) and the block of
// the looping kernels: 512 threads leave each thread up to 128 registers
// (64K registers per SM), which the register kernels need for 32 floats of
// row plus addressing.
constexpr int kMaxBlockThreads = 512;
// Elements of a row that one thread holds in registers, the template
// parameter `kCols` of the register kernels: 8 (one 16-byte pack of half),
// 16 or 32. A thread also needs registers for the parameters and addresses,
// so the backward, which keeps x, dy and two column sums per element, stops
// at 16, and double (two registers per value) at half of those.
constexpr int kColOptions[3] = {8, 16, 32};
// Grid cap of the kernels whose grid only has to cover the rows (they loop
// over rows with a grid stride, so any cap is correct): 65536 blocks is far
// more than any GPU holds at once (132 SMs x 16 blocks on an H100).
constexpr int64_t kMaxGrid = 65536;
// Bytes of the backward's looping-kernel workspace of column partial sums
// ([blocks, 2, N] in acc_t) that we accept; with N = 2^20 floats this still
// leaves 16 blocks to share the rows.
constexpr int64_t kMaxWorkspaceBytes = int64_t{128} << 20;

enum class RowKernel {
  // The row lives in registers: `cols_per_thread` elements per thread,
  // `threads_per_row` threads per row, `block_threads` threads per block.
  kRegisters,
  // One block per row loops over the row in global (or shared) memory.
  kLoop,
};

struct RowPlan {
  RowKernel kernel;
  int cols_per_thread;  // kRegisters only
  int threads_per_row;  // 1..32 (a power of two) or == block_threads
  int block_threads;    // a multiple of 32, <= kMaxBlockThreads
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// The kernel for rows of N > 0 elements. `max_cols` is the largest
// cols_per_thread the kernel may use (32 or 16 for the forward of 4/2-byte
// and double input, 16 or 8 for the backward).
//
// 1. N <= 32 * max_cols: a group of threads_per_row <= 32 lanes (a power of
//    two, so that groups never straddle a warp and the shuffles of a group
//    stay inside it) handles a row, 128 / threads_per_row rows per block.
//    The fewest lanes that hold the row with the fewest columns per thread.
// 2. N <= 512 * max_cols: one block per row, row in registers; the smallest
//    cols_per_thread whose block (N / cols rounded up to whole warps) has at
//    most 512 threads, i.e. as many threads as possible per row.
// 3. Otherwise: the looping kernel, 512 threads per row.
// Invariant used by the kernels: threads_per_row * cols_per_thread >= N.
inline RowPlan plan_rows(int64_t N, int max_cols) {
  for (const int cols : kColOptions) {
    if (cols > max_cols) break;
    const int64_t lanes = next_pow2(ceil_div(N, cols));
    if (lanes <= 32)
      return {RowKernel::kRegisters, cols, static_cast<int>(lanes),
              kRowsBlockThreads};
  }
  for (const int cols : kColOptions) {
    if (cols > max_cols) break;
    const int64_t threads = ceil_div(ceil_div(N, cols), 32) * 32;
    if (threads <= kMaxBlockThreads)
      return {RowKernel::kRegisters, cols, static_cast<int>(threads),
              static_cast<int>(threads)};
  }
  return {RowKernel::kLoop, 0, kMaxBlockThreads, kMaxBlockThreads};
}

// cols_per_thread limits of plan_rows, by direction and accumulator size.
inline int forward_max_cols(int acc_bytes) { return acc_bytes == 8 ? 16 : 32; }
inline int backward_max_cols(int acc_bytes) { return acc_bytes == 8 ? 8 : 16; }

// Register-kernel blocks of the backward sum at least this many row groups
// each when the GPU stays busy anyway: every block writes (and the reduction
// reads) 2 * N acc_t of column partial sums, so with 8 rows of half x, dy and
// dx (48 N bytes) per block that traffic stays at a third of the data.
constexpr int64_t kMinRowGroupsPerBlock = 8;

// Blocks of the backward, which also sets the rows of the [blocks, 2, N]
// workspace of column partial sums. At most one wave of resident blocks
// (`resident` = SMs x blocks per SM by occupancy), so that each block sums
// many rows before writing its partial; for the register kernels also at
// most one block per kMinRowGroupsPerBlock row groups, but never fewer than
// one block per SM (`sms`); never more blocks than row groups (`row_groups`,
// so that every block owns a row and writes its whole partial); and for the
// looping kernel never more partials than kMaxWorkspaceBytes holds.
inline int64_t backward_blocks(int64_t row_groups, int64_t resident,
                               int64_t sms, int64_t N, int acc_bytes,
                               bool loop_kernel) {
  int64_t blocks = std::max<int64_t>(resident, 1);
  if (loop_kernel) {
    blocks = std::min(
        blocks, std::max<int64_t>(1, kMaxWorkspaceBytes / (2 * N * acc_bytes)));
  } else {
    blocks = std::min(
        blocks, std::max(ceil_div(row_groups, kMinRowGroupsPerBlock), sms));
  }
  return std::max<int64_t>(std::min(blocks, row_groups), 1);
}

}  // namespace cuda
}  // namespace fastln
