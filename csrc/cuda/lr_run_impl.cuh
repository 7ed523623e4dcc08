// Definitions of the raw launchers of the local relation op's CUDA kernels (paper Sec. 4): pick the kernel
// variant (shared-memory tiles with the composability fixed at compile time, or direct global reads) and
// launch it. Included by lr_cuda_<dtype>.cu (nvcc) and by the CPU emulator (emu/), which runs the same code.
#pragma once

#include "lr_kernels.cuh"
#include "lr_run.cuh"

namespace lrrobust {
namespace cuda {

// Launches kernel on blocks x (block.x, block.y) threads with smem bytes of dynamic shared memory. The grid
// size is checked by the caller (lr_host.cuh), and so is the launch (C10_CUDA_KERNEL_LAUNCH_CHECK).
template <typename... KernelArgs, typename... Args>
void lr_launch(void (*kernel)(KernelArgs...), int64_t blocks, dim3 block, int64_t smem, LrStream stream,
               Args... args) {
#if defined(__CUDACC__)
  kernel<<<dim3(static_cast<unsigned>(blocks)), block, static_cast<size_t>(smem), stream>>>(args...);
#else
  (void)stream;
  ::lremu::launch(kernel, blocks, block, smem, args...);
#endif
}

inline int64_t lr_window_blocks(const LrTile& t, const LrGeom& g) {
  return int64_t(t.tiles_x) * t.tiles_y * g.groups * g.n;
}
inline int64_t lr_gather_blocks(const LrTile& t, const LrGeom& g) {
  return int64_t(t.tile_slots) * g.groups * t.n_chunks;
}

template <typename scalar_t>
void lr_run_forward(const scalar_t* query, const scalar_t* key, const scalar_t* value, const scalar_t* geo,
                    scalar_t* out, at::opmath_type<scalar_t>* lse, const LrGeom& g, const LrTile& t, LrStream stream) {
  const int64_t blocks = lr_window_blocks(t, g);
  const dim3 block(t.tw, t.th);
  if (t.tiled && t.rows_per_thread > 1) {  // lr_plan_forward's fast path: stride 1, dilation 1
    if (g.kind == 0) {
      lr_launch(lr_forward_rows_kernel<scalar_t, 0>, blocks, block, t.smem, stream, query, key, value, geo, out, lse,
                g, t);
    } else if (g.kind == 1) {
      lr_launch(lr_forward_rows_kernel<scalar_t, 1>, blocks, block, t.smem, stream, query, key, value, geo, out, lse,
                g, t);
    } else {
      lr_launch(lr_forward_rows_kernel<scalar_t, 2>, blocks, block, t.smem, stream, query, key, value, geo, out, lse,
                g, t);
    }
  } else if (!t.tiled) {
    lr_launch(lr_forward_kernel<scalar_t, -1, false>, blocks, block, 0, stream, query, key, value, geo, out, lse,
              g, t);
  } else if (g.kind == 0) {
    lr_launch(lr_forward_kernel<scalar_t, 0, true>, blocks, block, t.smem, stream, query, key, value, geo, out, lse,
              g, t);
  } else if (g.kind == 1) {
    lr_launch(lr_forward_kernel<scalar_t, 1, true>, blocks, block, t.smem, stream, query, key, value, geo, out, lse,
              g, t);
  } else {
    lr_launch(lr_forward_kernel<scalar_t, 2, true>, blocks, block, t.smem, stream, query, key, value, geo, out, lse,
              g, t);
  }
}

template <typename scalar_t>
void lr_run_stats(const scalar_t* grad_out, const scalar_t* query, const scalar_t* key, const scalar_t* value,
                  const scalar_t* geo, const scalar_t* out, const at::opmath_type<scalar_t>* lse,
                  scalar_t* grad_query, at::opmath_type<scalar_t>* dsum, const LrGeom& g, const LrTile& t,
                  LrStream stream) {
  const int64_t blocks = lr_window_blocks(t, g);
  const dim3 block(t.tw, t.th);
  if (t.tiled && t.rows_per_thread > 1) {  // lr_plan_forward's fast path: stride 1, dilation 1
    if (g.kind == 0) {
      lr_launch(lr_stats_rows_kernel<scalar_t, 0>, blocks, block, t.smem, stream, grad_out, query, key, value, geo,
                out, lse, grad_query, dsum, g, t);
    } else if (g.kind == 1) {
      lr_launch(lr_stats_rows_kernel<scalar_t, 1>, blocks, block, t.smem, stream, grad_out, query, key, value, geo,
                out, lse, grad_query, dsum, g, t);
    } else {
      lr_launch(lr_stats_rows_kernel<scalar_t, 2>, blocks, block, t.smem, stream, grad_out, query, key, value, geo,
                out, lse, grad_query, dsum, g, t);
    }
  } else if (!t.tiled) {
    lr_launch(lr_stats_kernel<scalar_t, -1, false>, blocks, block, 0, stream, grad_out, query, key, value, geo,
              out, lse, grad_query, dsum, g, t);
  } else if (g.kind == 0) {
    lr_launch(lr_stats_kernel<scalar_t, 0, true>, blocks, block, t.smem, stream, grad_out, query, key, value, geo,
              out, lse, grad_query, dsum, g, t);
  } else if (g.kind == 1) {
    lr_launch(lr_stats_kernel<scalar_t, 1, true>, blocks, block, t.smem, stream, grad_out, query, key, value, geo,
              out, lse, grad_query, dsum, g, t);
  } else {
    lr_launch(lr_stats_kernel<scalar_t, 2, true>, blocks, block, t.smem, stream, grad_out, query, key, value, geo,
              out, lse, grad_query, dsum, g, t);
  }
}

// The gather kernel with offset chunks of COLS columns (8 for windows up to 8 wide, else 32).
template <typename scalar_t, int COLS>
void lr_run_gather_cols(const scalar_t* grad_out, const scalar_t* query, const scalar_t* key, const scalar_t* value,
                        const scalar_t* geo, const at::opmath_type<scalar_t>* lse,
                        const at::opmath_type<scalar_t>* dsum, scalar_t* grad_key, scalar_t* grad_value,
                        at::opmath_type<scalar_t>* geo_partial, const LrGeom& g, const LrTile& t, LrStream stream) {
  const int64_t blocks = lr_gather_blocks(t, g);
  const dim3 block(t.tw, t.th);
  if (!t.tiled) {
    lr_launch(lr_gather_kernel<scalar_t, -1, false, COLS>, blocks, block, t.smem, stream, grad_out, query, key, value,
              geo, lse, dsum, grad_key, grad_value, geo_partial, g, t);
  } else if (g.kind == 0) {
    lr_launch(lr_gather_kernel<scalar_t, 0, true, COLS>, blocks, block, t.smem, stream, grad_out, query, key, value,
              geo, lse, dsum, grad_key, grad_value, geo_partial, g, t);
  } else if (g.kind == 1) {
    lr_launch(lr_gather_kernel<scalar_t, 1, true, COLS>, blocks, block, t.smem, stream, grad_out, query, key, value,
              geo, lse, dsum, grad_key, grad_value, geo_partial, g, t);
  } else {
    lr_launch(lr_gather_kernel<scalar_t, 2, true, COLS>, blocks, block, t.smem, stream, grad_out, query, key, value,
              geo, lse, dsum, grad_key, grad_value, geo_partial, g, t);
  }
}

template <typename scalar_t>
void lr_run_gather(const scalar_t* grad_out, const scalar_t* query, const scalar_t* key, const scalar_t* value,
                   const scalar_t* geo, const at::opmath_type<scalar_t>* lse, const at::opmath_type<scalar_t>* dsum,
                   scalar_t* grad_key, scalar_t* grad_value, at::opmath_type<scalar_t>* geo_partial, const LrGeom& g,
                   const LrTile& t, LrStream stream) {
  if (g.ksize <= 8) {
    lr_run_gather_cols<scalar_t, 8>(grad_out, query, key, value, geo, lse, dsum, grad_key, grad_value, geo_partial, g,
                                    t, stream);
  } else {
    lr_run_gather_cols<scalar_t, 32>(grad_out, query, key, value, geo, lse, dsum, grad_key, grad_value, geo_partial,
                                     g, t, stream);
  }
}

template <typename scalar_t>
void lr_run_geo_reduce(const at::opmath_type<scalar_t>* partial, int64_t slots, int64_t entries, scalar_t* grad_geo,
                       LrStream stream) {
  using acc_t = at::opmath_type<scalar_t>;
  lr_launch(lr_geo_reduce_kernel<scalar_t>, entries, dim3(kMaxThreads), kMaxThreads * int64_t(sizeof(acc_t)),
            stream, partial, slots, grad_geo);
}

}  // namespace cuda
}  // namespace lrrobust
