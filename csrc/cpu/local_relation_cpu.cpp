// CPU kernels of the local relation op (Hu et al., "Local Relation Networks for Image Recognition", ICCV 2019,
// Sec. 4, Eq. 2-5). Schemas are in ../local_relation.cpp; semantics as in lrrobust/ops/reference.py.
//
// The work unit is a chunk: L neighbouring output pixels of one row, for one (n, group), L being one vector
// register (16 floats with AVX-512, 8 with AVX2, 4 with SSE). Every loop runs across the chunk's pixels, so each
// arithmetic step is one vector instruction. Per chunk, the forward computes the window's logits (one vector per
// window offset), their softmax and the weighted sums of the group's value channels, in a per-thread scratch of
// about 3*K*K vectors; nothing of size K*K times the input is ever allocated. The backward recomputes the weights
// and scatters into the key and value gradients; every parallel task owns one (n, group), so the result is
// deterministic. Tensors keep their NCHW layout.
// Vectors are GCC/Clang vector extensions. On x86-64 with GCC the hot loops are compiled three times, for
// AVX-512, AVX2 and baseline SSE2, and the widest the CPU runs is picked at run time (LRROBUST_CPU_ISA=avx2 or
// =baseline forces a narrower one, for tests), so the library needs no -march=native.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../local_relation_checks.h"

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
#define LR_X86_DISPATCH 1
#else
#define LR_X86_DISPATCH 0
#endif
#define LR_INLINE inline __attribute__((always_inline))

namespace lrrobust {
namespace {

// The widest chunk: scratch is sized for it.
constexpr int64_t kMaxLanes = 16;

// L numbers of type Scalar as one vector, a lane mask of the same width (all bits set or clear per lane), and the
// few operations the kernels need on them.
template <typename Scalar, int L>
struct Simd {
  using T = Scalar;
  using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T V __attribute__((vector_size(L * sizeof(T))));
  typedef Int M __attribute__((vector_size(L * sizeof(T))));
  static constexpr int64_t kLanes = L;

  static LR_INLINE V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static LR_INLINE void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(v)); }
  static LR_INLINE V splat(T x) { return V{} + x; }

  // Lanes [lo, hi) set, 0 <= lo, hi <= L: two windows into a table of 16 zeros, 16 ones and 16 zeros.
  static LR_INLINE M mask(int64_t lo, int64_t hi) {
    alignas(64) static constexpr Int kTable[3 * kMaxLanes] = {
        0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, -1, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0};
    M from_lo, below_hi;
    std::memcpy(&from_lo, kTable + kMaxLanes - lo, sizeof(from_lo));
    std::memcpy(&below_hi, kTable + 2 * kMaxLanes - hi, sizeof(below_hi));
    return from_lo & below_hi;
  }
  // x in the lanes of the mask, +0 elsewhere (whatever x holds there, NaN included).
  static LR_INLINE V keep(const M& m, const V& x) { return (V)((M)x & m); }
  // x in the lanes of the mask, `other` elsewhere.
  static LR_INLINE V blend(const M& m, const V& x, const V& other) { return (V)(((M)x & m) | ((M)other & ~m)); }
  static LR_INLINE T sum(const V& v) {
    T total = 0;
    for (int64_t l = 0; l < L; ++l) total += v[l];
    return total;
  }

  // exp(x) for x <= 0 (logits minus their maximum); 0 below -87 and for -inf (offsets outside the image), NaN
  // for NaN.
  // float: Cephes' single-precision polynomial on the whole vector. double (gradcheck): std::exp per lane.
  static LR_INLINE V exp_nonpositive(V x) {
    if constexpr (std::is_same_v<T, float>) {
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
    } else {
      for (int64_t l = 0; l < L; ++l) x[l] = std::exp(x[l]);
      return x;
    }
  }
};

// log(x) for x >= 1 or NaN (a softmax's normaliser, whose largest term is 1). float: Cephes' single-precision
// logarithm on the whole vector; double: std::log per lane.
template <typename S>
LR_INLINE typename S::V log_of_normaliser(typename S::V x) {
  using T = typename S::T;
  using V = typename S::V;
  using M = typename S::M;
  if constexpr (std::is_same_v<T, float>) {
    const M is_nan = x != x;
    M bits = (M)x;
    V e = __builtin_convertvector((bits >> 23) - 126, V);  // x = m * 2^e, m in [0.5, 1)
    bits = (bits & 0x007fffff) | 0x3f000000;
    V m = (V)bits;
    const M small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    m = (small ? m + m : m) - 1.0f;
    const V z = m * m;
    V y = S::splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
    const V result = m + y + 0.693359375f * e;
    return is_nan ? x : result;
  } else {
    for (int64_t l = 0; l < S::kLanes; ++l) x[l] = std::log(x[l]);
    return x;
  }
}

struct Geometry {
  int64_t batch, groups, channels, m, height, width, out_height, out_width, kernel, stride, dilation, radius;
};

// The tensors of one call, as raw pointers: contiguous NCHW ((N, G, ...) for query and key) for the row kernels,
// the batch-lane packing (NB, planes, H, W, L) for the batch-lane kernels.
template <typename T>
struct Tensors {
  const T *grad_out, *query, *key, *value, *prior;
  T *out, *lse, *grad_query, *grad_key, *grad_value, *grad_prior_parts;
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

LR_INLINE Chunk chunk_of(int64_t i, int64_t j0, int64_t lanes, const Geometry& g) {
  Chunk c{};
  c.i = i;
  c.j0 = j0;
  c.width = std::min(lanes, g.out_width - j0);
  c.y0 = i * g.stride - g.radius * g.dilation;
  c.x0 = j0 * g.stride - g.radius * g.dilation;
  c.a0 = std::max<int64_t>(0, ceil_div(-c.y0, g.dilation));
  c.a1 = std::min<int64_t>(g.kernel, floor_div(g.height - 1 - c.y0, g.dilation) + 1);
  c.b0 = std::max<int64_t>(0, ceil_div(-(c.x0 + (c.width - 1) * g.stride), g.dilation));
  c.b1 = std::min<int64_t>(g.kernel, floor_div(g.width - 1 - c.x0, g.dilation) + 1);
  return c;
}

// Most window rows and columns a chunk can keep: at most H window rows, and W + (kMaxLanes - 1) * stride columns
// are in the image for some lane.
int64_t max_rows(const Geometry& g) { return std::min(g.kernel, g.height); }
int64_t max_cols(const Geometry& g) {
  return std::min(g.kernel, (g.width - 1 + (kMaxLanes - 1) * g.stride) / g.dilation + 1);
}

// Sizes of the per-thread scratch (numbers of T, and of int64_t).
int64_t scratch_size(const Geometry& g, bool backward) {
  const int64_t offsets = max_rows(g) * max_cols(g);
  return (backward ? 3 * offsets + g.kernel * g.kernel + 3 : offsets + 3) * kMaxLanes;
}
int64_t lane_scratch_size(const Geometry& g) { return 2 * max_cols(g); }

// A thread's scratch, one vector per kept window offset, per window offset (prior) or per chunk.
template <typename S>
struct Scratch {
  using T = typename S::T;
  T* weights;      // [offsets]: logits, then softmax numerators or weights
  T* keys;         // [offsets]: the key under each offset (backward)
  T* dweights;     // [offsets]: the weights' gradient (backward)
  T* dprior;       // [K*K]: per-lane sums of geo_prior's gradient (backward)
  T* query;        // the chunk's query
  T* inv_sum;      // 1 / sum of the softmax numerators (0 for unused lanes)
  T* top;          // the largest logit (0 for unused lanes)
  int64_t* lanes;  // [columns][2]: lanes [lo, hi) inside the image at each window column
  // The key and value tensors: whole-vector loads may read any of their elements (and mask what they do not need).
  const T *key_begin, *key_end, *value_begin, *value_end;

