"""The input contract of the public ops, written once.

Every public op calls its contract here before it dispatches, so the native kernels, the
pure-PyTorch references (also the fallback when the extension does not load) and the fake
kernels (``torch.compile``, meta tensors) reject the same inputs with the same exception and
message. The C++ checks (``csrc/common/checks.h``, ``csrc/ops/*.cpp``) state the same rules in the
same words; they stay as the safety net of direct ``torch.ops.sparsenas`` calls.

Conventions: ``TypeError`` for a wrong Python type or dtype, ``ValueError`` for a wrong shape,
size, device or value. Every message starts with ``<op>(): argument '<name>'`` and says what was
expected and what was given.

On the native path the public functions check only what the dispatcher would otherwise report
in its own words (Python types: a list where a tensor belongs, a float where an int belongs) and
leave the rest to the C++ checks, which keeps a call at batch 1 as cheap as the bare op;
tests/test_input_contract.py verifies that both paths give the same message for every row of its
table. A meta tensor among the arguments of a native call reaches the fake kernel, which runs the
full contract here.

Only metadata is read here (no device synchronisation). Checks that read tensor values (CSR
``row_ptr`` / ``col_idx`` and N:M ``indices`` ranges) are ``*_values`` functions that the
reference path calls; the native CPU kernels check the same ranges while they compute.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(t: object) -> str:
    """The C++ ``describe``: 'a tensor of shape [2, 3], dtype float32, device cpu'."""
    if not isinstance(t, Tensor):
        return f"a {type(t).__name__}"
    shape = ", ".join(str(s) for s in t.shape)
    return f"a tensor of shape [{shape}], dtype {dtype_name(t.dtype)}, device {t.device}"


def tensor(op: str, arg: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}(): argument '{arg}' must be a tensor, got {describe(t)}")


def kernel_device(op: str, arg: str, t: object) -> str:
    """The device type of the tensor argument that picks the kernel."""
    tensor(op, arg, t)
    return t.device.type


def native_arguments(op: str, tensors: tuple = (), optional: tuple = (),
                     flags: tuple = ()) -> None:
    """The Python-type rules of a native call: (name, value) pairs of tensor arguments, optional
    tensor arguments and bool flags."""
    for arg, t in tensors:
        tensor(op, arg, t)
    for arg, t in optional:
        optional_tensor(op, arg, t)
    for arg, value in flags:
        flag(op, arg, value)


def optional_tensor(op: str, arg: str, t: object) -> None:
    if t is not None:
        tensor(op, arg, t)


def data_device(op: str, arg: str, t: Tensor) -> None:
    """The op computes values: a meta tensor (no data) is refused. Fake tensors (torch.compile)
    report their real device and pass; a non-tensor is left to :func:`tensor`."""
    if isinstance(t, Tensor) and t.device.type == "meta":
        raise ValueError(f"{op}(): argument '{arg}' must be on a device that holds data (CPU or "
                         f"CUDA); the op computes values and a meta tensor has none; got "
                         f"{describe(t)}")


def device_argument(op: str, device: object) -> torch.device:
    """A ``device=`` argument as a torch.device with data (cpu, cuda, ...)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{op}(): argument 'device' must name a device such as 'cpu' or "
                         f"'cuda', got {device!r}") from error
    if resolved.type == "meta":
        raise ValueError(f"{op}(): argument 'device' must be a device that holds data (CPU or "
                         "CUDA); the op computes values and the meta device has none")
    return resolved


def floating(op: str, arg: str, t: Tensor) -> None:
    if t.dtype not in FLOATING:
        raise TypeError(f"{op}(): argument '{arg}' must be a floating-point tensor (float32, "
                        f"float64, bfloat16 or float16), got {describe(t)}")


def same_device(op: str, arg: str, t: Tensor | None, ref_arg: str, ref: Tensor) -> None:
    if t is not None and t.device != ref.device:
        raise ValueError(f"{op}(): argument '{arg}' must be on the same device as '{ref_arg}' "
                         f"({ref.device}), got {describe(t)}")


