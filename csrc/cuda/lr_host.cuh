// ATen side of the local relation op's CUDA kernels (paper Sec. 4): input checks, layouts (copies only for strides
// the kernels cannot index), dtype
// dispatch, output and workspace allocation, launch planning, then the raw launchers of lr_run.cuh on the
// current stream, each followed by C10_CUDA_KERNEL_LAUNCH_CHECK. Included by the op registration
// (local_relation_cuda.cu) and the emulator; the kernels themselves live in the lr_cuda_<dtype>.cu files.
#pragma once

#include <cstdint>
#include <limits>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../local_relation_checks.h"
#include "lr_run.cuh"

#if defined(LR_CUDA_EMULATE)
#define LR_CHECK_LAUNCH() ((void)0)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#define LR_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif

namespace lrrobust {
namespace cuda {

// The stream the kernels run on: PyTorch's current stream of the current device (the caller's CUDAGuard).
inline LrStream lr_current_stream() {
#if defined(LR_CUDA_EMULATE)
  return nullptr;
#else
  return c10::cuda::getCurrentCUDAStream();
#endif
}

// Sizes as 32-bit ints for the kernels: per-plane pixel indices and window offsets must fit (element
// offsets into whole tensors are formed in 64 bits).
inline LrGeom lr_geom(const LocalRelationShape& s, int64_t composability) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(s.n <= kIntMax && s.groups <= kIntMax && s.channels <= kIntMax,
              "local_relation (CUDA): batch, groups and channels must each be below 2^31");
  TORCH_CHECK(s.height < (int64_t(1) << 29) && s.width < (int64_t(1) << 29) && s.height * s.width <= kIntMax,
              "local_relation (CUDA): a feature map of ", s.height, "x", s.width,
              " is too large (at most 2^31 - 1 pixels per plane)");
  const int64_t radius = (s.kernel_size - 1) / 2;
  TORCH_CHECK(s.kernel_size * s.kernel_size <= kIntMax && radius * s.dilation < (int64_t(1) << 29) &&
                  s.stride < (int64_t(1) << 29),
              "local_relation (CUDA): kernel_size ", s.kernel_size, ", dilation ", s.dilation, " and stride ",
              s.stride, " are too large");
  LrGeom g{};
  g.n = static_cast<int>(s.n);
  g.groups = static_cast<int>(s.groups);
  g.channels = static_cast<int>(s.channels);
  g.per_group = static_cast<int>(s.per_group);
  g.height = static_cast<int>(s.height);
  g.width = static_cast<int>(s.width);
  g.out_h = static_cast<int>(s.out_height);
  g.out_w = static_cast<int>(s.out_width);
  g.ksize = static_cast<int>(s.kernel_size);
  g.radius = static_cast<int>(radius);
  g.stride = static_cast<int>(s.stride);
  g.dilation = static_cast<int>(s.dilation);
  g.kind = static_cast<int>(composability);
  return g;
}

// What the backward's planner may use: dynamic shared memory per block, the geo_prior partial sums' budget
// and cap (entries), and the blocks the gather pass should at least launch (kMinWaves per multiprocessor).
struct LrLimits {
  int64_t smem, partial_budget, partial_cap, min_blocks;
};

// The layout of a 4-D tensor whose pixels are evenly spaced (element (n, c, y, x) at
// n*stride(0) + c*stride(1) + (y*W + x)*pix): contiguous NCHW, channels-last and channel slices of either; false
// for any other strides (the caller copies those).
inline bool lr_layout_of(const at::Tensor& t, LrLayout& layout) {
  const int64_t height = t.size(2), width = t.size(3);
  int64_t pix = 1;
  if (width > 1) {
    pix = t.stride(3);
    if (height > 1 && t.stride(2) != width * pix) return false;
  } else if (height > 1) {
    pix = t.stride(2);
  }
  layout = LrLayout{t.stride(0), t.stride(1), pix};
  return true;
}

// t itself when the kernels can index it (lr_layout_of), else a contiguous copy: channels-last inputs of the
// --channels-last training, and the channel slices a layer's 1x1 convolution splits into query, key and value,
// are read in place.
inline at::Tensor lr_indexable(const at::Tensor& t) {
  LrLayout unused{};
  return lr_layout_of(t, unused) ? t : t.contiguous();
}

inline LrLayout lr_layout(const at::Tensor& t) {
  LrLayout layout{};
  TORCH_CHECK(lr_layout_of(t, layout), "local_relation (CUDA): internal error, a tensor the kernels cannot index");
  return layout;
}

// An uninitialised tensor of the given sizes in the memory format of `like` (channels-last stays channels-last).
inline at::Tensor lr_empty_like_format(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::empty(sizes, like.options().memory_format(like.suggest_memory_format()));
}

inline void lr_check_grid(int64_t blocks) {
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "local_relation (CUDA): ", blocks,
              " thread blocks exceed the grid limit of 2^31 - 1; split the batch");
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> lr_forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                              const at::Tensor& geo_prior, LrGeom g, int64_t smem_limit) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor out = lr_empty_like_format({g.n, g.channels, g.out_h, g.out_w}, value);
  at::Tensor lse =
      at::empty({g.n, g.groups, g.out_h, g.out_w}, value.options().dtype(lse_dtype_of(value.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  g.lay.query = lr_layout(query);
  g.lay.key = lr_layout(key);
  g.lay.value = lr_layout(value);
  g.lay.out = lr_layout(out);
  const LrTile t = lr_plan_forward(g, sizeof(scalar_t), sizeof(acc_t), smem_limit);
  lr_check_grid(int64_t(t.tiles_x) * t.tiles_y * g.groups * g.n);
  lr_run_forward<scalar_t>(query.const_data_ptr<scalar_t>(), key.const_data_ptr<scalar_t>(),
                           value.const_data_ptr<scalar_t>(), geo_prior.const_data_ptr<scalar_t>(),
                           out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), g, t, lr_current_stream());
  LR_CHECK_LAUNCH();
  return {out, lse};
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_backward(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, const at::Tensor& out, const at::Tensor& lse, LrGeom g, const LrLimits& lim) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor grad_query = lr_empty_like_format(query.sizes(), query);
  at::Tensor grad_key = lr_empty_like_format(key.sizes(), key);
  at::Tensor grad_value = lr_empty_like_format(value.sizes(), value);
  at::Tensor grad_geo = at::empty(geo_prior.sizes(), geo_prior.options());
  if (g.n == 0 || g.height == 0 || g.width == 0) {
    grad_query.zero_();
    grad_key.zero_();
    grad_value.zero_();
    grad_geo.zero_();
    return {grad_query, grad_key, grad_value, grad_geo};
  }
  g.lay = LrLayouts{lr_layout(query), lr_layout(key),        lr_layout(value),    lr_layout(grad_out),
                    lr_layout(out),   lr_layout(grad_query), lr_layout(grad_key), lr_layout(grad_value)};
  const LrStream stream = lr_current_stream();
  const at::TensorOptions acc_options = query.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* q = query.const_data_ptr<scalar_t>();
  const scalar_t* k = key.const_data_ptr<scalar_t>();
  const scalar_t* v = value.const_data_ptr<scalar_t>();
  const scalar_t* geo = geo_prior.const_data_ptr<scalar_t>();
  // grad_query and D = sum_c grad_out_c * out_c per output (N*G*Ho*Wo), the weights from the forward's lse.
  at::Tensor dsum = at::empty({g.n, g.groups, g.out_h, g.out_w}, acc_options);
  const LrTile tw = lr_plan_forward(g, sizeof(scalar_t), sizeof(acc_t), lim.smem);  // the same tiles as the forward
  lr_check_grid(int64_t(tw.tiles_x) * tw.tiles_y * g.groups * g.n);
  lr_run_stats<scalar_t>(go, q, k, v, geo, out.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(),
                         grad_query.mutable_data_ptr<scalar_t>(), dsum.mutable_data_ptr<acc_t>(), g, tw, stream);
  LR_CHECK_LAUNCH();
  // Gradients of key and value, and per-block partial sums of the geo_prior gradient, then their sum.
  const LrTile tg = lr_plan_gather_pass(g, sizeof(scalar_t), sizeof(acc_t), lim.smem, lim.partial_budget,
                                        lim.partial_cap, lim.min_blocks);
  const int64_t entries = int64_t(g.groups) * g.ksize * g.ksize;
  const int64_t slots = int64_t(tg.n_chunks) * tg.tile_slots;
  lr_check_grid(slots * g.groups);
  lr_check_grid(entries);
  at::Tensor partial = at::empty({entries * slots}, acc_options);
  lr_run_gather<scalar_t>(go, q, k, v, geo, lse.const_data_ptr<acc_t>(), dsum.const_data_ptr<acc_t>(),
                          grad_key.mutable_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<scalar_t>(),
                          partial.mutable_data_ptr<acc_t>(), g, tg, stream);
  LR_CHECK_LAUNCH();
  lr_run_geo_reduce<scalar_t>(partial.const_data_ptr<acc_t>(), slots, entries, grad_geo.mutable_data_ptr<scalar_t>(),
                              stream);
  LR_CHECK_LAUNCH();
  return {grad_query, grad_key, grad_value, grad_geo};
}

// Checked, indexable (lr_indexable), dispatched forward: (out, lse). The caller sets the device (CUDAGuard).
inline std::tuple<at::Tensor, at::Tensor> lr_forward_checked(const at::Tensor& query, const at::Tensor& key,
                                                             const at::Tensor& value, const at::Tensor& geo_prior,
                                                             int64_t kernel_size, int64_t stride, int64_t dilation,
                                                             int64_t composability, int64_t smem_limit) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  const LrGeom g = lr_geom(shape, composability);
  const at::Tensor q = lr_indexable(query), k = lr_indexable(key), v = lr_indexable(value);
  const at::Tensor gp = geo_prior.contiguous();
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "local_relation_forward_cuda",
                                  [&] { result = lr_forward<scalar_t>(q, k, v, gp, g, smem_limit); });
  return result;
}