  Scratch(T* base, int64_t* lane_base, const Geometry& g, const Tensors<T>& t, bool backward) {
    const int64_t offsets = max_rows(g) * max_cols(g) * S::kLanes, hw = g.height * g.width;
    weights = base;
    keys = backward ? weights + offsets : nullptr;
    dweights = backward ? keys + offsets : nullptr;
    dprior = backward ? dweights + offsets : nullptr;
    query = backward ? dprior + g.kernel * g.kernel * S::kLanes : weights + offsets;
    inv_sum = query + S::kLanes;
    top = inv_sum + S::kLanes;
    lanes = lane_base;
    key_begin = t.key;
    key_end = t.key + g.batch * g.groups * hw;
    value_begin = t.value;
    value_end = t.value + g.batch * g.channels * hw;
  }
  T* row(T* base, int64_t r) const { return base + r * S::kLanes; }
};

// For each window column b of the chunk, the lanes whose pixel at that column lies in the image.
LR_INLINE void chunk_lanes(const Chunk& c, const Geometry& g, int64_t* lanes) {
  for (int64_t b = c.b0; b < c.b1; ++b) {
    const int64_t x = c.x0 + b * g.dilation;
    const int64_t lo = std::max<int64_t>(0, ceil_div(-x, g.stride));
    const int64_t hi = std::min<int64_t>(c.width, floor_div(g.width - 1 - x, g.stride) + 1);
    lanes[2 * (b - c.b0)] = lo < hi ? lo : 0;  // an empty range as [0, 0), inside the mask table
    lanes[2 * (b - c.b0) + 1] = lo < hi ? hi : 0;
  }
}

// Whether all L positions p + l * stride lie in [begin, end) (p itself may point outside: compared as integers).
template <typename S, typename T>
LR_INLINE bool spans(const T* p, int64_t stride, const T* begin, const T* end) {
  const auto first = reinterpret_cast<uintptr_t>(p);
  const auto last = first + static_cast<uintptr_t>((S::kLanes - 1) * stride) * sizeof(T);
  return first >= reinterpret_cast<uintptr_t>(begin) && last < reinterpret_cast<uintptr_t>(end);
}

// Lane l = p[l * stride]. With `whole` all L are read (lanes outside [lo, hi) hold other pixels, for the
// caller to mask); otherwise only lanes [lo, hi) are read and the others are 0.
template <typename S, bool kUnitStride>
LR_INLINE typename S::V load_lanes(const typename S::T* p, int64_t stride, bool whole, int64_t lo, int64_t hi) {
  if (kUnitStride && whole) return S::load(p);
  typename S::T tmp[S::kLanes] = {};
  if (whole) {
    for (int64_t l = 0; l < S::kLanes; ++l) tmp[l] = p[l * stride];
  } else {
    for (int64_t l = lo; l < hi; ++l) tmp[l] = p[l * stride];
  }
  return S::load(tmp);
}

// p[l * stride] += delta[l] for lanes [lo, hi); delta is 0 in the other lanes. With `whole` (all L positions
// lie in memory this task owns) all lanes are written.
template <typename S, bool kUnitStride>
LR_INLINE void add_lanes(typename S::T* p, int64_t stride, bool whole, int64_t lo, int64_t hi,
                         const typename S::V& delta) {
  if (kUnitStride && whole) {
    S::store(p, S::load(p) + delta);
  } else {
    for (int64_t l = lo; l < hi; ++l) p[l * stride] += delta[l];
  }
}

// The first `width` lanes from p, 0 in the others.
template <typename S>
LR_INLINE typename S::V load_row(const typename S::T* p, int64_t width) {
  if (width == S::kLanes) return S::load(p);
  typename S::T tmp[S::kLanes] = {};
  for (int64_t l = 0; l < width; ++l) tmp[l] = p[l];
  return S::load(tmp);
}

template <typename S>
LR_INLINE void store_row(typename S::T* p, const typename S::V& v, int64_t width) {
  if (width == S::kLanes) {
    S::store(p, v);
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
template <typename S, int kPhi, bool kUnitStride>
LR_INLINE int64_t chunk_logits(const Chunk& c, const Geometry& g, const typename S::T* key,
                               const typename S::T* prior, Scratch<S>& s, bool keys) {
  using T = typename S::T;
  using V = typename S::V;
  const int64_t stride = kUnitStride ? 1 : g.stride, cols = c.b1 - c.b0;
  const V q = S::load(s.query);
  const V minus_inf = S::splat(-std::numeric_limits<T>::infinity());
  int64_t row = 0;
  for (int64_t a = c.a0; a < c.a1; ++a) {
    const int64_t row_start = (c.y0 + a * g.dilation) * g.width + c.x0;
    for (int64_t u = 0; u < cols; ++u, ++row) {
      const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1];
      const typename S::M mask = S::mask(lo, hi);
      const T* kp = key + row_start + (c.b0 + u) * g.dilation;
      const bool whole = spans<S>(kp, stride, s.key_begin, s.key_end);
      const V k = S::keep(mask, load_lanes<S, kUnitStride>(kp, stride, whole, lo, hi));
      const V logit = logit_of<kPhi>(q, k) + prior[a * g.kernel + c.b0 + u];
      S::store(s.row(s.weights, row), S::blend(mask, logit, minus_inf));
      if (keys) S::store(s.row(s.keys, row), k);
    }
  }
  return row;
}

// Softmax numerators exp(l - max) in place, per lane; sets inv_sum. Non-finite logits follow torch.softmax: in the
// first `width` lanes a window whose logits are all -inf, or with a +inf or NaN logit, gets NaN numerators (-inf
// minus -inf, +inf minus +inf, NaN); the lanes past the row's end get numerators 0 and inv_sum 0, so that they add
// nothing to the backward's per-lane sums.
template <typename S>
LR_INLINE void chunk_softmax(int64_t rows, int64_t width, Scratch<S>& s) {
  using T = typename S::T;
  using V = typename S::V;
  V top = S::splat(-std::numeric_limits<T>::infinity());
  for (int64_t r = 0; r < rows; ++r) {
    const V logit = S::load(s.row(s.weights, r));
    top = logit > top ? logit : top;  // NaN logits are skipped here, and give NaN numerators below
  }
  top = S::blend(S::mask(0, width), top, V{});  // lanes past the row's end: all logits -inf, numerators 0
  V sum{};
  for (int64_t r = 0; r < rows; ++r) {
    const V e = S::exp_nonpositive(S::load(s.row(s.weights, r)) - top);
    S::store(s.row(s.weights, r), e);
    sum += e;
  }
  // sum >= 1 or NaN in the first `width` lanes (the maximum's numerator is 1), 0 past the row's end.
  S::store(s.inv_sum, sum != 0 ? T(1) / sum : V{});
  S::store(s.top, top);
}

// Loads the chunk's query and lane ranges, computes its logits and their softmax numerators; returns the count.
template <typename S, bool kUnitStride>
LR_INLINE int64_t chunk_weights(const Chunk& c, const Geometry& g, int64_t phi, const typename S::T* query_row,
                                const typename S::T* key, const typename S::T* prior, Scratch<S>& s, bool keys) {
  S::store(s.query, load_row<S>(query_row + c.j0, c.width));
  chunk_lanes(c, g, s.lanes);
  int64_t rows;
  if (phi == kSqDiff) {
    rows = chunk_logits<S, kSqDiff, kUnitStride>(c, g, key, prior, s, keys);
  } else if (phi == kAbsDiff) {
    rows = chunk_logits<S, kAbsDiff, kUnitStride>(c, g, key, prior, s, keys);
  } else {
    rows = chunk_logits<S, kProduct, kUnitStride>(c, g, key, prior, s, keys);
  }
  chunk_softmax(rows, c.width, s);
  return rows;
}

// Weighted sums over the window of NC value channels (planes hw apart) for the chunk, into out (planes howo
// apart). The NC accumulators are independent, so consecutive multiply-adds do not wait on each other.
template <typename S, int NC, bool kUnitStride>
LR_INLINE void aggregate(const Chunk& c, const Geometry& g, const Scratch<S>& s, const typename S::T* planes,
                         typename S::T* out) {
  using T = typename S::T;
  using V = typename S::V;
  const int64_t stride = kUnitStride ? 1 : g.stride, hw = g.height * g.width, cols = c.b1 - c.b0;
  V acc[NC] = {};
  for (int64_t a = c.a0; a < c.a1; ++a) {
    const int64_t row_start = (c.y0 + a * g.dilation) * g.width + c.x0;
    const int64_t first = (a - c.a0) * cols;
    for (int64_t u = 0; u < cols; ++u) {
      const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1], start = row_start + (c.b0 + u) * g.dilation;
      if (lo >= hi) continue;
      const typename S::M mask = S::mask(lo, hi);
      const V w = S::load(s.row(s.weights, first + u));
#pragma GCC unroll 4
      for (int k = 0; k < NC; ++k) {
        const T* vp = planes + k * hw + start;
        const bool whole = spans<S>(vp, stride, s.value_begin, s.value_end);
        acc[k] += w * S::keep(mask, load_lanes<S, kUnitStride>(vp, stride, whole, lo, hi));
      }
    }
  }
  const V inv_sum = S::load(s.inv_sum);
  const int64_t howo = g.out_height * g.out_width;
#pragma GCC unroll 4
  for (int k = 0; k < NC; ++k) store_row<S>(out + k * howo, acc[k] * inv_sum, c.width);
}

// Forward over rows [begin, end) of the flattened (n, group, output row) range.
template <typename S, bool kUnitStride>
LR_INLINE void forward_rows(const Geometry& g, int64_t phi, const Tensors<typename S::T>& t, int64_t begin,
                            int64_t end, typename S::T* scratch, int64_t* lane_scratch) {
  using T = typename S::T;
  const int64_t hw = g.height * g.width, howo = g.out_height * g.out_width, kk = g.kernel * g.kernel;
  Scratch<S> s(scratch, lane_scratch, g, t, /*backward=*/false);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t i = task % g.out_height, ng = task / g.out_height, grp = ng % g.groups, n = ng / g.groups;
    const int64_t c0 = grp * g.m, mg = std::min(g.m, g.channels - c0);
    const T* key_ng = t.key + ng * hw;
    const T* prior_g = t.prior + grp * kk;
    const T* query_row = t.query + ng * howo + i * g.out_width;
    const T* value_g = t.value + (n * g.channels + c0) * hw;
    T* out_row = t.out + (n * g.channels + c0) * howo + i * g.out_width;
    T* lse_row = t.lse + ng * howo + i * g.out_width;
    for (int64_t j0 = 0; j0 < g.out_width; j0 += S::kLanes) {
      const Chunk c = chunk_of(i, j0, S::kLanes, g);
      chunk_weights<S, kUnitStride>(c, g, phi, query_row, key_ng, prior_g, s, /*keys=*/false);
      // The log-sum-exp in base 2, the op's second result; sqdiff's logits here are k*(2q - k), the true ones
      // -(q - k)^2 less q^2.
      for (int64_t l = 0; l < c.width; ++l) {
        const T shift = phi == kSqDiff ? s.query[l] * s.query[l] : T(0);
        lse_row[j0 + l] = (s.top[l] - std::log(s.inv_sum[l]) - shift) * T(1.4426950408889634);
      }
      for (int64_t ch = 0; ch < mg; ch += 4) {
        const T* planes = value_g + ch * hw;
        T* dst = out_row + ch * howo + j0;
        switch (std::min<int64_t>(4, mg - ch)) {
          case 4:
            aggregate<S, 4, kUnitStride>(c, g, s, planes, dst);
            break;
          case 3:
            aggregate<S, 3, kUnitStride>(c, g, s, planes, dst);
            break;
          case 2:
            aggregate<S, 2, kUnitStride>(c, g, s, planes, dst);
            break;
          default:
            aggregate<S, 1, kUnitStride>(c, g, s, planes, dst);
        }
      }
    }
  }
}

