// The SIMT runtime (see simt.h): fibers, the block scheduler, the
// synchronization semantics, the checkers and the emulated devices.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "simt.h"

#if defined(__SANITIZE_ADDRESS__)
#define FASTLN_SIMT_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fastln {
namespace simt {
namespace {

// ---------------------------------------------------------------------------
// Emulated devices. The numbers are NVIDIA's published limits: H100 SXM
// (sm_90) and A100 (sm_80). 227 KB / 163 KB is the opt-in shared memory per
// block, 228 KB / 164 KB the shared memory per SM, of which the driver keeps
// 1 KB per resident block.
const DeviceDesc kH100{"h100",     "sm_90", 132,   48 * 1024, 227 * 1024,
                       228 * 1024, 1024,    65536, 65536,     2048,
                       32,         1024,    1024};
const DeviceDesc kA100{"a100",     "sm_80", 108,   48 * 1024, 163 * 1024,
                       164 * 1024, 1024,    65536, 65536,     2048,
                       32,         1024,    0};

std::mutex g_config_mutex;
const DeviceDesc* g_device = &kH100;
uint64_t g_seed = 0;
std::map<std::string, int64_t> g_max_dynamic_smem;
std::vector<LaunchRecord> g_launches;
std::map<std::string, KernelResources> g_extra_resources;

// The resource-usage table of the nvcc build (see simt.h).
struct ResourceRow {
  const char* arch;
  const char* kernel;
  int regs;
  int64_t shared;
  int64_t stack;
  int64_t local;
};
const ResourceRow kResourceTable[] = {
#define FASTLN_SIMT_RESOURCES(arch, kernel, regs, shared, stack, local) \
  {arch, kernel, regs, shared, stack, local},
#include "resource_usage.inc"
#undef FASTLN_SIMT_RESOURCES
};

// ---------------------------------------------------------------------------
// Fibers. On x86-64 a context switch saves the callee-saved registers and
// the floating-point control words on the old stack and swaps stack
// pointers (a few nanoseconds; the kernels switch at every shuffle).
// Elsewhere ucontext does the same, with a system call per switch.

// Stack of one fiber: kernels keep a few hundred bytes of registers in
// their frames; AddressSanitizer's redzones need more.
#ifdef FASTLN_SIMT_ASAN
constexpr size_t kStackBytes = 512 * 1024;
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif

struct Stack {
  void* base = nullptr;  // the guard page, then the stack
  size_t bytes = 0;
  Stack() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    bytes = kStackBytes + page;
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::bad_alloc();
    // A stack overflow hits the guard page (a crash, not silent damage).
    mprotect(base, page, PROT_NONE);
  }
  ~Stack() {
#ifdef FASTLN_SIMT_ASAN
    // Fibers end inside a frame that never returns, whose redzones would
    // stay poisoned for whatever is mapped here next.
    __asan_unpoison_memory_region(bottom(), kStackBytes);
#endif
    munmap(base, bytes);
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* top() const { return static_cast<char*>(base) + bytes; }
  char* bottom() const { return top() - kStackBytes; }
};

#if defined(__x86_64__)
extern "C" void fastln_simt_switch(void** save_sp, void* load_sp);
extern "C" void fastln_simt_trampoline();
asm(R"(
  .text
  .globl fastln_simt_switch
  .hidden fastln_simt_switch
  .type fastln_simt_switch, @function
fastln_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastln_simt_switch, .-fastln_simt_switch

  .globl fastln_simt_trampoline
  .hidden fastln_simt_trampoline
  .type fastln_simt_trampoline, @function
fastln_simt_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r13, %rdi
  callq *%r12
  ud2
  .cfi_endproc
  .size fastln_simt_trampoline, .-fastln_simt_trampoline
)");

struct Context {
  void* sp = nullptr;
};

// Prepares `ctx` so that switching to it calls entry(arg) on `stack`. The
// frame matches fastln_simt_switch's pops: control words, r15..rbp (r12 =
// entry, r13 = arg), then the trampoline as return address; the trampoline
// starts with a 16-byte aligned stack, as its call requires.
void make_context(Context& ctx, const Stack& stack, void (*entry)(void*),
                  void* arg) {
#ifdef FASTLN_SIMT_ASAN
  // The stack's previous fiber never returned: its frames' redzones are
  // still poisoned.
  __asan_unpoison_memory_region(stack.bottom(), kStackBytes);
#endif
  auto top = reinterpret_cast<uintptr_t>(stack.top()) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top - 16 - 88);
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = fpcw;
  sp[1] = mxcsr;
  sp[2] = 0;                                  // r15
  sp[3] = 0;                                  // r14
  sp[4] = reinterpret_cast<uint64_t>(arg);    // r13
  sp[5] = reinterpret_cast<uint64_t>(entry);  // r12
  sp[6] = 0;                                  // rbx
  sp[7] = 0;                                  // rbp
  sp[8] = reinterpret_cast<uint64_t>(&fastln_simt_trampoline);
  ctx.sp = sp;
}

void switch_context(Context& from, Context& to) {
  fastln_simt_switch(&from.sp, to.sp);
}
#else
struct Context {
  ucontext_t uc;
};

void fiber_entry(void* arg);
thread_local void* t_entry_arg = nullptr;
void ucontext_entry() { fiber_entry(t_entry_arg); }

// makecontext passes only int arguments: the thread comes through
// t_entry_arg, which the scheduler sets before each first switch.
void make_context(Context& ctx, const Stack& stack, void (*)(void*), void*) {
#ifdef FASTLN_SIMT_ASAN
  __asan_unpoison_memory_region(stack.bottom(), kStackBytes);
#endif
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack.bottom();
  ctx.uc.uc_stack.ss_size = kStackBytes;
  ctx.uc.uc_link = nullptr;
  makecontext(&ctx.uc, &ucontext_entry, 0);
}

void switch_context(Context& from, Context& to) {
  swapcontext(&from.uc, &to.uc);
}
#endif

// ---------------------------------------------------------------------------
// Threads, blocks, launches.

enum class State { kRunnable, kAtBarrier, kAtWarp, kExited };
enum class WarpOpKind { kShuffle, kSyncWarp };

struct Site {
  const char* file = "";
  int line = 0;
};

std::string site_str(const Site& s) {
  std::string f = s.file;
  const size_t slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return f + ":" + std::to_string(s.line);
}

struct WarpOp {
  WarpOpKind kind;
  ShflKind shfl;
  unsigned mask;
  int width;
  int size;
  int lane_arg;
  uint64_t bits;
  Site site;
};

struct Launch;
struct Block;

struct Thread {
  ThreadView view;
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + ...)
  State state = State::kRunnable;
  WarpOp op{};
  uint64_t result = 0;
  Site barrier_site;
  uint32_t warp_syncs = 0;  // warp syncs (shuffles, __syncwarp) completed
  Context ctx;
  Block* block = nullptr;
  std::exception_ptr error;
#ifdef FASTLN_SIMT_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Block {
  const Launch* launch = nullptr;
  dim3 idx;
  std::vector<Thread>* threads = nullptr;
  int num_threads = 0;
  std::map<std::string, std::unique_ptr<SharedRegion>> regions;
  std::unique_ptr<SharedRegion> dynamic;
  int64_t static_bytes = 0;
  uint32_t barriers = 0;  // __syncthreads completed by the block
  Context scheduler;
#ifdef FASTLN_SIMT_ASAN
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
#endif
};

