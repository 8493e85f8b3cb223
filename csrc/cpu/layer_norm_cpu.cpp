// CPU backend of the fastln ops: host code (checks, allocation, threading,
// the deterministic dweight/dbias reduction, ISA dispatch) around the row
// kernels of kernels.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../layer_norm.h"

#if defined(__x86_64__)
// The SSE2 (baseline) intrinsics, and the F16C, AVX2 and AVX-512 ones,
// usable inside functions compiled for them (the target pragmas below) while
// the rest of the file stays baseline.
#include <immintrin.h>
#endif

namespace fastln {
namespace cpu {

#include "kernel_copies.h"

namespace {

enum class Isa { kBase, kAvx2, kAvx512 };

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "base";
  }
}

Isa detect_isa() {
#ifdef FASTLN_HAVE_X86_KERNELS
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") &&
                    __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  const Isa best = avx512 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kBase;
  // FASTLN_CPU_ISA=base or =avx2 forces a narrower copy (to test or compare
  // them); a copy the processor lacks is never chosen.
  const char* forced = std::getenv("FASTLN_CPU_ISA");
  if (forced != nullptr && std::string(forced) == "base") return Isa::kBase;
  if (forced != nullptr && std::string(forced) == "avx2" && avx2)
    return Isa::kAvx2;
  return best;
#else
  return Isa::kBase;
#endif
}

Isa& active_isa() {
  static Isa isa = detect_isa();
  return isa;
}

// return NS::fn(args...) with NS the active copy's namespace.
#ifdef FASTLN_HAVE_X86_KERNELS
#define FASTLN_DISPATCH_ISA(fn, ...)      \
  switch (active_isa()) {                 \
    case Isa::kAvx512:                    \
      return isa_avx512::fn(__VA_ARGS__); \
    case Isa::kAvx2:                      \
      return isa_avx2::fn(__VA_ARGS__);   \
    default:                              \
      return isa_base::fn(__VA_ARGS__);   \
  }
#else
#define FASTLN_DISPATCH_ISA(fn, ...) return isa_base::fn(__VA_ARGS__);
#endif

template <bool kRms, typename Load, typename scalar_t, typename acc_t>
void forward_rows(const scalar_t* x, const Load& load, const acc_t* w,
                  const acc_t* b, scalar_t* y, acc_t* mean, acc_t* rstd,
                  int64_t N, acc_t eps, int64_t begin, int64_t end,
                  acc_t* scratch, bool stream) {
  FASTLN_DISPATCH_ISA(forward_rows<kRms>, x, load, w, b, y, mean, rstd, N, eps,
                      begin, end, scratch, stream)
}

template <bool kRms, typename DH, typename scalar_t, typename G, typename acc_t>
void backward_rows(const G* dy, const scalar_t* x, const acc_t* mean,
                   const acc_t* rstd, const acc_t* w, const DH& dh,
                   scalar_t* dx, acc_t* dw_acc, acc_t* db_acc, int64_t N,
                   int64_t begin, int64_t end, acc_t* scratch, bool stream) {
  FASTLN_DISPATCH_ISA(backward_rows<kRms>, dy, x, mean, rstd, w, dh, dx, dw_acc,
                      db_acc, N, begin, end, scratch, stream)
}

// Whether outputs of `bytes` are written with non-temporal stores
// (kernels.h, StreamStore): when they are at least half this machine's 32 MiB
// L3, they cannot stay cached beside the input that streams past them, and
// the write-allocate reads are pure overhead (they held the fp32 forward of a
// 16 MiB tensor at 67% of copy bandwidth). Smaller outputs stay in cache for
// the next op. A fused add counts everything it writes (y and h forward),
// and in the backward the grad_h it reads beside dx.
// FASTLN_CPU_STREAM=<bytes> sets the threshold (another machine's L3 may
// want another; =1 streams every output, which the tests use to run the
// streaming paths on small shapes); FASTLN_CPU_STREAM=0 turns streaming off.
bool stream_output(int64_t bytes) {
  static const int64_t threshold = [] {
    const char* env = std::getenv("FASTLN_CPU_STREAM");
    if (env == nullptr || *env == '\0') return int64_t{16} << 20;
    char* end = nullptr;
    errno = 0;
    const long long value = std::strtoll(env, &end, 10);
    TORCH_CHECK(*end == '\0' && errno == 0 && value >= 0,
                "fastln: FASTLN_CPU_STREAM must be a byte count (0: never "
                "stream), got '",
                env, "'");
    return value == 0 ? std::numeric_limits<int64_t>::max()
                      : static_cast<int64_t>(value);
  }();
  return bytes >= threshold;
}

template <typename scalar_t, typename acc_t>
const acc_t* row_as_acc(const scalar_t* x, int64_t N, acc_t* buf) {
  FASTLN_DISPATCH_ISA(row_as_acc, x, N, buf)
}

template <typename acc_t, typename T>
void row_from_acc(const acc_t* src, int64_t N,
                  T* out){FASTLN_DISPATCH_ISA(row_from_acc, src, N, out)}

// Rows handed to one task at a time: about 8K elements of work per task
// (2-5 us, bfloat16/half rows the slower end) amortizes the 1-2 us it costs
// at::parallel_for to wake another thread; 32K left rows of 64 x 512
// bfloat16 on one thread while torch used two.
int64_t row_grain(int64_t N) {
  return std::max<int64_t>(1, (int64_t{1} << 13) / std::max<int64_t>(N, 1));
}

// A parameter (weight or bias, contiguous, of dtype acc_t or scalar_t) as an
// acc_t array: its own data when it already is acc_t, else a converted copy.
// A plain loop rather than Tensor::to(): for small inputs the tensor op's
// fixed cost would exceed the whole kernel's. get() is nullptr when absent.
template <typename scalar_t, typename acc_t>
class ParamAsAcc {
 public:
  explicit ParamAsAcc(const at::Tensor& p) {
    if (!p.defined()) return;
    if (p.scalar_type() == c10::CppTypeToScalarType<acc_t>::value) {
      ptr_ = p.const_data_ptr<acc_t>();
      return;
    }
    // Uninitialized storage, and the active kernels' conversion (the
    // baseline's half conversion, one element at a time, made a single half
    // row of 16384 three times slower than torch).
    copy_.reset(new acc_t[p.numel()]);
    ptr_ = row_as_acc(p.const_data_ptr<scalar_t>(), p.numel(), copy_.get());
  }
  const acc_t* get() const { return ptr_; }

