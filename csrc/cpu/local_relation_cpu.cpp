// CPU kernels of the local relation op (Hu et al., "Local Relation Networks for Image Recognition", ICCV 2019,
// Sec. 4, Eq. 2-5). Schemas are in ../local_relation.cpp; semantics as in lrrobust/ops/reference.py.
//
// The work unit is a chunk: kLanes neighbouring output pixels of one row, for one (n, group). Every loop runs
// across the chunk's pixels, so each arithmetic step is one vector wide. Per chunk, the forward computes the
// window's logits (one row of kLanes per window offset), their softmax and the weighted sum of the group's
// value channels, all in a per-thread scratch of about K*K*kLanes numbers; nothing of size K*K times the input
// is ever allocated. The backward recomputes the weights and scatters into the key and value gradients; every
// parallel task owns one (n, group), so the result is deterministic. Tensors keep their NCHW layout.
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
#include <limits>
#include <tuple>
#include <type_traits>

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

// Output pixels of one row handled together: one AVX-512 register of float (two of AVX2, four of SSE).
constexpr int64_t kLanes = 16;

// kLanes numbers as one GCC vector, and a lane mask of the same width (all bits set or clear per lane).
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kLanes * sizeof(float))));
  typedef int32_t M __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kLanes * sizeof(double))));
  typedef int64_t M __attribute__((vector_size(kLanes * sizeof(double))));
};
template <typename T>
using Vec = typename Simd<T>::V;
template <typename T>
using Mask = typename Simd<T>::M;

