"""The GPU benchmark protocol: cuconv's convolution kernels against cuDNN, layer by layer.

    python benchmarks/gpu_protocol.py [--quick] [--layers A,B] [--batch N] [--budget S] [--json out.json] [--markdown out.md]
    python benchmarks/gpu_protocol.py --device cpu --quick --batch 2     # a smoke test of the script

For every convolution layer of the book's models (benchmarks/cases.py) and each pass (forward,
input gradient, weight gradient), in every combination of
    precision      float32 (strict: TF32 off for both), tf32 (TF32 on for both: torch's conv
                   fp32_precision = "tf32", which cuconv.functional follows), bfloat16
    layout         NCHW, channels_last
    cudnn.benchmark off, on (cuDNN's algorithm search; with it, cuconv measures its choice of
                   kernel family: README, "Kernel choice by measurement")
it first checks both libraries against float64 on the same inputs: a timing is taken only when
cuconv's largest error is within 4x cuDNN's plus the project's float32 tolerance, 1e-5 of the
largest result, or one rounding of the precision (TF32's 2^-10 included) where that is coarser (else the row
says "wrong" and no time). Sums in a different order are not wrong: resnet.b5.conv2's 4,608
products per output, added in one chain of float32 additions, were off by 2.6e-6 of the largest
result (cuconv's CPU direct kernel until 2026-12-04), summed in blocks by ~3e-7 (oneDNN, and
cuconv's CPU kernels since). Then it times each with CUDA events after warm-up: the median of
--reps timed calls, each event pair around --inner calls. Reports the time of each and
cuconv/cuDNN (below 1: cuconv faster), with the GPU, the date and the command. With --budget,
no layer after the first is started once that many seconds have passed; on an interrupt
(SIGINT) the layers measured so far are reported; either way the report says which were left.
"""

import argparse
import datetime
import json
import os
import signal
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import CONV_CASES  # noqa: E402

import cuconv  # noqa: E402,F401  (registers torch.ops.cuconv)
import cuconv.functional as CF  # noqa: E402

PRECISIONS = ["float32", "tf32", "bfloat16"]
LAYOUTS = ["nchw", "channels_last"]
PASSES = ["forward", "input_grad", "weight_grad"]
# One rounding of each precision's operands: TF32 keeps 10 of float32's 23 mantissa bits (cuDNN
# may still run a TF32-allowed layer in full float32, so its error is no bound for ours).
EPSILON = {"tf32": 2.0 ** -10}


# Calls that settle a measured choice of cuconv's (csrc/tuning/measured_choice.h): the measuring
# call and the four checked calls after it, the last of which may measure again.
SETTLING_CALLS = 5


def set_precision(precision):
    torch.backends.cudnn.conv.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def within_gate(err_ours, err_theirs, largest, precision, dtype):
    """Whether cuconv's largest error counts as correct: within 4x cuDNN's plus the project's
    float32 tolerance (1e-5 of the largest result) or one rounding of the precision, if coarser."""
    return err_ours <= 4 * err_theirs + max(EPSILON.get(precision, torch.finfo(dtype).eps), 1e-5) * largest


