"""Hardware counters of cuconv's and cuDNN's convolution kernels, for Nsight Compute.

    ncu --profile-from-start off --clock-control none --section SpeedOfLight ... --csv --page raw \\
        --log-file ncu.csv python3 benchmarks/gpu_profile.py --labels labels.txt
    python3 benchmarks/gpu_profile.py --summarize ncu.csv --labels labels.txt > profile.md

(`bash benchmarks/gpu_run.sh profile` runs both.) Each (layer, precision, pass, library) of a few
representative layers runs once inside the profiled region, after a warm-up outside it, and is
preceded by a marker kernel (torch.cuda._sleep's spin kernel): the summary splits ncu's kernels at
the markers and names each group by the matching line of the labels file. Per kernel it reports
the time, the SM and memory throughput and the achieved occupancy (% of peak), registers per
thread, and shared-memory bank conflicts where ncu gave them: what the protocol's times alone
cannot say (CUDA_NOTES.md, "The first GPU run").
"""

import argparse
import csv
import os
import sys

MARKER = "spin_kernel"  # torch.cuda._sleep's kernel
# (layer of benchmarks/cases.py, precisions): the SIMT and tensor-core GEMMs on a large and a
# 3x3-image layer, a stride-2 1x1 layer (input gradient 4.8x cuDNN's time), the first layer
LAYERS = [("vgg.b3.conv2", ("float32", "bfloat16")), ("resnet.b2.conv", ("float32", "bfloat16")),
          ("resnet.b4.shortcut", ("float32", "bfloat16")), ("resnet.b5.conv2", ("float32",)),
          ("resnet.stem", ("float32",))]
# raw-page metric -> column title, in the order shown
COLUMNS = {
    "gpu__time_duration.sum": "us",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "SM %",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "memory %",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "DRAM %",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy %",
    "launch__registers_per_thread": "registers",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum": "bank conflicts (ld)",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum": "bank conflicts (st)",
}


def run_cases(labels_path, batch):
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpu_protocol
    from cases import CONV_CASES

    by_name = {case.name: case for case in CONV_CASES}
    calls = []
    for name, precisions in LAYERS:
        case = by_name[name]
        for precision in precisions:
            dtype = gpu_protocol.set_precision(precision)
            _, (x, w, dy) = gpu_protocol.make_inputs(case, batch, dtype, "nchw", "cuda")
            for pass_name in gpu_protocol.PASSES:
                ours, theirs = gpu_protocol.pass_functions(case, pass_name, x, w, dy)
                for library, fn in (("cuconv", ours), ("cuDNN", theirs)):
                    calls.append((f"{name} {precision} {pass_name} {library}", precision, fn))
    for _, precision, fn in calls:  # warm-up: module loads, cuDNN's heuristics and workspaces (and
        gpu_protocol.set_precision(precision)  # with cudnn.benchmark on, cuconv's measured choices)
        for _ in range(gpu_protocol.SETTLING_CALLS):
            fn()
    torch.cuda.synchronize()
    with open(labels_path, "w") as labels:
        torch.cuda.profiler.start()
        for label, precision, fn in calls:
            gpu_protocol.set_precision(precision)
            torch.cuda._sleep(1000)
            fn()
            labels.write(label + "\n")
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    print(f"{len(calls)} calls profiled; labels in {labels_path}")


def read_kernels(csv_path):
    """ncu's raw-page CSV: (the units row, the kernels in launch order), each a dict of its
    columns (ncu's own log lines skipped)."""
    with open(csv_path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    rows = list(csv.DictReader(lines))
    units = next((row for row in rows if not row.get("ID", "").strip()), {})
    return units, [row for row in rows if row.get("ID", "").strip().isdigit()]


SECONDS_IN = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3, "second": 1.0}


def summarize(csv_path, labels_path):
    units, kernels = read_kernels(csv_path)
    with open(labels_path) as f:
        labels = [line.strip() for line in f if line.strip()]
    columns = [(metric, title) for metric, title in COLUMNS.items() if kernels and metric in kernels[0]]
    lines = ["| call | kernel | grid | block | " + " | ".join(title for _, title in columns) + " |",
             "| --- | --- | --- | --- |" + " ---: |" * len(columns)]
    call = -1
    for kernel in kernels:
        name = kernel.get("Kernel Name", "?")
        if MARKER in name:
            call += 1
            continue
        label = labels[call] if 0 <= call < len(labels) else "(unlabelled)"
        short = name.replace("(anonymous namespace)::", "").split("(")[0].split("<")[0].split("::")[-1] or name
        values = []
        for metric, title in columns:
            value = kernel[metric].replace(",", "")
            if title == "us" and value:  # in the units row's unit
                value = f"{float(value) * SECONDS_IN.get(units.get(metric, 'nsecond'), 1e-9) * 1e6:.1f}"
            values.append(value)
        lines.append(f"| {label} | {short} | {kernel.get('Grid Size', '')} | {kernel.get('Block Size', '')} | "
                     + " | ".join(values) + " |")
    if call + 1 != len(labels):
        lines.append(f"\n{call + 1} markers for {len(labels)} labels: the names may be off.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True, help="the file of call names, one a line (written, or read)")
    parser.add_argument("--summarize", metavar="NCU_CSV", help="summarize ncu's raw-page CSV instead of running")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, args.labels))
    else:
        run_cases(args.labels, args.batch)


if __name__ == "__main__":
    main()