template <typename T>
LR_INLINE Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
LR_INLINE void vstore(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
LR_INLINE Vec<T> splat(T x) {
  return Vec<T>{} + x;
}

// Lanes [lo, hi) set, 0 <= lo, hi <= kLanes: two windows into a table of 16 zeros, 16 ones, 16 zeros.
template <typename T>
LR_INLINE Mask<T> lane_mask(int64_t lo, int64_t hi) {
  using Int = std::remove_reference_t<decltype(Mask<T>{}[0])>;
  alignas(64) static const Int table[3 * kLanes] = {0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
                                                    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0};
  Mask<T> from_lo, below_hi;
  std::memcpy(&from_lo, table + kLanes - lo, sizeof(from_lo));
  std::memcpy(&below_hi, table + 2 * kLanes - hi, sizeof(below_hi));
  return from_lo & below_hi;
}

// x in the lanes of the mask, +0 elsewhere (whatever x holds there, NaN included).
template <typename T>
LR_INLINE Vec<T> keep(const Mask<T>& mask, const Vec<T>& x) {
  return (Vec<T>)((Mask<T>)x & mask);
}

// x in the lanes of the mask, `other` elsewhere.
template <typename T>
LR_INLINE Vec<T> blend(const Mask<T>& mask, const Vec<T>& x, const Vec<T>& other) {
  return (Vec<T>)(((Mask<T>)x & mask) | ((Mask<T>)other & ~mask));
}

template <typename T>
LR_INLINE T lane_sum(const Vec<T>& v) {
  T sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += v[l];
  return sum;
}

// exp(x) for x <= 0 (logits minus their maximum): Cephes' single-precision polynomial on whole vectors; below -87
// (and for -inf, offsets outside the image) it returns 0.
LR_INLINE Vec<float> exp_nonpositive(Vec<float> x) {
  using V = Vec<float>;
  using M = Mask<float>;
  const M underflow = x < -87.0f;
  x = underflow ? splat(-87.0f) : x;
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const M bits = (__builtin_convertvector(n, M) + 127) << 23;
  return underflow ? V{} : p * (V)bits;
}

LR_INLINE Vec<double> exp_nonpositive(Vec<double> x) {
  for (int64_t l = 0; l < kLanes; ++l) x[l] = std::exp(x[l]);
  return x;
}

struct Geometry {
  int64_t batch, groups, channels, m, height, width, out_height, out_width, kernel, stride, dilation, radius;
};

LR_INLINE int64_t floor_div(int64_t a, int64_t b) {
  if (b == 1) return a;
  return a >= 0 ? a / b : -((b - 1 - a) / b);
}
LR_INLINE int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Output pixels (i, j0 + l), l < width, and the part of their windows inside the image: window rows [a0, a1)
// (the same for all lanes) and window columns [b0, b1) (inside the image for at least one lane).
// Window offset (a, b) of lane l reads pixel (y0 + a * dilation, x0 + b * dilation + l * stride).
struct Chunk {
  int64_t i, j0, width, y0, x0, a0, a1, b0, b1;
};

LR_INLINE Chunk chunk_of(int64_t i, int64_t j0, const Geometry& g) {
  Chunk c{};
  c.i = i;
  c.j0 = j0;
  c.width = std::min(kLanes, g.out_width - j0);
  c.y0 = i * g.stride - g.radius * g.dilation;
  c.x0 = j0 * g.stride - g.radius * g.dilation;
  c.a0 = std::max<int64_t>(0, ceil_div(-c.y0, g.dilation));
  c.a1 = std::min<int64_t>(g.kernel, floor_div(g.height - 1 - c.y0, g.dilation) + 1);
  c.b0 = std::max<int64_t>(0, ceil_div(-(c.x0 + (c.width - 1) * g.stride), g.dilation));
  c.b1 = std::min<int64_t>(g.kernel, floor_div(g.width - 1 - c.x0, g.dilation) + 1);
  return c;
}

// Most window rows and columns a chunk can keep: at most H window rows and W + (kLanes - 1) * stride columns
// are in the image for some lane.
LR_INLINE int64_t max_rows(const Geometry& g) { return std::min(g.kernel, g.height); }
LR_INLINE int64_t max_cols(const Geometry& g) {
  return std::min(g.kernel, (g.width - 1 + (kLanes - 1) * g.stride) / g.dilation + 1);
}

// Per-thread scratch: kLanes numbers per kept window offset, per window offset (prior) or per chunk.
template <typename T>
struct Scratch {
  T* weights;   // [offsets][kLanes]: logits, then softmax numerators or weights
  T* keys;      // [offsets][kLanes]: the key under each offset (backward)
  T* dweights;  // [offsets][kLanes]: the weights' gradient (backward)
  T* dprior;    // [K*K][kLanes]: per-lane sums of geo_prior's gradient (backward)
  T* query;     // [kLanes]
  T* inv_sum;   // [kLanes]: 1 / sum of the softmax numerators (0 for unused lanes)
  int64_t* lanes;  // [columns][2]: lanes [lo, hi) inside the image at each window column
  // The key and value tensors: whole-vector loads may read any of their elements (and mask what they do not need).
  const T *key_begin = nullptr, *key_end = nullptr, *value_begin = nullptr, *value_end = nullptr;

  static int64_t size(const Geometry& g, bool backward) {
    const int64_t offsets = max_rows(g) * max_cols(g);
    return (backward ? 3 * offsets + g.kernel * g.kernel + 2 : offsets + 2) * kLanes;
  }
  static int64_t lanes_size(const Geometry& g) { return 2 * max_cols(g); }

  Scratch(T* base, int64_t* lane_base, const Geometry& g, bool backward) {
    const int64_t offsets = max_rows(g) * max_cols(g) * kLanes;
    weights = base;
    keys = backward ? weights + offsets : nullptr;
    dweights = backward ? keys + offsets : nullptr;
    dprior = backward ? dweights + offsets : nullptr;
    query = (backward ? dprior + g.kernel * g.kernel * kLanes : weights + offsets);
    inv_sum = query + kLanes;
    lanes = lane_base;
  }

  void set_bounds(const T* key, const T* value, const Geometry& g) {
    const int64_t hw = g.height * g.width;
    key_begin = key;
    key_end = key + g.batch * g.groups * hw;
    value_begin = value;
    value_end = value + g.batch * g.channels * hw;
  }
};

// For each window column b of the chunk, the lanes whose pixel at that column lies in the image.
LR_INLINE void chunk_lanes(const Chunk& c, const Geometry& g, int64_t* lanes) {
  for (int64_t b = c.b0; b < c.b1; ++b) {
    const int64_t x = c.x0 + b * g.dilation;
    const int64_t lo = std::max<int64_t>(0, ceil_div(-x, g.stride));
    const int64_t hi = std::min<int64_t>(c.width, floor_div(g.width - 1 - x, g.stride) + 1);
    lanes[2 * (b - c.b0)] = lo < hi ? lo : 0;  // an empty range as [0, 0), inside lane_mask's table
    lanes[2 * (b - c.b0) + 1] = lo < hi ? hi : 0;
  }
}

// Whether all kLanes positions p + l * stride lie in [begin, end).
template <typename T>
LR_INLINE bool spans(const T* p, int64_t stride, const T* begin, const T* end) {
  return p >= begin && p + (kLanes - 1) * stride < end;
}

// Lane l = p[l * stride]. With `whole` all kLanes are read (lanes outside [lo, hi) hold neighbouring pixels, for
// the caller to mask); otherwise only lanes [lo, hi) are read and the others are 0.
template <bool kUnitStride, typename T>
LR_INLINE Vec<T> load_lanes(const T* p, int64_t stride, bool whole, int64_t lo, int64_t hi) {
  if (kUnitStride && whole) return vload(p);
  T tmp[kLanes] = {};
  if (whole) {
    for (int64_t l = 0; l < kLanes; ++l) tmp[l] = p[l * stride];
  } else {
    for (int64_t l = lo; l < hi; ++l) tmp[l] = p[l * stride];
  }
  return vload(tmp);
}

// p[l * stride] += delta[l] for lanes [lo, hi); delta is 0 in the other lanes. With `whole` (the kLanes
// positions lie in a plane this task owns) all lanes are written.
template <bool kUnitStride, typename T>
LR_INLINE void add_lanes(T* p, int64_t stride, bool whole, int64_t lo, int64_t hi, const Vec<T>& delta) {
  if (kUnitStride && whole) {
    vstore(p, vload(p) + delta);
  } else {
    for (int64_t l = lo; l < hi; ++l) p[l * stride] += delta[l];
  }
}

// The first `width` lanes from p, 0 in the others.
template <typename T>
LR_INLINE Vec<T> load_row(const T* p, int64_t width) {
  if (width == kLanes) return vload(p);
  T tmp[kLanes] = {};
  for (int64_t l = 0; l < width; ++l) tmp[l] = p[l];
  return vload(tmp);
}

template <typename T>
LR_INLINE void store_row(T* p, const Vec<T>& v, int64_t width) {
  if (width == kLanes) {
    vstore(p, v);
  } else {
    for (int64_t l = 0; l < width; ++l) p[l] = v[l];
  }
}

// Phi(q, k) of Eq. 3-5 up to a term constant over the window: for sqdiff, -(q-k)^2 = -q^2 + k(2q - k), and the
// -q^2 cancels in the softmax.
template <int kPhi, typename V>
LR_INLINE V logit_of(const V& q, const V& k) {
  if constexpr (kPhi == kSqDiff) {
    return k * (q + q - k);
  } else if constexpr (kPhi == kAbsDiff) {
    const V diff = q - k;
    return diff < 0 ? diff : -diff;
  } else {
    return q * k;
  }
}

// d Phi / d q and d Phi / d k of the true Phi (sign(0) = 0, as torch's abs).
template <int kPhi, typename V>
LR_INLINE void logit_grads(const V& q, const V& k, V& dq, V& dk) {
  if constexpr (kPhi == kSqDiff) {
    dq = (k - q) * 2;
    dk = -dq;
  } else if constexpr (kPhi == kAbsDiff) {
    const V zero{};
    const V sign = q > k ? zero + 1 : (q < k ? zero - 1 : zero);
    dq = -sign;
    dk = sign;
  } else {
    dq = k;
    dk = q;
  }
}

// The chunk's logits, one vector per kept window offset (window rows outer, columns inner), -inf in lanes
// whose pixel is outside the image; with `keys`, also the key under each offset (0 outside). Returns the count.
template <int kPhi, bool kUnitStride, typename T>
LR_INLINE int64_t chunk_logits(const Chunk& c, const Geometry& g, const T* key, const T* prior, Scratch<T>& s,
                               bool keys) {
  using V = Vec<T>;
  const int64_t stride = kUnitStride ? 1 : g.stride, cols = c.b1 - c.b0;
  const V q = vload(s.query);
  const V minus_inf = splat(-std::numeric_limits<T>::infinity());
  int64_t row = 0;
  for (int64_t a = c.a0; a < c.a1; ++a) {
    const int64_t row_start = (c.y0 + a * g.dilation) * g.width + c.x0;
    for (int64_t u = 0; u < cols; ++u, ++row) {
      const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1], start = row_start + (c.b0 + u) * g.dilation;
      const Mask<T> mask = lane_mask<T>(lo, hi);
      const T* kp = key + start;
      const V k = keep<T>(mask, load_lanes<kUnitStride>(kp, stride, spans(kp, stride, s.key_begin, s.key_end), lo, hi));
      const V logit = logit_of<kPhi>(q, k) + prior[a * g.kernel + c.b0 + u];
      vstore(s.weights + row * kLanes, blend<T>(mask, logit, minus_inf));
      if (keys) vstore(s.keys + row * kLanes, k);
    }
  }
  return row;
}

