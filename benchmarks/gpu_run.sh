#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one command (the device tool's `run`): build against
# the machine's own torch, the whole test suite on cuda, compute-sanitizer (memcheck + racecheck)
# over a short subset, the layer protocol against cuDNN (benchmarks/gpu_protocol.py: float32,
# TF32 and bfloat16, NCHW and channels_last, cudnn.benchmark off and on, CUDA events, every
# timing gated on a float64 check) and the pytest-benchmark suite side by side with torch.
#   run: bash benchmarks/gpu_run.sh [--quick]   (logs, JSON and tables land in $OUT, or ./gpu-run)
set -uo pipefail
out=${OUT:-gpu-run}
mkdir -p "$out"
# At most 8 files come back from $OUT: the machine's description heads build.log.
{
  date -u; nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
} > "$out/build.log" 2>&1
export MAX_JOBS=16 CUCONV_REQUIRE_CUDA=1
python3 -m pip install --no-build-isolation --no-deps . >> "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
cd /tmp  # import the installed package, not the source tree
src=$OLDPWD
python3 -m pytest "$src/tests" -q -x -p no:cacheprovider -rs 2>&1 | tee "$out/tests.log" | tail -5
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 1 python3 -m pytest "$src/tests/test_cuda.py" -q -x \
    -p no:cacheprovider -k "agree or stream or deterministic" > "$out/sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool: exit $?" | tee -a "$out/tests.log"
done
quick=""; [ "${1:-}" = "--quick" ] && quick="--quick"
python3 "$src/benchmarks/gpu_protocol.py" $quick --json "$out/protocol.json" --markdown "$out/protocol.md" \
  > "$out/protocol.log" 2>&1
echo "gpu_protocol: exit $?"; head -8 "$out/protocol.md"
python3 -m pytest "$src/benchmarks" -q -p no:cacheprovider --devices cuda --benchmark-json="$out/bench-cuda.json" \
  > "$out/bench.log" 2>&1
python3 "$src/benchmarks/report.py" "$out/bench-cuda.json" --markdown "$out/bench-cuda.md" --plot "$out/bench-cuda.png"
tail -3 "$out/bench.log"