struct Launch {
  std::string kernel;
  dim3 grid, block;
  int64_t dynamic_smem;
  const std::function<void()>* body;
  uint64_t seed;
  int64_t static_smem_limit;  // what the kernel may declare (table or 48K)
  int64_t total_smem_limit;
  int64_t table_static_smem;  // -1: not in the table
};

int64_t round_up(int64_t v, int64_t unit) {
  return (v + unit - 1) / unit * unit;
}

thread_local Thread* t_current = nullptr;
thread_local Block* t_block = nullptr;

std::string dim_str(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " +
         std::to_string(d.z) + ")";
}

[[noreturn]] void fail_at(const Block& b, const Thread* t,
                          const std::string& check, const std::string& what) {
  std::ostringstream os;
  os << "fastln simt: " << check << ": kernel " << b.launch->kernel
     << ", block " << dim_str(b.idx);
  if (t != nullptr) os << ", thread " << dim_str(t->view.thread_idx);
  os << ": " << what;
  throw Error(os.str());
}

// Raised from a fiber, about the running thread.
[[noreturn]] void fail(const std::string& check, const std::string& what) {
  fail_at(*t_block, t_current, check, what);
}

std::string thread_str(const Thread& t) {
  return "thread " + dim_str(t.view.thread_idx);
}

// Switches from the running fiber back to the block's scheduler.
void yield_to_scheduler(bool exiting = false) {
  Thread* t = t_current;
  Block* b = t->block;
#ifdef FASTLN_SIMT_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &t->fake_stack,
                                 b->scheduler_stack_bottom,
                                 b->scheduler_stack_size);
#endif
  (void)exiting;
  switch_context(t->ctx, b->scheduler);
