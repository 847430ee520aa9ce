// The one place where every sparsenas operator schema is defined. Kernels register themselves
// per device next to their code (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu) with TORCH_LIBRARY_IMPL;
// fakes and autograd are registered in Python (sparsenas/ops/).

#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef SPARSENAS_VERSION
#define SPARSENAS_VERSION "unknown"
#endif

TORCH_LIBRARY(sparsenas, m) {
  // ---- masked linear / conv (SPEC §2.1) ----
  m.def("masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias=None, bool packed=False) -> Tensor");
  m.def("masked_linear_grad_input(Tensor grad, Tensor weight, Tensor mask, bool packed=False) -> Tensor");
  m.def("masked_linear_grad_weight(Tensor grad, Tensor x, Tensor weight, Tensor mask, bool packed=False, bool weight_grad=True, bool mask_grad=False) -> (Tensor, Tensor)");

  // ---- mask sampling (SPEC §2.3) ----

  // ---- sparse execution (SPEC §2.2) ----

  // ---- NTK (SPEC §2.4) ----
}

namespace py = pybind11;

PYBIND11_MODULE(_C, module) {
  module.doc() = "sparsenas native operators (registered under torch.ops.sparsenas)";
  module.attr("__version__") = SPARSENAS_VERSION;
  module.attr("torch_version") = SPARSENAS_TORCH_VERSION;
#ifdef SPARSENAS_WITH_CUDA
  module.attr("with_cuda") = true;
  module.attr("cuda_archs") = SPARSENAS_CUDA_ARCHS;
#else
  module.attr("with_cuda") = false;
  module.attr("cuda_archs") = "";
#endif
}
