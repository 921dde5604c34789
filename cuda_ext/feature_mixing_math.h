// Feature Mixing: the math shared by the CPU and CUDA kernels (DEVELOPERS.md "Feature Mixing kernel").
//
// Plain C++ (no torch, no CUDA headers needed): every function is FM_HD, which is
// `__host__ __device__` under nvcc and nothing otherwise, so the CPU build, the CUDA build and
// segood/ood/fm_kernel.py (the Python reference) compute the same indices bit for bit.
//
// Random words of one point (64-bit row index p, 64-bit seed, 32-bit step), per modality:
//   ONE Philox4x32-10 block (Random123, 10 rounds), key = (seed_lo, seed_hi),
//   counter = (p_lo, p_hi, step, modality << 31),  modality 0 = image, 1 = LiDAR.
//
// Selection of N distinct dims out of d (per modality): dim_k = perm(k) for k < N, perm a
// random bijection of [0, d) keyed by those 4 words (PermKeys below). Each dim is selected with
// probability N / d exactly (up to the 2^-32 bias of the offset's multiply-shift); the N-subsets
// are NOT uniform over all C(d, N) (the permutations are a keyed family, not all d!), but pairs
// of dims co-occur within a few % of the uniform rate (tests/test_fm_kernel.py). The image and
// LiDAR permutations are independent, and the dims for N are a prefix of those for N + 1.
// (The previous rule, a partial Fisher-Yates with one Philox word per dim, drew 4x the Philox
// blocks at N = 16 and walked a scratch permutation serially per point.)
//
// Mix of one point, ic = image dims, il = LiDAR dims (both length N):
//   out_c = in_c, out_l = in_l, then for k < N: out_c[ic[k]] = in_l[il[k]],
//                                               out_l[il[k]] = in_c[ic[k]].
//   The map is its own transpose, so the backward is the same mix applied to the output grads.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define FM_HD __host__ __device__ __forceinline__
#else
#define FM_HD inline
#endif

namespace segood_fm {

// Largest d_c / d_l: dims are computed in 16-bit lanes (D = 2^ceil(log2 d) must divide 2^16).
constexpr int kMaxDim = 4096;

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// Philox4x32-10 block: out = philox(ctr, key). `out` may alias `ctr`.
FM_HD void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t x0 = ctr[0], x1 = ctr[1], x2 = ctr[2], x3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) { k0 += kPhiloxW0; k1 += kPhiloxW1; }
    const uint64_t p0 = (uint64_t)kPhiloxM0 * x0, p1 = (uint64_t)kPhiloxM1 * x2;
    const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    const uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    x0 = hi1 ^ x1 ^ k0; x1 = lo1; x2 = hi0 ^ x3 ^ k1; x3 = lo0;
  }
  out[0] = x0; out[1] = x1; out[2] = x2; out[3] = x3;
}

// The 4 words of (seed, step, point, modality): Philox4x32-10 of counter (p_lo, p_hi, step, modality << 31).
FM_HD void point_words(uint64_t seed, uint32_t step, uint64_t point, uint32_t modality, uint32_t out[4]) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  const uint32_t ctr[4] = {(uint32_t)point, (uint32_t)(point >> 32), step, modality << 31};
  philox4x32_10(ctr, key, out);
}

// The permutation of one (point, modality): a keyed bijection of [0, d) built from ONE Philox
// block (words w0..w3 of the stream), evaluated independently for every k (no scratch, no state).
//   bits = ceil(log2 d) (0 for d = 1), D = 2^bits, s = max(1, ceil(bits / 2));
//   offset = (w0 * d) >> 32;  round r = 0, 1, 2: a_r = (w_{r+1} & 0xFFFF) | 1, c_r = w_{r+1} >> 16;
//   pi(x) = three times { x = (a_r * x + c_r) mod D;  x ^= x >> s }      (a bijection of [0, D));
//   walk(x) = the first of pi(x), pi(pi(x)), ... below d   (cycle walking: a bijection of [0, d));
//   dim_k = (walk(k) + offset) mod d.
// 16-bit arithmetic is exact (D <= 4096 divides 2^16), so SIMD lanes of uint16 give the same bits.
struct PermShape {
  uint32_t d, mask, shift;  // d, D - 1, s
};

struct PermKeys {
  uint32_t d, mask, shift, offset;
  uint32_t a[3], c[3];
};

// D - 1 and s of a dimension d (1 <= d <= kMaxDim): computed once per call, not per point.
FM_HD PermShape perm_shape(uint32_t d) {
  uint32_t bits = 0;
  while ((1u << bits) < d) ++bits;
  return {d, (1u << bits) - 1u, bits > 1 ? (bits + 1) / 2 : 1u};
}

