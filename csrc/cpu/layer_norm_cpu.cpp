// CPU backend of the fastln ops: the ops' CPU kernels (checks, allocation,
// dtype handling) and the choice of the row kernels' copy (copies.h) that runs
// them; the copies, with their threading and the deterministic dweight/dbias
// reduction, are copy_<isa>.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf
#endif

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "../layer_norm.h"
#include "copies.h"

namespace fastln {
namespace cpu {
namespace {

// The widest copy of the row kernels (copies.h) this processor runs.
const CpuCopy& detect_copy() {
#ifdef FASTLN_HAVE_X86_KERNELS
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") &&
                    __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  // FASTLN_CPU_ISA=base or =avx2 forces a narrower copy (to test or compare
  // them); a copy the processor lacks is never chosen.
  const char* forced = std::getenv("FASTLN_CPU_ISA");
  if (forced != nullptr && std::string(forced) == "base") return kCopyBase;
  if (forced != nullptr && std::string(forced) == "avx2" && avx2)
    return kCopyAvx2;
  return avx512 ? kCopyAvx512 : avx2 ? kCopyAvx2 : kCopyBase;
#else
  return kCopyBase;
#endif
}

// The copy in use, chosen on first use (the kCopy* tables are constants, so
// this is safe from any static initializer).
const CpuCopy& active_copy() {
  static const CpuCopy& copy = detect_copy();
  return copy;
}

// This machine's cache size at `level` (2 or 3) in bytes as the C library
// reports it (from cpuid, on glibc), or `fallback` where it reports none.
int64_t cache_bytes(int level, int64_t fallback) {
  long bytes = -1;
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  bytes = sysconf(level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
#endif
  (void)level;
  return bytes > 0 ? static_cast<int64_t>(bytes) : fallback;
}

// The size from which outputs are written with non-temporal stores
// (kernels.h, StreamStore; INT64_MAX: never), which skip the read each plain
// store makes of its line first (write-allocate). An output larger than the
// private L2 caches of the threads writing it (threads x L2) leaves them for
// the L3, which other cores (and, on a cloud machine, other tenants) share:
// whether it stays there is not this process's to know. Measured on an Intel
// Xeon (2 threads, 2 MiB L2, a nominal 105 MiB L3: 4 MiB here) against the
// former fixed 16 MiB, two interleaved runs over eight 4-13 MB shapes
// (1024 x 1000 .. 256 x 12288): float32 geomeans against torch fwd 1.01-1.02x
// -> 1.10-1.12x, bwd 0.97-1.00x -> 1.20-1.23x, fwdbwd 0.98x -> 1.16-1.18x;
// bfloat16 within the runs' noise (bwd 1.54-1.69x vs 1.58-1.60x).
// Capped at half the L3: past that the output cannot stay cached beside the
// input that streams past it (the first rule, measured on AMD EPYC's 32 MiB
// L3: unstreamed, the float32 forward of a 16 MiB tensor ran at 67% of copy
// bandwidth). A fused add counts everything it writes (y and h forward), and
// in the backward the grad_h it reads beside dx.
// FASTLN_CPU_STREAM=<bytes> sets the threshold (=1 streams every output,
// which the tests use to run the streaming paths on small shapes);
// FASTLN_CPU_STREAM=0 turns streaming off.
int64_t stream_threshold() {
  // The threshold the environment sets, or 0 for the cache rule.
  static const int64_t forced = [] {
    const char* env = std::getenv("FASTLN_CPU_STREAM");
    if (env == nullptr || *env == '\0') return int64_t{0};
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
  if (forced != 0) return forced;
  // Fallbacks where the C library reports no sizes: 1 MiB L2, 32 MiB L3.
  static const int64_t l2 = cache_bytes(2, int64_t{1} << 20);
  static const int64_t l3 = cache_bytes(3, int64_t{32} << 20);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::min(threads * l2, l3 / 2);
}

}  // namespace

bool stream_output(int64_t bytes) { return bytes >= stream_threshold(); }

namespace {

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
  active_copy().backward[kRms](grad_out.contiguous(), input.contiguous(),
                               grad_h.defined() ? grad_h.contiguous() : grad_h,
                               kRms ? mean : mean.contiguous(),
                               rstd.contiguous(), w_in, M, N, dx, dw, db);
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
  active_copy().forward[0](input.contiguous(), at::Tensor(), at::Tensor(),
                           contiguous_or_undefined(weight),
                           contiguous_or_undefined(bias), eps, M, N, out, mean,
                           rstd);
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
    active_copy().forward[1](input.contiguous(), at::Tensor(), at::Tensor(),
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
    active_copy().forward[rms](x, res, h, w, b, eps, rows.M, rows.N, out, mean,
                               rstd);
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
std::string cpu_isa() { return cpu::active_copy().name; }

int64_t cpu_stream_bytes() { return cpu::stream_threshold(); }

}  // namespace fastln
