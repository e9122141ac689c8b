"""JAX's persistent compilation cache, on by default in a user cache folder.

jaxprune compiles its kernels once per tensor shape and dtype, and a process
that prunes a model once (the command line above all) would pay those
compilations again on every run. JAX can keep compiled executables on disk but
leaves that off, so importing jaxprune turns it on, in the folder
:func:`cache_folder` names:

>>> cache_folder({"JAXPRUNE_CACHE_DIR": "/data/xla"}).as_posix()
'/data/xla'
>>> cache_folder({"XDG_CACHE_HOME": "/tmp/cache"}).as_posix()
'/tmp/cache/jaxprune/xla'
>>> print(cache_folder({"JAXPRUNE_CACHE_DIR": ""}))  # turned off
None

A user's own choice wins: when jax's cache folder is already configured
(``jax_compilation_cache_dir``, the ``JAX_COMPILATION_CACHE_DIR`` variable) or
jax's cache is turned off (``jax_enable_compilation_cache``), nothing is
changed. A folder that cannot be written gives one warning and no cache.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

ENV_DIR = "JAXPRUNE_CACHE_DIR"

# jax writes only executables that took longer than this to compile (its
# default is 1 s). Most of jaxprune's kernels compile in less than 1 s, and the
# command line also compiles dozens of small eager operations: with jax's
# default they were compiled again in every process. Keeping them all made a
# second `jaxprune prune` run faster than a 0.1 s threshold did, for a folder
# of a few hundred kilobytes.
MIN_COMPILE_TIME_S = 0.0

# jax warns once per cache entry it cannot read or write (a full disk, a damaged
# file); in the folder jaxprune chose, a failed write or read only means a
# compilation, so those warnings are dropped rather than repeated per kernel.
_JAX_ENTRY_WARNINGS = r"Error (reading|writing) persistent compilation cache entry"


def cache_folder(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder jaxprune keeps compiled kernels in, or ``None`` when turned off.

    ``JAXPRUNE_CACHE_DIR`` names it (an empty value turns the cache off);
    otherwise ``$XDG_CACHE_HOME/jaxprune/xla``, ``~/Library/Caches/jaxprune/xla``
    on macOS, ``%LOCALAPPDATA%/jaxprune/xla`` on Windows, ``~/.cache/jaxprune/xla``.
    """
    if ENV_DIR in environ:
        value = environ[ENV_DIR]
        return Path(value).expanduser().absolute() if value else None
    xdg = environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec ignores a relative path
        return Path(xdg) / "jaxprune" / "xla"
    if sys.platform == "win32" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"]) / "jaxprune" / "xla"
    base = Path("~/Library/Caches") if sys.platform == "darwin" else Path("~/.cache")
    return base.expanduser() / "jaxprune" / "xla"


def _jax_option(name: str) -> Any:
    return getattr(jax.config, name)  # jax.config.<option>, which the stubs lack


def _user_configured() -> bool:
    """Whether the user already decided about jax's cache (then jaxprune leaves it alone)."""
    return (
        "JAX_COMPILATION_CACHE_DIR" in os.environ
        or _jax_option("jax_compilation_cache_dir") is not None
        or not _jax_option("jax_enable_compilation_cache")
    )


def _threshold_is_default() -> bool:
    return (
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ
        and _jax_option("jax_persistent_cache_min_compile_time_secs") == 1.0
    )


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and write a file in it: raises ``OSError`` where jax could not."""
    folder.mkdir(parents=True, exist_ok=True)
    # A few bytes, not an empty file: a full disk still creates empty files.
    with tempfile.TemporaryFile(dir=folder) as probe:
        probe.write(b"jaxprune")
        probe.flush()


def enable() -> Path | None:
    """Turn on jax's persistent cache in :func:`cache_folder`, unless the user chose.

    Called once, on import. Returns the folder set, or ``None``. Affects the whole
    process (jax's cache is process-wide): every jit is cached there, and jax's
    ``jax_persistent_cache_min_compile_time_secs`` is lowered to
    ``MIN_COMPILE_TIME_S`` unless the user set it.
    """
    if _user_configured():
        return None
    try:
        folder = cache_folder()
    except RuntimeError:  # no home folder to expand "~" with
        return None
    if folder is None:
        return None
    try:
        _check_writable(folder)
    except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
        warnings.warn(
            f"jaxprune: compilation cache turned off, cannot write to {str(folder)!r} "
            f"({type(e).__name__}: {e}); set {ENV_DIR} to a writable folder, or to '' to turn it off",
            stacklevel=2,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Some jax versions read the folder once, on the first compile; if something
    # compiled before jaxprune was imported, make jax read it again.
    jax_cache.reset_cache()
    if _threshold_is_default():
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    warnings.filterwarnings("ignore", message=_JAX_ENTRY_WARNINGS)
    return folder
