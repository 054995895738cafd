#pragma once
// Index helper shared by the CPU convolution and pooling loops.

#include <algorithm>
#include <cstdint>

namespace cuconv {

// Output positions o in [0, out_size) whose input position o*stride + offset
// lies inside [0, in_size): the half-open range [begin, end) (empty if none).
struct OutputRange {
  int64_t begin, end;
};

inline OutputRange in_bounds_outputs(int64_t offset, int64_t stride, int64_t in_size, int64_t out_size) {
  const int64_t begin = std::min(out_size, offset >= 0 ? int64_t{0} : (-offset + stride - 1) / stride);
  const int64_t last = in_size - 1 - offset;  // o*stride <= last
  const int64_t end = last >= 0 ? std::min(out_size, last / stride + 1) : int64_t{0};
  return {begin, std::max(begin, end)};
}

}  // namespace cuconv
