"""Checks on the sources themselves, which would otherwise fail late or silently."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tests" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_still_applies():
    # mutation_check.py stops at a mutant whose text no longer occurs exactly once (after a
    # refactor): better to learn that here than after its 15-minute build.
    for mutant in _mutation_check().MUTANTS:
        text = (ROOT / mutant.file).read_text()
        assert text.count(mutant.find) == 1, f"mutant {mutant.id}: its text occurs {text.count(mutant.find)} times in {mutant.file}"


def test_every_cuda_source_runs_on_the_emulated_device():
    # The emulated module compiles csrc/emulation/*.cpp, each of which includes one .cu file:
    # a .cu without one would be compiled for GPUs only and never run in CI.
    wrapped = {line.split('"../cuda/')[1].rstrip('"')
               for path in (ROOT / "csrc" / "emulation").glob("*.cpp")
               for line in path.read_text().splitlines() if line.startswith('#include "../cuda/') and line.endswith('.cu"')}
    sources = {path.name for path in (ROOT / "csrc" / "cuda").glob("*.cu")}
    assert sources == wrapped, f"without an emulation wrapper: {sorted(sources - wrapped)}, gone: {sorted(wrapped - sources)}"
