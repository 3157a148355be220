"""Build hook: the data plane is compiled with mypyc; everything else stays interpreted.

The source stays plain, type-checked Python (the same files run interpreted); mypyc turns
the per-request modules into C extensions, which takes about a third off croupier's own CPU
time per request (bench/hotpath.py). Set CROUPIER_PURE=1 to install without compiling.
"""

from __future__ import annotations

import os
import tempfile

from setuptools import Extension, setup

# The per-request path, and the state and policies it reads (DESIGN.md, "Architecture").
DATA_PLANE = [
    "src/croupier/proxy/client.py",
    "src/croupier/proxy/upstream.py",
    "src/croupier/proxy/http.py",
    "src/croupier/proxy/listener.py",
    "src/croupier/model/state.py",
    "src/croupier/balancing/__init__.py",
    "src/croupier/balancing/base.py",
    "src/croupier/balancing/round_robin.py",
    "src/croupier/balancing/least_conn.py",
    "src/croupier/balancing/weighted_random.py",
    "src/croupier/balancing/two_choices.py",
    "src/croupier/balancing/consistent_hash.py",
    "src/croupier/balancing/sticky.py",
]


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
