// Input checks shared by the CPU and CUDA kernels of the local relation op (paper Sec. 4).
// Every check names the problem, so a bad call is a RuntimeError in Python, never a crash.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace lrrobust {

enum Composability : int64_t { kSqDiff = 0, kAbsDiff = 1, kProduct = 2 };

// Bounds of the window parameters (the same in lrrobust/ops/checks.py and the docstring of local_relation), so
// that no index arithmetic of the kernels can overflow. The CPU kernel forms pixel offsets in int64; the CUDA
// kernel in int32, for maps below 2^29 pixels a side, where every sum of a coordinate, a stride step and the
// window's reach (K-1)/2 * dilation stays below 2^31. K*K (the geo_prior entries per group) stays below 2^30.
constexpr int64_t kMaxKernelSize = (int64_t{1} << 15) - 1;  // 32767
constexpr int64_t kMaxStride = int64_t{1} << 28;            // 268435456
constexpr int64_t kMaxDilation = int64_t{1} << 28;
constexpr int64_t kMaxReach = int64_t{1} << 28;  // (kernel_size - 1) / 2 * dilation

struct LocalRelationShape {
  int64_t n, groups, channels, per_group, height, width, out_height, out_width, kernel_size, stride, dilation;
};

inline LocalRelationShape check_local_relation_inputs(const at::Tensor& query, const at::Tensor& key,
                                                      const at::Tensor& value, const at::Tensor& geo_prior,
                                                      int64_t kernel_size, int64_t stride, int64_t dilation,
                                                      int64_t composability) {
  TORCH_CHECK(query.dim() == 4, "local_relation: query must be 4-D (N, G, Ho, Wo), got ", query.dim(), "-D");
  TORCH_CHECK(key.dim() == 4, "local_relation: key must be 4-D (N, G, H, W), got ", key.dim(), "-D");
  TORCH_CHECK(value.dim() == 4, "local_relation: value must be 4-D (N, C, H, W), got ", value.dim(), "-D");
  TORCH_CHECK(geo_prior.dim() == 3, "local_relation: geo_prior must be 3-D (G, K, K), got ", geo_prior.dim(), "-D");
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, "local_relation: kernel_size must be odd and >= 1, got ",
              kernel_size);
  TORCH_CHECK(kernel_size <= kMaxKernelSize, "local_relation: kernel_size must be at most ", kMaxKernelSize, ", got ",
              kernel_size);
  TORCH_CHECK(stride >= 1 && stride <= kMaxStride, "local_relation: stride must be in [1, 2^28 = ", kMaxStride,
              "], got ", stride);
  TORCH_CHECK(dilation >= 1 && dilation <= kMaxDilation, "local_relation: dilation must be in [1, 2^28 = ",
              kMaxDilation, "], got ", dilation);
  // Both bounded above, so the product fits in int64.
  TORCH_CHECK((kernel_size - 1) / 2 * dilation <= kMaxReach, "local_relation: the window reaches (kernel_size - 1)",
              " / 2 * dilation = ", (kernel_size - 1) / 2 * dilation, " pixels from its centre; at most 2^28 = ",
              kMaxReach, " (kernel_size ", kernel_size, ", dilation ", dilation, ")");
  TORCH_CHECK(composability >= 0 && composability <= 2,
              "local_relation: composability must be 0 (sqdiff), 1 (absdiff) or 2 (product), got ", composability);
  TORCH_CHECK(query.device() == key.device() && key.device() == value.device() && value.device() == geo_prior.device(),
              "local_relation: query, key, value and geo_prior must be on one device, got ", query.device(), ", ",
              key.device(), ", ", value.device(), " and ", geo_prior.device());
  TORCH_CHECK(query.scalar_type() == key.scalar_type() && key.scalar_type() == value.scalar_type() &&
                  value.scalar_type() == geo_prior.scalar_type(),
              "local_relation: query, key, value and geo_prior must have one dtype");
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), "local_relation: tensors must be floating point, got ",
              value.scalar_type());

  LocalRelationShape s{};
  s.n = key.size(0);
  s.groups = key.size(1);
  s.height = key.size(2);
  s.width = key.size(3);
  s.channels = value.size(1);
  s.kernel_size = kernel_size;
  s.stride = stride;
  s.dilation = dilation;
  s.out_height = (s.height + stride - 1) / stride;
  s.out_width = (s.width + stride - 1) / stride;
  TORCH_CHECK(s.groups >= 1, "local_relation: key must have at least one group");
  TORCH_CHECK(value.size(0) == s.n && value.size(2) == s.height && value.size(3) == s.width,
              "local_relation: value ", value.sizes(), " must match key ", key.sizes(), " in N, H and W");
  TORCH_CHECK(query.size(0) == s.n && query.size(1) == s.groups && query.size(2) == s.out_height &&
                  query.size(3) == s.out_width,
              "local_relation: query ", query.sizes(), " must be (N, G, ceil(H/stride), ceil(W/stride)) = (", s.n,
              ", ", s.groups, ", ", s.out_height, ", ", s.out_width, ")");
  TORCH_CHECK(geo_prior.size(0) == s.groups && geo_prior.size(1) == kernel_size && geo_prior.size(2) == kernel_size,
              "local_relation: geo_prior ", geo_prior.sizes(), " must be (G, K, K) = (", s.groups, ", ", kernel_size,
              ", ", kernel_size, ")");
  TORCH_CHECK(s.channels >= 1, "local_relation: value must have at least one channel");
  s.per_group = (s.channels + s.groups - 1) / s.groups;
  TORCH_CHECK((s.groups - 1) * s.per_group < s.channels, "local_relation: ", s.groups, " groups for ", s.channels,
              " channels leaves the last group without channels (m = ceil(C/G) = ", s.per_group,
              "); choose G so that (G-1)*ceil(C/G) < C");
  return s;
}

// The dtype of the forward's log-sum-exp: the accumulation type (at::opmath_type), double for double, else float.
inline at::ScalarType lse_dtype_of(at::ScalarType value_dtype) {
  return value_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The backward's saved forward results: out (N, C, Ho, Wo) in value's dtype and lse (N, G, Ho, Wo) in
// lse_dtype_of(value's dtype), both on value's device.
inline void check_saved_forward(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& value,
                                const LocalRelationShape& s) {
  TORCH_CHECK(out.sizes() == at::IntArrayRef({s.n, s.channels, s.out_height, s.out_width}),
              "local_relation_backward: out ", out.sizes(), " must be the forward's output (", s.n, ", ", s.channels,
              ", ", s.out_height, ", ", s.out_width, ")");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.n, s.groups, s.out_height, s.out_width}),
              "local_relation_backward: lse ", lse.sizes(), " must be the forward's log-sum-exp (", s.n, ", ",
              s.groups, ", ", s.out_height, ", ", s.out_width, ")");
  TORCH_CHECK(out.device() == value.device() && lse.device() == value.device(),
              "local_relation_backward: out and lse must be on the inputs' device");
  TORCH_CHECK(out.scalar_type() == value.scalar_type() && lse.scalar_type() == lse_dtype_of(value.scalar_type()),
              "local_relation_backward: out must have value's dtype and lse ", lse_dtype_of(value.scalar_type()),
              ", got ", out.scalar_type(), " and ", lse.scalar_type());
}

}  // namespace lrrobust