#ifdef FASTLN_SIMT_ASAN
  __sanitizer_finish_switch_fiber(t->fake_stack, nullptr, nullptr);
#endif
}

void fiber_entry(void* arg) {
  auto* t = static_cast<Thread*>(arg);
#ifdef FASTLN_SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &t->block->scheduler_stack_bottom,
                                  &t->block->scheduler_stack_size);
#endif
  try {
    (*t->block->launch->body)();
  } catch (...) {
    t->error = std::current_exception();
  }
  t->state = State::kExited;
  yield_to_scheduler(/*exiting=*/true);
  __builtin_unreachable();
}

// Per-OS-thread fiber stacks, reused by every block it runs.
struct Worker {
  std::vector<std::unique_ptr<Stack>> stacks;
  std::vector<Thread> threads;
  void reserve(int n) {
    while (static_cast<int>(stacks.size()) < n)
      stacks.push_back(std::make_unique<Stack>());
    threads.resize(n);
  }
};

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

const char* op_name(const WarpOp& op) {
  if (op.kind == WarpOpKind::kSyncWarp) return "__syncwarp";
  switch (op.shfl) {
    case ShflKind::kIdx:
      return "__shfl_sync";
    case ShflKind::kUp:
      return "__shfl_up_sync";
    case ShflKind::kDown:
      return "__shfl_down_sync";
    case ShflKind::kXor:
      return "__shfl_xor_sync";
  }
  return "?";
}

