// CPU kernels of the local relation op (Hu et al., "Local Relation Networks for Image Recognition", ICCV 2019,
// Sec. 4, Eq. 2-5). Schemas are in ../local_relation.cpp; semantics as in lrrobust/ops/reference.py.
//
// Layout: value (and the gradient of value) are copied once into a group-major, channels-inner buffer
// [N][G][H*W][m] (the last group zero-padded to m channels), so the m channels that share one group's weights
// are one short vector at every pixel; query and key stay [N][G][rows][cols]. That copy is 1x the input.
// Forward: per output pixel, the window's logits, softmax and weighted sum in one pass; only a per-thread scratch
// of K*K logits exists. Backward recomputes the weights and scatters into the key and value gradients; every
// parallel task owns one (n, group), so the result is deterministic.
// The hot loops are compiled for AVX-512, AVX2 and baseline x86-64 (GCC function multiversioning picks one at
// load time), so the library runs on any x86-64 machine without -march=native.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "../local_relation_checks.h"

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define LR_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LR_MULTIVERSION
#endif
#if defined(__GNUC__)
#define LR_INLINE inline __attribute__((always_inline))
#else
#define LR_INLINE inline
#endif

namespace lrrobust {
namespace {

struct Geometry {
  int64_t groups, channels, m, height, width, out_height, out_width, kernel, stride, dilation, radius;
};

// The in-image part of one output pixel's window: offsets a in [a0, a1), b in [b0, b1); offset (a, b) reads
// pixel (y0 + a * dilation, x0 + b * dilation).
struct Window {
  int64_t y0, x0, a0, a1, b0, b1;
};

// Offsets a in [lo, hi) whose pixel centre + (a - radius) * dilation lies in [0, size); centre is in the image.
LR_INLINE void window_range(int64_t centre, int64_t size, const Geometry& g, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, g.radius - centre / g.dilation);
  hi = std::min<int64_t>(g.kernel, g.radius + (size - 1 - centre) / g.dilation + 1);
}

LR_INLINE Window window_of(int64_t i, int64_t j, const Geometry& g) {
  Window w{};
  w.y0 = i * g.stride - g.radius * g.dilation;
  w.x0 = j * g.stride - g.radius * g.dilation;
  window_range(i * g.stride, g.height, g, w.a0, w.a1);
  window_range(j * g.stride, g.width, g, w.b0, w.b1);
  return w;
}

// Phi(q, k) of Eq. 3-5 up to a term constant over the window: for sqdiff, -(q-k)^2 = -q^2 + k(2q - k), and the
// -q^2 cancels in the softmax.
template <int kPhi, typename T>
LR_INLINE T logit_of(T q, T k) {
  if constexpr (kPhi == kSqDiff) {
    return k * (q + q - k);
  } else if constexpr (kPhi == kAbsDiff) {
    return -std::abs(q - k);
  } else {
    return q * k;
  }
}

// d Phi / d q and d Phi / d k of the true Phi (sign(0) = 0, as torch's abs).
template <int kPhi, typename T>
LR_INLINE void logit_grads(T q, T k, T& dq, T& dk) {
  if constexpr (kPhi == kSqDiff) {
    dq = T(2) * (k - q);
    dk = -dq;
  } else if constexpr (kPhi == kAbsDiff) {
    const T sign = q > k ? T(1) : (q < k ? T(-1) : T(0));
    dq = -sign;
    dk = sign;
  } else {
    dq = k;
    dk = q;
  }
}

// exp(x) for x <= 0 (logits minus their maximum): Cephes' single-precision polynomial, branch-free so that the
// loops around it vectorise; below -87 it returns exp(-87) (about 1e-38), a weight no sum can see.
LR_INLINE float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

LR_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// The logits of the in-image window, packed row by row into `logits`; returns how many there are.
template <int kPhi, typename T>
LR_INLINE int64_t window_logits(const T* key, const T* prior, T q, const Window& w, const Geometry& g, T* logits) {
  const int64_t nb = w.b1 - w.b0, d = g.dilation;
  int64_t count = 0;
  for (int64_t a = w.a0; a < w.a1; ++a) {
    const T* krow = key + (w.y0 + a * d) * g.width + w.x0 + w.b0 * d;
    const T* prow = prior + a * g.kernel + w.b0;
    T* out = logits + count;
#pragma omp simd
    for (int64_t t = 0; t < nb; ++t) out[t] = logit_of<kPhi>(q, krow[t * d]) + prow[t];
    count += nb;
  }
  return count;
}

// Softmax numerators exp(l - max) in place; returns 1 / their sum.
template <typename T>
LR_INLINE T softmax_numerators(T* logits, int64_t count) {
  T top = logits[0];
#pragma omp simd reduction(max : top)
  for (int64_t t = 0; t < count; ++t) top = logits[t] > top ? logits[t] : top;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < count; ++t) {
    const T e = exp_nonpositive(logits[t] - top);
    logits[t] = e;
    sum += e;
  }
  return T(1) / sum;
}