// Checked, indexable (lr_indexable), dispatched backward from the forward's out and lse. The caller sets the
// device (CUDAGuard).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_backward_checked(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, const at::Tensor& out, const at::Tensor& lse, int64_t kernel_size, int64_t stride,
    int64_t dilation, int64_t composability, const LrLimits& lim) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == shape.n && grad_out.size(1) == shape.channels &&
                  grad_out.size(2) == shape.out_height && grad_out.size(3) == shape.out_width,
              "local_relation_backward: grad_out ", grad_out.sizes(), " must be (N, C, Ho, Wo) = (", shape.n, ", ",
              shape.channels, ", ", shape.out_height, ", ", shape.out_width, ")");
  TORCH_CHECK(grad_out.device() == value.device() && grad_out.scalar_type() == value.scalar_type(),
              "local_relation_backward: grad_out must have the device and dtype of value");
  check_saved_forward(out, lse, value, shape);
  const LrGeom g = lr_geom(shape, composability);
  const at::Tensor go = lr_indexable(grad_out), q = lr_indexable(query), k = lr_indexable(key);
  const at::Tensor v = lr_indexable(value), o = lr_indexable(out), gp = geo_prior.contiguous();
  const at::Tensor lse_c = lse.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "local_relation_backward_cuda", [&] {
    grads = lr_backward<scalar_t>(go, q, k, v, gp, o, lse_c, g, lim);
  });
  return grads;
}

}  // namespace cuda
}  // namespace lrrobust
