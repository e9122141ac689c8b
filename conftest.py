"""Collect ``interop/``'s doctests as the installed ``jaxprune.interop``.

The bridge lives at the repository root but is installed as a subpackage of
jaxprune (``pyproject.toml``'s ``package-dir``). pytest would import
``interop/_modules.py`` as a second, top-level ``interop._modules``; aliasing
the names first makes it collect the very modules users import.
"""

import importlib
import sys

for _name in ("", "._layouts", "._modules", "._tensors"):
    sys.modules["interop" + _name] = importlib.import_module("jaxprune.interop" + _name)