// Softmax weights of one output pixel's window (packed as window_logits); returns 1 / (sum of numerators).
template <typename T>
LR_INLINE T window_weights(const T* key, const T* prior, T q, const Window& w, const Geometry& g, int64_t phi,
                           T* weights) {
  int64_t count;
  if (phi == kSqDiff) {
    count = window_logits<kSqDiff>(key, prior, q, w, g, weights);
  } else if (phi == kAbsDiff) {
    count = window_logits<kAbsDiff>(key, prior, q, w, g, weights);
  } else {
    count = window_logits<kProduct>(key, prior, q, w, g, weights);
  }
  return softmax_numerators(weights, count);
}

// Forward over rows [begin, end) of the flattened (n, group, output row) range.
// M is the number of channels per group when known at compile time (0: g.m at run time).
template <typename T, int M>
LR_MULTIVERSION void forward_rows(const Geometry& g, int64_t phi, const T* query, const T* key, const T* value_t,
                                  const T* prior, T* out, int64_t begin, int64_t end, T* scratch) {
  const int64_t m = M > 0 ? M : g.m, hw = g.height * g.width, howo = g.out_height * g.out_width;
  const int64_t kk = g.kernel * g.kernel, d = g.dilation;
  T* weights = scratch;
  T acc_fixed[M > 0 ? M : 1];
  T* acc = M > 0 ? acc_fixed : scratch + kk;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t i = row % g.out_height, ng = row / g.out_height, grp = ng % g.groups, n = ng / g.groups;
    const T* key_ng = key + ng * hw;
    const T* val_ng = value_t + ng * hw * m;
    const T* prior_g = prior + grp * kk;
    const T* q_row = query + ng * howo + i * g.out_width;
    const int64_t c0 = grp * m, mg = std::min(m, g.channels - c0);
    T* out_row = out + (n * g.channels + c0) * howo + i * g.out_width;
    for (int64_t j = 0; j < g.out_width; ++j) {
      const Window w = window_of(i, j, g);
      const T inv_sum = window_weights(key_ng, prior_g, q_row[j], w, g, phi, weights);
      for (int64_t c = 0; c < m; ++c) acc[c] = 0;
      int64_t idx = 0;
      for (int64_t a = w.a0; a < w.a1; ++a) {
        const T* vrow = val_ng + ((w.y0 + a * d) * g.width + w.x0) * m;
        for (int64_t b = w.b0; b < w.b1; ++b, ++idx) {
          const T wt = weights[idx];
          const T* vp = vrow + b * d * m;
#pragma omp simd
          for (int64_t c = 0; c < m; ++c) acc[c] += wt * vp[c];
        }
      }
      for (int64_t c = 0; c < mg; ++c) out_row[c * howo + j] = acc[c] * inv_sum;
    }
  }
}

