// CUDA kernels of the local relation op (Hu et al., "Local Relation Networks for Image Recognition",
// ICCV 2019, Sec. 4, Eq. 2-5). Semantics as lrrobust/ops/reference.py:
//   logit(n,g,i,j,a,b) = Phi(q[n,g,i,j], k[n,g,p]) + geo[g,a,b],  p = (i*s + (a-r)*d, j*s + (b-r)*d),
//   w = softmax of the logits over the offsets whose pixel p lies in the image,
//   out[n,c,i,j] = sum_ab w(n, c/m, i, j, a, b) * value[n,c,p].
// Non-finite inputs propagate as in the reference (IEEE, as torch.softmax): a window whose logits are all -inf,
// or hold a +inf or NaN, has NaN weights (-inf - max = NaN, exp(inf - inf) = NaN, the maximum skips NaN but its
// exp does not), and 0 * inf = NaN in the weighted sums.
//
// Three passes, all recomputing the weights (no K*K buffer):
//   forward            logits, softmax and aggregation fused, and the log-sum-exp of the logits (base 2) per
//                      output, kept for the backward. Fast path (stride 1, dilation 1, tile fits):
//                      lr_forward_rows_kernel, kRowsPerThread output rows of one column per thread, so a staged
//                      key and value pixel is read once for every output it serves, with a one-pass (online)
//                      softmax in base 2; otherwise lr_forward_kernel, one thread per output pixel with a max
//                      pass. The block stages the haloed key tile, the haloed value tile (kChannelChunk
//                      channels interleaved, one vector load per pixel) and geo[g] in shared memory.
//   statistics         backward, per output pixel (lr_stats_rows_kernel on the fast path, else lr_stats_kernel):
//                      D = sum_c grad_out_c * out_c from the saved output (FlashAttention's "delta"; equal to
//                      sum_ab w*dw with dw_ab = sum_c grad_out_c * v_c(p_ab)), and grad_query = sum_ab
//                      w*(dw_ab - D)*dPhi/dq with the weights w = 2^(l*log2(e) - lse) from the saved log-sum-exp:
//                      no maximum, no normaliser, one term per offset.
//   lr_gather_kernel   backward, per input pixel y: over the inverse neighbourhood (offset ab and the output
//                      i with p_ab(i) = y) grad_value_c(y) = sum w*grad_out_c(i) and
//                      grad_key(y) = sum w*(dw - D)*dPhi/dk; the offsets go in chunks of 32 whose per-thread
//                      w*(dw - D) a warp sums with one reduce-scatter, then the block in shared memory, into a
//                      partial-sum buffer reduced by lr_geo_reduce_kernel: no atomics, every sum in a fixed order.
// Each pass has a shared-memory variant (TILED) and a variant reading global memory directly, used when
// the haloed tile would not fit (large K or dilation); the index math is the same. Tensors are read through
// their layouts (LrLayout: contiguous, channels-last or channel slices). Accumulation is in at::opmath_type
// (float for half/bfloat16/float, double for double). Phi is evaluated exactly, also for sqdiff: -(q-k)^2 + g
// is a subtract and a fused multiply-add, as cheap as 2qk - k^2 + g and free of its cancellation. The same
// source runs on the CPU in emu/ (see emu/check_emulated.py); csrc/cuda/sass_count.py counts the machine
// instructions per window offset of each pass (BENCHMARKS.md).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "lr_compat.cuh"
#include "lr_plan.cuh"

