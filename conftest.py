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

# The suite's compiled kernels go to a folder of its own, never the user's
# ~/.cache (jaxprune/_cache.py); the command-line tests' processes inherit it.
os.environ["JAXPRUNE_CACHE_DIR"] = _CACHE_DIR = tempfile.mkdtemp(prefix="jaxprune-test-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

for _name in ("", "._layouts", "._modules", "._semi_structured", "._tensors"):
    sys.modules["interop" + _name] = importlib.import_module("jaxprune.interop" + _name)
