// Feature Mixing: the math shared by the CPU and CUDA kernels (DEVELOPERS.md "Feature Mixing kernel").
//
// Plain C++ (no torch, no CUDA headers needed): every function is FM_HD, which is
// `__host__ __device__` under nvcc and nothing otherwise, so the CPU build, the CUDA build and
// segood/ood/fm_kernel.py (the Python reference) compute the same indices bit for bit.
//
// Random stream of one point (64-bit row index p, 64-bit seed, 32-bit step):
//   Philox4x32-10 (Random123, 10 rounds), key = (seed_lo, seed_hi),
//   counter = (p_lo, p_hi, step, (modality << 31) | block),  modality 0 = image, 1 = LiDAR.
//   The u32 words of a modality are the outputs of block 0 (lanes 0..3), then block 1, ...
//   so word w = philox(ctr with block = w / 4)[w % 4]. The two modalities read independent
//   sub-streams, hence the image dims for N are a prefix of the image dims for N + 1.
//
// Selection of N distinct dims out of d (per modality): partial Fisher-Yates on perm = 0..d-1:
//   for k in 0..N-1:  j = k + ((uint64)word_k * (d - k)) >> 32;  swap(perm[k], perm[j])
//   (draw_position, take_dim)
//   selected dims = perm[0..N) (an ordered sample: uniform over ordered N-tuples up to the
//   multiply-shift bias, (d - k) / 2^32 < 1e-6). The perm scratch is reset in O(N) after use
//   (restore_dims), so a thread pays the O(d) iota once, not once per point.
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

// Largest d_c / d_l: dims are stored as uint16 and a CUDA warp keeps 2 * (d_c + d_l + 2N)
// bytes of scratch in shared memory (<= 32 KiB at the limit).
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

// Philox block `block` of the word stream of (seed, step, point, modality): words 4*block..4*block+3.
FM_HD void stream_block(uint64_t seed, uint32_t step, uint64_t point, uint32_t modality, uint32_t block,
                        uint32_t out[4]) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  const uint32_t ctr[4] = {(uint32_t)point, (uint32_t)(point >> 32), step, (modality << 31) | block};
  philox4x32_10(ctr, key, out);
}

// The u32 word stream of one (seed, step, point, modality), drawn block by block on demand.
struct Stream {
  uint64_t seed, point;
  uint32_t step, modality, block, buf[4];
  int used;  // words of buf already handed out (4 = buffer empty)

  FM_HD Stream(uint64_t seed_, uint32_t step_, uint64_t point_, uint32_t modality_)
      : seed(seed_), point(point_), step(step_), modality(modality_), block(0), used(4) {}
  FM_HD uint32_t next() {
    if (used == 4) { stream_block(seed, step, point, modality, block++, buf); used = 0; }
    return buf[used++];
  }
};

// perm[i] = i for i < d (the state select_dims expects and restore_dims returns to).
FM_HD void iota_dims(uint16_t* perm, int d) {
  for (int i = 0; i < d; ++i) perm[i] = (uint16_t)i;
}

// Step k of the partial Fisher-Yates draws its swap partner j in [k, d) from one u32 word.
FM_HD uint32_t draw_position(uint32_t word, int d, int k) {
  return (uint32_t)k + (uint32_t)(((uint64_t)word * (uint32_t)(d - k)) >> 32);
}

// Swap positions k and j of the permutation and return the dim now at position k. Positions
// below k are never read again, so the caller may keep that dim elsewhere (sel != perm): only
// perm[j] must be written.
FM_HD uint16_t take_dim(uint16_t* perm, int k, uint32_t j) {
  const uint16_t v = perm[j];
  perm[j] = perm[k];
  return v;
}

// Partial Fisher-Yates: on return perm[0..n) are the n selected dims; jpos[k] records the swap
// partner of step k so restore_dims can undo it. perm must be the identity on entry. Words is
// Stream or anything else with uint32_t next(). (The CPU kernel runs the same steps with
// partners drawn in bulk and the dims kept in a separate array.)
template <typename Words>
FM_HD void select_dims(Words& stream, uint16_t* perm, int d, int n, uint16_t* jpos) {
  for (int k = 0; k < n; ++k) {
    const uint32_t j = draw_position(stream.next(), d, k);
    jpos[k] = (uint16_t)j;
    perm[k] = take_dim(perm, k, j);
  }
}

// Back to the identity after select_dims: only positions k < n and jpos[k] were touched.
FM_HD void restore_dims(uint16_t* perm, int n, const uint16_t* jpos) {
  for (int k = 0; k < n; ++k) { perm[k] = (uint16_t)k; perm[jpos[k]] = jpos[k]; }
}

// The swap half of the mix: out rows already hold copies of the in rows.
template <typename T>
FM_HD void swap_row(const T* in_c, const T* in_l, T* out_c, T* out_l,
                    const uint16_t* ic, const uint16_t* il, int n) {
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
