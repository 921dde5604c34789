// Feature Mixing, CPU kernel (arguments are checked by the caller, bindings.cpp).
//
// at::parallel_for over rows (needs -fopenmp: ATen's CPU backend is OpenMP and parallel_for is an
// inline `#pragma omp parallel`, silently serial without the flag; fm_kernel._build passes it).
// A task works in blocks of kRowBlock rows:
//   1. the Philox blocks of every selected row of the block, both modalities, are computed
//      together and turned into Fisher-Yates swap partners (draw_position), 8 counters per AVX2
//      instruction when the CPU has AVX2, else one by one with the header's philox4x32_10;
//   2. each row is copied (one memcpy per modality, the row stays in L1) and, if selected, its
//      dims are picked (take_dim) and swapped (swap_row); the perm scratch is reset in O(N).
// The AVX2 path re-implements philox4x32_10 and draw_position on 8 lanes; the tests pin it to the
// Python reference bit for bit, and SEGOOD_FM_SIMD=0 forces the scalar path (tested the same way).
// Measured, one thread, P = 100k, d = 64 + 64, N = 16: 150 ns per point (copy ~45, Philox ~35,
// Fisher-Yates and swaps the rest) against 265 ns for one Philox stream per row.
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

// The Philox counters of one row block, lane i = (selected row r, modality, block b) in that
// order, and the swap partners they give: pos[L][i] = draw_position(philox(ctr_i)[L], d, 4b + L).
struct BlockDraws {
  std::vector<uint32_t> lo, hi, w3, pos[4];
  int blocks_per_row = 0;  // per modality: ceil(N / 4)

  void reserve(int n) {
    blocks_per_row = (n + 3) / 4;
    const size_t lanes = (size_t)(kRowBlock * 2 * blocks_per_row + 7) / 8 * 8;  // whole AVX2 vectors
    for (auto* v : {&lo, &hi, &w3, &pos[0], &pos[1], &pos[2], &pos[3]}) v->assign(lanes, 0);
  }
  // Swap partner of step k of modality `mod` of the r-th selected row.
  uint32_t partner(int r, int mod, int k) const { return pos[k & 3][(r * 2 + mod) * blocks_per_row + (k >> 2)]; }
};

