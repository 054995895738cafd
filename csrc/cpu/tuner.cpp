// The measured kernel choice of tuner.h.

#include "tuner.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>

#include "../ops.h"

namespace cuconv {
namespace {

std::mutex table_mutex;
std::map<std::string, std::string>& table() {
  static std::map<std::string, std::string> winners;
  return winners;
}

bool env_flag(const char* name, bool unset_value) {
  const char* setting = std::getenv(name);
  if (setting == nullptr || *setting == '\0') return unset_value;
  CUCONV_CHECK_VALUE(std::strcmp(setting, "0") == 0 || std::strcmp(setting, "1") == 0,
                     "cuconv: expected the environment variable ", name, " to be 0 or 1, but got '", setting, "'");
  return *setting == '1';
}

double seconds_to_run(const Candidate& candidate) {
  const auto start = std::chrono::steady_clock::now();
  candidate.run();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

const char* kernel_name(KernelName name) {
  static const char* const names[] = {"direct", "gemm", "winograd", "pixel", "nhwc", "nchw", "nhwc_winograd"};
  static_assert(sizeof names / sizeof names[0] == static_cast<size_t>(KernelName::kCount));
  return names[static_cast<int>(name)];
}

std::string kernel_names() {
  std::string all;
  for (int n = 0; n < static_cast<int>(KernelName::kCount); ++n)
    all += std::string(n == 0 ? "" : " ") + kernel_name(static_cast<KernelName>(n));
  return all;
}

bool tuning_enabled() { return env_flag("CUCONV_CPU_TUNE", true); }

size_t run_tuned(const std::string& key, const std::vector<Candidate>& candidates) {
  CUCONV_CHECK(!candidates.empty(), "cuconv: internal error: no candidate kernel for ", key);
  std::string recorded;
  {
    std::lock_guard<std::mutex> lock(table_mutex);
    const auto found = table().find(key);
    if (found != table().end()) recorded = found->second;
  }
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (recorded == candidates[c].name) {
      candidates[c].run();
      return c;
    }
  }
  if (candidates.size() == 1) {
    candidates[0].run();
    return 0;
  }
  // Measured outside the lock: the candidates run on the thread pool, and another thread may
  // tune another shape meanwhile (two threads tuning one key both measure; either winner is right).
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> best(candidates.size(), std::numeric_limits<double>::infinity());
  // Two rounds: the first also pays for cold caches, page faults and any choice a candidate
  // makes inside (the NCHW candidate of a channels_last layer tunes its own kernels).
  for (int round = 0; round < 2; ++round) {
    for (size_t c = 0; c < candidates.size(); ++c) best[c] = std::min(best[c], seconds_to_run(candidates[c]));
  }
  size_t winner = 0;
  for (size_t c = 1; c < candidates.size(); ++c) winner = best[c] < best[winner] ? c : winner;
  if (winner != candidates.size() - 1) candidates[winner].run();  // the call returns the winner's result
  {
    std::lock_guard<std::mutex> lock(table_mutex);
    table()[key] = candidates[winner].name;
  }
  if (env_flag("CUCONV_LOG", false)) {
    std::string times;
    for (size_t c = 0; c < candidates.size(); ++c) {
      char entry[96];
      std::snprintf(entry, sizeof entry, "%s%s %.3f ms", c == 0 ? "" : ", ", candidates[c].name, best[c] * 1e3);
      times += entry;
    }
    const double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "cuconv: tuned %s: %s -> %s (tuning took %.3f ms)\n", key.c_str(), times.c_str(),
                 candidates[winner].name, spent * 1e3);
  }
  return winner;
}

std::vector<std::pair<std::string, std::string>> tuning_table() {
  std::lock_guard<std::mutex> lock(table_mutex);
  return {table().begin(), table().end()};
}

void set_tuning(const std::string& key, const std::string& winner) {
  std::lock_guard<std::mutex> lock(table_mutex);
  table()[key] = winner;
}

void clear_tuning() {
  std::lock_guard<std::mutex> lock(table_mutex);
  table().clear();
}

}  // namespace cuconv