 private:
  std::unique_ptr<acc_t[]> copy_;
  const acc_t* ptr_ = nullptr;
};

// Calls fn with the data pointer of a parameter gradient, typed by its dtype
// (acc_t or scalar_t, the dtypes a parameter may have).
template <typename scalar_t, typename acc_t, typename Fn>
void with_param_ptr(const at::Tensor& t, const Fn& fn) {
  if (t.scalar_type() == c10::CppTypeToScalarType<acc_t>::value)
    fn(t.mutable_data_ptr<acc_t>());
  else
    fn(t.mutable_data_ptr<scalar_t>());
}

// Row blocks of the backward's dweight/dbias reduction. Each block sums its
// rows' contributions into its own acc_t partial (pairwise over groups of
// rows, PairwiseRowSums), and the partials are then added in block order (at
// most 64 terms: a bounded error, whatever M). The plan depends only on M and
// N, never on the number of threads, so dweight/dbias are bitwise reproducible.
// Limits: at least 16 rows per block (zeroing, updating and reducing a partial
// then costs a small fraction of the block's own traffic of 3 * 16 rows), at
// most 64 blocks (enough to feed every core of a big machine), and at most 2^22
// partial elements (16 MiB of float).
struct BlockPlan {
  int64_t num_blocks;
  int64_t rows_per_block;
};

BlockPlan plan_blocks(int64_t M, int64_t N) {
  constexpr int64_t kMinRows = 16, kMaxBlocks = 64, kMaxPartial = 1 << 22;
  const int64_t by_rows = (M + kMinRows - 1) / kMinRows;
  const int64_t by_memory = std::max<int64_t>(1, kMaxPartial / (2 * N));
  const int64_t num_blocks =
      std::max<int64_t>(1, std::min({by_rows, kMaxBlocks, by_memory}));
  return {num_blocks, (M + num_blocks - 1) / num_blocks};
}

// Column sums over the rows of a block, rounded like row_sums: a lane that
// adds r rows one after another is off by up to r * eps, so rows go in
// groups of kRowGroup, each summed straight into a zeroed group buffer, and
// the group sums are combined pairwise the way a binary counter carries:
// level k holds the sum of 2^k consecutive groups. The error bound is then
// (kRowGroup + log2(groups)) * eps instead of rows * eps. kRowGroup = 32:
// combining costs about two more passes over the sums per 32 rows that each
// read and write them once (buffers are swapped, never copied).
constexpr int64_t kRowGroup = 32;

template <typename acc_t>
class PairwiseRowSums {
 public:
  // width: acc_t per row of sums; max_rows: rows of the largest block.
  PairwiseRowSums(int64_t width, int64_t max_rows) : width_(width) {
    const int64_t groups = (max_rows + kRowGroup - 1) / kRowGroup;
    int64_t levels = 1;  // floor(log2(groups)) + 1
    while ((int64_t{1} << levels) <= groups) ++levels;
    // Each buffer on its own cache lines, 64-byte aligned: from plain new
    // (16-byte aligned) the 32-byte loads and stores of dweight/dbias split
    // cache lines and the backward of 16384 x 256 fp32 was 1.5x slower.
    const int64_t stride = (width + kAlign - 1) / kAlign * kAlign;
    storage_.reset(new (std::align_val_t{64}) acc_t[(levels + 1) * stride]);
    for (int64_t k = 0; k <= levels; ++k)
      buffers_.push_back(storage_.get() + k * stride);
    group_ = buffers_.back();
    buffers_.pop_back();  // buffers_[k]: level k
  }

