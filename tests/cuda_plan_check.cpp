// Host-side check of the CUDA tuning table (csrc/cuda/plan.h), compiled and
// run by tests/test_cuda_plan.py with a plain C++ compiler: no GPU, no torch.
// It checks, for every row length the kernels rely on, the invariants written
// in the comments of plan.h and of the kernels. Prints "ok" on success.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "cuda/plan.h"

using fastln::cuda::backward_blocks;
using fastln::cuda::backward_max_cols;
using fastln::cuda::forward_max_cols;
using fastln::cuda::RowKernel;
using fastln::cuda::RowPlan;

namespace {

int failures = 0;

void expect(bool ok, const char* what, int64_t N, int max_cols) {
  if (ok) return;
  if (++failures <= 20)
    std::printf("FAIL N=%lld max_cols=%d: %s\n", static_cast<long long>(N),
                max_cols, what);
}

bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

void check(int64_t N, int max_cols, bool backward, int acc_bytes) {
  const RowPlan p = fastln::cuda::plan_rows(N, max_cols);
  expect(p.block_threads % 32 == 0, "block is whole warps", N, max_cols);
  expect(p.block_threads >= 32 && p.block_threads <= 512, "block size", N,
         max_cols);
  expect(p.block_threads % p.threads_per_row == 0, "groups tile the block", N,
         max_cols);
  const bool group = p.threads_per_row <= 32;
  expect(
      group ? is_pow2(p.threads_per_row) : p.threads_per_row == p.block_threads,
      "a row is a power-of-two group within a warp or the whole block", N,
      max_cols);
  if (p.kernel == RowKernel::kRegisters) {
    expect(p.cols_per_thread == 8 || p.cols_per_thread == 16 ||
               p.cols_per_thread == 32,
           "cols is an instantiated kCols", N, max_cols);
    expect(p.cols_per_thread <= max_cols, "cols within the register budget", N,
           max_cols);
    expect(int64_t{p.threads_per_row} * p.cols_per_thread >= N,
           "the registers hold the row", N, max_cols);
    expect(N <= 512 * 32, "column index fits the int of the kernels", N,
           max_cols);
    // kVec is 8, 4, 2 or 1 and divides every kCols.
    expect(p.cols_per_thread % 8 == 0, "kCols is whole packs", N, max_cols);
    if (backward) {
      const int rows_per_block = p.block_threads / p.threads_per_row;
      const int64_t stage =
          rows_per_block > 1 ? 2 * int64_t{rows_per_block} * N * acc_bytes : 0;
      expect(stage <= 48 * 1024,
             "staging fits the default 48 KB of dynamic shared memory", N,
             max_cols);
    }
  } else {
    expect(N > 512 * max_cols, "loop kernel only past the register plans", N,
           max_cols);
    expect(p.block_threads == 512, "loop kernel block", N, max_cols);
  }
  // Never a block per row when a warp holds the row, and never a warp group
  // for a row it cannot hold.
  if (N <= 32 * max_cols)
    expect(p.kernel == RowKernel::kRegisters && group, "small rows use groups",
           N, max_cols);
}

}  // namespace

int main() {
  for (const bool backward : {false, true}) {
    for (const int acc_bytes : {4, 8}) {
      const int max_cols =
          backward ? backward_max_cols(acc_bytes) : forward_max_cols(acc_bytes);
      for (int64_t N = 1; N <= 70000; ++N)
        check(N, max_cols, backward, acc_bytes);
      for (int64_t N : {int64_t{262144}, int64_t{262145}, int64_t{1} << 20,
                        int64_t{1} << 31, (int64_t{1} << 33) + 7})
        check(N, max_cols, backward, acc_bytes);
    }
  }
  // backward_blocks: at least 1, at most the row groups and the resident
  // blocks, workspace within bounds for the looping kernel.
  for (int64_t groups : {int64_t{1}, int64_t{7}, int64_t{132}, int64_t{4096},
                         int64_t{1} << 22}) {
    for (int64_t resident : {int64_t{0}, int64_t{132}, int64_t{2112}}) {
      for (int64_t N :
           {int64_t{1}, int64_t{1024}, int64_t{1} << 20, int64_t{1} << 28}) {
        for (const bool loop : {false, true}) {
          const int64_t b = backward_blocks(groups, resident, 132, N, 4, loop);
          expect(b >= 1, "blocks >= 1", N, 0);
          expect(b <= groups, "blocks <= row groups", N, 0);
          expect(b <= std::max<int64_t>(resident, 1), "blocks <= resident", N,
                 0);
          if (loop && b > 1)
            expect(b * 2 * N * 4 <= fastln::cuda::kMaxWorkspaceBytes,
                   "workspace bound", N, 0);
        }
      }
    }
  }
  if (failures != 0) {
    std::printf("%d failures\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("ok\n");
  return EXIT_SUCCESS;
}
