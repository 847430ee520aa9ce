#pragma once
// The choice between two CPU implementations of one computation (a fused kernel, or masked tiles
// fed to the BLAS GEMM) by what is fast on the machine that runs them: each shape class is timed
// once per process on first use (both paths, on the call's own inputs) and the winner is cached.
// Crossover points differ by a factor of several between CPUs and BLAS builds (an AVX-512 Xeon
// with MKL against an AMD EPYC), so no fixed threshold holds on both.

#include <cstdint>
#include <cstdio>
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

// The cached choice for `key`, or, the first time, the faster of the two paths (best run of
// each) over alternating timed runs of run(path), whose results are discarded: at least
// `repeats` runs per path, more for a short computation, until each path has run for 20 ms or
// for 4 x `repeats` runs (a burst of other work that spoils a few runs then spoils the choice
// less often). Thread-safe; the first choice stored for a key wins.
KernelPath measured_path(const std::string& key, int repeats,
                         const std::function<void(KernelPath)>& run);

// Every choice made (or set) so far, key -> "fused" / "gemm".
std::map<std::string, std::string> path_choices();

// Adds choices; keys already chosen in this process keep their choice. Unknown path names raise.
void set_path_choices(const std::map<std::string, std::string>& choices);

// Makes `file` the on-disk record of choices: the choices it holds (lines "key<TAB>path", written
// by earlier processes on the same machine) are added as by set_path_choices, and every choice
// measured from now on is appended to it as soon as it is made, so that later processes, and
// a process resumed after a crash, run the same paths (and so compute the same bits). An
// unreadable or unwritable file only costs the measurements.
void use_path_cache(const std::string& file);

}  // namespace sparsenas::cpu
