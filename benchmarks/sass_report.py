"""What the compiled CUDA kernels execute: each kernel's hottest loop, read from its SASS.

    python benchmarks/sass_report.py [path/to/_C_cuda.abi3.so] [--arch sm_90] [--filter NAME]
                                     [--markdown out.md]

For every kernel of cuconv._C_cuda (by default the built module next to the imported cuconv, or
the one in the source tree), disassembles the machine code of one architecture with cuobjdump
(which ships in the triton wheel that torch installs), finds its hottest loop and reports that
loop's instruction mix: the share of FFMA (float32 multiply-adds) and HMMA (tensor-core mma)
among all its instructions, shared-memory traffic (LDS, STS, LDSM = ldmatrix, LDGSTS =
cp.async), global loads and stores, and integer/address arithmetic. Registers, stack and
spills come from cuobjdump's resource usage. The report says what a GPU run cannot: whether a
main loop is all multiply-adds, or mostly bookkeeping.

The hottest loop is the innermost backward branch whose body holds the most FFMA + HMMA (the
main loop of a GEMM); for kernels without either, the one with the most instructions.
"""

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

GROUPS = {
    "FFMA": ("FFMA",),
    "HMMA": ("HMMA",),
    "FMUL/FADD": ("FMUL", "FADD"),
    "LDS": ("LDS",),
    "LDSM": ("LDSM",),
    "STS": ("STS",),
    "LDGSTS": ("LDGSTS",),
    "LDG": ("LDG",),
    "STG": ("STG",),
    "int/address": ("IMAD", "IADD3", "LEA", "ISETP", "SHF", "LOP3", "IABS", "SEL", "IMNMX", "LEA.HI", "PRMT", "SGXT"),
    "BAR": ("BAR",),
    "branch": ("BRA", "BSSY", "BSYNC", "EXIT", "RET"),
}


def find_cuobjdump():
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("cuobjdump") or sys.exit("sass_report: cuobjdump not found (pip install torch brings triton)")


def find_module():
    candidates = []
    try:
        import cuconv

        candidates += glob.glob(os.path.join(os.path.dirname(cuconv.__file__), "_C_cuda*.so"))
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates += glob.glob(os.path.join(root, "cuconv", "_C_cuda*.so"))
    return candidates[0] if candidates else sys.exit("sass_report: no cuconv._C_cuda module found; build with CUDA")


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def short_name(demangled):
    """implicit_gemm_kernel<GemmConfig<64, 64, 16, 4, 4>, ForwardGemm<float, ...>> without namespaces."""
    name = re.sub(r"\(anonymous namespace\)::|cuconv::|c10::|cuda_detail::", "", demangled)
    return re.sub(r"\(.*\)$", "", name)


INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def parse_functions(sass, arch):
    """{mangled name: [(address, opcode, operands)]} for the functions of `arch`."""
    functions, current, in_arch = {}, None, False
    for line in sass.splitlines():
        if line.strip().startswith("arch = "):
            in_arch = line.split("=")[1].strip() == arch
            continue
        if not in_arch:
            continue
        match = re.search(r"Function : (\S+)", line)
        if match:
            current = functions.setdefault(match.group(1), [])
            continue
        match = INSTRUCTION.search(line)
        if match and current is not None:
            current.append((int(match.group(1), 16), match.group(3), match.group(4)))
    return functions


def loops(instructions):
    """(start, end) address ranges of backward branches: the loops."""
    found = []
    for address, opcode, operands in instructions:
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) <= address:
                found.append((int(target.group(1), 16), address))
    return found


def mix(instructions, start, end):
    counts = collections.Counter()
    total = 0
    for address, opcode, _ in instructions:
        if start <= address <= end:
            total += 1
            base = opcode.split(".")[0]
            for group, prefixes in GROUPS.items():
                if base in prefixes or opcode in prefixes:
                    counts[group] += 1
                    break
            else:
                counts["other"] += 1
    return total, counts


def hottest_loop(instructions):
    best, best_key = None, None
    for start, end in loops(instructions):
        total, counts = mix(instructions, start, end)
        key = (counts["FFMA"] + counts["HMMA"], -total if counts["FFMA"] + counts["HMMA"] else total)
        if best_key is None or key > best_key:
            best, best_key = (start, end, total, counts), key
    return best


def resource_usage(cuobjdump, module, arch):
    """{mangled name: 'REG:n STACK:n SHARED:n LOCAL:n'} from cuobjdump's resource usage."""
    out = subprocess.run([cuobjdump, "--dump-resource-usage", module], capture_output=True, text=True).stdout
    usage, in_arch, current = {}, False, None
    for line in out.splitlines():
        if "arch = " in line:
            in_arch = line.split("=")[1].strip() == arch
        match = re.search(r"Function (\S+):", line)
        if match:
            current = match.group(1)
        match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if match and in_arch and current:
            usage[current] = dict(reg=int(match.group(1)), stack=int(match.group(2)), shared=int(match.group(3)),
                                  local=int(match.group(4)))
    return usage


def report(module, arch, name_filter=None):
    cuobjdump = find_cuobjdump()
    sass = subprocess.run([cuobjdump, "-sass", module], capture_output=True, text=True, check=True).stdout
    functions = parse_functions(sass, arch)
    usage = resource_usage(cuobjdump, module, arch)
    mangled = sorted(functions)
    names = dict(zip(mangled, demangle(mangled)))
    rows = []
    for name in mangled:
        pretty = short_name(names[name])
        if name_filter and name_filter not in pretty:
            continue
        instructions = functions[name]
        spills = sum(1 for _, opcode, _ in instructions if opcode.startswith(("STL", "LDL")))
        loop = hottest_loop(instructions)
        res = usage.get(name, {})
        if loop is None:
            rows.append(dict(kernel=pretty, loop="-", total=0, counts=collections.Counter(), spills=spills, **res))
            continue
        start, end, total, counts = loop
        rows.append(dict(kernel=pretty, loop=f"{start:#06x}-{end:#06x}", total=total, counts=counts, spills=spills, **res))
    return rows


def markdown(rows, arch):
    header = ("| kernel | hottest loop | instructions | FFMA | HMMA | LDS+LDSM | STS | LDGSTS | LDG | int/address | BAR "
              "| regs | spills (LDL/STL) |")
    lines = [f"SASS of {arch}: the instruction mix of each kernel's hottest loop (shares of its instructions).", "",
             header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        c, t = r["counts"], max(r["total"], 1)
        share = lambda *groups: f"{100 * sum(c[g] for g in groups) / t:.0f}%" if r["total"] else "-"  # noqa: E731
        lines.append(f"| `{r['kernel']}` | {r['loop']} | {r['total']} | {share('FFMA')} | {share('HMMA')} | "
                     f"{share('LDS', 'LDSM')} | {share('STS')} | {share('LDGSTS')} | {share('LDG')} | "
                     f"{share('int/address')} | {share('BAR')} | {r.get('reg', '?')} | {r['spills']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", help="the _C_cuda*.so to read (default: cuconv's)")
    parser.add_argument("--arch", default="sm_90", help="the architecture's machine code to read (default sm_90)")
    parser.add_argument("--filter", help="only kernels whose name contains this")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    table = markdown(report(args.module or find_module(), args.arch, args.filter), args.arch)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
