// Schemas of the local relation op (Hu et al., "Local Relation Networks for Image Recognition", Sec. 4).
// Kernels live in cpu/ and cuda/, each registering itself with TORCH_LIBRARY_IMPL; autograd and fake
// (meta) kernels are registered from Python (lrrobust/ops).
#include <Python.h>
#include <torch/library.h>

#include <vector>

#include "cuda/lr_plan.cuh"  // plain host C++: the CUDA launch planner, here so it can be tested without a GPU

extern "C" {
// An empty module so `import lrrobust._C` loads this library and runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {

// The CUDA kernels' launch plans (cuda/lr_plan.cuh) for a call's sizes, computed on the host: what a GPU would
// launch, for tests and tools on any machine. Returns three plans of {tw, th, tiled, smem, rh, rw, tiles_x, tiles_y,
// n_chunks, n_per, tiles_per_block, tile_slots, rows_per_thread}: what the forward and the statistics pass launch
// (lr_plan_forward), the one-output-per-thread plan they fall back to, and the gather pass's.
std::vector<int64_t> cuda_launch_plan(int64_t n, int64_t channels, int64_t groups, int64_t height, int64_t width,
                                      int64_t kernel_size, int64_t stride, int64_t dilation, int64_t element_size,
                                      int64_t smem_limit, int64_t partial_budget, int64_t partial_cap,
                                      int64_t min_blocks) {
  constexpr int64_t kBound = int64_t(1) << 29;
  TORCH_CHECK(n >= 0 && n < kBound && channels >= 1 && channels < kBound && groups >= 1 && groups <= channels,
              "cuda_launch_plan: need 0 <= n, 1 <= groups <= channels");
  TORCH_CHECK(height >= 1 && width >= 1 && height < kBound && width < kBound && height * width < kBound,
              "cuda_launch_plan: height and width must be positive and below 2^29 pixels in all");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size < 4096 && stride >= 1 && stride < 4096 &&
                  dilation >= 1 && dilation < 4096,
              "cuda_launch_plan: kernel_size must be odd, and kernel_size, stride, dilation in [1, 4096)");
  TORCH_CHECK(element_size == 2 || element_size == 4 || element_size == 8, "cuda_launch_plan: element_size 2, 4 or 8");
  TORCH_CHECK(smem_limit >= 0 && partial_budget >= 0 && partial_cap >= 0 && min_blocks >= 0,
              "cuda_launch_plan: limits must be >= 0");
  lrrobust::cuda::LrGeom g{};
  g.n = static_cast<int>(n);
  g.channels = static_cast<int>(channels);
  g.groups = static_cast<int>(groups);
  g.per_group = static_cast<int>((channels + groups - 1) / groups);
  g.height = static_cast<int>(height);
  g.width = static_cast<int>(width);
  g.out_h = static_cast<int>((height + stride - 1) / stride);
  g.out_w = static_cast<int>((width + stride - 1) / stride);
  g.ksize = static_cast<int>(kernel_size);
  g.radius = static_cast<int>((kernel_size - 1) / 2);
  g.stride = static_cast<int>(stride);
  g.dilation = static_cast<int>(dilation);
  const int64_t acc_size = element_size == 8 ? 8 : 4;
  const auto f = lrrobust::cuda::lr_plan_forward(g, element_size, acc_size, smem_limit);
  const auto w = lrrobust::cuda::lr_plan_window_pass(g, element_size, acc_size, smem_limit);
  const auto a = lrrobust::cuda::lr_plan_gather_pass(g, element_size, acc_size, smem_limit, partial_budget,
                                                     partial_cap, min_blocks);
  std::vector<int64_t> out;
  for (const auto& t : {f, w, a}) {
    out.insert(out.end(), {t.tw, t.th, t.tiled, t.smem, t.rh, t.rw, t.tiles_x, t.tiles_y, t.n_chunks, t.n_per,
                           t.tiles_per_block, t.tile_slots, t.rows_per_thread});
  }
  return out;
}

// The planner's production limits: {shared memory per block, partial-sum budget, partial-sum cap, waves}.
std::vector<int64_t> cuda_plan_limits() {
  namespace c = lrrobust::cuda;
  return {c::kSharedLimit, c::kPartialBudget, c::kPartialCap, c::kMinWaves};
}

}  // namespace

TORCH_LIBRARY(lrrobust, m) {
  // composability: 0 = squared difference (Eq. 3), 1 = absolute difference (Eq. 4), 2 = product (Eq. 5).
  // The forward returns the output and lse (N, G, Ho, Wo), the log-sum-exp of each output's logits in base 2
  // (log2 sum_ab exp(logit_ab)) in the accumulation dtype (double for double, else float); the backward takes both
  // back (the CUDA backward reads its weights from lse and D = sum_c grad_out * out from out; the CPU backward
  // checks them and recomputes).
  m.def(
      "local_relation_forward(Tensor query, Tensor key, Tensor value, Tensor geo_prior, int kernel_size, "
      "int stride, int dilation, int composability) -> (Tensor, Tensor)");
  m.def(
      "local_relation_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor geo_prior, "
      "Tensor out, Tensor lse, int kernel_size, int stride, int dilation, int composability) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cuda_launch_plan(int n, int channels, int groups, int height, int width, int kernel_size, int stride, "
      "int dilation, int element_size, int smem_limit, int partial_budget, int partial_cap, int min_blocks) -> int[]",
      &cuda_launch_plan);
  m.def("cuda_plan_limits() -> int[]", &cuda_plan_limits);
}
