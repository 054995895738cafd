"""Turns pytest-benchmark JSON into a markdown table of cuconv/torch time ratios and a bar chart.

    python benchmarks/report.py bench.json [--markdown out.md] [--plot out.png]

Per case: the median time of each implementation (the lowest of its passes, where the suite ran
more than one: benchmarks/conftest.py --passes), the ratio cuconv/torch of the medians (below 1:
cuconv is faster), the spread of that ratio (from the quartiles), and the achieved GFLOP/s
(convolutions) or GB/s (pooling) next to the machine's ceilings measured in the same run.
"""

import argparse
import json
import math
import platform
from collections import defaultdict
from statistics import median

from cases import GEMM_GOAL_CASES, POOL_CASES

POOL_CASE_NAMES = {c.name for c in POOL_CASES}
GEMM_GOAL_NAMES = {c.name for c in GEMM_GOAL_CASES}


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    ceilings = {}
    alongside = defaultdict(list)  # (device, case) -> (layer, sgemm) GFLOP/s of the GEMM goal's rounds, every pass's
    for bench in data["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        if info["mode"] == "gemm goal":
            seconds = info["seconds"]
            alongside[(info["device"], info["case"])] += [
                (info["flops"] / layer / 1e9, max(info["sgemm_flops"] / torch_s, info["sgemm_flops"] / cuconv_s) / 1e9)
                for layer, torch_s, cuconv_s in zip(seconds["layer"], seconds["sgemm"], seconds["sgemm.cuconv"])]
            continue
        if info["mode"] == "ceiling":
            # a ceiling is what the machine can do: its fastest round (on a 2-vCPU Xeon VM the FMA
            # chains' median round took 1.8x their fastest, the other vCPU being busy at times)
            work = info.get("flops") or info.get("bytes")
            ceilings[(info["device"], info["case"])] = work / stats["min"] / 1e9
            continue
        key = (info["case"], info["mode"], info["device"], info["dtype"])
        entry = dict(median=stats["median"], q1=stats["q1"], q3=stats["q3"], flops=info.get("flops"),
                     bytes=info.get("bytes"), images=info.get("images"))
        # a case measured in several passes (conftest.py --passes): each backend's lowest median
        if info["impl"] not in rows[key] or entry["median"] < rows[key][info["impl"]]["median"]:
            rows[key][info["impl"]] = entry
    return data, rows, ceilings, alongside


def ratio_table(rows, ceilings):
    lines = [
        "| case | mode | device | dtype | cuconv ms | torch ms | cuconv/torch | spread | cuconv | torch |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    ratios = []
    for (case, mode, device, dtype), impls in rows.items():
        if "cuconv" not in impls or "torch" not in impls:
            continue
        ours, theirs = impls["cuconv"], impls["torch"]
        ratio = ours["median"] / theirs["median"]
        low, high = ours["q1"] / theirs["q3"], ours["q3"] / theirs["q1"]
        ratios.append(((case, mode, device, dtype), ratio))
        lines.append(f"| {case} | {mode} | {device} | {dtype} | {ours['median'] * 1e3:.2f} | "
                     f"{theirs['median'] * 1e3:.2f} | **{ratio:.2f}** | {low:.2f}-{high:.2f} | "
                     f"{throughput(ours)} | {throughput(theirs)} |")
    lines.append("")
    for device in sorted({k[0] for k in ceilings}):
        parts = []
        if (device, "fma") in ceilings:
            parts.append(f"FMA peak {ceilings[(device, 'fma')]:.0f} GFLOP/s (benchmarks/fma_peak.c)")
        for case, name in (("sgemm", "torch"), ("sgemm.cuconv", "cuconv")):
            if (device, case) in ceilings:
                parts.append(f"sgemm {ceilings[(device, case)]:.0f} GFLOP/s ({name})")
        if (device, "copy") in ceilings:
            parts.append(f"copy {ceilings[(device, 'copy')]:.1f} GB/s")
        lines.append(f"Ceilings on {device}, measured in the same run: {', '.join(parts)}.")
    return "\n".join(lines), ratios


def throughput(entry):
    if entry.get("flops"):
        return f"{entry['flops'] / entry['median'] / 1e9:.1f} GFLOP/s"
    if entry.get("bytes"):
        return f"{entry['bytes'] / entry['median'] / 1e9:.1f} GB/s"
    if entry.get("images"):
        return f"{entry['images'] / entry['median']:.0f} img/s"
    return ""


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summary(ratios):
    """Geometric means of the ratio per model family and mode."""
    groups = defaultdict(list)
    for (case, mode, device, dtype), ratio in ratios:
        family = case.split(".")[0]
        if mode == "training step":
            kind = "model"
        else:
            kind = "pool" if case in POOL_CASE_NAMES else "conv"
        groups[(family, kind, mode, device, dtype)].append(ratio)
    lines = ["| family | kind | mode | device | dtype | cases | geomean cuconv/torch | worst |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for key in sorted(groups):
        values = groups[key]
        lines.append("| " + " | ".join(key) + f" | {len(values)} | {geometric_mean(values):.2f} | {max(values):.2f} |")
    return "\n".join(lines)


def _conv_layer(case, mode, wanted="forward+backward"):
    return (mode == wanted and case.split(".")[0] in ("vgg", "resnet") and "pool" not in case
            and not case.endswith(".cl"))


def _book_channels_last(case, mode):
    """The book's layers and pools in channels_last (the grouped ones are reported without a goal)."""
    return mode == "forward+backward" and case.endswith(".cl") and not case.startswith(("regnet.", "depthwise."))


# The CPU goals of the CPU-portability issue, as cuconv/torch time ratios of the median times
# (channels_last cases, named *.cl, compare with torch's channels_last and have a goal of their own).
GOALS = [
    ("max, average and adaptive pooling, forward+backward, every case", "max", 0.4,
     lambda case, mode: mode == "forward+backward" and "pool" in case and not case.endswith(".cl")),
    ("ResNet-18 and VGG conv layers, forward+backward, geometric mean", "geomean", 0.85, _conv_layer),
    ("ResNet-18 and VGG conv layers, forward+backward, every layer", "max", 1.15, _conv_layer),
    ("ResNet-18 and VGG conv layers, forward alone, every layer", "max", 1.2,
     lambda case, mode: _conv_layer(case, mode, "forward")),
    ("channels_last cases, forward+backward, every case", "max", 1.0, _book_channels_last),
    ("a whole LeNet training step", "max", 0.75,
     lambda case, mode: mode == "training step" and case.startswith("lenet.")),
    ("a whole VGG training step", "max", 0.9,
     lambda case, mode: mode == "training step" and case.startswith("vgg.")),
    ("a whole ResNet-18 training step", "max", 0.9,
     lambda case, mode: mode == "training step" and case.startswith("resnet18.")),
]


def goals(ratios):
    """One line per CPU goal (float32): the measured statistic next to its limit."""
    lines = ["| goal (cuconv time / torch time, cpu, float32) | limit | measured | met |",
             "| --- | ---: | ---: | --- |"]
    for text, statistic, limit, selects in GOALS:
        values = [r for (case, mode, device, dtype), r in ratios
                  if device == "cpu" and dtype == "float32" and selects(case, mode)]
        if not values:
            lines.append(f"| {text} | {limit:g} | not run | |")
            continue
        value = geometric_mean(values) if statistic == "geomean" else max(values)
        lines.append(f"| {text} | {limit:g} | {value:.2f} ({len(values)} cases) | {'yes' if value <= limit else '**no**'} |")
    return "\n".join(lines)


def gemm_goal(rows, ceilings, alongside=None):
    """The GEMM goal on the CPU: the large layers' forward GFLOP/s (a direct convolution's FLOPs,
    whatever the kernel did: Winograd and the per-pixel products do fewer) at >= 0.85 of the sgemm.
    Where the run timed the layers alongside the sgemm (test_gemm_goal_alongside_sgemm), each
    layer's share is the median over rounds of its speed / the faster sgemm of the same round, and
    decides; the layers' medians against the run's fastest sgemm round follow for comparison
    (the only statistic of runs before it, which on a VM with slow and fast phases compared two
    phases). The FMA peak for scale."""
    lines = []
    shares = {case: median([layer / sgemm for layer, sgemm in measured])
              for (device, case), measured in (alongside or {}).items() if device == "cpu" and measured}
    if shares:
        worst = min(shares, key=shares.get)
        measured = alongside[("cpu", worst)]
        low, high = min(layer / sgemm for layer, sgemm in measured), max(layer / sgemm for layer, sgemm in measured)
        met = "met" if shares[worst] >= 0.85 else "**not met**"
        lines.append(f"GEMM goal (each large layer's forward GFLOP/s, counted as a direct convolution's, >= 0.85 of "
                     f"the faster sgemm, torch's or cuconv's, timed in the same rounds): {met}; worst {worst} at "
                     f"{shares[worst]:.2f} (rounds {low:.2f}-{high:.2f}; {median([layer for layer, _ in measured]):.0f} "
                     f"GFLOP/s against {median([sgemm for _, sgemm in measured]):.0f}) ({len(shares)} layers).")
    sgemm = max((ceilings.get(("cpu", c), 0.0) for c in ("sgemm", "sgemm.cuconv")), default=0.0)
    speeds = {case: impls["cuconv"]["flops"] / impls["cuconv"]["median"] / 1e9
              for (case, mode, device, dtype), impls in rows.items()
              if device == "cpu" and dtype == "float32" and mode == "forward" and case in GEMM_GOAL_NAMES and "cuconv" in impls}
    if sgemm and speeds:
        worst = min(speeds, key=speeds.get)
        fma = ceilings.get(("cpu", "fma"))
        of_peak = f", {speeds[worst] / fma:.2f} of the FMA peak" if fma else ""
        if shares:
            lines.append(f"For comparison, the layers' medians in their own cases against the run's fastest sgemm "
                         f"round, {sgemm:.0f} GFLOP/s: worst {worst} at {speeds[worst]:.0f} GFLOP/s, "
                         f"{speeds[worst] / sgemm:.2f} of that sgemm{of_peak} ({len(speeds)} layers).")
        else:
            met = "met" if speeds[worst] >= 0.85 * sgemm else "**not met**"
            lines.append(f"GEMM goal (the large layers' forward GFLOP/s, counted as a direct convolution's, >= 0.85 of "
                         f"the best sgemm measured, {sgemm:.0f} GFLOP/s): {met}; worst {worst} at {speeds[worst]:.0f} "
                         f"GFLOP/s, {speeds[worst] / sgemm:.2f} of that sgemm{of_peak} ({len(speeds)} layers).")
    return " ".join(lines) or "GEMM goal (large layers' forward GFLOP/s >= 0.85 of the best sgemm): not run."


def plot(ratios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{case} ({'fwd' if mode == 'forward' else 'fwd+bwd'}, {device})" for (case, mode, device, _), _ in ratios]
    values = [r for _, r in ratios]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(values) + 1.5))
    colors = ["tab:green" if v <= 1 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("time cuconv / time torch (below 1: cuconv faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--markdown", help="write the tables here (default: print)")
    parser.add_argument("--plot", help="write a PNG bar chart of the ratios here")
    args = parser.parse_args()
    data, rows, ceilings, alongside = load(args.json)
    table, ratios = ratio_table(rows, ceilings)
    machine = data.get("machine_info", {})
    batches = sorted({b["extra_info"].get("batch") for b in data["benchmarks"]} - {None})
    header = (f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
              f"{machine.get('cpu', {}).get('count', '?')} cores; date {data.get('datetime', '?')[:10]}; "
              f"torch {__import__('torch').__version__}; batch {', '.join(map(str, batches)) or '?'}.")
    if "cuconv_isa" in machine:
        header += (f" Vector instructions: cuconv {machine['cuconv_isa']}, torch {machine['torch_cpu_capability']}"
                   f" (oneDNN at most {machine['onednn_max_cpu_isa']}).")
    text = "\n\n".join([header, goals(ratios), gemm_goal(rows, ceilings, alongside), summary(ratios), table])
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.plot:
        plot(ratios, args.plot)


if __name__ == "__main__":
    main()