// Backward over (n, group) pairs [begin, end): fills grad_query, and this pair's slices of grad_key,
// grad_value_t and the per-(n, group) partial sums of geo_prior's gradient.
template <typename T, int M>
LR_MULTIVERSION void backward_groups(const Geometry& g, int64_t phi, const T* grad_out, const T* query, const T* key,
                                     const T* value_t, const T* prior, T* grad_query, T* grad_key, T* grad_value_t,
                                     T* grad_prior_parts, int64_t begin, int64_t end, T* scratch) {
  const int64_t m = M > 0 ? M : g.m, hw = g.height * g.width, howo = g.out_height * g.out_width;
  const int64_t kk = g.kernel * g.kernel, d = g.dilation;
  T* weights = scratch;
  T* dweights = scratch + kk;
  T go_fixed[M > 0 ? M : 1];
  T* go = M > 0 ? go_fixed : scratch + 2 * kk;
  for (int64_t ng = begin; ng < end; ++ng) {
    const int64_t grp = ng % g.groups, n = ng / g.groups;
    const int64_t c0 = grp * m, mg = std::min(m, g.channels - c0);
    const T* key_ng = key + ng * hw;
    const T* val_ng = value_t + ng * hw * m;
    const T* prior_g = prior + grp * kk;
    const T* go_ng = grad_out + (n * g.channels + c0) * howo;
    T* gkey_ng = grad_key + ng * hw;
    T* gval_ng = grad_value_t + ng * hw * m;
    T* gprior = grad_prior_parts + ng * kk;
    std::fill(gkey_ng, gkey_ng + hw, T(0));
    std::fill(gval_ng, gval_ng + hw * m, T(0));
    std::fill(gprior, gprior + kk, T(0));
    for (int64_t c = mg; c < m; ++c) go[c] = 0;
    for (int64_t i = 0; i < g.out_height; ++i) {
      for (int64_t j = 0; j < g.out_width; ++j) {
        const int64_t o = i * g.out_width + j;
        const T q = query[ng * howo + o];
        const Window w = window_of(i, j, g);
        const int64_t nb = w.b1 - w.b0;
        const T inv_sum = window_weights(key_ng, prior_g, q, w, g, phi, weights);
        for (int64_t c = 0; c < mg; ++c) go[c] = go_ng[c * howo + o];
        // Weights' gradient (grad_out . value) and value's gradient (weight * grad_out), window pixel by pixel.
        T weighted = 0;
        int64_t idx = 0;
        for (int64_t a = w.a0; a < w.a1; ++a) {
          const int64_t offset = ((w.y0 + a * d) * g.width + w.x0) * m;
          for (int64_t b = w.b0; b < w.b1; ++b, ++idx) {
            const T wt = weights[idx] * inv_sum;
            const T* vp = val_ng + offset + b * d * m;
            T* gvp = gval_ng + offset + b * d * m;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < m; ++c) {
              dot += go[c] * vp[c];
              gvp[c] += wt * go[c];
            }
            weights[idx] = wt;
            dweights[idx] = dot;
            weighted += wt * dot;
          }
        }
        // Softmax backward: d logit = w * (dw - sum(w * dw)), then into query, key and geo_prior.
        T gq = 0;
        idx = 0;
        for (int64_t a = w.a0; a < w.a1; ++a, idx += nb) {
          const int64_t pix = (w.y0 + a * d) * g.width + w.x0 + w.b0 * d;
          const T* krow = key_ng + pix;
          T* gkrow = gkey_ng + pix;
          T* gprow = gprior + a * g.kernel + w.b0;
          const T* wrow = weights + idx;
          const T* dwrow = dweights + idx;
          if (phi == kSqDiff) {
#pragma omp simd reduction(+ : gq)
            for (int64_t t = 0; t < nb; ++t) {
              const T dl = wrow[t] * (dwrow[t] - weighted);
              T dq, dk;
              logit_grads<kSqDiff>(q, krow[t * d], dq, dk);
              gprow[t] += dl;
              gq += dl * dq;
              gkrow[t * d] += dl * dk;
            }
          } else if (phi == kAbsDiff) {
#pragma omp simd reduction(+ : gq)
            for (int64_t t = 0; t < nb; ++t) {
              const T dl = wrow[t] * (dwrow[t] - weighted);
              T dq, dk;
              logit_grads<kAbsDiff>(q, krow[t * d], dq, dk);
              gprow[t] += dl;
              gq += dl * dq;
              gkrow[t * d] += dl * dk;
            }
          } else {
#pragma omp simd reduction(+ : gq)
            for (int64_t t = 0; t < nb; ++t) {
              const T dl = wrow[t] * (dwrow[t] - weighted);
              T dq, dk;
              logit_grads<kProduct>(q, krow[t * d], dq, dk);
              gprow[t] += dl;
              gq += dl * dq;
              gkrow[t * d] += dl * dk;
            }
          }
        }
        grad_query[ng * howo + o] = gq;
      }
    }
  }
}