// For NC value channels of the chunk: the weights' gradient grad_out . value (added to s.dweights) and value's
// gradient weight * grad_out (added to grad_planes, whose writable extent is [owned_begin, owned_end)). Window
// columns outer, rows inner, so that the overlapping vector updates of neighbouring columns lie stores apart.
template <typename S, int NC, bool kUnitStride>
LR_INLINE void values_backward(const Chunk& c, const Geometry& g, Scratch<S>& s, const typename S::T* grad_out,
                               const typename S::T* planes, typename S::T* grad_planes,
                               const typename S::T* owned_begin, const typename S::T* owned_end) {
  using T = typename S::T;
  using V = typename S::V;
  const int64_t stride = kUnitStride ? 1 : g.stride, hw = g.height * g.width, cols = c.b1 - c.b0;
  const int64_t howo = g.out_height * g.out_width;
  V go[NC];
#pragma GCC unroll 4
  for (int k = 0; k < NC; ++k) go[k] = load_row<S>(grad_out + k * howo, c.width);
  for (int64_t u = 0; u < cols; ++u) {
    const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1];
    if (lo >= hi) continue;
    const typename S::M mask = S::mask(lo, hi);
    for (int64_t a = c.a0; a < c.a1; ++a) {
      const int64_t start = (c.y0 + a * g.dilation) * g.width + c.x0 + (c.b0 + u) * g.dilation;
      const int64_t row = (a - c.a0) * cols + u;
      const V w = S::load(s.row(s.weights, row));
      V dw = S::load(s.row(s.dweights, row));
#pragma GCC unroll 4
      for (int k = 0; k < NC; ++k) {
        const T* vp = planes + k * hw + start;
        T* gp = grad_planes + k * hw + start;
        const bool readable = spans<S>(vp, stride, s.value_begin, s.value_end);
        dw += go[k] * S::keep(mask, load_lanes<S, kUnitStride>(vp, stride, readable, lo, hi));
        const bool owned = spans<S>(static_cast<const T*>(gp), stride, owned_begin, owned_end);
        add_lanes<S, kUnitStride>(gp, stride, owned, lo, hi, S::keep(mask, w * go[k]));
      }
      S::store(s.row(s.dweights, row), dw);
    }
  }
}

// Softmax backward for the chunk (d logit = w * (dw - sum(w * dw))) into query's, key's and geo_prior's
// gradients (the last as per-lane sums in s.dprior).
template <typename S, int kPhi, bool kUnitStride>
LR_INLINE void logits_backward(const Chunk& c, const Geometry& g, int64_t rows, Scratch<S>& s,
                               typename S::T* grad_key, typename S::T* grad_query_row) {
  using T = typename S::T;
  using V = typename S::V;
  const int64_t stride = kUnitStride ? 1 : g.stride, hw = g.height * g.width, cols = c.b1 - c.b0;
  V weighted{};
  for (int64_t r = 0; r < rows; ++r) weighted += S::load(s.row(s.weights, r)) * S::load(s.row(s.dweights, r));
  const V q = S::load(s.query);
  V gq{};
  for (int64_t u = 0; u < cols; ++u) {
    const int64_t lo = s.lanes[2 * u], hi = s.lanes[2 * u + 1];
    if (lo >= hi) continue;
    const typename S::M mask = S::mask(lo, hi);
    for (int64_t a = c.a0; a < c.a1; ++a) {
      const int64_t row = (a - c.a0) * cols + u;
      // Lanes outside the image take no part (their weight is 0, or NaN in a window of non-finite logits).
      const V dl = S::keep(mask, S::load(s.row(s.weights, row)) * (S::load(s.row(s.dweights, row)) - weighted));
      V dq, dk;
      logit_grads<kPhi>(q, S::load(s.row(s.keys, row)), dq, dk);
      gq += dl * dq;
      T* dprior = s.row(s.dprior, a * g.kernel + c.b0 + u);
      S::store(dprior, S::load(dprior) + dl);
      T* gkp = grad_key + (c.y0 + a * g.dilation) * g.width + c.x0 + (c.b0 + u) * g.dilation;
      const bool owned = spans<S>(static_cast<const T*>(gkp), stride, grad_key, grad_key + hw);
      add_lanes<S, kUnitStride>(gkp, stride, owned, lo, hi, S::keep(mask, dl * dk));
    }
  }
  store_row<S>(grad_query_row + c.j0, gq, c.width);
}