std::string hex(unsigned v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

// The source lane of a shuffle for `lane`, or -1 when the caller keeps its
// own value. PTX shfl.sync semantics with c = ((32 - width) << 8) | 0x1f
// (0 for up), as CUDA's intrinsics compile: lanes form segments of `width`;
// idx reads lane_arg modulo width within the segment; up/down/xor read
// lane -/+/^ lane_arg and keep their own value when that lane is outside
// the segment (below it for up, above it for down and xor: xor may read an
// earlier segment, as the Programming Guide says).
int shuffle_source(const WarpOp& op, int lane) {
  const int seg_start = lane & ~(op.width - 1);
  const int seg_end = seg_start + op.width - 1;
  int j = 0;
  switch (op.shfl) {
    case ShflKind::kIdx:
      return seg_start | (op.lane_arg & (op.width - 1));
    case ShflKind::kUp:
      j = lane - op.lane_arg;
      return j >= seg_start ? j : -1;
    case ShflKind::kDown:
      j = lane + op.lane_arg;
      return j <= seg_end ? j : -1;
    case ShflKind::kXor:
      j = lane ^ (op.lane_arg & 31);
      return j <= seg_end ? j : -1;
  }
  return -1;
}

bool same_op(const WarpOp& a, const WarpOp& b) {
  return a.kind == b.kind &&
         (a.kind == WarpOpKind::kSyncWarp ||
          (a.shfl == b.shfl && a.size == b.size)) &&
         a.site.line == b.site.line &&
         std::strcmp(a.site.file, b.site.file) == 0;
}

// Checks every waiting warp operation against the lanes its mask names:
// the caller is in its mask, the width is valid, and every named lane that
// has not exited waits at the same operation (same intrinsic and call site,
// mask and width). Throws for the first violation.
void check_warp_ops(Block& b) {
  std::vector<Thread>& ts = *b.threads;
  for (int first = 0; first < b.num_threads; first += kWarpSize) {
    const int lanes = std::min(kWarpSize, b.num_threads - first);
    for (int l = 0; l < lanes; ++l) {
      const Thread& t = ts[first + l];
      if (t.state != State::kAtWarp) continue;
      const WarpOp& op = t.op;
      const std::string here = std::string(op_name(op)) + " at " +
                               site_str(op.site) + " (mask " + hex(op.mask) +
                               ")";
      if (((op.mask >> l) & 1u) == 0)
        fail_at(b, &t, "warp sync",
                here + " does not name the calling lane in its mask");
      if (op.kind == WarpOpKind::kShuffle &&
          (op.width < 1 || op.width > kWarpSize ||
           (op.width & (op.width - 1)) != 0))
        fail_at(b, &t, "shuffle width",
                here + ": width " + std::to_string(op.width) +
                    " is not a power of two in 1..32");
      for (int m = 0; m < lanes; ++m) {
        if (((op.mask >> m) & 1u) == 0) continue;
        const Thread& o = ts[first + m];
        if (o.state == State::kAtBarrier)
          fail_at(b, &t, "divergent warp sync",
                  here + " names lane " + std::to_string(m) + " (" +
                      thread_str(o) + "), which waits at __syncthreads at " +
                      site_str(o.barrier_site));
        if (o.state != State::kAtWarp) continue;
        if (!same_op(o.op, op) || o.op.mask != op.mask)
          fail_at(b, &t, "divergent warp sync",
                  here + " names lane " + std::to_string(m) + " (" +
                      thread_str(o) + "), which waits at " + op_name(o.op) +
                      " at " + site_str(o.op.site) + " (mask " +
                      hex(o.op.mask) + ")");
        if (op.kind == WarpOpKind::kShuffle && o.op.width != op.width)
          fail_at(b, &t, "shuffle width",
                  here + " with width " + std::to_string(op.width) +
                      ", but lane " + std::to_string(m) + " (" + thread_str(o) +
                      ") uses width " + std::to_string(o.op.width));
      }
    }
  }
}

// Resolves the warp operations that every named lane has reached (lanes that
// have exited, or do not exist in a partial warp, may be named: the Guide
// requires only the non-exited ones); returns whether any thread became
// runnable. Throws for a divergent operation or an undefined shuffle read.
bool resolve_warps(Block& b) {
  check_warp_ops(b);
  std::vector<Thread>& ts = *b.threads;
  bool progress = false;
  for (int first = 0; first < b.num_threads; first += kWarpSize) {
    const int lanes = std::min(kWarpSize, b.num_threads - first);
    for (int l = 0; l < lanes; ++l) {
      if (ts[first + l].state != State::kAtWarp) continue;
      const WarpOp op = ts[first + l].op;
      bool ready = true;
      for (int m = 0; m < lanes; ++m)
        if (((op.mask >> m) & 1u) != 0 &&
            ts[first + m].state == State::kRunnable)
          ready = false;
      if (!ready) continue;
      // Compute every result before releasing anyone: each lane reads the
      // others' values from before the shuffle.
      std::vector<uint64_t> results(kWarpSize, 0);
      for (int m = 0; m < lanes; ++m) {
        const Thread& o = ts[first + m];
        if (((op.mask >> m) & 1u) == 0 || o.state != State::kAtWarp) continue;
        if (op.kind == WarpOpKind::kSyncWarp) continue;
        const int src = shuffle_source(o.op, m);
        if (src < 0) {
          results[m] = o.op.bits;
          continue;
        }
        const bool src_ok = ((op.mask >> src) & 1u) != 0 && src < lanes &&
                            ts[first + src].state == State::kAtWarp;
        if (!src_ok)
          fail_at(b, &o, "shuffle source",
                  std::string(op_name(o.op)) + " at " + site_str(o.op.site) +
                      " reads lane " + std::to_string(src) +
                      ", which is not in the mask " + hex(op.mask) +
                      " or has exited (the value is undefined)");
        results[m] = ts[first + src].op.bits;
      }
      // The lanes leave the sync with equal warp-sync counts, one past the
      // largest, so that each is ordered after the others' earlier accesses.
      uint32_t syncs = 0;
      for (int m = 0; m < lanes; ++m)
        if (((op.mask >> m) & 1u) != 0 && ts[first + m].state == State::kAtWarp)
          syncs = std::max(syncs, ts[first + m].warp_syncs);
      for (int m = 0; m < lanes; ++m) {
        Thread& o = ts[first + m];
        if (((op.mask >> m) & 1u) == 0 || o.state != State::kAtWarp) continue;
        o.result = results[m];
        o.state = State::kRunnable;
        o.warp_syncs = syncs + 1;
        progress = true;
      }
    }
  }
  return progress;
}

// Releases a barrier that every thread has reached; throws when some thread
// cannot reach it. Returns whether the block goes on.
bool resolve_barrier(Block& b) {
  std::vector<Thread>& ts = *b.threads;
  const Thread* waiting = nullptr;
  for (int i = 0; i < b.num_threads; ++i)
    if (ts[i].state == State::kAtBarrier) {
      waiting = &ts[i];
      break;
    }
  if (waiting == nullptr) {
    for (int i = 0; i < b.num_threads; ++i)
      if (ts[i].state != State::kExited)
        fail_at(b, &ts[i], "deadlock",
                std::string("waits at ") + op_name(ts[i].op) + " at " +
                    site_str(ts[i].op.site) + " forever");
    return false;  // every thread has returned
  }
  const std::string here =
      "__syncthreads at " + site_str(waiting->barrier_site);
  for (int i = 0; i < b.num_threads; ++i) {
    const Thread& o = ts[i];
    if (o.state == State::kExited)
      fail_at(b, waiting, "divergent __syncthreads",
              here + " is never reached by " + thread_str(o) +
                  ", which has returned");
    if (o.state == State::kAtWarp)
      fail_at(b, &o, "divergent __syncthreads",
              std::string("waits at ") + op_name(o.op) + " at " +
                  site_str(o.op.site) + " while " + thread_str(*waiting) +
                  " waits at " + here);
    if (o.barrier_site.line != waiting->barrier_site.line ||
        std::strcmp(o.barrier_site.file, waiting->barrier_site.file) != 0)
      fail_at(b, &o, "divergent __syncthreads",
              "waits at __syncthreads at " + site_str(o.barrier_site) +
                  " while " + thread_str(*waiting) + " waits at " + here);
  }
  for (int i = 0; i < b.num_threads; ++i) ts[i].state = State::kRunnable;
  ++b.barriers;
  return true;
}

void run_block(const Launch& L, dim3 idx, Worker& w) {
  const int n = static_cast<int>(L.block.x * L.block.y * L.block.z);
  w.reserve(n);
  Block b;
  b.launch = &L;
  b.idx = idx;
  b.threads = &w.threads;
  b.num_threads = n;
  b.dynamic = std::make_unique<SharedRegion>();
  b.dynamic->name = "dynamic shared memory";
  b.dynamic->bytes.assign(static_cast<size_t>(L.dynamic_smem), 0xff);
  b.dynamic->shadow.assign(static_cast<size_t>(L.dynamic_smem), ByteShadow{});
  t_block = &b;
  for (int i = 0; i < n; ++i) {
    Thread& t = w.threads[i];
    t = Thread{};
    t.linear = i;
    t.block = &b;
    t.view.block_idx = idx;
    t.view.block_dim = L.block;
    t.view.grid_dim = L.grid;
    t.view.thread_idx = dim3(i % L.block.x, (i / L.block.x) % L.block.y,
                             i / (L.block.x * L.block.y));
    make_context(t.ctx, *w.stacks[i], &fiber_entry, &t);
  }
  // The order of each round: a permutation drawn from the seed and the
  // block, so a block's schedule does not depend on which OS thread runs it.
  uint64_t rng =
      L.seed ^
      (0x632be59bd9b4e019ull *
       (1 + idx.x + uint64_t{L.grid.x} * (idx.y + uint64_t{L.grid.y} * idx.z)));
  std::vector<int> order(n);
  while (true) {
    order.clear();
    for (int i = 0; i < n; ++i)
      if (w.threads[i].state == State::kRunnable) order.push_back(i);
    if (L.seed != 0)
      for (size_t i = order.size(); i > 1; --i)
        std::swap(order[i - 1], order[splitmix64(rng) % i]);
    for (const int i : order) {
      Thread& t = w.threads[i];
      t_current = &t;
#if !defined(__x86_64__)
      t_entry_arg = &t;
#endif
#ifdef FASTLN_SIMT_ASAN
      __sanitizer_start_switch_fiber(&b.scheduler_fake_stack,
                                     w.stacks[i]->bottom(), kStackBytes);
#endif
      switch_context(b.scheduler, t.ctx);
#ifdef FASTLN_SIMT_ASAN
      __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
      t_current = nullptr;
      if (t.error) std::rethrow_exception(t.error);
    }
    if (resolve_warps(b)) continue;
    if (!resolve_barrier(b)) break;
  }
  // The table's static shared memory must be what the kernel declared, or
  // the host path (row cache, occupancy) was planned with wrong numbers.
  // nvcc rounds a kernel's static shared memory up to 16 bytes.
  if (L.table_static_smem >= 0 &&
      round_up(b.static_bytes, 16) != L.table_static_smem)
    fail_at(b, nullptr, "resource table",
            "the kernel declares " + std::to_string(b.static_bytes) +
                " bytes of static shared memory, resource_usage.inc says " +
                std::to_string(L.table_static_smem) +
                " (regenerate it: tools/simt_resources.py)");
  t_block = nullptr;
}

const ResourceRow* find_resources(const std::string& kernel) {
  for (const ResourceRow& r : kResourceTable)
    if (kernel == r.kernel && std::strcmp(r.arch, g_device->arch) == 0)
      return &r;
  return nullptr;
}

#ifdef FASTLN_SIMT_ASAN
// AddressSanitizer checks the kernels' global memory (shared memory has the
// runtime's own checks). Its report names the address; this adds the CUDA
// thread that made the access, as the other checkers do. ASan then stops
// the process (halt_on_error), as a GPU fault ends the CUDA context.
void report_asan_error(const char*) {
  const Thread* t = t_current;
  const Block* b = t_block;
  if (b == nullptr) return;
  std::string line = "fastln simt: global memory (AddressSanitizer): kernel " +
                     b->launch->kernel + ", block " + dim_str(b->idx);
  if (t != nullptr) line += ", thread " + dim_str(t->view.thread_idx);
  line += "\n";
  fputs(line.c_str(), stderr);
}

[[maybe_unused]] const bool asan_hook_installed = [] {
  __asan_set_error_report_callback(&report_asan_error);
  return true;
}();
#endif

}  // namespace

