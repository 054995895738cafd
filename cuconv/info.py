"""`cuconv info`: what this cuconv is and which kernels it runs, the first thing to paste
into a bug report. `cuconv.info.collect()` returns the same as a dict."""

import os
import platform
import sys

import torch

__all__ = ["collect", "format_report"]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect():
    """A dict describing the build, the running torch, the GPU and the CPU kernels chosen now."""
    import cuconv
    from cuconv import _build_info, _C

    gpus = [torch.cuda.get_device_name(i) + f" (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "cuconv": cuconv.__version__,
        "location": os.path.dirname(cuconv.__file__),
        "torch_running": torch.__version__,
        "torch_built_against": _build_info.torch_version,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels_compiled": bool(_build_info.with_cuda),
        "cuda_architectures": _build_info.cuda_arch_list if _build_info.with_cuda else None,
        "gpus": gpus,
        "cpu": _cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kernels": _C.cpu_kernels(),
        "cpu_memory": _C.cpu_memory(),
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CUCONV_")},
        "tuned_shapes": len(cuconv.tuning.choices()),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _kib(count):
    return f"{count / 1024:.0f} KiB"


def _memory_line(memory):
    if not memory["enabled"]:
        return ("CPU memory recycling: off (CUCONV_RECYCLE_CPU_MEMORY=0, torch < 2.11, or torch refused a "
                "recycled tensor)")
    return (f"CPU memory recycling: on, tensors of {_kib(memory['smallest_bytes'])} to {_kib(memory['limit_bytes'])}; "
            f"{_kib(memory['held_bytes'])} held in {memory['held_buffers']} buffers; {memory['reused']} tensors made "
            f"on a held buffer, {memory['fresh']} on a new one")


def format_report(info):
    kernels = info["cpu_kernels"]
    cuda = (f"compiled for {info['cuda_architectures'] or 'torch default architectures'}"
            if info["cuda_kernels_compiled"] else "not compiled (CPU-only build)")
    lines = [
        f"cuconv {info['cuconv']} at {info['location']}",
        f"torch: running {info['torch_running']} (CUDA {info['torch_cuda'] or 'none'}), "
        f"cuconv built against {info['torch_built_against']}",
        f"CUDA kernels: {cuda}",
        f"GPUs: {', '.join(info['gpus']) if info['gpus'] else 'none visible'}",
        f"CPU: {info['cpu']} (torch's capability: {info['torch_cpu_capability']}; L1d {kernels['l1_data_cache_bytes'] >> 10} KiB and L2 {kernels['l2_cache_bytes'] >> 10} KiB a core, last-level cache "
        f"{kernels['last_level_cache_bytes'] >> 20} MiB)",
        f"CPU kernels: instruction set {kernels['isa']}; GEMM microkernels {kernels['gemm_float']} (float), "
        f"{kernels['gemm_double']} (double), {kernels['gemm_bfloat16']} (bfloat16); direct float32 convolution: {kernels['direct_conv']} "
        f"(auto = the faster measured per shape unless CUCONV_CPU_TUNE=0); kernel choice by measurement "
        f"{kernels['measured_choice']} ({info['tuned_shapes']} choices made so far)",
        _memory_line(info["cpu_memory"]),
        f"settings: {', '.join(f'{k}={v}' for k, v in info['settings'].items()) or 'none (no CUCONV_* variable set)'}",
        f"threads: {info['threads']}; Python {info['python']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m cuconv.info (as cuconv info)
    from cuconv.__main__ import main

    sys.exit(main(["info", *sys.argv[1:]]))