namespace lrrobust {
namespace cuda {

LR_HD int lr_min(int a, int b) { return a < b ? a : b; }
LR_HD int lr_max(int a, int b) { return a > b ? a : b; }
// Offset of element (n, c, pixel) of a tensor with layout l (see LrLayout), in 64 bits.
LR_HD int64_t lr_at(const LrLayout& l, int n, int c, int64_t pixel) { return n * l.n + c * l.c + pixel * l.pix; }

// Division rounding towards -inf / +inf, for any sign of a and b > 0.
LR_HD int lr_floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
LR_HD int lr_ceil_div(int a, int b) { return -lr_floor_div(-a, b); }

// Offsets a in [lo, hi] of the window of output row i whose pixel i*s + (a-r)*d lies in [0, size).
// The centre offset a = r is always inside (i*s < size since i < ceil(size/s)).
LR_HD void lr_window_range(int i, int size, int K, int r, int s, int d, int& lo, int& hi) {
  const int y = i * s;
  lo = lr_max(0, r - y / d);
  hi = lr_min(K - 1, r + (size - 1 - y) / d);
}

// Inverse neighbourhood: the output index i with i*s + (a-r)*d = y, walked along the offsets a = 0, 1, ...
// without a division per offset. t = y - (a-r)*d is kept as q*s + rem with 0 <= rem < s; an output exists
// when rem == 0 and 0 <= q < out_size (then i = q). Each step subtracts d = dq*s + dr.
struct LrInverse {
  int q, rem;
};
LR_HD LrInverse lr_inverse_at(int y, int a, int r, int s, int d) {
  const int t = y - (a - r) * d;
  LrInverse v;
  v.q = lr_floor_div(t, s);
  v.rem = t - v.q * s;
  return v;
}
LR_HD void lr_inverse_step(LrInverse& v, int s, int dq, int dr) {
  v.q -= dq;
  v.rem -= dr;
  if (v.rem < 0) {
    v.rem += s;
    v.q -= 1;
  }
}
LR_HD bool lr_inverse_valid(const LrInverse& v, int out_size) { return v.rem == 0 && v.q >= 0 && v.q < out_size; }

// Appearance composability Phi(q, k) (Eq. 3-5) and its derivatives. KIND >= 0 fixes the kind at compile
// time; KIND = -1 reads it from `kind` (the global-memory kernels, which are not the fast path).
template <int KIND>
LR_HD int lr_kind(int kind) {
  return KIND >= 0 ? KIND : kind;
}
// sign(x), 0 at 0 and for NaN (an ordered compare, then the sign bit copied onto 1).
template <typename T>
LR_HD T lr_sign(T x) {
  return (x < T(0) || x > T(0)) ? lr_copysign(T(1), x) : T(0);
}
template <int KIND, typename T>
LR_HD T lr_phi(T q, T k, int kind) {
  const int kd = lr_kind<KIND>(kind);
  const T diff = q - k;
  if (kd == 0) return -diff * diff;         // Eq. 3: -(q-k)^2
  if (kd == 1) return -lr_abs(diff);        // Eq. 4: -|q-k|
  return q * k;                             // Eq. 5: q*k
}
template <int KIND, typename T>
LR_HD T lr_dphi_dq(T q, T k, int kind) {
  const int kd = lr_kind<KIND>(kind);
  if (kd == 0) return T(-2) * (q - k);
  if (kd == 1) return -lr_sign(q - k);  // d|x|/dx = 0 at x = 0, as torch
  return k;
}
template <int KIND, typename T>
LR_HD T lr_dphi_dk(T q, T k, int kind) {
  const int kd = lr_kind<KIND>(kind);
  if (kd == 0) return T(2) * (q - k);
  if (kd == 1) return lr_sign(q - k);
  return q;
}

// log2(e): the kernels take their softmax in base 2 (exp(l) = 2^(l*log2(e))), and keep the log-sum-exp in base 2.
template <typename T>
constexpr T kLog2eOf = static_cast<T>(1.4426950408889634);

// Element e of a staged tile (TILED) or of a global plane whose elements are `stride` apart, in type A: the
// one-output-per-thread kernels read through this in both variants.
template <bool TILED, typename A, typename Tile, typename Plane>
LR_DEV A lr_tile_or_plane(const Tile* tile, const Plane* __restrict__ plane, int e, int64_t stride) {
  if constexpr (TILED) {
    return static_cast<A>(tile[e]);
  } else {
    return static_cast<A>(plane[int64_t(e) * stride]);
  }
}

// Reduce-scatter over the 32 lanes of a warp: lane e returns the sum over all lanes of v[e] (31 shuffles for 32
// sums, against 5 per sum of a butterfly). At the step with mask M a lane keeps the half of its first 2M entries
// its bit M selects and adds the partner's copy of that half; the order of every sum is fixed.
template <int M, typename T>
LR_DEV void lr_reduce_scatter_step(T (&v)[32], int lane) {
  const bool upper = (lane & M) != 0;
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const T send = upper ? v[i] : v[i + M];
    const T keep = upper ? v[i + M] : v[i];
    v[i] = keep + lr_shfl_xor(send, M);
  }
}
template <typename T>
LR_DEV T lr_warp_reduce_scatter(T (&v)[32], int lane) {
  lr_reduce_scatter_step<16>(v, lane);
  lr_reduce_scatter_step<8>(v, lane);
  lr_reduce_scatter_step<4>(v, lane);
  lr_reduce_scatter_step<2>(v, lane);
  lr_reduce_scatter_step<1>(v, lane);
  return v[0];
}

// Copies the rows x cols window at (y0, x0) of a height x width plane into dst (row pitch `pitch`); pixels
// outside the plane read as 0 (they are never used: the kernels only visit in-image offsets). All threads
// call it. D is T, or the accumulation type (a tile widened once when staged, not at every read).
template <typename D, typename T>
LR_DEV void lr_stage_plane(D* dst, const T* __restrict__ src, int64_t pix_stride, int y0, int x0, int rows, int cols,
                           int pitch, int height, int width) {
  for (int ry = threadIdx.y; ry < rows; ry += blockDim.y) {
    const int y = y0 + ry;
    const bool row_in = y >= 0 && y < height;
    for (int rx = threadIdx.x; rx < cols; rx += blockDim.x) {
      const int x = x0 + rx;
      const bool in = row_in && x >= 0 && x < width;
      dst[ry * pitch + rx] = in ? static_cast<D>(src[(int64_t(y) * width + x) * pix_stride]) : static_cast<D>(0.0f);
    }
  }
}

// kChannelChunk channels of one pixel, interleaved in shared memory so that one pixel is one (or a few)
// 16-byte loads. Channels past the chunk's count are 0, so the kernels can use all kChannelChunk.
template <typename T>
struct alignas(16) LrVec {
  using Scalar = T;
  T v[kChannelChunk];
};

// The kChannelChunk channels of one staged pixel in the accumulation type. bfloat16 is the top half of a float:
// each 32-bit word of the vector holds two channels, widened by one shift and one mask.
template <typename T, typename A>
LR_DEV void lr_widen(const LrVec<T> vec, A (&v)[kChannelChunk]) {
#pragma unroll
  for (int c = 0; c < kChannelChunk; ++c) v[c] = static_cast<A>(vec.v[c]);
}
LR_DEV void lr_widen(const LrVec<c10::BFloat16> vec, float (&v)[kChannelChunk]) {
  uint32_t words[kChannelChunk / 2];
  memcpy(words, &vec, sizeof(words));
#pragma unroll
  for (int w = 0; w < kChannelChunk / 2; ++w) {
    v[2 * w] = lr_bits_to_float(words[w] << 16);
    v[2 * w + 1] = lr_bits_to_float(words[w] & 0xffff0000u);
  }
}

// Like lr_stage_plane, for the channels [0, mc) of planes src + c * c_stride, interleaved.
template <typename D>
LR_DEV LrVec<D>& lr_vec_of(LrVec<D>& e) {
  return e;
}
template <typename E, typename T>
LR_DEV void lr_stage_channels(E* dst, const T* __restrict__ src, int64_t c_stride, int64_t pix_stride, int mc,
                              int y0, int x0, int rows, int cols, int pitch, int height, int width) {
  using D = typename std::remove_reference_t<decltype(lr_vec_of(*dst))>::Scalar;
  for (int ry = threadIdx.y; ry < rows; ry += blockDim.y) {
    const int y = y0 + ry;
    const bool row_in = y >= 0 && y < height;
    for (int rx = threadIdx.x; rx < cols; rx += blockDim.x) {
      const int x = x0 + rx;
      const bool in = row_in && x >= 0 && x < width;
      const T* p = src + (in ? (int64_t(y) * width + x) * pix_stride : 0);
      LrVec<D> e;
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) {
        e.v[c] = (in && c < mc) ? static_cast<D>(p[c * c_stride]) : static_cast<D>(0.0f);
      }
      lr_vec_of(dst[ry * pitch + rx]) = e;
    }
  }
}

// Per-output statistics of the gather pass, one 16-byte (float) load per output: the query, the
// log-sum-exp of its logits and D = sum_ab w*dw.
template <typename A>
struct alignas(16) LrStats {
  A q, lse, dsum, pad;
};

// One output pixel of the gather's tile: its statistics and kChannelChunk grad_out channels side by side, so one
// address serves both (three 16-byte loads in float).
template <typename A>
struct alignas(16) LrGatherPixel {
  LrStats<A> st;
  LrVec<A> go;
};
template <typename A>
LR_DEV LrVec<A>& lr_vec_of(LrGatherPixel<A>& e) {
  return e.go;
}

template <typename T, typename A>
LR_DEV void lr_stage_stats(LrGatherPixel<A>* dst, const T* __restrict__ q, int64_t q_pix, const A* __restrict__ lse,
                           const A* __restrict__ dsum, int y0, int x0, int rows, int cols, int height, int width) {
  for (int ry = threadIdx.y; ry < rows; ry += blockDim.y) {
    const int y = y0 + ry;
    const bool row_in = y >= 0 && y < height;
    for (int rx = threadIdx.x; rx < cols; rx += blockDim.x) {
      const int x = x0 + rx;
      LrStats<A> e;
      e.q = e.lse = e.dsum = e.pad = A(0);
      if (row_in && x >= 0 && x < width) {
        e.q = static_cast<A>(q[(int64_t(y) * width + x) * q_pix]);
        e.lse = lse[y * width + x];
        e.dsum = dsum[y * width + x];
      }
      dst[ry * cols + rx].st = e;
    }
  }
}

// Block index -> (tile, group, image or batch chunk): blocks are numbered tile-fastest.
struct LrBlock {
  int tile_i, tile_j, group, outer;
};
LR_DEV LrBlock lr_block(const LrTile& t, int groups) {
  const int64_t blk = blockIdx.x;
  const int tiles = t.tiles_x * t.tiles_y;
  const int tile = static_cast<int>(blk % tiles);
  LrBlock b;
  b.tile_i = tile / t.tiles_x;
  b.tile_j = tile % t.tiles_x;
  b.group = static_cast<int>((blk / tiles) % groups);
  b.outer = static_cast<int>(blk / tiles / groups);
  return b;
}

// The input region a tile of the window passes reads: the haloed span of its output pixels, clipped to the
// map (rows [y0, y0 + rows), cols [x0, x0 + cols); at most t.rh x t.rw, see lr_plan_window_pass).
struct LrRegion {
  int y0, x0, rows, cols;
};
LR_DEV LrRegion lr_window_region(const LrGeom& g, const LrTile& t, const LrBlock& blk) {
  const int rd = g.radius * g.dilation;
  const int tile_rows = t.th * t.rows_per_thread;
  const int i0 = blk.tile_i * tile_rows, j0 = blk.tile_j * t.tw;
  const int i1 = lr_min(g.out_h, i0 + tile_rows) - 1, j1 = lr_min(g.out_w, j0 + t.tw) - 1;
  LrRegion reg;
  reg.y0 = lr_max(0, i0 * g.stride - rd);
  reg.x0 = lr_max(0, j0 * g.stride - rd);
  reg.rows = lr_min(g.height - 1, i1 * g.stride + rd) - reg.y0 + 1;
  reg.cols = lr_min(g.width - 1, j1 * g.stride + rd) - reg.x0 + 1;
  return reg;
}

