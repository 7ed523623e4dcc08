// Local relation op (Hu et al., ICCV 2019, Sec. 4): registration of the CUDA kernels.
// The kernels are in lr_kernels.cuh (compiled in lr_cuda_<dtype>.cu), the host side in lr_host.cuh.
// Host code only: the device passes of nvcc (one per architecture, __CUDA_ARCH__ defined) see an empty file,
// which saves them parsing the heavy PyTorch headers (about 15 s of CPU per build).
#if !defined(__CUDA_ARCH__)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "lr_host.cuh"

namespace lrrobust {
namespace {

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "local_relation (CUDA): ", name, " must be a CUDA tensor, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor> local_relation_forward_cuda(const at::Tensor& query, const at::Tensor& key,
                                                               const at::Tensor& value, const at::Tensor& geo_prior,
                                                               int64_t kernel_size, int64_t stride, int64_t dilation,
                                                               int64_t composability) {
  check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  check_cuda(value, "value");
  const c10::cuda::CUDAGuard guard(value.device());
  return cuda::lr_forward_checked(query, key, value, geo_prior, kernel_size, stride, dilation, composability,
                                  cuda::kSharedLimit);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> local_relation_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& geo_prior, const at::Tensor& out, const at::Tensor& lse, int64_t kernel_size, int64_t stride,
    int64_t dilation, int64_t composability) {
  check_local_relation_inputs(query, key, value, geo_prior, kernel_size, stride, dilation, composability);
  check_cuda(value, "value");
  check_cuda(grad_out, "grad_out");
  const c10::cuda::CUDAGuard guard(value.device());
  int sms = 0;  // the gather pass aims at kMinWaves blocks per multiprocessor of this device
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const cuda::LrLimits lim{cuda::kSharedLimit, cuda::kPartialBudget, cuda::kPartialCap, int64_t(cuda::kMinWaves) * sms};
  return cuda::lr_backward_checked(grad_out, query, key, value, geo_prior, out, lse, kernel_size, stride, dilation,
                                   composability, lim);
}

}  // namespace
}  // namespace lrrobust

TORCH_LIBRARY_IMPL(lrrobust, CUDA, m) {
  m.impl("local_relation_forward", &lrrobust::local_relation_forward_cuda);
  m.impl("local_relation_backward", &lrrobust::local_relation_backward_cuda);
}

#endif  // !defined(__CUDA_ARCH__)