// value [N][C][H*W] -> [N][G][H*W][m], the last group zero-padded.
template <typename T>
void to_group_major(const T* src, T* dst, const Geometry& g, int64_t batch) {
  const int64_t hw = g.height * g.width, m = g.m;
  at::parallel_for(0, batch * g.groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t grp = ng % g.groups, n = ng / g.groups, c0 = grp * m, mg = std::min(m, g.channels - c0);
      T* out = dst + ng * hw * m;
      for (int64_t c = 0; c < m; ++c) {
        if (c < mg) {
          const T* in = src + (n * g.channels + c0 + c) * hw;
          for (int64_t p = 0; p < hw; ++p) out[p * m + c] = in[p];
        } else {
          for (int64_t p = 0; p < hw; ++p) out[p * m + c] = T(0);
        }
      }
    }
  });
}

// [N][G][H*W][m] -> [N][C][H*W], dropping the padding.
template <typename T>
void from_group_major(const T* src, T* dst, const Geometry& g, int64_t batch) {
  const int64_t hw = g.height * g.width, m = g.m;
  at::parallel_for(0, batch * g.groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t grp = ng % g.groups, n = ng / g.groups, c0 = grp * m, mg = std::min(m, g.channels - c0);
      const T* in = src + ng * hw * m;
      for (int64_t c = 0; c < mg; ++c) {
        T* out = dst + (n * g.channels + c0 + c) * hw;
        for (int64_t p = 0; p < hw; ++p) out[p] = in[p * m + c];
      }
    }
  });
}

Geometry geometry_of(const LocalRelationShape& s) {
  return Geometry{s.groups, s.channels, s.per_group, s.height, s.width, s.out_height, s.out_width, s.kernel_size,
                  s.stride, s.dilation, (s.kernel_size - 1) / 2};
}

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

template <typename T, int M>
void forward_impl(const Geometry& g, int64_t phi, int64_t batch, const T* query, const T* key, const T* value_t,
                  const T* prior, T* out) {
  const int64_t scratch_size = g.kernel * g.kernel + g.m;
  at::parallel_for(0, batch * g.groups * g.out_height, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(scratch_size);
    forward_rows<T, M>(g, phi, query, key, value_t, prior, out, begin, end, scratch.data());
  });
}

template <typename T, int M>
void backward_impl(const Geometry& g, int64_t phi, int64_t batch, const T* grad_out, const T* query, const T* key,
                   const T* value_t, const T* prior, T* grad_query, T* grad_key, T* grad_value_t, T* grad_prior_parts) {
  const int64_t scratch_size = 2 * g.kernel * g.kernel + g.m;
  at::parallel_for(0, batch * g.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(scratch_size);
    backward_groups<T, M>(g, phi, grad_out, query, key, value_t, prior, grad_query, grad_key, grad_value_t,
                          grad_prior_parts, begin, end, scratch.data());
  });
}

