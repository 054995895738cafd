// The input gradient by stride phase (stride_phases.h).

#include "stride_phases.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../stable.h"
#include "gemm.h"

namespace cuconv {

namespace {

// One axis of one phase: positions phase + stride*i, i < size, take kernel taps first + t*step,
// t < taps, which read grad_output `dilation` rows apart; as a correlation over those taps
// reversed, its window starts `pad` rows before grad_output (a negative pad: after its start).
struct PhaseAxis {
  int64_t phase, size, first, taps, step, dilation, pad;
  int64_t window() const { return size + (taps - 1) * dilation; }  // rows the correlation reads
};

// With g = gcd(s, d): tap k reaches phase ph where k*d = ph + p (mod s), so the phase's taps are
// first, first + step, ... with step = s / g; tap first + t*step reads grad_output row
// i + c - t*e for position i, c = (ph + p - first*d) / s and e = d / g. Reversed (u = taps-1-t)
// that is row i + u*e - pad with pad = (taps-1)*e - c.
std::vector<PhaseAxis> phase_axes(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t g = std::gcd(stride, dilation), step = stride / g, e = dilation / g;
  std::vector<PhaseAxis> axes;
  for (int64_t phase = 0; phase < stride; ++phase) {
    PhaseAxis a{phase, phase < size ? (size - phase + stride - 1) / stride : 0, 0, 0, step, e, 0};
    for (int64_t k = 0; k < std::min(step, kernel); ++k)  // (which taps reach a phase repeats every step)
      if ((phase + pad - k * dilation) % stride == 0) {
        a.first = k;
        a.taps = (kernel - 1 - k) / step + 1;
        a.pad = (a.taps - 1) * e - (phase + pad - k * dilation) / stride;
        break;
      }
    axes.push_back(a);
  }
  return axes;
}

// grad_output's planes [N*O][out_h][out_w] as phase (r, c) reads them: each plane's rows from
// -r.pad, r.window() of them, and its columns likewise, zero outside grad_output.
void copy_window(const float* grad_out, int64_t planes, int64_t out_h, int64_t out_w, const PhaseAxis& r,
                 const PhaseAxis& c, float* window) {
  const int64_t hw = r.window(), ww = c.window();
  // grad_output's columns [col_begin, col_end) land at window columns from -c.pad on
  const int64_t col_begin = std::clamp<int64_t>(-c.pad, 0, out_w), col_end = std::clamp<int64_t>(ww - c.pad, 0, out_w);
  torch::stable::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t h = 0; h < hw; ++h) {
        float* to = window + (plane * hw + h) * ww;
        const int64_t from_row = h - r.pad;
        if (from_row < 0 || from_row >= out_h || col_begin >= col_end) {
          std::fill_n(to, ww, 0.f);
          continue;
        }
        const float* from = grad_out + (plane * out_h + from_row) * out_w;
        std::fill_n(to, col_begin + c.pad, 0.f);
        std::memcpy(to + col_begin + c.pad, from + col_begin, (col_end - col_begin) * sizeof(float));
        std::fill(to + col_end + c.pad, to + ww, 0.f);
      }
  });
}

}  // namespace