// The window of one output pixel: offsets [a_lo, a_hi] x [b_lo, b_hi] are in the image, and the element of
// offset (a, b) sits at plane[centre + (a - r) * row_step + (b - r) * d] in the staged tile (TILED: the region
// reg with row pitch t.rw) or in the global plane.
struct LrWindow {
  int a_lo, a_hi, b_lo, b_hi, centre, row_step;
};
template <bool TILED>
LR_DEV LrWindow lr_window(const LrGeom& g, const LrTile& t, const LrRegion& reg, int i, int j) {
  LrWindow w;
  lr_window_range(i, g.height, g.ksize, g.radius, g.stride, g.dilation, w.a_lo, w.a_hi);
  lr_window_range(j, g.width, g.ksize, g.radius, g.stride, g.dilation, w.b_lo, w.b_hi);
  if constexpr (TILED) {
    w.centre = (i * g.stride - reg.y0) * t.rw + j * g.stride - reg.x0;
    w.row_step = g.dilation * t.rw;
  } else {
    w.centre = i * g.stride * g.width + j * g.stride;
    w.row_step = g.dilation * g.width;
  }
  return w;
}

// Forward: out[n, c, i, j] for the channels of one group and the log-sum-exp of its logits (base 2), one thread
// per output pixel.
template <typename scalar_t, int KIND, bool TILED>
LR_KERNEL void lr_forward_kernel(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key,
                                 const scalar_t* __restrict__ value, const scalar_t* __restrict__ geo,
                                 scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ lse,
                                 const LrGeom g, const LrTile t) {
  using acc_t = at::opmath_type<scalar_t>;
  LR_DYNAMIC_SMEM(smem);
  const int K = g.ksize, KK = K * K, r = g.radius, d = g.dilation;
  const LrBlock blk = lr_block(t, g.groups);
  const int grp = blk.group, n = blk.outer;
  const int i = blk.tile_i * t.th + static_cast<int>(threadIdx.y);
  const int j = blk.tile_j * t.tw + static_cast<int>(threadIdx.x);
  const bool active = i < g.out_h && j < g.out_w;
  const int c_begin = grp * g.per_group;
  const int m_g = lr_min(g.per_group, g.channels - c_begin);
  const scalar_t* key_plane = key + lr_at(g.lay.key, n, grp, 0);
  const scalar_t* value_plane = value + lr_at(g.lay.value, n, c_begin, 0);
  const scalar_t* geo_g = geo + int64_t(grp) * KK;

  // Shared memory (TILED): geo[g], the key tile, the interleaved value tile of one channel chunk.
  acc_t* s_geo = reinterpret_cast<acc_t*>(smem);
  scalar_t* s_key = reinterpret_cast<scalar_t*>(smem + t.off_a);
  LrVec<scalar_t>* s_value = reinterpret_cast<LrVec<scalar_t>*>(smem + t.off_b);
  const LrRegion reg = lr_window_region(g, t, blk);
  if constexpr (TILED) {
    const int tid = static_cast<int>(threadIdx.y) * t.tw + static_cast<int>(threadIdx.x);
    for (int e = tid; e < KK; e += t.tw * t.th) s_geo[e] = static_cast<acc_t>(geo_g[e]);
    lr_stage_plane(s_key, key_plane, g.lay.key.pix, reg.y0, reg.x0, reg.rows, reg.cols, t.rw, g.height, g.width);
  }
  auto geo_at = [&](int ab) { return lr_tile_or_plane<TILED, acc_t>(s_geo, geo_g, ab, 1); };
  auto key_at = [&](int e) { return lr_tile_or_plane<TILED, acc_t>(s_key, key_plane, e, g.lay.key.pix); };
  const LrWindow win = lr_window<TILED>(g, t, reg, active ? i : 0, active ? j : 0);
  acc_t q = 0;
  acc_t mx = static_cast<acc_t>(-INFINITY);
  if (active) q = static_cast<acc_t>(query[lr_at(g.lay.query, n, grp, int64_t(i) * g.out_w + j)]);

  for (int cc = 0; cc < m_g; cc += kChannelChunk) {
    const int mc = lr_min(kChannelChunk, m_g - cc);
    const scalar_t* vp = value_plane + cc * g.lay.value.c;
    if constexpr (TILED) {
      if (cc > 0) LR_SYNC();  // every thread is done with the previous chunk's tile
      lr_stage_channels(s_value, vp, g.lay.value.c, g.lay.value.pix, mc, reg.y0, reg.x0, reg.rows, reg.cols, t.rw,
                        g.height, g.width);
      LR_SYNC();
    }
    auto values_at = [&](int off) -> LrVec<scalar_t> {
      if constexpr (TILED) {
        return s_value[off];
      } else {
        LrVec<scalar_t> e;
#pragma unroll
        for (int c = 0; c < kChannelChunk; ++c) {
          e.v[c] = c < mc ? vp[c * g.lay.value.c + int64_t(off) * g.lay.value.pix] : static_cast<scalar_t>(0.0f);
        }
        return e;
      }
    };
    if (active) {
      if (cc == 0) {  // the maximum logit, for a stable softmax
        for (int a = win.a_lo; a <= win.a_hi; ++a) {
          const int row = win.centre + (a - r) * win.row_step;
          for (int b = win.b_lo; b <= win.b_hi; ++b) {
            const acc_t l = lr_phi<KIND>(q, key_at(row + (b - r) * d), g.kind) + geo_at(a * K + b);
            mx = l > mx ? l : mx;
          }
        }
      }
      acc_t acc[kChannelChunk];
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) acc[c] = 0;
      acc_t z = 0;
      for (int a = win.a_lo; a <= win.a_hi; ++a) {
        const int row = win.centre + (a - r) * win.row_step;
        for (int b = win.b_lo; b <= win.b_hi; ++b) {
          const int off = row + (b - r) * d;
          const acc_t p =
              lr_exp(lr_phi<KIND>(q, key_at(off), g.kind) + geo_at(a * K + b) - mx);
          z += p;
          acc_t v[kChannelChunk];
          lr_widen(values_at(off), v);
#pragma unroll
          for (int c = 0; c < kChannelChunk; ++c) acc[c] += p * v[c];
        }
      }
      const acc_t inv = acc_t(1) / z;
      scalar_t* out_p = out + lr_at(g.lay.out, n, c_begin + cc, int64_t(i) * g.out_w + j);
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) {
        if (c < mc) out_p[c * g.lay.out.c] = static_cast<scalar_t>(acc[c] * inv);
      }
      if (cc == 0) {  // z is the same in every chunk: the log-sum-exp in base 2, which the backward reads
        const int64_t stat = (int64_t(n) * g.groups + grp) * g.out_h * g.out_w + int64_t(i) * g.out_w + j;
        lse[stat] = (mx + lr_log(z)) * kLog2eOf<acc_t>;
      }
    }
  }
}

