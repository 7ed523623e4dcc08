// Definitions of the per-dtype launchers of the local relation op's CUDA kernels (paper Sec. 4).
// Included by lr_cuda_<dtype>.cu (nvcc) and by the CPU emulator (emu/), which runs the same code.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "lr_kernels.cuh"
#include "lr_launch.cuh"

#if defined(__CUDACC__)
// c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream names; ATen/cuda/CUDAContext.h would
// also pull in the cuBLAS/cuSPARSE headers, which a minimal CUDA toolkit lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace lrrobust {
namespace cuda {

// Launches kernel on blocks x (block.x, block.y) threads on the current stream, then checks the launch.
template <typename... KernelArgs, typename... Args>
void lr_launch(void (*kernel)(KernelArgs...), int64_t blocks, dim3 block, int64_t smem, Args... args) {
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "local_relation (CUDA): ", blocks,
              " blocks exceed the grid limit; use a smaller batch");
#if defined(__CUDACC__)
  kernel<<<dim3(static_cast<unsigned>(blocks)), block, static_cast<size_t>(smem),
           c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  ::lremu::launch(kernel, blocks, block, smem, args...);
#endif
}

inline int64_t lr_tiles(const LrTile& t) { return int64_t(t.tiles_x) * t.tiles_y; }