void draws_scalar(BlockDraws& b, int count, uint32_t step, const uint32_t key[2], int d_c, int d_l) {
  for (int i = 0; i < count; ++i) {
    const uint32_t ctr[4] = {b.lo[i], b.hi[i], step, b.w3[i]};
    uint32_t out[4];
    philox4x32_10(ctr, key, out);
    const int d = (b.w3[i] >> 31) ? d_l : d_c, k0 = 4 * (int)(b.w3[i] & 0x7FFFFFFFu);
    for (int L = 0; L < 4; ++L) b.pos[L][i] = draw_position(out[L], d, k0 + L);
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

__attribute__((target("avx2"))) void draws_avx2(BlockDraws& b, int count, uint32_t step, const uint32_t key[2],
                                                int d_c, int d_l) {
  const __m256i m0 = _mm256_set1_epi32((int)kPhiloxM0), m1 = _mm256_set1_epi32((int)kPhiloxM1);
  const __m256i vd_c = _mm256_set1_epi32(d_c), vd_l = _mm256_set1_epi32(d_l);
  for (int i = 0; i < count; i += 8) {
    const __m256i w3 = _mm256_loadu_si256((const __m256i*)&b.w3[i]);
    __m256i x0 = _mm256_loadu_si256((const __m256i*)&b.lo[i]), x1 = _mm256_loadu_si256((const __m256i*)&b.hi[i]);
    __m256i x2 = _mm256_set1_epi32((int)step), x3 = w3;
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
    // draw_position: k + hi(word * (d - k)), d by modality (top bit of w3), k = 4 * block + lane.
    const __m256i d = _mm256_blendv_epi8(vd_c, vd_l, _mm256_srai_epi32(w3, 31));
    const __m256i k4 = _mm256_slli_epi32(_mm256_and_si256(w3, _mm256_set1_epi32(0x7FFFFFFF)), 2);
    const __m256i words[4] = {x0, x1, x2, x3};
    for (int L = 0; L < 4; ++L) {
      const __m256i k = _mm256_add_epi32(k4, _mm256_set1_epi32(L));
      __m256i hi, lo;
      mulhilo8(words[L], _mm256_sub_epi32(d, k), hi, lo);
      _mm256_storeu_si256((__m256i*)&b.pos[L][i], _mm256_add_epi32(k, hi));
    }
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

void compute_draws(BlockDraws& b, int count, uint32_t step, const uint32_t key[2], int d_c, int d_l) {
#ifdef SEGOOD_FM_X86
  if (use_avx2()) return draws_avx2(b, count, step, key, d_c, d_l);
#endif
  draws_scalar(b, count, step, key, d_c, d_l);
}

template <typename scalar_t>
void forward_rows(const scalar_t* in_c, const scalar_t* in_l, const bool* mask, scalar_t* out_c,
                  scalar_t* out_l, int64_t begin, int64_t end, int d_c, int d_l, int n,
                  uint64_t seed, uint32_t step) {
  if (n == 0) {  // the identity: a plain copy
    std::memcpy(out_c + begin * d_c, in_c + begin * d_c, sizeof(scalar_t) * (end - begin) * d_c);
    std::memcpy(out_l + begin * d_l, in_l + begin * d_l, sizeof(scalar_t) * (end - begin) * d_l);
    return;
  }
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  std::vector<uint16_t> scratch(d_c + d_l + 4 * n);  // perm_c | perm_l | jpos_c | jpos_l | sel_c | sel_l
  uint16_t* perm_c = scratch.data();
  uint16_t* perm_l = perm_c + d_c;
  uint16_t* jpos_c = perm_l + d_l;
  uint16_t* jpos_l = jpos_c + n;
  uint16_t* sel_c = jpos_l + n;
  uint16_t* sel_l = sel_c + n;
  iota_dims(perm_c, d_c);
  iota_dims(perm_l, d_l);
  BlockDraws draws;
  draws.reserve(n);
  const int nb = draws.blocks_per_row;
  for (int64_t b0 = begin; b0 < end; b0 += kRowBlock) {
    const int64_t b1 = std::min(end, b0 + kRowBlock);
    int count = 0;  // Philox counters of the selected rows of this block
    for (int64_t p = b0; p < b1; ++p) {
      if (mask != nullptr && !mask[p]) continue;
      for (uint32_t mod = 0; mod < 2; ++mod) {
        for (int blk = 0; blk < nb; ++blk, ++count) {
          draws.lo[count] = (uint32_t)p;
          draws.hi[count] = (uint32_t)((uint64_t)p >> 32);
          draws.w3[count] = (mod << 31) | (uint32_t)blk;
        }
      }
    }
    compute_draws(draws, count, step, key, d_c, d_l);
    int r = 0;  // index of the row among the selected ones
    for (int64_t p = b0; p < b1; ++p) {
      const scalar_t* rc = in_c + p * d_c;
      const scalar_t* rl = in_l + p * d_l;
      scalar_t* wc = out_c + p * d_c;
      scalar_t* wl = out_l + p * d_l;
      std::memcpy(wc, rc, sizeof(scalar_t) * d_c);
      std::memcpy(wl, rl, sizeof(scalar_t) * d_l);
      if (mask != nullptr && !mask[p]) continue;
      for (int k = 0; k < n; ++k) {  // select_dims of both modalities, partners precomputed
        const uint32_t jc = draws.partner(r, 0, k), jl = draws.partner(r, 1, k);
        jpos_c[k] = (uint16_t)jc;
        jpos_l[k] = (uint16_t)jl;
        sel_c[k] = take_dim(perm_c, k, jc);
        sel_l[k] = take_dim(perm_l, k, jl);
      }
      swap_row(rc, rl, wc, wl, sel_c, sel_l, n);
      restore_dims(perm_c, n, jpos_c);
      restore_dims(perm_l, n, jpos_l);
      ++r;
    }
  }
}

}  // namespace

std::string cpu_path() { return use_avx2() ? "avx2" : "scalar"; }

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