  // The zeroed buffer the next group's rows are summed into.
  acc_t* start_group() {
    std::fill_n(group_, width_, acc_t(0));
    return group_;
  }

  void end_group() {
    acc_t** carry = &group_;
    int64_t k = 0;
    for (; (count_ >> k) & 1; ++k) {  // level k is taken: merge and carry
      acc_t* level = buffers_[k];
      const acc_t* later = *carry;
      for (int64_t j = 0; j < width_; ++j) level[j] += later[j];
      carry = &buffers_[k];
    }
    std::swap(buffers_[k], *carry);  // free level k takes the sum
    ++count_;
  }

  // The sum of all groups (earliest levels first) into out; resets.
  void finish(acc_t* out) {
    bool first = true;
    for (int64_t k = static_cast<int64_t>(buffers_.size()) - 1; k >= 0; --k) {
      if (((count_ >> k) & 1) == 0) continue;
      const acc_t* level = buffers_[k];
      if (first)
        std::copy_n(level, width_, out);
      else
        for (int64_t j = 0; j < width_; ++j) out[j] += level[j];
      first = false;
    }
    if (first) std::fill_n(out, width_, acc_t(0));
    count_ = 0;
  }

 private:
  static constexpr int64_t kAlign = 64 / sizeof(acc_t);
  struct AlignedDelete {
    void operator()(acc_t* p) const {
      ::operator delete[](p, std::align_val_t{64});
    }
  };
  int64_t width_;
  int64_t count_ = 0;
  std::unique_ptr<acc_t[], AlignedDelete> storage_;
  std::vector<acc_t*> buffers_;
  acc_t* group_;
};

// The forward kernels over M > 0 rows of N > 0 elements: out = norm(x), or
// with a residual, h = x + residual and out = norm(h). x (and residual) are
// contiguous; w/b contiguous or undefined; mean is unused for RMSNorm. The
// residual and h types the kernels take: h and residual of x's dtype, or a
// float32 h of half/bfloat16 x with a residual of either dtype (the checks
// of add_norm_fwd allow nothing else).
template <bool kRms>
void run_forward(const at::Tensor& x, const at::Tensor& residual,
                 const at::Tensor& h, const at::Tensor& w, const at::Tensor& b,
                 double eps, int64_t M, int64_t N, const at::Tensor& out,
                 const at::Tensor& mean, const at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_norm_fwd_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
        const ParamAsAcc<scalar_t, acc_t> w_acc(w), b_acc(b);
        scalar_t* y_ptr = out.mutable_data_ptr<scalar_t>();
        acc_t* mean_ptr = kRms ? nullptr : mean.mutable_data_ptr<acc_t>();
        acc_t* rstd_ptr = rstd.mutable_data_ptr<acc_t>();
        const acc_t eps_acc = static_cast<acc_t>(eps);
        // Streaming by everything written: a fused add writes h as well (by
        // y alone, 1024 x 2560 fp32 was written through the cache, evicting
        // x and residual: 0.72-0.79x the unfused torch composition, 1.2x
        // streamed).
        const bool stream =
            stream_output(out.nbytes() + (h.defined() ? h.nbytes() : 0));
        const bool read_in_place =
            isa_base::kReadInPlace<scalar_t> && !h.defined();
        const auto run = [&](const auto& load) {
          at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
            std::vector<acc_t> scratch(read_in_place ? 0 : N);
            forward_rows<kRms>(x_ptr, load, w_acc.get(), b_acc.get(), y_ptr,
                               mean_ptr, rstd_ptr, N, eps_acc, begin, end,
                               scratch.data(), stream);
          });
        };
        if (!h.defined()) return run(NoAdd{});
        if (h.scalar_type() == x.scalar_type())
          return run(AddResidual<scalar_t, scalar_t>{
              residual.const_data_ptr<scalar_t>(),
              h.mutable_data_ptr<scalar_t>()});
        if constexpr (!std::is_same_v<scalar_t, acc_t>) {
          // half/bfloat16 x, float32 h.
          float* h_ptr = h.mutable_data_ptr<float>();
          if (residual.scalar_type() == x.scalar_type())
            return run(AddResidual<scalar_t, float>{
                residual.const_data_ptr<scalar_t>(), h_ptr});
          return run(AddResidual<float, float>{residual.const_data_ptr<float>(),
                                               h_ptr});
        }
        TORCH_INTERNAL_ASSERT(false, "fastln: unexpected h dtype ",
                              h.scalar_type());
      });
}

