// Launch planning of the CUDA kernels of the local relation op (paper Sec. 4): block shapes, haloed
// shared-memory tiles and whether they fit, and the batch split of the gather pass. Plain host C++,
// shared by the CUDA launchers and the CPU emulator, so both run exactly the same configurations.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lrrobust {
namespace cuda {

constexpr int kChannelChunk = 8;   // value channels held in registers per pass; more channels loop in chunks
constexpr int kOffsetChunk = 32;   // window offsets per flush of the geo_prior partial sums (one per lane)
constexpr int kMaxThreads = 256;   // threads per block
constexpr int kRowsPerThread = 4;  // output rows per thread of the forward's fast path (stride 1, dilation 1)
constexpr int64_t kSharedLimit = 48 * 1024;           // dynamic shared memory a block may use without opt-in
constexpr int64_t kPartialBudget = int64_t(1) << 22;  // entries of the geo_prior partial sums the batch split aims at
constexpr int64_t kPartialCap = int64_t(1) << 25;     // entries it never exceeds (128 MiB in float), unless one
                                                      // slot (G*K*K, the size of the prior) is larger
constexpr int kMinWaves = 4;                          // gather blocks per multiprocessor the batch split aims at

// Where a 4-D tensor's elements are: (n, c, y, x) at n*n_stride + c*c_stride + (y*W + x)*pix, which holds for
// contiguous NCHW (pix 1, c H*W), channels-last NHWC (pix C, c 1) and channel slices of either.
struct LrLayout {
  int64_t n, c, pix;
};
struct LrLayouts {
  LrLayout query, key, value, grad_out, out, grad_query, grad_key, grad_value;
};

// Sizes and memory layouts of one call. Sizes fit in int (checked by the launcher); products that may not are
// formed in int64.
struct LrGeom {
  int n, groups, channels, per_group;  // per_group = m = ceil(C/G); the last group may hold fewer
  int height, width, out_h, out_w;
  int ksize, radius, stride, dilation;  // K, r = (K-1)/2, s, d
  int kind;                             // 0 sqdiff, 1 absdiff, 2 product
  LrLayouts lay;                        // set by the launcher (lr_host.cuh); the planner does not read it
};

// One pass's launch: a block of tw x th threads covers a tile of tw x th pixels (output pixels for the
// forward and statistics passes, input pixels for the gather pass). The shared-memory layout (byte
// offsets) is decided here and only read by the kernels.
struct LrTile {
  int tw, th;            // block shape (threads = pixels of the tile)
  int tiles_x, tiles_y;  // tiles over the pixel grid
  int rh, rw;            // capacity (rows, cols) of the haloed region staged in shared memory
  int tiled;             // 1: stage tiles in shared memory; 0: read global memory directly (tile too big)
  int64_t smem;          // dynamic shared memory bytes of the launch
  int n_chunks, n_per;   // gather pass: the batch is split into n_chunks chunks of n_per images
  int rows_per_thread;   // window passes: output rows per thread (a tile is tw x th*rows_per_thread outputs)
  int tiles_per_block;   // gather pass: a block visits this many consecutive tiles (1 unless memory is capped)
  int tile_slots;        // gather pass: ceil(tiles / tiles_per_block), blocks per (group, batch chunk)
  // Window passes: geo[g] (KK acc_t) at 0, the key tile (rh*rw scalars) at off_a, the value tile
  // (rh*rw pixels x kChannelChunk channels, channel-interleaved) at off_b.
  // Gather pass: per-warp offset sums (warps*kOffsetChunk acc_t) at 0, geo[g] at off_a, the per-output
  // tile of the outputs (rh*rw x {q, lse, D, 0, kChannelChunk grad_out channels} acc_t) at off_b.
  int off_a, off_b;
};

inline int64_t lr_align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

inline int lr_ceil_div_pos(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Block shape for a rows x cols pixel grid: a warp-multiple of threads, no wider than needed.
inline void lr_block_shape(int rows, int cols, int& tw, int& th) {
  tw = cols > 16 ? 32 : (cols > 8 ? 16 : 8);
  th = kMaxThreads / tw;
  while (th / 2 >= rows && tw * (th / 2) >= 32) th /= 2;
}

// Shrinks the block until bytes(tw, th) fits the limit; false when even the smallest block does not.
template <typename Bytes>
inline bool lr_fit_block(int& tw, int& th, int64_t limit, Bytes bytes) {
  while (bytes(tw, th) > limit) {
    if (th > 1 && tw * (th / 2) >= 32) {
      th /= 2;
    } else if (tw > 8 && (tw / 2) * th >= 32) {
      tw /= 2;
    } else {
      return false;
    }
  }
  return true;
}

// Rows (or columns) of input a tile of `threads` output rows reads: its haloed span, clipped to the map (the
// kernels stage only the part inside the map, so a large window on a small map still fits).
inline int64_t lr_haloed_span(int threads, int stride, int64_t halo, int size) {
  return std::min<int64_t>(int64_t(threads - 1) * stride + halo + 1, size);
}

// Forward and statistics passes: one thread per output pixel (or per `rows` output rows of one column, the
// forward's fast path); the tile stages the haloed key plane, the haloed kChannelChunk value planes
// (interleaved: one vector load per pixel) and the group's geo_prior.
inline LrTile lr_plan_window_pass(const LrGeom& g, int64_t scalar_bytes, int64_t acc_bytes, int64_t limit,
                                  int rows_per_thread = 1) {
  const int P = rows_per_thread;
  const int64_t kk = int64_t(g.ksize) * g.ksize;
  const int64_t halo = 2 * int64_t(g.radius) * g.dilation;
  auto rows = [&](int th) { return lr_haloed_span(th * P, g.stride, halo, g.height); };
  auto cols = [&](int tw) { return lr_haloed_span(tw, g.stride, halo, g.width); };
  auto cap = [&](int tw, int th) { return rows(th) * cols(tw); };
  auto off_a = [&](int, int) { return lr_align16(kk * acc_bytes); };
  auto off_b = [&](int tw, int th) { return lr_align16(off_a(tw, th) + cap(tw, th) * scalar_bytes); };
  auto bytes = [&](int tw, int th) { return off_b(tw, th) + cap(tw, th) * kChannelChunk * scalar_bytes; };
  LrTile t{};
  t.rows_per_thread = P;
  lr_block_shape(lr_ceil_div_pos(g.out_h, P), g.out_w, t.tw, t.th);
  int tw = t.tw, th = t.th;
  if (lr_fit_block(tw, th, limit, bytes)) {
    t.tw = tw;
    t.th = th;
    t.tiled = 1;
    t.rh = static_cast<int>(rows(th));
    t.rw = static_cast<int>(cols(tw));
    t.smem = bytes(tw, th);
    t.off_a = static_cast<int>(off_a(tw, th));
    t.off_b = static_cast<int>(off_b(tw, th));
  }
  t.tiles_x = lr_ceil_div_pos(g.out_w, t.tw);
  t.tiles_y = lr_ceil_div_pos(g.out_h, int64_t(t.th) * P);
  t.n_chunks = g.n;
  t.n_per = 1;
  t.tiles_per_block = 1;
  t.tile_slots = t.tiles_x * t.tiles_y;
  return t;
}

// The forward's plan: the row-stacked fast path (kRowsPerThread output rows per thread, each staged key and
// value pixel loaded once for all of them) at stride 1 and dilation 1 when its tile fits; otherwise one output
// per thread, as the statistics pass.
inline LrTile lr_plan_forward(const LrGeom& g, int64_t scalar_bytes, int64_t acc_bytes, int64_t limit) {
  if (g.stride == 1 && g.dilation == 1 && g.ksize > 1) {
    // Its tiles hold the accumulation type (the key and value are widened once, when staged).
    const LrTile t = lr_plan_window_pass(g, acc_bytes, acc_bytes, limit, kRowsPerThread);
    if (t.tiled) return t;
  }
  return lr_plan_window_pass(g, scalar_bytes, acc_bytes, limit);
}

// The gather pass's parallel split. A block owns one slot of the geo_prior partial sums (G*K*K entries per
// slot); the slots are (batch chunk, tile or run of tiles). Split the batch into as many chunks as the budget
// allows, and into more when that leaves under min_blocks blocks (a few waves of the GPU), as long as the
// partial sums stay under the cap. When one chunk alone is over the cap (large windows on large maps), a
// block visits several consecutive tiles, so the slots, and the memory, stay under the cap.
inline void lr_split_gather(const LrGeom& g, int64_t partial_budget, int64_t partial_cap, int64_t min_blocks,
                            LrTile& t) {
  const int64_t per_slot = std::max<int64_t>(1, int64_t(g.groups) * g.ksize * g.ksize);
  const int64_t cap_slots = std::max<int64_t>(1, partial_cap / per_slot);
  const int64_t tiles = int64_t(t.tiles_x) * t.tiles_y;
  t.tiles_per_block = lr_ceil_div_pos(tiles, std::min(tiles, cap_slots));
  t.tile_slots = lr_ceil_div_pos(tiles, t.tiles_per_block);
  const int64_t per_chunk = per_slot * t.tile_slots;
  const int64_t n = std::max(1, g.n);
  const int64_t by_budget = partial_budget / per_chunk;
  const int64_t by_waves = (min_blocks + int64_t(g.groups) * t.tile_slots - 1) / (int64_t(g.groups) * t.tile_slots);
  const int64_t by_cap = std::max<int64_t>(1, cap_slots / t.tile_slots);
  const int64_t want = std::max<int64_t>(1, std::min({n, by_cap, std::max(by_budget, by_waves)}));
  t.n_per = lr_ceil_div_pos(n, want);
  t.n_chunks = lr_ceil_div_pos(n, t.n_per);
}

// Gather pass (gradients of key, value and geo_prior): one thread per input pixel; the tile stages, over
// the outputs whose windows reach it, the statistics {q, lse, D} and kChannelChunk grad_out planes
// (interleaved), and the group's geo_prior. Every launch also holds the per-warp geo_prior partial sums.
inline LrTile lr_plan_gather_pass(const LrGeom& g, int64_t scalar_bytes, int64_t acc_bytes, int64_t limit,
                                  int64_t partial_budget, int64_t partial_cap, int64_t min_blocks) {
  const int64_t kk = int64_t(g.ksize) * g.ksize;
  const int64_t halo = 2 * int64_t(g.radius) * g.dilation;
  auto rows = [&](int th) { return std::min<int64_t>(g.out_h, (th - 1 + halo) / g.stride + 1); };
  auto cols = [&](int tw) { return std::min<int64_t>(g.out_w, (tw - 1 + halo) / g.stride + 1); };
  auto off_a = [&](int tw, int th) { return int64_t(tw) * th / 32 * kOffsetChunk * acc_bytes; };
  auto off_b = [&](int tw, int th) { return lr_align16(off_a(tw, th) + kk * acc_bytes); };
  auto bytes = [&](int tw, int th) { return off_b(tw, th) + rows(th) * cols(tw) * (4 + kChannelChunk) * acc_bytes; };
  LrTile t{};
  lr_block_shape(g.height, g.width, t.tw, t.th);
  int tw = t.tw, th = t.th;
  if (lr_fit_block(tw, th, limit, bytes)) {
    t.tw = tw;
    t.th = th;
    t.tiled = 1;
    t.rh = static_cast<int>(rows(th));
    t.rw = static_cast<int>(cols(tw));
    t.smem = bytes(tw, th);
    t.off_a = static_cast<int>(off_a(tw, th));
    t.off_b = static_cast<int>(off_b(tw, th));
  } else {
    t.smem = off_a(t.tw, t.th);
  }
  t.rows_per_thread = 1;
  t.tiles_x = lr_ceil_div_pos(g.width, t.tw);
  t.tiles_y = lr_ceil_div_pos(g.height, t.th);
  lr_split_gather(g, partial_budget, partial_cap, min_blocks, t);
  return t;
}

}  // namespace cuda
}  // namespace lrrobust
