"""The build records the torch it was compiled against, and a mismatch fails clearly."""

import os
import shutil
import subprocess
import sys

import torch

import cuconv


def test_build_info_names_this_torch():
    assert cuconv.built_with_torch == torch.__version__
    assert isinstance(cuconv.with_cuda, bool)


# Imports the copy in package_dir. An editable install's finder would fill in files the
# copy lacks from the source tree, so it is taken off the import path first.
_IMPORT_COPY = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; import cuconv"


def _import_in_subprocess(package_dir):
    env = dict(os.environ, PYTHONPATH=str(package_dir.parent))
    return subprocess.run([sys.executable, "-c", _IMPORT_COPY], env=env, capture_output=True,
                          text=True, cwd=package_dir.parent)


def test_import_under_another_torch_asks_for_a_rebuild(tmp_path):
    package = tmp_path / "cuconv"
    shutil.copytree(os.path.dirname(cuconv.__file__), package)
    info = package / "_build_info.py"
    info.write_text(info.read_text().replace(repr(torch.__version__), repr("1.0.0")))
    result = _import_in_subprocess(package)
    assert result.returncode != 0
    assert "built against torch 1.0.0" in result.stderr
    assert f"torch {torch.__version__} is installed" in result.stderr
    assert "pip install --no-build-isolation" in result.stderr


def test_import_without_the_extension_says_how_to_build(tmp_path):
    package = tmp_path / "cuconv"
    shutil.copytree(os.path.dirname(cuconv.__file__), package)
    (package / "_build_info.py").unlink()
    result = _import_in_subprocess(package)
    assert result.returncode != 0
    assert "cuconv._C is missing" in result.stderr and "pip install --no-build-isolation" in result.stderr