// The backward kernels over M > 0 rows of N > 0 elements, for x (the norm's
// input: the input, or h of a fused add) of dtype T and dy of dtype T, or
// half/bfloat16 under a float32 x (a fused add's float32 h). dx (x's dtype,
// shape) is always written: the norm's input gradient, plus grad_h when
// defined (x's dtype). dw/db (each undefined unless wanted; db never for
// RMSNorm) have dtype T or float32, and w is of the same dtype (or absent).
template <bool kRms>
void run_backward(const at::Tensor& dy, const at::Tensor& x,
                  const at::Tensor& grad_h, const at::Tensor& mean,
                  const at::Tensor& rstd, const at::Tensor& w, int64_t M,
                  int64_t N, const at::Tensor& dx, const at::Tensor& dw,
                  const at::Tensor& db) {
  const bool param_grads = dw.defined() || db.defined();
  const at::ScalarType acc = stats_dtype(x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastln_norm_bwd_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
        const acc_t* mean_ptr = kRms ? nullptr : mean.const_data_ptr<acc_t>();
        const acc_t* rstd_ptr = rstd.const_data_ptr<acc_t>();
        const ParamAsAcc<scalar_t, acc_t> w_acc(w);
        const acc_t* w_ptr = w_acc.get();
        scalar_t* dx_ptr = dx.mutable_data_ptr<scalar_t>();
        // A fused add's backward also reads grad_h, as large as dx, which
        // would otherwise share the cache with dx's write-allocated lines.
        const bool stream = stream_output(
            dx.nbytes() + (grad_h.defined() ? grad_h.nbytes() : 0));
        // Rows of a 16-bit x or dy are converted into scratch (kTileRows rows
        // of each at a time).
        const int64_t scratch_size = isa_base::kReadInPlace<scalar_t> &&
                                             dy.scalar_type() == x.scalar_type()
                                         ? 0
                                         : 2 * isa_base::kTileRows * N;
        // Sums per row in the partials: dy * xhat, and dy unless RMSNorm.
        constexpr int64_t kSums = kRms ? 1 : 2;

        const auto run = [&](const auto* dy_ptr, const auto& dh) {
          const auto rows = [&](int64_t begin, int64_t end, acc_t* sums,
                                acc_t* scratch) {
            backward_rows<kRms>(dy_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, dh,
                                dx_ptr, sums,
                                sums == nullptr ? nullptr : sums + N, N, begin,
                                end, scratch, stream);
          };
          if (!param_grads) {
            at::parallel_for(0, M, row_grain(N),
                             [&](int64_t begin, int64_t end) {
                               std::vector<acc_t> scratch(scratch_size);
                               rows(begin, end, nullptr, scratch.data());
                             });
            return;
          }
          const BlockPlan plan = plan_blocks(M, N);
          // partial[block][0] sums dy * xhat, partial[block][1] sums dy. Each
          // task zeroes its own partials, so they start in its core's cache.
          at::Tensor partial =
              at::empty({plan.num_blocks, kSums, N}, x.options().dtype(acc));
          acc_t* partial_ptr = partial.mutable_data_ptr<acc_t>();
          at::parallel_for(0, plan.num_blocks, 1, [&](int64_t b0, int64_t b1) {
            std::vector<acc_t> scratch(scratch_size);
            // Blocks of at most one group sum straight into their partial.
            std::optional<PairwiseRowSums<acc_t>> sums;
            if (plan.rows_per_block > kRowGroup)
              sums.emplace(kSums * N, plan.rows_per_block);
            for (int64_t blk = b0; blk < b1; ++blk) {
              const int64_t begin = blk * plan.rows_per_block;
              const int64_t end = std::min(M, begin + plan.rows_per_block);
              acc_t* block_sums = partial_ptr + blk * kSums * N;
              if (!sums) {
                std::fill_n(block_sums, kSums * N, acc_t(0));
                rows(begin, end, block_sums, scratch.data());
                continue;
              }
              for (int64_t r = begin; r < end; r += kRowGroup) {
                acc_t* group = sums->start_group();
                rows(r, std::min(end, r + kRowGroup), group, scratch.data());
                sums->end_group();
              }
              sums->finish(block_sums);
            }
          });

          // Column sums of the partials, always in block order, written
          // straight into dweight / dbias in their own dtype.
          // Columns go in tiles of kTile so that the running sums stay in
          // registers/L1 while the partials stream past in block order.
          auto column_sums = [&](int64_t k, auto* out) {
            constexpr int64_t kTile = 256;
            // A task takes whole tiles and, like a row task, about 8K partial
            // elements: with few blocks (small M) the sums then stay on one
            // thread instead of paying to wake the others.
            const int64_t grain =
                std::max<int64_t>(4 * kTile, row_grain(plan.num_blocks));
            at::parallel_for(0, N, grain, [&](int64_t c0, int64_t c1) {
              acc_t tile[kTile];
              for (int64_t t0 = c0; t0 < c1; t0 += kTile) {
                const int64_t n = std::min(kTile, c1 - t0);
                const acc_t* first = partial_ptr + k * N + t0;
                for (int64_t j = 0; j < n; ++j) tile[j] = first[j];
                for (int64_t blk = 1; blk < plan.num_blocks; ++blk) {
                  const acc_t* part = partial_ptr + (blk * kSums + k) * N + t0;
                  for (int64_t j = 0; j < n; ++j) tile[j] += part[j];
                }
                row_from_acc(tile, n, out + t0);
              }
            });
          };
          if (dw.defined())
            with_param_ptr<scalar_t, acc_t>(
                dw, [&](auto* out) { column_sums(0, out); });
          if (db.defined())
            with_param_ptr<scalar_t, acc_t>(
                db, [&](auto* out) { column_sums(1, out); });
        };

        const auto with_dh = [&](const auto* dy_ptr) {
          if (grad_h.defined())
            run(dy_ptr, GradH<scalar_t>{grad_h.const_data_ptr<scalar_t>()});
          else
            run(dy_ptr, NoGradH{});
        };
        if (dy.scalar_type() == x.scalar_type())
          return with_dh(dy.const_data_ptr<scalar_t>());
        if constexpr (std::is_same_v<scalar_t, float>) {
          // half/bfloat16 dy under a float32 h (fused add).
          if (dy.scalar_type() == at::kBFloat16)
            return with_dh(dy.const_data_ptr<c10::BFloat16>());
          if (dy.scalar_type() == at::kHalf)
            return with_dh(dy.const_data_ptr<c10::Half>());
        }
        TORCH_INTERNAL_ASSERT(false, "fastln: unexpected grad_out dtype ",
                              dy.scalar_type());
      });
}

