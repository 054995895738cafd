"""Mutation check: do the tests catch deliberate bugs in the kernels?

    python tests/mutation_check.py [--only ID[,ID...]] [--keep DIR] [--report FILE]

Applies each mutant below, one at a time, to a copy of the repository, rebuilds the CPU
kernels and the emulated CUDA device there (CUCONV_CPU_ONLY=1 CUCONV_EMULATED_CUDA=1,
incremental after the first build) and runs the tests named for it. A mutant is caught when those tests fail. Every mutant must be caught; add
one for each bug found in review or in the field. Prints a markdown table (and writes it
with --report); exits 1 if a mutant survived or did not compile. About 15 minutes on 2 cores.

Run by hand when kernels change (the report of the last run is in benchmarks/NOTES.md). The
CUDA mutants are caught on the emulated CUDA device (csrc/emulation/).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OPS = "tests/test_ops.py"
PRECISION = "tests/test_precision.py"
DISPATCH = "tests/test_cpu_dispatch.py"
TRANSFORMS = "tests/test_transforms.py"
EMULATION = "tests/test_emulation.py"
EMULATED_OPS = ("-k", "emulated", "tests/test_ops.py")
CUDA_KERNELS = "tests/test_cuda_kernels.py"
DEPTHWISE = "tests/test_depthwise.py"
PIXEL = "tests/test_pixel_gemm.py"  # the device suite on the emulated CUDA device
TUNING = "tests/test_tuning.py"
BIAS = ("-k", "bias", "tests/test_ops.py")
FORWARD_MODE = ("-k", "forward or dual or jacfwd", "tests/test_transforms.py")
TILED_2X2 = ("-k", "tiled_2x2", DISPATCH)  # each tiled 2x2 average pooling kernel, forced
DTYPES = "tests/test_dtypes.py"
INTEGERS = ("-k", "integers", DTYPES)  # max pooling and convolution of integer tensors
INT64_POOLING = ("-k", "int64", DTYPES)  # average pooling of int64 tensors
COMPLEX = ("-k", "complex", DTYPES)  # complex convolution and adaptive average pooling
HALF_POOLING = ("-k", "float16", PRECISION)  # float16 pooling: cuconv's own conversions (opmath.h)
CHANNELS_LAST_POOLING = ("-k", "channels_last_matches_torch_and_stays", OPS)
CONV_TRANSPOSE = "tests/test_conv_transpose.py"
STRIDE_PHASES = "tests/test_stride_phases.py"


@dataclass
class Mutant:
    id: str
    kind: str  # what class of bug it stands for
    file: str
    find: str  # exact text, which must occur once
    replace: str
    tests: tuple


MUTANTS = [
    Mutant("im2col-dilation", "index math", "csrc/cpu/conv2d.cpp",
           "const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;\n    if (ih < 0 || ih >= g.height) {\n      pad(",
           "const int64_t ih = oh * g.stride_h - g.pad_h + i;\n    if (ih < 0 || ih >= g.height) {\n      pad(",
           (OPS,)),
    Mutant("offset-table-stride", "index math", "csrc/cpu/conv2d.cpp",
           "static_cast<int32_t>(r.source + q * g.stride_w);",
           "static_cast<int32_t>(r.source + q);", (OPS,)),
    Mutant("block-plan-reused-without-its-sample", "index math", "csrc/cpu/conv2d.cpp",
           "    input_origin = first * sample_in;\n", "    input_origin = 0;\n", (OPS,)),
    Mutant("avx512-gather-reads-the-padding", "padding edge", "csrc/cpu/simd_avx512.cpp",
           "_mm512_mask_cmpge_epi32_mask(lanes, offset, _mm512_setzero_si512())",
           "_mm512_mask_cmpge_epi32_mask(lanes, offset, _mm512_set1_epi32(-1))", (OPS,)),
    Mutant("offset-table-col2im-skips-origin", "index math", "csrc/cpu/conv2d.cpp",
           "if (offsets[col] >= 0) d[offsets[col]] += row[col];", "if (offsets[col] > 0) d[offsets[col]] += row[col];",
           (OPS,)),
    Mutant("winograd-output-transform", "index math", "csrc/cpu/winograd_tile.h",
           "t[4 + j] = s[4 + j] - s[8 + j] - s[12 + j];", "t[4 + j] = s[4 + j] - s[8 + j] + s[12 + j];",
           ("tests/test_winograd.py",)),
    Mutant("winograd-nchw-strip-padding", "padding edge", "csrc/cpu/winograd.cpp",
           "const int64_t w0 = std::min(pad_, strip_w_), w1", "const int64_t w0 = 0 * std::min(pad_, strip_w_), w1",
           ("tests/test_winograd.py",)),
    Mutant("winograd-nchw-flush-partial-row", "tile bounds", "csrc/cpu/winograd.cpp",
           "const int64_t col0 = 2 * out_row_.b, col1", "const int64_t col0 = 0 * out_row_.b, col1",
           ("tests/test_winograd.py",)),
    Mutant("winograd-weight-sums-sign", "index math", "csrc/cpu/winograd.cpp",
           "t[2][j] = n[4 + j] + n[8 + j] - n[12 + j];", "t[2][j] = n[4 + j] + n[8 + j] + n[12 + j];",
           ("tests/test_winograd.py",)),
    Mutant("winograd-nhwc-channel-tail", "vector tail", "csrc/cpu/winograd_tile.h",
           "for (; c < channels; ++c) winograd_patch_columns<float>(d, c, v, v_stride);",
           "for (; c + 1 < channels; ++c) winograd_patch_columns<float>(d, c, v, v_stride);", ("tests/test_winograd.py",)),
    Mutant("winograd-nhwc-bias-one-column", "index math", "csrc/cpu/winograd_tile.h",
           "t[4 * i + 1] - t[4 * i + 2] - t[4 * i + 3] + b};", "t[4 * i + 1] - t[4 * i + 2] - t[4 * i + 3]};",
           ("tests/test_winograd.py",)),
    Mutant("winograd-nhwc-depth-slices-overwrite", "reduction", "csrc/cpu/winograd.cpp",
           "kElements * o_pad, k0 > 0, nullptr);", "kElements * o_pad, false, nullptr);", ("tests/test_winograd.py",)),
    Mutant("winograd-gradient-odd-edge", "tile bounds", "csrc/cpu/winograd.cpp",
           "e[2 * r + s] = oh < p_.out_h && ow < p_.out_w ? dy_", "e[2 * r + s] = oh < p_.out_h + 1 && ow < p_.out_w ? dy_",
           ("tests/test_winograd.py",)),
    Mutant("winograd-weight-ring-slot", "index math", "csrc/cpu/winograd.cpp",
           "const int64_t slot = (h % slots_ + slots_) % slots_, C = channels_;",
           "const int64_t slot = (h % slots_ + slots_) % slots_ / 2, C = channels_;", ("tests/test_winograd.py",)),
    Mutant("winograd-weight-partial-order", "reduction", "csrc/cpu/winograd.cpp",
           "for (int64_t part = 1; part < parts; ++part) total +=", "for (int64_t part = 2; part < parts; ++part) total +=",
           ("tests/test_winograd.py",)),
    Mutant("pixel-sum-keeps-last-tap", "reduction", "csrc/cpu/pixel_gemm.cpp",
           "depth * mr, b + k0 * nr, depth * nr, sum.data(), block, accumulate,",
           "depth * mr, b + k0 * nr, depth * nr, sum.data(), block, accumulate && k0 > 0,", (PIXEL,)),
    Mutant("pixel-source-stride", "index math", "csrc/cpu/pixel_gemm.cpp",
           "iw = ow * p.stride_w - p.pad_w + j * p.dilation_w;", "iw = ow * p.stride_h - p.pad_w + j * p.dilation_w;",
           (PIXEL,)),
    Mutant("pixel-tapless-pixel-drops-bias", "padding edge", "csrc/cpu/pixel_gemm.cpp",
           "row_bias ? row_bias[m - m_begin] : 0.f", "0.f", (PIXEL,)),
    Mutant("pixel-pack-batch-first-channel", "index math", "csrc/cpu/pixel_gemm.cpp",
           "transpose(src + (panel * nr * channels + c0 + c) * pixels,", "transpose(src + (panel * nr * channels + c0) * pixels,",
           (PIXEL,)),
    Mutant("bias-grad-drops-leftover-pixels", "boundary", "csrc/cpu/bias_gradient.cpp",
           "add_rows(dy + rows * width, P - rows * k, C, C, sums);", "(void)k;", BIAS),
    Mutant("bias-grad-group-fold", "index math", "csrc/cpu/bias_gradient.cpp",
           "sums[c0 + j / plane] += columns[j];", "sums[c0 + j % channels] += columns[j];", BIAS),
    Mutant("bias-grad-float-sums", "precision", "csrc/cpu/bias_gradient.cpp",
           "sums[j] += static_cast<double>(sum);", "sums[j] = static_cast<float>(sums[j] + sum);", BIAS),
    Mutant("pixel-skips-inf-weight-check", "special values", "csrc/cpu/pixel_gemm.cpp",
           "stage.at(t, k * mr + r) = v;\n              special |= is_special(v);", "stage.at(t, k * mr + r) = v;",
           (PIXEL,)),
    Mutant("nhwc-weight-grad-tail-short", "tile bounds", "csrc/cpu/conv2d_channels_last.cpp",
           "std::copy(rows[k] + full, rows[k] + C, tails.begin() + k * nr);",
           "std::copy(rows[k] + full, rows[k] + C - 1, tails.begin() + k * nr);", ("tests/test_tuning.py",)),
    Mutant("nhwc-weight-grad-dy-panel-step", "index math", "csrc/cpu/gemm_tile.h",
           "    a += a_step;\n", "    a += MR;\n", ("tests/test_tuning.py",)),
    Mutant("nhwc-weight-grad-last-panel-in-place", "tile bounds", "csrc/cpu/conv2d_channels_last.cpp",
           "const int64_t a_step = m0 < whole_panels ? O : mr;", "const int64_t a_step = O;", ("tests/test_tuning.py",)),
    Mutant("rows-b-tile-offset", "index math", "csrc/cpu/gemm_tile.h",
           "const typename Isa::T* b = b_rows[k] + b_offset;", "const typename Isa::T* b = b_rows[k];",
           ("tests/test_tuning.py",)),
    Mutant("tuner-never-measures-again", "measurement", "csrc/tuning/measured_choice.cpp",
           "if (seconds < kDisturbed * recorded.winner_seconds)", "if (false)", ("tests/test_tuning.py",)),
    Mutant("nhwc-1x1-input-gradient-row-step", "index math", "csrc/cpu/conv2d_channels_last.cpp",
           "whole ? p.stride_w * C : nr, o0 > 0, nullptr);", "whole ? C : nr, o0 > 0, nullptr);", ("tests/test_tuning.py",)),
    Mutant("nhwc-1x1-input-gradient-depth", "boundary", "csrc/cpu/conv2d_channels_last.cpp",
           "whole ? p.stride_w * C : nr, o0 > 0, nullptr);", "whole ? p.stride_w * C : nr, false, nullptr);",
           ("tests/test_tuning.py",)),
    Mutant("nhwc-1x1-input-gradient-column-left-unzeroed", "padding edge", "csrc/cpu/conv2d_channels_last.cpp",
           "if (iw % p.stride_w != 0) std::fill_n(row + iw * C, C, T(0));",
           "if (iw % p.stride_w > 1) std::fill_n(row + iw * C, C, T(0));", ("tests/test_tuning.py",)),
    Mutant("tuner-failing-candidate-fails-the-call", "measurement", "csrc/tuning/measured_choice.cpp",
           "      if (!failure) failure = std::current_exception();\n",
           "      throw;\n", ("tests/test_tuning.py",)),
    Mutant("tuner-no-second-look", "measurement", "csrc/tuning/measured_choice.cpp",
           "if (recorded.checks_left == 1)", "if (false)", ("tests/test_tuning.py",)),
    Mutant("tuner-second-look-forgets-first-times", "measurement", "csrc/tuning/measured_choice.cpp",
           "  if (best.size() != candidates.size()) best.assign(",
           "  best.assign(candidates.size(), std::numeric_limits<double>::infinity());\n  if (best.size() != candidates.size()) best.assign(",
           ("tests/test_tuning.py",)),
    Mutant("tuner-checks-every-call", "measurement", "csrc/tuning/measured_choice.cpp",
           "record(key, {candidates[winner].name, best[winner], 0, best});",
           "record(key, {candidates[winner].name, best[winner], kChecks, best});", ("tests/test_tuning.py",)),
    Mutant("nhwc-max-pool-vector-drops-nan", "special values", "csrc/cpu/pool_tile.h",
           "const Ints takes = (value > best[v]) | (value != value);", "const Ints takes = (value > best[v]);", (OPS,)),
    Mutant("nhwc-max-pool-vector-index-lanes", "index math", "csrc/cpu/pool_tile.h",
           "const Ints position = Ints{} + window[t];", "const Ints position = Ints{} + window[taps - t];", (OPS,)),
    Mutant("nhwc-max-unpool-2x2-keeps-stray-index", "index math", "csrc/cpu/pool2d.cpp",
           "  return missed == 0;", "  return true;", (OPS,)),
    Mutant("nhwc-max-unpool-2x2-odd-edge", "padding edge", "csrc/cpu/pool2d.cpp",
           "const int64_t from = h < 2 * g.Ho ? 2 * g.Wo : 0;", "const int64_t from = h < 2 * g.Ho ? 2 * g.Wo : g.W;",
           (OPS,)),
    Mutant("global-unpool-vector-lanes", "index math", "csrc/cpu/pool_tile.h",
           "lanes[m][l] = static_cast<int32_t>((L * m + l) / plane);",
           "lanes[m][l] = static_cast<int32_t>((L * m + l + 1) / plane);", (DISPATCH,)),
    Mutant("global-pool-transpose-mask", "index math", "csrc/cpu/register_transpose.h",
           "const Ints keep_high = lane + B + (has_bit & (L - B));",
           "const Ints keep_high = lane + (has_bit & (L - B));", (DISPATCH,)),
    Mutant("global-pool-half-store-truncates", "rounding", "csrc/cpu/pool_tile.h",
           "_mm256_cvtps_ph(floats, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)",
           "_mm256_cvtps_ph(floats, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)", (DISPATCH,)),
    Mutant("global-pool-half-loads-one-register", "index math", "csrc/cpu/pool_tile.h",
           "__builtin_memcpy(&bits, p + i, sizeof bits);", "__builtin_memcpy(&bits, p, sizeof bits);", (DISPATCH,)),
    Mutant("global-pool-half-keeps-nan-payload", "special values", "csrc/cpu/pool_tile.h",
           "narrow = (narrow & ~nan) | (nan & ((narrow & 0x8000) | 0x7E00));", "", (DISPATCH,)),
    Mutant("global-pool-tail-unmasked", "padding edge", "csrc/cpu/pool_tile.h",
           "part[r] += inside[r] ? v : Values{};", "part[r] += v;", (DISPATCH,)),
    Mutant("global-pool-pairwise-from-the-middle", "reduction", "csrc/cpu/pool_tile.h",
           "transpose_adding_halves<Values, Lanes, L>(sums);", "transpose_adding_halves<Values, Lanes, L, L / 4>(sums);",
           (DISPATCH,)),
    Mutant("global-pool-halves-add-one-lane-twice", "reduction", "csrc/cpu/register_transpose.h",
           "const Ints second = lane + B + (has_bit & (L - B));", "const Ints second = lane + (has_bit & (L - B));",
           (DISPATCH,)),
    Mutant("global-pool-bf16-truncates", "rounding", "csrc/cpu/pool_tile.h",
           "const Lanes rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;", "const Lanes rounded = bits >> 16;",
           (DISPATCH,)),
    Mutant("global-pool-registers-folded-once", "reduction", "csrc/cpu/pool_tile.h",
           "for (int step = 8; step >= L; step /= 2)  // partial sum i += i + step, within the plane's registers",
           "for (int step = 8; step >= 2 * L; step /= 2)  // partial sum i += i + step, within the plane's registers",
           (DISPATCH,)),
    Mutant("avg-pool-2x2-groups-sum-order", "reduction", "csrc/cpu/pool_tile.h",
           "(((Floats{} + corner[0]) + corner[1]) + corner[W]) + corner[W + 1];",
           "(((Floats{} + corner[0]) + corner[W]) + corner[1]) + corner[W + 1];", (DISPATCH,)),
    Mutant("avg-pool-2x2-groups-any-divisor-by-inverse", "rounding", "csrc/cpu/pool_tile.h",
           "return (bits & 0x7FFFFF) == 0 && sign_and_exponent != 0", "return sign_and_exponent != 0", (DISPATCH,)),
    Mutant("avg-unpool-2x2-groups-odd-column-gets-a-share", "index math", "csrc/cpu/pool_tile.h",
           "window_of[k] = h < 2 * Ho && w < 2 * Wo ?", "window_of[k] = h < 2 * Ho && w <= 2 * Wo ?", (DISPATCH,)),
    Mutant("avg-pool-2x2-rows-sum-order", "reduction", "csrc/cpu/pool_tile.h",
           "const Floats sum = (((Floats{} + __builtin_shuffle(t0, t1, even)) + __builtin_shuffle(t0, t1, odd)) +",
           "const Floats sum = (((Floats{} + __builtin_shuffle(t0, t1, even)) + __builtin_shuffle(b0, b1, odd)) +",
           TILED_2X2),
    Mutant("avg-pool-2x2-rows-output-order", "index math", "csrc/cpu/pool_tile.h",
           "idx[o] = 4 * (p / 2) + 2 * half + p % 2;", "idx[o] = 4 * (p / 2) + half + 2 * (p % 2);", TILED_2X2),
    Mutant("avg-unpool-2x2-rows-on-untiled-planes", "padding edge", "csrc/cpu/pool2d.cpp",
           "if (tiled_2x2(g) && (!gradient || (g.H == 2 * g.Ho && g.W == 2 * g.Wo))) return",
           "if (tiled_2x2(g)) return", TILED_2X2),
    Mutant("avg-pool-2x2-rows-never-measured", "kernel choice", "csrc/cpu/pool2d.cpp",
           "if (rows) candidates.push_back(", "if (false) candidates.push_back(", TILED_2X2),
    Mutant("chunk-queue-drops-the-short-last-chunk", "work split", "csrc/cpu/parallel.h",
           "if (index >= (end_ - begin_ + chunk_ - 1) / chunk_) return false;",
           "if (index >= (end_ - begin_) / chunk_) return false;", (DISPATCH,)),
    # 16 lanes only (AVX-512's kernels): caught on any AVX2 CPU by the pooling kernels' 16-lane set
    # compiled for AVX2 (CUCONV_CPU_POOL_LANES=16, tests/test_ops.py POOL_ISAS)
    Mutant("sixteen-lane-numbers-swapped", "index math", "csrc/cpu/register_transpose.h",
           "else return Ints{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};",
           "else return Ints{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 14};", (DISPATCH,)),
    Mutant("global-sum-scalar-tail-one-lane", "reduction", "csrc/cpu/pool2d.cpp",
           "for (int64_t t = 0; k + t < end; ++t) part[t] += to_opmath(x[k + t]);",
           "for (int64_t t = 0; k + t < end; ++t) part[0] += to_opmath(x[k + t]);", (DISPATCH,)),
    Mutant("layout-ambiguous-reads-nchw", "layout", "csrc/stable.h",
           "  if (!strides_suggest_channels_last(t)) return false;",
           "  if (!strides_suggest_channels_last(t) || t.is_contiguous()) return false;", (OPS,)),
    Mutant("direct-block-drops-earlier-blocks", "reduction", "csrc/cpu/direct_tile.h",
           "Isa::store(sum, accumulate ? Isa::add(Isa::load(sum), acc[q][v]) : acc[q][v]);",
           "Isa::store(sum, acc[q][v]);", ("-k", "long_float32", DISPATCH)),
    Mutant("direct-row-chain-drops-earlier-chains", "reduction", "csrc/cpu/direct_tile.h",
           "Isa::store(sum, c0 > 0 ? Isa::add(Isa::load(sum), acc[r][o]) : acc[r][o]);",
           "Isa::store(sum, acc[r][o]);", ("-k", "long_float32", DISPATCH)),
    Mutant("direct-forward-one-block", "reduction", "csrc/cpu/direct_conv.cpp",
           "return {std::min(fit, taps_of(p)), ", "return {taps_of(p), ", ("-k", "long_float32", DISPATCH)),
    Mutant("direct-row-one-chain", "reduction", "csrc/cpu/direct_tile.h",
           "const int64_t chain_channels = kChainProducts / (kernel_h * kernel_w) > 0 ? kChainProducts / (kernel_h * kernel_w) : 1;",
           "const int64_t chain_channels = channels;", ("-k", "long_float32", DISPATCH)),
    Mutant("direct-weight-one-chain-per-image", "reduction", "csrc/cpu/direct_tile.h",
           "    if (chained >= kChainProducts) {", "    if (chained < 0) {",
           ("-k", "weight_gradient_over_large", DISPATCH)),
    Mutant("direct-weight-chain-drops-its-sums", "reduction", "csrc/cpu/direct_tile.h",
           "      Isa::store(sum, Isa::add(Isa::load(sum), acc[t][v]));\n      acc[t][v] = Isa::zero();",
           "      Isa::store(sum, acc[t][v]);\n      acc[t][v] = Isa::zero();", (OPS,)),
    Mutant("direct-to-planes-bias-channel", "index math", "csrc/cpu/direct_tile.h",
           "const Floats sums = block[o] + (bias != nullptr ? bias[o0 + o] : 0.f);",
           "const Floats sums = block[o] + (bias != nullptr ? bias[o] : 0.f);", (OPS,)),
    Mutant("direct-to-planes-short-block", "boundary", "csrc/cpu/direct_tile.h",
           "Isa::store_first(out, (typename Isa::V)sums, left);",
           "Isa::store_first(out, (typename Isa::V)sums, left - 1);", (OPS,)),
    Mutant("stream-copy-drops-unaligned-end", "boundary", "csrc/cpu/streaming.h",
           "  std::memcpy(to + i, from + i, bytes - i);",
           "", (DISPATCH,)),
    Mutant("direct-stream-last-pixel", "boundary", "csrc/cpu/direct_conv.cpp",
           "stream_copy(y_rows_ + c * plane(), stage_.data() + c * pixels_, pixels_ * static_cast<int64_t>(sizeof(Out)));",
           "stream_copy(y_rows_ + c * plane(), stage_.data() + c * pixels_, (pixels_ - 1) * static_cast<int64_t>(sizeof(Out)));",
           (TUNING,)),
    Mutant("direct-tap-block-restarts-the-sums", "reduction", "csrc/cpu/direct_conv.cpp",
           "/*accumulate=*/begin > row.begin);", "/*accumulate=*/false);", (OPS,)),
    Mutant("direct-stride-2-tiles-for-any-stride", "index math", "csrc/cpu/direct_conv.cpp",
           ": step == 2 ? tiles.forward_stride2 : tiles.forward;",
           ": step >= 2 ? tiles.forward_stride2 : tiles.forward;", (OPS,)),
    Mutant("direct-row-group-crosses-a-sample", "boundary", "csrc/cpu/direct_conv.cpp",
           "if (!cross) group = std::min(group, p.out_h - r % p.out_h);", "", (OPS,)),
    Mutant("pairs-nhwc-group-one-padded-sample", "boundary", "csrc/cpu/direct_conv.cpp",
           "(cross ? (blocking.group_rows + p.out_h - 1) / p.out_h + 1 : 1)", "1", (PRECISION,)),
    Mutant("direct-streamed-never-measured", "kernel choice", "csrc/cpu/conv2d.cpp",
           "    if (streaming_is_a_candidate(streamable))", "    if (false)", (TUNING,)),
    Mutant("pairs-never-measured", "kernel choice", "csrc/cpu/conv2d.cpp",
           "  if (pairs == OptionalMode::kAuto) {", "  if (false) {", (TUNING,)),
    Mutant("pairs-streamed-never-measured", "kernel choice", "csrc/cpu/conv2d.cpp",
           "if (streaming_is_a_candidate(on_pairs.output_bytes))", "if (false)", (TUNING,)),
    Mutant("pairs-interleave-high-half", "index math", "csrc/cpu/direct_conv.cpp",
           "out[i] = low[i] | static_cast<uint32_t>(high[i]) << 16;",
           "out[i] = low[i] | static_cast<uint32_t>(low[i]) << 16;", (PRECISION,)),
    Mutant("pairs-innermost-channels-last-step", "index math", "csrc/cpu/direct_conv.cpp",
           "channel_step = channels_last ? 1 : plane, position_step = channels_last ? channels : 1;",
           "channel_step = channels_last ? 1 : plane, position_step = channels_last ? channels - 1 : 1;", (PRECISION,)),
    Mutant("pairs-innermost-odd-channel", "boundary", "csrc/cpu/direct_conv.cpp",
           "if (channels % 2 != 0) out[pair_count - 1] = values[(channels - 1) * channel_step];", "", (PRECISION,)),
    Mutant("pairs-nhwc-tap-dilation", "index math", "csrc/cpu/direct_conv.cpp",
           "return (i * p.dilation_h * padded_w(p) + j * p.dilation_w) * p.in_channels + c;",
           "return (i * padded_w(p) + j * p.dilation_w) * p.in_channels + c;", (PRECISION,)),
    Mutant("pairs-nhwc-weight-column-step", "index math", "csrc/cpu/direct_conv.cpp",
           "*high = pixel(ih, w + p.stride_w);", "*high = pixel(ih, w + 1);", (PRECISION,)),
    Mutant("pairs-nhwc-weight-odd-row", "boundary", "csrc/cpu/direct_conv.cpp",
           "*high = 2 * m + 1 < p.out_w ? low + O : zeros.data();", "*high = low + O;", (PRECISION,)),
    Mutant("pairs-nhwc-rounds-down", "rounding", "csrc/cpu/direct_tile.h",
           "const Ints rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;",
           "const Ints rounded = bits >> 16;", (PRECISION,)),
    Mutant("pairs-nchw-bfloat16-tail-pixels", "boundary", "csrc/cpu/direct_tile.h",
           "if (q < left) out[q] = static_cast<uint16_t>(halves[q]);",
           "if (q + 1 < left) out[q] = static_cast<uint16_t>(halves[q]);", (PRECISION,)),
    Mutant("pairs-nhwc-last-vector-tail", "boundary", "csrc/cpu/direct_tile.h",
           "for (int64_t o = 0; o < last; ++o) out[o] = static_cast<uint16_t>(halves[o]);",
           "for (int64_t o = 0; o + 1 < last; ++o) out[o] = static_cast<uint16_t>(halves[o]);", (PRECISION,)),
    Mutant("pairs-nhwc-skips-padding-with-special-weights", "special values", "csrc/cpu/conv2d.cpp",
           "all_finite_bfloat16(w, q.out_channels * q.in_channels * taps)", "true", (PRECISION,)),
    Mutant("pairs-nhwc-skips-a-last-kernel-row", "boundary", "csrc/cpu/direct_conv.cpp",
           "if (ih >= 0 && ih < p.height) first = std::min(first, i), last = i;",
           "if (ih >= 0 && ih < p.height - 1) first = std::min(first, i), last = i;", (PRECISION,)),
    Mutant("pairs-nhwc-row-in-padding-not-zeroed", "padding edge", "csrc/cpu/direct_conv.cpp",
           "std::fill_n(rows.data() + g * p.out_w * width, p.out_w * width, 0.f);", "", (PRECISION,)),
    Mutant("pairs-nchw-on-pixels-never-measured", "kernel choice", "csrc/cpu/conv2d.cpp",
           "    if (on_pairs.on_pixels_too)\n", "    if (false)\n", (TUNING,)),
    Mutant("pairs-nchw-on-pixels-stays-nhwc", "layout", "csrc/cpu/conv2d.cpp",
           "    if (is_channels_last(input)) return y;\n", "    return y;\n", (PRECISION,)),
    Mutant("conv-ignores-a-channels-last-weight", "layout (Python)", "cuconv/functional.py",
           "    if _shape.convolution_prefers_channels_last(x, weight) and not _shape.is_channels_last(x):",
           "    if False:", (OPS,)),
    Mutant("conv-gradients-always-nchw", "layout (Python)", "cuconv/_ops.py",
           "    if channels_last != _shape.is_channels_last(t):", "    if channels_last and False:", (OPS,)),
    Mutant("suggests-channels-last-ignores-sizes", "layout (Python)", "cuconv/_shape.py",
           "        smallest = t.stride(d) * max(t.size(d), 1)", "        smallest = t.stride(d)", (OPS,)),
    Mutant("is-channels-last-not-dense", "layout (Python)", "cuconv/_shape.py",
           "    return suggests_channels_last(t) and _dense_in_order(t, (0, 2, 3, 1))", "    return suggests_channels_last(t)",
           (OPS,)),
    Mutant("conv-input-gradient-in-grad-output-layout", "layout (Python)", "cuconv/_ops.py",
           "    grad_output = _in_layout(ctx.channels_last, grad_output)",
           "    grad_output = _in_layout(_shape.is_channels_last(grad_output), grad_output)", (OPS,)),
    Mutant("conv-channels-last-input-by-contiguous", "layout (Python)", "cuconv/functional.py",
           "        x = x.clone(memory_format=torch.channels_last)", "        x = x.contiguous(memory_format=torch.channels_last)",
           (OPS,)),
    Mutant("conv-transpose-crops-at-the-bottom", "padding edge", "cuconv/functional.py",
           "y = y[:, :, padding[0]:padding[0] + size[2], padding[1]:padding[1] + size[3]]",
           "y = y[:, :, :size[2], :size[3]]", (CONV_TRANSPOSE,)),
    Mutant("conv-transpose-past-stride-as-below", "boundary", "cuconv/functional.py",
           "    if output_padding[0] < stride[0] and output_padding[1] < stride[1]:",
           "    if output_padding[0] <= stride[0] and output_padding[1] <= stride[1]:", (CONV_TRANSPOSE,)),
    Mutant("conv-transpose-empty-crop-nchw", "layout (Python)", "cuconv/functional.py",
           "        if _shape.is_channels_last(x) and not _shape.is_channels_last(y):", "        if False:",
           (CONV_TRANSPOSE,)),
    Mutant("conv-transpose-bias-per-row", "index math", "cuconv/functional.py",
           "        y = y + bias.view(1, -1, 1, 1)", "        y = y + bias.view(1, -1, 1)", (CONV_TRANSPOSE,)),
    Mutant("conv-transpose-weight-gradient-nchw", "layout (Python)", "cuconv/_ops.py",
           "    ctx.channels_last = _shape.convolution_prefers_channels_last(grad_output, weight)",
           "    ctx.channels_last = False", (CONV_TRANSPOSE,)),
    Mutant("onnx-conv-transpose-one-side-padding", "padding edge", "cuconv/onnx.py",
           "((size - 1) * stride[i] + reach - 2 * padding[i])", "((size - 1) * stride[i] + reach - padding[i])",
           ("-k", "conv_transpose", "tests/test_onnx.py")),
    Mutant("pairs-strided-1x1-gradient-not-offered", "kernel choice", "csrc/cpu/conv2d.cpp",
           "(unpadded_1x1(p) && is_channels_last(model))", "(false)", (PRECISION,)),
    Mutant("pairs-placement-leaves-gaps", "boundary", "csrc/cpu/direct_conv.cpp",
           "if (w % at.step_w != 0) std::fill_n(", "if (w % at.step_w > 1) std::fill_n(", (PRECISION,)),
    Mutant("pairs-odd-channel-count", "boundary", "csrc/cpu/direct_conv.cpp",
           "pairs.in_channels = (p.in_channels + 1) / 2;", "pairs.in_channels = p.in_channels / 2;", (PRECISION,)),
    Mutant("pairs-weight-skips-finite-check", "special values", "csrc/cpu/conv2d.cpp",
           "if (p.out_w % 2 != 0 && !all_finite_bfloat16(", "if (false && !all_finite_bfloat16(", (PRECISION,)),
    Mutant("pairs-weight-column-step", "index math", "csrc/cpu/direct_conv.cpp",
           "row[w] = at(w) | at(w + p.stride_w) << 16;", "row[w] = at(w) | at(w + 1) << 16;", (PRECISION,)),
    Mutant("pairs-odd-row-drops-last-pixel", "boundary", "csrc/cpu/direct_conv.cpp",
           "if (width % 2 != 0) out[pair_width - 1] = in[width - 1];", "", (PRECISION,)),
    Mutant("pairs-input-gradient-unflipped", "index math", "csrc/cpu/conv2d.cpp",
           "flipped.data(), nullptr, way);", "bfloat16_bits(w), nullptr, way);",
           (PRECISION,)),
    Mutant("pool-gradient-stream-skips-plane", "boundary", "csrc/cpu/pool2d.cpp",
           "        output.finish(dx_data + plane * plane_in);",
           "        if (plane != begin) output.finish(dx_data + plane * plane_in);", (DISPATCH,)),
    Mutant("nhwc-pool-gradient-stream-skips-sample", "boundary", "csrc/cpu/pool2d.cpp",
           "          output.finish(dx_data + n * plane_in * C);",
           "          if (n != begin) output.finish(dx_data + n * plane_in * C);", (DISPATCH,)),
    Mutant("whole-plane-average-divisor", "index math", "csrc/cpu/pool2d.cpp",
           "      global_pool(s.batch * s.channels, g.H * g.W, plan.divisor(plan.row_factor[0], 0),",
           "      global_pool(s.batch * s.channels, g.H * g.W, g.H * g.W,", (DISPATCH,)),
    Mutant("global-max-drops-nan", "special values", "csrc/cpu/pool_tile.h",
           "const Ints takes = (column > best) | (column != column);", "const Ints takes = (column > best);",
           (DISPATCH,)),
    Mutant("global-max-index-in-block", "index math", "csrc/cpu/pool_tile.h",
           "Ints{} + static_cast<int32_t>(k) : best_index", "Ints{} + static_cast<int32_t>(k % L) : best_index", (DISPATCH,)),
    Mutant("global-sum-one-block", "reduction", "csrc/cpu/simd.h",
           "constexpr int64_t kGlobalSumBlock = 256;", "constexpr int64_t kGlobalSumBlock = int64_t{1} << 40;",
           (DISPATCH,)),
    Mutant("global-sum-along-plane-tail", "reduction", "csrc/cpu/pool_tile.h",
           "for (int64_t t = 0; k + t < end; ++t) lanes[t] += x[k + t];",
           "for (int64_t t = 0; k + t < end; ++t) lanes[0] += x[k + t];", (DISPATCH,)),
    Mutant("direct-row-tile-columns", "index math", "csrc/cpu/direct_conv.cpp",
           "tiles.row(band + ow0, p.stride_h * wp, hp * wp, p.dilation_h * wp, p.dilation_w, C, kh, kw,",
           "tiles.row(band + ow0, p.stride_h * wp, hp * wp, p.dilation_h * wp, 1, C, kh, kw,", (OPS,)),
    Mutant("padding-edge", "padding edge", "csrc/cpu/window.h",
           "offset >= 0 ? int64_t{0} : (-offset + stride - 1) / stride",
           "offset >= 0 ? int64_t{0} : (-offset) / stride", (OPS,)),
    Mutant("direct-tap-offsets", "index math", "csrc/cpu/direct_conv.cpp",
           "taps.push_back((c * padded_h(p) + i * p.dilation_h) * padded_w(p) + j * p.dilation_w);",
           "taps.push_back((c * padded_h(p) + i * p.dilation_h) * padded_w(p) + j);", (OPS,)),
    Mutant("gemm-edge-tile-overwrites", "tile bounds", "csrc/cpu/gemm.cpp",
           "out = accumulate ? out + sum : (row_bias != nullptr ? sum + row_bias[r] : sum);",
           "out = row_bias != nullptr ? sum + row_bias[r] : sum;", (OPS,)),
    Mutant("depthwise-weight-overwrite", "reduction", "csrc/cpu/depthwise_tile.h",
           "depthwise_store<Isa, kWhole>(sum, Isa::add(depthwise_load<Isa, kWhole>(sum, lanes), acc[k][v]), lanes);",
           "depthwise_store<Isa, kWhole>(sum, acc[k][v], lanes);", (DEPTHWISE,)),
    Mutant("depthwise-interior-from-column-0", "bounds", "csrc/cpu/simd.h",
           "first = std::max(first, in.begin);", "first = std::max(first, int64_t{0});", (DEPTHWISE,)),
    Mutant("depthwise-gather-ignores-row-stride", "index math", "csrc/cpu/depthwise.cpp",
           "if (rows_down < 0 || rows_down % sH != 0 || rows_down / sH >= p.out_h) continue;",
           "if (rows_down < 0 || rows_down / sH >= p.out_h) continue;", (DEPTHWISE,)),
    Mutant("depthwise-multiplier-sum-drops-one", "reduction", "csrc/cpu/depthwise.cpp",
           "for (int64_t m = 1; m < sum_of; ++m)", "for (int64_t m = 2; m < sum_of; ++m)", (DEPTHWISE,)),
    Mutant("depthwise-parts-overwrite", "reduction", "csrc/cpu/depthwise.cpp",
           "total += partial[(part * taps + t) * O + o];", "total = partial[(part * taps + t) * O + o];", (DEPTHWISE,)),
    Mutant("depthwise-band-misses-last-row", "bounds", "csrc/cpu/depthwise.cpp",
           "(r1 - 1) * p.stride_h - p.pad_h + (p.kernel_h - 1) * p.dilation_h + 1",
           "(r1 - 1) * p.stride_h - p.pad_h + (p.kernel_h - 1) * p.dilation_h", (DEPTHWISE,)),
    Mutant("depthwise-partial-vector-store", "vector tail", "csrc/cpu/simd_avx512.cpp",
           "_mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);",
           "_mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 2), v);", (DEPTHWISE,)),
    Mutant("max-pool-nhwc-tail-overlap-off", "vector tail", "csrc/cpu/pool_tile.h",
           "if (c0 < C) max_pool_registers_nhwc<Floats, Ints, Longs, L, 1>(x, C, C - L,",
           "if (c0 < C) max_pool_registers_nhwc<Floats, Ints, Longs, L, 1>(x, C, C - L - 1,", (DISPATCH,)),
    Mutant("max-pool-nhwc-bf16-widening", "half precision", "csrc/cpu/pool_tile.h",
           "const Ints wide = __builtin_convertvector(bits, Ints) << 16;",
           "const Ints wide = __builtin_convertvector(bits, Ints) << 15;", (DISPATCH,)),
    Mutant("by-group-bias-of-group-0", "index math", "csrc/cpu/conv2d.cpp",
           "std::optional<Tensor>(leading_slice(b, gi * O, O))", "std::optional<Tensor>(leading_slice(b, 0, O))",
           (DISPATCH,)),
    Mutant("by-group-input-gradient-channels", "index math", "csrc/cpu/conv2d.cpp",
           "copy_into_channels(dx, gi * C,", "copy_into_channels(dx, gi * O,", (DISPATCH,)),
    Mutant("half-as-float-drops-bias", "half precision", "csrc/cpu/conv2d.cpp",
           "                                              bias_float, stride, padding, dilation, groups, false, false),",
           "                                              std::nullopt, stride, padding, dilation, groups, false, false),",
           (PRECISION,)),
    Mutant("transpose-floats-last-row", "vector tail", "csrc/cpu/register_transpose.h",
           "      if (r0 + i < rows) {", "      if (r0 + i + 1 < rows) {", (DEPTHWISE, "tests/test_winograd.py")),
    Mutant("transpose-floats-stores-whole-vectors", "vector tail", "csrc/cpu/register_transpose.h",
           "        if (lanes == L) Isa::store(d, (V)b[q]);", "        if (lanes > 0) Isa::store(d, (V)b[q]);",
           (DEPTHWISE, "tests/test_winograd.py")),
    Mutant("transpose-floats-short-columns", "vector tail", "csrc/cpu/register_transpose.h",
           "(left == L ? Isa::load(s) : Isa::load_first(s, left))", "(left == L ? Isa::load(s) : Isa::load_first(s, left - 1))",
           (OPS, "tests/test_winograd.py")),
    Mutant("avg-2x2-drops-pixel-in-float16", "half precision", "csrc/cpu/pool2d.cpp",
           "static_cast<acc_t>(r1[2 * ow]) + static_cast<acc_t>(r1[2 * ow + 1]);",
           "static_cast<acc_t>(r1[2 * ow]) + (std::is_same_v<scalar_t, c10::Half> ? acc_t(0) : "
           "static_cast<acc_t>(r1[2 * ow + 1]));", (PRECISION, OPS)),
    Mutant("weight-grad-halved-in-float16", "half precision", "csrc/cpu/conv2d.cpp",
           "dw[i] = static_cast<scalar_t>(total);",
           "dw[i] = static_cast<scalar_t>(std::is_same_v<scalar_t, c10::Half> ? total / 2 : total);",
           (PRECISION, OPS)),
    Mutant("bfloat16-forward-1.5%-high", "half precision", "csrc/cpu/conv2d.cpp",
           "for (int64_t q = 0; q < s.length(g.out_w); ++q) dst[q] = static_cast<scalar_t>(src[q]);",
           "for (int64_t q = 0; q < s.length(g.out_w); ++q) dst[q] = static_cast<scalar_t>("
           "std::is_same_v<scalar_t, c10::BFloat16> ? src[q] * acc_t(1.015) : src[q]);", (PRECISION, OPS)),
    Mutant("half-avg-scatter-rounds-per-add", "half precision", "csrc/cpu/pool2d.cpp",
           "for (int64_t ow = g.reach[j].begin; ow < g.reach[j].end; ++ow) row[ow * g.sW + offset] += s[ow];",
           "for (int64_t ow = g.reach[j].begin; ow < g.reach[j].end; ++ow) row[ow * g.sW + offset] = "
           "static_cast<acc_t>(static_cast<scalar_t>(row[ow * g.sW + offset] + s[ow]));", (PRECISION,)),
    Mutant("half-col2im-rounds-per-chunk", "half precision", "csrc/cpu/conv2d.cpp",
           "col2im_add(g, plan, grad_columns.data(), m0, m0 + m_count, origin, target + gi * group_in);",
           "col2im_add(g, plan, grad_columns.data(), m0, m0 + m_count, origin, target + gi * group_in);\n"
           "          if constexpr (kRoundOnce) for (int64_t e = 0; e < sample_in; ++e) "
           "target[e] = static_cast<acc_t>(static_cast<scalar_t>(target[e]));", (PRECISION,)),
    Mutant("weight-grad-sums-two-parts", "thread partition", "csrc/cpu/conv2d.cpp",
           "for (int64_t p = 1; p < parts; ++p) total += partial[p * weights + i];",
           "for (int64_t p = 1; p < std::min<int64_t>(parts, 2); ++p) total += partial[p * weights + i];",
           (DISPATCH,)),
    Mutant("forward-last-chunk-short", "thread partition", "csrc/cpu/conv2d.cpp",
           "for_each_block(first, last, rows, [&](int64_t r0, int64_t r1) {",
           "for_each_block(first, last - (first > 0 && last == total_rows), rows, [&](int64_t r0, int64_t r1) {",
           (DISPATCH,)),
    Mutant("direct-weight-grad-skips-a-part", "thread partition", "csrc/cpu/direct_conv.cpp",
           "for (int64_t part = 0; part < parts; ++part) total += row[",
           "for (int64_t part = parts > 2 ? 1 : 0; part < parts; ++part) total += row[", (DISPATCH,)),
    Mutant("direct-weight-call-rows-of-one-sample", "index math", "csrc/cpu/direct_conv.cpp",
           "x_rows[r] = sample((row + r) / p.out_h) + (row + r) % p.out_h * operands.row_step;",
           "x_rows[r] = sample(row / p.out_h) + (row + r) % p.out_h * operands.row_step;", (OPS, PRECISION)),
    Mutant("direct-weight-padded-slot-kept", "boundary", "csrc/cpu/direct_conv.cpp",
           "      if (held[n % slots] != n) {\n        operands.sample(n, slot);",
           "      if (held[n % slots] < 0) {\n        operands.sample(n, slot);", (OPS, PRECISION)),
    Mutant("isa-avx2-runs-avx512", "ISA dispatch", "csrc/cpu/gemm.cpp",
           "case CpuIsa::kAvx2: return avx2_microkernel_float();",
           "case CpuIsa::kAvx2: return avx512_microkernel_float();", (DISPATCH,)),
    Mutant("isa-setting-ignored", "ISA dispatch", "csrc/cpu/gemm.cpp",
           "return std::min(wanted, best_isa_of_this_cpu());", "return best_isa_of_this_cpu();", (DISPATCH,)),
    Mutant("max-pool-stride2-row-start-keeps-left-column", "padding edge", "csrc/cpu/pool2d.cpp",
           "for (int64_t t = 0; t < windows; t += Wo) {", "for (int64_t t = 0; t < Wo; t += Wo) {", (OPS,)),
    Mutant("max-pool-stride2-right-nan-loses", "index math", "csrc/cpu/pool2d.cpp",
           "take = (right > max) | (right != right);", "take = (right > max);", ("tests/test_errors.py",)),
    Mutant("max-pool-stride2-rows-tie-to-last", "index math", "csrc/cpu/pool2d.cpp",
           "const bool take = (v[ow] > best[ow]) | (v[ow] != v[ow]);",
           "const bool take = (v[ow] >= best[ow]) | (v[ow] != v[ow]);", (OPS,)),
    Mutant("max-unpool-2x2-lower-left-pixel", "index math", "csrc/cpu/pool2d.cpp",
           "r1[2 * ow] = kept_or_zero(v, offset == W);", "r1[2 * ow] = kept_or_zero(v, offset == W + 1);", (OPS,)),
    Mutant("max-unpool-2x2-keeps-stray-index", "index math", "csrc/cpu/pool2d.cpp",
           "  return strays == 0;", "  return true;", (OPS,)),
    Mutant("max-pool-tie-takes-last", "index math", "csrc/cpu/pool2d.cpp",
           "return -static_cast<Bits>(((order(v) > order(best)) & !is_nan(best)) | is_nan(v));",
           "return -static_cast<Bits>(((order(v) >= order(best)) & !is_nan(best)) | is_nan(v));", (OPS,)),
    Mutant("max-pool-integer-tie-takes-last", "index math", "csrc/cpu/pool2d.cpp",
           "return -static_cast<std::make_signed_t<T>>(v > best); }",
           "return -static_cast<std::make_signed_t<T>>(v >= best); }", INTEGERS),
    Mutant("max-pool-integer-starts-at-zero", "special values", "csrc/cpu/pool2d.cpp",
           "return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();",
           "return -std::numeric_limits<T>::infinity();", INTEGERS),
    Mutant("max-pool-integer-cuda-starts-at-zero", "special values", "csrc/cuda/pool2d.cu",
           "return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();",
           "return -std::numeric_limits<T>::infinity();", INTEGERS),
    Mutant("float16-rounds-ties-up", "half precision", "csrc/cpu/opmath.h",
           "(magnitude + 0xFFFu + ((magnitude >> 13) & 1u) - (112u << 23)) >> 13",
           "(magnitude + 0x1000u - (112u << 23)) >> 13", HALF_POOLING),
    Mutant("float16-subnormal-input-scale", "half precision", "csrc/cpu/opmath.h",
           "static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-24f", "static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-23f",
           HALF_POOLING),
    Mutant("float16-subnormal-output", "half precision", "csrc/cpu/opmath.h",
           "bits_as<float>(magnitude) + 0.5f) - 0x3F000000u", "bits_as<float>(magnitude) + 1.0f) - 0x3F800000u", HALF_POOLING),
    Mutant("float16-overflow-not-inf", "half precision", "csrc/cpu/opmath.h",
           "result = select(mask_of(result > 0x7C00u), 0x7C00u, result);", "", HALF_POOLING),
    Mutant("float16-nan-becomes-inf", "half precision", "csrc/cpu/opmath.h",
           "result = select(mask_of(magnitude > 0x7F800000u), 0x7E00u, result);", "", HALF_POOLING),
    Mutant("float16-max-key-ignores-sign", "half precision", "csrc/cpu/pool2d.cpp",
           "const int16_t key_v = (magnitude_v ^ sign_v) - sign_v,", "const int16_t key_v = magnitude_v,", HALF_POOLING),
    Mutant("float16-max-nan-loses", "special values", "csrc/cpu/pool2d.cpp",
           "return ((key_v > key_best) & !nan_v & !nan_best) | nan_v;",
           "return (key_v > key_best) & !nan_v & !nan_best;", CHANNELS_LAST_POOLING),
    Mutant("nhwc-avg-block-writes-the-first-block", "index math", "csrc/cpu/pool2d.cpp",
           "y[ow * C + c0 + c] = from_opmath<scalar_t>(block[c] / divisor);",
           "y[ow * C + c] = from_opmath<scalar_t>(block[c] / divisor);", CHANNELS_LAST_POOLING),
    Mutant("adaptive-window-floor", "index math", "csrc/shape.h",
           "return ((i + 1) * in + out - 1) / out;", "return ((i + 1) * in) / out;", (OPS,)),
    Mutant("avg-divisor-ignores-padding", "padding edge", "csrc/cpu/pool2d.cpp",
           "const int64_t end = std::min(start + kernel, in + pad);\n  return {std::max<int64_t>(start, 0)",
           "const int64_t end = std::min(start + kernel, in);\n  return {std::max<int64_t>(start, 0)", (OPS,)),
    Mutant("direct-by-group-output-stride", "index math", "csrc/cpu/conv2d.cpp",
           "p.out_sample_stride = g.groups * g.out_channels_per_group * g.out_plane();",
           "p.out_sample_stride = g.out_channels_per_group * g.out_plane();", (DISPATCH,)),
    Mutant("direct-input-gradient-strides-unswapped", "index math", "csrc/cpu/direct_conv.h",
           "p.out_sample_stride, p.in_sample_stride};", "p.in_sample_stride, p.out_sample_stride};", (DISPATCH,)),
    Mutant("direct-by-group-ignores-nonfinite-weights", "special values", "csrc/cpu/conv2d.cpp",
           "all_finite(Operands{{w.const_data_ptr<float>(), w.numel()}}))  // (as", "true)  // (as", (DISPATCH,)),
    Mutant("bf16-pairs-odd-depth-reads-on", "padding edge", "csrc/cpu/gemm.cpp",
           "const float* odd = 2 * p + 1 < depth ? even + width : nullptr;", "const float* odd = even + width;",
           (PRECISION,)),
    Mutant("bf16-pairs-backward-input-panel-offset", "index math", "csrc/cpu/conv2d.cpp",
           "a_pairs.data() + gi * a_pair_size + m0 / kernel.mr * pair_panel_size(kernel.mr, O) +",
           "a_pairs.data() + gi * a_pair_size + m0 * O +", (PRECISION,)),
    Mutant("gather-padding-not-masked", "padding edge", "csrc/cpu/conv2d.cpp",
           "bits &= Bits(0) - static_cast<Bits>(offset >= 0);", "bits &= Bits(0) - static_cast<Bits>(offset > 0);",
           (OPS,)),
    # CUDA kernels, run on the emulated device
    Mutant("cuda-gemm-missing-barrier", "race (CUDA)", "csrc/cuda/gemm_simple.cu",
           "    // when step+1 overwrites it.\n    __syncthreads();", "    // when step+1 overwrites it.",
           (EMULATION,)),
    Mutant("cuda-split-k-drops-a-slice", "reduction (CUDA)", "csrc/cuda/conv2d.cu",
           "for (int s = warp; s < splits; s += warps) sum += partial[s * count + e];",
           "for (int s = warp; s < splits - (splits > 2); s += warps) sum += partial[s * count + e];", (EMULATION,)),
    Mutant("cuda-reduction-long-chains", "accuracy (CUDA)", "csrc/cuda/conv2d.cu",
           "std::max(std::min({wanted, by_work, int64_t{256}}), by_chain)", "std::min({wanted, by_work, int64_t{256}})",
           (CUDA_KERNELS,)),
    Mutant("simt-weight-grad-long-chains", "accuracy (CUDA)", "csrc/cuda/gemm_simt.cu",
           "8, kMaxChain / Tile::kBlockK, dw.numel(),", "8, q.k, dw.numel(),", (CUDA_KERNELS,)),
    Mutant("tensor-core-weight-grad-long-chains", "accuracy (CUDA)", "csrc/cuda/gemm_tensor_core.cu",
           "8, kMaxChain / Tile::kBlockK, dw.numel(),", "8, q.k, dw.numel(),", (CUDA_KERNELS,)),
    Mutant("simt-weight-grad-copy-stride", "tile bounds (CUDA)", "csrc/cuda/gemm_simt.cu",
           "a_copy ? a_row[e] + dy_offset : dy", "a_copy && e < 2 ? a_row[e] + dy_offset : dy", (CUDA_KERNELS,)),
    Mutant("tapless-phases-left-unfilled", "padding edge (CUDA)", "csrc/cuda/conv2d_common.cuh",
           "if (has_tapless_phase(p)) torch::stable::fill_(dx, 0.0);", "", (CUDA_KERNELS,)),
    Mutant("phase-slices-not-zeroed", "reduction (CUDA)", "csrc/cuda/conv2d.cu",
           "        torch::stable::fill_(phases->partial, 0.0);", "", (CUDA_KERNELS,)),
    Mutant("cuda-group-chunks-restart", "grid chunking (CUDA)", "csrc/cuda/gemm_simple.cu",
           "shape.group_base = base;", "shape.group_base = 0;", (EMULATION,)),
    Mutant("tensor-core-tf32-truncates", "rounding (CUDA)", "csrc/cuda/gemm_tensor_core.cu",
           "return to_tf32(value);", "return bits;", (CUDA_KERNELS,)),
    Mutant("pipeline-reads-a-stage-in-flight", "pipeline (CUDA)", "csrc/cuda/pipeline.cuh",
           "cp_async_wait<kStages - 2>();", "cp_async_wait<kStages - 1>();", (CUDA_KERNELS,)),
    Mutant("tensor-core-b-fragment-chunks", "fragment layout (CUDA)", "csrc/cuda/gemm_tensor_core.cu",
           "2 * kk + (lane / 8) % 2)", "2 * kk + lane / 16)", (CUDA_KERNELS,)),
    Mutant("tensor-core-weight-grad-tap-offset", "index math (CUDA)", "csrc/cuda/gemm_tensor_core.cu",
           "const int b_dh = b_i * q.dilation_h - q.pad_h", "const int b_dh = b_i - q.pad_h", (CUDA_KERNELS,)),
    Mutant("phase-tap-step", "index math (CUDA)", "csrc/cuda/conv2d_common.cuh",
           "t.delta = -(dilation / g);", "t.delta = -dilation;", (CUDA_KERNELS,)),
    Mutant("depthwise-taps-transposed", "index math (CUDA)", "csrc/cuda/depthwise.cu",
           "acc[i * kKernelW + j] += g", "acc[j * kKernelH + i] += g", (CUDA_KERNELS,)),
    Mutant("split-k-bias-in-every-slice", "reduction (CUDA)", "csrc/cuda/gemm_simt.cu",
           "  if (split != 0) bias = nullptr;\n", "", (CUDA_KERNELS,)),
    Mutant("depthwise-strip-segment-offset", "index math (CUDA)", "csrc/cuda/depthwise.cu",
           "acc[t] += row_values[t * kStride + j] * w[i * kKernel + j];",
           "acc[t] += row_values[t + j] * w[i * kKernel + j];", (CUDA_KERNELS,)),
    Mutant("depthwise-gather-channel-stride", "index math (CUDA)", "csrc/cuda/depthwise.cu",
           "++m, dy_tap += p.out_plane, w_tap += p.taps)", "++m, dy_tap += p.out_w, w_tap += p.taps)",
           (CUDA_KERNELS,)),
    Mutant("depthwise-gather-column-step", "index math (CUDA)", "csrc/cuda/depthwise.cu",
           "cols.first + u * cols.step;", "cols.first + u;", (CUDA_KERNELS,)),
    Mutant("cuda-tuning-waits-while-capturing", "measurement (CUDA)", "csrc/cuda/conv2d.cu",
           "} else if (cuda_detail::capturing(call.stream)) {", "} else if (false) {", ("tests/test_cuda_tuning.py",)),
    Mutant("cuda-tuning-ignores-benchmark", "measurement (CUDA)", "csrc/cuda/conv2d.cu",
           'env_flag("CUCONV_CUDA_TUNE", benchmark)', 'env_flag("CUCONV_CUDA_TUNE", false)',
           ("tests/test_cuda_tuning.py",)),
    Mutant("conv2d-ignores-cudnn-benchmark", "measurement (CUDA)", "cuconv/functional.py",
           "x.is_cuda and _cuda_conv_benchmarks())", "False)",
           ("tests/test_modules.py",)),
    Mutant("cuda-tuning-times-launches-only", "measurement (CUDA)", "csrc/cuda/conv2d.cu",
           "[&] { cuda_detail::synchronize(call.stream); }", "[&] {}", ("tests/test_cuda_tuning.py",)),
    Mutant("sum-partials-drops-a-warp", "reduction (CUDA)", "csrc/cuda/conv2d.cu",
           "for (int w = 1; w < warps; ++w) total += sums[w][lane];",
           "for (int w = 1; w < warps - 1; ++w) total += sums[w][lane];", (CUDA_KERNELS,)),
    Mutant("reduction-slices-capped-at-64", "kernel choice (CUDA)", "csrc/cuda/conv2d.cu",
           "std::min({wanted, by_work, int64_t{256}})", "std::min({wanted, by_work, int64_t{64}})", (CUDA_KERNELS,)),
    Mutant("one-channel-gemm-threshold", "kernel choice (CUDA)", "csrc/cuda/conv2d.cu",
           "p.out_per_group >= 32 && p.taps >= 16", "p.out_per_group > 32 && p.taps >= 16", (CUDA_KERNELS,)),
    Mutant("tf32-weight-grad-fragment", "fragment layout (CUDA)", "csrc/cuda/gemm_tensor_core.cu",
           "a[i][2] = tf32_element<Tile>(a_stage, k + 4, m)", "a[i][2] = tf32_element<Tile>(a_stage, k + 2, m)",
           (CUDA_KERNELS,)),
    Mutant("simt-epilogue-vector-crosses-a-sample", "tile bounds (CUDA)", "csrc/cuda/gemm_simt.cu",
           "if (dense && count == 4 && (m % per_sample) + 3 < per_sample &&", "if (dense && count == 4 &&",
           (CUDA_KERNELS,)),
    Mutant("cuda-pool-covering-range", "index math (CUDA)", "csrc/cuda/pool2d.cu",
           "const int begin = shifted < reach ? 0 : (shifted - reach) / stride + 1;",
           "const int begin = shifted < reach ? 0 : (shifted - reach) / stride;", EMULATED_OPS),
    Mutant("eager-path-under-jit-trace", "dispatch (Python)", "cuconv/_ops.py",
           "            or torch._C._get_tracing_state() is not None  #", "            or False  #",
           ("tests/test_export.py",)),
    Mutant("eager-path-drops-the-graph", "autograd (Python)", "cuconv/_ops.py",
           "            records = records or a.requires_grad", "            records = records and a.requires_grad",
           (OPS,)),
    Mutant("eager-path-ignores-dual-tensors", "forward mode (Python)", "cuconv/_ops.py",
           "            or _fwad._current_level >= 0):", "            or False):", FORWARD_MODE),
    Mutant("conv-jvp-drops-the-bias-tangent", "forward mode (Python)", "cuconv/_ops.py",
           "terms.append(differentiable.conv2d(input_t, weight, bias_t, *ctx.conv_args))",
           "terms.append(differentiable.conv2d(input_t, weight, None, *ctx.conv_args))", FORWARD_MODE),
    Mutant("jvp-sums-with-a-plain-add", "forward mode (Python)", "cuconv/_ops.py",
           "        total = _TangentSum.apply(total, term)", "        total = total + term", FORWARD_MODE),
    # integer and complex tensors (tests/test_dtypes.py)
    Mutant("complex-conv-imaginary-sign", "complex (Python)", "cuconv/functional.py",
           "return torch.complex(ac - bd, cross - ac - bd)", "return torch.complex(ac - bd, cross - ac + bd)", COMPLEX),
    Mutant("complex-parts-lose-the-layout", "complex (Python)", "cuconv/functional.py",
           "layout = torch.channels_last if _shape.suggests_channels_last(t) else torch.contiguous_format",
           "layout = torch.contiguous_format", COMPLEX),
    Mutant("complex-autocast-casts-the-parts", "complex (Python)", "cuconv/functional.py",
           "    with _autocast.disabled(x.device.type):\n", "    if True:\n", COMPLEX),
    Mutant("integer-conv-int32-in-16-bit-sums", "integer arithmetic", "csrc/cpu/conv2d_integer.cpp",
           "std::conditional_t<(sizeof(T) <= 2), uint16_t,", "std::conditional_t<(sizeof(T) <= 4), uint16_t,", INTEGERS),
    Mutant("integer-conv-padded-planes-column-dilation", "index math", "csrc/cpu/conv2d_integer.cpp",
           "const sum_t* __restrict__ in = padded + i * p.dH * Wp + j * p.dW;",
           "const sum_t* __restrict__ in = padded + i * p.dH * Wp + j;", INTEGERS),
    Mutant("integer-conv-reach-rounds-down", "index math", "csrc/cpu/conv2d_integer.cpp",
           "const int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;",
           "const int64_t first = offset >= 0 ? 0 : -offset / stride;", INTEGERS),
    Mutant("integer-conv-channel-vectors-row-dilation", "index math", "csrc/cpu/conv2d_integer.cpp",
           "const int64_t ih = oh * p.sH - p.pH + i * p.dH;", "const int64_t ih = oh * p.sH - p.pH + i;", INTEGERS),
    Mutant("integer-conv-padded-planes-flat-run-short", "index math", "csrc/cpu/conv2d_integer.cpp",
           "for (int64_t q = 0; q < (p.Ho - 1) * Wp + p.Wo; ++q)", "for (int64_t q = 0; q < (p.Ho - 1) * Wp; ++q)", INTEGERS),
    Mutant("integer-conv-writes-with-input-strides", "layout", "csrc/cpu/conv2d_integer.cpp",
           "y.stride(0), y.stride(1), y.stride(2), y.stride(3)}", "input.stride(0), input.stride(1), input.stride(2), input.stride(3)}",
           INTEGERS),
    Mutant("avg-pool-int64-rounds-down", "integer arithmetic", "csrc/cpu/pool2d.cpp",
           "    for (int64_t ow = 0; ow < g.Wo; ++ow) y_row[ow] = static_cast<scalar_t>(sum[ow] / static_cast<acc_t>(plan.divisor(row, ow)));",
           "    for (int64_t ow = 0; ow < g.Wo; ++ow) y_row[ow] = static_cast<scalar_t>(std::floor(sum[ow] / plan.divisor(row, ow)));",
           INT64_POOLING),
    # the input gradient by stride phase (stride_phases.cpp)
    Mutant("phase-window-pad-sign", "padding edge", "csrc/cpu/stride_phases.cpp",
           "a.pad = (a.taps - 1) * e - (phase + pad - k * dilation) / stride;",
           "a.pad = (a.taps - 1) * e + (phase + pad - k * dilation) / stride;", (STRIDE_PHASES,)),
    Mutant("phase-taps-step-ignores-dilation", "index math", "csrc/cpu/stride_phases.cpp",
           "step = stride / g, e = dilation / g;", "step = stride, e = dilation / g;", (STRIDE_PHASES,)),
    Mutant("phase-window-column-offset", "padding edge", "csrc/cpu/stride_phases.cpp",
           "std::memcpy(to + col_begin + c.pad, from + col_begin,", "std::memcpy(to + col_begin, from + col_begin,",
           (STRIDE_PHASES,)),
    Mutant("phase-taps-unflipped", "index math", "csrc/cpu/stride_phases.cpp",
           "p.kernel_h + r.first + (r.taps - 1 - u) * r.step)", "p.kernel_h + r.first + u * r.step)",
           (STRIDE_PHASES,)),
    Mutant("phase-untouched-positions-left", "boundary", "csrc/cpu/stride_phases.cpp",
           "for (int64_t j = 0; j < c.size; ++j) to[c.phase + j * sW] = 0.f;",
           "for (int64_t j = 0; j < c.size; ++j) to[c.phase + j * sW] = 1.f;", (STRIDE_PHASES,)),
    Mutant("phase-chunks-read-the-first-samples", "index math", "csrc/cpu/stride_phases.cpp",
           "const float* dy = grad_out + n0 * O * p.out_h * p.out_w;", "const float* dy = grad_out;", (STRIDE_PHASES,)),
    Mutant("by-phase-never-measured", "kernel choice", "csrc/cpu/conv2d.cpp",
           "if (phase_mode == OptionalMode::kAuto) candidates.push_back",
           "if (phase_mode == OptionalMode::kNever) candidates.push_back", (STRIDE_PHASES,)),
    Mutant("by-phase-of-grouped-layers", "index math", "csrc/cpu/conv2d.cpp",
           ".by_phase = g.groups > 1 || g.stride_h", ".by_phase = g.stride_h", (STRIDE_PHASES,)),
    Mutant("by-phase-with-non-finite-weights", "special values", "csrc/cpu/conv2d.cpp",
           "kernels.by_phase && kernels.direct_exact ?", "kernels.by_phase ?", (STRIDE_PHASES,)),
]


def run(command, cwd, env=None, timeout=1800):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def copy_if_changed(source, destination):
    """Copies a file whose content differs, stamped now (the build sees it as changed even where
    the source is older than an object file an earlier run built from other content); leaves an
    identical one as it is, so the build stays incremental."""
    destination = Path(destination)
    if not destination.exists() or destination.read_bytes() != Path(source).read_bytes():
        shutil.copyfile(source, destination)
    return destination


def copy_repository(target):
    """The working tree without build outputs or the virtualenv (the first build makes its own)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.so", "__pycache__", ".pytest_cache", "runs",
                                    "benchmarks/out", "*.egg-info")
    shutil.copytree(ROOT, target, ignore=ignore, dirs_exist_ok=True, copy_function=copy_if_changed)


