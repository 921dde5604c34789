// Feature Mixing, CPU kernel (arguments are checked by the caller, bindings.cpp).
//
// at::parallel_for over rows (needs -fopenmp: ATen's CPU backend is OpenMP and parallel_for is an
// inline `#pragma omp parallel`, silently serial without the flag; fm_kernel._build passes it).
// A task works in blocks of kRowBlock rows:
//   1. the Philox blocks of every selected row of the block (one per modality) are computed
//      together, 8 counters per AVX2 instruction when the CPU has AVX2, else one by one with the
//      header's philox4x32_10;
//   2. the dims of every selected row (select_dims: branch-free 16-bit arithmetic, 16 lanes per
//      AVX2 instruction), all before the first swap;
//   3. each row is copied (copy_row, the row stays in L1) and, if selected, swapped (swap_row).
// The AVX2 path re-implements philox4x32_10 on 8 lanes and compiles the row loop for AVX2; the
// tests pin it to the Python reference bit for bit, and SEGOOD_FM_SIMD=0 forces the portable
// path (tested the same way).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SEGOOD_FM_X86 1
#endif

#include "feature_mixing_math.h"

namespace segood_fm {

namespace {

constexpr int64_t kRowBlock = 64;

// The Philox counters of one row block, lane i = 2 * (selected row r) + modality, and their words.
struct BlockDraws {
  std::vector<uint32_t> lo, hi, w3, out[4];

  BlockDraws() {
    for (auto* v : {&lo, &hi, &w3, &out[0], &out[1], &out[2], &out[3]}) v->assign(kRowBlock * 2, 0);
  }
  // The permutation keys of modality `mod` of the r-th selected row.
  PermKeys keys(int r, int mod, const PermShape& shape) const {
    const int i = 2 * r + mod;
    const uint32_t w[4] = {out[0][i], out[1][i], out[2][i], out[3][i]};
    return make_keys(w, shape);
  }
};

void draws_scalar(BlockDraws& b, int count, uint32_t step, const uint32_t key[2]) {
  for (int i = 0; i < count; ++i) {
    const uint32_t ctr[4] = {b.lo[i], b.hi[i], step, b.w3[i]};
    uint32_t out[4];
    philox4x32_10(ctr, key, out);
    for (int L = 0; L < 4; ++L) b.out[L][i] = out[L];
  }
}

#ifdef SEGOOD_FM_X86
// hi and lo 32-bit halves of the lane-wise products x * m (8 u32 lanes).
__attribute__((target("avx2"))) inline void mulhilo8(__m256i x, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(x, m);                                               // lanes 0,2,4,6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(m, 32));  // lanes 1,3,5,7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

__attribute__((target("avx2"))) void draws_avx2(BlockDraws& b, int count, uint32_t step, const uint32_t key[2]) {
  const __m256i m0 = _mm256_set1_epi32((int)kPhiloxM0), m1 = _mm256_set1_epi32((int)kPhiloxM1);
  for (int i = 0; i < count; i += 8) {  // lanes past count compute garbage nobody reads
    __m256i x0 = _mm256_loadu_si256((const __m256i*)&b.lo[i]), x1 = _mm256_loadu_si256((const __m256i*)&b.hi[i]);
    __m256i x2 = _mm256_set1_epi32((int)step), x3 = _mm256_loadu_si256((const __m256i*)&b.w3[i]);
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      if (round > 0) { k0 += kPhiloxW0; k1 += kPhiloxW1; }
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(x0, m0, hi0, lo0);
      mulhilo8(x2, m1, hi1, lo1);
      x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)k0));
      x1 = lo1;
      x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)k1));
      x3 = lo0;
    }
    _mm256_storeu_si256((__m256i*)&b.out[0][i], x0);
    _mm256_storeu_si256((__m256i*)&b.out[1][i], x1);
    _mm256_storeu_si256((__m256i*)&b.out[2][i], x2);
    _mm256_storeu_si256((__m256i*)&b.out[3][i], x3);
  }
}

// select_dims on 16 uint16 lanes per instruction (the same arithmetic as the header's loop).
__attribute__((target("avx2"))) inline void select_dims_avx2(const PermKeys& k, int n, uint16_t* sel) {
  const __m128i shift = _mm_cvtsi32_si128((int)k.shift);
  const __m256i mask = _mm256_set1_epi16((short)k.mask), offset = _mm256_set1_epi16((short)k.offset);
  __m256i a[3], c[3];
  for (int r = 0; r < 3; ++r) { a[r] = _mm256_set1_epi16((short)k.a[r]); c[r] = _mm256_set1_epi16((short)k.c[r]); }
  const bool pow2 = k.d == k.mask + 1;
  __m256i x = _mm256_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int k0 = 0; k0 < n; k0 += kDimLanes) {
    __m256i y = x;
    for (int r = 0; r < 3; ++r) {
      y = _mm256_and_si256(_mm256_add_epi16(_mm256_mullo_epi16(y, a[r]), c[r]), mask);
      y = _mm256_xor_si256(y, _mm256_srl_epi16(y, shift));
    }
    if (pow2) y = _mm256_and_si256(_mm256_add_epi16(y, offset), mask);
    _mm256_storeu_si256((__m256i*)(sel + k0), y);
    x = _mm256_add_epi16(x, _mm256_set1_epi16(kDimLanes));
  }
  if (!pow2) {
    for (int i = 0; i < n; ++i) sel[i] = (uint16_t)finish_dim(sel[i], k);
  }
}
#endif

