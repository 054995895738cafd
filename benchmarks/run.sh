#!/usr/bin/env bash
# One command for the CPU (and, where present, CUDA) comparison recorded in RESULTS.md:
#   bash benchmarks/run.sh [--quick] [more pytest options]
# writes benchmarks/out/{bench.json,report.md,ratios.png,memory.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/out
mkdir -p "$out"
# pytest, not python -m pytest: the latter would import the source folder, not the built package
pytest benchmarks -q -p no:cacheprovider --benchmark-json="$out/bench.json" "$@"
python benchmarks/report.py "$out/bench.json" --markdown "$out/report.md" --plot "$out/ratios.png"
python benchmarks/memory.py > "$out/memory.md"
cat "$out/report.md" "$out/memory.md"
