// Portability layer of the CUDA kernels of the local relation op (Hu et al., ICCV 2019, Sec. 4).
//
// Under nvcc these are the plain CUDA keywords. Compiled by a host compiler with LR_CUDA_EMULATE defined,
// the same kernel source runs in the cooperative CPU emulator of emu/lr_emu.cuh (used to check the index
// math, the shared-memory tiles and the barriers on machines without a GPU).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)

#define LR_HD __host__ __device__ __forceinline__
#define LR_DEV __device__ __forceinline__
#define LR_KERNEL __global__
#define LR_SYNC() __syncthreads()
#define LR_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

template <typename T>
LR_DEV T lr_shfl_xor(T v, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, v, lane_mask);
}
LR_DEV float lr_bits_to_float(uint32_t bits) { return __uint_as_float(bits); }
LR_HD float lr_abs(float x) { return fabsf(x); }
LR_HD double lr_abs(double x) { return fabs(x); }
LR_HD float lr_copysign(float x, float y) { return copysignf(x, y); }
LR_HD double lr_copysign(double x, double y) { return copysign(x, y); }
LR_DEV float lr_exp(float x) { return __expf(x); }
LR_DEV double lr_exp2(double x) { return ::exp2(x); }
LR_DEV float lr_fma(float a, float b, float c) { return fmaf(a, b, c); }
LR_DEV double lr_fma(double a, double b, double c) { return ::fma(a, b, c); }
LR_DEV float lr_exp2(float x) { return exp2f(x); }  // ex2.approx under --use_fast_math
LR_DEV float lr_ceil(float x) { return ceilf(x); }
LR_DEV double lr_ceil(double x) { return ::ceil(x); }
// 2^e for an integral e <= 0, and 0 below the normal range (or for e = -inf or NaN).
LR_DEV float lr_pow2_below(float e) { return e >= -126.0f ? ldexpf(1.0f, static_cast<int>(e)) : 0.0f; }
LR_DEV double lr_pow2_below(double e) { return e >= -1022.0 ? ::ldexp(1.0, static_cast<int>(e)) : 0.0; }
LR_DEV double lr_exp(double x) { return ::exp(x); }
LR_DEV float lr_log(float x) { return __logf(x); }
LR_DEV float lr_log2(float x) { return __log2f(x); }
LR_DEV double lr_log2(double x) { return ::log2(x); }
LR_DEV double lr_log(double x) { return ::log(x); }

#elif defined(LR_CUDA_EMULATE)

#include "emu/lr_emu.cuh"

#define LR_HD inline
#define LR_DEV inline
#define LR_KERNEL inline
#define LR_SYNC() ::lremu::syncthreads()
#define LR_DYNAMIC_SMEM(name) unsigned char* name = ::lremu::dynamic_smem()

template <typename T>
inline T lr_shfl_xor(T v, int lane_mask) {
  return ::lremu::shfl_xor(v, lane_mask);
}
inline float lr_abs(float x) { return std::fabs(x); }
inline double lr_abs(double x) { return std::fabs(x); }
inline float lr_copysign(float x, float y) { return std::copysign(x, y); }
inline double lr_copysign(double x, double y) { return std::copysign(x, y); }
inline float lr_bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float lr_exp(float x) { return std::exp(x); }
inline float lr_exp2(float x) { return std::exp2(x); }
inline float lr_fma(float a, float b, float c) { return std::fma(a, b, c); }
inline double lr_fma(double a, double b, double c) { return std::fma(a, b, c); }
inline double lr_exp2(double x) { return std::exp2(x); }
inline float lr_ceil(float x) { return std::ceil(x); }
inline double lr_ceil(double x) { return std::ceil(x); }
inline float lr_pow2_below(float e) { return e >= -126.0f ? std::ldexp(1.0f, static_cast<int>(e)) : 0.0f; }
inline double lr_pow2_below(double e) { return e >= -1022.0 ? std::ldexp(1.0, static_cast<int>(e)) : 0.0; }
inline double lr_exp(double x) { return std::exp(x); }
inline float lr_log(float x) { return std::log(x); }
inline float lr_log2(float x) { return std::log2(x); }
inline double lr_log2(double x) { return std::log2(x); }
inline double lr_log(double x) { return std::log(x); }

#else
#error "lr_compat.cuh: compile with nvcc, or define LR_CUDA_EMULATE for the CPU emulator"
#endif