def build(copy):
    """The CPU kernels and the emulated CUDA device (on which the CUDA mutants run)."""
    env = dict(os.environ, CUCONV_CPU_ONLY="1", CUCONV_EMULATED_CUDA="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    return run([sys.executable, "setup.py", "build_ext", "--inplace"], copy, env)


def tests_fail(copy, tests):
    env = dict(os.environ, PYTHONPATH=str(copy))
    result = run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], copy, env)
    return result.returncode != 0, result.stdout.strip().splitlines()[-1:] or [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--report", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]
    work = Path(args.keep or tempfile.mkdtemp(prefix="cuconv-mutants-"))
    copy = work / "repo"
    copy_repository(copy)  # over an existing copy (--keep): its build folder makes the first build incremental
    print(f"building the unmutated copy in {copy} ...", flush=True)
    if build(copy).returncode != 0 or tests_fail(copy, [DISPATCH])[0]:
        sys.exit("the unmutated copy does not build or pass its tests")
    rows, failures = [], 0
    for mutant in mutants:
        path = copy / mutant.file
        original = path.read_text()
        if original.count(mutant.find) != 1:
            sys.exit(f"mutant {mutant.id}: its text occurs {original.count(mutant.find)} times in {mutant.file}")
        start = time.time()
        try:
            path.write_text(original.replace(mutant.find, mutant.replace))
            built = build(copy)
            if built.returncode != 0:
                verdict, detail = "did not compile", built.stderr.strip().splitlines()[-1:]
            else:
                caught, detail = tests_fail(copy, mutant.tests)
                verdict = "caught" if caught else "SURVIVED"
        finally:
            path.write_text(original)
        failures += verdict != "caught"
        rows.append(f"| {mutant.id} | {mutant.kind} | {mutant.file} | {' '.join(mutant.tests)} | {verdict} | "
                    f"{time.time() - start:.0f} s |")
        print(rows[-1], "  ", detail[0] if detail else "", flush=True)
    build(copy)  # leave the copy built unmutated
    table = "\n".join(["| mutant | kind | file | tests | verdict | time |", "| --- | --- | --- | --- | --- | ---: |",
                       *rows])
    print(f"\n{table}\n\n{len(rows) - failures} of {len(rows)} mutants caught")
    if args.report:
        Path(args.report).write_text(table + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