// Softmax numerators exp(l - max) in place, per lane; sets inv_sum.
template <typename T>
LR_INLINE void chunk_softmax(int64_t rows, Scratch<T>& s) {
  using V = Vec<T>;
  V top = splat(-std::numeric_limits<T>::infinity());
  for (int64_t r = 0; r < rows; ++r) {
    const V logit = vload(s.weights + r * kLanes);
    top = logit > top ? logit : top;
  }
  top = top == -std::numeric_limits<T>::infinity() ? V{} : top;  // lanes past the row's end
  V sum{};
  for (int64_t r = 0; r < rows; ++r) {
    const V e = exp_nonpositive(vload(s.weights + r * kLanes) - top);
    vstore(s.weights + r * kLanes, e);
    sum += e;
  }
  vstore(s.inv_sum, sum > 0 ? T(1) / sum : V{});
}

// Loads the chunk's query and lane ranges, computes its logits and their softmax numerators; returns the count.
template <bool kUnitStride, typename T>
LR_INLINE int64_t chunk_weights(const Chunk& c, const Geometry& g, int64_t phi, const T* query_row, const T* key,
                                const T* prior, Scratch<T>& s, bool keys) {
  vstore(s.query, load_row(query_row + c.j0, c.width));
  chunk_lanes(c, g, s.lanes);
  int64_t rows;
  if (phi == kSqDiff) {
    rows = chunk_logits<kSqDiff, kUnitStride>(c, g, key, prior, s, keys);
  } else if (phi == kAbsDiff) {
    rows = chunk_logits<kAbsDiff, kUnitStride>(c, g, key, prior, s, keys);
  } else {
    rows = chunk_logits<kProduct, kUnitStride>(c, g, key, prior, s, keys);
  }
  chunk_softmax(rows, s);
  return rows;
}

