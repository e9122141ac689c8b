"""Progress reports of long global selections (``progress=``)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {"a": jnp.asarray(rng.standard_normal((64, 96)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal((3000,)), jnp.float32)}


@pytest.mark.parametrize("method", ["l1", "random"])
def test_callable_hears_every_pass_then_the_masks(method):
    calls = []
    tree = _tree()
    masks = jp.global_unstructured(tree, 0.4, method=method, key=jax.random.key(0),
                                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # two 16-bit radix passes over 32-bit keys, then the masks
    plain = jp.global_unstructured(tree, 0.4, method=method, key=jax.random.key(0))
    for name in tree:
        np.testing.assert_array_equal(masks[name], plain[name])


def test_small_trees_take_one_step():
    calls = []
    jp.global_unstructured({"w": jnp.ones((10, 10))}, 0.5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]  # the sort path: no radix pass


def test_true_logs_one_line_per_pass(caplog):
    with caplog.at_level(logging.INFO, logger="jaxprune"):
        jp.global_unstructured(_tree(), 0.4, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxprune"]
    assert lines == [f"global_unstructured: pass {i}/3 done" for i in (1, 2, 3)]


def test_under_jit_the_passes_report_at_run_time():
    calls = []

    def report(done, total):
        calls.append((done, total))

    f = jax.jit(lambda t: jp.global_unstructured(t, 0.4, progress=report))
    tree = _tree()
    jax.block_until_ready(f(tree))
    assert calls == [(1, 3), (2, 3)]  # the last step is the caller's to report: its outputs are traced
    calls.clear()
    jax.block_until_ready(f(tree))
    assert calls == [(1, 3), (2, 3)]  # every run, not only the first (tracing)


def test_bad_progress_is_refused():
    with pytest.raises(TypeError, match=r"progress must be None, a bool or a callable \(done, total\), got 'yes'"):
        jp.global_unstructured(_tree(), 0.4, progress="yes")