// ---------------------------------------------------------------------------
// Public API.

void configure(const std::string& name, uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  if (name == "h100")
    g_device = &kH100;
  else if (name == "a100")
    g_device = &kA100;
  else
    throw std::invalid_argument("fastln simt: unknown device '" + name +
                                "'; expected 'h100' or 'a100'");
  g_seed = seed;
  // A new device starts with the default function attributes, as a new
  // process on a GPU would.
  g_max_dynamic_smem.clear();
}

const DeviceDesc& device() { return *g_device; }
uint64_t schedule_seed() { return g_seed; }

KernelResources kernel_resources(const std::string& kernel) {
  const ResourceRow* r = find_resources(kernel);
  if (r == nullptr) {
    std::lock_guard<std::mutex> lock(g_config_mutex);
    const auto it = g_extra_resources.find(kernel);
    if (it != g_extra_resources.end()) return it->second;
  }
  if (r == nullptr)
    throw Error("fastln simt: resource table: kernel " + kernel +
                " has no entry for " + g_device->arch +
                " in csrc/simt/resource_usage.inc (regenerate it from the "
                "nvcc build: tools/simt_resources.py)");
  return {r->regs, r->shared - g_device->table_reserved_smem};
}

void set_kernel_resources(const std::string& kernel, KernelResources r) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_extra_resources[kernel] = r;
}

