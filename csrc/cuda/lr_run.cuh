// Raw launchers of the local relation op's CUDA kernels (paper Sec. 4): device pointers, sizes and plans in,
// kernels launched on the given stream. Declared here with light headers only, defined in lr_run_impl.cuh
// and instantiated once per dtype (lr_cuda_<dtype>.cu), so the kernel files compile fast and in parallel;
// the ATen side (checks, allocation, planning, launch checks) is lr_host.cuh.
#pragma once

#include <cstdint>

#include <ATen/OpMathType.h>

#include "lr_plan.cuh"

#if defined(__CUDACC__)
#include <cuda_runtime_api.h>
using LrStream = cudaStream_t;
#else
using LrStream = void*;
#endif

namespace lrrobust {
namespace cuda {

// out (N, C, Ho, Wo) = the local relation aggregation, and lse (N, G, Ho, Wo) the log-sum-exp of each output's
// logits in base 2; t from lr_plan_forward.
template <typename scalar_t>
void lr_run_forward(const scalar_t* query, const scalar_t* key, const scalar_t* value, const scalar_t* geo,
                    scalar_t* out, at::opmath_type<scalar_t>* lse, const LrGeom& g, const LrTile& t, LrStream stream);

// grad_query and the per-output statistic dsum = D (N, G, Ho, Wo), from the forward's out and lse; t from
// lr_plan_forward.
template <typename scalar_t>
void lr_run_stats(const scalar_t* grad_out, const scalar_t* query, const scalar_t* key, const scalar_t* value,
                  const scalar_t* geo, const scalar_t* out, const at::opmath_type<scalar_t>* lse,
                  scalar_t* grad_query, at::opmath_type<scalar_t>* dsum, const LrGeom& g, const LrTile& t,
                  LrStream stream);

// grad_key, grad_value and the geo_prior partial sums (G*K*K x slots); t from lr_plan_gather_pass.
template <typename scalar_t>
void lr_run_gather(const scalar_t* grad_out, const scalar_t* query, const scalar_t* key, const scalar_t* value,
                   const scalar_t* geo, const at::opmath_type<scalar_t>* lse, const at::opmath_type<scalar_t>* dsum,
                   scalar_t* grad_key, scalar_t* grad_value, at::opmath_type<scalar_t>* geo_partial, const LrGeom& g,
                   const LrTile& t, LrStream stream);

// grad_geo[e] = sum over slots of partial[e * slots + slot], for e < entries.
template <typename scalar_t>
void lr_run_geo_reduce(const at::opmath_type<scalar_t>* partial, int64_t slots, int64_t entries, scalar_t* grad_geo,
                       LrStream stream);

}  // namespace cuda
}  // namespace lrrobust
