#!/usr/bin/env bash
# cuconv on a lent GPU, in stages that fit the device tool's limits (/work/.library/device:
# 10 minutes a command, 15 minutes of device time a session with the machine's start counted).
#
#   here:    PATH=$PWD/.venv/bin:$PATH bash benchmarks/gpu_run.sh prebuild
#              compiles the CUDA kernels for the H100 / H200 (sm_90) in a copy of the tree (~3
#              minutes on 2 cores; this tree's own build stays as it is) into .device-modules/
#              and prints the device call to make. The modules use torch's stable ABI, which is
#              meant to let them load under the device's own torch (without them, or where they
#              do not load, the stages build there first, in at most 4 minutes).
#   device:  bash benchmarks/gpu_run.sh check       (carrying .device-modules)
#              the machine, the whole test suite (cuda cases included), compute-sanitizer over a
#              subset, the layer protocol's quick subset against cuDNN, the float32 weight
#              gradients' long sums against float64 (gpu_long_sums.py): at most ~8.5 minutes with
#              the prebuilt modules (give the call timeout_s 540; the first run took ~4).
#   device:  bash benchmarks/gpu_run.sh profile     (same carry)
#              Nsight Compute's counters (time, SM and memory throughput, occupancy, registers,
#              bank conflicts) of both libraries' kernels on a few layers at batch 32:
#              gpu_profile.py, at most ~3.5 min (never yet run: ncu's time per kernel is a guess).
#   device:  bash benchmarks/gpu_run.sh bench       (same carry, with the device time left)
#              the whole layer protocol (float32 / TF32 / bfloat16, NCHW / channels_last,
#              cudnn.benchmark off / on) and the quick pytest-benchmark suite on cuda, in about
#              BENCH_SECONDS (default 240) plus ~30 s.
# Every step runs under `timeout` (SIGINT first, so that the protocol and pytest-benchmark still
# write what they measured) and its log lands in $OUT (at most 8 files come back), or ./gpu-run.
# The exit status is 1 when any step failed; summary.log says which.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh
stage=${1:-check}
case "$stage" in
  prebuild | check | bench | profile) ;;
  *) echo "usage: bash benchmarks/gpu_run.sh prebuild | check | bench | profile" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1
failed=0

# step SECONDS NAME LOG COMMAND...: runs COMMAND for at most SECONDS (then SIGINT, and SIGKILL
# 20 s later), its output appended to LOG, and says how it ended in summary.log.
step() {
  local seconds=$1 name=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout -s INT -k 20 "$seconds" "$@" >> "$log" 2>&1
  local code=$?
  local how="exit $code"
  [ "$code" = 124 ] && how="stopped at its ${seconds} s limit"
  [ "$code" = 0 ] || failed=1
  echo "$name: $how after $((SECONDS - start)) s" | tee -a "$out/summary.log"
}

if [ "$stage" = prebuild ]; then
  copy=$(mktemp -d)
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$copy"  # the tree as it is
  (cd "$copy" && CUCONV_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
    python3 setup.py build_ext --inplace > build-cuda.log 2>&1 \
    && python3 -c "import cuconv, sys; sys.exit(0 if cuconv.with_cuda else 'the CUDA module did not load')") \
    || { tail -30 "$copy/build-cuda.log"; exit 1; }
  mkdir -p "$DEVICE_MODULES"
  cp "$copy"/cuconv/_C.abi3.so "$copy"/cuconv/_C_cuda.abi3.so "$copy"/cuconv/_build_info.py "$DEVICE_MODULES"/
  rm -rf "$copy"
  ls -la "$DEVICE_MODULES"
  echo "device run: carry [\"$DEVICE_MODULES\"], command \"bash benchmarks/gpu_run.sh check\", timeout_s 540"
  exit 0
fi

out=${OUT:-gpu-run}
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.json "$out"/*.md  # (the steps append to their logs)
describe_machine "$out/build.log"
ensure_cuda_modules "$out/build.log" || { tail -40 "$out/build.log"; exit 1; }
if [ "$stage" = check ]; then
  python3 -m cuconv info >> "$out/build.log" 2>&1
  parallel=""  # 8 pytest-xdist workers of 2 threads each, where the machine has xdist
  python3 -c "import xdist" 2> /dev/null && parallel="-n 8"
  step 240 tests "$out/tests.log" env OMP_NUM_THREADS=2 python3 -m pytest tests -q $parallel --maxfail=20 \
    -p no:cacheprovider -rs
  tail -3 "$out/tests.log"
  # (compute-sanitizer refuses the device on some machines' runtimes: KINDS.md)
  for tool in memcheck racecheck; do
    step 45 "compute-sanitizer $tool" "$out/sanitizer.log" compute-sanitizer --tool "$tool" \
      --error-exitcode 1 python3 -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -k "agree or stream or deterministic"
  done
  # (CUCONV_LOG=1: the log keeps each measured choice of kernel family with the families' times)
  step 90 "gpu_protocol --quick" "$out/protocol-quick.log" env CUCONV_LOG=1 python3 benchmarks/gpu_protocol.py --quick \
    --budget 60 --json "$out/protocol-quick.json" --markdown "$out/protocol-quick.md"
  head -8 "$out/protocol-quick.md" 2> /dev/null
  grep "^cuconv: tuned" "$out/protocol-quick.log" | sed 's/^cuconv: tuned //' | head -12
  step 60 "gpu_long_sums" "$out/long-sums.log" python3 benchmarks/gpu_long_sums.py
  cat "$out/long-sums.log"
elif [ "$stage" = profile ]; then
  # the sections this ncu has, of those gpu_profile.py's summary reads (an unknown one stops ncu)
  available=$(ncu --list-sections 2> /dev/null)
  sections=""
  for section in SpeedOfLight Occupancy LaunchStats MemoryWorkloadAnalysis_Tables; do
    grep -qw "$section" <<< "$available" && sections="$sections --section $section"
  done
  # (ncu writes its CSV when the program ends: a step stopped at its limit leaves none)
  step 200 ncu "$out/ncu.log" ncu --profile-from-start off --clock-control none --print-units base $sections \
    --csv --page raw --log-file "$out/ncu.csv" python3 benchmarks/gpu_profile.py --labels "$out/labels.txt" --batch 32
  python3 benchmarks/gpu_profile.py --summarize "$out/ncu.csv" --labels "$out/labels.txt" > "$out/profile.md" 2>&1
  cat "$out/profile.md"
else
  total=${BENCH_SECONDS:-240}
  step $((total / 2)) gpu_protocol "$out/protocol.log" python3 benchmarks/gpu_protocol.py \
    --budget $((total / 2 - 30)) --json "$out/protocol.json" --markdown "$out/protocol.md"
  head -8 "$out/protocol.md" 2> /dev/null
  step $((total / 2)) "benchmark suite (cuda, quick)" "$out/bench.log" python3 -m pytest benchmarks -q \
    -p no:cacheprovider --devices cuda --quick --benchmark-json="$out/bench-cuda.json"
  python3 benchmarks/report.py "$out/bench-cuda.json" --markdown "$out/bench-cuda.md" >> "$out/bench.log" 2>&1
  head -12 "$out/bench-cuda.md" 2> /dev/null
fi
exit $failed