int64_t max_dynamic_smem(const std::string& kernel) {
  {
    std::lock_guard<std::mutex> lock(g_config_mutex);
    const auto it = g_max_dynamic_smem.find(kernel);
    if (it != g_max_dynamic_smem.end()) return it->second;
  }
  return g_device->smem_per_block - kernel_resources(kernel).static_smem;
}

void set_max_dynamic_smem(const std::string& kernel, int64_t bytes) {
  const KernelResources r = kernel_resources(kernel);
  // cudaFuncSetAttribute fails with cudaErrorInvalidValue above the opt-in.
  if (bytes < 0 || bytes + r.static_smem > g_device->smem_per_block_optin)
    throw Error("fastln simt: cudaFuncSetAttribute: kernel " + kernel + ": " +
                std::to_string(bytes) +
                " bytes of dynamic shared memory exceed the opt-in limit of " +
                g_device->name);
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_max_dynamic_smem[kernel] = bytes;
}

// The CUDA occupancy calculator's rules for sm_80/sm_90: registers are
// allocated per warp in units of 256, shared memory in units of 128 bytes
// plus the per-block reservation; the fewest blocks any resource allows.
int max_active_blocks_per_sm(const std::string& kernel, int block_threads,
                             int64_t dynamic_smem) {
  const DeviceDesc& d = *g_device;
  const KernelResources r = kernel_resources(kernel);
  const int warps = (block_threads + kWarpSize - 1) / kWarpSize;
  const int by_threads = d.max_threads_per_sm / (warps * kWarpSize);
  const int64_t regs_per_warp = round_up(int64_t{r.regs} * kWarpSize, 256);
  const int64_t by_regs = d.regs_per_sm / (regs_per_warp * warps);
  const int64_t smem =
      round_up(r.static_smem + dynamic_smem + d.smem_reserved_per_block, 128);
  const int64_t by_smem = d.smem_per_sm / smem;
  return static_cast<int>(std::min<int64_t>(
      {int64_t{d.max_blocks_per_sm}, by_threads, by_regs, by_smem}));
}

std::string kernel_name_from_signature(const char* pretty_function) {
  // GCC: "... [with auto K = fastln::cuda::{anonymous}::name<args>; ...]".
  std::string s = pretty_function;
  const size_t with = s.find("K = ");
  if (with == std::string::npos) return s;
  size_t end = with + 4;
  int depth = 0;
  for (; end < s.size(); ++end) {
    const char c = s[end];
    if (c == '<' || c == '(') ++depth;
    if (c == '>' || c == ')') --depth;
    if (depth == 0 && (c == ';' || c == ']')) break;
  }
  std::string name = s.substr(with + 4, end - with - 4);
  if (!name.empty() && name[0] == '&') name = name.substr(1);
  // Drop the namespaces: the last "::" before the template arguments.
  const size_t angle = name.find('<');
  const size_t colons = name.rfind("::", angle);
  if (colons != std::string::npos) name = name.substr(colons + 2);
  return name;
}

