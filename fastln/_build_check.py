"""What this build of fastln is, read from the record setup.py writes (fastln/_build_info.py).

``import fastln`` calls :func:`check_torch` before it loads ``fastln._C``: an extension
compiled against another torch fails to load with an undefined-symbol error (or loads
and misbehaves), which says nothing about the cause or the fix.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
from types import ModuleType
from typing import Any

__all__ = ["build_info", "check_torch", "describe", "summary"]

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _record() -> ModuleType:
    # Read from this package's own directory by path: the record must be the one
    # beside this copy of fastln._C, never one an import hook finds elsewhere (an
    # editable install's finder maps fastln.* names to the source tree).
    path = os.path.join(PACKAGE_DIR, "_build_info.py")
    if not os.path.isfile(path):
        shadowing = ""
        if not glob.glob(os.path.join(PACKAGE_DIR, "_C*")):
            # `pip install .` builds into site-packages and leaves the source folder
            # unbuilt; run from the source directory, that folder shadows the install.
            shadowing = (
                " If fastln is installed (pip install .), this is its source folder "
                "shadowing the installed copy: run from another directory, or install "
                "with -e."
            )
        raise ImportError(
            f"fastln is not built: {PACKAGE_DIR} has no _build_info.py, the record that "
            "setup.py writes next to the compiled fastln._C. Build it from the fastln source "
            f"directory with: python -m pip install --no-build-isolation .{shadowing}"
        )
    spec = importlib.util.spec_from_file_location("fastln._build_info", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reinstall_command(record: ModuleType) -> str:
    editable = "-e " if record.INPLACE else ""
    return (
        f"cd {record.SOURCE_DIR} && python -m pip install --no-build-isolation --no-deps "
        f"--force-reinstall {editable}."
    )


def check_torch(running: str | None = None) -> None:
    """Raises ImportError unless the running torch is the one fastln was compiled against.

    running defaults to ``torch.__version__``. The whole version string is compared,
    local tag included: 2.13.0+cpu and 2.13.0+cu130 are different builds.
    """
    record = _record()
    if running is None:
        import torch

        running = str(torch.__version__)
    if running != record.TORCH_VERSION:
        raise ImportError(
            f"fastln was compiled against torch {record.TORCH_VERSION}, but torch {running} "
            "is installed; its compiled extension fastln._C would fail to load or misbehave. "
            f"Rebuild fastln against the installed torch: {reinstall_command(record)}"
        )


def build_info() -> dict[str, Any]:
    """The build record: torch it was compiled against, CUDA or not, toolkit, architectures."""
    record = _record()
    return {k: v for k, v in vars(record).items() if k.isupper()}


def arch_names(arch_list: str) -> str:
    """TORCH_CUDA_ARCH_LIST as code: '8.0;9.0+PTX' -> 'sm_80, sm_90, PTX compute_90'."""
    names: list[str] = []
    for entry in re.split(r"[;\s]+", arch_list.strip()):
        if not entry:
            continue
        arch = entry.removesuffix("+PTX").replace(".", "")
        names.append(f"sm_{arch}")
        if entry.endswith("+PTX"):
            names.append(f"PTX compute_{arch}")
    return ", ".join(names)


def simt_state() -> str:
    """Whether fastln._simt (the CUDA kernels run on the CPU) was built."""
    import importlib.util

    if importlib.util.find_spec("fastln._simt") is None:
        return "not built (FASTLN_SIMT=1 builds fastln._simt)"
    return "built (fastln._simt: torch.ops.fastln_simt runs the CUDA kernels on the CPU)"


def stream_state() -> str:
    """From which output size the CPU kernels write with non-temporal stores."""
    import torch

    from ._ops import cpu_stream_bytes

    limit = cpu_stream_bytes()
    if limit is None:
        return "off (FASTLN_CPU_STREAM=0)"
    size = f"{limit / 2**20:.3g} MiB" if limit >= 2**20 else f"{limit} bytes"
    return (
        f"outputs of {size} and more at {torch.get_num_threads()} threads "
        "(FASTLN_CPU_STREAM=<bytes> sets the size, =0 turns them off)"
    )


def describe() -> list[str]:
    """What ``python -m fastln`` prints: the build, and what this process runs with."""
    import torch

    import fastln

    info = build_info()
    lines = [
        f"fastln {fastln.__version__} at {PACKAGE_DIR}",
        f"built against torch {info['TORCH_VERSION']} "
        f"(running torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})",
    ]
    if info["CUDA"]:
        lines.append(f"CUDA kernels: yes, for {arch_names(info['CUDA_ARCH_LIST'])}")
        lines.append(
            f"CUDA toolkit: nvcc {info['NVCC_VERSION']} at {info['CUDA_HOME']} "
            f"(found through {info['CUDA_SOURCE']})"
        )
    else:
        lines.append(f"CUDA kernels: no ({info['NO_CUDA_REASON']})")
    lines.append(
        f"CPU kernels: {fastln.cpu_isa()} (FASTLN_CPU_ISA=avx2 or =base forces a narrower copy)"
    )
    lines.append(f"CPU streaming stores: {stream_state()}")
    lines.append(f"SIMT backend: {simt_state()}")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
    lines.append(f"GPU: {gpu}")
    return lines


def summary() -> str:
    """The build in one line, for headers such as the benchmark's."""
    import fastln

    info = build_info()
    cuda = f"CUDA {arch_names(info['CUDA_ARCH_LIST'])}" if info["CUDA"] else "CPU only"
    return (
        f"fastln build: {cuda} | CPU kernels {fastln.cpu_isa()} | "
        f"built against torch {info['TORCH_VERSION']}"
    )
