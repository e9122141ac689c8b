"""Runs tests/multidevice in a subprocess with 8 CPU devices.

XLA's device count is fixed when jax starts, so the sharded tests cannot run
in this session (one device): they get their own, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.

That session is started as soon as this one has collected its tests
(``pytest_collection_finish`` in tests/conftest.py calls :func:`start`), so
it runs while this session runs the others (most of either's time is XLA
compiling on one core); the test waits for it and checks its result. Run
alone, the test starts it itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

HERE = Path(__file__).parent
# The golden digests under sharding (the rest of test_reproducibility.py does
# not depend on the device count and runs in the main session).
GOLDEN = [f"{HERE / 'test_reproducibility.py'}::test_golden_digest_under_sharding"]
TIMEOUT_S = 1800

_running: dict[str, object] = {}  # "proc", "out", "err": the started session and its output files


def start() -> None:
    """Start the 8-device session in the background (once); its output goes to temporary files."""
    if "proc" in _running:
        return
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    _running["proc"] = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(HERE / "multidevice"), *GOLDEN],
        cwd=HERE.parent, env=env, stdout=out, stderr=err, text=True,
    )
    _running["out"], _running["err"] = out, err


def stop() -> None:
    """End the session if it is still running (this one ended first: interrupted, or the test was not reached)."""
    proc = _running.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        proc.kill()
        proc.wait()


def _wait() -> tuple[int, str, str]:
    start()
    proc = _running["proc"]
    assert isinstance(proc, subprocess.Popen)
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop()
        raise
    texts = []
    for name in ("out", "err"):
        f = _running[name]
        f.seek(0)  # type: ignore[attr-defined]
        texts.append(f.read())  # type: ignore[attr-defined]
    return proc.returncode, texts[0], texts[1]


@pytest.mark.skipif(jax.device_count() >= 8, reason="this session collects tests/multidevice itself")
def test_multidevice_suite():
    returncode, stdout, stderr = _wait()
    summary = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    assert returncode == 0, f"multidevice session failed:\n{stdout[-20000:]}\n{stderr[-5000:]}"
    assert summary and " passed" in summary[0] and "skipped" not in summary[0], summary