// Backward over (n, group) pairs [begin, end): fills grad_query and this pair's slices of grad_key and
// grad_value, and its partial sums of geo_prior's gradient.
template <typename S, bool kUnitStride>
LR_INLINE void backward_groups(const Geometry& g, int64_t phi, const Tensors<typename S::T>& t, int64_t begin,
                               int64_t end, typename S::T* scratch, int64_t* lane_scratch) {
  using T = typename S::T;
  using V = typename S::V;
  const int64_t hw = g.height * g.width, howo = g.out_height * g.out_width, kk = g.kernel * g.kernel;
  Scratch<S> s(scratch, lane_scratch, g, t, /*backward=*/true);
  for (int64_t ng = begin; ng < end; ++ng) {
    const int64_t grp = ng % g.groups, n = ng / g.groups;
    const int64_t c0 = grp * g.m, mg = std::min(g.m, g.channels - c0);
    const T* key_ng = t.key + ng * hw;
    const T* prior_g = t.prior + grp * kk;
    const T* value_g = t.value + (n * g.channels + c0) * hw;
    const T* go_g = t.grad_out + (n * g.channels + c0) * howo;
    T* gkey_ng = t.grad_key + ng * hw;
    T* gvalue_g = t.grad_value + (n * g.channels + c0) * hw;
    std::fill(gkey_ng, gkey_ng + hw, T(0));
    std::fill(gvalue_g, gvalue_g + mg * hw, T(0));
    std::fill(s.dprior, s.dprior + kk * S::kLanes, T(0));
    for (int64_t i = 0; i < g.out_height; ++i) {
      const T* query_row = t.query + ng * howo + i * g.out_width;
      for (int64_t j0 = 0; j0 < g.out_width; j0 += S::kLanes) {
        const Chunk c = chunk_of(i, j0, S::kLanes, g);
        const int64_t rows = chunk_weights<S, kUnitStride>(c, g, phi, query_row, key_ng, prior_g, s, /*keys=*/true);
        const V inv_sum = S::load(s.inv_sum);
        for (int64_t r = 0; r < rows; ++r) {
          S::store(s.row(s.weights, r), S::load(s.row(s.weights, r)) * inv_sum);
          S::store(s.row(s.dweights, r), V{});
        }
        for (int64_t ch = 0; ch < mg; ch += 4) {
          const T* go = go_g + ch * howo + i * g.out_width + j0;
          const T* planes = value_g + ch * hw;
          T* grad_planes = gvalue_g + ch * hw;
          const T* owned_end = gvalue_g + mg * hw;
          switch (std::min<int64_t>(4, mg - ch)) {
            case 4:
              values_backward<S, 4, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, owned_end);
              break;
            case 3:
              values_backward<S, 3, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, owned_end);
              break;
            case 2:
              values_backward<S, 2, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, owned_end);
              break;
            default:
              values_backward<S, 1, kUnitStride>(c, g, s, go, planes, grad_planes, gvalue_g, owned_end);
          }
        }
        T* gq_row = t.grad_query + ng * howo + i * g.out_width;
        if (phi == kSqDiff) {
          logits_backward<S, kSqDiff, kUnitStride>(c, g, rows, s, gkey_ng, gq_row);
        } else if (phi == kAbsDiff) {
          logits_backward<S, kAbsDiff, kUnitStride>(c, g, rows, s, gkey_ng, gq_row);
        } else {
          logits_backward<S, kProduct, kUnitStride>(c, g, rows, s, gkey_ng, gq_row);
        }
      }
    }
    T* gprior = t.grad_prior_parts + ng * kk;
    for (int64_t o = 0; o < kk; ++o) gprior[o] = S::sum(S::load(s.row(s.dprior, o)));
  }
}

// ---- Batch lanes: the work unit is one output pixel of L images at once ----
// Small maps (7x7, 4x4: a row fills a fraction of a vector) and strided layers (a row's pixels lie `stride` apart)
// waste most of a row chunk's lanes. Here lane l is image b * L + l of batch block b instead: every lane has the
// same window inside the image (no masks), and a pixel's L values are one contiguous vector. The host repacks the
// tensors to (NB, planes, H, W, L) (images past N are zeros, whose results are dropped) and back.

// Element (n, plane, y, x) of an unpacked tensor lies at n * n_ + plane * plane_ + y * y_ + x * x_.
struct Strides {
  int64_t n, plane, y, x;
};

// Lanes [0, L/2) of a and b interleaved (a0 b0 a1 b1 ...), or lanes [L/2, L) when kHigh.
template <typename S, bool kHigh, size_t... I>
LR_INLINE typename S::V interleave(const typename S::V& a, const typename S::V& b, std::index_sequence<I...>) {
  constexpr int64_t L = S::kLanes, half = kHigh ? L / 2 : 0;
  return __builtin_shufflevector(a, b, static_cast<int>((I % 2 ? L : 0) + half + I / 2)...);
}

// r[i][j] -> r[j][i] for an L x L tile in L registers: log2(L) perfect shuffles of row i with row i + L/2.
template <typename S>
LR_INLINE void transpose(typename S::V* r) {
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  constexpr auto lanes = std::make_index_sequence<L>{};
  for (int64_t width = 1; width < L; width *= 2) {
    V next[L];
#pragma GCC unroll 16
    for (int64_t i = 0; i < L / 2; ++i) {
      next[2 * i] = interleave<S, false>(r[i], r[i + L / 2], lanes);
      next[2 * i + 1] = interleave<S, true>(r[i], r[i + L / 2], lanes);
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < L; ++i) r[i] = next[i];
  }
}

// Copies tasks [begin, end) of the (block, plane) range between an unpacked tensor and its batch-lane packing
// (NB, P, H, W, L): lane l of block b is image b * L + l; packing writes zeros in the lanes past N, unpacking skips
// them. A plane whose rows are contiguous and adjacent (NCHW) goes L pixels at a time through a register transpose;
// any other layout (channels-last, strided slices) element by element.
template <typename S, bool kToPacked>
LR_INLINE void lanes_copy(typename S::T* unpacked, const Strides& st, typename S::T* packed, int64_t n,
                          int64_t planes, int64_t height, int64_t width, int64_t begin, int64_t end) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const int64_t hw = height * width;
  const bool flat = st.x == 1 && st.y == width;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t blk = task / planes, plane = task % planes, images = std::min(L, n - blk * L);
    T* base = packed + task * hw * L;
    T* rows[L];
    for (int64_t l = 0; l < L; ++l) rows[l] = unpacked + (blk * L + std::min(l, images - 1)) * st.n + plane * st.plane;
    int64_t done = 0;
    if (flat) {
      for (; done + L <= hw; done += L) {
        V r[L];
        if constexpr (kToPacked) {
#pragma GCC unroll 16
          for (int64_t l = 0; l < L; ++l) r[l] = l < images ? S::load(rows[l] + done) : V{};
          transpose<S>(r);
#pragma GCC unroll 16
          for (int64_t x = 0; x < L; ++x) S::store(base + (done + x) * L, r[x]);
        } else {
#pragma GCC unroll 16
          for (int64_t x = 0; x < L; ++x) r[x] = S::load(base + (done + x) * L);
          transpose<S>(r);
          for (int64_t l = 0; l < images; ++l) S::store(rows[l] + done, r[l]);
        }
      }
    }
    for (int64_t pixel = done; pixel < hw; ++pixel) {  // the rest, element by element
      const int64_t offset = (pixel / width) * st.y + (pixel % width) * st.x;
      T* d = base + pixel * L;
      for (int64_t l = 0; l < L; ++l) {
        if constexpr (kToPacked) {
          d[l] = l < images ? rows[l][offset] : T(0);
        } else if (l < images) {
          rows[l][offset] = d[l];
        }
      }
    }
  }
}

// The window of output pixel (i, j) inside the image: rows [a0, a1), columns [b0, b1) of the K x K window; offset
// (a, b) reads pixel (y0 + a * dilation, x0 + b * dilation). The centre offset is always inside.
struct PixelWindow {
  int64_t y0, x0, a0, a1, b0, b1;
};

LR_INLINE PixelWindow pixel_window(int64_t i, int64_t j, const Geometry& g) {
  PixelWindow p{};
  p.y0 = i * g.stride - g.radius * g.dilation;
  p.x0 = j * g.stride - g.radius * g.dilation;
  p.a0 = std::max<int64_t>(0, ceil_div(-p.y0, g.dilation));
  p.a1 = std::min<int64_t>(g.kernel, floor_div(g.height - 1 - p.y0, g.dilation) + 1);
  p.b0 = std::max<int64_t>(0, ceil_div(-p.x0, g.dilation));
  p.b1 = std::min<int64_t>(g.kernel, floor_div(g.width - 1 - p.x0, g.dilation) + 1);
  return p;
}

// Offsets a pixel keeps at most (rows times columns inside the image), the batch-lane scratch's unit.
int64_t batch_offsets(const Geometry& g) { return std::min(g.kernel, g.height) * std::min(g.kernel, g.width); }
int64_t batch_scratch_size(const Geometry& g, bool backward) {
  return (backward ? 3 * batch_offsets(g) + g.kernel * g.kernel : batch_offsets(g)) * kMaxLanes;
}

// The pixel's logits (one vector per kept offset, window rows outer) into w, the key under each offset into keys
// (when given), their softmax numerators in place; returns the count and sets top and sum (the softmax's maximum
// and normaliser per lane). Non-finite logits give NaN numerators as in chunk_softmax.
template <typename S, int kPhi>
LR_INLINE int64_t pixel_softmax(const PixelWindow& p, const Geometry& g, const typename S::V& q,
                                const typename S::T* key, const typename S::T* prior, typename S::T* w,
                                typename S::T* keys, typename S::V& top, typename S::V& sum) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  top = S::splat(-std::numeric_limits<T>::infinity());
  int64_t n = 0;
  for (int64_t a = p.a0; a < p.a1; ++a) {
    const T* key_row = key + ((p.y0 + a * g.dilation) * g.width + p.x0) * L;
    const T* prior_row = prior + a * g.kernel;
    for (int64_t b = p.b0; b < p.b1; ++b, ++n) {
      const V k = S::load(key_row + b * g.dilation * L);
      const V logit = logit_of<kPhi>(q, k) + prior_row[b];
      S::store(w + n * L, logit);
      if (keys != nullptr) S::store(keys + n * L, k);
      top = logit > top ? logit : top;
    }
  }
  sum = V{};
  for (int64_t o = 0; o < n; ++o) {
    const V e = S::exp_nonpositive(S::load(w + o * L) - top);
    S::store(w + o * L, e);
    sum += e;
  }
  return n;
}

