"""Build hook: the data plane is compiled with mypyc; everything else stays interpreted.

The source stays plain, type-checked Python (the same files run interpreted); mypyc turns
the per-request modules into C extensions, which takes about a third off croupier's own CPU
time per request (bench/hotpath.py). Set CROUPIER_PURE=1 to install without compiling.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from setuptools import Extension, setup

# The per-request path, and the state and policies it reads (DESIGN.md, "Architecture"): every
# module of these packages, found by pattern, so that a new policy or data-plane file is
# compiled without being listed (the Makefile rebuilds when any of them changes).
DATA_PLANE_PACKAGES = ("proxy", "model", "balancing")
DATA_PLANE = sorted(str(p) for package in DATA_PLANE_PACKAGES
                    for p in Path("src/croupier", package).glob("*.py"))


def ext_modules() -> list[Extension]:
    if os.environ.get("CROUPIER_PURE") == "1":
        return []
    from mypyc.build import mypycify

    # pip builds in an isolated environment without croupier's dependencies, so the
    # project's mypy settings (pydantic's plugin) cannot load there; `make lint` runs the
    # strict check. Here imports of what is not installed are typed as Any.
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as f:
        f.write("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    try:
        return mypycify(["--config-file", f.name, *DATA_PLANE], opt_level="3",
                        group_name="croupier")
    finally:
        os.unlink(f.name)


setup(ext_modules=ext_modules())
