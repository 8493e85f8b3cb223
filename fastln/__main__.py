"""python -m fastln: what this build of fastln is (CUDA or not, GPU architectures, CPU
kernels, the torch it was compiled against)."""

from __future__ import annotations

from ._build_check import describe


def main() -> int:
    for line in describe():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
