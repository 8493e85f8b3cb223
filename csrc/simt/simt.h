// The SIMT runtime: the subset of CUDA that fastln's kernels use, for the
// host C++ compiler, so that the kernel source nvcc compiles also runs on the
// CPU (FASTLN_SIMT builds, module fastln._simt).
//
// Every CUDA thread of a block runs as a fiber on one OS thread; a fiber runs
// until it reaches a synchronization point (__syncthreads, __syncwarp, a
// shuffle) or returns, and the scheduler then resolves the synchronization
// with the CUDA C++ Programming Guide's semantics. Between synchronization
// points the fibers run in an order drawn from the schedule seed, so a result
// that depends on that order (a race) changes with the seed. Blocks are
// independent and run in parallel on a few OS threads.
//
// The checkers (each raises simt::Error naming the kernel, the block and the
// thread): shared-memory accesses out of bounds, misaligned, or reading bytes
// nothing wrote in this block; a __syncthreads that not every thread of the
// block reaches (or threads at different __syncthreads); a shuffle or
// __syncwarp whose mask names a lane that waits elsewhere, with a different
// mask or width, or reads a lane that does not take part; launches a GPU
// would refuse (block size, shared memory, registers). Global memory is
// checked by AddressSanitizer in FASTLN_SIMT_ASAN builds.
//
// Torch-free: shared by fastln._simt and the runtime's own C++ tests.
// Not a performance model.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// Qualifiers: no meaning on the host. __restrict__ is a GCC/Clang keyword.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

