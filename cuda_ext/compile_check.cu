// Compile-only check of feature_mixing_math.h under nvcc (no torch headers needed), run by
// tools/check_cuda_compile.sh: a one-thread-per-point kernel built from the shared header, and
// a host function using the same code, so both the __device__ and __host__ paths instantiate.
#include <stdint.h>

#include "feature_mixing_math.h"

using namespace segood_fm;

template <typename T>
__global__ void mix_thread_per_point(const T* in_c, const T* in_l, T* out_c, T* out_l, int64_t rows,
                                     int d_c, int d_l, int n, uint64_t seed, uint32_t step) {
  constexpr int kSlots = 256;  // this check's local scratch (n <= 256)
  uint16_t sel_c[kSlots], sel_l[kSlots];
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < rows; p += (int64_t)gridDim.x * blockDim.x) {
    select_dims(point_keys(seed, step, (uint64_t)p, 0, (uint32_t)d_c), n, sel_c);
    select_dims(point_keys(seed, step, (uint64_t)p, 1, (uint32_t)d_l), n, sel_l);
    mix_row(in_c + p * d_c, in_l + p * d_l, out_c + p * d_c, out_l + p * d_l, d_c, d_l, sel_c, sel_l, n);
  }
}

__global__ void philox_words(const uint32_t* ctr, uint32_t* out, int64_t n, uint64_t seed) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  if (i < n) philox4x32_10(ctr + 4 * i, key, out + 4 * i);
}

template __global__ void mix_thread_per_point<float>(const float*, const float*, float*, float*, int64_t, int,
                                                     int, int, uint64_t, uint32_t);
template __global__ void mix_thread_per_point<double>(const double*, const double*, double*, double*, int64_t,
                                                      int, int, int, uint64_t, uint32_t);

uint32_t host_first_dim(uint64_t seed) { return select_dim(0, point_keys(seed, 0, 0, 0, 64)); }
