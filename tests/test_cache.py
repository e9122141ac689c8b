"""The persistent compilation cache jaxprune turns on (jaxprune/_cache.py).

Each test starts a fresh Python process: the cache is set up once, on import.
Every process gets XDG_CACHE_HOME and the cache variables from the test, so
nothing is written to the real ~/.cache.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_CACHE_VARS = (
    "JAXPRUNE_CACHE_DIR",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_ENABLE_COMPILATION_CACHE",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
)

# Prunes a 300x300 array with l1_unstructured and ln_structured and prints the
# counts kept, jax's cache settings and how many compilations the cache served.
_PRUNE = """
import json, jax, numpy as np
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
import jaxprune as jp
from jaxprune._selection import forced
w = np.arange(90000, dtype=np.float32).reshape(300, 300) - 45000.5
with forced(host=False):  # the compiled kernels (eager calls on host arrays run in NumPy, compiling nothing)
    l1, ln = jp.l1_unstructured(w, 0.3), jp.ln_structured(w, 0.3, 2, 0)
print(json.dumps({
    "l1_kept": int(l1.sum()), "l1_first": bool(l1[0, 0]), "l1_middle": bool(l1[150, 0]),
    "ln_kept_rows": int(ln.all(axis=1).sum()), "ln_first": bool(ln[0, 0]), "ln_middle": bool(ln[150, 0]),
    "dir": jax.config.jax_compilation_cache_dir,
    "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
    "hits": len(hits),
}))
"""

# 30% of 90000 values are pruned: the 27000 of smallest magnitude, around 0;
# Ln prunes the 90 rows of least norm, the middle ones.
_EXPECTED = {"l1_kept": 63000, "l1_first": True, "l1_middle": False,
             "ln_kept_rows": 210, "ln_first": True, "ln_middle": False}


def _run(code: str, tmp_path: Path, **env_vars: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env.update(env_vars)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name, value in _EXPECTED.items():
        assert result[name] == value, (name, result)
    return result, done.stderr


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith("-cache")) if folder.is_dir() else []


def test_default_folder_is_in_xdg_cache_home_and_a_second_process_reads_it(tmp_path):
    folder = tmp_path / "xdg" / "jaxprune" / "xla"
    first, stderr = _run(_PRUNE, tmp_path)
    assert first["dir"] == str(folder) and first["min_time"] == 0.0 and first["hits"] == 0
    entries = _entries(folder)
    # The kernels of both methods are written, although they compile in less than jax's default 1 s.
    assert any(e.startswith("jit__keep_lowest_entries-") for e in entries), entries
    assert any(e.startswith("jit__keep_lowest_slices-") for e in entries), entries
    assert "Warning" not in stderr, stderr
    second, _ = _run(_PRUNE, tmp_path)
    assert second["hits"] >= 2 and _entries(folder) == entries  # served from the folder, nothing new


def test_jaxprune_cache_dir_moves_it(tmp_path):
    folder = tmp_path / "elsewhere"
    result, _ = _run(_PRUNE, tmp_path, JAXPRUNE_CACHE_DIR=str(folder))
    assert result["dir"] == str(folder)
    assert _entries(folder)
    assert not (tmp_path / "xdg").exists()


def test_empty_jaxprune_cache_dir_turns_it_off(tmp_path):
    result, _ = _run(_PRUNE, tmp_path, JAXPRUNE_CACHE_DIR="")
    assert result["dir"] is None and result["min_time"] == 1.0  # jax's settings untouched
    assert not (tmp_path / "xdg").exists()


@pytest.mark.parametrize("how", ["env", "config"])
def test_a_users_own_jax_cache_dir_is_left_alone(tmp_path, how):
    mine = str(tmp_path / "mine")
    if how == "env":
        result, _ = _run(_PRUNE, tmp_path, JAX_COMPILATION_CACHE_DIR=mine)
    else:
        code = f"import jax; jax.config.update('jax_compilation_cache_dir', {mine!r})\n" + _PRUNE
        result, _ = _run(code, tmp_path)
    assert result["dir"] == mine and result["min_time"] == 1.0  # jax's threshold too
    assert not (tmp_path / "xdg").exists()


def test_jax_cache_turned_off_by_the_user_stays_off(tmp_path):
    result, _ = _run(_PRUNE, tmp_path, JAX_ENABLE_COMPILATION_CACHE="false")
    assert result["dir"] is None and result["min_time"] == 1.0
    assert not (tmp_path / "xdg").exists()


def test_a_users_jax_threshold_is_left_alone(tmp_path):
    result, _ = _run(_PRUNE, tmp_path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="2.5")
    assert result["dir"] == str(tmp_path / "xdg" / "jaxprune" / "xla") and result["min_time"] == 2.5


def test_an_earlier_compile_does_not_stop_the_cache(tmp_path):
    # jax reads its cache folder on the first compile: one before jaxprune's import must not lock it out.
    code = "import jax, jax.numpy as jnp; jax.jit(lambda x: x * 2)(jnp.ones(3)).block_until_ready()\n" + _PRUNE
    _run(code, tmp_path)
    assert any(e.startswith("jit__keep_lowest_entries-") for e in _entries(tmp_path / "xdg" / "jaxprune" / "xla"))


@pytest.mark.parametrize("how", ["JAXPRUNE_CACHE_DIR", "HOME"])
def test_a_folder_that_cannot_be_created_gives_one_warning_and_correct_masks(tmp_path, how):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    if how == "HOME":  # an unusable home, and no XDG_CACHE_HOME: the default folder is under it
        result, stderr = _run(_PRUNE, tmp_path, HOME=str(blocker), XDG_CACHE_HOME="")
    else:
        result, stderr = _run(_PRUNE, tmp_path, JAXPRUNE_CACHE_DIR=str(blocker / "xla"))
    assert result["dir"] is None
    assert stderr.count("Warning") == 1, stderr
    assert "compilation cache turned off, cannot write to" in stderr and "JAXPRUNE_CACHE_DIR" in stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_gives_one_warning_and_correct_masks(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result, stderr = _run(_PRUNE, tmp_path, JAXPRUNE_CACHE_DIR=str(folder))
    finally:
        folder.chmod(0o755)
    assert result["dir"] is None and stderr.count("Warning") == 1, stderr
    assert not _entries(folder)


# After the first compile opened the cache, the folder is replaced by a file, so
# that every later write fails (as on a full disk): jax warns once per entry.
_WRITES_FAIL = """
import os, shutil, jax, jax.numpy as jnp, numpy as np
import jaxprune as jp
from jaxprune._selection import forced
forced(host=False).__enter__()  # the compiled kernels, whose cache entries these writes are
folder = jax.config.jax_compilation_cache_dir
jp.l1_unstructured(np.ones((7, 7), np.float32), 0.5).block_until_ready()
shutil.rmtree(folder)
open(folder, "w").close()
for n in (11, 13, 17, 19, 23):
    w = np.arange(n * 29, dtype=np.float32).reshape(n, 29)
    assert int(jp.l1_unstructured(w, 0.5).sum()) == n * 29 - round(0.5 * n * 29)  # torch counts round(amount * n)
    assert int(jp.ln_structured(w, 0.5, 2, 0).all(axis=1).sum()) == n - round(0.5 * n)
print("{}")
"""


def test_failing_writes_raise_nothing_and_give_at_most_one_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = subprocess.run([sys.executable, "-c", _WRITES_FAIL], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("persistent compilation cache") <= 1, done.stderr