template <typename scalar_t>
at::Tensor lr_forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      const at::Tensor& geo_prior, const LrGeom& g, int64_t smem_limit) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor out = at::empty({g.n, g.channels, g.out_h, g.out_w}, value.options());
  if (out.numel() == 0) return out;
  const LrTile t = lr_plan_window_pass(g, sizeof(scalar_t), sizeof(acc_t), smem_limit);
  const int64_t blocks = lr_tiles(t) * g.groups * g.n;
  const dim3 block(t.tw, t.th);
  const scalar_t* q = query.const_data_ptr<scalar_t>();
  const scalar_t* k = key.const_data_ptr<scalar_t>();
  const scalar_t* v = value.const_data_ptr<scalar_t>();
  const scalar_t* geo = geo_prior.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  if (!t.tiled) {
    lr_launch(lr_forward_kernel<scalar_t, -1, false>, blocks, block, 0, q, k, v, geo, o, g, t);
  } else if (g.kind == 0) {
    lr_launch(lr_forward_kernel<scalar_t, 0, true>, blocks, block, t.smem, q, k, v, geo, o, g, t);
  } else if (g.kind == 1) {
    lr_launch(lr_forward_kernel<scalar_t, 1, true>, blocks, block, t.smem, q, k, v, geo, o, g, t);
  } else {
    lr_launch(lr_forward_kernel<scalar_t, 2, true>, blocks, block, t.smem, q, k, v, geo, o, g, t);
  }
  return out;
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_backward(const at::Tensor& grad_out,
                                                                       const at::Tensor& query,
                                                                       const at::Tensor& key,
                                                                       const at::Tensor& value,
                                                                       const at::Tensor& geo_prior,
                                                                       const LrGeom& g, int64_t smem_limit,
                                                                       int64_t partial_budget) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor grad_query = at::empty(query.sizes(), query.options());
  at::Tensor grad_key = at::empty(key.sizes(), key.options());
  at::Tensor grad_value = at::empty(value.sizes(), value.options());
  at::Tensor grad_geo = at::empty(geo_prior.sizes(), geo_prior.options());
  if (g.n == 0 || g.height == 0 || g.width == 0) {
    grad_query.zero_();
    grad_key.zero_();
    grad_value.zero_();
    grad_geo.zero_();
    return {grad_query, grad_key, grad_value, grad_geo};
  }
  const at::TensorOptions acc_options = query.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  // Per-output statistics (N*G*Ho*Wo each): the log-sum-exp of the logits and D = sum_ab w*dw.
  at::Tensor lse = at::empty({g.n, g.groups, g.out_h, g.out_w}, acc_options);
  at::Tensor dsum = at::empty({g.n, g.groups, g.out_h, g.out_w}, acc_options);
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* q = query.const_data_ptr<scalar_t>();
  const scalar_t* k = key.const_data_ptr<scalar_t>();
  const scalar_t* v = value.const_data_ptr<scalar_t>();
  const scalar_t* geo = geo_prior.const_data_ptr<scalar_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  acc_t* dsum_p = dsum.mutable_data_ptr<acc_t>();
  scalar_t* gq = grad_query.mutable_data_ptr<scalar_t>();
  {
    const LrTile t = lr_plan_window_pass(g, sizeof(scalar_t), sizeof(acc_t), smem_limit);
    const int64_t blocks = lr_tiles(t) * g.groups * g.n;
    const dim3 block(t.tw, t.th);
    if (!t.tiled) {
      lr_launch(lr_stats_kernel<scalar_t, -1, false>, blocks, block, 0, go, q, k, v, geo, gq, lse_p, dsum_p, g, t);
    } else if (g.kind == 0) {
      lr_launch(lr_stats_kernel<scalar_t, 0, true>, blocks, block, t.smem, go, q, k, v, geo, gq, lse_p, dsum_p, g, t);
    } else if (g.kind == 1) {
      lr_launch(lr_stats_kernel<scalar_t, 1, true>, blocks, block, t.smem, go, q, k, v, geo, gq, lse_p, dsum_p, g, t);
    } else {
      lr_launch(lr_stats_kernel<scalar_t, 2, true>, blocks, block, t.smem, go, q, k, v, geo, gq, lse_p, dsum_p, g, t);
    }
  }
  {
    const LrTile t = lr_plan_gather_pass(g, sizeof(scalar_t), sizeof(acc_t), smem_limit, partial_budget);
    const int64_t kk = int64_t(g.ksize) * g.ksize;
    const int64_t slots = int64_t(t.n_chunks) * lr_tiles(t);
    at::Tensor partial = at::empty({g.groups * kk * slots}, acc_options);
    acc_t* part = partial.mutable_data_ptr<acc_t>();
    scalar_t* gk = grad_key.mutable_data_ptr<scalar_t>();
    scalar_t* gv = grad_value.mutable_data_ptr<scalar_t>();
    const int64_t blocks = lr_tiles(t) * g.groups * t.n_chunks;
    const dim3 block(t.tw, t.th);
    if (!t.tiled) {
      lr_launch(lr_gather_kernel<scalar_t, -1, false>, blocks, block, t.smem, go, q, k, v, geo,
                static_cast<const acc_t*>(lse_p), static_cast<const acc_t*>(dsum_p), gk, gv, part, g, t);
    } else if (g.kind == 0) {
      lr_launch(lr_gather_kernel<scalar_t, 0, true>, blocks, block, t.smem, go, q, k, v, geo,
                static_cast<const acc_t*>(lse_p), static_cast<const acc_t*>(dsum_p), gk, gv, part, g, t);
    } else if (g.kind == 1) {
      lr_launch(lr_gather_kernel<scalar_t, 1, true>, blocks, block, t.smem, go, q, k, v, geo,
                static_cast<const acc_t*>(lse_p), static_cast<const acc_t*>(dsum_p), gk, gv, part, g, t);
    } else {
      lr_launch(lr_gather_kernel<scalar_t, 2, true>, blocks, block, t.smem, go, q, k, v, geo,
                static_cast<const acc_t*>(lse_p), static_cast<const acc_t*>(dsum_p), gk, gv, part, g, t);
    }
    lr_launch(lr_geo_reduce_kernel<scalar_t>, g.groups * kk, dim3(kMaxThreads), kMaxThreads * sizeof(acc_t),
              static_cast<const acc_t*>(part), slots, grad_geo.mutable_data_ptr<scalar_t>());
  }
  return {grad_query, grad_key, grad_value, grad_geo};
}

}  // namespace cuda
}  // namespace lrrobust
