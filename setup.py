"""Build script of fastln: the extension module fastln._C (and fastln._simt on request).

The CUDA kernels are compiled when the installed torch is a CUDA build and a usable CUDA
toolkit is found (fastln/_build.py: CUDA_HOME or CUDA_PATH, else the toolkit the nvcc on
PATH belongs to, else the standard locations). The decision never asks
torch.cuda.is_available(), so a machine without a GPU still builds (and CI still links)
the CUDA path. It is made before anything compiles:

- FASTLN_FORCE_CPU=1: CPU-only build.
- CUDA torch but no usable toolkit: CPU-only build and one warning saying why;
  FASTLN_REQUIRE_CUDA=1 turns it into an immediate error.

The build records what it compiled (torch version, CUDA toolkit, architectures) in
fastln/_build_info.py next to fastln._C; ``import fastln`` refuses a different torch and
``python -m fastln`` prints the record.

FASTLN_SIMT=1 adds fastln._simt: the CUDA kernels' own source compiled by the host C++
compiler against the SIMT runtime (csrc/simt), so that they run on the CPU (any torch,
a CPU build is enough). FASTLN_SIMT_ASAN=1 also instruments it with AddressSanitizer,
which checks the kernels' global-memory accesses.

Objects are compiled into build/temp.<platform>-<python> in the source tree, for
`pip install .`, `pip install -e .` and `setup.py build_ext` alike (pip's editable
install would otherwise compile everything again in a fresh temporary folder): ninja
then recompiles only what changed, so installing the same tree a second time, editable
after non-editable as in the README's two commands, only links.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import sysconfig
from types import ModuleType

import torch
from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# Architectures compiled when TORCH_CUDA_ARCH_LIST is unset: Ampere and Hopper
# natively, plus PTX of the newest so that later GPUs can JIT it.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def load_build_module() -> ModuleType:
    # By path, not `import fastln._build`: importing the package would load fastln._C,
    # which is what is about to be built.
    path = os.path.join(ROOT, "fastln", "_build.py")
    spec = importlib.util.spec_from_file_location("_fastln_build", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses looks its module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# pip runs this file once for the metadata and once more for the build: the decision is
# made every time (an error stops the first run, within seconds), but it is reported in
# the run that builds, so that a build log holds it once.
BUILD_COMMANDS = ("build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop")
BUILDING = any(arg in BUILD_COMMANDS for arg in sys.argv[1:])

_build = load_build_module()
DECISION = _build.decide(os.environ, str(torch.__version__), torch.version.cuda)
if DECISION.error:
    sys.exit(DECISION.message)
if DECISION.message and BUILDING:
    print(f"\n{DECISION.message}\n", file=sys.stderr, flush=True)
if DECISION.cuda:
    # torch.utils.cpp_extension reads CUDA_HOME once, when it is imported: set it first
    # so that its nvcc, -I and -L all come from the toolkit that passed the checks.
    os.environ["CUDA_HOME"] = DECISION.toolkit.home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
if DECISION.cuda and BUILDING:
    print(
        f"fastln: building the CUDA kernels with nvcc {DECISION.toolkit.version} from "
        f"{DECISION.toolkit.home} (found through {DECISION.toolkit.source}) for "
        f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}",
        flush=True,
    )

from torch.utils import cpp_extension  # noqa: E402  (after CUDA_HOME is settled)

if DECISION.cuda and cpp_extension.CUDA_HOME != DECISION.toolkit.home:
    # Imported earlier by something else, with its own guess: override the guess.
    cpp_extension.CUDA_HOME = DECISION.toolkit.home


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def openmp_flags() -> list[str]:
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # at::parallel_for is a header template whose OpenMP backend is a
        # `#pragma omp parallel`: without -fopenmp it silently runs on one
        # thread. Linking -fopenmp resolves to the libgomp.so.1 that torch has
        # already loaded (same soname), so there is one OpenMP runtime and
        # torch.set_num_threads() governs fastln too.
        return ["-fopenmp"]
    return []


def fastln_c_extension() -> Extension:
    # The C++ standard is left to torch.utils.cpp_extension: it passes the one
    # the installed torch's headers need.
    # -g0: no debug information (Python's own CFLAGS pass -g). The kernel copies'
    # flattened entry points made an object of 78 MB of which 74 were debug info, and
    # compiling it with -g took over 1.2x as long (AVX2 copy: 783 s with -g0, still
    # running at 954 s with -g, side by side on the 2-core CI machine).
    cxx_flags = ["-O3", "-g0", *openmp_flags()]
    link_flags = openmp_flags()
    include_dirs = [os.path.join(ROOT, "csrc")]
    cpp_sources = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    if not DECISION.cuda:
        return cpp_extension.CppExtension(
            "fastln._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
        )
    # The CUDA build of torch ships some CUDA headers (cusparse.h, ...) that
    # ATen/cuda includes inside its pip packages rather than in CUDA_HOME.
    nvidia_root = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    include_dirs += sorted(glob.glob(os.path.join(nvidia_root, "*", "include")))
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "fastln._C",
        cpp_sources + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        define_macros=[("FASTLN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


def simt_extension() -> Extension:
    # -fvisibility=hidden: the SIMT build defines the same fastln::cuda symbols
    # as a CUDA build of fastln._C, and each module must call its own.
    # #pragma unroll is nvcc's; GCC ignores it.
    # -g0, as for fastln._C (where debug information cost a fifth of the compile time);
    # -g1 under ASan: line tables, so that its reports name the kernel's source line.
    flags = ["-O2", "-g0", "-fvisibility=hidden", "-Wno-unknown-pragmas"]
    link_flags: list[str] = []
    if os.environ.get("FASTLN_SIMT_ASAN", "0") == "1":
        flags += ["-g1", "-fsanitize=address", "-fno-omit-frame-pointer"]
        link_flags += ["-fsanitize=address"]
    return cpp_extension.CppExtension(
        "fastln._simt",
        ["csrc/checks.cpp", *sources("csrc/simt/*.cpp")],
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("FASTLN_SIMT", "1")],
        extra_compile_args={"cxx": flags},
        extra_link_args=link_flags,
    )


def extensions() -> list[Extension]:
    """Every extension module this build compiles."""
    exts = [fastln_c_extension()]
    if os.environ.get("FASTLN_SIMT", "0") == "1":
        exts.append(simt_extension())
    return exts


def build_info(inplace: bool) -> dict[str, object]:
    toolkit = DECISION.toolkit
    return {
        "TORCH_VERSION": str(torch.__version__),
        "TORCH_CUDA": torch.version.cuda,
        "CUDA": DECISION.cuda,
        "CUDA_HOME": toolkit.home if toolkit else None,
        "CUDA_SOURCE": toolkit.source if toolkit else None,
        "NVCC_VERSION": toolkit.version if toolkit else None,
        "CUDA_ARCH_LIST": os.environ["TORCH_CUDA_ARCH_LIST"] if DECISION.cuda else None,
        "NO_CUDA_REASON": DECISION.reason,
        "SOURCE_DIR": ROOT,
        "INPLACE": inplace,
    }


class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):  # type: ignore[misc]
    """torch's build_ext in a fixed build folder, plus the build record next to fastln._C."""

    def finalize_options(self) -> None:
        super().finalize_options()
        # One folder for every kind of build (see the module docstring). ninja reruns a
        # compile whose command line or headers changed, so another torch, another
        # compiler or other flags (FASTLN_SIMT_ASAN=1) never reuse a stale object.
        self.build_temp = os.path.join(
            ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        )

    def run(self) -> None:
        # setuptools builds into build_lib and, for in-place and editable builds, then
        # copies the modules into the source tree; the record goes wherever the module
        # went, and only after a successful build, so that it never claims a torch the
        # compiled module was not built against.
        super().run()
        inplace = bool(self.inplace)
        self.inplace = False
        targets = {self.get_ext_fullpath("fastln._C")}
        self.inplace = inplace
        if inplace:
            targets.add(self.get_ext_fullpath("fastln._C"))
        text = _build.render_build_info(build_info(inplace))
        for module_path in sorted(targets):
            with open(os.path.join(os.path.dirname(module_path), "_build_info.py"), "w") as f:
                f.write(text)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
