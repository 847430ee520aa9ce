#pragma once
// The choice between two CPU implementations of one computation (a fused kernel, or masked tiles
// fed to the BLAS GEMM) by what is fast on the machine that runs them: each shape class is timed
// once per process on first use (both paths, on the call's own inputs) and the winner is cached.
// Crossover points differ by a factor of several between CPUs and BLAS builds (an AVX-512 Xeon
// with MKL against an AMD EPYC), so no fixed threshold holds on both.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

namespace sparsenas::cpu {

enum class KernelPath : uint8_t { kFused, kGemm };

const char* path_name(KernelPath path);

// The path forced by environment variable `variable` ("fused" or "gemm"); nullopt when it is unset,
// empty or "auto". Read on every call, so that a benchmark can switch paths within one process.
std::optional<KernelPath> forced_path(const char* variable);

// The cached choice for `key`, or, the first time, the faster of the two paths over `repeats`
// alternating timed runs of run(path) (whose results are discarded). Thread-safe; the first choice
// stored for a key wins.
KernelPath measured_path(const std::string& key, int repeats,
                         const std::function<void(KernelPath)>& run);

// Every choice made (or set) so far, key -> "fused" / "gemm".
std::map<std::string, std::string> path_choices();

// Adds choices (e.g. read back from an on-disk cache of an earlier process on the same machine);
// keys already chosen in this process keep their choice. Unknown path names raise.
void set_path_choices(const std::map<std::string, std::string>& choices);

}  // namespace sparsenas::cpu
