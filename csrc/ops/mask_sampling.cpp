#include "ops/mask_sampling.h"

#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/philox.h"

namespace sparsenas {
namespace {

// Positions index Philox blocks through a 32-bit counter word.
constexpr int64_t kMaxColumns = int64_t(1) << 31;

void check_columns(const char* op, const char* arg, int64_t n) {
  TORCH_CHECK_VALUE(n >= 0 && n < kMaxColumns, op, "(): argument '", arg,
                    "' (the number of positions per row) must be in [0, 2^31), got ", n);
}

// k: int64 [B] on `device`, every value in [0, n]. One host sync on CUDA.
void check_k(const char* op, const at::Tensor& k, int64_t rows, int64_t n, const at::Device& device) {
  TORCH_CHECK_TYPE(k.scalar_type() == at::kLong, op,
                   "(): argument 'k' must be an int64 tensor of per-row counts, got ", describe(k));
  TORCH_CHECK_VALUE(k.dim() == 1, op, "(): argument 'k' must be 1-D [B] (one count per row), got ",
                    describe(k));
  if (rows >= 0) check_size(op, "k", k, 0, rows, "B, the number of rows");
  TORCH_CHECK_VALUE(k.device() == device, op, "(): argument 'k' must be on ", device.str(),
                    ", got ", describe(k));
  if (k.numel() == 0) return;
  const auto [low, high] = at::aminmax(k);
  const auto bounds = at::stack({low, high}).cpu();
  const int64_t k_min = bounds[0].item<int64_t>();
  const int64_t k_max = bounds[1].item<int64_t>();
  TORCH_CHECK_VALUE(k_min >= 0 && k_max <= n, op, "(): argument 'k' must have every value in [0, n] = [0, ",
                    n, "], got values in [", k_min, ", ", k_max, "]");
}

void check_candidates(const char* op, int64_t first_candidate, int64_t rows, int64_t stream) {
  TORCH_CHECK_VALUE(first_candidate >= 0 && first_candidate <= INT64_MAX - rows, op,
                    "(): argument 'first_candidate' must be in [0, 2^63 - B), got ",
                    first_candidate);
  TORCH_CHECK_VALUE(stream >= 0 && stream < kMaxStream, op,
                    "(): argument 'stream' must be in [0, 2^24), got ", stream);
}

}  // namespace

SamplingGeometry check_uniform_k_mask(const at::Tensor& k, int64_t n, int64_t first_candidate,
                                      int64_t stream) {
  const char* op = "uniform_k_mask";
  check_columns(op, "n", n);
  check_k(op, k, -1, n, k.device());
  check_candidates(op, first_candidate, k.size(0), stream);
  return {k.size(0), n};
}

SamplingGeometry check_topk_mask(const at::Tensor& scores, const at::Tensor& k) {
  const char* op = "topk_mask";
  check_floating(op, "scores", scores);
  check_dim(op, "scores", scores, 2, "[B, n]");
  check_columns(op, "scores", scores.size(1));
  check_k(op, k, scores.size(0), scores.size(1), scores.device());
  return {scores.size(0), scores.size(1)};
}

SamplingGeometry check_gumbel_topk_mask(const at::Tensor& weights, const at::Tensor& k,
                                        int64_t first_candidate, int64_t stream) {
  const char* op = "gumbel_topk_mask";
  check_floating(op, "weights", weights);
  check_dim(op, "weights", weights, 2, "[B, n]");
  check_columns(op, "weights", weights.size(1));
  check_k(op, k, weights.size(0), weights.size(1), weights.device());
  check_candidates(op, first_candidate, weights.size(0), stream);
  return {weights.size(0), weights.size(1)};
}

void check_gumbel_weight_values(const at::Tensor& weights, const at::Tensor& k) {
  const char* op = "gumbel_topk_mask";
  if (weights.numel() > 0) {
    const bool valid = at::isfinite(weights).logical_and_(weights >= 0).all().item<bool>();
    TORCH_CHECK_VALUE(valid, op, "(): argument 'weights' must be finite and non-negative, got ",
                      describe(weights), " with a negative, infinite or NaN entry");
  }
  if (k.numel() > 0) {
    const bool enough = (weights > 0).sum(1).ge(k).all().item<bool>();
    TORCH_CHECK_VALUE(enough, op, "(): argument 'k' must not exceed the number of positive "
                      "'weights' in its row (a zero weight is never chosen)");
  }
}

void check_philox4x32_10(const at::Tensor& counter, const at::Tensor& key) {
  const char* op = "philox4x32_10";
  TORCH_CHECK_TYPE(counter.scalar_type() == at::kLong, op,
                   "(): argument 'counter' must be int64 (32-bit words), got ", describe(counter));
  TORCH_CHECK_TYPE(key.scalar_type() == at::kLong, op,
                   "(): argument 'key' must be int64 (32-bit words), got ", describe(key));
  check_dim(op, "counter", counter, 2, "[N, 4]");
  check_dim(op, "key", key, 2, "[N, 2]");
  check_size(op, "counter", counter, 1, 4, "four 32-bit counter words");
  check_size(op, "key", key, 1, 2, "two 32-bit key words");
  check_size(op, "key", key, 0, counter.size(0), "N, from counter");
  check_same_device(op, "key", key, "counter", counter);
  for (const auto* t : {&counter, &key}) {
    if (t->numel() == 0) continue;
    const auto [low, high] = at::aminmax(*t);
    const auto bounds = at::stack({low, high}).cpu();
    TORCH_CHECK_VALUE(bounds[0].item<int64_t>() >= 0 && bounds[1].item<int64_t>() <= 0xFFFFFFFFll,
                      op, "(): argument '", t == &counter ? "counter" : "key",
                      "' must hold 32-bit words in [0, 2^32), got values in [",
                      bounds[0].item<int64_t>(), ", ", bounds[1].item<int64_t>(), "]");
  }
}

at::Tensor empty_mask(const at::Tensor& like, const SamplingGeometry& g, bool packed) {
  return at::empty({g.rows, mask_width(g.columns, packed)},
                   like.options().dtype(packed ? at::kByte : at::kBool));
}

}  // namespace sparsenas
