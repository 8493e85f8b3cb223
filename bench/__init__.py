"""Benchmark harness of fastln; run it with ``python -m bench --help``."""

from __future__ import annotations

import sys
from pathlib import Path


def _import_fastln() -> None:
    """Imports the fastln that has a built extension.

    ``python -m bench`` puts the repository root first on sys.path, so its
    ``fastln/`` source folder shadows a fastln installed with ``pip install .``,
    which builds the extension into site-packages and leaves the source folder
    without ``_C``. In that case import the installed one; an in-place build
    (``setup.py build_ext --inplace``) or an editable install is used as is.
    """
    root = Path(__file__).resolve().parent.parent
    if "fastln" in sys.modules or any((root / "fastln").glob("_C*")):
        return
    saved = list(sys.path)
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != root]
    try:
        import fastln  # noqa: F401
    except ImportError:
        pass  # no installed copy either: the import in bench.impls reports it
    finally:
        sys.path = saved


_import_fastln()
