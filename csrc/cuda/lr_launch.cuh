// Host side of the CUDA kernels of the local relation op (paper Sec. 4): argument checks, dtype dispatch
// and the declarations of the per-dtype launchers (defined in lr_launch_impl.cuh, instantiated once per
// dtype in lr_cuda_<dtype>.cu so the files compile in parallel).
#pragma once

#include <cstdint>
#include <limits>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../local_relation_checks.h"
#include "lr_plan.cuh"

namespace lrrobust {
namespace cuda {

template <typename scalar_t>
at::Tensor lr_forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      const at::Tensor& geo_prior, const LrGeom& g, int64_t smem_limit);

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_backward(const at::Tensor& grad_out,
                                                                       const at::Tensor& query,
                                                                       const at::Tensor& key,
                                                                       const at::Tensor& value,
                                                                       const at::Tensor& geo_prior,
                                                                       const LrGeom& g, int64_t smem_limit,
                                                                       int64_t partial_budget);

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

// Checked, contiguous, dispatched forward. The caller sets the device (CUDAGuard).
inline at::Tensor lr_forward_checked(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                     const at::Tensor& geo_prior, int64_t kernel_size, int64_t stride,
                                     int64_t dilation, int64_t composability, int64_t smem_limit) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  const LrGeom g = lr_geom(shape, composability);
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const at::Tensor gp = geo_prior.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "local_relation_forward_cuda",
                                  [&] { out = lr_forward<scalar_t>(q, k, v, gp, g, smem_limit); });
  return out;
}

// Checked, contiguous, dispatched backward. The caller sets the device (CUDAGuard).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_backward_checked(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, int64_t kernel_size, int64_t stride, int64_t dilation, int64_t composability,
    int64_t smem_limit, int64_t partial_budget) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == shape.n && grad_out.size(1) == shape.channels &&
                  grad_out.size(2) == shape.out_height && grad_out.size(3) == shape.out_width,
              "local_relation_backward: grad_out ", grad_out.sizes(), " must be (N, C, Ho, Wo) = (", shape.n, ", ",
              shape.channels, ", ", shape.out_height, ", ", shape.out_width, ")");
  TORCH_CHECK(grad_out.device() == value.device() && grad_out.scalar_type() == value.scalar_type(),
              "local_relation_backward: grad_out must have the device and dtype of value");
  const LrGeom g = lr_geom(shape, composability);
  const at::Tensor go = grad_out.contiguous(), q = query.contiguous(), k = key.contiguous();
  const at::Tensor v = value.contiguous(), gp = geo_prior.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "local_relation_backward_cuda", [&] {
    grads = lr_backward<scalar_t>(go, q, k, v, gp, g, smem_limit, partial_budget);
  });
  return grads;
}

}  // namespace cuda
}  // namespace lrrobust