def same_dtype(op: str, arg: str, t: Tensor, ref_arg: str, ref: Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}(): argument '{arg}' must have the dtype of '{ref_arg}' "
                        f"({dtype_name(ref.dtype)}), got {describe(t)}")


def dim(op: str, arg: str, t: Tensor, expected: int, layout: str) -> None:
    if t.dim() != expected:
        raise ValueError(f"{op}(): argument '{arg}' must be {expected}-D {layout}, got "
                         f"{describe(t)}")


def size(op: str, arg: str, t: Tensor, d: int, expected: int, what: str) -> None:
    if t.shape[d] != expected:
        raise ValueError(f"{op}(): argument '{arg}' must have size {expected} ({what}) in "
                         f"dimension {d % t.dim()}, got {describe(t)}")


def integer(op: str, arg: str, value: object, low: int = -INT64_MAX - 1,
            high: int = INT64_MAX) -> int:
    """A Python / numpy integer (not a bool; a SymInt while tracing) in [low, high]."""
    # A plain int in range is the common case; the general checks below cost ~1 µs per call.
    if type(value) is int and low <= value <= high:
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{op}(): argument '{arg}' must be an int, got {describe(value)}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{op}(): argument '{arg}' must be in [{low}, {high}], got {value}")
    return value


def flag(op: str, arg: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{arg}' must be a bool, got {describe(value)}")
    return value


def packed_width(n: int) -> int:
    return (n + 7) // 8


# ---- masked_linear / masked_conv2d -------------------------------------------------------------

def mask_dtype(op: str, mask: Tensor, weight: Tensor, packed: bool) -> None:
    if packed:
        if mask.dtype != torch.uint8:
            raise TypeError(f"{op}(): argument 'mask' must be a uint8 bit-packed mask when "
                            f"packed=True, got {describe(mask)}")
        return
    if mask.dtype not in (torch.bool, torch.uint8, weight.dtype):
        raise TypeError(f"{op}(): argument 'mask' must be bool, uint8 or "
                        f"{dtype_name(weight.dtype)} (a soft mask with the weight's dtype), got "
                        f"{describe(mask)}")


def bias(op: str, b: Tensor | None, x: Tensor, candidate_form: bool, candidates: int,
         candidates_from: str, out: int, out_what: str) -> None:
    if b is None:
        return
    same_dtype(op, "bias", b, "x", x)
    same_device(op, "bias", b, "x", x)
    if not (b.dim() == 1 or (candidate_form and b.dim() == 2)):
        raise ValueError(f"{op}(): argument 'bias' must be [out]"
                         f"{' or [K, out]' if candidate_form else ''}, got {describe(b)}")
    if b.dim() == 2:
        size(op, "bias", b, 0, candidates, candidates_from)
    size(op, "bias", b, -1, out, out_what)


def masked_operands(op: str, x: Tensor, weight: Tensor, mask: Tensor, b: Tensor | None,
                    packed: bool) -> None:
    """The types, dtypes and devices of x, weight, mask and bias (both masked ops)."""
    for arg, t in (("x", x), ("weight", weight), ("mask", mask)):
        tensor(op, arg, t)
    optional_tensor(op, "bias", b)
    flag(op, "packed", packed)
    floating(op, "x", x)
    same_dtype(op, "weight", weight, "x", x)
    same_device(op, "weight", weight, "x", x)
    same_device(op, "mask", mask, "x", x)
    mask_dtype(op, mask, weight, packed)


def masked_linear(x: Tensor, weight: Tensor, mask: Tensor, b: Tensor | None, packed: bool,
                  op: str = "masked_linear") -> None:
    """The rules of ``masked_linear`` (csrc/ops/masked_linear.cpp: check_masked_linear)."""
    masked_operands(op, x, weight, mask, b, packed)
    if mask.dim() not in (2, 3):
        raise ValueError(f"{op}(): argument 'mask' must be [out, in] or [K, out, in] "
                         f"(K candidates), got {describe(mask)}")
    candidate_form = mask.dim() == 3
    candidates = mask.shape[0] if candidate_form else 1
    if not (weight.dim() == 2 or (candidate_form and weight.dim() == 3)):
        raise ValueError(f"{op}(): argument 'weight' must be [out, in]"
                         f"{' or [K, out, in]' if candidate_form else ''}, got {describe(weight)}")
    if weight.dim() == 3:
        size(op, "weight", weight, 0, candidates, "K, from mask")
    out_features, in_features = weight.shape[-2:]
    size(op, "mask", mask, -2, out_features, "out_features, from weight")
    if packed:
        size(op, "mask", mask, -1, packed_width(in_features), "ceil(in_features / 8), from weight")
    else:
        size(op, "mask", mask, -1, in_features, "in_features, from weight")
    if x.dim() < 1:
        raise ValueError(f"{op}(): argument 'x' must have at least one dimension, got "
                         f"{describe(x)}")
    size(op, "x", x, -1, in_features, "in_features, from weight")
    if candidate_form:
        if x.dim() < 2:
            raise ValueError(f"{op}(): argument 'x' must be [K, ..., features] with K candidate "
                             f"masks, got {describe(x)}")
        size(op, "x", x, 0, candidates, "K, from mask")
    bias(op, b, x, candidate_form, candidates, "K, from mask", out_features,
         "out_features, from weight")


def conv_pair(op: str, arg: str, value: object, minimum: int) -> tuple[int, int]:
    """stride / padding / dilation: an int or two ints in [minimum, 2^31 - 1] (the sizes the
    convolution backends index with)."""
    # The common cases first (plain ints, as nn.Conv2d stores them): the general checks below use
    # abstract-class isinstance tests that cost microseconds on every layer call.
    if type(value) is int:
        if minimum <= value <= INT32_MAX:
            return value, value
    elif type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if minimum <= value[0] <= INT32_MAX and minimum <= value[1] <= INT32_MAX:
            return value
    pair = (value, value) if isinstance(value, (numbers.Integral, torch.SymInt)) else value
    if isinstance(pair, Tensor) or not isinstance(pair, (tuple, list)):
        raise TypeError(f"{op}(): argument '{arg}' must be an int or a pair of ints (height, "
                        f"width), got {describe(value)}")
    if len(pair) != 2:
        raise ValueError(f"{op}(): argument '{arg}' must have 2 values (height, width), got "
                         f"{len(pair)}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"{op}(): argument '{arg}' must hold ints, got {describe(v)}")
    if not all(minimum <= v <= INT32_MAX for v in pair):
        raise ValueError(f"{op}(): argument '{arg}' must be in [{minimum}, 2^31 - 1] in each "
                         f"dimension, got [{pair[0]}, {pair[1]}]")
    return int(pair[0]), int(pair[1])


def masked_conv2d(x: Tensor, weight: Tensor, mask: Tensor, b: Tensor | None, stride: object,
                  padding: object, dilation: object, groups: object, packed: bool,
                  op: str = "masked_conv2d",
                  ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """The rules of ``masked_conv2d`` (csrc/ops/masked_conv2d.cpp: check_masked_conv2d); returns
    (stride, padding, dilation, groups) as ints."""
    masked_operands(op, x, weight, mask, b, packed)
    stride = conv_pair(op, "stride", stride, 1)
    padding = conv_pair(op, "padding", padding, 0)
    dilation = conv_pair(op, "dilation", dilation, 1)
    groups = integer(op, "groups", groups, 1, INT32_MAX)
    if x.dim() not in (4, 5):
        raise ValueError(f"{op}(): argument 'x' must be [N, C, H, W] or [K, N, C, H, W] "
                         f"(K candidates), got {describe(x)}")
    candidate_form = x.dim() == 5
    candidates = x.shape[0] if candidate_form else 1
    batch, channels, height, width = x.shape[-4:]
    if not (weight.dim() == 4 or (candidate_form and weight.dim() == 5)):
        raise ValueError(f"{op}(): argument 'weight' must be [out, C / groups, kh, kw]"
                         f"{' or [K, out, C / groups, kh, kw]' if candidate_form else ''}, got "
                         f"{describe(weight)}")
    if weight.dim() == 5:
        size(op, "weight", weight, 0, candidates, "K, from x")
    out_channels, _, kernel_h, kernel_w = weight.shape[-4:]
    if channels % groups:
        raise ValueError(f"{op}(): argument 'groups' ({groups}) must divide the input channels "
                         f"of 'x' ({channels}), got x {describe(x)}")
    if out_channels % groups:
        raise ValueError(f"{op}(): argument 'groups' ({groups}) must divide the output channels "
                         f"of 'weight' ({out_channels}), got weight {describe(weight)}")
    size(op, "weight", weight, -3, channels // groups, "C / groups, from x and groups")
    if kernel_h < 1 or kernel_w < 1:
        raise ValueError(f"{op}(): argument 'weight' must have a kernel of at least 1x1, got "
                         f"{describe(weight)}")
    fan_in = channels // groups * kernel_h * kernel_w
    mask_dims = (2 if packed else 4) + candidate_form
    if mask.dim() != mask_dims:
        layout = ("[K, out, ceil(C / groups * kh * kw / 8)]" if candidate_form
                  else "[out, ceil(C / groups * kh * kw / 8)]") if packed else (
                  "[K, out, C / groups, kh, kw]" if candidate_form
                  else "[out, C / groups, kh, kw] (the weight's shape)")
        raise ValueError(f"{op}(): argument 'mask' must be {layout} for this x, got "
                         f"{describe(mask)}")
    if candidate_form:
        size(op, "mask", mask, 0, candidates, "K, from x")
    lead = int(candidate_form)
    if packed:
        size(op, "mask", mask, lead, out_channels, "out, from weight")
        size(op, "mask", mask, lead + 1, packed_width(fan_in),
             "ceil(C / groups * kh * kw / 8), from weight")
    else:
        whats = ("out, from weight", "C / groups, from weight", "kh, from weight",
                 "kw, from weight")
        for d, what in enumerate(whats):
            size(op, "mask", mask, lead + d, weight.shape[-4 + d], what)
    bias(op, b, x, candidate_form, candidates, "K, from x", out_channels, "out, from weight")
    span = (dilation[0] * (kernel_h - 1) + 1, dilation[1] * (kernel_w - 1) + 1)
    padded = (height + 2 * padding[0], width + 2 * padding[1])
    if padded[0] < span[0] or padded[1] < span[1]:
        raise ValueError(f"{op}(): argument 'x' is too small: padded input {padded[0]}x"
                         f"{padded[1]} is smaller than the dilated kernel {span[0]}x{span[1]} "
                         f"(output size would be < 1), got {describe(x)}")
    if max(*padded, *span) > INT32_MAX:
        raise ValueError(f"{op}(): arguments 'padding' and 'dilation' must keep the padded input "
                         f"and the dilated kernel below 2^31 in each dimension, got padded input "
                         f"{padded[0]}x{padded[1]} and dilated kernel {span[0]}x{span[1]}")
    return stride, padding, dilation, groups


# ---- sparse_linear / nm_linear / nm_mask -------------------------------------------------------

def _sparse_x_and_bias(op: str, x: Tensor, values: Tensor, b: Tensor | None,
                       out_features: int) -> None:
    floating(op, "x", x)
    same_dtype(op, "values", values, "x", x)
    same_device(op, "values", values, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}(): argument 'x' must have at least one dimension, got "
                         f"{describe(x)}")
    if b is not None:
        same_dtype(op, "bias", b, "x", x)
        same_device(op, "bias", b, "x", x)
        dim(op, "bias", b, 1, "[out]")
        size(op, "bias", b, 0, out_features, "out_features, from the sparse weight")


def sparse_linear(x: Tensor, row_ptr: Tensor, col_idx: Tensor, values: Tensor,
                  b: Tensor | None, op: str = "sparse_linear") -> None:
    """The rules of ``sparse_linear`` (csrc/ops/sparse_linear.cpp: check_sparse_linear)."""
    for arg, t in (("x", x), ("row_ptr", row_ptr), ("col_idx", col_idx), ("values", values)):
        tensor(op, arg, t)
    optional_tensor(op, "bias", b)
    if row_ptr.dtype != torch.int32:
        raise TypeError(f"{op}(): argument 'row_ptr' must be int32, got {describe(row_ptr)}")
    if col_idx.dtype != torch.int32:
        raise TypeError(f"{op}(): argument 'col_idx' must be int32, got {describe(col_idx)}")
    dim(op, "row_ptr", row_ptr, 1, "[out + 1]")
    dim(op, "col_idx", col_idx, 1, "[nnz]")
    dim(op, "values", values, 1, "[nnz]")
    if row_ptr.shape[0] < 1:
        raise ValueError(f"{op}(): argument 'row_ptr' must have out + 1 >= 1 entries, got "
                         f"{describe(row_ptr)}")
    size(op, "values", values, 0, col_idx.shape[0], "nnz, from col_idx")
    same_device(op, "row_ptr", row_ptr, "x", x)
    same_device(op, "col_idx", col_idx, "x", x)
    _sparse_x_and_bias(op, x, values, b, row_ptr.shape[0] - 1)
    if x.shape[-1] > INT32_MAX:
        raise ValueError(f"{op}(): argument 'x' has more in_features than int32 column indices "
                         f"can address, got {describe(x)}")


def sparse_linear_values(row_ptr: Tensor, col_idx: Tensor, in_features: int,
                         op: str = "sparse_linear") -> None:
    """The value rules the native CPU kernel checks while it computes (reference path)."""
    nnz = col_idx.shape[0]
    steps = row_ptr.diff()
    if int(row_ptr[0]) != 0 or int(row_ptr[-1]) != nnz or bool((steps < 0).any()):
        raise ValueError(f"{op}(): argument 'row_ptr' must start at 0, never decrease and end at "
                         f"nnz ({nnz}), the length of col_idx")
    if nnz and not bool(((col_idx >= 0) & (col_idx < in_features)).all()):
        raise ValueError(f"{op}(): argument 'col_idx' must hold column indices in [0, "
                         f"in_features = {in_features}), x's last dimension; got an index "
                         "outside that range")


def nm_linear(x: Tensor, values: Tensor, indices: Tensor, m: object, b: Tensor | None,
              op: str = "nm_linear") -> int:
    """The rules of ``nm_linear`` (csrc/ops/sparse_linear.cpp: check_nm_linear); returns m."""
    for arg, t in (("x", x), ("values", values), ("indices", indices)):
        tensor(op, arg, t)
    optional_tensor(op, "bias", b)
    m = integer(op, "m", m)
    if not 1 <= m <= 256:
        raise ValueError(f"{op}(): argument 'm' must be in [1, 256], got {m}")
    if indices.dtype != torch.uint8:
        raise TypeError(f"{op}(): argument 'indices' must be uint8, got {describe(indices)}")
    dim(op, "values", values, 2, "[out, in / M * N]")
    dim(op, "indices", indices, 2, "[out, in / M * N]")
    same_device(op, "indices", indices, "x", x)
    _sparse_x_and_bias(op, x, values, b, values.shape[0])
    size(op, "indices", indices, 0, values.shape[0], "out_features, from values")
    size(op, "indices", indices, 1, values.shape[1], "in / M * N, from values")
    in_features = x.shape[-1]
    if in_features % m:
        raise ValueError(f"{op}(): argument 'm' ({m}) must divide in_features, x's last "
                         f"dimension; got {describe(x)}")
    groups = in_features // m
    if groups == 0:
        size(op, "values", values, 1, 0, "in / M * N, from x and m")
    elif values.shape[1] % groups or values.shape[1] // groups > m:
        raise ValueError(f"{op}(): argument 'values' must have N * in / M columns with N <= M "
                         f"(in = {in_features}, M = {m}), got {describe(values)}")
    return m


def nm_linear_values(indices: Tensor, m: int, op: str = "nm_linear") -> None:
    """The value rule the native CPU kernel checks while it computes (reference path)."""
    if indices.numel() and int(indices.max()) >= m:
        raise ValueError(f"{op}(): argument 'indices' must hold positions in [0, m = {m}) inside "
                         "each group; got an index outside that range")


def nm_sizes(op: str, weight: Tensor, n: object, m: object) -> tuple[int, int]:
    m = integer(op, "m", m)
    n = integer(op, "n", n)
    if m < 1:
        raise ValueError(f"{op}(): argument 'm' must be >= 1, got {m}")
    if not 0 <= n <= m:
        raise ValueError(f"{op}(): argument 'n' must be in [0, m] (m = {m}), got {n}")
    if weight.shape[1] % m:
        raise ValueError(f"{op}(): argument 'm' ({m}) must divide in_features, weight's "
                         f"dimension 1; got {describe(weight)}")
    return n, m


def nm_mask(weight: Tensor, n: object, m: object, op: str = "nm_mask") -> tuple[int, int]:
    """The rules of ``nm_mask`` (csrc/ops/sparse_linear.cpp: check_nm_mask); returns (n, m)."""
    tensor(op, "weight", weight)
    floating(op, "weight", weight)
    dim(op, "weight", weight, 2, "[out, in]")
    return nm_sizes(op, weight, n, m)


# ---- bit packing -------------------------------------------------------------------------------

def pack_mask(mask: Tensor, op: str = "pack_mask") -> None:
    tensor(op, "mask", mask)
    if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
        raise TypeError(f"{op}(): argument 'mask' must be bool or an integer tensor of 0 / 1, "
                        f"got {describe(mask)}")
    if mask.dim() < 1:
        raise ValueError(f"{op}(): argument 'mask' must be [..., n], got {describe(mask)}")


def unpack_mask(bits: Tensor, n: object, op: str = "unpack_mask") -> int:
    tensor(op, "bits", bits)
    n = integer(op, "n", n, 0)
    if bits.dtype != torch.uint8:
        raise TypeError(f"{op}(): argument 'bits' must be a uint8 bit-packed mask, got "
                        f"{describe(bits)}")
    if bits.dim() < 1:
        raise ValueError(f"{op}(): argument 'bits' must be [..., ceil(n / 8)], got "
                         f"{describe(bits)}")
    size(op, "bits", bits, -1, packed_width(n), f"ceil(n / 8) for n = {n}")
    return n


# ---- sampling ----------------------------------------------------------------------------------

def philox4x32_10(counter: Tensor, key: Tensor, op: str = "philox4x32_10") -> None:
    """The metadata rules of ``philox4x32_10`` (csrc/ops/mask_sampling.cpp)."""
    tensor(op, "counter", counter)
    tensor(op, "key", key)
    for arg, t in (("counter", counter), ("key", key)):
        if t.dtype != torch.int64:
            raise TypeError(f"{op}(): argument '{arg}' must be int64 (32-bit words), got "
                            f"{describe(t)}")
    dim(op, "counter", counter, 2, "[N, 4]")
    dim(op, "key", key, 2, "[N, 2]")
    size(op, "counter", counter, 1, 4, "four 32-bit counter words")
    size(op, "key", key, 1, 2, "two 32-bit key words")
    size(op, "key", key, 0, counter.shape[0], "N, from counter")
    same_device(op, "key", key, "counter", counter)


def words_values(op: str, arg: str, t: Tensor) -> None:
    """32-bit words in [0, 2^32) (reference path; the native kernels check the same)."""
    if t.numel():
        low, high = int(t.min()), int(t.max())
        if low < 0 or high > 0xFFFF_FFFF:
            raise ValueError(f"{op}(): argument '{arg}' must hold 32-bit words in [0, 2^32), got "
                             f"values in [{low}, {high}]")


# ---- NTK blocks --------------------------------------------------------------------------------

def _ntk_common(op: str, out: Tensor, a: Tensor, b: Tensor, bias_term: object,
                sum_outputs: object) -> None:
    for arg, t in (("out", out), ("a", a), ("b", b)):
        tensor(op, arg, t)
    flag(op, "bias", bias_term)
    flag(op, "sum_outputs", sum_outputs)
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}(): argument 'out' must be float32 or float64 (NTK blocks never "
                        f"accumulate in reduced precision), got {describe(out)}")
    floating(op, "a", a)
    floating(op, "b", b)
    same_device(op, "a", a, "out", out)
    same_device(op, "b", b, "out", out)
    dim(op, "a", a, 2, "[rows, in_features]")
    dim(op, "b", b, 3, "[rows, outputs, out_features]")
    size(op, "b", b, 0, a.shape[0], "rows, from a")


def _ntk_out(op: str, out: Tensor, rows: int) -> None:
    dim(op, "out", out, 2, "[rows, rows] kernel matrix")
    size(op, "out", out, 0, rows, "examples (× outputs unless sum_outputs)")
    size(op, "out", out, 1, rows, "examples (× outputs unless sum_outputs)")


def ntk_gram_block(out: Tensor, a: Tensor, b: Tensor, rows_per_example: object,
                   bias_term: object, sum_outputs: object, op: str = "ntk_gram_block_") -> int:
    """The rules of ``ntk_gram_block_`` (csrc/ops/ntk.cpp); returns rows_per_example."""
    _ntk_common(op, out, a, b, bias_term, sum_outputs)
    rows_per_example = integer(op, "rows_per_example", rows_per_example)
    if rows_per_example < 1:
        raise ValueError(f"{op}(): argument 'rows_per_example' must be >= 1, got "
                         f"{rows_per_example}")
    if a.shape[0] % rows_per_example:
        raise ValueError(f"{op}(): argument 'a' must have a multiple of rows_per_example = "
                         f"{rows_per_example} rows, got {describe(a)}")
    examples = a.shape[0] // rows_per_example
    _ntk_out(op, out, examples if sum_outputs else examples * b.shape[1])
    return rows_per_example


def ntk_masked_block(out: Tensor, a: Tensor, b: Tensor, mask: Tensor, bias_term: object,
                     sum_outputs: object, op: str = "ntk_masked_block_") -> None:
    """The rules of ``ntk_masked_block_`` (csrc/ops/ntk.cpp)."""
    _ntk_common(op, out, a, b, bias_term, sum_outputs)
    tensor(op, "mask", mask)
    same_device(op, "mask", mask, "out", out)
    if mask.dtype not in (torch.bool, torch.uint8) and mask.dtype not in FLOATING:
        raise TypeError(f"{op}(): argument 'mask' must be bool, uint8 or floating, got "
                        f"{describe(mask)}")
    dim(op, "mask", mask, 2, "[out_features, in_features]")
    size(op, "mask", mask, 0, b.shape[2], "out_features, from b")
    size(op, "mask", mask, 1, a.shape[1], "in_features, from a")
    _ntk_out(op, out, a.shape[0] if sum_outputs else a.shape[0] * b.shape[1])