// Allocates the backward's outputs and runs the kernels: dx of x's shape and
// dtype (the norm's input gradient, plus grad_h when defined), dw/db like
// w/b when wanted. dy, x, grad_h, mean, rstd need not be contiguous.
template <bool kRms>
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_bwd(
    const at::Tensor& grad_out, const at::Tensor& input,
    const at::Tensor& grad_h, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& w_in, const at::Tensor& b_in, RowShape rows,
    std::array<bool, 3> output_mask) {
  const auto [M, N] = rows;
  const bool want_dx = output_mask[0];
  const bool want_dw = output_mask[1] && w_in.defined();
  const bool want_db = !kRms && output_mask[2] && b_in.defined();
  at::Tensor dw =
      want_dw ? at::empty(w_in.sizes(), w_in.options()) : at::Tensor();
  at::Tensor db =
      want_db ? at::empty(b_in.sizes(), b_in.options()) : at::Tensor();
  if (M == 0 || N == 0) {
    // No rows: the column sums are empty sums. No columns: nothing to do.
    if (want_dw) dw.zero_();
    if (want_db) db.zero_();
    return {want_dx ? at::empty(input.sizes(), input.options()) : at::Tensor(),
            dw, db};
  }
  if (!want_dx && !want_dw && !want_db) return {at::Tensor(), dw, db};
  // dx is computed even when not wanted (rare: an input that needs no
  // gradient), and both column sums whenever one is: the row kernel then has
  // no per-element branch.
  at::Tensor dx = at::empty(input.sizes(), input.options());
  run_backward<kRms>(grad_out.contiguous(), input.contiguous(),
                     grad_h.defined() ? grad_h.contiguous() : grad_h,
                     kRms ? mean : mean.contiguous(), rstd.contiguous(), w_in,
                     M, N, dx, dw, db);
  return {want_dx ? dx : at::Tensor(), dw, db};
}