FM_HD PermKeys make_keys(const uint32_t w[4], const PermShape& shape) {
  PermKeys k;
  k.d = shape.d;
  k.mask = shape.mask;
  k.shift = shape.shift;
  k.offset = (uint32_t)(((uint64_t)w[0] * shape.d) >> 32);
  for (int r = 0; r < 3; ++r) { k.a[r] = (w[r + 1] & 0xFFFFu) | 1u; k.c[r] = w[r + 1] >> 16; }
  return k;
}

// pi: three rounds of multiply-add mod D and xorshift.
FM_HD uint32_t permute_pow2(uint32_t x, const PermKeys& k) {
  for (int r = 0; r < 3; ++r) {
    x = (k.a[r] * x + k.c[r]) & k.mask;
    x ^= x >> k.shift;
  }
  return x;
}

// walk(y) for y = pi(k) already computed, then the offset: the k-th selected dim.
FM_HD uint32_t finish_dim(uint32_t y, const PermKeys& k) {
  while (y >= k.d) y = permute_pow2(y, k);
  y += k.offset;
  return y >= k.d ? y - k.d : y;
}

// dim_k of the permutation: N distinct dims for k = 0..N-1 (the dims for N are a prefix of those for N + 1).
FM_HD uint32_t select_dim(uint32_t k, const PermKeys& keys) { return finish_dim(permute_pow2(k, keys), keys); }

// Keys of (seed, step, point, modality) for dimension d.
FM_HD PermKeys point_keys(uint64_t seed, uint32_t step, uint64_t point, uint32_t modality, uint32_t d) {
  uint32_t w[4];
  point_words(seed, step, point, modality, w);
  return make_keys(w, perm_shape(d));
}

// sel[k] = select_dim(k) for k < n; sel holds round_up(n, kDimLanes) entries. The pi loop runs
// in whole chunks of kDimLanes uint16 lanes with no branch (exact, see above), so compilers turn
// each chunk into one AVX2 vector (two SSE2 ones); the walk runs only when d is not a power of two.
constexpr int kDimLanes = 16;

FM_HD int dim_slots(int n) { return (n + kDimLanes - 1) / kDimLanes * kDimLanes; }

FM_HD void select_dims(const PermKeys& keys, int n, uint16_t* __restrict__ sel) {
  const uint16_t mask = (uint16_t)keys.mask, shift = (uint16_t)keys.shift;
  const uint16_t a0 = (uint16_t)keys.a[0], a1 = (uint16_t)keys.a[1], a2 = (uint16_t)keys.a[2];
  const uint16_t c0 = (uint16_t)keys.c[0], c1 = (uint16_t)keys.c[1], c2 = (uint16_t)keys.c[2];
  const uint16_t offset = (uint16_t)keys.offset;
  const bool pow2 = keys.d == keys.mask + 1;
  for (int k0 = 0; k0 < n; k0 += kDimLanes) {
    for (int j = 0; j < kDimLanes; ++j) {
      uint16_t x = (uint16_t)(k0 + j);
      x = (uint16_t)(a0 * x + c0) & mask;
      x ^= x >> shift;
      x = (uint16_t)(a1 * x + c1) & mask;
      x ^= x >> shift;
      x = (uint16_t)(a2 * x + c2) & mask;
      x ^= x >> shift;
      sel[k0 + j] = pow2 ? (uint16_t)((uint16_t)(x + offset) & mask) : x;
    }
  }
  if (!pow2) {
    for (int k = 0; k < n; ++k) sel[k] = (uint16_t)finish_dim(sel[k], keys);
  }
}

// The swap half of the mix: out rows already hold copies of the in rows.
template <typename T>
FM_HD void swap_row(const T* __restrict__ in_c, const T* __restrict__ in_l, T* __restrict__ out_c,
                    T* __restrict__ out_l, const uint16_t* __restrict__ ic, const uint16_t* __restrict__ il, int n) {
  for (int k = 0; k < n; ++k) { out_c[ic[k]] = in_l[il[k]]; out_l[il[k]] = in_c[ic[k]]; }
}

// The whole mix of one point: copy both rows, then swap (in and out must not overlap).
template <typename T>
FM_HD void mix_row(const T* in_c, const T* in_l, T* out_c, T* out_l, int d_c, int d_l,
                   const uint16_t* ic, const uint16_t* il, int n) {
  for (int i = 0; i < d_c; ++i) out_c[i] = in_c[i];
  for (int i = 0; i < d_l; ++i) out_l[i] = in_l[i];
  swap_row(in_c, in_l, out_c, out_l, ic, il, n);
}

}  // namespace segood_fm
