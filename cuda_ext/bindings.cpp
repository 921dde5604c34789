// Torch operator registration for the Feature Mixing kernel (namespace `segood`).
//
//   segood::feature_mixing(feat_image, feat_lidar, mask, n_swap, seed, step) -> (mixed_image, mixed_lidar)
//   segood::feature_mixing_backward(grad_image, grad_lidar, mask, n_swap, seed, step) -> (grad_image_in, grad_lidar_in)
//   segood::feature_mixing_into(feat_image, feat_lidar, mask, n_swap, seed, step, out_image, out_lidar) -> ()
//       the forward into given outputs (no autograd; for benchmarks and inference buffers)
//   segood::philox_debug(counters, seed) -> words          (CPU only; for the tests)
//   segood::dims_debug(seed, step, point, modality, d, n) -> dims  (CPU only; select_dim, the CUDA
//       kernel's per-lane function, which the CPU kernel does not call)
//
// Inputs are contiguous (P, d_c) / (P, d_l) floating tensors on one device; mask is an optional
// bool (P,) tensor (None = every row). Rows with mask False are copied unchanged. The RNG point
// index is the row index, so masking rows never changes the draws of the others. The swap is its
// own transpose, so the backward is the same mix applied to the output gradients.
// Autograd is registered from Python (segood/ood/fm_kernel.py, torch.library.register_autograd).
// The CUDA kernels register themselves in feature_mixing_cuda.cu (only built with CUDA).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "feature_mixing_math.h"

namespace segood_fm {

void forward_cpu_into(const at::Tensor& in_c, const at::Tensor& in_l, const std::optional<at::Tensor>& mask,
                      int64_t n_swap, uint64_t seed, uint32_t step, at::Tensor& out_c, at::Tensor& out_l);
using Worker = decltype(&forward_cpu_into);  // the device's kernel launcher (also forward_cuda_into)
std::string cpu_path();

static const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    default: return c10::toString(t);
  }
}

// Argument checks shared by every device (mix_op / mix_into run them). The texts
// match the Python-side checks in fm_kernel.py; TORCH_CHECK_TYPE / _VALUE surface as Python
// TypeError / ValueError.
void check_inputs(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask,
                  int64_t n_swap, int64_t step, const char* name_c, const char* name_l) {
  for (const auto* t : {&c, &l}) {
    const char* name = t == &c ? name_c : name_l;
    const auto s = t->scalar_type();
    TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
                     name, " must be float32, float64, float16 or bfloat16, got ", dtype_name(s));
    TORCH_CHECK_VALUE(t->dim() == 2, name, " must be 2-D (P, d), got shape ", t->sizes());
    TORCH_CHECK_VALUE(t->size(1) <= kMaxDim, name, " has ", t->size(1),
                      " dims; the kernel supports at most ", kMaxDim);
    TORCH_CHECK_VALUE(t->is_contiguous(), name, " must be contiguous (call .contiguous() first)");
  }
  TORCH_CHECK_TYPE(c.scalar_type() == l.scalar_type(), name_c, " and ", name_l,
                   " must have the same dtype, got ", dtype_name(c.scalar_type()), " and ",
                   dtype_name(l.scalar_type()));
  TORCH_CHECK_VALUE(c.device() == l.device(), name_c, " and ", name_l,
                    " must be on the same device, got ", c.device(), " and ", l.device());
  TORCH_CHECK_VALUE(c.size(0) == l.size(0), name_c, " and ", name_l,
                    " must have the same number of points, got ", c.size(0), " and ", l.size(0));
  const int64_t max_swap = std::min(c.size(1), l.size(1));
  TORCH_CHECK_VALUE(n_swap >= 0 && n_swap <= max_swap, "n_swap must be in [0, min(d_c, d_l)] = [0, ",
                    max_swap, "], got ", n_swap);
  TORCH_CHECK_VALUE(step >= 0 && step <= int64_t(0xFFFFFFFF), "step must be in [0, 2**32), got ", step);
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, "mask must be a bool tensor, got ",
                     c10::toString(m.scalar_type()));
    TORCH_CHECK_VALUE(m.dim() == 1 && m.size(0) == c.size(0), "mask must have shape (P,) = (",
                      c.size(0), ",), got ", m.sizes());
    TORCH_CHECK_VALUE(m.device() == c.device(), "mask must be on the features' device ", c.device(),
                      ", got ", m.device());
  }
}

// Checks, allocates the outputs and runs `worker` (shared by the CPU and CUDA registrations).
std::tuple<at::Tensor, at::Tensor> mix_op(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask,
                                          int64_t n_swap, int64_t seed, int64_t step, bool backward, Worker worker) {
  check_inputs(c, l, mask, n_swap, step, backward ? "grad_image" : "feat_image", backward ? "grad_lidar" : "feat_lidar");
  auto out_c = at::empty_like(c, at::MemoryFormat::Contiguous);
  auto out_l = at::empty_like(l, at::MemoryFormat::Contiguous);
  worker(c, l, mask, n_swap, (uint64_t)seed, (uint32_t)step, out_c, out_l);
  return {out_c, out_l};
}