void launch(const std::string& kernel, dim3 grid, dim3 block,
            int64_t dynamic_smem, const std::function<void()>& body) {
  const DeviceDesc& d = *g_device;
  const KernelResources res = kernel_resources(kernel);
  const int64_t threads = int64_t{block.x} * block.y * block.z;
  auto refuse = [&](const std::string& why) {
    throw Error("fastln simt: launch refused: kernel " + kernel + ", grid " +
                dim_str(grid) + ", block " + dim_str(block) + ": " + why);
  };
  // What cudaLaunchKernel checks.
  if (threads < 1 || threads > d.max_threads_per_block || block.z > 64)
    refuse("invalid block size");
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 ||
      grid.z > 65535 || grid.x > 0x7fffffffu)
    refuse("invalid grid size");
  if (dynamic_smem > max_dynamic_smem(kernel))
    refuse(std::to_string(dynamic_smem) +
           " bytes of dynamic shared memory, above the kernel's limit of " +
           std::to_string(max_dynamic_smem(kernel)) +
           " (cudaFuncAttributeMaxDynamicSharedMemorySize)");
  const int64_t regs_per_warp = round_up(int64_t{res.regs} * kWarpSize, 256);
  if (regs_per_warp * ((threads + kWarpSize - 1) / kWarpSize) >
      d.regs_per_block)
    refuse("too many registers: " + std::to_string(res.regs) +
           " per thread for " + std::to_string(threads) + " threads");
  {
    std::lock_guard<std::mutex> lock(g_config_mutex);
    g_launches.push_back({kernel, grid, block, dynamic_smem});
  }

  Launch L{kernel,
           grid,
           block,
           dynamic_smem,
           &body,
           g_seed,
           d.smem_per_block,
           d.smem_per_block_optin,
           res.static_smem};
  const int64_t blocks = int64_t{grid.x} * grid.y * grid.z;
  // Blocks are independent: share them between a few OS threads.
  const int64_t workers = std::max<int64_t>(
      1, std::min<int64_t>(blocks, std::thread::hardware_concurrency()));
  std::atomic<int64_t> next{0};
  std::atomic<bool> stop{false};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto work = [&] {
    Worker w;
    try {
      for (int64_t i = next++; i < blocks && !stop; i = next++) {
        const dim3 idx(static_cast<unsigned>(i % grid.x),
                       static_cast<unsigned>((i / grid.x) % grid.y),
                       static_cast<unsigned>(i / (int64_t{grid.x} * grid.y)));
        run_block(L, idx, w);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!first_error) first_error = std::current_exception();
      stop = true;
    }
  };
  if (workers == 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (int64_t i = 0; i < workers; ++i) pool.emplace_back(work);
    for (std::thread& t : pool) t.join();
  }
  if (first_error) std::rethrow_exception(first_error);
}

std::vector<LaunchRecord> launches() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return g_launches;
}

void clear_launches() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_launches.clear();
}

ThreadView& current() {
  if (t_current == nullptr)
    throw std::logic_error(
        "fastln simt: threadIdx/blockIdx used outside a kernel");
  return t_current->view;
}

void syncthreads(const char* file, int line) {
  Thread* t = t_current;
  t->barrier_site = {file, line};
  t->state = State::kAtBarrier;
  yield_to_scheduler();
}

void syncwarp(unsigned mask, const char* file, int line) {
  Thread* t = t_current;
  t->op =
      WarpOp{WarpOpKind::kSyncWarp, ShflKind::kIdx, mask, kWarpSize, 0, 0, 0,
             {file, line}};
  t->state = State::kAtWarp;
  yield_to_scheduler();
}

uint64_t shuffle(ShflKind kind, unsigned mask, uint64_t bits, int size,
                 int lane_arg, int width, const char* file, int line) {
  Thread* t = t_current;
  t->op = WarpOp{WarpOpKind::kShuffle, kind, mask, width, size, lane_arg, bits,
                 {file, line}};
  t->state = State::kAtWarp;
  yield_to_scheduler();
  return t->result;
}

