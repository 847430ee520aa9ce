#include "cpu/path_choice.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

namespace sparsenas::cpu {
namespace {

std::mutex& choices_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::map<std::string, KernelPath>& choices() {
  static std::map<std::string, KernelPath> table;
  return table;
}

std::string& cache_file() {
  static std::string file;
  return file;
}

// Appends one choice to the cache file (one short write, so lines from processes writing at the
// same time do not interleave).
void record(const std::string& key, KernelPath path) {
  if (cache_file().empty()) return;
  const std::string line = key + "\t" + path_name(path) + "\n";
  if (std::FILE* f = std::fopen(cache_file().c_str(), "a")) {
    std::fwrite(line.data(), 1, line.size(), f);
    std::fclose(f);
  }
}

KernelPath parse_path(const std::string& name, const char* what) {
  if (name == "fused") return KernelPath::kFused;
  if (name == "gemm") return KernelPath::kGemm;
  TORCH_CHECK_VALUE(false, what, " must be 'fused', 'gemm' or 'auto', got '", name, "'");
}

}  // namespace

const char* path_name(KernelPath path) { return path == KernelPath::kFused ? "fused" : "gemm"; }

std::optional<KernelPath> forced_path(const char* variable) {
  const char* value = std::getenv(variable);
  if (value == nullptr || *value == '\0' || std::strcmp(value, "auto") == 0) return std::nullopt;
  return parse_path(value, variable);
}

KernelPath measured_path(const std::string& key, int repeats,
                         const std::function<void(KernelPath)>& run) {
  {
    std::lock_guard<std::mutex> lock(choices_mutex());
    const auto found = choices().find(key);
    if (found != choices().end()) return found->second;
  }
  // Alternating runs, best of each: the first run of either path also pays for cold caches and
  // first-touch allocations.
  constexpr double kMeasureSeconds = 0.02;
  double best[2] = {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
  double total[2] = {0.0, 0.0};
  for (int r = 0; r < 4 * repeats && (r < repeats || std::min(total[0], total[1]) < kMeasureSeconds);
       ++r) {
    for (const KernelPath path : {KernelPath::kFused, KernelPath::kGemm}) {
      const auto start = std::chrono::steady_clock::now();
      run(path);
      const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
      const int slot = static_cast<int>(path);
      best[slot] = std::min(best[slot], elapsed.count());
      total[slot] += elapsed.count();
    }
  }
  const KernelPath faster = best[1] < best[0] ? KernelPath::kGemm : KernelPath::kFused;
  std::lock_guard<std::mutex> lock(choices_mutex());
  const auto [entry, inserted] = choices().emplace(key, faster);
  if (inserted) record(key, faster);
  return entry->second;
}

std::map<std::string, std::string> path_choices() {
  std::lock_guard<std::mutex> lock(choices_mutex());
  std::map<std::string, std::string> result;
  for (const auto& [key, path] : choices()) result.emplace(key, path_name(path));
  return result;
}

void set_path_choices(const std::map<std::string, std::string>& table) {
  std::map<std::string, KernelPath> parsed;
  for (const auto& [key, name] : table) parsed.emplace(key, parse_path(name, "a kernel path choice"));
  std::lock_guard<std::mutex> lock(choices_mutex());
  for (const auto& [key, path] : parsed) choices().emplace(key, path);
}

void use_path_cache(const std::string& file) {
  std::map<std::string, std::string> stored;
  if (std::FILE* f = std::fopen(file.c_str(), "r")) {
    char buffer[512];
    while (std::fgets(buffer, sizeof(buffer), f) != nullptr) {
      std::string line(buffer);
      if (!line.empty() && line.back() == '\n') line.pop_back();
      const auto tab = line.find('\t');
      if (tab == std::string::npos) continue;
      const std::string name = line.substr(tab + 1);
      // A line from another version of this file format, or a torn write: skipped.
      if (name != "fused" && name != "gemm") continue;
      stored.emplace(line.substr(0, tab), name);
    }
    std::fclose(f);
  }
  set_path_choices(stored);
  std::lock_guard<std::mutex> lock(choices_mutex());
  cache_file() = file;
}

}  // namespace sparsenas::cpu
