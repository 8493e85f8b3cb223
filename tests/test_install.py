"""The build's decisions (fastln/_build.py, setup.py) and the import-time torch check.

Toolkits here are fakes: a temporary directory with a shell-script bin/nvcc that prints
what the real one prints, and whichever of include/cuda_runtime.h and lib64/libcudart.so
the case needs. The "torch is a CUDA build" input is a parameter of decide(), and the
setup.py runs patch torch.version.cuda in their own process, so every path runs with
the CPU build of torch too.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import fastln
from fastln import _build, _build_check

ROOT = Path(__file__).resolve().parents[1]
TORCH_CUDA = "13.0"
TORCH_VERSION = "2.14.1+cu130"
# The decision must come before anything compiles: a setup.py that stops on it finishes
# in the seconds that importing torch takes, against minutes for a build.
FAST_FAIL_S = 60


def write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_toolkit(
    root: Path,
    version: str = TORCH_CUDA,
    header: bool = True,
    cudart: bool = True,
    nvcc_runs: bool = True,
    lib_dir: str = "lib64",
) -> Path:
    """A directory laid out like a CUDA toolkit, with an nvcc that answers --version
    and the dry run (its TOP line) the way nvcc does."""
    if nvcc_runs:
        write_script(
            root / "bin" / "nvcc",
            f"""\
            case "$*" in
              *--version*) echo "Cuda compilation tools, release {version}, V{version}.88" ;;
              *--dryrun*) echo '#$ _HERE_={root}/bin'; echo '#$ TOP={root}/bin/..' ;;
              *) exit 1 ;;
            esac
            """,
        )
    else:
        write_script(root / "bin" / "nvcc", "echo 'nvcc: cannot execute' >&2; exit 127\n")
    if header:
        (root / "include").mkdir(parents=True)
        (root / "include" / "cuda_runtime.h").write_text("")
    (root / lib_dir).mkdir(parents=True)
    if cudart:
        (root / lib_dir / "libcudart.so").write_text("")
    return root


def env_with(**extra: str) -> dict[str, str]:
    """A build environment with no CUDA variables and no nvcc on PATH unless given."""
    env = {"PATH": "/usr/bin:/bin"}
    env.update(extra)
    return env


# --- discovery ---------------------------------------------------------------------------


def test_cuda_home_toolkit_is_used(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    d = _build.decide(env_with(CUDA_HOME=str(home)), TORCH_VERSION, TORCH_CUDA, standard=[])
    assert d.cuda and not d.error and d.message is None
    assert d.toolkit.home == str(home) and d.toolkit.version == TORCH_CUDA
    assert d.toolkit.lib_dir == str(home / "lib64")


def test_cuda_path_is_used_when_cuda_home_is_unset(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    d = _build.decide(env_with(CUDA_PATH=str(home)), TORCH_VERSION, TORCH_CUDA, standard=[])
    assert d.cuda and d.toolkit.home == str(home)


def test_nvcc_wrapper_on_path_resolves_to_its_toolkit(tmp_path):
    # The machine: /usr/local/bin/nvcc is `exec /usr/local/cuda-13.0/bin/nvcc "$@"`,
    # and /usr/local is no toolkit. torch's own guess (the directory above nvcc) is wrong.
    home = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper_dir = tmp_path / "local" / "bin"
    write_script(wrapper_dir / "nvcc", f'exec {home}/bin/nvcc "$@"\n')
    (tmp_path / "local" / "lib64").mkdir()  # a lib64 without libcudart, as in /usr/local
    env = env_with(PATH=f"{wrapper_dir}:/usr/bin:/bin")
    d = _build.decide(env, TORCH_VERSION, TORCH_CUDA, standard=[])
    assert d.cuda, d.message
    assert d.toolkit.home == os.path.realpath(home)
    assert "the nvcc on PATH" in d.toolkit.source


def test_nvcc_symlink_on_path_resolves_to_its_toolkit(tmp_path):
    home = fake_toolkit(tmp_path / "cuda-13.0")
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    (link_dir / "nvcc").symlink_to(home / "bin" / "nvcc")
    d = _build.decide(env_with(PATH=str(link_dir)), TORCH_VERSION, TORCH_CUDA, standard=[])
    assert d.cuda and d.toolkit.home == os.path.realpath(home)


def test_standard_location_when_nothing_else_names_a_toolkit(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    d = _build.decide(env_with(), TORCH_VERSION, TORCH_CUDA, standard=[str(home)])
    assert d.cuda and d.toolkit.home == str(home)
    assert "standard location" in d.toolkit.source


def test_first_usable_candidate_wins(tmp_path):
    old = fake_toolkit(tmp_path / "cuda-12.8", version="12.8")
    new = fake_toolkit(tmp_path / "cuda-13.0")
    env = env_with(PATH=f"{old}/bin")
    d = _build.decide(env, TORCH_VERSION, TORCH_CUDA, standard=[str(new)])
    assert d.cuda and d.toolkit.home == str(new)


def test_lib_dir_follows_torch_rule(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", lib_dir="lib")
    d = _build.decide(env_with(CUDA_HOME=str(home)), TORCH_VERSION, TORCH_CUDA, standard=[])
    assert d.cuda and d.toolkit.lib_dir == str(home / "lib")


# --- unusable toolkits: CPU-only build with a warning, or an error --------------------------

UNUSABLE = {
    "missing": (lambda p: p / "nowhere", "does not exist"),
    "no_libcudart": (lambda p: fake_toolkit(p / "cuda", cudart=False), "no libcudart.so"),
    "no_header": (lambda p: fake_toolkit(p / "cuda", header=False), "cuda_runtime.h"),
    "nvcc_fails": (lambda p: fake_toolkit(p / "cuda", nvcc_runs=False), "--version failed"),
    "major_mismatch": (
        lambda p: fake_toolkit(p / "cuda", version="12.8"),
        "the major versions must match",
    ),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_toolkit_gives_cpu_build_and_warning(tmp_path, case):
    make, why = UNUSABLE[case]
    home = make(tmp_path)
    d = _build.decide(env_with(CUDA_HOME=str(home)), TORCH_VERSION, TORCH_CUDA, standard=[])
    assert not d.cuda and not d.error and d.toolkit is None
    assert d.message.startswith("fastln: WARNING: building fastln WITHOUT its CUDA kernels")
    assert why in d.message and str(home) in d.message
    assert "set CUDA_HOME to a CUDA 13.x toolkit" in d.message
    assert "FASTLN_REQUIRE_CUDA=1" in d.message
    assert why in d.reason


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_require_cuda_turns_unusable_toolkit_into_error(tmp_path, case):
    make, why = UNUSABLE[case]
    home = make(tmp_path)
    env = env_with(CUDA_HOME=str(home), FASTLN_REQUIRE_CUDA="1")
    d = _build.decide(env, TORCH_VERSION, TORCH_CUDA, standard=[])
    assert d.error and not d.cuda
    assert d.message.startswith("fastln: error: FASTLN_REQUIRE_CUDA=1")
    assert why in d.message and "set CUDA_HOME to a CUDA 13.x toolkit" in d.message
    # The same explanation as the warning a build without the variable prints.
    warning = _build.decide(env_with(CUDA_HOME=str(home)), TORCH_VERSION, TORCH_CUDA, [])
    assert d.reason == warning.reason and d.reason in warning.message


def test_set_cuda_home_is_not_second_guessed(tmp_path):
    good = fake_toolkit(tmp_path / "good")
    env = env_with(CUDA_HOME=str(tmp_path / "typo"), PATH=f"{good}/bin")
    d = _build.decide(env, TORCH_VERSION, TORCH_CUDA, standard=[str(good)])
    assert not d.cuda and "typo" in d.message


def test_no_toolkit_anywhere(tmp_path):
    absent = str(tmp_path / "cuda")
    d = _build.decide(env_with(), TORCH_VERSION, TORCH_CUDA, standard=[absent])
    assert not d.cuda and "no CUDA toolkit found" in d.message and "CUDA_HOME" in d.message
    assert f"none of {absent} exists" in d.message


def test_cpu_torch_builds_cpu_only_without_warning(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    d = _build.decide(env_with(CUDA_HOME=str(home)), "2.13.0+cpu", None, standard=[])
    assert not d.cuda and d.message is None and not d.error
    assert "CPU-only build" in d.reason


def test_require_cuda_with_cpu_torch_is_an_error(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    env = env_with(CUDA_HOME=str(home), FASTLN_REQUIRE_CUDA="1")
    d = _build.decide(env, "2.13.0+cpu", None, standard=[])
    assert d.error and "2.13.0+cpu is a CPU-only build" in d.message


def test_force_cpu(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    d = _build.decide(env_with(CUDA_HOME=str(home), FASTLN_FORCE_CPU="1"), TORCH_VERSION, "13.0")
    assert not d.cuda and d.message is None and not d.error
    both = env_with(CUDA_HOME=str(home), FASTLN_FORCE_CPU="1", FASTLN_REQUIRE_CUDA="1")
    assert _build.decide(both, TORCH_VERSION, TORCH_CUDA).error


# --- setup.py itself, end to end up to setup() ----------------------------------------------

SETUP_DRIVER = """\
import runpy, sys
import setuptools, torch
if sys.argv[1] != "real":
    # Stands in for a CUDA build of torch, and records what setup.py would build
    # instead of compiling it.
    torch.version.cuda = sys.argv[1]
    def fake_setup(**kwargs):
        for ext in kwargs["ext_modules"]:
            cuda = any(s.endswith(".cu") for s in ext.sources)
            with_cuda = "FASTLN_WITH_CUDA" in dict(ext.define_macros)
            print(f"EXTENSION {ext.name} cuda_sources={cuda} with_cuda={with_cuda}")
            # Where the compile and the link will look: torch puts them into the extension.
            for d in ext.include_dirs:
                print(f"INCLUDE_DIR {d}")
            for d in ext.library_dirs:
                print(f"LIBRARY_DIR {d}")
    setuptools.setup = fake_setup
