"""The build records the torch it was compiled against, and a mismatch fails clearly."""

import os
import shutil
import subprocess
import sys

import torch

import cuconv


def test_build_info_names_this_torch():
    """The torch of the build is this one, except for modules compiled on another machine and
    carried to this one (`gpu_run.sh prebuild`; benchmarks/gpu_common.sh sets
    CUCONV_BUILT_ELSEWHERE=1 where it uses them): they name theirs, and the stable ABI is meant to
    let them run under any torch >= 2.10."""
    if os.environ.get("CUCONV_BUILT_ELSEWHERE") == "1":
        major, minor = (int(v) for v in cuconv.built_with_torch.split(".")[:2])
        assert (major, minor) >= (2, 10)
    else:
        assert cuconv.built_with_torch == torch.__version__
    assert isinstance(cuconv.with_cuda, bool)


def test_cuda_build_records_its_architectures():
    """With CUDA kernels compiled, the build says for which GPUs: the visible ones', the list given,
    or, with no GPU and no TORCH_CUDA_ARCH_LIST (README's install command as written), setup.py's
    default, so that the build did not depend on torch finding a GPU."""
    from cuconv import _build_info

    if not cuconv.with_cuda:
        import pytest
        pytest.skip("cuconv was built without its CUDA kernels")
    assert _build_info.cuda_arch_list
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        assert _build_info.cuda_arch_list == "8.0;9.0+PTX"


# Imports the copy in package_dir. An editable install's finder would fill in files the
# copy lacks from the source tree, so it is taken off the import path first.
_IMPORT_COPY = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; import cuconv"


def _import_in_subprocess(package_dir):
    env = dict(os.environ, PYTHONPATH=str(package_dir.parent))
    return subprocess.run([sys.executable, "-c", _IMPORT_COPY], env=env, capture_output=True,
                          text=True, cwd=package_dir.parent)


def test_modules_are_built_on_the_stable_abi():
    """One build for every torch >= 2.10 and Python >= 3.10: the modules are abi3 and name no
    symbol of torch's unstable C++ API (at::, c10:: functions that change between releases)."""
    package = os.path.dirname(cuconv.__file__)
    modules = sorted(f for f in os.listdir(package) if f.startswith("_C") and f.endswith(".so"))
    assert modules and all(f.endswith(".abi3.so") for f in modules), modules
    nm = shutil.which("nm")
    if nm is None:
        return
    for name in modules:
        undefined = subprocess.run([nm, "-D", "--undefined-only", "-C", os.path.join(package, name)],
                                   capture_output=True, text=True).stdout
        unstable = [line for line in undefined.splitlines() if "at::" in line or "c10::" in line or "torch::" in line]
        assert unstable == [], (name, unstable[:10])


def test_import_under_a_torch_older_than_the_stable_abi_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import torch; torch.__version__ = '2.9.1'; import cuconv"],
                            env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(cuconv.__file__))),
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "cuconv: needs torch >= 2.10 (its stable C++ ABI), but torch 2.9.1 is installed" in result.stderr


def test_cuda_kernels_built_for_another_cuda_are_skipped_with_one_warning(tmp_path):
    package = tmp_path / "cuconv"
    shutil.copytree(os.path.dirname(cuconv.__file__), package)
    info = package / "_build_info.py"
    text = info.read_text()
    text = text.replace("with_cuda = False", "with_cuda = True").replace("cuda_version = None", "cuda_version = '99.0'")
    text = "\n".join(line if not line.startswith("cuda_version") else "cuda_version = '99.0'" for line in text.splitlines())
    info.write_text(text)
    script = ("import warnings, sys; warnings.simplefilter('always'); " + _IMPORT_COPY +
              "; print('with_cuda', cuconv.with_cuda)")
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(tmp_path)),
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "with_cuda False" in result.stdout
    assert result.stderr.count("cuconv: the CUDA kernels (built for CUDA 99.0) are not loaded") == 1
    assert "rebuild cuconv against it (pip install --force-reinstall --no-deps .)" in result.stderr


def test_import_without_the_extension_says_how_to_build(tmp_path):
    package = tmp_path / "cuconv"
    shutil.copytree(os.path.dirname(cuconv.__file__), package)
    (package / "_build_info.py").unlink()
    result = _import_in_subprocess(package)
    assert result.returncode != 0
    assert "cuconv._C is missing" in result.stderr and "pip install" in result.stderr


# Runs under valgrind, whose virtual CPU has AVX2 but no AVX-512: cuconv must choose its
# AVX2 code there and never execute an AVX-512 instruction (SIGILL on such a CPU, for
# instance in a table built eagerly by code compiled for AVX-512), and still match torch.
_WITHOUT_AVX512 = r"""
import os, torch, cuconv, cuconv.functional as CF, torch.nn.functional as F
torch.manual_seed(0)
torch.set_num_threads(1)
print("capability", torch.backends.cpu.get_cpu_capability(), flush=True)

def check(ours, theirs, *tensors, tol=1e-4):
    leaves = [t.clone().requires_grad_() for t in tensors]
    refs = [t.clone().requires_grad_() for t in tensors]
    out, ref = ours(*leaves), theirs(*refs)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    out.sum().backward(); ref.sum().backward()
    for a, b in zip(leaves, refs):
        torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol)

for direct in ("1", "0", ""):  # the direct kernels, the GEMM, and the rules
    os.environ["CUCONV_CPU_DIRECT"] = direct
    for dtype in (torch.float32, torch.float64):
        x, w = torch.randn(2, 5, 9, 11, dtype=dtype), torch.randn(20, 5, 3, 3, dtype=dtype)
        check(lambda x, w: CF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), x, w)
x = torch.randn(2, 3, 9, 8)
check(lambda x: CF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), x)
check(lambda x: CF.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), x)
check(lambda x: CF.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), x)
check(lambda x: CF.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1), x)
print("ok", flush=True)
"""


def test_runs_on_a_cpu_without_avx512():
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        import pytest
        pytest.skip("valgrind is not installed")
    package_parent = os.path.dirname(os.path.dirname(cuconv.__file__))
    env = dict(os.environ, PYTHONPATH=package_parent)
    result = subprocess.run([valgrind, "--tool=none", "-q", sys.executable, "-c", _WITHOUT_AVX512], env=env,
                            capture_output=True, text=True, timeout=900, cwd=package_parent)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
    assert "capability AVX512" not in result.stdout  # valgrind did hide AVX-512


def _readme_python_blocks():
    readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")
    with open(readme) as f:
        text = f.read()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_readme_python_snippets_run_after_a_plain_import(tmp_path):
    """README's Python blocks run as written, in a fresh interpreter (from another folder, so that
    the installed or in-place-built cuconv is imported), and the submodules README names work
    after a plain `import cuconv`: cuconv.onnx.export and cuconv.info.collect failed with
    AttributeError until imported by name."""
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    script = "\n\n".join(blocks) + (
        "\nimport cuconv\n"
        "model = torch.nn.Sequential(cuconv.Conv2d(1, 2, 3), cuconv.MaxPool2d(2))\n"
        "assert callable(cuconv.onnx.export) and callable(cuconv.onnx.translation_table)\n"
        "assert cuconv.info.collect()['cuconv'] == cuconv.__version__\n"
        "assert cuconv.models.LeNet and cuconv.data.load_fashion_mnist and cuconv.train.fit\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
