#include "ops/masked_conv2d.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/checks.h"

namespace sparsenas {

namespace {

constexpr int64_t kMaxConvSize = (int64_t(1) << 31) - 1;

void check_pair(const char* op, const char* arg, c10::IntArrayRef values, int64_t minimum) {
  TORCH_CHECK_VALUE(values.size() == 2, op, "(): argument '", arg,
                    "' must have 2 values (height, width), got ", values.size());
  // Below 2^31: the sizes the convolution backends index with (and no int64 overflow below).
  for (int64_t v : values)
    TORCH_CHECK_VALUE(v >= minimum && v <= kMaxConvSize, op, "(): argument '", arg,
                      "' must be in [", minimum, ", 2^31 - 1] in each dimension, got [",
                      values[0], ", ", values[1], "]");
}

}  // namespace

MaskedConv2dGeometry check_masked_conv2d(const char* op, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& mask,
                                         const c10::optional<at::Tensor>& bias,
                                         c10::IntArrayRef stride, c10::IntArrayRef padding,
                                         c10::IntArrayRef dilation, int64_t groups, bool packed) {
  check_floating(op, "x", x);
  check_same_dtype(op, "weight", weight, "x", x);
  check_same_device(op, "weight", weight, "x", x);
  check_same_device(op, "mask", mask, "x", x);
  check_mask_dtype(op, mask, weight, packed);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(groups >= 1 && groups <= kMaxConvSize, op,
                    "(): argument 'groups' must be in [1, ", kMaxConvSize, "], got ", groups);

  MaskedConv2dGeometry g;
  TORCH_CHECK_VALUE(x.dim() == 4 || x.dim() == 5, op,
                    "(): argument 'x' must be [N, C, H, W] or [K, N, C, H, W] (K candidates), got ",
                    describe(x));
  g.candidate_form = x.dim() == 5;
  g.candidates = g.candidate_form ? x.size(0) : 1;
  const int64_t lead = g.candidate_form ? 1 : 0;
  g.batch = x.size(lead);
  g.in_channels = x.size(lead + 1);
  g.height = x.size(lead + 2);
  g.width = x.size(lead + 3);

  TORCH_CHECK_VALUE(weight.dim() == 4 || (g.candidate_form && weight.dim() == 5), op,
                    "(): argument 'weight' must be [out, C / groups, kh, kw]",
                    g.candidate_form ? " or [K, out, C / groups, kh, kw]" : "", ", got ",
                    describe(weight));
  g.weight_per_candidate = weight.dim() == 5;
  if (g.weight_per_candidate) check_size(op, "weight", weight, 0, g.candidates, "K, from x");
  const int64_t wl = g.weight_per_candidate ? 1 : 0;
  g.out_channels = weight.size(wl);
  g.kernel_h = weight.size(wl + 2);
  g.kernel_w = weight.size(wl + 3);
  g.groups = groups;
  TORCH_CHECK_VALUE(g.in_channels % groups == 0, op, "(): argument 'groups' (", groups,
                    ") must divide the input channels of 'x' (", g.in_channels, "), got x ",
                    describe(x));
  TORCH_CHECK_VALUE(g.out_channels % groups == 0, op, "(): argument 'groups' (", groups,
                    ") must divide the output channels of 'weight' (", g.out_channels,
                    "), got weight ", describe(weight));
  check_size(op, "weight", weight, wl + 1, g.in_channels / groups, "C / groups, from x and groups");
  TORCH_CHECK_VALUE(g.kernel_h >= 1 && g.kernel_w >= 1, op,
                    "(): argument 'weight' must have a kernel of at least 1x1, got ",
                    describe(weight));
  g.fan_in = g.in_channels / groups * g.kernel_h * g.kernel_w;

  const int64_t mask_dim = (packed ? 2 : 4) + (g.candidate_form ? 1 : 0);
  TORCH_CHECK_VALUE(mask.dim() == mask_dim, op, "(): argument 'mask' must be ",
                    packed ? (g.candidate_form ? "[K, out, ceil(C / groups * kh * kw / 8)]"
                                               : "[out, ceil(C / groups * kh * kw / 8)]")
                           : (g.candidate_form ? "[K, out, C / groups, kh, kw]"
                                               : "[out, C / groups, kh, kw] (the weight's shape)"),
                    " for this x, got ", describe(mask));
  if (g.candidate_form) check_size(op, "mask", mask, 0, g.candidates, "K, from x");
  const int64_t ml = g.candidate_form ? 1 : 0;
  if (packed) {
    check_size(op, "mask", mask, ml, g.out_channels, "out, from weight");
    check_size(op, "mask", mask, ml + 1, conv_packed_width(g.fan_in),
               "ceil(C / groups * kh * kw / 8), from weight");
  } else {
    const char* what[] = {"out, from weight", "C / groups, from weight", "kh, from weight",
                          "kw, from weight"};
    for (int64_t d = 0; d < 4; ++d)
      check_size(op, "mask", mask, ml + d, weight.size(wl + d), what[d]);
  }

  g.bias_per_candidate = check_bias(op, bias, x, g.candidate_form, g.candidates, "K, from x",
                                    g.out_channels, "out, from weight");

  for (int d = 0; d < 2; ++d) {
    g.stride[d] = stride[d];
    g.padding[d] = padding[d];
    g.dilation[d] = dilation[d];
  }
  const int64_t span_h = dilation[0] * (g.kernel_h - 1) + 1;
  const int64_t span_w = dilation[1] * (g.kernel_w - 1) + 1;
  const int64_t padded_h = g.height + 2 * padding[0];
  const int64_t padded_w = g.width + 2 * padding[1];
  TORCH_CHECK_VALUE(padded_h >= span_h && padded_w >= span_w, op,
                    "(): argument 'x' is too small: padded input ", padded_h, "x", padded_w,
                    " is smaller than the dilated kernel ", span_h, "x", span_w,
                    " (output size would be < 1), got ", describe(x));
  TORCH_CHECK_VALUE(std::max({padded_h, padded_w, span_h, span_w}) <= kMaxConvSize, op,
                    "(): arguments 'padding' and 'dilation' must keep the padded input and the "
                    "dilated kernel below 2^31 in each dimension, got padded input ", padded_h,
                    "x", padded_w, " and dilated kernel ", span_h, "x", span_w);
  g.out_height = (padded_h - span_h) / stride[0] + 1;
  g.out_width = (padded_w - span_w) / stride[1] + 1;
  g.output_shape.clear();
  if (g.candidate_form) g.output_shape.push_back(g.candidates);
  for (int64_t s : {g.batch, g.out_channels, g.out_height, g.out_width}) g.output_shape.push_back(s);
  return g;
}

namespace {

// Upper bound on the elements of the masked-weight workspace: the whole filter bank of most
// layers (256x256x3x3 is 0.6M), while the largest ones are split into a few blocks of output
// channels (splitting costs one extra read of the input per block).
constexpr int64_t kBlockElements = int64_t(1) << 20;

// One convolution over a block of output channels: rows [row0, row0 + rows) of the filter bank,
// reading input channels [in0, in0 + in_count) as conv_groups groups.
struct ConvBlock {
  int64_t row0, rows, in0, in_count, conv_groups;
};

std::vector<ConvBlock> conv_blocks(const MaskedConv2dGeometry& g) {
  const int64_t out_per_group = g.out_channels / g.groups;
  const int64_t in_per_group = g.in_channels / g.groups;
  std::vector<ConvBlock> blocks;
  if (out_per_group * g.fan_in == 0) return blocks;
  if (out_per_group * g.fan_in <= kBlockElements) {
    // Several whole groups per block: one grouped convolution on their input channels.
    const int64_t groups_per_block =
        std::min(g.groups, std::max<int64_t>(1, kBlockElements / (out_per_group * g.fan_in)));
    for (int64_t g0 = 0; g0 < g.groups; g0 += groups_per_block) {
      const int64_t n = std::min(groups_per_block, g.groups - g0);
      blocks.push_back({g0 * out_per_group, n * out_per_group, g0 * in_per_group, n * in_per_group, n});
    }
  } else {
    // A group's filters exceed the budget: split its output channels.
    const int64_t rows_per_block = std::max<int64_t>(1, kBlockElements / g.fan_in);
    for (int64_t grp = 0; grp < g.groups; ++grp)
      for (int64_t r = 0; r < out_per_group; r += rows_per_block)
        blocks.push_back({grp * out_per_group + r, std::min(rows_per_block, out_per_group - r),
                          grp * in_per_group, in_per_group, 1});
  }
  return blocks;
}

// The input of a block: x (one candidate's [N, C, H, W]) narrowed to the block's channels.
at::Tensor block_input(const at::Tensor& xk, const ConvBlock& b, const MaskedConv2dGeometry& g) {
  return b.in_count == g.in_channels ? xk : xk.narrow(1, b.in0, b.in_count);
}

struct CandidateViews {
  at::Tensor weight;  // [K_w, out, fan_in]
  at::Tensor mask;    // [K_m, out, fan_in or packed width]
};

CandidateViews candidate_views(const MaskedConv2dGeometry& g, const at::Tensor& weight,
                               const at::Tensor& mask, bool packed) {
  return {weight.contiguous().view({g.weight_per_candidate ? g.candidates : 1, g.out_channels, g.fan_in}),
          mask.contiguous().view({g.candidate_form ? g.candidates : 1, g.out_channels,
                                  packed ? conv_packed_width(g.fan_in) : g.fan_in})};
}

at::Tensor candidate(const at::Tensor& t, bool per_candidate, int64_t k) {
  return t.select(0, per_candidate ? k : 0);
}

int64_t max_block_rows(const std::vector<ConvBlock>& blocks) {
  int64_t rows = 0;
  for (const auto& b : blocks) rows = std::max(rows, b.rows);
  return rows;
}

// [rows, fan_in] filter rows as a convolution weight [rows, C / groups, kh, kw].
at::Tensor filter_view(const at::Tensor& rows, const MaskedConv2dGeometry& g) {
  return rows.view({rows.size(0), g.in_channels / g.groups, g.kernel_h, g.kernel_w});
}

// Whether the blocks are one convolution on all of x's channels.
bool single_block(const std::vector<ConvBlock>& blocks, const MaskedConv2dGeometry& g) {
  return blocks.size() == 1 && blocks[0].in_count == g.in_channels;
}

// At most this many elements of masked filters for all candidates together (32 MiB of float):
// above it, candidates of one image each run one by one.
constexpr int64_t kGroupedElements = int64_t(1) << 23;

// Whether K candidates of one image each run as one grouped convolution (K * groups groups) on x
// viewed as [1, K * C, H, W] and grad viewed as [1, K * out, H', W']: one call instead of K. On
// CPUs (oneDNN; 64 -> 64 channels, 3x3, 32x32, K = 16) the op became 1.55x (Intel Xeon) and
// 1.12x (AMD EPYC) faster than a loop of K convolutions forward, where the per-candidate calls
// were 1.08x and 0.94x, and 1.48x / 1.25x forward + backward (Intel 1.28x before). With more
// images per candidate x and the output would need transposing copies, and the grouped
// convolution was the slower one there.
bool grouped_candidates(const MaskedConvKernels& kernels, const MaskedConv2dGeometry& g,
                        const std::vector<ConvBlock>& blocks) {
  return kernels.group_single_image_candidates && g.candidate_form && g.batch == 1 &&
         g.candidates > 1 && single_block(blocks, g) &&
         g.candidates * g.out_channels * g.fan_in <= kGroupedElements &&
         g.candidates * g.groups <= kMaxConvSize;
}

// Every candidate's masked filters as one filter bank [K * out, C / groups, kh, kw].
at::Tensor grouped_filters(const MaskedConvKernels& kernels, const MaskedConv2dGeometry& g,
                           const CandidateViews& views, bool packed) {
  auto filters = at::empty({g.candidates * g.out_channels, g.fan_in}, views.weight.options());
  for (int64_t k = 0; k < g.candidates; ++k)
    kernels.fill_masked_rows(candidate(views.weight, g.weight_per_candidate, k),
                             candidate(views.mask, g.candidate_form, k), packed, 0,
                             filters.narrow(0, k * g.out_channels, g.out_channels));
  return filter_view(filters, g);
}

// A [K, 1, channels, H, W] tensor as one image of K * channels channels.
at::Tensor as_one_image(const at::Tensor& t) {
  return t.contiguous().view({1, t.size(0) * t.size(2), t.size(3), t.size(4)});
}

}  // namespace

at::Tensor masked_conv2d_forward(const MaskedConvKernels& kernels, const at::Tensor& x,
                                 const at::Tensor& weight, const at::Tensor& mask,
                                 const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 int64_t groups, bool packed) {
  const auto g = check_masked_conv2d("masked_conv2d", x, weight, mask, bias, stride, padding,
                                     dilation, groups, packed);
  const int64_t K = g.candidates;
  const bool has_bias = bias.has_value() && bias->defined();
  const auto blocks = conv_blocks(g);
  if (blocks.empty() || g.batch == 0 || K == 0) {
    // No filters or no input channels: the output is the bias (or empty).
    auto out = at::zeros(g.output_shape, x.options());
    if (has_bias && out.numel() > 0)
      out.view({K, g.batch, g.out_channels, g.out_height, g.out_width})
          .copy_((g.bias_per_candidate ? *bias : bias->unsqueeze(0)).view({-1, 1, g.out_channels, 1, 1}));
    return out;
  }
  if (!g.candidate_form && blocks.size() == 1) {
    // One mask and one block (most layers): the masked filter bank in the weight's shape and one
    // convolution on x itself. No views: at batch 1 each costs a dispatcher call, and together
    // they were a measurable part of the whole call.
    const auto w = weight.contiguous();
    auto filters = at::empty({g.out_channels, g.fan_in}, w.options());
    kernels.fill_masked_rows(w, mask.contiguous(), packed, 0, filters);
    return at::convolution(x, filters.view(w.sizes()), bias, stride, padding, dilation, false,
                           {0, 0}, groups)
        .contiguous();
  }
  const auto views = candidate_views(g, weight, mask, packed);
  if (grouped_candidates(kernels, g, blocks)) {
    c10::optional<at::Tensor> grouped_bias;
    if (has_bias)
      grouped_bias = (g.bias_per_candidate ? *bias : bias->expand({K, g.out_channels})).reshape({-1});
    return at::convolution(as_one_image(x), grouped_filters(kernels, g, views, packed),
                           grouped_bias, stride, padding, dilation, false, {0, 0}, K * g.groups)
        .contiguous()
        .view(g.output_shape);
  }
  const auto x_k = g.candidate_form ? x : x.unsqueeze(0);
  const auto bias_k = !has_bias ? at::Tensor() : g.bias_per_candidate ? *bias : bias->unsqueeze(0);
  auto workspace = at::empty({max_block_rows(blocks), g.fan_in}, weight.options());
  // One candidate's masked convolution over the filter blocks, written into `target`
  // ([N, out, H', W']).
  auto convolve = [&](int64_t k, const at::Tensor& target) {
    const auto wk = candidate(views.weight, g.weight_per_candidate, k);
    const auto mk = candidate(views.mask, g.candidate_form, k);
    const auto xk = x_k.select(0, k);
    for (const auto& b : blocks) {
      auto block = workspace.narrow(0, 0, b.rows);
      kernels.fill_masked_rows(wk, mk, packed, b.row0, block);
      c10::optional<at::Tensor> block_bias;
      if (has_bias)
        block_bias = candidate(bias_k, g.bias_per_candidate, k).narrow(0, b.row0, b.rows);
      auto y = at::convolution(block_input(xk, b, g), filter_view(block, g), block_bias, stride,
                               padding, dilation, false, {0, 0}, b.conv_groups);
      target.narrow(1, b.row0, b.rows).copy_(y);
    }
  };
  auto out = at::empty(g.output_shape, x.options());
  auto out_k = out.view({K, g.batch, g.out_channels, g.out_height, g.out_width});
  for (int64_t k = 0; k < K; ++k) convolve(k, out_k.select(0, k));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward(
    const MaskedConvKernels& kernels, const at::Tensor& grad, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& mask, c10::OptionalIntArrayRef bias_sizes,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    bool packed, std::array<bool, 4> output_mask) {
  const char* op = "masked_conv2d_backward";
  const auto g = check_masked_conv2d(op, x, weight, mask, c10::nullopt, stride, padding, dilation,
                                     groups, packed);
  check_same_dtype(op, "grad", grad, "x", x);
  check_same_device(op, "grad", grad, "x", x);
  TORCH_CHECK_VALUE(grad.sizes().equals(g.output_shape), op,
                    "(): argument 'grad' must have the output's shape ",
                    c10::IntArrayRef(g.output_shape), ", got ", describe(grad));
  TORCH_CHECK_VALUE(!(output_mask[2] && packed), op,
                    "(): a bit-packed 'mask' has no gradient (output_mask[2] must be false)");
  if (output_mask[3]) {
    TORCH_CHECK_VALUE(bias_sizes.has_value() &&
                          (bias_sizes->size() == 1 || (g.candidate_form && bias_sizes->size() == 2)) &&
                          bias_sizes->back() == g.out_channels,
                      op, "(): argument 'bias_sizes' must be [out] or [K, out] when the bias "
                      "gradient is requested");
  }
  const int64_t K = g.candidates;
  const bool need_x = output_mask[0], need_w = output_mask[1], need_m = output_mask[2];
  const bool need_effective = need_w || need_m;  // ∂L/∂W_eff
  const auto empty = at::empty({0}, x.options());
  at::Tensor grad_x = empty, grad_weight = empty, grad_mask = empty, grad_bias = empty;
  const auto blocks = conv_blocks(g);
  const bool one_block = single_block(blocks, g);
  const bool has_work = (need_x || need_effective) && !blocks.empty() && g.batch > 0 && K > 0;
  // One mask and one block (most layers): one convolution backward on the call's own tensors,
  // its input gradient the result (as in the forward, no views).
  const bool single_call = has_work && one_block && !g.candidate_form;
  const bool grouped = has_work && grouped_candidates(kernels, g, blocks);
  if (need_x && !single_call && !grouped)
    grad_x = one_block ? at::empty(x.sizes(), x.options()) : at::zeros(x.sizes(), x.options());
  // With work to do, every element of the weight and mask gradients is written below (a shared
  // weight's by candidate 0, the others accumulate); without, they are zero.
  auto gradient_buffer = [&](c10::IntArrayRef sizes) {
    return has_work ? at::empty(sizes, weight.options()) : at::zeros(sizes, weight.options());
  };
  if (need_w) grad_weight = gradient_buffer(weight.sizes());
  if (need_m) grad_mask = gradient_buffer(mask.sizes());

  if (single_call) {
    const auto w = weight.contiguous();
    const auto m = mask.contiguous();
    at::Tensor filters = w;  // the weight gradient does not depend on the (masked) weight values
    if (need_x) {
      filters = at::empty({g.out_channels, g.fan_in}, w.options());
      kernels.fill_masked_rows(w, m, packed, 0, filters);
      filters = filters.view(w.sizes());
    }
    auto grads = at::convolution_backward(
        grad, x, filters, output_mask[3] ? bias_sizes : c10::nullopt, stride, padding, dilation,
        false, {0, 0}, groups, {need_x, need_effective, output_mask[3]});
    if (need_x) grad_x = std::get<0>(grads).contiguous();
    if (output_mask[3]) grad_bias = std::get<2>(grads);
    if (need_effective)
      kernels.combine_weight_grads(std::get<1>(grads).contiguous().view({g.out_channels, g.fan_in}),
                                   w, m, packed, need_w ? grad_weight : at::Tensor(), false,
                                   need_m ? grad_mask : at::Tensor());
  } else if (has_work) {
    const auto views = candidate_views(g, weight, mask, packed);
    const auto grad_weight_k =
        !need_w ? empty : grad_weight.view({g.weight_per_candidate ? K : 1, g.out_channels, g.fan_in});
    const auto grad_mask_k = !need_m ? empty : grad_mask.view({K, g.out_channels, g.fan_in});
    // Candidate k's weight and mask gradients from its ∂L/∂W_eff.
    auto combine = [&](int64_t k, const at::Tensor& effective) {
      kernels.combine_weight_grads(
          effective.contiguous().view({g.out_channels, g.fan_in}),
          candidate(views.weight, g.weight_per_candidate, k),
          candidate(views.mask, g.candidate_form, k), packed,
          need_w ? candidate(grad_weight_k, g.weight_per_candidate, k) : at::Tensor(),
          /*accumulate=*/!g.weight_per_candidate && k > 0,
          need_m ? grad_mask_k.select(0, k) : at::Tensor());
    };
    if (grouped) {
      auto grads = at::convolution_backward(
          as_one_image(grad), as_one_image(x), grouped_filters(kernels, g, views, packed),
          c10::nullopt, stride, padding, dilation, false, {0, 0}, K * g.groups,
          {need_x, need_effective, false});
      if (need_x) grad_x = std::get<0>(grads).contiguous().view(x.sizes());
      if (need_effective) {
        const auto effective = std::get<1>(grads).contiguous().view({K, g.out_channels, g.fan_in});
        for (int64_t k = 0; k < K; ++k) combine(k, effective.select(0, k));
      }
    } else {
      const auto x_k = g.candidate_form ? x : x.unsqueeze(0);
      const auto grad_k = g.candidate_form ? grad : grad.unsqueeze(0);
      const auto grad_x_k = !need_x ? empty : g.candidate_form ? grad_x : grad_x.unsqueeze(0);
      auto workspace =
          need_x ? at::empty({max_block_rows(blocks), g.fan_in}, weight.options()) : empty;
      for (int64_t k = 0; k < K; ++k) {
        const auto wk = candidate(views.weight, g.weight_per_candidate, k);
        const auto mk = candidate(views.mask, g.candidate_form, k);
        const auto xk = x_k.select(0, k);
        const auto gk = grad_k.select(0, k);
        at::Tensor effective;  // ∂L/∂W_eff of candidate k, [out, C / groups, kh, kw]
        if (need_x) {
          const auto gxk = grad_x_k.select(0, k);
          for (const auto& b : blocks) {
            auto block = workspace.narrow(0, 0, b.rows);
            kernels.fill_masked_rows(wk, mk, packed, b.row0, block);
            // With a single block the weight gradient comes from the same call: it does not
            // depend on the (masked) weight values.
            const bool with_effective = one_block && need_effective;
            auto grads = at::convolution_backward(
                gk.narrow(1, b.row0, b.rows), block_input(xk, b, g), filter_view(block, g),
                c10::nullopt, stride, padding, dilation, false, {0, 0}, b.conv_groups,
                {true, with_effective, false});
            if (with_effective) effective = std::get<1>(grads);
            auto target = b.in_count == g.in_channels ? gxk : gxk.narrow(1, b.in0, b.in_count);
            if (one_block) target.copy_(std::get<0>(grads));
            else target.add_(std::get<0>(grads));
          }
        }
        if (need_effective) {
          if (!effective.defined())
            effective = std::get<1>(at::convolution_backward(
                gk, xk, filter_view(wk, g), c10::nullopt, stride, padding, dilation, false,
                {0, 0}, g.groups, {false, true, false}));
          combine(k, effective);
        }
      }
    }
  }
  if (output_mask[3] && !single_call) {
    const bool per_candidate_bias = bias_sizes->size() == 2;
    grad_bias = g.candidate_form && per_candidate_bias ? grad.sum({1, 3, 4})
                : g.candidate_form                     ? grad.sum({0, 1, 3, 4})
                                                       : grad.sum({0, 2, 3});
  }
  return {grad_x, grad_weight, grad_mask, grad_bias};
}

}  // namespace sparsenas
