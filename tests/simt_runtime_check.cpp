// The SIMT runtime's own tests (csrc/simt), compiled with a plain C++
// compiler by tests/test_simt_runtime.py: no torch, no GPU.
//
//   simt_runtime_check intrinsics   the intrinsics against the CUDA C++
//                                   Programming Guide's definitions
//   simt_runtime_check checkers     each checker on a deliberately broken
//                                   kernel that it must catch
//   simt_runtime_check global-oob   a kernel reading past a global buffer
//                                   (built with -fsanitize=address: ASan
//                                   reports it and stops the process)
// Prints "ok" last on success.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "simt/simt.h"

namespace simt = fastln::simt;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (ok) return;
  ++failures;
  std::printf("FAIL %s\n", what.c_str());
}

// Runs `kernel` over grid x block (test kernels are not in the nvcc resource
// table: they get a small register count and no static shared memory).
void run(const std::string& name, dim3 grid, dim3 block, int64_t smem,
         const std::function<void()>& kernel, int64_t static_smem = 0) {
  simt::set_kernel_resources(name, {32, static_smem});
  simt::launch(name, grid, block, smem, kernel);
}

// ---------------------------------------------------------------------------
// Intrinsics.

// One warp; out[lane] = the shuffle's result for that lane.
std::vector<int> warp_results(const std::function<int(int lane)>& body,
                              int threads = 32) {
  std::vector<int> out(threads, -1);
  run("warp_results", dim3(1), dim3(threads), 0, [&] {
    const int lane = static_cast<int>(threadIdx.x);
    out[lane] = body(lane);
  });
  return out;
}

void check_shuffles() {
  // __shfl_sync: "returns the value of var held by the thread whose ID is
  // given by srcLane ... If srcLane is outside the range [0:width-1], the
  // value returned corresponds to the value of var held by the srcLane
  // modulo width (i.e. within the same subsection)".
  for (const int src : {3, 11, 35}) {
    const auto r = warp_results(
        [&](int lane) { return __shfl_sync(0xffffffffu, lane * 10, src, 8); });
    for (int l = 0; l < 32; ++l)
      expect(r[l] == ((l / 8) * 8 + src % 8) * 10,
             "__shfl_sync width 8 src " + std::to_string(src) + " lane " +
                 std::to_string(l));
  }
  // __shfl_up_sync: "The source lane index will not wrap around the value of
  // width, so effectively the lower delta lanes will be unchanged."
  {
    const auto r =
        warp_results([](int lane) { return __shfl_up_sync(~0u, lane, 2, 8); });
    for (int l = 0; l < 32; ++l)
      expect(r[l] == (l % 8 < 2 ? l : l - 2),
             "__shfl_up_sync lane " + std::to_string(l));
  }
  // __shfl_down_sync: "the upper delta lanes will remain unchanged": past the
  // end of its width segment a lane gets its own value.
  {
    const auto r = warp_results(
        [](int lane) { return __shfl_down_sync(~0u, lane, 3, 16); });
    for (int l = 0; l < 32; ++l)
      expect(r[l] == (l % 16 + 3 >= 16 ? l : l + 3),
             "__shfl_down_sync lane " + std::to_string(l));
  }
  // __shfl_xor_sync: a butterfly; "if width is less than warpSize then each
  // group of width consecutive threads are able to access elements from
  // earlier groups of threads, however if they attempt to access elements
  // from later groups of threads their own value of var will be returned."
  {
    const auto r =
        warp_results([](int lane) { return __shfl_xor_sync(~0u, lane, 1); });
    for (int l = 0; l < 32; ++l)
      expect(r[l] == (l ^ 1), "__shfl_xor_sync lane " + std::to_string(l));
    const auto g =
        warp_results([](int lane) { return __shfl_xor_sync(~0u, lane, 8, 8); });
    for (int l = 0; l < 32; ++l) {
      const int j = l ^ 8;
      expect(g[l] == (j / 8 > l / 8 ? l : j),
             "__shfl_xor_sync width 8 lane " + std::to_string(l));
    }
  }
  // 64-bit values move whole.
  {
    std::vector<double> out(32);
    run("shfl_double", dim3(1), dim3(32), 0, [&] {
      const int lane = static_cast<int>(threadIdx.x);
      out[lane] = __shfl_down_sync(~0u, lane + 0.25 + 1e-12 * lane, 1);
    });
    for (int l = 0; l < 32; ++l) {
      const int s = l == 31 ? l : l + 1;
      expect(out[l] == s + 0.25 + 1e-12 * s,
             "double shuffle lane " + std::to_string(l));
    }
  }
  // Two half-warps with their own masks synchronize separately.
  {
    const auto r = warp_results([](int lane) {
      const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
      __syncwarp(mask);
      return __shfl_sync(mask, lane, 0, 16);
    });
    for (int l = 0; l < 32; ++l)
      expect(r[l] == (l < 16 ? 0 : 16),
             "half-warp masks lane " + std::to_string(l));
  }
  // Lanes that have exited may be named in the mask ("all non-exited
  // threads named in mask must execute the same intrinsic").
  {
    const auto r = warp_results([](int lane) {
      if (lane >= 16) return -2;
      return __shfl_xor_sync(~0u, lane, 1);
    });
    for (int l = 0; l < 16; ++l)
      expect(r[l] == (l ^ 1),
             "exited lanes in mask, lane " + std::to_string(l));
  }
}