// What a thread of the row-stacked kernels (stride 1, dilation 1) works on: its kRowsPerThread output rows
// i0..i0+P-1 of column j (of group grp, image n), the staged tiles in the accumulation type (geo[g] transposed:
// (a, b) at b*K + a; the key; the value chunk, staged by the kernel), and the input rows [y_lo, y_hi] and
// offsets [b_lo, b_hi] inside the map. lr_rows_begin stages the prior and the key (every thread calls it).
template <typename scalar_t>
struct LrRows {
  using acc_t = at::opmath_type<scalar_t>;
  int grp, n, i0, j, jj, c_begin, m_g, b_lo, b_hi, y_lo, y_hi;
  bool col_active;  // j and i0 inside the output
  LrRegion reg;
  acc_t* s_geo;
  acc_t* s_key;
  LrVec<acc_t>* s_value;
  const scalar_t* value_plane;
};
template <typename scalar_t>
LR_DEV LrRows<scalar_t> lr_rows_begin(const LrGeom& g, const LrTile& t, const scalar_t* __restrict__ key,
                                      const scalar_t* __restrict__ value, const scalar_t* __restrict__ geo,
                                      unsigned char* smem) {
  using acc_t = at::opmath_type<scalar_t>;
  const int K = g.ksize, KK = K * K, r = g.radius;
  const LrBlock blk = lr_block(t, g.groups);
  LrRows<scalar_t> th;
  th.grp = blk.group;
  th.n = blk.outer;
  th.i0 = (blk.tile_i * t.th + static_cast<int>(threadIdx.y)) * kRowsPerThread;
  th.j = blk.tile_j * t.tw + static_cast<int>(threadIdx.x);
  th.c_begin = th.grp * g.per_group;
  th.m_g = lr_min(g.per_group, g.channels - th.c_begin);
  th.value_plane = value + lr_at(g.lay.value, th.n, th.c_begin, 0);
  th.s_geo = reinterpret_cast<acc_t*>(smem);
  th.s_key = reinterpret_cast<acc_t*>(smem + t.off_a);  // tiles in acc_t: widened once, when staged
  th.s_value = reinterpret_cast<LrVec<acc_t>*>(smem + t.off_b);
  th.reg = lr_window_region(g, t, blk);
  const int tid = static_cast<int>(threadIdx.y) * t.tw + static_cast<int>(threadIdx.x);
  const scalar_t* geo_g = geo + int64_t(th.grp) * KK;
  for (int e = tid; e < KK; e += t.tw * t.th) th.s_geo[(e % K) * K + e / K] = static_cast<acc_t>(geo_g[e]);
  lr_stage_plane(th.s_key, key + lr_at(g.lay.key, th.n, th.grp, 0), g.lay.key.pix, th.reg.y0, th.reg.x0,
                 th.reg.rows, th.reg.cols, t.rw, g.height, g.width);
  th.col_active = th.j < g.out_w && th.i0 < g.out_h;
  th.jj = th.col_active ? th.j : th.reg.x0;
  th.b_lo = 0;
  th.b_hi = -1;
  lr_window_range(th.jj, g.width, K, r, 1, 1, th.b_lo, th.b_hi);
  th.y_lo = lr_max(0, th.i0 - r);
  th.y_hi = th.col_active ? lr_min(g.height - 1, th.i0 + kRowsPerThread - 1 + r) : th.y_lo - 1;
  return th;
}

// The window walk of the row-stacked kernels (stride 1, dilation 1), row by row: input row y of the thread's span
// [y_lo, y_hi] serves its outputs p in [max(0, u-K+1), min(P-1, u)] (u = y - i0 + r: output row i0 + p takes
// offset a = u - p), so each staged key and value pixel is read once for all of them. For each offset an output
// takes: l = Phi(q[p], key) + geo[a, b] and x = l*log2(e) - m[p]; ONLINE, a logit above m[p] (x > 0, or +inf)
// calls rescale(p, l), which moves m[p] and returns the new x; then add(online, p, x, key, value channels).
// A run of outputs [LO, HI) is a compile-time pair (no per-output test, one branch for any new maximum); a
// thread whose last outputs lie below the map tests each output.
template <int KIND, bool ONLINE, typename scalar_t, typename A, typename Rescale, typename Add>
LR_DEV void lr_walk_rows(const LrGeom& g, const LrTile& t, const LrRows<scalar_t>& th, const A (&q)[kRowsPerThread],
                         const A (&m)[kRowsPerThread], Rescale rescale, Add add) {
  using std::integral_constant;
  constexpr int P = kRowsPerThread;
  constexpr A kLog2e = kLog2eOf<A>;
  static_assert(P == 4, "the row dispatch below lists the runs of 4 outputs");
  const integral_constant<bool, ONLINE> online{};
  const int K = g.ksize, r = g.radius;
  auto row = [&](auto lo_c, auto hi_c, int px, const A* geo_col) {
    constexpr int LO = decltype(lo_c)::value, HI = decltype(hi_c)::value;
#pragma unroll 2
    for (int b = th.b_lo; b <= th.b_hi; ++b, ++px, geo_col += K) {
      const A kv = th.s_key[px];
      A v[kChannelChunk];
      lr_widen(th.s_value[px], v);
      A l[P], x[P];
#pragma unroll
      for (int p = LO; p < HI; ++p) {
        l[p] = lr_phi<KIND>(q[p], kv, g.kind) + geo_col[-p];
        x[p] = lr_fma(l[p], kLog2e, -m[p]);
      }
      if constexpr (ONLINE) {
        bool up = false;
#pragma unroll
        for (int p = LO; p < HI; ++p) up = up || x[p] > A(0);
        if (up) {
#pragma unroll
          for (int p = LO; p < HI; ++p) {
            if (x[p] > A(0)) x[p] = rescale(p, l[p]);
          }
        }
      }
#pragma unroll
      for (int p = LO; p < HI; ++p) add(online, p, x[p], kv, v);
    }
  };
  auto checked = [&](const bool (&take)[P], int px, const A* geo_col) {
    for (int b = th.b_lo; b <= th.b_hi; ++b, ++px, geo_col += K) {
      const A kv = th.s_key[px];
      A v[kChannelChunk];
      lr_widen(th.s_value[px], v);
#pragma unroll
      for (int p = 0; p < P; ++p) {
        if (!take[p]) continue;
        const A l = lr_phi<KIND>(q[p], kv, g.kind) + geo_col[-p];
        A x = lr_fma(l, kLog2e, -m[p]);
        if constexpr (ONLINE) {
          if (x > A(0)) x = rescale(p, l);
        }
        add(online, p, x, kv, v);
      }
    }
  };
  const bool all_out = th.i0 + P - 1 < g.out_h;
  for (int y = th.y_lo; y <= th.y_hi; ++y) {
    const int u = y - th.i0 + r;
    const int lo = lr_max(0, u - K + 1), hi = lr_min(P - 1, u);
    const int px = (y - th.reg.y0) * t.rw + (th.jj - th.reg.x0) + (th.b_lo - r);  // the pixel of offset b_lo
    const A* geo_col = th.s_geo + th.b_lo * K + u;  // entry (u - p, b) at geo_col[(b - b_lo) * K - p]
    if (all_out && lo == 0 && hi == 3) {
      row(integral_constant<int, 0>{}, integral_constant<int, 4>{}, px, geo_col);
    } else if (all_out && lo == 0 && hi == 2) {
      row(integral_constant<int, 0>{}, integral_constant<int, 3>{}, px, geo_col);
    } else if (all_out && lo == 0 && hi == 1) {
      row(integral_constant<int, 0>{}, integral_constant<int, 2>{}, px, geo_col);
    } else if (all_out && lo == 0 && hi == 0) {
      row(integral_constant<int, 0>{}, integral_constant<int, 1>{}, px, geo_col);
    } else if (all_out && lo == 1 && hi == 3) {
      row(integral_constant<int, 1>{}, integral_constant<int, 4>{}, px, geo_col);
    } else if (all_out && lo == 2 && hi == 3) {
      row(integral_constant<int, 2>{}, integral_constant<int, 4>{}, px, geo_col);
    } else if (all_out && lo == 3 && hi == 3) {
      row(integral_constant<int, 3>{}, integral_constant<int, 4>{}, px, geo_col);
    } else {  // K < 3, or the thread's last outputs lie below the map
      bool take[P];
#pragma unroll
      for (int p = 0; p < P; ++p) take[p] = p >= lo && p <= hi && th.i0 + p < g.out_h;
      checked(take, px, geo_col);
    }
  }
}