// feature_mixing_into: the outputs must match the inputs (shape, dtype, device, contiguous) and
// not overlap them (the kernel reads an input row after writing the output row).
void mix_into(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask, int64_t n_swap,
              int64_t seed, int64_t step, at::Tensor& out_c, at::Tensor& out_l, Worker worker) {
  check_inputs(c, l, mask, n_swap, step, "feat_image", "feat_lidar");
  for (const auto& [in, out, name] : {std::tuple<const at::Tensor&, const at::Tensor&, const char*>{c, out_c, "out_image"},
                                      {l, out_l, "out_lidar"}}) {
    TORCH_CHECK_VALUE(out.sizes() == in.sizes() && out.scalar_type() == in.scalar_type() && out.device() == in.device()
                          && out.is_contiguous(),
                      name, " must be a contiguous ", dtype_name(in.scalar_type()), " tensor of shape ", in.sizes(),
                      " on ", in.device(), ", got ", dtype_name(out.scalar_type()), " ", out.sizes(), " on ", out.device());
    for (const auto* other : {&c, &l}) {
      const auto* lo = (const char*)other->data_ptr();
      const auto* hi = lo + other->nbytes();
      const auto* o = (const char*)out.data_ptr();
      TORCH_CHECK_VALUE(o + out.nbytes() <= lo || o >= hi || out.nbytes() == 0, name, " overlaps an input");
    }
  }
  worker(c, l, mask, n_swap, (uint64_t)seed, (uint32_t)step, out_c, out_l);
}

static std::tuple<at::Tensor, at::Tensor> feature_mixing_cpu(const at::Tensor& c, const at::Tensor& l,
                                                             const std::optional<at::Tensor>& mask,
                                                             int64_t n_swap, int64_t seed, int64_t step) {
  return mix_op(c, l, mask, n_swap, seed, step, false, &forward_cpu_into);
}

static std::tuple<at::Tensor, at::Tensor> feature_mixing_backward_cpu(
    const at::Tensor& gc, const at::Tensor& gl, const std::optional<at::Tensor>& mask, int64_t n_swap,
    int64_t seed, int64_t step) {
  return mix_op(gc, gl, mask, n_swap, seed, step, true, &forward_cpu_into);
}

static void feature_mixing_into_cpu(const at::Tensor& c, const at::Tensor& l, const std::optional<at::Tensor>& mask,
                                    int64_t n_swap, int64_t seed, int64_t step, at::Tensor out_c, at::Tensor out_l) {
  mix_into(c, l, mask, n_swap, seed, step, out_c, out_l, &forward_cpu_into);
}

// dims[k] = select_dim(k) of (seed, step, point, modality) for dimension d, k < n.
static at::Tensor dims_debug_cpu(int64_t seed, int64_t step, int64_t point, int64_t modality, int64_t d, int64_t n) {
  TORCH_CHECK_VALUE(d >= 1 && d <= kMaxDim && n >= 0 && n <= d && (modality == 0 || modality == 1),
                    "dims_debug: need 1 <= d <= ", kMaxDim, ", 0 <= n <= d, modality 0 or 1");
  const PermKeys keys = point_keys((uint64_t)seed, (uint32_t)step, (uint64_t)point, (uint32_t)modality, (uint32_t)d);
  auto out = at::empty({n}, at::kLong);
  for (int64_t k = 0; k < n; ++k) out.data_ptr<int64_t>()[k] = select_dim((uint32_t)k, keys);
  return out;
}

// words[i] = Philox4x32-10(counters[i], key = (seed_lo, seed_hi)); int64 in and out, u32 values.
static at::Tensor philox_debug_cpu(const at::Tensor& counters, int64_t seed) {
  TORCH_CHECK_TYPE(counters.scalar_type() == at::kLong, "counters must be int64, got ",
                   c10::toString(counters.scalar_type()));
  TORCH_CHECK_VALUE(counters.dim() == 2 && counters.size(1) == 4, "counters must have shape (n, 4), got ",
                    counters.sizes());
  const auto ctr = counters.contiguous();
  auto out = at::empty_like(ctr);
  const int64_t* src = ctr.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  const uint32_t key[2] = {(uint32_t)(uint64_t)seed, (uint32_t)((uint64_t)seed >> 32)};
  for (int64_t i = 0; i < ctr.size(0); ++i) {
    uint32_t x[4];
    for (int j = 0; j < 4; ++j) x[j] = (uint32_t)src[4 * i + j];
    philox4x32_10(x, key, x);
    for (int j = 0; j < 4; ++j) dst[4 * i + j] = (int64_t)x[j];
  }
  return out;
}

}  // namespace segood_fm

TORCH_LIBRARY(segood, m) {
  m.def("feature_mixing(Tensor feat_image, Tensor feat_lidar, Tensor? mask, int n_swap, int seed, "
        "int step) -> (Tensor, Tensor)");
  m.def("feature_mixing_backward(Tensor grad_image, Tensor grad_lidar, Tensor? mask, int n_swap, "
        "int seed, int step) -> (Tensor, Tensor)");
  m.def("feature_mixing_into(Tensor feat_image, Tensor feat_lidar, Tensor? mask, int n_swap, int seed, int step, "
        "Tensor(a!) out_image, Tensor(b!) out_lidar) -> ()");
  m.def("philox_debug(Tensor counters, int seed) -> Tensor");
  m.def("dims_debug(int seed, int step, int point, int modality, int d, int n) -> Tensor", &segood_fm::dims_debug_cpu);
  m.def("cpu_path() -> str", &segood_fm::cpu_path);  // "avx2" or "scalar": which CPU draw path runs
}

TORCH_LIBRARY_IMPL(segood, CPU, m) {
  m.impl("feature_mixing", &segood_fm::feature_mixing_cpu);
  m.impl("feature_mixing_backward", &segood_fm::feature_mixing_backward_cpu);
  m.impl("feature_mixing_into", &segood_fm::feature_mixing_into_cpu);
  m.impl("philox_debug", &segood_fm::philox_debug_cpu);
}