namespace fastln {
namespace simt {

constexpr int kWarpSize = 32;

// A checker's report. what() names the check, kernel, block and thread.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The emulated GPU: what the host path of the launchers asks the device.
struct DeviceDesc {
  const char* name;
  const char* arch;  // resource-usage table column: "sm_90", "sm_80"
  int sm_count;
  int64_t smem_per_block;        // without opt-in (48 KB)
  int64_t smem_per_block_optin;  // with cudaFuncSetAttribute
  int64_t smem_per_sm;
  int64_t smem_reserved_per_block;  // the runtime's own, per block (1 KB)
  int regs_per_sm;
  int regs_per_block;
  int max_threads_per_sm;
  int max_blocks_per_sm;
  int max_threads_per_block;
  // Bytes that cuobjdump adds to every kernel's static shared memory on
  // this architecture: sm_90 reports the 1 KB a block reserves for the
  // system (every sm_90 kernel shows 1024 more than its arrays), sm_80 does
  // not. The kernel's own static shared memory is the rest.
  int64_t table_reserved_smem;
};

// Selects the emulated device ("h100" or "a100") and the schedule seed
// (0: threads in index order; other values: a pseudo-random order per block
// and round). Throws std::invalid_argument for an unknown device.
void configure(const std::string& device, uint64_t schedule_seed);
const DeviceDesc& device();
uint64_t schedule_seed();

// Registers and static shared memory of a kernel on the emulated device's
// architecture, from the table that tools/simt_resources.py writes from
// cuobjdump of the nvcc build (csrc/simt/resource_usage.inc). Throws Error
// for a kernel missing from the table.
struct KernelResources {
  int regs;
  int64_t static_smem;
};
KernelResources kernel_resources(const std::string& kernel);
// Adds a kernel that is not in the table (the runtime's own tests), for
// every architecture.
void set_kernel_resources(const std::string& kernel, KernelResources r);
// cudaFuncAttributeMaxDynamicSharedMemorySize of a kernel (48 KB until set).
int64_t max_dynamic_smem(const std::string& kernel);
void set_max_dynamic_smem(const std::string& kernel, int64_t bytes);
// cudaOccupancyMaxActiveBlocksPerMultiprocessor.
int max_active_blocks_per_sm(const std::string& kernel, int block_threads,
                             int64_t dynamic_smem);

// The readable name of a kernel from the __PRETTY_FUNCTION__ of a function
// templated on it (`[with auto K = ns::kernel<T, 8>; ...]` -> "kernel<T, 8>"),
// the key of the resource table.
std::string kernel_name_from_signature(const char* pretty_function);

// Runs `body` (the kernel called with its arguments) once per thread of each
// block of `grid`, after the checks a GPU makes at launch.
void launch(const std::string& kernel, dim3 grid, dim3 block,
            int64_t dynamic_smem, const std::function<void()>& body);

// Launch log, for tests that check which kernels a call took.
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  int64_t dynamic_smem;
};
std::vector<LaunchRecord> launches();
void clear_launches();

// ---------------------------------------------------------------------------
// Device side.

struct ThreadView {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
// The CUDA thread running on this OS thread.
ThreadView& current();

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);

enum class ShflKind { kIdx, kUp, kDown, kXor };
// One shuffle of up to 8 bytes (`bits`, `size` bytes used).
uint64_t shuffle(ShflKind kind, unsigned mask, uint64_t bits, int size,
                 int lane_arg, int width, const char* file, int line);

template <typename T>
T shuffle_value(ShflKind kind, unsigned mask, T var, int lane_arg, int width,
                const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = shuffle(kind, mask, bits, sizeof(T), lane_arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Shared memory of the running block. A region is one __shared__ array (or
// the dynamic shared memory); every access goes through SharedPtr/SharedRef,
// which check bounds, alignment, that each byte read was written in this
// block, and that no two threads access a byte, one of them writing, without
// a synchronization between them that orders the two (a data race: a
// __syncthreads of the block, or for two lanes of one warp a shuffle or
// __syncwarp they both took part in). Regions start poisoned (0xff bytes:
// NaN as float/double).
struct ByteAccess {
  int32_t thread = -1;      // linear thread index; -1 none, -2 several readers
  uint32_t barriers = 0;    // the block's __syncthreads count at the access
  uint32_t warp_syncs = 0;  // the thread's warp-sync count at the access
};
struct ByteShadow {
  ByteAccess write;
  ByteAccess read;
};
struct SharedRegion {
  std::string name;
  std::vector<unsigned char> bytes;
  std::vector<ByteShadow> shadow;
  void read(int64_t offset, int64_t size, int64_t align, void* out);
  void write(int64_t offset, int64_t size, int64_t align, const void* in);
};

template <typename T>
class SharedRef {
 public:
  SharedRef(SharedRegion* region, int64_t offset)
      : region_(region), offset_(offset) {}
  operator T() const {
    T v;
    region_->read(offset_, sizeof(T), alignof(T), &v);
    return v;
  }
  const SharedRef& operator=(const T& v) const {
    region_->write(offset_, sizeof(T), alignof(T), &v);
    return *this;
  }
  const SharedRef& operator=(const SharedRef& other) const {
    return *this = static_cast<T>(other);
  }

 private:
  SharedRegion* region_;
  int64_t offset_;  // bytes
};

template <typename T>
class SharedPtr {
 public:
  SharedPtr(SharedRegion* region, int64_t offset)
      : region_(region), offset_(offset) {}
  SharedRef<T> operator[](int64_t i) const {
    return {region_, offset_ + i * static_cast<int64_t>(sizeof(T))};
  }
  SharedPtr operator+(int64_t i) const {
    return {region_, offset_ + i * static_cast<int64_t>(sizeof(T))};
  }

 private:
  SharedRegion* region_;
  int64_t offset_;  // bytes
};

// The block's region for a `__shared__ T name[count]` declaration (made by
// the first thread that reaches it) and the dynamic shared memory.
SharedRegion* static_shared_region(const char* name, int64_t bytes,
                                   int64_t align);
SharedRegion* dynamic_shared_region();

template <typename T>
SharedPtr<T> static_shared(int64_t count, const char* name) {
  return {static_shared_region(name, count * static_cast<int64_t>(sizeof(T)),
                               alignof(T)),
          0};
}
template <typename T>
SharedPtr<T> dynamic_shared() {
  return {dynamic_shared_region(), 0};
}

// Math functions of the kernels. rsqrt on a GPU is an approximation within
// 2 ulp; here it is 1 / sqrt, so results may differ from a GPU's in the last
// bits (compare with tolerances, never bitwise, across the two).
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }

}  // namespace simt
}  // namespace fastln

#define threadIdx (::fastln::simt::current().thread_idx)
#define blockIdx (::fastln::simt::current().block_idx)
#define blockDim (::fastln::simt::current().block_dim)
#define gridDim (::fastln::simt::current().grid_dim)
#define warpSize (::fastln::simt::kWarpSize)

// The intrinsics record their call site (for the checkers' messages and the
// same-site check of barriers and shuffles).
inline void __syncthreads(const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  fastln::simt::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  fastln::simt::syncwarp(mask, file, line);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return fastln::simt::shuffle_value(fastln::simt::ShflKind::kIdx, mask, var,
                                     src_lane, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return fastln::simt::shuffle_value(fastln::simt::ShflKind::kUp, mask, var,
                                     static_cast<int>(delta), width, file,
                                     line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return fastln::simt::shuffle_value(fastln::simt::ShflKind::kDown, mask, var,
                                     static_cast<int>(delta), width, file,
                                     line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return fastln::simt::shuffle_value(fastln::simt::ShflKind::kXor, mask, var,
                                     lane_mask, width, file, line);
}