void input_gradient_by_phase(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in,
                             const PhaseForward& forward) {
  CUCONV_CHECK((p.stride_h > 1 || p.stride_w > 1) && p.in_sample_stride == 0 && p.out_sample_stride == 0,
               "cuconv: internal error: no input gradient by stride phase for this layer");
  if (p.batch == 0) return;
  const int64_t C = p.in_channels, O = p.out_channels;
  const std::vector<PhaseAxis> rows = phase_axes(p.height, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  const std::vector<PhaseAxis> cols = phase_axes(p.width, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  // The phases some tap reaches, each with its taps reversed, in and out channels swapped:
  //   weight[ch, o, u, v] = the layer's weight[o, ch, r.first + (r.taps-1-u)*r.step, c.first + (c.taps-1-v)*c.step]
  struct Phase {
    const PhaseAxis &r, &c;
    std::vector<float> weight;
  };
  std::vector<Phase> phases;
  for (const PhaseAxis& r : rows)
    for (const PhaseAxis& c : cols) {
      if (r.size == 0 || c.size == 0 || r.taps == 0 || c.taps == 0) continue;
      std::vector<float> flipped(C * O * r.taps * c.taps);
      for (int64_t ch = 0; ch < C; ++ch)
        for (int64_t o = 0; o < O; ++o)
          for (int64_t u = 0; u < r.taps; ++u)
            for (int64_t v = 0; v < c.taps; ++v)
              flipped[((ch * O + o) * r.taps + u) * c.taps + v] =
                  weight[((o * C + ch) * p.kernel_h + r.first + (r.taps - 1 - u) * r.step) * p.kernel_w + c.first +
                         (c.taps - 1 - v) * c.step];
      phases.push_back({r, c, std::move(flipped)});
    }
  // A chunk of samples at a time: its phases' outputs, one after another, then interleaved into
  // grad_in in one pass (a phase's positions are stride apart: written phase by phase, each line
  // of grad_in would pass through the caches once per phase). Chunks small enough for those
  // outputs and the windows (about grad_output's size) to be read back from the last-level cache
  // (a U-Net layer at batch 128 has 100 MB of outputs).
  const int64_t plane = p.height * p.width;
  const int64_t chunk = samples_per_chunk((C * plane + O * p.out_h * p.out_w) * int64_t{sizeof(float)}, p.batch, 0.5,
                                          "CUCONV_CPU_PHASE_CHUNK");
  std::vector<const float*> outputs(rows.size() * cols.size());
  PackedBuffer<float> sums(chunk * C * plane), window;
  for (int64_t n0 = 0; n0 < p.batch; n0 += chunk) {
    const int64_t N = std::min(chunk, p.batch - n0);
    const float* dy = grad_out + n0 * O * p.out_h * p.out_w;
    std::fill(outputs.begin(), outputs.end(), nullptr);  // (no tap reaches the phases left null)
    float* next = sums.data();
    for (const Phase& phase : phases) {
      const PhaseAxis &r = phase.r, &c = phase.c;
      // grad_output itself where the window is all of it (a 2x2 kernel of stride 2, unpadded)
      const bool whole = r.pad == 0 && c.pad == 0 && r.window() == p.out_h && c.window() == p.out_w;
      if (!whole) {
        window.resize(N * O * r.window() * c.window());
        copy_window(dy, N * O, p.out_h, p.out_w, r, c, window.data());
      }
      const DirectConv problem{N, O, r.window(), c.window(), C, r.size, c.size, r.taps, c.taps,
                               1, 1, 0, 0, r.dilation, c.dilation};
      forward(problem, whole ? dy : window.data(), phase.weight.data(), next);
      outputs[r.phase * cols.size() + c.phase] = next;
      next += N * C * r.size * c.size;
    }
    // grad_in[n, ch, r.phase + sH*i, c.phase + sW*j] = phase (r, c)'s [n, ch, i, j], or zero
    const int64_t sH = p.stride_h, sW = p.stride_w;
    float* dx = grad_in + n0 * C * plane;
    torch::stable::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc)
        for (int64_t h = 0; h < p.height; ++h) {
          const PhaseAxis& r = rows[h % sH];
          float* to = dx + (nc * p.height + h) * p.width;
          for (const PhaseAxis& c : cols) {
            const float* from = outputs[r.phase * cols.size() + c.phase];
            if (from == nullptr) {
              for (int64_t j = 0; j < c.size; ++j) to[c.phase + j * sW] = 0.f;
              continue;
            }
            from += (nc * r.size + h / sH) * c.size;
            for (int64_t j = 0; j < c.size; ++j) to[c.phase + j * sW] = from[j];
          }
        }
    });
  }
}

}  // namespace cuconv