// Weighted sums over the window of NC value channels (planes hw apart) for the chunk, into out (planes howo
// apart). NC independent accumulators stay in registers.
template <int NC, bool kUnitStride, typename T>
LR_INLINE void aggregate(const Chunk& c, const Geometry& g, const Scratch<T>& s, const T* planes, T* out) {
  using V = Vec<T>;
  const int64_t stride = kUnitStride ? 1 : g.stride, hw = g.height * g.width, cols = c.b1 - c.b0;
  V acc[NC] = {};
  for (int64_t a = c.a0; a < c.a1; ++a) {
    const int64_t row_start = (c.y0 + a * g.dilation) * g.width + c.x0;
    const T* wrow = s.weights + (a - c.a0) * cols * kLanes;
    for (int64_t u = 0; u < cols; ++u) {
      const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1], start = row_start + (c.b0 + u) * g.dilation;
      if (lo >= hi) continue;
      const Mask<T> mask = lane_mask<T>(lo, hi);
      const V w = vload(wrow + u * kLanes);
#pragma GCC unroll 4
      for (int k = 0; k < NC; ++k) {
        const T* vp = planes + k * hw + start;
        const bool whole = spans(vp, stride, s.value_begin, s.value_end);
        acc[k] += w * keep<T>(mask, load_lanes<kUnitStride>(vp, stride, whole, lo, hi));
      }
    }
  }
  const V inv_sum = vload(s.inv_sum);
  const int64_t howo = g.out_height * g.out_width;