def make_inputs(case, batch, dtype, layout, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = case.output_size()
    x = torch.randn(batch, case.in_channels, case.size, case.size, generator=g, dtype=torch.float64)
    w = torch.randn(case.out_channels, case.in_channels // case.groups, case.kernel, case.kernel, generator=g,
                    dtype=torch.float64) / (case.in_channels // case.groups * case.kernel ** 2) ** 0.5
    dy = torch.randn(batch, case.out_channels, out, out, generator=g, dtype=torch.float64)
    tensors = [t.to(device) for t in (x, w, dy)]
    cast = [t.to(dtype) for t in tensors]
    if layout == "channels_last":
        cast = [t.contiguous(memory_format=torch.channels_last) for t in cast]
    return tensors, cast


def pass_functions(case, pass_name, x, w, dy):
    """(cuconv's, torch's) zero-argument callables for one pass."""
    args = ((case.stride, case.stride), (case.padding, case.padding), (1, 1), case.groups)
    allow_tf32 = x.device.type == "cuda" and CF._cuda_conv_allows_tf32()

    def benchmark():  # read at each call: the protocol turns cudnn.benchmark on and off
        return x.device.type == "cuda" and CF._cuda_conv_benchmarks()

    if pass_name == "forward":
        return (lambda: CF.conv2d(x, w, None, case.stride, case.padding, 1, case.groups),
                lambda: F.conv2d(x, w, None, case.stride, case.padding, 1, case.groups))
    if pass_name == "input_grad":
        return (lambda: torch.ops.cuconv.conv2d_backward_input(dy, w, list(x.shape), *args, allow_tf32, benchmark()),
                lambda: torch.ops.aten.convolution_backward(dy, x, w, None, *args[:3], False, [0, 0], case.groups,
                                                            [True, False, False])[0])
    return (lambda: torch.ops.cuconv.conv2d_backward_weight(dy, x, list(w.shape), *args, allow_tf32, benchmark()),
            lambda: torch.ops.aten.convolution_backward(dy, x, w, None, *args[:3], False, [0, 0], case.groups,
                                                        [False, True, False])[1])


def reference(case, pass_name, x, w, dy):
    fns = pass_functions(case, pass_name, x, w, dy)
    return fns[1]()  # torch in float64


def time_ms(fn, device, reps, inner):
    for _ in range(3):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / inner)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(times)


class _Interrupted(Exception):
    """SIGINT arrived: stop after the row under way."""


def _stop_at_the_next_row_on_sigint():
    """SIGINT sets a flag that the loop reads between rows, instead of raising KeyboardInterrupt
    wherever Python happens to be: raised inside a finalizer (a tensor's, a cache's weakref
    callback), the KeyboardInterrupt is printed as "Exception ignored" and lost, and the whole
    subset ran on after a `timeout -s INT` (seen on a loaded 2-core CPU). Returns (flag, restore)."""
    flag = {"set": False}

    def on_sigint(signum, frame):
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    return flag, lambda: signal.signal(signal.SIGINT, previous)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="the quick subset of the layers")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which no further layer is started, the first one apart (the report "
                             "names those left)")
    parser.add_argument("--layers", help="comma-separated layer names (benchmarks/cases.py): only these")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    device = args.device
    cases = [c for c in CONV_CASES if c.quick or not args.quick]
    if args.layers:
        names = args.layers.split(",")
        unknown = sorted(set(names) - {c.name for c in cases})
        if unknown:
            parser.error(f"--layers: no such layer {', '.join(unknown)}")
        cases = [c for c in cases if c.name in names]
    rows, left, interrupted = [], [], False
    start = time.monotonic()
    saved = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark)
    saved_tune = os.environ.pop("CUCONV_CUDA_TUNE", None)  # (torch's cudnn.benchmark decides, below)
    sigint, restore_sigint = _stop_at_the_next_row_on_sigint()
    try:
        for done, case in enumerate(cases):
            if done > 0 and args.budget is not None and time.monotonic() - start > args.budget:
                left = [c.name for c in cases[done:]]
                break
            for precision in PRECISIONS:
                dtype = set_precision(precision)
                for layout in LAYOUTS:
                    exact, (x, w, dy) = make_inputs(case, args.batch, dtype, layout, device)
                    for pass_name in PASSES:
                        ref = reference(case, pass_name, *exact)
                        ours, theirs = pass_functions(case, pass_name, x, w, dy)
                        for benchmark in (False, True):
                            if sigint["set"]:
                                raise _Interrupted
                            torch.backends.cudnn.benchmark = benchmark
                            # cuconv measures its choice of kernel family where cuDNN searches; its
                            # measuring call and four checked calls first, so that the family gated
                            # below is the one timed
                            for _ in range(SETTLING_CALLS):
                                ours()
                            err_ours = (ours().double() - ref).abs().max().item()
                            err_theirs = (theirs().double() - ref).abs().max().item()
                            correct = within_gate(err_ours, err_theirs, ref.abs().max().item(), precision, dtype)
                            kernel = cuconv._C_cuda.last_kernels()[pass_name.replace("_grad", "").replace(
                                "input", "backward_input").replace("weight", "backward_weight")] \
                                if device == "cuda" else "cpu"
                            row = dict(case=case.name, pass_=pass_name, precision=precision, layout=layout,
                                       cudnn_benchmark=benchmark, kernel=kernel, err_cuconv=err_ours,
                                       err_cudnn=err_theirs, correct=correct)
                            if correct:
                                row["cuconv_ms"] = time_ms(ours, device, args.reps, args.inner)
                                row["cudnn_ms"] = time_ms(theirs, device, args.reps, args.inner)
                                row["ratio"] = row["cuconv_ms"] / row["cudnn_ms"]
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    except _Interrupted:  # (SIGINT, e.g. from `timeout -s INT`: the rows so far are still reported)
        interrupted = True
        measured = {r["case"] for r in rows}
        left = [c.name for c in cases if c.name not in measured]
    finally:
        restore_sigint()
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark = saved
        if saved_tune is not None:
            os.environ["CUCONV_CUDA_TUNE"] = saved_tune
    header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "command": " ".join(sys.argv), "batch": args.batch,
              "layers_left_out": left}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"{header['device']}, {header['date']}, torch {header['torch']}, batch {args.batch}: "
                    f"`{header['command']}`\n\n")
            if left:
                reason = "an interrupt" if interrupted else f"the --budget of {args.budget:g} s"
                f.write(f"Stopped early ({reason}): {len(left)} layers not measured ({', '.join(left)}).\n\n")
            for precision in PRECISIONS:
                for benchmark in (False, True):
                    picked = [r for r in rows if r["precision"] == precision and r["cudnn_benchmark"] == benchmark]
                    ratios = [r["ratio"] for r in picked if "ratio" in r]
                    geomean = statistics.geometric_mean(ratios) if ratios else float("nan")
                    wrong = sum(not r["correct"] for r in picked)
                    f.write(f"- {precision}, cudnn.benchmark={benchmark}: geomean cuconv/cuDNN {geomean:.2f} over "
                            f"{len(ratios)} timings, {wrong} gated out as wrong\n")
            f.write("\n| layer | pass | precision | layout | cudnn.benchmark | cuconv kernel | cuconv ms | cuDNN ms "
                    "| ratio |\n| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |\n")
            for r in rows:
                timing = (f"{r['cuconv_ms']:.3f} | {r['cudnn_ms']:.3f} | {r['ratio']:.2f}" if "ratio" in r
                          else "wrong | | ")
                f.write(f"| {r['case']} | {r['pass_']} | {r['precision']} | {r['layout']} | {r['cudnn_benchmark']} | "
                        f"{r['kernel']} | {timing} |\n")
    wrong = [r for r in rows if not r["correct"]]
    print(f"{len(rows)} rows, {len(wrong)} gated out as wrong", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
