#!/usr/bin/env bash
# cuconv on a lent GPU, in stages that fit the device tool's limits (/work/.library/device:
# 10 minutes a command, 15 minutes of device time a session with the machine's start counted).
#
#   here:    PATH=$PWD/.venv/bin:$PATH bash benchmarks/gpu_run.sh prebuild
#              compiles the CUDA kernels for the H100 / H200 (sm_90) in place on this machine's
#              CPUs (~2 minutes on 2 cores) and prints the device call to make; the modules use
#              torch's stable ABI, so they load under the device's own torch.
#   device:  bash benchmarks/gpu_run.sh check       (carrying the files prebuild names)
#              the machine, the whole test suite (cuda cases included), compute-sanitizer over a
#              subset, the layer protocol's quick subset against cuDNN: ~6 minutes, every step
#              capped. Without carried modules it builds them there first (~1 minute).
#   device:  bash benchmarks/gpu_run.sh bench       (same carry, with the device time left)
#              the whole layer protocol (float32 / TF32 / bfloat16, NCHW / channels_last,
#              cudnn.benchmark off / on) and the pytest-benchmark suite on cuda, capped at
#              BENCH_SECONDS (default 300).
# Logs, JSON and tables land in $OUT (at most 8 files come back), or ./gpu-run.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/gpu_common.sh
stage=${1:-check}
case "$stage" in
  prebuild | check | bench) ;;
  *) echo "usage: bash benchmarks/gpu_run.sh prebuild | check | bench" >&2; exit 2 ;;
esac
out=${OUT:-gpu-run}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

# step SECONDS NAME LOG COMMAND...: runs COMMAND for at most SECONDS, its output into LOG, and
# says how it ended (a step that runs out of time still leaves its log).
step() {
  local seconds=$1 name=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout "$seconds" "$@" > "$log" 2>&1
  local code=$?
  local how="exit $code"
  [ "$code" = 124 ] && how="stopped at its ${seconds} s limit"
  echo "$name: $how after $((SECONDS - start)) s" | tee -a "$out/summary.log"
}

case "$stage" in
  prebuild)
    CUCONV_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
      python3 setup.py build_ext --inplace > build-cuda.log 2>&1 || { tail -30 build-cuda.log; exit 1; }
    python3 -c "import cuconv, sys; sys.exit(0 if cuconv.with_cuda else 'the CUDA module did not load')" || exit 1
    ls -la cuconv/_C.abi3.so cuconv/_C_cuda.abi3.so cuconv/_build_info.py
    echo 'device run: carry ["cuconv/_C.abi3.so", "cuconv/_C_cuda.abi3.so", "cuconv/_build_info.py"],'
    echo '            command "bash benchmarks/gpu_run.sh check", timeout_s 540'
    ;;
  check)
    describe_machine "$out/build.log"
    : > "$out/summary.log"
    ensure_cuda_modules "$out/build.log" || { tail -40 "$out/build.log"; exit 1; }
    python3 -m cuconv info >> "$out/build.log" 2>&1
    parallel=""  # 8 pytest-xdist workers of 2 threads each, where the machine has xdist
    python3 -c "import xdist" 2> /dev/null && parallel="-n 8"
    step 300 tests "$out/tests.log" env OMP_NUM_THREADS=2 python3 -m pytest tests -q $parallel --maxfail=20 \
      -p no:cacheprovider -rs
    tail -3 "$out/tests.log"
    # (compute-sanitizer refuses the device on some machines' runtimes: KINDS.md)
    for tool in memcheck racecheck; do
      step 75 "compute-sanitizer $tool" "$out/sanitizer-$tool.log" compute-sanitizer --tool "$tool" \
        --error-exitcode 1 python3 -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -k "agree or stream or deterministic"
    done
    step 120 "gpu_protocol --quick" "$out/protocol-quick.log" python3 benchmarks/gpu_protocol.py --quick \
      --budget 90 --json "$out/protocol-quick.json" --markdown "$out/protocol-quick.md"
    head -8 "$out/protocol-quick.md" 2> /dev/null
    ;;
  bench)
    describe_machine "$out/build.log"
    : > "$out/summary.log"
    ensure_cuda_modules "$out/build.log" || { tail -40 "$out/build.log"; exit 1; }
    total=${BENCH_SECONDS:-300}
    step $((total / 2 + 30)) gpu_protocol "$out/protocol.log" python3 benchmarks/gpu_protocol.py --budget $((total / 2)) \
      --json "$out/protocol.json" --markdown "$out/protocol.md"
    head -8 "$out/protocol.md" 2> /dev/null
    step $((total / 2)) "benchmark suite (cuda)" "$out/bench.log" python3 -m pytest benchmarks -q -p no:cacheprovider \
      --devices cuda --passes 1 --benchmark-json="$out/bench-cuda.json"
    python3 benchmarks/report.py "$out/bench-cuda.json" --markdown "$out/bench-cuda.md" >> "$out/bench.log" 2>&1
    head -12 "$out/bench-cuda.md" 2> /dev/null
    ;;
esac