// Forward, fast path (stride 1, dilation 1, tiled): each thread computes kRowsPerThread output rows i0..i0+P-1
// of one column j. Output row i0+p takes offset a = u - p from input row u (counted from i0 - r), so each staged
// key and value pixel is loaded and unpacked once for up to P outputs. The softmax is one pass (online): per
// output, the logits are taken in base 2 (x = l*log2(e) - m) against a running maximum m kept at an integer, so
// that a rescale, when a logit exceeds m, is an exact multiplication by a power of two; the same weights as the
// two-pass form, with the same IEEE propagation of non-finite logits (-inf weighs 0, +inf and NaN give NaN).
// geo[g] is staged transposed (entry (a, b) at b*K + a) so the P outputs' entries of one pixel sit at
// consecutive addresses.
template <typename scalar_t, int KIND>
LR_KERNEL void lr_forward_rows_kernel(const scalar_t* __restrict__ query, const scalar_t* __restrict__ key,
                                      const scalar_t* __restrict__ value, const scalar_t* __restrict__ geo,
                                      scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ lse,
                                      const LrGeom g, const LrTile t) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int P = kRowsPerThread;
  constexpr acc_t kLog2e = kLog2eOf<acc_t>;
  LR_DYNAMIC_SMEM(smem);
  const LrRows<scalar_t> th = lr_rows_begin(g, t, key, value, geo, smem);
  const int grp = th.grp, n = th.n, i0 = th.i0, j = th.j, c_begin = th.c_begin, m_g = th.m_g;
  const bool col_active = th.col_active;
  const LrRegion reg = th.reg;
  acc_t q[P], m[P], z[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const bool in = col_active && i0 + p < g.out_h;
    q[p] = in ? static_cast<acc_t>(query[lr_at(g.lay.query, n, grp, int64_t(i0 + p) * g.out_w + j)]) : acc_t(0);
    m[p] = -std::numeric_limits<acc_t>::max();  // below every finite logit: the first one rescales by 0
    z[p] = 0;
  }

  for (int cc = 0; cc < m_g; cc += kChannelChunk) {
    const int mc = lr_min(kChannelChunk, m_g - cc);
    if (cc > 0) LR_SYNC();  // every thread is done with the previous chunk's tile
    lr_stage_channels(th.s_value, th.value_plane + cc * g.lay.value.c, g.lay.value.c, g.lay.value.pix, mc, reg.y0,
                      reg.x0, reg.rows, reg.cols, t.rw, g.height, g.width);
    LR_SYNC();
    acc_t acc[P][kChannelChunk];
#pragma unroll
    for (int p = 0; p < P; ++p) {
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) acc[p][c] = 0;
    }
    // The first chunk finds each output's maximum and normaliser; later chunks reuse them (m is then final).
    // A logit above m (x > 0, or +inf) moves m up to an integer and rescales that output by 2^(m_old - m).
    auto rescale = [&](int p, acc_t l) -> acc_t {
      const acc_t m_new = lr_ceil(l * kLog2e);
      const acc_t scale = lr_pow2_below(m[p] - m_new);
      z[p] *= scale;
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) acc[p][c] *= scale;
      m[p] = m_new;
      return lr_fma(l, kLog2e, -m_new);
    };
    auto add = [&](auto online, int p, acc_t x, acc_t, const acc_t (&v)[kChannelChunk]) {
      const acc_t e = lr_exp2(x);
      if constexpr (decltype(online)::value) z[p] += e;
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) acc[p][c] += e * v[c];
    };
    if (cc == 0) {
      lr_walk_rows<KIND, true>(g, t, th, q, m, rescale, add);
    } else {
      lr_walk_rows<KIND, false>(g, t, th, q, m, rescale, add);
    }
#pragma unroll
    for (int p = 0; p < P; ++p) {
      if (!col_active || i0 + p >= g.out_h) continue;
      const acc_t inv = acc_t(1) / z[p];
      scalar_t* out_p = out + lr_at(g.lay.out, n, c_begin + cc, int64_t(i0 + p) * g.out_w + j);
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) {
        if (c < mc) out_p[c * g.lay.out.c] = static_cast<scalar_t>(acc[p][c] * inv);
      }
    }
  }
  const int64_t out_hw = int64_t(g.out_h) * g.out_w;
#pragma unroll
  for (int p = 0; p < P; ++p) {  // the log-sum-exp in base 2, m + log2(z), which the backward reads
    if (col_active && i0 + p < g.out_h) {
      lse[(int64_t(n) * g.groups + grp) * out_hw + int64_t(i0 + p) * g.out_w + j] = m[p] + lr_log2(z[p]);
    }
  }
}

// D = sum over the group's channels of grad_out * out at one output pixel: FlashAttention's "delta", equal to
// sum_ab w*dw (dw_ab = sum_c grad_out_c * v_c(p_ab)) but read from the saved output instead of summed over the window.
template <typename scalar_t>
LR_DEV at::opmath_type<scalar_t> lr_delta(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
                                          const LrGeom& g, int n, int c_begin, int m_g, int64_t pix) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* go = grad_out + lr_at(g.lay.grad_out, n, c_begin, pix);
  const scalar_t* o = out + lr_at(g.lay.out, n, c_begin, pix);
  acc_t D = 0;
  for (int c = 0; c < m_g; ++c) {
    D += static_cast<acc_t>(go[c * g.lay.grad_out.c]) * static_cast<acc_t>(o[c * g.lay.out.c]);
  }
  return D;
}

