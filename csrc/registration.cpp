// The one place where every sparsenas operator schema is defined. Kernels register themselves
// per device next to their code (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu) with TORCH_LIBRARY_IMPL;
// fakes and autograd are registered in Python (sparsenas/ops/).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include "cpu/path_choice.h"

#ifndef SPARSENAS_VERSION
#define SPARSENAS_VERSION "unknown"
#endif

TORCH_LIBRARY(sparsenas, m) {
  // ---- masked linear / conv ----
  m.def("masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias=None, bool packed=False) -> Tensor");
  m.def("masked_linear_grad_input(Tensor grad, Tensor weight, Tensor mask, bool packed=False) -> Tensor");
  m.def("masked_linear_grad_weight(Tensor grad, Tensor x, Tensor weight, Tensor mask, bool packed=False, bool weight_grad=True, bool mask_grad=False) -> (Tensor, Tensor)");

  // masked conv2d; its backward returns (grad_x, grad_weight, grad_mask, grad_bias), each an
  // empty [0] tensor where output_mask is false.
  m.def("masked_conv2d(Tensor x, Tensor weight, Tensor mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, bool packed=False) -> Tensor");
  m.def("masked_conv2d_backward(Tensor grad, Tensor x, Tensor weight, Tensor mask, int[]? bias_sizes, int[2] stride, int[2] padding, int[2] dilation, int groups, bool packed, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // ---- mask sampling ----
  m.def("uniform_k_mask(Tensor k, int n, int seed, int first_candidate=0, int stream=0, bool packed=False) -> Tensor");
  m.def("topk_mask(Tensor scores, Tensor k, bool packed=False) -> Tensor");
  m.def("gumbel_topk_mask(Tensor weights, Tensor k, int seed, int first_candidate=0, int stream=0, bool packed=False) -> Tensor");
  m.def("philox4x32_10(Tensor counter, Tensor key) -> Tensor");

  // ---- sparse execution ----
  m.def("sparse_linear(Tensor x, Tensor row_ptr, Tensor col_idx, Tensor values, Tensor? bias=None) -> Tensor");
  m.def("sparse_linear_backward(Tensor grad, Tensor x, Tensor row_ptr, Tensor col_idx, Tensor values, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("nm_linear(Tensor x, Tensor values, Tensor indices, int m, Tensor? bias=None) -> Tensor");
  m.def("nm_linear_backward(Tensor grad, Tensor x, Tensor values, Tensor indices, int m, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("nm_mask(Tensor weight, int n, int m) -> Tensor");

  // ---- NTK ----
  m.def("ntk_gram_block_(Tensor(a!) out, Tensor a, Tensor b, int rows_per_example=1, bool bias=True, bool sum_outputs=False) -> ()");
  m.def("ntk_gram_kernel(Tensor[] a, Tensor[] b, int[] rows_per_example, bool sum_outputs, ScalarType dtype) -> Tensor");
  m.def("ntk_masked_block_(Tensor(a!) out, Tensor a, Tensor b, Tensor mask, bool bias=True, bool sum_outputs=False) -> ()");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, module) {
  module.doc() = "sparsenas native operators (registered under torch.ops.sparsenas)";
  module.attr("__version__") = SPARSENAS_VERSION;
  module.attr("torch_version") = SPARSENAS_TORCH_VERSION;
  module.def("kernel_path_choices", &sparsenas::cpu::path_choices,
             "Every CPU kernel path chosen so far in this process: shape class -> 'fused' / 'gemm'.");
  module.def("set_kernel_path_choices", &sparsenas::cpu::set_path_choices, py::arg("choices"),
             "Adds path choices (shape class -> 'fused' / 'gemm'); classes already chosen keep theirs.");
  module.def("use_kernel_path_cache", &sparsenas::cpu::use_path_cache, py::arg("file"),
             "Reads the path choices recorded in file and appends every new choice to it.");
#ifdef SPARSENAS_WITH_CUDA
  module.attr("with_cuda") = true;
  module.attr("cuda_archs") = SPARSENAS_CUDA_ARCHS;
#else
  module.attr("with_cuda") = false;
  module.attr("cuda_archs") = "";
#endif
}
