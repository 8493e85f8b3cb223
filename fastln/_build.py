"""Build-time decisions: which CUDA toolkit to use, and whether the CUDA kernels can be built.

setup.py loads this file by its path, before ``torch.utils.cpp_extension`` is imported
(that module fixes its ``CUDA_HOME`` once, at import, from the environment or from the
directory above the ``nvcc`` on PATH, which is wrong when that nvcc is a wrapper script
or a symlink). It uses the standard library only, so that loading it needs neither torch
nor ``fastln._C``; the tests import it as ``fastln._build`` and feed it fake toolkits.

Every check is one that a compile or link would otherwise fail on minutes into the
build: nvcc must run, ``include/cuda_runtime.h`` and ``libcudart`` must be where
``torch.utils.cpp_extension`` passes ``-I`` and ``-L``, and nvcc's major version must be
torch's (``torch.utils.cpp_extension`` refuses a major mismatch, after configuring).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Where a toolkit is looked for when neither CUDA_HOME/CUDA_PATH nor an nvcc on PATH
# names one; versioned /usr/local/cuda-X.Y directories are added, newest first.
STANDARD_LOCATIONS: tuple[str, ...] = ("/usr/local/cuda", "/opt/cuda")

# Seconds an nvcc query may take: a hung wrapper must not hang the build.
NVCC_TIMEOUT_S = 60


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """Whether the variable is set to 1 (the convention of all FASTLN_* switches)."""
    return env.get(name, "0").strip() == "1"


@dataclass(frozen=True)
class Candidate:
    """A directory that may hold a CUDA toolkit, and how it was found."""

    home: str
    source: str


@dataclass(frozen=True)
class Toolkit:
    """A toolkit that passed every check: the build will use exactly this one."""

    home: str
    source: str
    nvcc: str
    version: str  # nvcc's release, e.g. "13.0"
    lib_dir: str


@dataclass(frozen=True)
class Decision:
    """What setup.py builds. ``message`` is the warning (CPU fallback) or, when
    ``error`` is set, the error to stop with; ``None`` when there is nothing to say."""

    cuda: bool
    toolkit: Toolkit | None
    message: str | None
    error: bool
    reason: str | None  # why there are no CUDA kernels (None for a CUDA build)


def run_text(cmd: Sequence[str]) -> tuple[int, str]:
    """Exit status and stdout+stderr of cmd; (-1, why) when it cannot be run at all."""
    try:
        done = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NVCC_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return -1, str(e)
    return done.returncode, done.stdout + done.stderr


def nvcc_toolkit_root(nvcc: str) -> str:
    """The root of the toolkit that an nvcc executable really belongs to.

    The directory above nvcc is not enough: nvcc on PATH may be a symlink or a wrapper
    script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) in a directory that holds no
    toolkit. nvcc's dry run prints the variables it resolved, ``TOP`` being the root it
    takes its headers and libraries from, so nvcc itself says where it lives.
    """
    rc, out = run_text([nvcc, "-v", "--dryrun", "-x", "cu", os.devnull])
    match = re.search(r"^#\$ TOP=(.+?)\s*$", out, re.MULTILINE)
    if rc == 0 and match:
        return os.path.realpath(match.group(1).strip().strip('"'))
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def standard_locations() -> list[str]:
    versioned = glob.glob("/usr/local/cuda-*")

    def version_key(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", os.path.basename(path)))

    return [
        STANDARD_LOCATIONS[0],
        *sorted(versioned, key=version_key, reverse=True),
        *STANDARD_LOCATIONS[1:],
    ]


def candidates(env: Mapping[str, str], standard: Sequence[str] | None = None) -> list[Candidate]:
    """The toolkits to try, in order. A set CUDA_HOME or CUDA_PATH is the only one: the
    user named it, and quietly building against another toolkit would hide the mistake."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            return [Candidate(env[var], f"{var}={env[var]}")]
    found: list[Candidate] = []
    nvcc = shutil.which("nvcc", path=env.get("PATH", ""))
    if nvcc is not None:
        found.append(Candidate(nvcc_toolkit_root(nvcc), f"the nvcc on PATH ({nvcc})"))
    # The standard locations are guesses: one that does not exist is no problem to report.
    for loc in standard_locations() if standard is None else standard:
        if os.path.isdir(loc):
            found.append(Candidate(loc, f"the standard location {loc}"))
    unique: list[Candidate] = []
    seen: set[str] = set()
    for c in found:
        real = os.path.realpath(c.home)
        if real not in seen:
            seen.add(real)
            unique.append(c)
    return unique


def cuda_lib_dir(home: str) -> str:
    """The library directory torch.utils.cpp_extension links from (``-L``): lib64, or lib
    when only that exists (the same rule as its ``library_paths``)."""
    lib64, lib = os.path.join(home, "lib64"), os.path.join(home, "lib")
    return lib if not os.path.exists(lib64) and os.path.exists(lib) else lib64


