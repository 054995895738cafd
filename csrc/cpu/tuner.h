#pragma once
// Which CPU kernel runs a convolution pass (or tiled 2x2 average pooling, pool2d.cpp), chosen by
// measurement on the machine itself (tuning/measured_choice.h: the algorithm, shared with the
// CUDA kernels). Here: the names the CPU's candidates are recorded by, and the switch.
//
// CUCONV_CPU_TUNE=0 turns measuring off (conv2d.cpp's static rules decide; for runs that must
// not depend on timing). CUCONV_LOG=1 prints each decision, with the candidates' times and the
// tuning's cost, to stderr. The table is exposed as cuconv._C.cpu_tuning() / cpu_tuning_set(),
// and cuconv/tuning.py keeps it on disk (CUCONV_TUNE_CACHE) keyed by CPU model and version.

#include <string>

#include "../tuning/measured_choice.h"

namespace cuconv {

// The names a choice records, one per kernel family (the candidates of conv2d.cpp). All of them
// together, kernel_names(), also name the disk cache's section (cuconv/tuning.py): choices made
// by a build with other candidates never tried the new ones, so they are measured again.
enum class KernelName {
  kDirect, kGemm, kWinograd, kPixel, kNhwc, kNchw, kNhwcWinograd, kByGroup, kFloat32, kDirectByGroup,
  kDirectStreamed, kDirectPairs, kDirectPairsStreamed, kDirectPairsNhwc, kByPhase, kNhwcDirect,
  kPoolGroups, kPoolRows, kPoolPlanes,  // tiled 2x2 pooling (pool2d.cpp)
  kPoolQuads,                           // global pooling in 128-bit registers (against kPoolGroups)
  kDepthwise, kDepthwiseFetched,        // depthwise rows read in place (depthwise.h, RowFetch)
  kCount
};
const char* kernel_name(KernelName name);
// Raised when a candidate's kernels change enough that choices measured before should be
// measured again (kernel_names() ends with it, and so the disk cache's section name): 2, the
// direct weight gradient's row tiles (a cached GEMM for LeNet's first layer never tried them).
constexpr int kCandidatesRevision = 2;
std::string kernel_names();  // space-separated, then "(revision N)"

// False when CUCONV_CPU_TUNE=0 (any value but 0 or 1 is an error).
bool tuning_enabled();

}  // namespace cuconv