at::Tensor local_relation_forward_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                      const at::Tensor& geo_prior, int64_t kernel_size, int64_t stride,
                                      int64_t dilation, int64_t composability) {
  const LocalRelationShape s =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  if (is_reduced_float(value)) {  // float16 / bfloat16: computed in float32, returned in the input dtype
    return local_relation_forward_cpu(query.to(at::kFloat), key.to(at::kFloat), value.to(at::kFloat),
                                      geo_prior.to(at::kFloat), kernel_size, stride, dilation, composability)
        .to(value.scalar_type());
  }
  at::Tensor out = at::empty({s.n, s.channels, s.out_height, s.out_width}, value.options());
  if (out.numel() == 0) return out;
  const Geometry g = geometry_of(s);
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous(), p = geo_prior.contiguous();
  at::Tensor value_t = at::empty({s.n * s.groups * s.height * s.width * s.per_group}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_forward_cpu", [&] {
    to_group_major(v.data_ptr<scalar_t>(), value_t.data_ptr<scalar_t>(), g, s.n);
    const auto run = [&](auto impl) {
      impl(g, composability, s.n, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), value_t.data_ptr<scalar_t>(),
           p.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    };
    if (g.m == 8) {
      run(forward_impl<scalar_t, 8>);
    } else if (g.m == 16) {
      run(forward_impl<scalar_t, 16>);
    } else {
      run(forward_impl<scalar_t, 0>);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> local_relation_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, int64_t kernel_size, int64_t stride, int64_t dilation, int64_t composability) {
  const LocalRelationShape s =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.n, s.channels, s.out_height, s.out_width}),
              "local_relation_backward: grad_out ", grad_out.sizes(), " must be the output's shape (", s.n, ", ",
              s.channels, ", ", s.out_height, ", ", s.out_width, ")");
  TORCH_CHECK(grad_out.device() == value.device(), "local_relation_backward: grad_out must be on the inputs' device");
  if (is_reduced_float(value)) {
    const at::ScalarType dtype = value.scalar_type();
    auto grads = local_relation_backward_cpu(grad_out.to(at::kFloat), query.to(at::kFloat), key.to(at::kFloat),
                                             value.to(at::kFloat), geo_prior.to(at::kFloat), kernel_size, stride,
                                             dilation, composability);
    return {std::get<0>(grads).to(dtype), std::get<1>(grads).to(dtype), std::get<2>(grads).to(dtype),
            std::get<3>(grads).to(dtype)};
  }
  at::Tensor grad_query = at::empty(query.sizes(), query.options());
  at::Tensor grad_key = at::empty(key.sizes(), key.options());
  at::Tensor grad_value = at::empty(value.sizes(), value.options());
  if (query.numel() == 0 || grad_value.numel() == 0) {
    return {grad_query.zero_(), grad_key.zero_(), grad_value.zero_(), at::zeros_like(geo_prior)};
  }
  const Geometry g = geometry_of(s);
  const at::Tensor go = grad_out.to(value.scalar_type()).contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous(), p = geo_prior.contiguous();
  const int64_t padded = s.n * s.groups * s.height * s.width * s.per_group;
  at::Tensor value_t = at::empty({padded}, value.options());
  at::Tensor grad_value_t = at::empty({padded}, value.options());
  at::Tensor grad_prior_parts = at::empty({s.n * s.groups, s.kernel_size, s.kernel_size}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_backward_cpu", [&] {
    to_group_major(v.data_ptr<scalar_t>(), value_t.data_ptr<scalar_t>(), g, s.n);
    const auto run = [&](auto impl) {
      impl(g, composability, s.n, go.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
           value_t.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), grad_query.data_ptr<scalar_t>(),
           grad_key.data_ptr<scalar_t>(), grad_value_t.data_ptr<scalar_t>(), grad_prior_parts.data_ptr<scalar_t>());
    };
    if (g.m == 8) {
      run(backward_impl<scalar_t, 8>);
    } else if (g.m == 16) {
      run(backward_impl<scalar_t, 16>);
    } else {
      run(backward_impl<scalar_t, 0>);
    }
    from_group_major(grad_value_t.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), g, s.n);
  });
  at::Tensor grad_prior = grad_prior_parts.view({s.n, s.groups, s.kernel_size, s.kernel_size}).sum(0);
  return {grad_query, grad_key, grad_value, grad_prior};
}

}  // namespace
}  // namespace lrrobust

TORCH_LIBRARY_IMPL(lrrobust, CPU, m) {
  m.impl("local_relation_forward", &lrrobust::local_relation_forward_cpu);
  m.impl("local_relation_backward", &lrrobust::local_relation_backward_cpu);
}