#pragma GCC unroll 4
  for (int k = 0; k < NC; ++k) store_row(out + k * howo, acc[k] * inv_sum, c.width);
}

// Forward over rows [begin, end) of the flattened (n, group, output row) range.
template <typename T, bool kUnitStride>
LR_MULTIVERSION void forward_rows(const Geometry& g, int64_t phi, const T* query, const T* key, const T* value,
                                  const T* prior, T* out, int64_t begin, int64_t end, T* scratch,
                                  int64_t* lane_scratch) {
  const int64_t hw = g.height * g.width, howo = g.out_height * g.out_width, kk = g.kernel * g.kernel;
  Scratch<T> s(scratch, lane_scratch, g, /*backward=*/false);
  s.set_bounds(key, value, g);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t i = task % g.out_height, ng = task / g.out_height, grp = ng % g.groups, n = ng / g.groups;
    const int64_t c0 = grp * g.m, mg = std::min(g.m, g.channels - c0);
    const T* key_ng = key + ng * hw;
    const T* prior_g = prior + grp * kk;
    const T* query_row = query + ng * howo + i * g.out_width;
    const T* value_g = value + (n * g.channels + c0) * hw;
    T* out_row = out + (n * g.channels + c0) * howo + i * g.out_width;
    for (int64_t j0 = 0; j0 < g.out_width; j0 += kLanes) {
      const Chunk c = chunk_of(i, j0, g);
      chunk_weights<kUnitStride>(c, g, phi, query_row, key_ng, prior_g, s, /*keys=*/false);
      for (int64_t ch = 0; ch < mg; ch += 4) {
        const T* planes = value_g + ch * hw;
        T* dst = out_row + ch * howo + j0;
        switch (std::min<int64_t>(4, mg - ch)) {
          case 4:
            aggregate<4, kUnitStride>(c, g, s, planes, dst);
            break;
          case 3:
            aggregate<3, kUnitStride>(c, g, s, planes, dst);
            break;
          case 2:
            aggregate<2, kUnitStride>(c, g, s, planes, dst);
            break;
          default:
            aggregate<1, kUnitStride>(c, g, s, planes, dst);
        }
      }
    }
  }
}