// out = sum over the window of w * value for NC channels (planes hw * L apart), scaled by inv_sum.
template <typename S, int NC>
LR_INLINE void pixel_aggregate(const PixelWindow& p, const Geometry& g, const typename S::T* w,
                               const typename S::V& inv_sum, const typename S::T* planes, typename S::T* out,
                               int64_t out_plane) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const int64_t plane = g.height * g.width * L;
  V acc[NC] = {};
  int64_t n = 0;
  for (int64_t a = p.a0; a < p.a1; ++a) {
    const T* row = planes + ((p.y0 + a * g.dilation) * g.width + p.x0) * L;
    for (int64_t b = p.b0; b < p.b1; ++b, ++n) {
      const V weight = S::load(w + n * L);
      const T* v = row + b * g.dilation * L;
#pragma GCC unroll 8
      for (int k = 0; k < NC; ++k) acc[k] += weight * S::load(v + k * plane);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < NC; ++k) S::store(out + k * out_plane, acc[k] * inv_sum);
}

// Forward over tasks [begin, end) of the flattened (batch block, group, output row) range.
template <typename S, int kPhi>
LR_INLINE void batch_forward_rows(const Geometry& g, const Tensors<typename S::T>& t, int64_t begin, int64_t end,
                                  typename S::T* scratch) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const int64_t hw = g.height * g.width, howo = g.out_height * g.out_width, kk = g.kernel * g.kernel;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t i = task % g.out_height, bg = task / g.out_height, grp = bg % g.groups, blk = bg / g.groups;
    const int64_t c0 = grp * g.m, mg = std::min(g.m, g.channels - c0);
    const T* key = t.key + bg * hw * L;
    const T* prior = t.prior + grp * kk;
    const T* value = t.value + (blk * g.channels + c0) * hw * L;
    for (int64_t j = 0; j < g.out_width; ++j) {
      const PixelWindow p = pixel_window(i, j, g);
      const int64_t pixel = (i * g.out_width + j) * L;
      const V q = S::load(t.query + bg * howo * L + pixel);
      V top, sum;
      pixel_softmax<S, kPhi>(p, g, q, key, prior, scratch, nullptr, top, sum);
      const V inv_sum = T(1) / sum;
      // The log-sum-exp in base 2; sqdiff's logits are k*(2q - k), the true ones -(q - k)^2 less q^2.
      const V shift = kPhi == kSqDiff ? q * q : V{};
      S::store(t.lse + bg * howo * L + pixel, (top + log_of_normaliser<S>(sum) - shift) * T(1.4426950408889634));
      T* out = t.out + (blk * g.channels + c0) * howo * L + pixel;
      int64_t ch = 0;
      for (; ch + 8 <= mg; ch += 8) pixel_aggregate<S, 8>(p, g, scratch, inv_sum, value + ch * hw * L, out + ch * howo * L, howo * L);
      if (mg - ch >= 4) {
        pixel_aggregate<S, 4>(p, g, scratch, inv_sum, value + ch * hw * L, out + ch * howo * L, howo * L);
        ch += 4;
      }
      switch (mg - ch) {
        case 3:
          pixel_aggregate<S, 3>(p, g, scratch, inv_sum, value + ch * hw * L, out + ch * howo * L, howo * L);
          break;
        case 2:
          pixel_aggregate<S, 2>(p, g, scratch, inv_sum, value + ch * hw * L, out + ch * howo * L, howo * L);
          break;
        case 1:
          pixel_aggregate<S, 1>(p, g, scratch, inv_sum, value + ch * hw * L, out + ch * howo * L, howo * L);
          break;
        default:
          break;
      }
    }
  }
}

// For NC channels: the weights' gradient dw += grad_out . value and value's gradient += w * grad_out.
template <typename S, int NC>
LR_INLINE void pixel_values_backward(const PixelWindow& p, const Geometry& g, const typename S::T* w,
                                     typename S::T* dw, const typename S::T* grad_out, int64_t out_plane,
                                     const typename S::T* planes, typename S::T* grad_planes) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const int64_t plane = g.height * g.width * L;
  V go[NC];
#pragma GCC unroll 8
  for (int k = 0; k < NC; ++k) go[k] = S::load(grad_out + k * out_plane);
  int64_t n = 0;
  for (int64_t a = p.a0; a < p.a1; ++a) {
    const int64_t row = ((p.y0 + a * g.dilation) * g.width + p.x0) * L;
    for (int64_t b = p.b0; b < p.b1; ++b, ++n) {
      const int64_t at = row + b * g.dilation * L;
      const V weight = S::load(w + n * L);
      V d = S::load(dw + n * L);
#pragma GCC unroll 8
      for (int k = 0; k < NC; ++k) {
        d += go[k] * S::load(planes + k * plane + at);
        T* gv = grad_planes + k * plane + at;
        S::store(gv, S::load(gv) + weight * go[k]);
      }
      S::store(dw + n * L, d);
    }
  }
}

// Backward over tasks [begin, end) of the flattened (batch block, group) range: each task owns its block's slices
// of grad_key and grad_value, so the result does not depend on the number of threads.
template <typename S, int kPhi>
LR_INLINE void batch_backward_groups(const Geometry& g, const Tensors<typename S::T>& t, int64_t begin, int64_t end,
                                     typename S::T* scratch) {
  using T = typename S::T;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const int64_t hw = g.height * g.width, howo = g.out_height * g.out_width, kk = g.kernel * g.kernel;
  const int64_t offsets = batch_offsets(g);
  T* w = scratch;
  T* keys = w + offsets * L;
  T* dw = keys + offsets * L;
  T* dprior = dw + offsets * L;
  for (int64_t bg = begin; bg < end; ++bg) {
    const int64_t grp = bg % g.groups, blk = bg / g.groups;
    const int64_t c0 = grp * g.m, mg = std::min(g.m, g.channels - c0);
    const T* key = t.key + bg * hw * L;
    const T* prior = t.prior + grp * kk;
    const T* value = t.value + (blk * g.channels + c0) * hw * L;
    const T* grad_out = t.grad_out + (blk * g.channels + c0) * howo * L;
    T* grad_key = t.grad_key + bg * hw * L;
    T* grad_value = t.grad_value + (blk * g.channels + c0) * hw * L;
    std::fill(grad_key, grad_key + hw * L, T(0));
    std::fill(grad_value, grad_value + mg * hw * L, T(0));
    std::fill(dprior, dprior + kk * L, T(0));
    for (int64_t i = 0; i < g.out_height; ++i) {
      for (int64_t j = 0; j < g.out_width; ++j) {
        const PixelWindow p = pixel_window(i, j, g);
        const int64_t pixel = (i * g.out_width + j) * L;
        const V q = S::load(t.query + bg * howo * L + pixel);
        V top, sum;
        const int64_t n = pixel_softmax<S, kPhi>(p, g, q, key, prior, w, keys, top, sum);
        const V inv_sum = T(1) / sum;
        for (int64_t o = 0; o < n; ++o) {
          S::store(w + o * L, S::load(w + o * L) * inv_sum);
          S::store(dw + o * L, V{});
        }
        const T* go = grad_out + pixel;
        int64_t ch = 0;
        for (; ch + 4 <= mg; ch += 4) {
          pixel_values_backward<S, 4>(p, g, w, dw, go + ch * howo * L, howo * L, value + ch * hw * L,
                                      grad_value + ch * hw * L);
        }
        switch (mg - ch) {
          case 3:
            pixel_values_backward<S, 3>(p, g, w, dw, go + ch * howo * L, howo * L, value + ch * hw * L,
                                        grad_value + ch * hw * L);
            break;
          case 2:
            pixel_values_backward<S, 2>(p, g, w, dw, go + ch * howo * L, howo * L, value + ch * hw * L,
                                        grad_value + ch * hw * L);
            break;
          case 1:
            pixel_values_backward<S, 1>(p, g, w, dw, go + ch * howo * L, howo * L, value + ch * hw * L,
                                        grad_value + ch * hw * L);
            break;
          default:
            break;
        }
        // Softmax backward: d logit = w * (dw - sum(w * dw)).
        V weighted{};
        for (int64_t o = 0; o < n; ++o) weighted += S::load(w + o * L) * S::load(dw + o * L);
        V gq{};
        int64_t o = 0;
        for (int64_t a = p.a0; a < p.a1; ++a) {
          T* gk_row = grad_key + ((p.y0 + a * g.dilation) * g.width + p.x0) * L;
          T* dp_row = dprior + a * g.kernel * L;
          for (int64_t b = p.b0; b < p.b1; ++b, ++o) {
            const V dl = S::load(w + o * L) * (S::load(dw + o * L) - weighted);
            V dq, dk;
            logit_grads<kPhi>(q, S::load(keys + o * L), dq, dk);
            gq += dl * dq;
            S::store(dp_row + b * L, S::load(dp_row + b * L) + dl);
            T* gk = gk_row + b * g.dilation * L;
            S::store(gk, S::load(gk) + dl * dk);
          }
        }
        S::store(t.grad_query + bg * howo * L + pixel, gq);
      }
    }
    T* gprior = t.grad_prior_parts + bg * kk;
    for (int64_t o = 0; o < kk; ++o) gprior[o] = S::sum(S::load(dprior + o * L));
  }
}

