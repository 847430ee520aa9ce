#pragma once
// Argument checks shared by every op. Each raises a Python exception (ValueError / TypeError /
// RuntimeError) whose message names the op, the argument and what was expected.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace sparsenas {

inline std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::string s = "a tensor of shape [";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  s += "], dtype ";
  s += std::string(c10::toString(t.scalar_type()));
  s += ", device " + t.device().str();
  return s;
}

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, "(): argument '", arg,
                   "' must be a floating-point tensor (float32, float64, bfloat16 or float16), got ",
                   describe(t));
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, "(): argument '", arg,
                    "' must be on the same device as '", ref_arg, "' (", ref.device().str(),
                    "), got ", describe(t));
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, "(): argument '", arg,
                   "' must have the dtype of '", ref_arg, "' (", c10::toString(ref.scalar_type()),
                   "), got ", describe(t));
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, "(): argument '", arg, "' must be ", dim, "-D ", layout,
                    ", got ", describe(t));
}

inline void check_size(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                       int64_t expected, const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, op, "(): argument '", arg, "' must have size ",
                    expected, " (", what, ") in dimension ", dim, ", got ", describe(t));
}

}  // namespace sparsenas