def nvcc_release(output: str) -> str | None:
    match = re.search(r"release (\d+)\.(\d+)", output)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def check_toolkit(candidate: Candidate, torch_cuda: str) -> Toolkit | str:
    """The Toolkit if a build against candidate can succeed, else why it cannot."""
    home = candidate.home
    if not os.path.isdir(home):
        return f"{home} ({candidate.source}) does not exist"
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        return f"{home} ({candidate.source}) has no executable bin/nvcc"
    rc, out = run_text([nvcc, "--version"])
    version = nvcc_release(out) if rc == 0 else None
    if version is None:
        tail = " ".join(out.split()[-20:])
        return f"{nvcc} --version failed (exit status {rc}): {tail}"
    header = os.path.join(home, "include", "cuda_runtime.h")
    if not os.path.isfile(header):
        return f"{home} ({candidate.source}) has nvcc {version} but no {header}"
    lib_dir = cuda_lib_dir(home)
    if not any(os.path.exists(os.path.join(lib_dir, n)) for n in ("libcudart.so", "libcudart.a")):
        return (
            f"{home} ({candidate.source}) has nvcc {version} but no libcudart.so in {lib_dir}, "
            "where the link looks for -lcudart"
        )
    if version.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            f"{home} ({candidate.source}) has nvcc {version}, but torch was built with CUDA "
            f"{torch_cuda}: the major versions must match"
        )
    return Toolkit(home=home, source=candidate.source, nvcc=nvcc, version=version, lib_dir=lib_dir)


def find_toolkit(
    env: Mapping[str, str], torch_cuda: str, standard: Sequence[str] | None = None
) -> Toolkit | str:
    """The first usable toolkit, or why none is (every candidate's problem)."""
    problems: list[str] = []
    for candidate in candidates(env, standard):
        result = check_toolkit(candidate, torch_cuda)
        if isinstance(result, Toolkit):
            return result
        problems.append(result)
    if not problems:
        return (
            "no CUDA toolkit found: CUDA_HOME and CUDA_PATH are unset, no nvcc is on PATH, "
            f"and none of {', '.join(standard_locations() if standard is None else standard)} "
            "exists"
        )
    return "; ".join(problems)


def decide(
    env: Mapping[str, str],
    torch_version: str,
    torch_cuda: str | None,
    standard: Sequence[str] | None = None,
) -> Decision:
    """Whether to build the CUDA kernels, decided before anything is compiled.

    torch_cuda is ``torch.version.cuda`` (None for a CPU build of torch); it is a
    parameter so that the CUDA-torch paths can be tested with a CPU torch.
    """
    require = env_flag(env, "FASTLN_REQUIRE_CUDA")
    if env_flag(env, "FASTLN_FORCE_CPU"):
        if require:
            msg = "fastln: error: FASTLN_FORCE_CPU=1 and FASTLN_REQUIRE_CUDA=1 contradict"
            return Decision(False, None, msg, True, "FASTLN_FORCE_CPU=1")
        return Decision(False, None, None, False, "FASTLN_FORCE_CPU=1")
    if torch_cuda is None:
        reason = f"the installed torch {torch_version} is a CPU-only build"
        if require:
            msg = (
                f"fastln: error: FASTLN_REQUIRE_CUDA=1, but {reason}; install a CUDA build "
                "of torch first (python -m pip install torch)"
            )
            return Decision(False, None, msg, True, reason)
        return Decision(False, None, None, False, reason)
    found = find_toolkit(env, torch_cuda, standard)
    if isinstance(found, Toolkit):
        return Decision(True, found, None, False, None)
    major = torch_cuda.split(".")[0]
    why = (
        f"the installed torch {torch_version} is a CUDA {torch_cuda} build, but no usable "
        f"CUDA toolkit was found: {found}. To build the CUDA kernels, set CUDA_HOME to a "
        f"CUDA {major}.x toolkit (the directory with bin/nvcc, include/cuda_runtime.h and "
        "lib64/libcudart.so) and reinstall fastln"
    )
    if require:
        msg = f"fastln: error: FASTLN_REQUIRE_CUDA=1 and the CUDA kernels cannot be built: {why}."
        return Decision(False, None, msg, True, why)
    msg = (
        f"fastln: WARNING: building fastln WITHOUT its CUDA kernels (CPU only): {why}. "
        "FASTLN_REQUIRE_CUDA=1 makes this an error; FASTLN_FORCE_CPU=1 builds CPU-only "
        "without this warning."
    )
    return Decision(False, None, msg, False, why)


def render_build_info(info: Mapping[str, object]) -> str:
    """The text of fastln/_build_info.py, the record the import-time checks read."""
    lines = [
        '"""What this build of fastln was compiled with; written by setup.py, not tracked."""',
        "",
    ]
    lines += [f"{key} = {value!r}" for key, value in info.items()]
    return "\n".join(lines) + "\n"