// Backward statistics, fast path (stride 1, dilation 1, tiled): as lr_stats_kernel, for kRowsPerThread output
// rows of one column per thread with the row walk of lr_forward_rows_kernel. The forward's log-sum-exp makes
// 2^(l*log2(e) - lse) the weight itself (no maximum, no normaliser) and D comes from the saved output, so each
// offset adds one term: grad_query += w*(dw - D)*tq.
template <typename scalar_t, int KIND>
LR_KERNEL void lr_stats_rows_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                    const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                    const scalar_t* __restrict__ geo, const scalar_t* __restrict__ out,
                                    const at::opmath_type<scalar_t>* __restrict__ lse,
                                    scalar_t* __restrict__ grad_query, at::opmath_type<scalar_t>* __restrict__ dsum,
                                    const LrGeom g, const LrTile t) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int P = kRowsPerThread;
  LR_DYNAMIC_SMEM(smem);
  const LrRows<scalar_t> th = lr_rows_begin(g, t, key, value, geo, smem);
  const int grp = th.grp, n = th.n, i0 = th.i0, j = th.j, c_begin = th.c_begin, m_g = th.m_g;
  const bool col_active = th.col_active;
  const LrRegion reg = th.reg;
  const int64_t out_hw = int64_t(g.out_h) * g.out_w;
  LR_SYNC();  // the key tile is read for the window centres below
  bool in[P];
  acc_t q[P], t0[P], base[P], D[P], gq[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    in[p] = col_active && i0 + p < g.out_h;
    const int64_t out_pix = int64_t(i0 + p) * g.out_w + j;
    q[p] = in[p] ? static_cast<acc_t>(query[lr_at(g.lay.query, n, grp, out_pix)]) : acc_t(0);
    // dPhi/dq relative to its value at the window centre: sum_ab w*(dw - D) = 0, so the shift changes nothing
    // but the rounding, and keeps D's (from a rounded output) out of a large, nearly constant dPhi/dq
    t0[p] = in[p] ? lr_dphi_dq<KIND>(q[p], th.s_key[(i0 + p - reg.y0) * t.rw + (j - reg.x0)], g.kind)
                  : acc_t(0);
    base[p] = in[p] ? lse[(int64_t(n) * g.groups + grp) * out_hw + out_pix] : acc_t(0);
    D[p] = in[p] ? lr_delta(grad_out, out, g, n, c_begin, m_g, out_pix) : acc_t(0);
    gq[p] = 0;
  }

  for (int cc = 0; cc < m_g; cc += kChannelChunk) {
    const int mc = lr_min(kChannelChunk, m_g - cc);
    LR_SYNC();  // every thread is done with the previous chunk's tile (and the centres' keys)
    lr_stage_channels(th.s_value, th.value_plane + cc * g.lay.value.c, g.lay.value.c, g.lay.value.pix, mc, reg.y0,
                      reg.x0, reg.rows, reg.cols, t.rw, g.height, g.width);
    LR_SYNC();
    acc_t go[P][kChannelChunk], d0[P];  // d0: D in the first chunk, 0 after (dw is a sum over the chunks)
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const scalar_t* go_p = grad_out + lr_at(g.lay.grad_out, n, c_begin + cc, int64_t(i0 + p) * g.out_w + j);
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) {
        go[p][c] = in[p] && c < mc ? static_cast<acc_t>(go_p[c * g.lay.grad_out.c]) : acc_t(0);
      }
      d0[p] = cc == 0 ? D[p] : acc_t(0);
    }
    auto no_rescale = [](int, acc_t x) { return x; };  // the walk is not ONLINE: the maximum is not tracked
    auto add = [&](auto, int p, acc_t x, acc_t kv, const acc_t (&v)[kChannelChunk]) {
      const acc_t w = lr_exp2(x);
      const acc_t tq = lr_dphi_dq<KIND>(q[p], kv, g.kind) - t0[p];
      acc_t dw = -d0[p];
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) dw = lr_fma(go[p][c], v[c], dw);
      gq[p] = lr_fma(w * dw, tq, gq[p]);
    };
    lr_walk_rows<KIND, false>(g, t, th, q, base, no_rescale, add);
  }
#pragma unroll
  for (int p = 0; p < P; ++p) {
    if (!in[p]) continue;
    const int64_t out_pix = int64_t(i0 + p) * g.out_w + j;
    grad_query[lr_at(g.lay.grad_query, n, grp, out_pix)] = static_cast<scalar_t>(gq[p]);
    dsum[(int64_t(n) * g.groups + grp) * out_hw + out_pix] = D[p];
  }
}

// Backward, per output pixel, from the forward's log-sum-exp lse (base 2) and output: dsum = D = sum_c
// grad_out_c * out_c (lr_delta) and grad_query = sum_ab w*(dw - D)*dPhi/dq with w = 2^(l*log2(e) - lse). The sum
// is split into channel chunks (linear in dw), and dPhi/dq is taken relative to its value at the window centre
// (sum_ab w*(dw - D) = 0), which keeps the rounding of D out of a large, nearly constant dPhi/dq.
template <typename scalar_t, int KIND, bool TILED>
LR_KERNEL void lr_stats_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                               const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                               const scalar_t* __restrict__ geo, const scalar_t* __restrict__ out,
                               const at::opmath_type<scalar_t>* __restrict__ lse, scalar_t* __restrict__ grad_query,
                               at::opmath_type<scalar_t>* __restrict__ dsum, const LrGeom g, const LrTile t) {
  using acc_t = at::opmath_type<scalar_t>;
  LR_DYNAMIC_SMEM(smem);
  const int K = g.ksize, KK = K * K, r = g.radius, d = g.dilation;
  const LrBlock blk = lr_block(t, g.groups);
  const int grp = blk.group, n = blk.outer;
  const int i = blk.tile_i * t.th + static_cast<int>(threadIdx.y);
  const int j = blk.tile_j * t.tw + static_cast<int>(threadIdx.x);
  const bool active = i < g.out_h && j < g.out_w;
  const int c_begin = grp * g.per_group;
  const int m_g = lr_min(g.per_group, g.channels - c_begin);
  const int64_t out_hw = int64_t(g.out_h) * g.out_w;
  const int64_t out_pix = int64_t(i) * g.out_w + j;
  const int64_t stat = (int64_t(n) * g.groups + grp) * out_hw + out_pix;  // (n, grp, i, j) of lse and dsum
  const scalar_t* key_plane = key + lr_at(g.lay.key, n, grp, 0);
  const scalar_t* value_plane = value + lr_at(g.lay.value, n, c_begin, 0);
  const scalar_t* geo_g = geo + int64_t(grp) * KK;

  acc_t* s_geo = reinterpret_cast<acc_t*>(smem);
  scalar_t* s_key = reinterpret_cast<scalar_t*>(smem + t.off_a);
  LrVec<scalar_t>* s_value = reinterpret_cast<LrVec<scalar_t>*>(smem + t.off_b);
  const LrRegion reg = lr_window_region(g, t, blk);
  if constexpr (TILED) {
    const int tid = static_cast<int>(threadIdx.y) * t.tw + static_cast<int>(threadIdx.x);
    for (int e = tid; e < KK; e += t.tw * t.th) s_geo[e] = static_cast<acc_t>(geo_g[e]);
    lr_stage_plane(s_key, key_plane, g.lay.key.pix, reg.y0, reg.x0, reg.rows, reg.cols, t.rw, g.height, g.width);
  }
  auto geo_at = [&](int ab) { return lr_tile_or_plane<TILED, acc_t>(s_geo, geo_g, ab, 1); };
  auto key_at = [&](int e) { return lr_tile_or_plane<TILED, acc_t>(s_key, key_plane, e, g.lay.key.pix); };
  const LrWindow win = lr_window<TILED>(g, t, reg, active ? i : 0, active ? j : 0);
  constexpr acc_t kLog2e = kLog2eOf<acc_t>;
  acc_t q = 0, t0 = 0, base = 0, D = 0, gq = 0;
  if (active) {
    q = static_cast<acc_t>(query[lr_at(g.lay.query, n, grp, out_pix)]);
    base = lse[stat];
    D = lr_delta(grad_out, out, g, n, c_begin, m_g, out_pix);
  }

  for (int cc = 0; cc < m_g; cc += kChannelChunk) {
    const int mc = lr_min(kChannelChunk, m_g - cc);
    const scalar_t* vp = value_plane + cc * g.lay.value.c;
    if constexpr (TILED) {
      if (cc > 0) LR_SYNC();
      lr_stage_channels(s_value, vp, g.lay.value.c, g.lay.value.pix, mc, reg.y0, reg.x0, reg.rows, reg.cols, t.rw,
                        g.height, g.width);
      LR_SYNC();
    }
    auto values_at = [&](int off) -> LrVec<scalar_t> {
      if constexpr (TILED) {
        return s_value[off];
      } else {
        LrVec<scalar_t> e;
#pragma unroll
        for (int c = 0; c < kChannelChunk; ++c) {
          e.v[c] = c < mc ? vp[c * g.lay.value.c + int64_t(off) * g.lay.value.pix] : static_cast<scalar_t>(0.0f);
        }
        return e;
      }
    };
    if (active) {
      if (cc == 0) t0 = lr_dphi_dq<KIND>(q, key_at(win.centre), g.kind);
      acc_t go[kChannelChunk];
      const scalar_t* go_p = grad_out + lr_at(g.lay.grad_out, n, c_begin + cc, out_pix);
#pragma unroll
      for (int c = 0; c < kChannelChunk; ++c) {
        go[c] = c < mc ? static_cast<acc_t>(go_p[c * g.lay.grad_out.c]) : acc_t(0);
      }
      const acc_t d0 = cc == 0 ? D : acc_t(0);  // dw is a sum over the chunks: D is taken once
      for (int a = win.a_lo; a <= win.a_hi; ++a) {
        const int row = win.centre + (a - r) * win.row_step;
        for (int b = win.b_lo; b <= win.b_hi; ++b) {
          const int off = row + (b - r) * d;
          const acc_t kv = key_at(off);
          const acc_t w = lr_exp2(lr_fma(lr_phi<KIND>(q, kv, g.kind) + geo_at(a * K + b), kLog2e, -base));
          const acc_t tq = lr_dphi_dq<KIND>(q, kv, g.kind) - t0;
          acc_t v[kChannelChunk];
          lr_widen(values_at(off), v);
          acc_t dw = -d0;
#pragma unroll
          for (int c = 0; c < kChannelChunk; ++c) dw = lr_fma(go[c], v[c], dw);
          gq = lr_fma(w * dw, tq, gq);
        }
      }
    }
  }
  if (active) {
    grad_query[lr_at(g.lay.grad_query, n, grp, out_pix)] = static_cast<scalar_t>(gq);
    dsum[stat] = D;
  }
}