template <typename S>
LR_INLINE void batch_forward(const Geometry& g, int64_t phi, const Tensors<typename S::T>& t, int64_t begin,
                             int64_t end, typename S::T* scratch) {
  if (phi == kSqDiff) {
    batch_forward_rows<S, kSqDiff>(g, t, begin, end, scratch);
  } else if (phi == kAbsDiff) {
    batch_forward_rows<S, kAbsDiff>(g, t, begin, end, scratch);
  } else {
    batch_forward_rows<S, kProduct>(g, t, begin, end, scratch);
  }
}

template <typename S>
LR_INLINE void batch_backward(const Geometry& g, int64_t phi, const Tensors<typename S::T>& t, int64_t begin,
                              int64_t end, typename S::T* scratch) {
  if (phi == kSqDiff) {
    batch_backward_groups<S, kSqDiff>(g, t, begin, end, scratch);
  } else if (phi == kAbsDiff) {
    batch_backward_groups<S, kAbsDiff>(g, t, begin, end, scratch);
  } else {
    batch_backward_groups<S, kProduct>(g, t, begin, end, scratch);
  }
}

// One compiled copy of the kernels per instruction set, each with its own vector width.
enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

#define LR_KERNELS(NAME, ATTRIBUTE, BYTES)                                                                   \
  template <typename T, bool kUnitStride>                                                                    \
  ATTRIBUTE void forward_##NAME(const Geometry& g, int64_t phi, const Tensors<T>& t, int64_t begin,          \
                                int64_t end, T* scratch, int64_t* lanes) {                                   \
    forward_rows<Simd<T, BYTES / sizeof(T)>, kUnitStride>(g, phi, t, begin, end, scratch, lanes);            \
  }                                                                                                          \
  template <typename T, bool kUnitStride>                                                                    \
  ATTRIBUTE void backward_##NAME(const Geometry& g, int64_t phi, const Tensors<T>& t, int64_t begin,         \
                                 int64_t end, T* scratch, int64_t* lanes) {                                  \
    backward_groups<Simd<T, BYTES / sizeof(T)>, kUnitStride>(g, phi, t, begin, end, scratch, lanes);         \
  }                                                                                                          \
  template <typename T>                                                                                      \
  ATTRIBUTE void batch_forward_##NAME(const Geometry& g, int64_t phi, const Tensors<T>& t, int64_t begin,     \
                                      int64_t end, T* scratch) {                                             \
    batch_forward<Simd<T, BYTES / sizeof(T)>>(g, phi, t, begin, end, scratch);                               \
  }                                                                                                          \
  template <typename T>                                                                                      \
  ATTRIBUTE void batch_backward_##NAME(const Geometry& g, int64_t phi, const Tensors<T>& t, int64_t begin,    \
                                       int64_t end, T* scratch) {                                            \
    batch_backward<Simd<T, BYTES / sizeof(T)>>(g, phi, t, begin, end, scratch);                              \
  }                                                                                                          \
  template <typename T, bool kToPacked>                                                                      \
  ATTRIBUTE void lanes_copy_##NAME(T* unpacked, const Strides& st, T* packed, int64_t n, int64_t planes,     \
                                   int64_t height, int64_t width, int64_t begin, int64_t end) {              \
    lanes_copy<Simd<T, BYTES / sizeof(T)>, kToPacked>(unpacked, st, packed, n, planes, height, width, begin,  \
                                                      end);                                                  \
  }

LR_KERNELS(baseline, , 16)
#if LR_X86_DISPATCH
LR_KERNELS(avx2, __attribute__((target("arch=x86-64-v3"))), 32)
LR_KERNELS(avx512, __attribute__((target("arch=x86-64-v4"))), 64)
#endif
#undef LR_KERNELS

// The widest instruction set this CPU (and its OS) runs; LRROBUST_CPU_ISA=avx2 or =baseline asks for a narrower
// one, so that tests can cover every compiled copy on one machine.
Isa cpu_isa() {
  static const Isa supported = [] {
#if LR_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
    if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
    return Isa::kBaseline;
  }();
  const char* requested = std::getenv("LRROBUST_CPU_ISA");
  if (requested != nullptr && std::strcmp(requested, "baseline") == 0) return Isa::kBaseline;
  if (requested != nullptr && std::strcmp(requested, "avx2") == 0) return std::min(supported, Isa::kAvx2);
  return supported;
}

template <typename T>
using KernelFn = void (*)(const Geometry&, int64_t, const Tensors<T>&, int64_t, int64_t, T*, int64_t*);

// The kernel for this CPU and geometry. A chunk wider than the output row only wastes lanes, so narrow maps take
// the narrowest vector that still holds a whole row (measured: 7x7 maps run faster with AVX2 than with AVX-512).
template <typename T>
KernelFn<T> pick_kernel(bool backward, const Geometry& g) {
  const bool unit = g.stride == 1;
  const int64_t row_bytes = g.out_width * static_cast<int64_t>(sizeof(T));
  Isa isa = cpu_isa();
  if (isa == Isa::kAvx512 && row_bytes <= 32) isa = Isa::kAvx2;
  if (isa == Isa::kAvx2 && row_bytes <= 16) isa = Isa::kBaseline;
#if LR_X86_DISPATCH
  switch (isa) {
    case Isa::kAvx512:
      return backward ? (unit ? backward_avx512<T, true> : backward_avx512<T, false>)
                      : (unit ? forward_avx512<T, true> : forward_avx512<T, false>);
    case Isa::kAvx2:
      return backward ? (unit ? backward_avx2<T, true> : backward_avx2<T, false>)
                      : (unit ? forward_avx2<T, true> : forward_avx2<T, false>);
    default:
      break;
  }
#endif
  return backward ? (unit ? backward_baseline<T, true> : backward_baseline<T, false>)
                  : (unit ? forward_baseline<T, true> : forward_baseline<T, false>);
}

template <typename T>
using BatchFn = void (*)(const Geometry&, int64_t, const Tensors<T>&, int64_t, int64_t, T*);

// The batch-lane kernel for this CPU and batch, and its lanes: the widest vector, narrowed while half of it holds
// the whole batch.
template <typename T>
std::pair<BatchFn<T>, int64_t> pick_batch_kernel(bool backward, int64_t batch) {
  const int64_t batch_bytes = batch * static_cast<int64_t>(sizeof(T));
  Isa isa = cpu_isa();
  if (isa == Isa::kAvx512 && batch_bytes <= 32) isa = Isa::kAvx2;
  if (isa == Isa::kAvx2 && batch_bytes <= 16) isa = Isa::kBaseline;
#if LR_X86_DISPATCH
  switch (isa) {
    case Isa::kAvx512:
      return {backward ? batch_backward_avx512<T> : batch_forward_avx512<T>, int64_t{64} / int64_t{sizeof(T)}};
    case Isa::kAvx2:
      return {backward ? batch_backward_avx2<T> : batch_forward_avx2<T>, int64_t{32} / int64_t{sizeof(T)}};
    default:
      break;
  }
#endif
  return {backward ? batch_backward_baseline<T> : batch_forward_baseline<T>, int64_t{16} / int64_t{sizeof(T)}};
}