bool use_avx2() {
#ifdef SEGOOD_FM_X86
  static const bool yes = __builtin_cpu_supports("avx2") && [] {
    const char* env = std::getenv("SEGOOD_FM_SIMD");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return yes;
#else
  return false;
#endif
}

// One row, inline (measured ~1 ns per row cheaper than a libc memcpy call per 256-byte row).
template <typename scalar_t>
__attribute__((always_inline)) inline void copy_row(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int d) {
  for (int i = 0; i < d; ++i) out[i] = in[i];
}

// Rows [begin, end): block by block, draws, dims, then copy + swap per row. Always inlined
// into forward_rows_avx2 / forward_rows_portable, so the row loop is compiled for each target.
template <typename scalar_t, bool kAvx2>
__attribute__((always_inline)) inline void forward_rows_impl(
    const scalar_t* in_c, const scalar_t* in_l, const bool* mask, scalar_t* out_c, scalar_t* out_l,
    int64_t begin, int64_t end, int d_c, int d_l, int n, uint64_t seed, uint32_t step) {
  if (n == 0) {  // the identity: a plain copy
    std::memcpy(out_c + begin * d_c, in_c + begin * d_c, sizeof(scalar_t) * (end - begin) * d_c);
    std::memcpy(out_l + begin * d_l, in_l + begin * d_l, sizeof(scalar_t) * (end - begin) * d_l);
    return;
  }
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  const int slots = dim_slots(n);  // per row and modality
  std::vector<uint16_t> sel(2 * (size_t)slots * kRowBlock);  // row r: image dims, then LiDAR dims
  const PermShape shape_c = perm_shape((uint32_t)d_c), shape_l = perm_shape((uint32_t)d_l);
  BlockDraws draws;
  for (int64_t b0 = begin; b0 < end; b0 += kRowBlock) {
    const int64_t b1 = std::min(end, b0 + kRowBlock);
    int count = 0;  // Philox counters of the selected rows of this block
    for (int64_t p = b0; p < b1; ++p) {
      if (mask != nullptr && !mask[p]) continue;
      for (uint32_t mod = 0; mod < 2; ++mod, ++count) {
        draws.lo[count] = (uint32_t)p;
        draws.hi[count] = (uint32_t)((uint64_t)p >> 32);
        draws.w3[count] = mod << 31;
      }
    }
    // 1. words, then the dims of every selected row (all of them before the first swap: reading
    //    the dims right after their vector store stalls on store-to-load forwarding).
#ifdef SEGOOD_FM_X86
    if (kAvx2) draws_avx2(draws, count, step, key); else draws_scalar(draws, count, step, key);
#else
    draws_scalar(draws, count, step, key);
#endif
    for (int r = 0; r < count / 2; ++r) {
      uint16_t* s = sel.data() + (size_t)r * 2 * slots;
#ifdef SEGOOD_FM_X86
      if (kAvx2) {
        select_dims_avx2(draws.keys(r, 0, shape_c), n, s);
        select_dims_avx2(draws.keys(r, 1, shape_l), n, s + slots);
        continue;
      }
#endif
      select_dims(draws.keys(r, 0, shape_c), n, s);
      select_dims(draws.keys(r, 1, shape_l), n, s + slots);
    }
    // 2. copy every row, swap the selected ones (the row is still in L1)
    int r = 0;  // index of the row among the selected ones
    for (int64_t p = b0; p < b1; ++p) {
      const scalar_t* rc = in_c + p * d_c;
      const scalar_t* rl = in_l + p * d_l;
      scalar_t* wc = out_c + p * d_c;
      scalar_t* wl = out_l + p * d_l;
      copy_row(rc, wc, d_c);
      copy_row(rl, wl, d_l);
      if (mask != nullptr && !mask[p]) continue;
      const uint16_t* s = sel.data() + (size_t)r * 2 * slots;
      swap_row(rc, rl, wc, wl, s, s + slots, n);
      ++r;
    }
  }
}

#ifdef SEGOOD_FM_X86
template <typename scalar_t>
__attribute__((target("avx2"))) void forward_rows_avx2(const scalar_t* in_c, const scalar_t* in_l, const bool* mask,
                                                       scalar_t* out_c, scalar_t* out_l, int64_t begin, int64_t end,
                                                       int d_c, int d_l, int n, uint64_t seed, uint32_t step) {
  forward_rows_impl<scalar_t, true>(in_c, in_l, mask, out_c, out_l, begin, end, d_c, d_l, n, seed, step);
}
#endif

template <typename scalar_t>
void forward_rows(const scalar_t* in_c, const scalar_t* in_l, const bool* mask, scalar_t* out_c,
                  scalar_t* out_l, int64_t begin, int64_t end, int d_c, int d_l, int n,
                  uint64_t seed, uint32_t step) {
#ifdef SEGOOD_FM_X86
  if (use_avx2()) return forward_rows_avx2(in_c, in_l, mask, out_c, out_l, begin, end, d_c, d_l, n, seed, step);
#endif
  forward_rows_impl<scalar_t, false>(in_c, in_l, mask, out_c, out_l, begin, end, d_c, d_l, n, seed, step);
}

}  // namespace

std::string cpu_path() { return use_avx2() ? "avx2" : "scalar"; }

void forward_cpu_into(const at::Tensor& in_c, const at::Tensor& in_l, const std::optional<at::Tensor>& mask,
                      int64_t n_swap, uint64_t seed, uint32_t step, at::Tensor& out_c, at::Tensor& out_l) {
  const int64_t rows = in_c.size(0);
  const int d_c = (int)in_c.size(1), d_l = (int)in_l.size(1), n = (int)n_swap;
  if (rows == 0) return;
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
}

}  // namespace segood_fm
