// Local relation op (paper Sec. 4): the CUDA kernels for c10::BFloat16, one translation unit per dtype.
#include "lr_run_impl.cuh"

namespace lrrobust {
namespace cuda {

using T = c10::BFloat16;
using A = at::opmath_type<T>;
template void lr_run_forward<T>(const T*, const T*, const T*, const T*, T*, A*, const LrGeom&, const LrTile&,
                                LrStream);
template void lr_run_stats<T>(const T*, const T*, const T*, const T*, const T*, const T*, const A*, T*, A*,
                              const LrGeom&, const LrTile&, LrStream);
template void lr_run_gather<T>(const T*, const T*, const T*, const T*, const T*, const A*, const A*, T*, T*, A*,
                               const LrGeom&, const LrTile&, LrStream);
template void lr_run_geo_reduce<T>(const A*, int64_t, int64_t, T*, LrStream);

}  // namespace cuda
}  // namespace lrrobust