// For NC value channels of the chunk: the weights' gradient grad_out . value (added to s.dweights) and value's
// gradient weight * grad_out (added to grad_planes). Window columns outer, rows inner, so that the overlapping
// vector updates of neighbouring columns lie several stores apart.
template <int NC, bool kUnitStride, typename T>
LR_INLINE void values_backward(const Chunk& c, const Geometry& g, Scratch<T>& s, const T* grad_out,
                               const T* planes, T* grad_planes, const T* owned_begin, const T* owned_end) {
  using V = Vec<T>;
  const int64_t stride = kUnitStride ? 1 : g.stride, hw = g.height * g.width, cols = c.b1 - c.b0;
  const int64_t howo = g.out_height * g.out_width;
  V go[NC];
#pragma GCC unroll 4
  for (int k = 0; k < NC; ++k) go[k] = load_row(grad_out + k * howo, c.width);
  for (int64_t u = 0; u < cols; ++u) {
    const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1];
    if (lo >= hi) continue;
    const Mask<T> mask = lane_mask<T>(lo, hi);
    for (int64_t a = c.a0; a < c.a1; ++a) {
      const int64_t start = (c.y0 + a * g.dilation) * g.width + c.x0 + (c.b0 + u) * g.dilation;
      const int64_t row = (a - c.a0) * cols + u;
      const V w = vload(s.weights + row * kLanes);
      V dw = vload(s.dweights + row * kLanes);
#pragma GCC unroll 4
      for (int k = 0; k < NC; ++k) {
        const T* vp = planes + k * hw + start;
        T* gp = grad_planes + k * hw + start;
        dw += go[k] * keep<T>(mask, load_lanes<kUnitStride>(vp, stride, spans(vp, stride, s.value_begin, s.value_end),
                                                             lo, hi));
        const bool owned = spans<T>(gp, stride, owned_begin, owned_end);
        add_lanes<kUnitStride>(gp, stride, owned, lo, hi, keep<T>(mask, w * go[k]));
      }
      vstore(s.dweights + row * kLanes, dw);
    }
  }
}

// Softmax backward for the chunk (d logit = w * (dw - sum(w * dw))) into query's, key's and geo_prior's
// gradients (the last as per-lane sums in s.dprior).
template <int kPhi, bool kUnitStride, typename T>
LR_INLINE void logits_backward(const Chunk& c, const Geometry& g, int64_t rows, Scratch<T>& s, T* grad_key,
                               T* grad_query_row) {
  using V = Vec<T>;
  const int64_t stride = kUnitStride ? 1 : g.stride, hw = g.height * g.width, cols = c.b1 - c.b0;
  V weighted{};
  for (int64_t r = 0; r < rows; ++r) weighted += vload(s.weights + r * kLanes) * vload(s.dweights + r * kLanes);
  const V q = vload(s.query);
  V gq{};
  for (int64_t u = 0; u < cols; ++u) {
    const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1];
    if (lo >= hi) continue;
    const Mask<T> mask = lane_mask<T>(lo, hi);
    for (int64_t a = c.a0; a < c.a1; ++a) {
      const int64_t start = (c.y0 + a * g.dilation) * g.width + c.x0 + (c.b0 + u) * g.dilation;
      const int64_t row = (a - c.a0) * cols + u;
      const V dl = vload(s.weights + row * kLanes) * (vload(s.dweights + row * kLanes) - weighted);
      V dq, dk;
      logit_grads<kPhi>(q, vload(s.keys + row * kLanes), dq, dk);
      gq += dl * dq;
      T* dprior = s.dprior + (a * g.kernel + c.b0 + u) * kLanes;
      vstore(dprior, vload(dprior) + dl);
      T* gkp = grad_key + start;
      add_lanes<kUnitStride>(gkp, stride, spans<T>(gkp, stride, grad_key, grad_key + hw), lo, hi, keep<T>(mask, dl * dk));
    }
  }
  store_row(grad_query_row + c.j0, gq, c.width);
}

