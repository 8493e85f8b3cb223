"""Build script of fastln: one extension module, fastln._C.

The CUDA kernels are compiled when a CUDA toolkit is found *and* the installed
torch was built with CUDA. The decision never asks torch.cuda.is_available(),
so a machine without a GPU still builds (and CI still links) the CUDA path.
FASTLN_FORCE_CPU=1 forces a CPU-only build.

FASTLN_SIMT=1 adds fastln._simt: the CUDA kernels' own source compiled by the
host C++ compiler against the SIMT runtime (csrc/simt), so that they run on the
CPU (any torch, a CPU build is enough). FASTLN_SIMT_ASAN=1 also instruments it
with AddressSanitizer, which checks the kernels' global-memory accesses.
"""

from __future__ import annotations

import glob
import os
import sys

import torch
from setuptools import Extension, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

# Architectures compiled when TORCH_CUDA_ARCH_LIST is unset: Ampere and Hopper
# natively, plus PTX of the newest so that later GPUs can JIT it.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def want_cuda() -> bool:
    if os.environ.get("FASTLN_FORCE_CPU", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def make_extension() -> Extension:
    # The C++ standard is left to torch.utils.cpp_extension: it passes the one
    # the installed torch's headers need.
    cxx_flags = ["-O3"]
    link_flags: list[str] = []
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # at::parallel_for is a header template whose OpenMP backend is a
        # `#pragma omp parallel`: without -fopenmp it silently runs on one
        # thread. Linking -fopenmp resolves to the libgomp.so.1 that torch has
        # already loaded (same soname), so there is one OpenMP runtime and
        # torch.set_num_threads() governs fastln too.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    if not want_cuda():
        return CppExtension(
            "fastln._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    # The CUDA build of torch ships some CUDA headers (cusparse.h, ...) that
    # ATen/cuda includes inside its pip packages rather than in CUDA_HOME.
    nvidia_root = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    include_dirs += sorted(glob.glob(os.path.join(nvidia_root, "*", "include")))
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "fastln._C",
        cpp_sources + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        define_macros=[("FASTLN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


def make_simt_extension() -> Extension:
    # -fvisibility=hidden: the SIMT build defines the same fastln::cuda symbols
    # as a CUDA build of fastln._C, and each module must call its own.
    # #pragma unroll is nvcc's; GCC ignores it.
    flags = ["-O2", "-fvisibility=hidden", "-Wno-unknown-pragmas"]
    link_flags: list[str] = []
    if os.environ.get("FASTLN_SIMT_ASAN", "0") == "1":
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link_flags += ["-fsanitize=address"]
    return CppExtension(
        "fastln._simt",
        ["csrc/checks.cpp", *sources("csrc/simt/*.cpp")],
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("FASTLN_SIMT", "1")],
        extra_compile_args={"cxx": flags},
        extra_link_args=link_flags,
    )


def extensions() -> list[Extension]:
    exts = [make_extension()]
    if os.environ.get("FASTLN_SIMT", "0") == "1":
        exts.append(make_simt_extension())
    return exts


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