// Whether the batch-lane kernels serve this call: on maps narrower than kBatchLanesBelow outputs or strided
// layers, when their lanes are at least as full as the row chunks' (a tie goes to the batch lanes: no masks).
// Measured on AVX-512, one thread: 2-5x faster than row chunks at 14x14 and below, 1.1-2x at 28x28 and 32x32; at
// 56x56 at par with 32 images and 1.5x faster with 8 (BENCHMARKS.md). A row chunk holds min(Wo, L) outputs of its
// L lanes (a strided row gathers its loads: counted as half); the last batch block N mod L images of its L.
// LRROBUST_CPU_LANES=rows or =batch forces one.
constexpr int64_t kBatchLanesBelow = 64;

bool use_batch_lanes(const Geometry& g, int64_t element_size) {
  const char* forced = std::getenv("LRROBUST_CPU_LANES");
  if (forced != nullptr && std::strcmp(forced, "rows") == 0) return false;
  if (forced != nullptr && std::strcmp(forced, "batch") == 0) return true;
  if (g.out_width >= kBatchLanesBelow && g.stride == 1) return false;
  const int64_t vector_bytes = cpu_isa() == Isa::kAvx512 ? 64 : (cpu_isa() == Isa::kAvx2 ? 32 : 16);
  const int64_t lanes = vector_bytes / element_size;
  const auto filled = [](int64_t count, int64_t width) {
    return static_cast<double>(count) / static_cast<double>(((count + width - 1) / width) * width);
  };
  int64_t row_lanes = lanes;  // pick_kernel's narrowing of the row chunk
  while (row_lanes * element_size > 16 && g.out_width * element_size <= row_lanes * element_size / 2) row_lanes /= 2;
  const double rows = filled(g.out_width, row_lanes) * (g.stride == 1 ? 1.0 : 0.5);
  int64_t batch_lanes = lanes;
  while (batch_lanes * element_size > 16 && g.batch * element_size <= batch_lanes * element_size / 2) batch_lanes /= 2;
  return filled(g.batch, batch_lanes) >= rows;
}

Geometry geometry_of(const LocalRelationShape& s) {
  return Geometry{s.n,          s.groups,        s.channels, s.per_group, s.height,   s.width,
                  s.out_height, s.out_width,     s.kernel_size, s.stride,   s.dilation, (s.kernel_size - 1) / 2};
}

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// Tasks per parallel chunk such that a chunk does at least about 2^16 channel-offset steps: a small problem
// runs on the calling thread, where a parallel region would cost more than it saves.
int64_t grain_size(const Geometry& g, int64_t pixels_per_task) {
  // In double: for huge maps and windows the product could exceed int64.
  const double work = static_cast<double>(pixels_per_task) * static_cast<double>(max_rows(g)) *
                      static_cast<double>(std::min(g.kernel, g.width)) * static_cast<double>(g.m + 4);
  return work >= 65536.0 ? 1 : std::max<int64_t>(1, static_cast<int64_t>(65536.0 / std::max(1.0, work)));
}

// Per-thread scratch from the tensor allocator (so memory statistics see it); row t belongs to thread t. The
// threads of at::parallel_for have ids below get_num_threads(); called inside a parallel region, it runs inline
// on the calling thread, whose id may be larger.
at::Tensor thread_scratch(int64_t per_thread, const at::TensorOptions& options) {
  const int64_t slots = std::max<int64_t>(at::get_num_threads(), at::get_thread_num() + 1);
  return at::empty({slots, per_thread}, options);
}

// Runs the forward or backward kernel over `tasks` parallel tasks.
template <typename T>
void run_kernel(bool backward, const Geometry& g, int64_t phi, const Tensors<T>& t, int64_t tasks, int64_t grain,
                const at::TensorOptions& options) {
  const at::Tensor scratch = thread_scratch(scratch_size(g, backward), options);
  const at::Tensor lane_scratch = thread_scratch(lane_scratch_size(g), options.dtype(at::kLong));
  const KernelFn<T> kernel = pick_kernel<T>(backward, g);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    kernel(g, phi, t, begin, end, scratch.data_ptr<T>() + thread * scratch.size(1),
           lane_scratch.data_ptr<int64_t>() + thread * lane_scratch.size(1));
  });
}

// Copies between (N, P, H, W) tensors of any strides (NCHW, channels-last, channel slices) and their batch-lane
// packing (NB, P, H, W, L): lane l of block b is image b * L + l; packing zeroes the lanes past N. Each task copies
// one (block, plane) in tiles of kTile pixels of a row, whose L lanes stay in the L1 cache (ATen's transposing copy
// runs at a fraction of the memory's speed here).
Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename T>
using CopyFn = void (*)(T*, const Strides&, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);

// `to_packed`: unpacked -> packed; otherwise packed -> unpacked (images < N only). The copy of the ISA whose vector
// holds `lanes` numbers, so its transposes are one register wide.
template <typename T, bool to_packed>
void copy_lanes(T* unpacked, const Strides& st, T* packed, int64_t n, int64_t planes, int64_t height, int64_t width,
                int64_t lanes) {
  CopyFn<T> copy = to_packed ? lanes_copy_baseline<T, true> : lanes_copy_baseline<T, false>;
#if LR_X86_DISPATCH
  if (lanes * static_cast<int64_t>(sizeof(T)) == 64) copy = to_packed ? lanes_copy_avx512<T, true> : lanes_copy_avx512<T, false>;
  if (lanes * static_cast<int64_t>(sizeof(T)) == 32) copy = to_packed ? lanes_copy_avx2<T, true> : lanes_copy_avx2<T, false>;
#endif
  const int64_t blocks = (n + lanes - 1) / lanes, hw = height * width;
  at::parallel_for(0, blocks * planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hw * lanes)),
                   [&](int64_t begin, int64_t end) { copy(unpacked, st, packed, n, planes, height, width, begin, end); });
}

at::Tensor pack_lanes(const at::Tensor& t, int64_t lanes) {
  const int64_t n = t.size(0), blocks = (n + lanes - 1) / lanes;
  at::Tensor packed = at::empty({blocks, t.size(1), t.size(2), t.size(3), lanes}, t.options());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "pack_lanes", [&] {
    copy_lanes<scalar_t, true>(const_cast<scalar_t*>(t.data_ptr<scalar_t>()), strides_of(t), packed.data_ptr<scalar_t>(),
                               n, t.size(1), t.size(2), t.size(3), lanes);
  });
  return packed;
}

void unpack_lanes(const at::Tensor& packed, at::Tensor& t) {
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "unpack_lanes", [&] {
    copy_lanes<scalar_t, false>(t.data_ptr<scalar_t>(), strides_of(t), packed.data_ptr<scalar_t>(), t.size(0),
                                t.size(1), t.size(2), t.size(3), packed.size(4));
  });
}

at::Tensor empty_in_format_of(at::IntArrayRef sizes, const at::Tensor& like) {
  return at::empty(sizes, like.options().memory_format(like.suggest_memory_format()));
}

// The batch-lane forward: out and lse (allocated by the caller, any layout) for these inputs.
template <typename T>
void batch_lanes_forward(const Geometry& g, int64_t phi, const at::Tensor& query, const at::Tensor& key,
                         const at::Tensor& value, const at::Tensor& geo_prior, at::Tensor& out, at::Tensor& lse) {
  const auto [kernel, lanes] = pick_batch_kernel<T>(/*backward=*/false, g.batch);
  const at::Tensor q = pack_lanes(query, lanes), k = pack_lanes(key, lanes), v = pack_lanes(value, lanes);
  const at::Tensor p = geo_prior.contiguous();
  const int64_t blocks = q.size(0);
  at::Tensor out_packed = at::empty({blocks, g.channels, g.out_height, g.out_width, lanes}, value.options());
  at::Tensor lse_packed = at::empty({blocks, g.groups, g.out_height, g.out_width, lanes}, value.options());
  Tensors<T> t{};
  t.query = q.data_ptr<T>();
  t.key = k.data_ptr<T>();
  t.value = v.data_ptr<T>();
  t.prior = p.data_ptr<T>();
  t.out = out_packed.data_ptr<T>();
  t.lse = lse_packed.data_ptr<T>();
  const at::Tensor scratch = thread_scratch(batch_scratch_size(g, false), value.options());
  at::parallel_for(0, blocks * g.groups * g.out_height, grain_size(g, g.out_width * lanes), [&](int64_t begin, int64_t end) {
    kernel(g, phi, t, begin, end, scratch.data_ptr<T>() + at::get_thread_num() * scratch.size(1));
  });
  unpack_lanes(out_packed, out);
  unpack_lanes(lse_packed, lse);
}