// float32 grad_out of half/bfloat16 input (the float-output forward), or
// half/bfloat16 weight under a float32 h: the float32 kernels on upcast
// copies of `input` and of the parameters, dx and dweight/dbias rounded to
// their own dtypes once at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor> round_grads(
    std::tuple<at::Tensor, at::Tensor, at::Tensor> grads,
    at::ScalarType dx_dtype, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias) {
  auto& [dx, dw, db] = grads;
  const auto cast = [](const at::Tensor& t, at::ScalarType dtype) {
    return t.defined() ? t.to(dtype) : t;
  };
  return {cast(dx, dx_dtype),
          weight.has_value() ? cast(dw, weight->scalar_type()) : dw,
          bias.has_value() ? cast(db, bias->scalar_type()) : db};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cpu(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps,
    std::optional<at::ScalarType> out_dtype) {
  const auto [M, N] =
      check_forward_inputs(input, normalized_shape, weight, bias);
  const at::ScalarType out_type = output_dtype(input, out_dtype);
  if (out_type != input.scalar_type()) {
    // float32 output of half/bfloat16 input (what CUDA autocast asks; CPU
    // autocast never does): the float32 kernels on an upcast copy, whose
    // output is exactly that.
    return layer_norm_fwd_cpu(input.to(at::kFloat), normalized_shape,
                              as_float(weight), as_float(bias), eps,
                              std::nullopt);
  }
  auto [out, mean, rstd, done] =
      allocate_forward(input, normalized_shape, {M, N}, out_type);
  if (done) return {out, mean, rstd};
  run_forward<false>(input.contiguous(), at::Tensor(), at::Tensor(),
                     contiguous_or_undefined(weight),
                     contiguous_or_undefined(bias), eps, M, N, out, mean, rstd);
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& input,
    at::IntArrayRef normalized_shape, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  const RowShape rows = check_backward_inputs(grad_out, input, normalized_shape,
                                              mean, rstd, weight, bias);
  if (grad_out.scalar_type() != input.scalar_type())
    return round_grads(
        norm_bwd<false>(grad_out, input.to(at::kFloat), at::Tensor(), mean,
                        rstd, contiguous_or_undefined(as_float(weight)),
                        contiguous_or_undefined(as_float(bias)), rows,
                        output_mask),
        input.scalar_type(), weight, bias);
  return norm_bwd<false>(grad_out, input, at::Tensor(), mean, rstd,
                         contiguous_or_undefined(weight),
                         contiguous_or_undefined(bias), rows, output_mask);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, double eps) {
  const RowShape rows = check_forward_inputs(input, normalized_shape, weight,
                                             std::nullopt, "rms_norm");
  auto [out, mean, rstd, done] =
      allocate_forward(input, normalized_shape, rows, input.scalar_type());
  if (!done)
    run_forward<true>(input.contiguous(), at::Tensor(), at::Tensor(),
                      contiguous_or_undefined(weight), at::Tensor(), eps,
                      rows.M, rows.N, out, mean, rstd);
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& input,
    at::IntArrayRef normalized_shape, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, std::array<bool, 2> output_mask) {
  const RowShape rows = check_rms_backward_inputs(
      grad_out, input, normalized_shape, rstd, weight);
  auto [dx, dw, db] =
      norm_bwd<true>(grad_out, input, at::Tensor(), at::Tensor(), rstd,
                     contiguous_or_undefined(weight), at::Tensor(), rows,
                     {output_mask[0], output_mask[1], false});
  return {dx, dw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_fwd_cpu(
    const at::Tensor& input, const at::Tensor& residual,
    at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool rms,
    at::ScalarType residual_dtype) {
  const RowShape rows = check_add_norm_inputs(
      input, residual, normalized_shape, weight, bias, rms, residual_dtype);
  auto [out, mean, rstd, done] =
      allocate_forward(input, normalized_shape, rows, input.scalar_type());
  at::Tensor h =
      at::empty(input.sizes(), input.options().dtype(residual_dtype));
  if (rms) mean = at::empty({0}, rstd.options());
  if (!done) {
    const at::Tensor x = input.contiguous();
    const at::Tensor res = residual.contiguous();
    const at::Tensor w = contiguous_or_undefined(weight);
    const at::Tensor b = contiguous_or_undefined(bias);
    if (rms)
      run_forward<true>(x, res, h, w, b, eps, rows.M, rows.N, out, mean, rstd);
    else
      run_forward<false>(x, res, h, w, b, eps, rows.M, rows.N, out, mean, rstd);
  }
  return {out, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_norm_bwd_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_h,
    const at::Tensor& h, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool rms,
    std::array<bool, 3> output_mask) {
  const RowShape rows = check_add_norm_backward_inputs(
      grad_out, grad_h, h, normalized_shape, mean, rstd, weight, bias, rms);
  const at::Tensor dh =
      grad_h.has_value() && grad_h->defined() ? *grad_h : at::Tensor();
  const auto run = [&](const std::optional<at::Tensor>& w,
                       const std::optional<at::Tensor>& b) {
    const at::Tensor wc = contiguous_or_undefined(w);
    const at::Tensor bc = contiguous_or_undefined(b);
    return rms ? norm_bwd<true>(grad_out, h, dh, mean, rstd, wc, bc, rows,
                                output_mask)
               : norm_bwd<false>(grad_out, h, dh, mean, rstd, wc, bc, rows,
                                 output_mask);
  };
  const bool low_params = weight.has_value() && weight->defined() &&
                          weight->scalar_type() != h.scalar_type();
  const bool low_bias = bias.has_value() && bias->defined() &&
                        bias->scalar_type() != h.scalar_type();
  if (low_params || low_bias)
    // half/bfloat16 weight/bias under a float32 h: the kernels take them in
    // h's dtype (N elements converted), dweight/dbias rounded back.
    return round_grads(run(as_float(weight), as_float(bias)), h.scalar_type(),
                       weight, bias);
  return run(weight, bias);
}

TORCH_LIBRARY_IMPL(fastln, CPU, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cpu);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cpu);
  m.impl("rms_norm_fwd", &rms_norm_fwd_cpu);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cpu);
  m.impl("add_norm_fwd", &add_norm_fwd_cpu);
  m.impl("add_norm_bwd", &add_norm_bwd_cpu);
}

}  // namespace cpu

// Name of the CPU kernels in use ("avx512", "avx2" or "base"), for benchmarks
// and tests.
std::string cpu_isa() { return cpu::isa_name(cpu::active_isa()); }

}  // namespace fastln
