// The CPU side of the measured kernel choice (tuner.h): the candidates' names and the switch.

#include "tuner.h"

#include <string>

namespace cuconv {

const char* kernel_name(KernelName name) {
  static const char* const names[] = {"direct",        "gemm",     "winograd", "pixel",          "nhwc",
                                      "nchw",          "nhwc_winograd", "by_group", "float32", "direct_by_group",
                                      "direct_streamed", "direct_pairs", "direct_pairs_streamed", "direct_pairs_nhwc",
                                      "by_phase",      "nhwc_direct",   "pool_groups", "pool_rows", "pool_planes",
                                      "pool_quads",
                                      "depthwise",     "depthwise_fetched"};
  static_assert(sizeof names / sizeof names[0] == static_cast<size_t>(KernelName::kCount));
  return names[static_cast<int>(name)];
}

std::string kernel_names() {
  std::string all;
  for (int n = 0; n < static_cast<int>(KernelName::kCount); ++n)
    all += std::string(n == 0 ? "" : " ") + kernel_name(static_cast<KernelName>(n));
  return all + " (revision " + std::to_string(kCandidatesRevision) + ")";
}

bool tuning_enabled() { return env_flag("CUCONV_CPU_TUNE", true); }

}  // namespace cuconv