sys.argv = ["setup.py", "build_ext"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_setup(
    torch_cuda: str, env_extra: dict[str, str]
) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FASTLN_"))}
    env.update(env_extra)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SETUP_DRIVER, torch_cuda],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - start


def test_setup_require_cuda_with_unusable_toolkit_fails_fast(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", cudart=False)
    done, took = run_setup(TORCH_CUDA, {"CUDA_HOME": str(home), "FASTLN_REQUIRE_CUDA": "1"})
    assert done.returncode != 0, done.stdout + done.stderr
    assert took < FAST_FAIL_S
    assert "fastln: error: FASTLN_REQUIRE_CUDA=1" in done.stderr
    assert "no libcudart.so" in done.stderr and "set CUDA_HOME" in done.stderr
    assert "EXTENSION" not in done.stdout


def test_setup_unusable_toolkit_builds_cpu_only_with_one_warning(tmp_path):
    home = fake_toolkit(tmp_path / "cuda", version="12.8")
    done, took = run_setup(TORCH_CUDA, {"CUDA_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("fastln: WARNING: building fastln WITHOUT its CUDA kernels") == 1
    assert "the major versions must match" in done.stderr
    assert "EXTENSION fastln._C cuda_sources=False with_cuda=False" in done.stdout


def test_setup_usable_toolkit_builds_cuda_with_that_toolkit(tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    done, _ = run_setup(TORCH_CUDA, {"CUDA_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr
    assert f"from {home} (found through CUDA_HOME" in done.stdout
    assert "EXTENSION fastln._C cuda_sources=True with_cuda=True" in done.stdout
    assert f"INCLUDE_DIR {home}/include\n" in done.stdout
    assert f"LIBRARY_DIR {home}/lib64\n" in done.stdout


def test_setup_passes_the_toolkit_behind_an_nvcc_wrapper_to_the_build(tmp_path):
    # The machine: torch alone would derive CUDA_HOME=<wrapper dir>/.. and link
    # with -L<wrapper dir>/../lib64, where there is no libcudart.
    home = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper_dir = tmp_path / "local" / "bin"
    write_script(wrapper_dir / "nvcc", f'exec {home}/bin/nvcc "$@"\n')
    done, _ = run_setup(TORCH_CUDA, {"PATH": f"{wrapper_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert "EXTENSION fastln._C cuda_sources=True with_cuda=True" in done.stdout
    assert f"LIBRARY_DIR {home}/lib64\n" in done.stdout
    assert f"INCLUDE_DIR {home}/include\n" in done.stdout
    assert str(tmp_path / "local" / "lib64") not in done.stdout


def test_real_setup_require_cuda_with_bogus_toolkit_fails_fast(tmp_path):
    # No patching: the torch installed here, CPU or CUDA build, and the real setup().
    bogus = str(tmp_path / "no-cuda-here")
    done, took = run_setup("real", {"CUDA_HOME": bogus, "FASTLN_REQUIRE_CUDA": "1"})
    assert done.returncode != 0 and took < FAST_FAIL_S
    assert "fastln: error: FASTLN_REQUIRE_CUDA=1" in done.stderr
    if torch.version.cuda is None:
        assert "is a CPU-only build" in done.stderr
    else:
        assert bogus in done.stderr and "does not exist" in done.stderr


# --- the build record and the import-time torch check ---------------------------------------


def test_build_record_describes_this_build():
    info = fastln.build_info()
    assert info["TORCH_VERSION"] == str(torch.__version__)
    assert info["CUDA"] == fastln.cuda_built()
    assert (info["CUDA_ARCH_LIST"] is not None) == info["CUDA"]
    assert (info["NO_CUDA_REASON"] is None) == info["CUDA"]


def test_describe_says_whether_the_simt_backend_was_built():
    try:
        import fastln._simt  # noqa: F401

        built = True
    except ImportError:
        built = False
    line = next(x for x in _build_check.describe() if x.startswith("SIMT backend: "))
    assert line.startswith("SIMT backend: built" if built else "SIMT backend: not built"), line


def test_check_torch_refuses_another_torch():
    built = fastln.build_info()["TORCH_VERSION"]
    _build_check.check_torch(built)
    with pytest.raises(ImportError) as e:
        _build_check.check_torch("0.0.1+other")
    assert f"compiled against torch {built}" in str(e.value)
    assert "torch 0.0.1+other is installed" in str(e.value)
    assert "pip install --no-build-isolation" in str(e.value)


IMPORT_PROBE = """\
import sys
try:
    import fastln
except ImportError as e:
    print("IMPORT_ERROR", e)
    print("C_LOADED", "fastln._C" in sys.modules)
else:
    print("IMPORTED", fastln.__file__)
"""


def copy_package(dest: Path) -> Path:
    pkg = dest / "fastln"
    shutil.copytree(Path(fastln.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def probe_import(where: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(where))
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_with_other_torch_is_a_clear_import_error(tmp_path):
    pkg = copy_package(tmp_path)
    # The copy imports as is, from the copy: the probe tests what it means to.
    assert f"IMPORTED {pkg / '__init__.py'}" in probe_import(tmp_path)
    record = pkg / "_build_info.py"
    built = fastln.build_info()["TORCH_VERSION"]
    text = record.read_text()
    assert f"TORCH_VERSION = {built!r}" in text
    record.write_text(text.replace(f"TORCH_VERSION = {built!r}", "TORCH_VERSION = '2.0.0+old'"))
    out = probe_import(tmp_path)
    assert "IMPORT_ERROR fastln was compiled against torch 2.0.0+old" in out
    assert f"but torch {torch.__version__} is installed" in out
    assert "python -m pip install --no-build-isolation" in out
    assert "C_LOADED False" in out  # refused before fastln._C was loaded


def test_import_without_build_record_says_how_to_build(tmp_path):
    pkg = copy_package(tmp_path)
    (pkg / "_build_info.py").unlink()
    out = probe_import(tmp_path)
    assert "IMPORT_ERROR fastln is not built" in out and "C_LOADED False" in out


def test_python_m_fastln_says_what_was_built():
    done = subprocess.run(
        [sys.executable, "-m", "fastln"], capture_output=True, text=True, timeout=300, check=True
    )
    out = done.stdout
    assert f"built against torch {fastln.build_info()['TORCH_VERSION']}" in out
    assert f"CPU kernels: {fastln.cpu_isa()}" in out
    assert "CPU streaming stores: outputs of " in out or "CPU streaming stores: off" in out
    assert ("CUDA kernels: yes, for sm_" in out) == fastln.cuda_built()
    assert ("CUDA kernels: no (" in out) != fastln.cuda_built()


def test_arch_names():
    assert _build_check.arch_names("8.0;9.0+PTX") == "sm_80, sm_90, PTX compute_90"
    assert _build_check.arch_names("8.6 9.0") == "sm_86, sm_90"


GPU_WARNING_PROBE = """\
import sys, warnings
import torch
torch.cuda.is_available = lambda: sys.argv[1] == "gpu"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastln
print("WARNINGS", [str(w.message) for w in caught if "fastln" in str(w.message)])
"""


@pytest.mark.parametrize("gpu", [True, False])
def test_cpu_only_build_under_cuda_torch_warns_at_import_when_a_gpu_is_there(tmp_path, gpu):
    # pip hides the build's warning: a GPU user who got a CPU-only build hears it here.
    pkg = copy_package(tmp_path)
    record = pkg / "_build_info.py"
    text = record.read_text()
    for key in ("TORCH_CUDA", "CUDA", "NO_CUDA_REASON"):
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} = "))
    record.write_text(text + "\nTORCH_CUDA = '13.0'\nCUDA = False\nNO_CUDA_REASON = 'no nvcc'\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", GPU_WARNING_PROBE, "gpu" if gpu else "none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    if gpu:
        assert "built without its CUDA kernels" in done.stdout and "no nvcc" in done.stdout
    else:
        assert "WARNINGS []" in done.stdout
