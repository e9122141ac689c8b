"""With JAX_ENABLE_X64: 64-bit scores rank at full precision, 64-bit amounts count exactly.

Runs in a subprocess, since x64 must be set before jax is imported.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import jaxprune as jp
    from jaxprune import _selection

    assert jax.config.jax_enable_x64
    # Values equal in float32, distinct in float64: float64 keys must tell them apart.
    base = 1.0 + np.arange(6000)[::-1] * 1e-12
    x = jnp.asarray(base, jnp.float64)
    assert len(set(np.float32(base).tolist())) < 10
    for size_limit in (10**9, 0):  # sort path, radix path (4 passes of 16 bits)
        with _selection.forced(sort_max=size_limit):
            mask = jp.l1_unstructured(x, 1000)
        assert (np.flatnonzero(~np.asarray(mask)) == np.arange(5000, 6000)).all(), size_limit
    ints = jnp.asarray([2**40, -(2**41), 5, 2**40 + 1], jnp.int64)
    assert np.asarray(jp.l1_unstructured(ints, 2)).tolist() == [False, True, False, True]
    # A traced float64 amount follows Python's rule exactly.
    f = jax.jit(lambda a: jp.l1_unstructured(jnp.arange(1.0, 11.0), a))
    for a in (0.05, 0.15, 0.25, 0.35, 0.45, 0.1, 0.3):
        assert int((~f(jnp.float64(a))).sum()) == round(a * 10), a
    print("x64 ok")
    """
)


def test_float64_and_int64_under_x64():
    env = dict(os.environ, JAX_ENABLE_X64="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "x64 ok" in result.stdout