namespace {

void check_access(const SharedRegion& r, const char* what, int64_t offset,
                  int64_t size, int64_t align) {
  if (offset < 0 || offset + size > static_cast<int64_t>(r.bytes.size()))
    fail("shared memory out of bounds",
         std::string(what) + " of " + std::to_string(size) + " bytes at byte " +
             std::to_string(offset) + " of " + r.name + " (" +
             std::to_string(r.bytes.size()) + " bytes)");
  if (offset % align != 0)
    fail("misaligned shared memory access",
         std::string(what) + " of " + std::to_string(size) + " bytes at byte " +
             std::to_string(offset) + " of " + r.name);
}

// Whether an earlier access is ordered before the running thread's: its
// own, or one separated by a __syncthreads, or by a warp sync of the same
// warp (the lanes of a warp sync leave it with equal counts, see
// resolve_warps; partial masks make this an approximation).
bool ordered(const ByteAccess& a, const Thread& t, uint32_t barriers) {
  if (a.thread == -1 || a.thread == t.linear) return true;
  if (barriers > a.barriers) return true;
  return a.thread >= 0 && a.thread / kWarpSize == t.linear / kWarpSize &&
         t.warp_syncs > a.warp_syncs;
}

[[noreturn]] void report_race(const SharedRegion& r, const char* what,
                              int64_t offset, int64_t size, int64_t byte,
                              const char* other_what, const ByteAccess& other,
                              const Block& b) {
  const std::vector<Thread>& ts = *b.threads;
  const std::string by =
      other.thread >= 0 ? thread_str(ts[other.thread]) : "several threads";
  fail("shared memory race",
       std::string(what) + " of " + std::to_string(size) + " bytes at byte " +
           std::to_string(offset) + " of " + r.name + ": byte " +
           std::to_string(byte) + " was " + other_what + " by " + by +
           " with no __syncthreads (or warp sync) between the two");
}

}  // namespace

void SharedRegion::read(int64_t offset, int64_t size, int64_t align,
                        void* out) {
  check_access(*this, "read", offset, size, align);
  const Thread& t = *t_current;
  const uint32_t barriers = t_block->barriers;
  for (int64_t i = offset; i < offset + size; ++i) {
    ByteShadow& s = shadow[i];
    if (s.write.thread == -1)
      fail("uninitialized shared memory",
           "read of " + std::to_string(size) + " bytes at byte " +
               std::to_string(offset) + " of " + name + ": byte " +
               std::to_string(i) + " was not written in this block");
    if (!ordered(s.write, t, barriers))
      report_race(*this, "read", offset, size, i, "written", s.write, *t_block);
    // One reader is remembered exactly; several in one barrier interval
    // collapse to "several", which only a __syncthreads orders.
    ByteAccess& r = s.read;
    if (r.thread == -1 || r.thread == t.linear || barriers > r.barriers ||
        ordered(r, t, barriers))
      r = {t.linear, barriers, t.warp_syncs};
    else
      r = {-2, barriers, 0};
  }
  std::memcpy(out, bytes.data() + offset, size);
}

void SharedRegion::write(int64_t offset, int64_t size, int64_t align,
                         const void* in) {
  check_access(*this, "write", offset, size, align);
  const Thread& t = *t_current;
  const uint32_t barriers = t_block->barriers;
  for (int64_t i = offset; i < offset + size; ++i) {
    ByteShadow& s = shadow[i];
    if (!ordered(s.write, t, barriers))
      report_race(*this, "write", offset, size, i, "written", s.write,
                  *t_block);
    if (!ordered(s.read, t, barriers))
      report_race(*this, "write", offset, size, i, "read", s.read, *t_block);
    s.write = {t.linear, barriers, t.warp_syncs};
    s.read = ByteAccess{};
  }
  std::memcpy(bytes.data() + offset, in, size);
}

SharedRegion* static_shared_region(const char* name, int64_t bytes,
                                   int64_t align) {
  Block& b = *t_block;
  auto it = b.regions.find(name);
  if (it != b.regions.end()) return it->second.get();
  // Static shared memory as nvcc lays it out: each array aligned.
  b.static_bytes = round_up(b.static_bytes, align) + bytes;
  if (b.static_bytes > b.launch->static_smem_limit)
    fail("shared memory limit", "static shared memory of " +
                                    std::to_string(b.static_bytes) +
                                    " bytes exceeds 48 KB");
  if (b.static_bytes + b.launch->dynamic_smem > b.launch->total_smem_limit)
    fail("shared memory limit",
         "static plus dynamic shared memory exceeds "
         "the device's opt-in limit");
  auto region = std::make_unique<SharedRegion>();
  region->name = std::string("__shared__ ") + name;
  region->bytes.assign(static_cast<size_t>(bytes), 0xff);
  region->shadow.assign(static_cast<size_t>(bytes), ByteShadow{});
  SharedRegion* r = region.get();
  b.regions.emplace(name, std::move(region));
  return r;
}

SharedRegion* dynamic_shared_region() { return t_block->dynamic.get(); }

}  // namespace simt
}  // namespace fastln
