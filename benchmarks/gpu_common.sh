# Sourced by gpu_run.sh and gpu_train.sh, from the repository root: the machine's description,
# and cuconv's compiled modules in place in the source tree, which python3 then imports.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# Where `gpu_run.sh prebuild` leaves the modules it compiled, for the device call to carry.
DEVICE_MODULES=.device-modules

# describe_machine LOG: the date, the GPU and the torch of this machine, at the head of LOG.
describe_machine() {
  {
    date -u
    nvidia-smi
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
  } > "$1" 2>&1
}

# ensure_cuda_modules LOG: cuconv imports from this tree with its CUDA kernels on a visible GPU.
# The modules that `gpu_run.sh prebuild` compiled on another machine, carried in $DEVICE_MODULES,
# are used where they load under this machine's torch (the stable ABI is meant to let them;
# tried on the first GPU run); otherwise the modules are compiled here, in place, for the
# visible GPU's architecture only, in at most 240 s. Appends to LOG; returns non-zero when
# neither works.
ensure_cuda_modules() {
  local log=$1
  local probe="import cuconv, sys, torch; sys.exit(0 if cuconv.with_cuda and torch.cuda.is_available() else 1)"
  [ -d "$DEVICE_MODULES" ] && cp "$DEVICE_MODULES"/_C.abi3.so "$DEVICE_MODULES"/_C_cuda.abi3.so \
    "$DEVICE_MODULES"/_build_info.py cuconv/ >> "$log" 2>&1
  if python3 -c "$probe" >> "$log" 2>&1; then
    echo "cuconv: using the modules in the tree (built against $(python3 -c 'import cuconv._build_info as b; print(b.torch_version, "for", b.cuda_arch_list)'))" | tee -a "$log"
    # (the tests then accept a build's torch other than this machine's: tests/test_build.py)
    python3 -c "import cuconv, sys, torch; sys.exit(0 if cuconv.built_with_torch != torch.__version__ else 1)" \
      && export CUCONV_BUILT_ELSEWHERE=1
    return 0
  fi
  echo "cuconv: no usable modules in the tree: building them here" | tee -a "$log"
  local start=$SECONDS
  MAX_JOBS=${MAX_JOBS:-16} CUCONV_REQUIRE_CUDA=1 timeout -k 10 240 python3 setup.py build_ext --inplace >> "$log" 2>&1 \
    || return 1
  echo "cuconv: built in $((SECONDS - start)) s" | tee -a "$log"
  python3 -c "$probe" >> "$log" 2>&1
}