// Backward, per input pixel y = (yy, xx) of one group: grad_key, grad_value over the inverse neighbourhood,
// and the partial sums of the geo_prior gradient: geo_partial[(g*KK + ab) * slots + slot] = sum over the
// block's pixels (its run of t.tiles_per_block tiles) and batch chunk of w*(dw - D). Offsets run in
// block-uniform order so a warp can reduce each one with shuffles, skipped when no lane of the warp has an
// output at that offset (at stride s most rows and columns have none); no atomics anywhere, every sum has a
// fixed order.
template <typename scalar_t, int KIND, bool TILED, int COLS>
LR_KERNEL void lr_gather_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ query,
                                const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                                const scalar_t* __restrict__ geo, const at::opmath_type<scalar_t>* __restrict__ lse,
                                const at::opmath_type<scalar_t>* __restrict__ dsum, scalar_t* __restrict__ grad_key,
                                scalar_t* __restrict__ grad_value, at::opmath_type<scalar_t>* __restrict__ geo_partial,
                                const LrGeom g, const LrTile t) {
  using acc_t = at::opmath_type<scalar_t>;
  LR_DYNAMIC_SMEM(smem);
  const int K = g.ksize, KK = K * K, r = g.radius, s = g.stride, d = g.dilation;
  // Block index -> (run of tiles, group, batch chunk), runs fastest.
  const int64_t blk = blockIdx.x;
  const int run = static_cast<int>(blk % t.tile_slots);
  const int grp = static_cast<int>((blk / t.tile_slots) % g.groups);
  const int outer = static_cast<int>(blk / t.tile_slots / g.groups);
  const int n_begin = outer * t.n_per;
  const int n_end = lr_min(g.n, n_begin + t.n_per);
  const int64_t slots = int64_t(t.n_chunks) * t.tile_slots;
  const int64_t slot = int64_t(outer) * t.tile_slots + run;
  const int tile_begin = run * t.tiles_per_block;
  const int tile_end = lr_min(t.tiles_x * t.tiles_y, tile_begin + t.tiles_per_block);
  const int tid = static_cast<int>(threadIdx.y) * t.tw + static_cast<int>(threadIdx.x);
  const int nthreads = t.tw * t.th;
  const int warp = tid / 32, lane = tid % 32, nwarps = nthreads / 32;
  const int c_begin = grp * g.per_group;
  const int m_g = lr_min(g.per_group, g.channels - c_begin);
  const int64_t out_hw = int64_t(g.out_h) * g.out_w;
  const scalar_t* geo_g = geo + int64_t(grp) * KK;
  const int rd = r * d;
  const int dq = d / s, dr = d - (d / s) * s;  // one offset step of the inverse index
  constexpr int ROWS = kOffsetChunk / COLS;     // offset chunks: 4 rows of 8 (K <= 8) or 1 row of 32
  constexpr acc_t kLog2e = kLog2eOf<acc_t>;

  // Shared memory: per-warp offset sums; TILED adds geo[g], the statistics and grad_out tiles.
  acc_t* s_dg = reinterpret_cast<acc_t*>(smem);
  acc_t* s_geo = reinterpret_cast<acc_t*>(smem + t.off_a);
  LrGatherPixel<acc_t>* s_pix = reinterpret_cast<LrGatherPixel<acc_t>*>(smem + t.off_b);  // grad_out widened
  if constexpr (TILED) {
    for (int e = tid; e < KK; e += nthreads) s_geo[e] = static_cast<acc_t>(geo_g[e]);
  }
  auto geo_at = [&](int ab) { return lr_tile_or_plane<TILED, acc_t>(s_geo, geo_g, ab, 1); };

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int ty0 = (tile / t.tiles_x) * t.th, tx0 = (tile % t.tiles_x) * t.tw;  // first pixel of the tile
    const int yy = ty0 + static_cast<int>(threadIdx.y), xx = tx0 + static_cast<int>(threadIdx.x);
    const bool active = yy < g.height && xx < g.width;
    const int pix = active ? yy * g.width + xx : 0;
    // Outputs whose windows reach the tile: rows [oi_lo, oi_lo + orh), cols [oj_lo, oj_lo + orw); the counts
    // may be <= 0 (no output reaches the tile) and never exceed the capacity t.rh x t.rw.
    const int oi_lo = lr_max(0, lr_ceil_div(ty0 - rd, s));
    const int oj_lo = lr_max(0, lr_ceil_div(tx0 - rd, s));
    const int orh = lr_min(g.out_h - 1, lr_floor_div(ty0 + t.th - 1 + rd, s)) - oi_lo + 1;
    const int orw = lr_min(g.out_w - 1, lr_floor_div(tx0 + t.tw - 1 + rd, s)) - oj_lo + 1;

    for (int n = n_begin; n < n_end; ++n) {
      const int64_t ng = int64_t(n) * g.groups + grp;
      const scalar_t* q_plane = query + lr_at(g.lay.query, n, grp, 0);
      const acc_t* lse_plane = lse + ng * out_hw;
      const acc_t* dsum_plane = dsum + ng * out_hw;
      if constexpr (TILED) {
        LR_SYNC();  // the previous image's (or tile's) tiles are no longer read
        lr_stage_stats(s_pix, q_plane, g.lay.query.pix, lse_plane, dsum_plane, oi_lo, oj_lo, orh, orw, g.out_h,
                       g.out_w);
      }
      auto stats_at = [&](int o) -> LrStats<acc_t> {
        if constexpr (TILED) {
          return s_pix[o].st;
        } else {
          LrStats<acc_t> e;
          e.q = static_cast<acc_t>(q_plane[int64_t(o) * g.lay.query.pix]);
          e.lse = lse_plane[o];
          e.dsum = dsum_plane[o];
          e.pad = 0;
          return e;
        }
      };
      const acc_t kv = active ? static_cast<acc_t>(key[lr_at(g.lay.key, n, grp, pix)]) : acc_t(0);
      acc_t dk = 0;

      for (int cc = 0; cc < m_g; cc += kChannelChunk) {
        const int mc = lr_min(kChannelChunk, m_g - cc);
        const int c0 = c_begin + cc;  // first channel of the chunk
        const scalar_t* go_planes = grad_out + lr_at(g.lay.grad_out, n, c0, 0);
        if constexpr (TILED) {
          if (cc > 0) LR_SYNC();
          lr_stage_channels(s_pix, go_planes, g.lay.grad_out.c, g.lay.grad_out.pix, mc, oi_lo, oj_lo, orh, orw, orw,
                            g.out_h, g.out_w);
          LR_SYNC();
        }
        auto go_at = [&](int o) -> LrVec<acc_t> {
          if constexpr (TILED) {
            return s_pix[o].go;
          } else {
            LrVec<acc_t> e;
#pragma unroll
            for (int c = 0; c < kChannelChunk; ++c) {
              e.v[c] = c < mc ? static_cast<acc_t>(go_planes[c * g.lay.grad_out.c + int64_t(o) * g.lay.grad_out.pix])
                              : acc_t(0);
            }
            return e;
          }
        };
        acc_t v[kChannelChunk], dv[kChannelChunk];
#pragma unroll
        for (int c = 0; c < kChannelChunk; ++c) {
          v[c] = (active && c < mc) ? static_cast<acc_t>(value[lr_at(g.lay.value, n, c0 + c, pix)]) : acc_t(0);
          dv[c] = 0;
        }
        const bool first = tile == tile_begin && n == n_begin && cc == 0;  // first write of the partial sums
        const bool subtract = cc == 0;  // D enters once per (pixel, image)

        // The offsets in chunks of ROWS x COLS = 32 (one per lane): this thread's d loss / d logit at each offset
        // of the chunk (0 where it has no output) is summed over the warp by one reduce-scatter, lane e getting
        // offset (a0 + e / COLS, b0 + e % COLS), then over the block's warps in shared memory.
        // d loss / d logit of offset ab through output o (tile or plane index), with its share of grad_value and
        // grad_key.
        auto term = [&](int ab, int o) -> acc_t {
          const LrStats<acc_t> st = stats_at(o);  // st.lse in base 2
          const acc_t w = lr_exp2(lr_fma(lr_phi<KIND>(st.q, kv, g.kind) + geo_at(ab), kLog2e, -st.lse));
          acc_t gov[kChannelChunk];
          lr_widen(go_at(o), gov);
          acc_t dw = gov[0] * v[0];
#pragma unroll
          for (int c = 1; c < kChannelChunk; ++c) dw += gov[c] * v[c];
#pragma unroll
          for (int c = 0; c < kChannelChunk; ++c) dv[c] += w * gov[c];
          const acc_t dl = w * (subtract ? dw - st.dsum : dw);  // this chunk's share
          dk += dl * lr_dphi_dk<KIND>(st.q, kv, g.kind);
          return dl;
        };
        // Stride 1 (most layers) walks the outputs with one subtraction per offset; other strides keep the
        // remainder of the inverse index (lr_inverse_step). Two loops, so each stays lean.
        auto walk = [&](auto unit_stride) {
          for (int a0 = 0; a0 < K; a0 += ROWS) {
            for (int b0 = 0; b0 < K; b0 += COLS) {
              acc_t part[kOffsetChunk];
              if constexpr (decltype(unit_stride)::value) {  // output (y - (a-r)*d, x - (b-r)*d): no remainders
  #pragma unroll
                for (int tr = 0; tr < ROWS; ++tr) {
                  const int a = a0 + tr;
                  const int oi = yy - (a - r) * d;
                  const bool row_ok = active && a < K && oi >= 0 && oi < g.out_h;
                  const int base = TILED ? (oi - oi_lo) * orw - oj_lo : oi * g.out_w;  // o = base + oj
                  int oj = xx - (b0 - r) * d;
  #pragma unroll
                  for (int tc = 0; tc < COLS; ++tc, oj -= d) {
                    const bool ok = row_ok && b0 + tc < K && static_cast<unsigned>(oj) < static_cast<unsigned>(g.out_w);
                    part[tr * COLS + tc] = ok ? term(a * K + b0 + tc, base + oj) : acc_t(0);
                  }
                }
              } else {
                LrInverse row = lr_inverse_at(yy, a0, r, s, d);
                const LrInverse col0 = lr_inverse_at(xx, b0, r, s, d);
  #pragma unroll
                for (int tr = 0; tr < ROWS; ++tr) {
                  const int a = a0 + tr;
                  const bool row_ok = active && a < K && lr_inverse_valid(row, g.out_h);
                  const int base = TILED ? (row.q - oi_lo) * orw - oj_lo : row.q * g.out_w;
                  LrInverse col = col0;
  #pragma unroll
                  for (int tc = 0; tc < COLS; ++tc) {
                    const bool ok = row_ok && b0 + tc < K && lr_inverse_valid(col, g.out_w);
                    part[tr * COLS + tc] = ok ? term(a * K + b0 + tc, base + col.q) : acc_t(0);
                    lr_inverse_step(col, s, dq, dr);
                  }
                  lr_inverse_step(row, s, dq, dr);
                }
              }
              s_dg[warp * kOffsetChunk + lane] = lr_warp_reduce_scatter(part, lane);
              LR_SYNC();
              for (int e = tid; e < kOffsetChunk; e += nthreads) {
                const int a = a0 + e / COLS, b = b0 + e % COLS;
                if (a >= K || b >= K) continue;
                acc_t sum = 0;
                for (int w = 0; w < nwarps; ++w) sum += s_dg[w * kOffsetChunk + e];
                acc_t* dst = geo_partial + (int64_t(grp) * KK + a * K + b) * slots + slot;
                *dst = first ? sum : *dst + sum;
              }
              LR_SYNC();
            }
          }
        };
        if (s == 1) {
          walk(std::true_type{});
        } else {
          walk(std::false_type{});
        }
        if (active) {
#pragma unroll
          for (int c = 0; c < kChannelChunk; ++c) {
            if (c < mc) grad_value[lr_at(g.lay.grad_value, n, c0 + c, pix)] = static_cast<scalar_t>(dv[c]);
          }
        }
      }
      if (active) grad_key[lr_at(g.lay.grad_key, n, grp, pix)] = static_cast<scalar_t>(dk);
    }
  }
}

// grad_geo[e] = sum of partial[e * slots + 0 .. slots), one block per (group, offset), fixed-order tree sum.
template <typename scalar_t>
LR_KERNEL void lr_geo_reduce_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, int64_t slots,
                                    scalar_t* __restrict__ grad_geo) {
  using acc_t = at::opmath_type<scalar_t>;
  LR_DYNAMIC_SMEM(smem);
  acc_t* red = reinterpret_cast<acc_t*>(smem);
  const int tid = static_cast<int>(threadIdx.x);
  const int nthreads = static_cast<int>(blockDim.x);  // a power of two
  const acc_t* p = partial + int64_t(blockIdx.x) * slots;
  acc_t sum = 0;
  for (int64_t e = tid; e < slots; e += nthreads) sum += p[e];
  red[tid] = sum;
  LR_SYNC();
  for (int stride = nthreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) red[tid] += red[tid + stride];
    LR_SYNC();
  }
  if (tid == 0) grad_geo[blockIdx.x] = static_cast<scalar_t>(red[0]);
}

}  // namespace cuda
}  // namespace lrrobust