void check_indices_and_shared() {
  // threadIdx / blockIdx / blockDim / gridDim over a 3-D grid of 3-D blocks;
  // static shared memory per block, visible after __syncthreads.
  const dim3 grid(3, 2, 2);
  const dim3 block(4, 8, 2);
  const int threads = 4 * 8 * 2;
  std::vector<int> out(12 * threads, -1);
  run(
      "indices", grid, block, 0,
      [&] {
        const auto s = simt::static_shared<int>(64, "s");
        const int t = static_cast<int>(
            threadIdx.x +
            blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
        const int b = static_cast<int>(
            blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
        s[t] = b * 1000 + t;
        __syncthreads();
        out[b * threads + t] = s[(t + 1) % threads];
      },
      256);
  for (int b = 0; b < 12; ++b)
    for (int t = 0; t < threads; ++t)
      expect(out[b * threads + t] == b * 1000 + (t + 1) % threads,
             "indices/shared block " + std::to_string(b) + " thread " +
                 std::to_string(t));
  // Dynamic shared memory: the launch's size, one region per block.
  std::vector<float> dyn(4 * 64, -1);
  run("dynamic", dim3(4), dim3(64), 64 * sizeof(float), [&] {
    const auto d = simt::dynamic_shared<float>();
    d[threadIdx.x] = static_cast<float>(blockIdx.x * 100 + threadIdx.x);
    __syncthreads();
    dyn[blockIdx.x * 64 + threadIdx.x] = d[63 - threadIdx.x];
  });
  for (int b = 0; b < 4; ++b)
    for (int t = 0; t < 64; ++t)
      expect(dyn[b * 64 + t] == static_cast<float>(b * 100 + 63 - t),
             "dynamic shared block " + std::to_string(b));
}

// ---------------------------------------------------------------------------
// Checkers: each broken kernel must raise simt::Error naming the check, the
// kernel, a block and a thread.

void expect_error(const std::string& check, const std::string& kernel,
                  const std::function<void()>& launch,
                  bool names_thread = true) {
  try {
    launch();
  } catch (const simt::Error& e) {
    const std::string what = e.what();
    expect(what.find(check) != std::string::npos,
           kernel + ": message names the check '" + check + "': " + what);
    expect(what.find("kernel " + kernel) != std::string::npos,
           kernel + ": message names the kernel: " + what);
    expect(what.find("block (") != std::string::npos,
           kernel + ": message names the block: " + what);
    if (names_thread)
      expect(what.find("thread (") != std::string::npos,
             kernel + ": message names the thread: " + what);
    std::printf("caught: %s\n", what.c_str());
    return;
  }
  expect(false, kernel + ": the broken kernel was not caught");
}

void check_checkers() {
  expect_error("shared memory out of bounds", "smem_oob_write", [] {
    run(
        "smem_oob_write", dim3(2), dim3(64), 0,
        [] {
          const auto s = simt::static_shared<float>(64, "s");
          s[threadIdx.x + 1] = 1.0f;  // one past the end for the last thread
        },
        256);
  });
  expect_error("shared memory out of bounds", "smem_oob_read", [] {
    run("smem_oob_read", dim3(1), dim3(32), 128, [] {
      const auto d = simt::dynamic_shared<float>();
      d[threadIdx.x] = 0.0f;
      __syncthreads();
      volatile float v = d[threadIdx.x + 1];  // reads d[32] of 32 floats
      (void)v;
    });
  });
  expect_error("uninitialized shared memory", "smem_uninit_read", [] {
    run(
        "smem_uninit_read", dim3(1), dim3(32), 0,
        [] {
          const auto s = simt::static_shared<int>(32, "s");
          if (threadIdx.x < 31) s[threadIdx.x] = 1;  // s[31] never written
          __syncthreads();
          volatile int v = s[31];
          (void)v;
        },
        128);
  });
  expect_error("misaligned shared memory access", "smem_misaligned", [] {
    run("smem_misaligned", dim3(1), dim3(32), 64, [] {
      const auto d = simt::dynamic_shared<char>();
      const auto f = simt::SharedPtr<float>(simt::dynamic_shared_region(), 2);
      d[threadIdx.x] = 0;
      f[0] = 1.0f;  // a float at byte 2
    });
  });
  expect_error("shared memory race", "smem_race_write_after_read", [] {
    run(
        "smem_race_write_after_read", dim3(1), dim3(64), 0,
        [] {
          const auto s = simt::static_shared<int>(64, "s");
          const int t = static_cast<int>(threadIdx.x);
          s[t] = t;
          __syncthreads();
          s[t] = 2 * t;  // thread 1 overwrites s[1] after thread 0 read it
          volatile int v = s[(t + 1) % 64];
          (void)v;
        },
        256);
  });
  expect_error("shared memory race", "smem_race_read_after_write", [] {
    run(
        "smem_race_read_after_write", dim3(1), dim3(64), 0,
        [] {
          const auto s = simt::static_shared<int>(1, "s");
          if (threadIdx.x == 0) s[0] = 1;
          __syncthreads();
          if (threadIdx.x == 1) s[0] = 2;  // the barrier between is missing
          if (threadIdx.x == 2) {
            volatile int v = s[0];
            (void)v;
          }
        },
        16);
  });
  expect_error("shared memory race", "smem_race_two_writers", [] {
    run(
        "smem_race_two_writers", dim3(1), dim3(64), 0,
        [] {
          const auto s = simt::static_shared<int>(1, "s");
          s[0] = static_cast<int>(threadIdx.x);
        },
        16);
  });
  // A warp sync orders the accesses of its lanes: no race here.
  run(
      "warp_ordered", dim3(1), dim3(32), 0,
      [] {
        const auto s = simt::static_shared<int>(32, "s");
        s[threadIdx.x] = static_cast<int>(threadIdx.x);
        __syncwarp();
        volatile int v = s[(threadIdx.x + 1) % 32];
        (void)v;
      },
      128);
  expect_error("divergent __syncthreads", "barrier_some_threads", [] {
    run("barrier_some_threads", dim3(1), dim3(64), 0, [] {
      if (threadIdx.x < 48) __syncthreads();  // the rest return
    });
  });
  expect_error("divergent __syncthreads", "barrier_two_sites", [] {
    run("barrier_two_sites", dim3(1), dim3(64), 0, [] {
      if (threadIdx.x < 32) {
        __syncthreads();
      } else {
        __syncthreads();
      }
    });
  });
  expect_error("divergent warp sync", "shuffle_lane_at_barrier", [] {
    run("shuffle_lane_at_barrier", dim3(1), dim3(32), 0, [] {
      if (threadIdx.x == 31) {
        __syncthreads();  // lane 31 never reaches the shuffle
        return;
      }
      volatile int v = __shfl_down_sync(~0u, 1, 1);
      (void)v;
    });
  });
  expect_error("shuffle source", "shuffle_reads_exited_lane", [] {
    run("shuffle_reads_exited_lane", dim3(1), dim3(32), 0, [] {
      if (threadIdx.x == 31) return;  // named in the mask, then read
      volatile int v = __shfl_down_sync(~0u, 1, 1);
      (void)v;
    });
  });
  expect_error("divergent warp sync", "syncwarp_mismatch", [] {
    run("syncwarp_mismatch", dim3(1), dim3(32), 0, [] {
      if (threadIdx.x < 16)
        __syncwarp(0x0000ffffu);
      else
        __syncwarp(0xffffffffu);  // names lanes 0..15, which use another mask
    });
  });
  expect_error("shuffle width", "shuffle_width_mismatch", [] {
    run("shuffle_width_mismatch", dim3(1), dim3(32), 0, [] {
      const int width = threadIdx.x == 5 ? 16 : 32;
      volatile int v = __shfl_down_sync(~0u, 1, 1, width);
      (void)v;
    });
  });
  expect_error("shuffle width", "shuffle_width_not_pow2", [] {
    run("shuffle_width_not_pow2", dim3(1), dim3(32), 0, [] {
      volatile int v = __shfl_xor_sync(~0u, 1, 1, 12);
      (void)v;
    });
  });
  expect_error("warp sync", "mask_without_caller", [] {
    run("mask_without_caller", dim3(1), dim3(32), 0, [] {
      volatile int v = __shfl_sync(0x1u, 1, 0);  // lanes 1..31 not in mask
      (void)v;
    });
  });
  // What a GPU refuses at launch: more dynamic shared memory than the
  // kernel's attribute allows (the opt-in was forgotten).
  try {
    run("no_optin", dim3(1), dim3(32), 64 * 1024, [] {});
    expect(false, "no_optin: a 64 KB launch without the opt-in ran");
  } catch (const simt::Error& e) {
    expect(std::string(e.what()).find("launch refused") != std::string::npos,
           std::string("no_optin: ") + e.what());
  }
  simt::set_max_dynamic_smem("no_optin", 64 * 1024);
  run("no_optin", dim3(1), dim3(32), 64 * 1024, [] {});
}

// Order dependence: a kernel whose result depends on the thread order (a
// write-write race on global memory, which the shared-memory race check
// does not see) gives different outputs under different schedule seeds,
// which comparing the outputs of several seeds reports.
void check_order_dependence() {
  auto racy = [](uint64_t seed) {
    simt::configure("h100", seed);
    int out = -1;
    run("racy", dim3(1), dim3(64), 0,
        [&] { out = static_cast<int>(threadIdx.x); });  // every thread
    return out;
  };
  auto fixed = [](uint64_t seed) {
    simt::configure("h100", seed);
    int out = -1;
    run(
        "fixed", dim3(1), dim3(64), 0,
        [&] {
          const auto s = simt::static_shared<int>(64, "s");
          s[threadIdx.x] = static_cast<int>(threadIdx.x);
          __syncthreads();
          if (threadIdx.x == 0) {
            int t = 0;
            for (int i = 0; i < 64; ++i) t = t * 3 + s[i];
            out = t;
          }
        },
        256);
    return out;
  };
  bool racy_differs = false;
  bool fixed_differs = false;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    racy_differs |= racy(seed) != racy(0);
    fixed_differs |= fixed(seed) != fixed(0);
  }
  expect(racy_differs, "a racy kernel gives the same output under 9 seeds");
  expect(!fixed_differs, "a race-free kernel depends on the seed");
  simt::configure("h100", 0);
}

int global_oob() {
  std::vector<float> x(100, 1.0f);
  float sum = 0;
  run("global_oob", dim3(1), dim3(128), 0, [&] {
    // The bug: the bound is the block, not the buffer.
    const float v = x.data()[threadIdx.x];
    if (threadIdx.x == 0) sum = v;
  });
  std::printf("global_oob ran to the end (%g): not caught\n", sum);
  return EXIT_FAILURE;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  if (what == "global-oob") return global_oob();
  if (what == "intrinsics") {
    check_shuffles();
    check_indices_and_shared();
  } else if (what == "checkers") {
    check_checkers();
    check_order_dependence();
  } else {
    std::printf("usage: %s intrinsics|checkers|global-oob\n", argv[0]);
    return EXIT_FAILURE;
  }
  if (failures != 0) {
    std::printf("%d failures\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("ok\n");
  return EXIT_SUCCESS;
}
