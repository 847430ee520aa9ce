#pragma once
// Argument checks shared by every op. Each raises a Python exception (ValueError / TypeError /
// RuntimeError) whose message names the op, the argument and what was expected.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cctype>
#include <string>

namespace sparsenas {

// The dtype as Python spells it (float32, not Float), so that these messages match the Python
// contract of sparsenas/ops/_checks.py word for word.
inline std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kBool: return "bool";
    case at::kComplexFloat: return "complex64";
    case at::kComplexDouble: return "complex128";
    default: {
      // The float8 types and the rest: Python's name is c10's in lower case
      // (Float8_e4m3fn -> float8_e4m3fn).
      std::string name = c10::toString(type);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return name;
    }
  }
}

inline std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::string s = "a tensor of shape [";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  s += "], dtype ";
  s += dtype_name(t.scalar_type());
  s += ", device " + t.device().str();
  return s;
}

// The floating dtypes the kernels compute in (not the float8 storage types).
inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  const auto type = t.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kDouble || type == at::kBFloat16 ||
                       type == at::kHalf,
                   op, "(): argument '", arg,
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
                   "' must have the dtype of '", ref_arg, "' (", dtype_name(ref.scalar_type()),
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

// A weight mask is bool, uint8 (0/1) or floating with the weight's dtype (soft); a bit-packed
// mask (packed=true) is uint8.
inline void check_mask_dtype(const char* op, const at::Tensor& mask, const at::Tensor& weight,
                             bool packed) {
  if (packed) {
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kByte, op,
                     "(): argument 'mask' must be a uint8 bit-packed mask when packed=True, got ",
                     describe(mask));
    return;
  }
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte ||
                       mask.scalar_type() == weight.scalar_type(),
                   op, "(): argument 'mask' must be bool, uint8 or ", dtype_name(weight.scalar_type()),
                   " (a soft mask with the weight's dtype), got ", describe(mask));
}

// Validates an optional bias: [out], or [K, out] per candidate in the K-candidate form, with x's
// dtype and device. Returns whether it is per candidate.
inline bool check_bias(const char* op, const c10::optional<at::Tensor>& bias, const at::Tensor& x,
                       bool candidate_form, int64_t candidates, const char* candidates_from,
                       int64_t out, const char* out_what) {
  if (!bias.has_value() || !bias->defined()) return false;
  const at::Tensor& b = *bias;
  check_same_dtype(op, "bias", b, "x", x);
  check_same_device(op, "bias", b, "x", x);
  TORCH_CHECK_VALUE(b.dim() == 1 || (candidate_form && b.dim() == 2), op,
                    "(): argument 'bias' must be [out]", candidate_form ? " or [K, out]" : "",
                    ", got ", describe(b));
  if (b.dim() == 2) check_size(op, "bias", b, 0, candidates, candidates_from);
  check_size(op, "bias", b, b.dim() - 1, out, out_what);
  return b.dim() == 2;
}

}  // namespace sparsenas
