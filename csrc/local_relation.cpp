// Schemas of the local relation op (Hu et al., "Local Relation Networks for Image Recognition", Sec. 4).
// Kernels live in cpu/ and cuda/, each registering itself with TORCH_LIBRARY_IMPL; autograd and fake
// (meta) kernels are registered from Python (lrrobust/ops).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module so `import lrrobust._C` loads this library and runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lrrobust, m) {
  // composability: 0 = squared difference (Eq. 3), 1 = absolute difference (Eq. 4), 2 = product (Eq. 5).
  m.def(
      "local_relation_forward(Tensor query, Tensor key, Tensor value, Tensor geo_prior, int kernel_size, "
      "int stride, int dilation, int composability) -> Tensor");
  m.def(
      "local_relation_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor geo_prior, "
      "int kernel_size, int stride, int dilation, int composability) -> (Tensor, Tensor, Tensor, Tensor)");
}
