// Feature Mixing, CUDA kernel + launcher; registers the CUDA impls of the segood ops.
// Built only when fm_kernel.load_extension() finds CUDA (the CPU build never sees this file).
//
// One warp per point (grid-stride over points). Each warp owns a slice of shared memory with its
// index scratch: perm_c (d_c), perm_l (d_l), jpos_c (N), jpos_l (N), uint16, set to the identity
// once and reset in O(N) after every point (feature_mixing_math.h). Per point:
//   1. lanes copy both rows with consecutive lanes on consecutive elements (coalesced);
//   2. lane 0 draws the image dims, lane 1 the LiDAR dims (same code as the CPU);
//   3. __syncwarp (orders the copies before the swaps, which may hit the same addresses);
//   4. lanes k, k+32, ... write swapped entries k (distinct dims, so no conflicts);
//   5. __syncwarp, lanes 0/1 reset their perm.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "feature_mixing_math.h"

namespace segood_fm {

// Defined in bindings.cpp.
void check_inputs(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask,
                  int64_t n_swap, int64_t step, const char* name_c, const char* name_l);

namespace {

constexpr int kWarp = 32;
constexpr int kMaxWarpsPerBlock = 8;
constexpr int kSharedBudget = 48 * 1024;  // default dynamic shared memory limit per block

// uint16 slots of scratch per warp, rounded up to keep each slice 4-byte aligned.
__host__ __device__ inline int scratch_slots(int d_c, int d_l, int n) { return (d_c + d_l + 2 * n + 1) & ~1; }

template <typename scalar_t>
__global__ void feature_mixing_kernel(const scalar_t* __restrict__ in_c, const scalar_t* __restrict__ in_l,
                                      const bool* __restrict__ mask, scalar_t* __restrict__ out_c,
                                      scalar_t* __restrict__ out_l, int64_t rows, int d_c, int d_l, int n,
                                      uint64_t seed, uint32_t step) {
  extern __shared__ uint16_t shared[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  uint16_t* perm_c = shared + warp * scratch_slots(d_c, d_l, n);
  uint16_t* perm_l = perm_c + d_c;
  uint16_t* jpos_c = perm_l + d_l;
  uint16_t* jpos_l = jpos_c + n;
  for (int i = lane; i < d_c; i += kWarp) perm_c[i] = (uint16_t)i;
  for (int i = lane; i < d_l; i += kWarp) perm_l[i] = (uint16_t)i;
  __syncwarp();

  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x / kWarp);
  for (int64_t p = (int64_t)blockIdx.x * (blockDim.x / kWarp) + warp; p < rows; p += warps_total) {
    const scalar_t* rc = in_c + p * d_c;
    const scalar_t* rl = in_l + p * d_l;
    scalar_t* wc = out_c + p * d_c;
    scalar_t* wl = out_l + p * d_l;
    for (int i = lane; i < d_c; i += kWarp) wc[i] = rc[i];
    for (int i = lane; i < d_l; i += kWarp) wl[i] = rl[i];
    if (n == 0 || (mask != nullptr && !mask[p])) continue;  // warp-uniform branch
    if (lane == 0) { Stream s(seed, step, (uint64_t)p, 0); select_dims(s, perm_c, d_c, n, jpos_c); }
    if (lane == 1) { Stream s(seed, step, (uint64_t)p, 1); select_dims(s, perm_l, d_l, n, jpos_l); }
    __syncwarp();
    for (int k = lane; k < n; k += kWarp) {
      wc[perm_c[k]] = rl[perm_l[k]];
      wl[perm_l[k]] = rc[perm_c[k]];
    }
    __syncwarp();
    if (lane == 0) restore_dims(perm_c, n, jpos_c);
    if (lane == 1) restore_dims(perm_l, n, jpos_l);
    __syncwarp();
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& in_c, const at::Tensor& in_l,
                                                const std::optional<at::Tensor>& mask, int64_t n_swap,
                                                uint64_t seed, uint32_t step) {
  const c10::cuda::CUDAGuard guard(in_c.device());
  auto out_c = at::empty_like(in_c, at::MemoryFormat::Contiguous);
  auto out_l = at::empty_like(in_l, at::MemoryFormat::Contiguous);
  const int64_t rows = in_c.size(0);
  if (rows == 0) return {out_c, out_l};
  const int d_c = (int)in_c.size(1), d_l = (int)in_l.size(1), n = (int)n_swap;
  at::Tensor mask_c;
  if (mask.has_value()) mask_c = mask->contiguous();
  const bool* mask_ptr = mask_c.defined() ? mask_c.data_ptr<bool>() : nullptr;

  const int warp_bytes = scratch_slots(d_c, d_l, n) * (int)sizeof(uint16_t);  // <= 32 KiB (kMaxDim)
  const int warps = std::max(1, std::min(kMaxWarpsPerBlock, kSharedBudget / warp_bytes));
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::min<int64_t>((rows + warps - 1) / warps, sms * 32);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_c.scalar_type(), "segood_feature_mixing_cuda", [&] {
    feature_mixing_kernel<scalar_t><<<(unsigned)blocks, warps * kWarp, warps * warp_bytes, stream>>>(
        in_c.data_ptr<scalar_t>(), in_l.data_ptr<scalar_t>(), mask_ptr, out_c.data_ptr<scalar_t>(),
        out_l.data_ptr<scalar_t>(), rows, d_c, d_l, n, seed, step);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_c, out_l};
}

std::tuple<at::Tensor, at::Tensor> feature_mixing_cuda(const at::Tensor& c, const at::Tensor& l,
                                                       const std::optional<at::Tensor>& mask,
                                                       int64_t n_swap, int64_t seed, int64_t step) {
  check_inputs(c, l, mask, n_swap, step, "feat_image", "feat_lidar");
  return forward_cuda(c, l, mask, n_swap, (uint64_t)seed, (uint32_t)step);
}

std::tuple<at::Tensor, at::Tensor> feature_mixing_backward_cuda(const at::Tensor& gc, const at::Tensor& gl,
                                                                const std::optional<at::Tensor>& mask,
                                                                int64_t n_swap, int64_t seed, int64_t step) {
  check_inputs(gc, gl, mask, n_swap, step, "grad_image", "grad_lidar");
  return forward_cuda(gc, gl, mask, n_swap, (uint64_t)seed, (uint32_t)step);
}

}  // namespace
}  // namespace segood_fm

TORCH_LIBRARY_IMPL(segood, CUDA, m) {
  m.impl("feature_mixing", &segood_fm::feature_mixing_cuda);
  m.impl("feature_mixing_backward", &segood_fm::feature_mixing_backward_cuda);
}
