#!/usr/bin/env bash
# One command for the CPU (and, where present, CUDA) comparison recorded in RESULTS.md:
#   bash benchmarks/run.sh [--quick] [more pytest options]
# writes benchmarks/out/{bench.json,report.md,ratios.png,memory.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/out
mkdir -p "$out"
# Both backends share the process and its allocator; two settings keep the machine out of
# the comparison (benchmarks/NOTES.md, "Measuring"):
# - glibc serves tensors from its heap instead of fresh mmap pages (else every large op
#   pays first-touch page faults, ~0.25 ms per MB on this VM, and torch's times were
#   bimodal between processes with glibc's adaptive mmap threshold);
# - numpy's OpenBLAS (imported by torch, unused here) starts no polling worker threads.
# pytest, not python -m pytest: the latter would import the source folder, not the built package
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 OPENBLAS_NUM_THREADS=1 \
  pytest benchmarks -q -p no:cacheprovider --benchmark-json="$out/bench.json" "$@"
python benchmarks/report.py "$out/bench.json" --markdown "$out/report.md" --plot "$out/ratios.png"
python benchmarks/memory.py > "$out/memory.md"
cat "$out/report.md" "$out/memory.md"
