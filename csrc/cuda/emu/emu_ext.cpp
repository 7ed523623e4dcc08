// Python binding of the CPU emulation of the local relation CUDA kernels (development check only; built by
// check_emulated.py with torch.utils.cpp_extension.load, never by setup.py). The launchers and kernels are
// the very code nvcc compiles (lr_host.cuh, lr_run_impl.cuh, lr_kernels.cuh); only the execution is emulated.
#include <torch/extension.h>

#define LR_CUDA_EMULATE 1
#include "../lr_run_impl.cuh"
#include "../lr_host.cuh"

namespace {

using lrrobust::cuda::LrGeom;
using lrrobust::cuda::LrTile;

// The forward's output and log-sum-exp.
std::vector<at::Tensor> forward_lse(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                    const at::Tensor& geo, int64_t kernel_size, int64_t stride, int64_t dilation,
                                    int64_t kind, int64_t smem_limit) {
  auto [out, lse] =
      lrrobust::cuda::lr_forward_checked(query, key, value, geo, kernel_size, stride, dilation, kind, smem_limit);
  return {out, lse};
}

at::Tensor forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& geo,
                   int64_t kernel_size, int64_t stride, int64_t dilation, int64_t kind, int64_t smem_limit) {
  return forward_lse(query, key, value, geo, kernel_size, stride, dilation, kind, smem_limit)[0];
}

// The backward from the forward's saved out and lse, as autograd calls it.
std::vector<at::Tensor> backward_saved(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& value, const at::Tensor& geo, const at::Tensor& out,
                                       const at::Tensor& lse, int64_t kernel_size, int64_t stride, int64_t dilation,
                                       int64_t kind, int64_t smem_limit, int64_t partial_budget, int64_t partial_cap,
                                       int64_t min_blocks) {
  const lrrobust::cuda::LrLimits lim{smem_limit, partial_budget, partial_cap, min_blocks};
  auto g = lrrobust::cuda::lr_backward_checked(grad_out, query, key, value, geo, out, lse, kernel_size, stride,
                                               dilation, kind, lim);
  return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g)};
}

// The emulated forward (with the same shared-memory limit), then the backward from its out and lse.
std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
                                 const at::Tensor& value, const at::Tensor& geo, int64_t kernel_size, int64_t stride,
                                 int64_t dilation, int64_t kind, int64_t smem_limit, int64_t partial_budget,
                                 int64_t partial_cap, int64_t min_blocks) {
  auto [out, lse] =
      lrrobust::cuda::lr_forward_checked(query, key, value, geo, kernel_size, stride, dilation, kind, smem_limit);
  return backward_saved(grad_out, query, key, value, geo, out, lse, kernel_size, stride, dilation, kind, smem_limit,
                        partial_budget, partial_cap, min_blocks);
}

// The one-output-per-thread plan of the window passes and the gather pass's plan: {tw, th, tiled, smem, rh, rw,
// n_chunks, n_per} each, then the gather pass's {tiles_per_block, tile_slots}, then {rows_per_thread, tiled} of
// what the forward and the statistics pass launch (lr_plan_forward: the row-stacked plan where it applies).
std::vector<int64_t> plan(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& geo, int64_t kernel_size, int64_t stride, int64_t dilation, int64_t kind,
                          int64_t smem_limit, int64_t partial_budget, int64_t partial_cap, int64_t min_blocks) {
  const auto shape =
      lrrobust::check_local_relation_inputs(query, key, value, geo, kernel_size, stride, dilation, kind);
  const LrGeom g = lrrobust::cuda::lr_geom(shape, kind);
  const int64_t scalar_bytes = value.element_size();
  const int64_t acc_bytes = value.scalar_type() == at::kDouble ? 8 : 4;
  const LrTile w = lrrobust::cuda::lr_plan_window_pass(g, scalar_bytes, acc_bytes, smem_limit);
  const LrTile f = lrrobust::cuda::lr_plan_forward(g, scalar_bytes, acc_bytes, smem_limit);
  const LrTile a = lrrobust::cuda::lr_plan_gather_pass(g, scalar_bytes, acc_bytes, smem_limit, partial_budget,
                                                       partial_cap, min_blocks);
  return {w.tw, w.th, w.tiled, w.smem, w.rh, w.rw, w.n_chunks, w.n_per,
          a.tw, a.th, a.tiled, a.smem, a.rh, a.rw, a.n_chunks, a.n_per, a.tiles_per_block, a.tile_slots,
          f.rows_per_thread, f.tiled};
}

void set_schedule(int64_t thread_order, int64_t block_order, int64_t seed) {
  lremu::set_schedule(static_cast<int>(thread_order), static_cast<int>(block_order), static_cast<uint64_t>(seed));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("forward_lse", &forward_lse);
  // Defaults: the production budget and cap, and no minimum block count (the emulator has no multiprocessors).
  m.def("backward", &backward, py::arg("grad_out"), py::arg("query"), py::arg("key"), py::arg("value"),
        py::arg("geo"), py::arg("kernel_size"), py::arg("stride"), py::arg("dilation"), py::arg("kind"),
        py::arg("smem_limit"), py::arg("partial_budget"), py::arg("partial_cap") = lrrobust::cuda::kPartialCap,
        py::arg("min_blocks") = 0);
  m.def("backward_saved", &backward_saved, py::arg("grad_out"), py::arg("query"), py::arg("key"), py::arg("value"),
        py::arg("geo"), py::arg("out"), py::arg("lse"), py::arg("kernel_size"), py::arg("stride"),
        py::arg("dilation"), py::arg("kind"), py::arg("smem_limit"), py::arg("partial_budget"),
        py::arg("partial_cap") = lrrobust::cuda::kPartialCap, py::arg("min_blocks") = 0);
  m.def("plan", &plan, py::arg("query"), py::arg("key"), py::arg("value"), py::arg("geo"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("dilation"), py::arg("kind"), py::arg("smem_limit"), py::arg("partial_budget"),
        py::arg("partial_cap") = lrrobust::cuda::kPartialCap, py::arg("min_blocks") = 0);
  m.def("set_schedule", &set_schedule);
}
