"""SparseGPT and Wanda on a kernel sharded on its output axis (8 devices): the
masks and weights of one device, and no collective bigger than a histogram.

Output rows are independent in both methods; only SparseGPT's per-block slab
selection counts across rows (histograms). Runs in its own session with 8 CPU
devices (see tests/test_multidevice.py); one small layer, to stay fast.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune as jp
from jaxprune import _selection

N_OUT, N_IN = 64, 256
HISTOGRAM = 1 << 16  # bins of one radix pass: the largest collective allowed besides the Hessian


def _collectives(hlo: str) -> list[tuple[str, int]]:
    ops = "all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter"
    pattern = r"= (\w+)\[([\d,]*)\][^=]*? (" + ops + r")(?:-start)?\("
    return [(op, int(np.prod([int(d) for d in dims.split(",") if d]))) for _, dims, op in re.findall(pattern, hlo)]


@pytest.mark.parametrize(
    ("in_axis", "spec", "amount", "nm"),
    [(1, P("a", None), 0.5, None), (0, P(None, "a"), None, (2, 4))],
    ids=["torch-layout-unstructured", "flax-layout-2:4"],
)
def test_sparsegpt_sharded_on_outputs_equals_one_device(in_axis, spec, amount, nm):
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N_OUT, N_IN)).astype(np.float32)
    kernel = w if in_axis == 1 else w.T
    stats = jp.input_stats(rng.standard_normal((4 * N_IN, N_IN)).astype(np.float32))
    # Blocks of 128: slabs of 8192 entries, above the sort path's size (which gathers a slab).
    run = jax.jit(lambda k, s: jp.sparsegpt(k, s, amount, in_axis=in_axis, nm=nm, block_size=128))
    with _selection.forced(keep_shapes=False):  # one device's path, unsharded
        ref_new, ref_keep = run(jnp.asarray(kernel), stats)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("a",)), spec)
    sharded = jax.device_put(kernel, sharding)
    compiled = run.lower(sharded, stats).compile()
    new, keep = compiled(sharded, stats)
    np.testing.assert_array_equal(np.asarray(keep), np.asarray(ref_keep))
    np.testing.assert_allclose(np.asarray(new), np.asarray(ref_new), rtol=1e-6, atol=1e-6)
    collectives = _collectives(compiled.as_text())
    big = [(op, n) for op, n in collectives if n > HISTOGRAM]
    assert not big, f"collectives larger than a histogram: {big}"
    if nm is None:  # the slab selection's histograms are summed across the shards
        assert ("all-reduce", HISTOGRAM) in collectives, collectives


def test_wanda_sharded_on_outputs_equals_one_device():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((N_IN, N_OUT)).astype(np.float32)  # Flax layout
    stats = jp.input_stats(rng.standard_normal((64, N_IN)).astype(np.float32), hessian=False)
    run = jax.jit(lambda k, s: jp.wanda_mask(k, s, 0.5))
    with _selection.forced(keep_shapes=False):
        expected = np.asarray(run(jnp.asarray(kernel), stats))
    sharded = jax.device_put(kernel, NamedSharding(Mesh(np.array(jax.devices()), ("a",)), P(None, "a")))
    compiled = run.lower(sharded, stats).compile()
    np.testing.assert_array_equal(np.asarray(compiled(sharded, stats)), expected)
    assert not [c for c in _collectives(compiled.as_text()) if c[1] > N_OUT]  # per-row counts at most
