// The host side of one copy of the CPU row kernels: the loops that hand rows
// to threads (at::parallel_for), the parameter conversions, and the
// deterministic dweight/dbias reduction, around the kernels of that copy.
// Included by copy_unit.h inside a namespace of its own (host_base,
// host_avx2, host_avx512) in which `kernels` names the copy (isa_base, ...),
// so that each copy's translation unit instantiates exactly the kernels its
// loops call; this code itself is compiled for the baseline target, as the
// rest of the library (no target pragma: see kernels.h on what GCC 12 did
// to out-of-line lambdas under one). No include guard, includes nothing:
// copy_unit.h includes what it needs first.

// Rows handed to one task at a time: about 8K elements of work per task
// (2-5 us, bfloat16/half rows the slower end) amortizes the 1-2 us it costs
// at::parallel_for to wake another thread; 32K left rows of 64 x 512
// bfloat16 on one thread while torch used two.
inline int64_t row_grain(int64_t N) {
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
    ptr_ = kernels::row_as_acc(p.const_data_ptr<scalar_t>(), p.numel(),
                               copy_.get());
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

inline BlockPlan plan_blocks(int64_t M, int64_t N) {
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
            kernels::kReadInPlace<scalar_t> && !h.defined();
        const auto run = [&](const auto& load) {
          at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
            std::vector<acc_t> scratch(read_in_place ? 0 : N);
            kernels::forward_rows<kRms>(x_ptr, load, w_acc.get(), b_acc.get(),
                                        y_ptr, mean_ptr, rstd_ptr, N, eps_acc,
                                        begin, end, scratch.data(), stream);
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
        const int64_t scratch_size = kernels::kReadInPlace<scalar_t> &&
                                             dy.scalar_type() == x.scalar_type()
                                         ? 0
                                         : 2 * kernels::kTileRows * N;
        // Sums per row in the partials: dy * xhat, and dy unless RMSNorm.
        constexpr int64_t kSums = kRms ? 1 : 2;

        const auto run = [&](const auto* dy_ptr, const auto& dh) {
          const auto rows = [&](int64_t begin, int64_t end, acc_t* sums,
                                acc_t* scratch) {
            kernels::backward_rows<kRms>(dy_ptr, x_ptr, mean_ptr, rstd_ptr,
                                         w_ptr, dh, dx_ptr, sums,
                                         sums == nullptr ? nullptr : sums + N,
                                         N, begin, end, scratch, stream);
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
                kernels::row_from_acc(tile, n, out + t0);
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
