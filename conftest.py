"""Collect ``interop/``'s doctests as the installed ``jaxprune.interop``.

The bridge lives at the repository root but is installed as a subpackage of
jaxprune (``pyproject.toml``'s ``package-dir``). pytest would import
``interop/_modules.py`` as a second, top-level ``interop._modules``; aliasing
the names first makes it collect the very modules users import.
"""

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The suite's compiled kernels go to a folder of its own, never the user's
# ~/.cache (jaxprune/_cache.py); the command-line tests' processes inherit it.
os.environ["JAXPRUNE_CACHE_DIR"] = _CACHE_DIR = tempfile.mkdtemp(prefix="jaxprune-test-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

# Every module of the folder (a module left out would be imported twice, and a
# test that patches one copy would not reach the code that runs).
_MODULES = sorted(p.stem for p in (Path(__file__).parent / "interop").glob("_*.py") if p.stem != "__init__")
for _name in ("", *("." + m for m in _MODULES)):
    sys.modules["interop" + _name] = importlib.import_module("jaxprune.interop" + _name)
