// Local relation op (paper Sec. 4): the CUDA kernels for float, one translation unit per dtype.
#include "lr_launch_impl.cuh"

namespace lrrobust {
namespace cuda {

template at::Tensor lr_forward<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const LrGeom&, int64_t);
template std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lr_backward<float>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const LrGeom&,
    int64_t, int64_t);

}  // namespace cuda
}  // namespace lrrobust