// Backward over (n, group) pairs [begin, end): fills grad_query and this pair's slices of grad_key and
// grad_value, and its partial sums of geo_prior's gradient.
template <typename T, bool kUnitStride>
LR_MULTIVERSION void backward_groups(const Geometry& g, int64_t phi, const T* grad_out, const T* query, const T* key,
                                     const T* value, const T* prior, T* grad_query, T* grad_key, T* grad_value,
                                     T* grad_prior_parts, int64_t begin, int64_t end, T* scratch,
                                     int64_t* lane_scratch) {
  using V = Vec<T>;
  const int64_t hw = g.height * g.width, howo = g.out_height * g.out_width, kk = g.kernel * g.kernel;
  Scratch<T> s(scratch, lane_scratch, g, /*backward=*/true);
  s.set_bounds(key, value, g);
  for (int64_t ng = begin; ng < end; ++ng) {
    const int64_t grp = ng % g.groups, n = ng / g.groups;
    const int64_t c0 = grp * g.m, mg = std::min(g.m, g.channels - c0);
    const T* key_ng = key + ng * hw;
    const T* prior_g = prior + grp * kk;
    const T* value_g = value + (n * g.channels + c0) * hw;
    const T* go_g = grad_out + (n * g.channels + c0) * howo;
    T* gkey_ng = grad_key + ng * hw;
    T* gvalue_g = grad_value + (n * g.channels + c0) * hw;
    std::fill(gkey_ng, gkey_ng + hw, T(0));
    std::fill(gvalue_g, gvalue_g + mg * hw, T(0));
    std::fill(s.dprior, s.dprior + kk * kLanes, T(0));
    for (int64_t i = 0; i < g.out_height; ++i) {
      const T* query_row = query + ng * howo + i * g.out_width;
      for (int64_t j0 = 0; j0 < g.out_width; j0 += kLanes) {
        const Chunk c = chunk_of(i, j0, g);
        const int64_t rows = chunk_weights<kUnitStride>(c, g, phi, query_row, key_ng, prior_g, s, /*keys=*/true);
        const V inv_sum = vload(s.inv_sum);
        for (int64_t r = 0; r < rows; ++r) {
          vstore(s.weights + r * kLanes, vload(s.weights + r * kLanes) * inv_sum);
          vstore(s.dweights + r * kLanes, V{});
        }
        for (int64_t ch = 0; ch < mg; ch += 4) {
          const T* go = go_g + ch * howo + i * g.out_width + j0;
          const T* planes = value_g + ch * hw;
          T* grad_planes = gvalue_g + ch * hw;
          switch (std::min<int64_t>(4, mg - ch)) {
            case 4:
              values_backward<4, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, gvalue_g + mg * hw);
              break;
            case 3:
              values_backward<3, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, gvalue_g + mg * hw);
              break;
            case 2:
              values_backward<2, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, gvalue_g + mg * hw);
              break;
            default:
              values_backward<1, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, gvalue_g + mg * hw);
          }
        }
        T* gq_row = grad_query + ng * howo + i * g.out_width;
        if (phi == kSqDiff) {
          logits_backward<kSqDiff, kUnitStride>(c, g, rows, s, gkey_ng, gq_row);
        } else if (phi == kAbsDiff) {
          logits_backward<kAbsDiff, kUnitStride>(c, g, rows, s, gkey_ng, gq_row);
        } else {
          logits_backward<kProduct, kUnitStride>(c, g, rows, s, gkey_ng, gq_row);
        }
      }
    }
    T* gprior = grad_prior_parts + ng * kk;
    for (int64_t o = 0; o < kk; ++o) gprior[o] = lane_sum<T>(vload(s.dprior + o * kLanes));
  }
}

Geometry geometry_of(const LocalRelationShape& s) {
  return Geometry{s.n, s.groups, s.channels, s.per_group, s.height, s.width, s.out_height, s.out_width, s.kernel_size,
                  s.stride, s.dilation, (s.kernel_size - 1) / 2};
}

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// Tasks per parallel chunk such that a chunk does at least about 2^16 channel-offset steps: a small problem
// runs on the calling thread, where a parallel region would cost more than it saves.
int64_t grain_size(const Geometry& g, int64_t pixels_per_task) {
  const int64_t work = pixels_per_task * max_rows(g) * std::min(g.kernel, g.width) * (g.m + 4);
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work));
}