// The batch-lane backward: the four gradients (allocated by the caller, any layout; grad_prior (G, K, K)).
template <typename T>
void batch_lanes_backward(const Geometry& g, int64_t phi, const at::Tensor& grad_out, const at::Tensor& query,
                          const at::Tensor& key, const at::Tensor& value, const at::Tensor& geo_prior,
                          at::Tensor& grad_query, at::Tensor& grad_key, at::Tensor& grad_value, at::Tensor& grad_prior) {
  const auto [kernel, lanes] = pick_batch_kernel<T>(/*backward=*/true, g.batch);
  const at::Tensor go = pack_lanes(grad_out, lanes), q = pack_lanes(query, lanes), k = pack_lanes(key, lanes),
                   v = pack_lanes(value, lanes), p = geo_prior.contiguous();
  const int64_t blocks = q.size(0);
  at::Tensor gq = at::empty_like(q), gk = at::empty_like(k), gv = at::empty_like(v);
  at::Tensor parts = at::empty({blocks * g.groups, g.kernel, g.kernel}, value.options());
  Tensors<T> t{};
  t.grad_out = go.data_ptr<T>();
  t.query = q.data_ptr<T>();
  t.key = k.data_ptr<T>();
  t.value = v.data_ptr<T>();
  t.prior = p.data_ptr<T>();
  t.grad_query = gq.data_ptr<T>();
  t.grad_key = gk.data_ptr<T>();
  t.grad_value = gv.data_ptr<T>();
  t.grad_prior_parts = parts.data_ptr<T>();
  const at::Tensor scratch = thread_scratch(batch_scratch_size(g, true), value.options());
  at::parallel_for(0, blocks * g.groups, 1, [&](int64_t begin, int64_t end) {
    kernel(g, phi, t, begin, end, scratch.data_ptr<T>() + at::get_thread_num() * scratch.size(1));
  });
  unpack_lanes(gq, grad_query);
  unpack_lanes(gk, grad_key);
  unpack_lanes(gv, grad_value);
  grad_prior.copy_(parts.view({blocks, g.groups, g.kernel, g.kernel}).sum(0));
}

// Results take the memory format of the input they mirror (out and grad_value: value's, grad_query: query's,
// grad_key: key's), as the CUDA kernels and the fake kernels do: a channels-last network stays channels-last.
// The CPU kernel computes in NCHW; a channels-last result is one copy here.
at::Tensor in_format_of(const at::Tensor& t, const at::Tensor& like) {
  return t.contiguous(like.suggest_memory_format());
}

std::tuple<at::Tensor, at::Tensor> local_relation_forward_cpu(const at::Tensor& query, const at::Tensor& key,
                                                              const at::Tensor& value, const at::Tensor& geo_prior,
                                                              int64_t kernel_size, int64_t stride, int64_t dilation,
                                                              int64_t composability) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  if (is_reduced_float(value)) {  // float16 / bfloat16: computed in float32, returned in the input dtype
    auto [out, lse] = local_relation_forward_cpu(query.to(at::kFloat), key.to(at::kFloat), value.to(at::kFloat),
                                                 geo_prior.to(at::kFloat), kernel_size, stride, dilation,
                                                 composability);
    return {out.to(value.scalar_type()), lse};
  }
  at::Tensor out = at::empty({shape.n, shape.channels, shape.out_height, shape.out_width}, value.options());
  at::Tensor lse = at::empty({shape.n, shape.groups, shape.out_height, shape.out_width}, value.options());
  if (out.numel() == 0) return {in_format_of(out, value), lse};
  const Geometry g = geometry_of(shape);
  if (use_batch_lanes(g, value.element_size())) {
    at::Tensor out_nchw = empty_in_format_of(out.sizes(), value);
    AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_forward_cpu", [&] {
      batch_lanes_forward<scalar_t>(g, composability, query, key, value, geo_prior, out_nchw, lse);
    });
    return {out_nchw, lse};
  }
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous(), p = geo_prior.contiguous();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_forward_cpu", [&] {
    Tensors<scalar_t> t{};
    t.query = q.data_ptr<scalar_t>();
    t.key = k.data_ptr<scalar_t>();
    t.value = v.data_ptr<scalar_t>();
    t.prior = p.data_ptr<scalar_t>();
    t.out = out.data_ptr<scalar_t>();
    t.lse = lse.data_ptr<scalar_t>();
    run_kernel(/*backward=*/false, g, composability, t, shape.n * shape.groups * shape.out_height,
               grain_size(g, shape.out_width), value.options());
  });
  return {in_format_of(out, value), lse};
}

// The CPU backward recomputes the weights of each chunk of outputs in one pass over its window (it keeps them in
// its scratch), so it checks the saved out and lse of the forward but does not read them.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> local_relation_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, const at::Tensor& out, const at::Tensor& lse, int64_t kernel_size, int64_t stride,
    int64_t dilation, int64_t composability) {
  const LocalRelationShape shape =
      check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({shape.n, shape.channels, shape.out_height, shape.out_width}),
              "local_relation_backward: grad_out ", grad_out.sizes(), " must be the output's shape (", shape.n, ", ",
              shape.channels, ", ", shape.out_height, ", ", shape.out_width, ")");
  TORCH_CHECK(grad_out.device() == value.device(), "local_relation_backward: grad_out must be on the inputs' device");
  check_saved_forward(out, lse, value, shape);
  if (is_reduced_float(value)) {
    const at::ScalarType dtype = value.scalar_type();
    auto grads = local_relation_backward_cpu(grad_out.to(at::kFloat), query.to(at::kFloat), key.to(at::kFloat),
                                             value.to(at::kFloat), geo_prior.to(at::kFloat), out.to(at::kFloat), lse,
                                             kernel_size, stride, dilation, composability);
    return {std::get<0>(grads).to(dtype), std::get<1>(grads).to(dtype), std::get<2>(grads).to(dtype),
            std::get<3>(grads).to(dtype)};
  }
  at::Tensor grad_query = at::empty(query.sizes(), query.options());
  at::Tensor grad_key = at::empty(key.sizes(), key.options());
  at::Tensor grad_value = at::empty(value.sizes(), value.options());
  if (query.numel() == 0 || grad_value.numel() == 0) {
    return {in_format_of(grad_query.zero_(), query), in_format_of(grad_key.zero_(), key),
            in_format_of(grad_value.zero_(), value), at::zeros_like(geo_prior)};
  }
  const Geometry g = geometry_of(shape);
  if (use_batch_lanes(g, value.element_size())) {
    at::Tensor gq = empty_in_format_of(query.sizes(), query), gk = empty_in_format_of(key.sizes(), key),
               gv = empty_in_format_of(value.sizes(), value), gp = at::empty(geo_prior.sizes(), geo_prior.options());
    AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_backward_cpu", [&] {
      batch_lanes_backward<scalar_t>(g, composability, grad_out.to(value.scalar_type()), query, key, value, geo_prior,
                                     gq, gk, gv, gp);
    });
    return {gq, gk, gv, gp};
  }
  const at::Tensor go = grad_out.to(value.scalar_type()).contiguous(), q = query.contiguous(), k = key.contiguous(),
                   v = value.contiguous(), p = geo_prior.contiguous();
  at::Tensor grad_prior_parts = at::empty({shape.n * shape.groups, kernel_size, kernel_size}, value.options());
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "local_relation_backward_cpu", [&] {
    Tensors<scalar_t> t{};
    t.grad_out = go.data_ptr<scalar_t>();
    t.query = q.data_ptr<scalar_t>();
    t.key = k.data_ptr<scalar_t>();
    t.value = v.data_ptr<scalar_t>();
    t.prior = p.data_ptr<scalar_t>();
    t.grad_query = grad_query.data_ptr<scalar_t>();
    t.grad_key = grad_key.data_ptr<scalar_t>();
    t.grad_value = grad_value.data_ptr<scalar_t>();
    t.grad_prior_parts = grad_prior_parts.data_ptr<scalar_t>();
    run_kernel(/*backward=*/true, g, composability, t, shape.n * shape.groups,
               grain_size(g, shape.out_height * shape.out_width), value.options());
  });
  at::Tensor grad_prior = grad_prior_parts.view({shape.n, shape.groups, kernel_size, kernel_size}).sum(0);
  return {in_format_of(grad_query, query), in_format_of(grad_key, key), in_format_of(grad_value, value), grad_prior};
}

}  // namespace
}  // namespace lrrobust

TORCH_LIBRARY_IMPL(lrrobust, CPU, m) {
  m.impl("local_relation_forward", &lrrobust::local_relation_forward_cpu);
  m.impl("local_relation_backward", &lrrobust::local_relation_backward_cpu);
}
