"""Runs tests/multidevice in a subprocess with 8 CPU devices.

XLA's device count is fixed when jax starts, so the sharded tests cannot run
in this session (one device): they get their own, with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

HERE = Path(__file__).parent
# The golden digests under sharding (the rest of test_reproducibility.py does
# not depend on the device count and runs in the main session).
GOLDEN = [f"{HERE / 'test_reproducibility.py'}::test_golden_digest_under_sharding"]


@pytest.mark.skipif(jax.device_count() >= 8, reason="this session collects tests/multidevice itself")
def test_multidevice_suite():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(HERE / "multidevice"),
         *GOLDEN],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=1800,
    )
    summary = result.stdout.strip().splitlines()[-1:] if result.stdout.strip() else []
    assert result.returncode == 0, f"multidevice session failed:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    assert summary and " passed" in summary[0] and "skipped" not in summary[0], summary
