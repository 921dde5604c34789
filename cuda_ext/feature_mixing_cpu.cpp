// Feature Mixing, CPU kernel (arguments are checked by the caller, bindings.cpp).
//
// at::parallel_for over rows. Each task copies its rows in blocks of kRowBlock rows (one memcpy
// per modality: bandwidth-bound, like a clone), then, while the block is still in cache, draws
// the dims of each selected row (feature_mixing_math.h) and writes the swapped entries. The
// index scratch (perm + swap log) is allocated once per task and reset in O(N) per row.
// Cost beyond the copy, one thread: ~8 ns per Philox block (N/4 blocks per modality) plus ~3 ns
// per Fisher-Yates step and swap, i.e. ~100 ns per point at N = 8. (Precomputing the words of
// many rows to overlap the Philox chains measured no faster.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "feature_mixing_math.h"

namespace segood_fm {

namespace {

constexpr int64_t kRowBlock = 256;  // rows per memcpy: 2 x 64 KiB at d = 64 float32, fits L2

template <typename scalar_t>
void forward_rows(const scalar_t* in_c, const scalar_t* in_l, const bool* mask, scalar_t* out_c,
                  scalar_t* out_l, int64_t begin, int64_t end, int d_c, int d_l, int n,
                  uint64_t seed, uint32_t step) {
  std::vector<uint16_t> scratch(n > 0 ? d_c + d_l + 2 * n : 0);  // perm_c | perm_l | jpos_c | jpos_l
  uint16_t* perm_c = scratch.data();
  uint16_t* perm_l = perm_c + d_c;
  uint16_t* jpos_c = perm_l + d_l;
  uint16_t* jpos_l = jpos_c + n;
  if (n > 0) { iota_dims(perm_c, d_c); iota_dims(perm_l, d_l); }
  for (int64_t b0 = begin; b0 < end; b0 += kRowBlock) {
    const int64_t b1 = std::min(end, b0 + kRowBlock);
    std::memcpy(out_c + b0 * d_c, in_c + b0 * d_c, sizeof(scalar_t) * (b1 - b0) * d_c);
    std::memcpy(out_l + b0 * d_l, in_l + b0 * d_l, sizeof(scalar_t) * (b1 - b0) * d_l);
    if (n == 0) continue;
    for (int64_t p = b0; p < b1; ++p) {
      if (mask != nullptr && !mask[p]) continue;
      Stream s_c(seed, step, (uint64_t)p, 0), s_l(seed, step, (uint64_t)p, 1);
      select_dims(s_c, perm_c, d_c, n, jpos_c);
      select_dims(s_l, perm_l, d_l, n, jpos_l);
      swap_row(in_c + p * d_c, in_l + p * d_l, out_c + p * d_c, out_l + p * d_l, perm_c, perm_l, n);
      restore_dims(perm_c, n, jpos_c);
      restore_dims(perm_l, n, jpos_l);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& in_c, const at::Tensor& in_l,
                                               const std::optional<at::Tensor>& mask, int64_t n_swap,
                                               uint64_t seed, uint32_t step) {
  auto out_c = at::empty_like(in_c, at::MemoryFormat::Contiguous);
  auto out_l = at::empty_like(in_l, at::MemoryFormat::Contiguous);
  const int64_t rows = in_c.size(0);
  const int d_c = (int)in_c.size(1), d_l = (int)in_l.size(1), n = (int)n_swap;
  if (rows == 0) return {out_c, out_l};
  at::Tensor mask_c;
  if (mask.has_value()) mask_c = mask->contiguous();
  const bool* mask_ptr = mask_c.defined() ? mask_c.data_ptr<bool>() : nullptr;
  // ~32K elements per task (at::internal::GRAIN_SIZE), so small inputs stay on one thread.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max(1, d_c + d_l));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_c.scalar_type(), "segood_feature_mixing_cpu", [&] {
    const scalar_t* pc = in_c.data_ptr<scalar_t>();
    const scalar_t* pl = in_l.data_ptr<scalar_t>();
    scalar_t* oc = out_c.data_ptr<scalar_t>();
    scalar_t* ol = out_l.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      forward_rows<scalar_t>(pc, pl, mask_ptr, oc, ol, begin, end, d_c, d_l, n, seed, step);
    });
  });
  return {out_c, out_l};
}

}  // namespace segood_fm
