// CPU kernel of masked_linear. The masked weight is built one tile of output rows at a time in a
// small buffer that stays in cache while the GEMM reads it, so no full masked copy of W is ever
// written, and K candidates run in one call.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "ops/masked_linear.h"

namespace sparsenas {
namespace {

constexpr int64_t kRowTile = 128;

// tile[r, c] = weight[r, c] * mask[r, c] for rows [row0, row0 + tile_rows).
template <typename scalar_t, typename mask_t>
void fill_masked_tile(const scalar_t* weight, const mask_t* mask, scalar_t* tile, int64_t row0,
                      int64_t tile_rows, int64_t in_features, bool packed) {
  for (int64_t r = 0; r < tile_rows; ++r) {
    const scalar_t* w = weight + (row0 + r) * in_features;
    scalar_t* t = tile + r * in_features;
    if (packed) {
      const uint8_t* bits =
          reinterpret_cast<const uint8_t*>(mask) + (row0 + r) * packed_width(in_features);
      for (int64_t c = 0; c < in_features; ++c)
        t[c] = ((bits[c >> 3] >> (c & 7)) & 1) ? w[c] : scalar_t(0);
    } else {
      const mask_t* m = mask + (row0 + r) * in_features;
      for (int64_t c = 0; c < in_features; ++c) t[c] = w[c] * static_cast<scalar_t>(m[c]);
    }
  }
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const c10::optional<at::Tensor>& bias, bool packed) {
  const auto g = check_masked_linear("masked_linear", x, weight, mask, bias, packed);
  const int64_t K = g.candidates;
  auto x2 = x.contiguous().view({K, g.rows, g.in_features});
  auto w = weight.contiguous();
  auto m = mask.contiguous();
  auto out = at::empty({K, g.rows, g.out_features}, x.options());
  if (out.numel() == 0) return out.view(g.output_shape);
  if (g.in_features == 0) {
    out.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_linear_cpu", [&] {
      auto tile = at::empty({std::min(kRowTile, g.out_features), g.in_features}, w.options());
      auto run = [&](auto mask_tag) {
        using mask_t = decltype(mask_tag);
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* wk = w.data_ptr<scalar_t>() +
                               (g.weight_per_candidate ? k * g.out_features * g.in_features : 0);
          const int64_t mask_stride =
              g.out_features * (packed ? packed_width(g.in_features) : g.in_features);
          const mask_t* mk = reinterpret_cast<const mask_t*>(m.data_ptr()) +
                             (g.candidate_form ? k * mask_stride : 0);
          for (int64_t row0 = 0; row0 < g.out_features; row0 += kRowTile) {
            const int64_t rows = std::min(kRowTile, g.out_features - row0);
            auto t = tile.narrow(0, 0, rows);
            fill_masked_tile<scalar_t, mask_t>(wk, mk, t.data_ptr<scalar_t>(), row0, rows,
                                               g.in_features, packed);
            out[k].narrow(1, row0, rows).copy_(at::mm(x2[k], t.t()));
          }
        }
      };
      if (packed || m.scalar_type() == at::kByte) run(uint8_t{});
      else if (m.scalar_type() == at::kBool) run(bool{});
      else run(scalar_t{});
    });
  }
  if (bias.has_value() && bias->defined()) {
    out.add_(g.bias_per_candidate ? bias->unsqueeze(1) : bias->view({1, 1, g.out_features}));
  }
  return out.view(g.output_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparsenas, CPU, m) { m.impl("masked_linear", &masked_linear_cpu); }

}  // namespace sparsenas
