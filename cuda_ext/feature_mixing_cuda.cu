// Feature Mixing, CUDA kernel + launcher; registers the CUDA impls of the segood ops.
// Built only when fm_kernel.load_extension() finds CUDA (the CPU build never sees this file).
//
// One warp per point (grid-stride over points), no shared memory. Per point:
//   1. lanes copy both rows with consecutive lanes on consecutive elements (coalesced);
//   2. lane 0 draws the image Philox block, lane 1 the LiDAR one; __shfl_sync hands the words to
//      every lane, and lane k (k, k + 32, ...) computes dims k of both modalities (select_dim);
//   3. __syncwarp (orders the copies before the swaps, which may hit the same addresses);
//   4. lane k writes swapped entries k (distinct dims, so no conflicts).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cuBLAS / cuSPARSE headers,
                                  // and without it tools/check_cuda_compile.sh can compile this file
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "feature_mixing_math.h"

namespace segood_fm {

// Defined in bindings.cpp: argument checks, output allocation, then the device's worker.
using Worker = void (*)(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, uint64_t,
                        uint32_t, at::Tensor&, at::Tensor&);
std::tuple<at::Tensor, at::Tensor> mix_op(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask,
                                          int64_t n_swap, int64_t seed, int64_t step, bool backward, Worker worker);
void mix_into(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask, int64_t n_swap,
              int64_t seed, int64_t step, at::Tensor& out_c, at::Tensor& out_l, Worker worker);

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

template <typename scalar_t>
__global__ void feature_mixing_kernel(const scalar_t* __restrict__ in_c, const scalar_t* __restrict__ in_l,
                                      const bool* __restrict__ mask, scalar_t* __restrict__ out_c,
                                      scalar_t* __restrict__ out_l, int64_t rows, int d_c, int d_l, int n,
                                      uint64_t seed, uint32_t step) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const PermShape shape_c = perm_shape((uint32_t)d_c), shape_l = perm_shape((uint32_t)d_l);
  const int64_t warps_total = (int64_t)gridDim.x * (blockDim.x / kWarp);
  for (int64_t p = (int64_t)blockIdx.x * (blockDim.x / kWarp) + warp; p < rows; p += warps_total) {
    const scalar_t* rc = in_c + p * d_c;
    const scalar_t* rl = in_l + p * d_l;
    scalar_t* wc = out_c + p * d_c;
    scalar_t* wl = out_l + p * d_l;
    for (int i = lane; i < d_c; i += kWarp) wc[i] = rc[i];
    for (int i = lane; i < d_l; i += kWarp) wl[i] = rl[i];
    if (n == 0 || (mask != nullptr && !mask[p])) continue;  // warp-uniform branch
    uint32_t mine[4] = {0, 0, 0, 0}, wc4[4], wl4[4];
    if (lane < 2) point_words(seed, step, (uint64_t)p, (uint32_t)lane, mine);
    for (int i = 0; i < 4; ++i) {
      wc4[i] = __shfl_sync(0xFFFFFFFFu, mine[i], 0);
      wl4[i] = __shfl_sync(0xFFFFFFFFu, mine[i], 1);
    }
    const PermKeys keys_c = make_keys(wc4, shape_c), keys_l = make_keys(wl4, shape_l);
    __syncwarp();
    for (int k = lane; k < n; k += kWarp) {
      const uint32_t ic = select_dim((uint32_t)k, keys_c), il = select_dim((uint32_t)k, keys_l);
      wc[ic] = rl[il];
      wl[il] = rc[ic];
    }
    __syncwarp();  // the next point's copies after this point's swaps (other rows, but keep lanes together)
  }
}

void forward_cuda_into(const at::Tensor& in_c, const at::Tensor& in_l, const std::optional<at::Tensor>& mask,
                       int64_t n_swap, uint64_t seed, uint32_t step, at::Tensor& out_c, at::Tensor& out_l) {
  const c10::cuda::CUDAGuard guard(in_c.device());
  const int64_t rows = in_c.size(0);
  if (rows == 0) return;
  const int d_c = (int)in_c.size(1), d_l = (int)in_l.size(1), n = (int)n_swap;
  at::Tensor mask_c;
  if (mask.has_value()) mask_c = mask->contiguous();
  const bool* mask_ptr = mask_c.defined() ? mask_c.data_ptr<bool>() : nullptr;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, in_c.get_device()));
  const int64_t blocks = std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, (int64_t)sms * 32);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_c.scalar_type(), "segood_feature_mixing_cuda", [&] {
    feature_mixing_kernel<scalar_t><<<(unsigned)blocks, kWarpsPerBlock * kWarp, 0, stream>>>(
        in_c.data_ptr<scalar_t>(), in_l.data_ptr<scalar_t>(), mask_ptr, out_c.data_ptr<scalar_t>(),
        out_l.data_ptr<scalar_t>(), rows, d_c, d_l, n, seed, step);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor> feature_mixing_cuda(const at::Tensor& c, const at::Tensor& l,
                                                       const std::optional<at::Tensor>& mask,
                                                       int64_t n_swap, int64_t seed, int64_t step) {
  return mix_op(c, l, mask, n_swap, seed, step, false, &forward_cuda_into);
}

std::tuple<at::Tensor, at::Tensor> feature_mixing_backward_cuda(const at::Tensor& gc, const at::Tensor& gl,
                                                                const std::optional<at::Tensor>& mask,
                                                                int64_t n_swap, int64_t seed, int64_t step) {
  return mix_op(gc, gl, mask, n_swap, seed, step, true, &forward_cuda_into);
}

void feature_mixing_into_cuda(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask,
                              int64_t n_swap, int64_t seed, int64_t step, at::Tensor out_c, at::Tensor out_l) {
  mix_into(c, l, mask, n_swap, seed, step, out_c, out_l, &forward_cuda_into);
}

}  // namespace
}  // namespace segood_fm

TORCH_LIBRARY_IMPL(segood, CUDA, m) {
  m.impl("feature_mixing", &segood_fm::feature_mixing_cuda);
  m.impl("feature_mixing_backward", &segood_fm::feature_mixing_backward_cuda);
  m.impl("feature_mixing_into", &segood_fm::feature_mixing_into_cuda);
}