// Per-thread scratch from the tensor allocator (so memory statistics see it); row t belongs to thread t.
at::Tensor thread_scratch(int64_t per_thread, const at::TensorOptions& options) {
  return at::empty({at::get_num_threads(), per_thread}, options);
}

at::Tensor local_relation_forward_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                      const at::Tensor& geo_prior, int64_t kernel_size, int64_t stride,
                                      int64_t dilation, int64_t composability) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  if (is_reduced_float(value)) {  // float16 / bfloat16: computed in float32, returned in the input dtype
    return local_relation_forward_cpu(query.to(at::kFloat), key.to(at::kFloat), value.to(at::kFloat),
                                      geo_prior.to(at::kFloat), kernel_size, stride, dilation, composability)
        .to(value.scalar_type());
  }
  at::Tensor out = at::empty({shape.n, shape.channels, shape.out_height, shape.out_width}, value.options());
  if (out.numel() == 0) return out;
  const Geometry g = geometry_of(shape);
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous(), p = geo_prior.contiguous();
  at::Tensor scratch = thread_scratch(Scratch<float>::size(g, /*backward=*/false), value.options());
  at::Tensor lane_scratch = thread_scratch(Scratch<float>::lanes_size(g), value.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_forward_cpu", [&] {
    const int64_t grain = grain_size(g, shape.out_width);
    at::parallel_for(0, shape.n * shape.groups * shape.out_height, grain, [&](int64_t begin, int64_t end) {
      const int64_t t = at::get_thread_num();
      const auto run = g.stride == 1 ? forward_rows<scalar_t, true> : forward_rows<scalar_t, false>;
      run(g, composability, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          p.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), begin, end, scratch.data_ptr<scalar_t>() + t * scratch.size(1),
          lane_scratch.data_ptr<int64_t>() + t * lane_scratch.size(1));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> local_relation_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, int64_t kernel_size, int64_t stride, int64_t dilation, int64_t composability) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({shape.n, shape.channels, shape.out_height, shape.out_width}),
              "local_relation_backward: grad_out ", grad_out.sizes(), " must be the output's shape (", shape.n, ", ",
              shape.channels, ", ", shape.out_height, ", ", shape.out_width, ")");
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
  const Geometry g = geometry_of(shape);
  const at::Tensor go = grad_out.to(value.scalar_type()).contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous(), p = geo_prior.contiguous();
  at::Tensor grad_prior_parts = at::empty({shape.n * shape.groups, kernel_size, kernel_size}, value.options());
  at::Tensor scratch = thread_scratch(Scratch<float>::size(g, /*backward=*/true), value.options());
  at::Tensor lane_scratch = thread_scratch(Scratch<float>::lanes_size(g), value.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_backward_cpu", [&] {
    const int64_t grain = grain_size(g, shape.out_height * shape.out_width);
    at::parallel_for(0, shape.n * shape.groups, grain, [&](int64_t begin, int64_t end) {
      const int64_t t = at::get_thread_num();
      const auto run = g.stride == 1 ? backward_groups<scalar_t, true> : backward_groups<scalar_t, false>;
      run(g, composability, go.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), grad_query.data_ptr<scalar_t>(),
          grad_key.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(), grad_prior_parts.data_ptr<scalar_t>(),
          begin, end, scratch.data_ptr<scalar_t>() + t * scratch.size(1),
          lane_scratch.data_ptr<int64_t>() + t * lane_scratch.size(1));
    });
  });
  at::Tensor grad_prior = grad_prior_parts.view({shape.n, shape.groups, kernel_size, kernel_size}).sum(0);
  return {grad_query, grad_key, grad_value, grad_prior};
}

}  // namespace
}  // namespace lrrobust

TORCH_LIBRARY_IMPL(lrrobust, CPU, m) {
  m.impl("local_relation_forward", &lrrobust::local_relation_forward_cpu);
  m.impl("local_relation_backward", &lrrobust::local_relation_backward_cpu);
}
