"""Property tests (hypothesis) for the documented contract of jaxprune's masks.

Each property is checked on random inputs: the exact number of pruned units,
staying within a default mask and counting only the remaining units, nesting
in the amount, determinism per key, jit == eager, vmap == loop, no retracing
across amounts, the tie and NaN rules, agreement of the two selection paths
(stable sort and radix select), and the clamping of traced amounts.

Shapes are drawn from small fixed lists so that the jitted kernels compile a
bounded number of times; the data inside each example is random.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import jaxprune as jp
from jaxprune import _amounts, _selection

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNSTRUCTURED_SHAPES = [(), (1,), (7,), (4, 5), (2, 3, 4), (0, 3), (70, 80)]
STRUCTURED_SHAPES = [(4, 5), (2, 3, 4), (6, 1, 2), (1, 6), (70, 80)]
NORMS = [1, 2, 3, math.inf, -math.inf, 0, 0.5, -1]
seeds = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------
# Helpers: expected counts and a plain numpy reference of the selection rule
# --------------------------------------------------------------------------


def expected_k(amount, units: int) -> int:
    """torch's rule: an int is a count, a float a fraction rounded half-to-even (float64 product)."""
    return amount if isinstance(amount, int) else round(amount * units)


def amount_for(data, units: int):
    """An int count in [0, units] or a float fraction in [0, 1] (exact halves are likely)."""
    return data.draw(
        st.one_of(
            st.integers(0, units),
            st.floats(0.0, 1.0),
            st.sampled_from([0.0, 0.5, 0.25, 0.15, 0.35, 0.29, 1.0]),
        ),
        label="amount",
    )


def tie_heavy(shape, rng) -> np.ndarray:
    """float32 values from a small integer range: many ties, zeros included (never -0.0)."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


def random_mask(shape, rng, p_pruned=None) -> np.ndarray:
    p = rng.uniform(0.0, 0.7) if p_pruned is None else p_pruned
    return rng.random(shape) >= p


def structured_random_mask(shape, dim, rng) -> np.ndarray:
    """Random entries pruned, and some slices along ``dim`` pruned entirely."""
    mask = random_mask(shape, rng, 0.3)
    moved = np.moveaxis(mask, dim, 0)
    dead = rng.random(shape[dim]) < 0.4
    moved[dead] = False
    return mask


def alive(mask: np.ndarray, dim: int) -> np.ndarray:
    others = tuple(d for d in range(mask.ndim) if d != dim % mask.ndim)
    return np.any(mask, axis=others)


def reference_pruned(scores, k: int, candidates=None) -> np.ndarray:
    """The contract in numpy: among candidates, prune the k lowest scores; NaN above +inf;
    ties (numerically equal scores) go to the lower flat index."""
    s = np.asarray(scores, np.float64)
    flat = s.ravel()
    cand = np.ones(flat.size, bool) if candidates is None else np.asarray(candidates).ravel()
    isnan = np.isnan(flat)
    order = np.lexsort((np.arange(flat.size), np.where(isnan, 0.0, flat), isnan, ~cand))
    pruned = np.zeros(flat.size, bool)
    pruned[order[:k]] = True
    return pruned.reshape(s.shape)


def reference_structured_keep(slice_scores, shape, dim, k, default_mask=None) -> np.ndarray:
    dim = dim % len(shape)
    cands = None if default_mask is None else alive(default_mask, dim)
    pruned = reference_pruned(slice_scores, k, cands)
    keep_slices = ~pruned if cands is None else cands & ~pruned
    view = [1] * len(shape)
    view[dim] = shape[dim]
    keep = np.broadcast_to(keep_slices.reshape(view), shape)
    return keep if default_mask is None else keep & default_mask


def n_pruned(mask) -> int:
    return int((~np.asarray(mask)).sum())


def n_pruned_slices(mask, dim) -> int:
    m = np.asarray(mask)
    return int((~alive(m, dim)).sum())


def assert_whole_slices(mask, dim, default_mask=None):
    """A structured mask is the default mask AND a per-slice keep vector."""
    m = np.asarray(mask)
    dim = dim % m.ndim
    view = [1] * m.ndim
    view[dim] = m.shape[dim]
    keep = np.broadcast_to(alive(m, dim).reshape(view), m.shape)
    base = np.ones(m.shape, bool) if default_mask is None else default_mask
    np.testing.assert_array_equal(m, keep & base)


def dm_arg(mask):
    return None if mask is None else jnp.asarray(mask)


def key_of(seed: int):
    return jax.random.key(seed)


# --------------------------------------------------------------------------
# Exact count (and, for the deterministic methods, the exact mask)
# --------------------------------------------------------------------------


@FAST
@given(shape=st.sampled_from(UNSTRUCTURED_SHAPES), seed=seeds, data=st.data())
def test_l1_unstructured_prunes_exactly_k_lowest(shape, seed, data):
    rng = np.random.default_rng(seed)
    t = tie_heavy(shape, rng)
    units = math.prod(shape)
    amount = amount_for(data, units)
    mask = np.asarray(jp.l1_unstructured(jnp.asarray(t), amount))
    assert mask.dtype == np.bool_ and mask.shape == shape
    assert n_pruned(mask) == expected_k(amount, units)
    np.testing.assert_array_equal(~mask, reference_pruned(np.abs(t), expected_k(amount, units)))


@FAST
@given(shape=st.sampled_from(UNSTRUCTURED_SHAPES), seed=seeds, data=st.data())
def test_unstructured_mask_prunes_exactly_k_lowest(shape, seed, data):
    rng = np.random.default_rng(seed)
    scores = tie_heavy(shape, rng)  # signed: the raw scores rank, not their magnitude
    units = math.prod(shape)
    amount = amount_for(data, units)
    mask = np.asarray(jp.unstructured_mask(jnp.asarray(scores), amount))
    assert n_pruned(mask) == expected_k(amount, units)
    np.testing.assert_array_equal(~mask, reference_pruned(scores, expected_k(amount, units)))


@FAST
@given(shape=st.sampled_from(UNSTRUCTURED_SHAPES), seed=seeds, data=st.data())
def test_random_unstructured_prunes_exactly_k(shape, seed, data):
    units = math.prod(shape)
    amount = amount_for(data, units)
    mask = np.asarray(jp.random_unstructured(key_of(seed), jnp.ones(shape), amount))
    assert mask.dtype == np.bool_ and mask.shape == shape
    assert n_pruned(mask) == expected_k(amount, units)


@FAST
@given(shape=st.sampled_from(STRUCTURED_SHAPES), n=st.sampled_from(NORMS), seed=seeds, data=st.data())
def test_ln_structured_prunes_exactly_k_lowest_slices(shape, n, seed, data):
    rng = np.random.default_rng(seed)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    t = tie_heavy(shape, rng)
    units = shape[dim]
    amount = amount_for(data, units)
    mask = np.asarray(jp.ln_structured(jnp.asarray(t), amount, n, dim))
    assert n_pruned_slices(mask, dim) == expected_k(amount, units)
    assert_whole_slices(mask, dim)
    norms = np.asarray(jp.slice_norms(jnp.asarray(t), n, dim))
    np.testing.assert_array_equal(mask, reference_structured_keep(norms, shape, dim, expected_k(amount, units)))


@FAST
@given(shape=st.sampled_from(STRUCTURED_SHAPES), seed=seeds, data=st.data())
def test_structured_mask_prunes_exactly_k_lowest_slices(shape, seed, data):
    rng = np.random.default_rng(seed)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    scores = tie_heavy((shape[dim],), rng)
    amount = amount_for(data, shape[dim])
    mask = np.asarray(jp.structured_mask(jnp.asarray(scores), shape, amount, dim))
    k = expected_k(amount, shape[dim])
    np.testing.assert_array_equal(mask, reference_structured_keep(scores, shape, dim, k))


@FAST
@given(shape=st.sampled_from(STRUCTURED_SHAPES), seed=seeds, use_compute_mask=st.booleans(), data=st.data())
def test_random_structured_prunes_exactly_k_slices(shape, seed, use_compute_mask, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    amount = amount_for(data, shape[dim])
    t = jnp.ones(shape)
    if use_compute_mask:
        mask = jp.compute_mask(key_of(seed), t, amount, dim)
    else:
        mask = jp.random_structured(key_of(seed), t, amount, dim)
    assert n_pruned_slices(mask, dim) == expected_k(amount, shape[dim])
    assert jp.pruned_indices(mask, dim).size == expected_k(amount, shape[dim])
    assert_whole_slices(mask, dim)


GLOBAL_SHAPES = [(3, 4), (5,), (2, 2, 2)]


def global_tree(rng, shapes=GLOBAL_SHAPES, values=tie_heavy):
    return {f"layer{i}": jnp.asarray(values(s, rng)) for i, s in enumerate(shapes)}


def flat_leaves(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])


@FAST
@given(seed=seeds, method=st.sampled_from(["l1", "random"]), data=st.data())
def test_global_unstructured_prunes_exactly_k(seed, method, data):
    rng = np.random.default_rng(seed)
    tree = global_tree(rng)
    units = sum(math.prod(s) for s in GLOBAL_SHAPES)
    amount = amount_for(data, units)
    masks = jp.global_unstructured(tree, amount, method=method, key=key_of(seed))
    assert jax.tree.structure(masks) == jax.tree.structure(tree)
    flat = flat_leaves(masks)
    assert n_pruned(flat) == expected_k(amount, units)
    if method == "l1":
        np.testing.assert_array_equal(~flat, reference_pruned(np.abs(flat_leaves(tree)), expected_k(amount, units)))


# --------------------------------------------------------------------------
# Iterative pruning: within the default mask, the amount counts remaining units
# --------------------------------------------------------------------------


@FAST
@given(
    shape=st.sampled_from([(7,), (4, 5), (2, 3, 4), (70, 80)]),
    method=st.sampled_from(["l1", "random", "scores"]),
    seed=seeds,
    data=st.data(),
)
def test_unstructured_default_mask_counts_remaining_units(shape, method, seed, data):
    rng = np.random.default_rng(seed)
    t = tie_heavy(shape, rng)
    dm = random_mask(shape, rng)
    remaining = int(dm.sum())
    amount = amount_for(data, remaining)
    k = expected_k(amount, remaining)
    if method == "l1":
        mask = jp.l1_unstructured(jnp.asarray(t), amount, default_mask=jnp.asarray(dm))
    elif method == "random":
        mask = jp.random_unstructured(key_of(seed), jnp.asarray(t), amount, default_mask=jnp.asarray(dm))
    else:
        mask = jp.unstructured_mask(jnp.asarray(t), amount, default_mask=jnp.asarray(dm))
    mask = np.asarray(mask)
    assert not np.any(mask & ~dm), "the mask must imply the default mask"
    assert n_pruned(mask) - n_pruned(dm) == k
    if method != "random":
        scores = np.abs(t) if method == "l1" else t
        np.testing.assert_array_equal(mask, dm & ~reference_pruned(scores, k, dm))


@FAST
@given(
    shape=st.sampled_from([(4, 5), (2, 3, 4), (8, 2), (70, 80)]),
    method=st.sampled_from(["ln", "random", "scores"]),
    seed=seeds,
    data=st.data(),
)
def test_structured_default_mask_counts_remaining_slices(shape, method, seed, data):
    rng = np.random.default_rng(seed)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    t = tie_heavy(shape, rng)
    dm = structured_random_mask(shape, dim, rng)
    alive_before = alive(dm, dim)
    amount = amount_for(data, int(alive_before.sum()))
    k = expected_k(amount, int(alive_before.sum()))
    if method == "ln":
        n = data.draw(st.sampled_from(NORMS), label="n")
        mask = jp.ln_structured(jnp.asarray(t), amount, n, dim, default_mask=jnp.asarray(dm))
        slice_scores = np.asarray(jp.slice_norms(jnp.asarray(t), n, dim))
    elif method == "random":
        mask = jp.random_structured(key_of(seed), jnp.asarray(t), amount, dim, default_mask=jnp.asarray(dm))
    else:
        slice_scores = tie_heavy((shape[dim],), rng)
        mask = jp.structured_mask(jnp.asarray(slice_scores), shape, amount, dim, default_mask=jnp.asarray(dm))
    mask = np.asarray(mask)
    assert not np.any(mask & ~dm), "the mask must imply the default mask"
    alive_after = alive(mask, dim)
    assert not np.any(alive_after & ~alive_before)
    assert int(alive_before.sum()) - int(alive_after.sum()) == k
    assert_whole_slices(mask, dim, dm)
    if method != "random":
        np.testing.assert_array_equal(mask, reference_structured_keep(slice_scores, shape, dim, k, dm))


@FAST
@given(seed=seeds, method=st.sampled_from(["l1", "random"]), data=st.data())
def test_global_unstructured_default_masks_count_remaining(seed, method, data):
    rng = np.random.default_rng(seed)
    tree = global_tree(rng)
    dms = {name: jnp.asarray(random_mask(x.shape, rng)) for name, x in tree.items()}
    dms["layer1"] = None  # None = all kept
    remaining = sum(int(np.asarray(m).sum()) if m is not None else tree[n].size for n, m in dms.items())
    amount = amount_for(data, remaining)
    k = expected_k(amount, remaining)
    masks = jp.global_unstructured(tree, amount, method=method, key=key_of(seed), default_masks=dms)
    flat_dm = np.concatenate(
        [np.ones(tree[n].size, bool) if dms[n] is None else np.asarray(dms[n]).ravel() for n in sorted(tree)]
    )
    flat = flat_leaves(masks)
    assert not np.any(flat & ~flat_dm)
    assert n_pruned(flat) - n_pruned(flat_dm) == k
    if method == "l1":
        np.testing.assert_array_equal(flat, flat_dm & ~reference_pruned(np.abs(flat_leaves(tree)), k, flat_dm))


# --------------------------------------------------------------------------
# Nesting: a larger amount prunes a superset
# --------------------------------------------------------------------------


def two_amounts(data, units: int):
    """(smaller, larger): both counts or both fractions."""
    if data.draw(st.booleans(), label="as counts"):
        a, b = sorted(data.draw(st.lists(st.integers(0, units), min_size=2, max_size=2), label="counts"))
    else:
        a, b = sorted(data.draw(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2), label="fractions"))
    return a, b


def assert_nested(small_mask, big_mask):
    small_pruned, big_pruned = ~np.asarray(small_mask), ~np.asarray(big_mask)
    assert not np.any(small_pruned & ~big_pruned), "a unit pruned at the smaller amount was revived"


@FAST
@given(
    shape=st.sampled_from([(7,), (4, 5), (2, 3, 4), (70, 80)]),
    method=st.sampled_from(["l1", "random", "scores"]),
    with_dm=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_unstructured_masks_are_nested_in_amount(shape, method, with_dm, seed, data):
    rng = np.random.default_rng(seed)
    t = jnp.asarray(tie_heavy(shape, rng))
    dm = jnp.asarray(random_mask(shape, rng)) if with_dm else None
    units = math.prod(shape) if dm is None else int(dm.sum())
    small, big = two_amounts(data, units)

    def run(amount):
        if method == "l1":
            return jp.l1_unstructured(t, amount, default_mask=dm)
        if method == "random":
            return jp.random_unstructured(key_of(seed), t, amount, default_mask=dm)
        return jp.unstructured_mask(t, amount, default_mask=dm)

    assert_nested(run(small), run(big))


@FAST
@given(
    shape=st.sampled_from([(4, 5), (2, 3, 4), (8, 2)]),
    method=st.sampled_from(["ln", "random", "scores"]),
    with_dm=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_structured_masks_are_nested_in_amount(shape, method, with_dm, seed, data):
    rng = np.random.default_rng(seed)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    t = jnp.asarray(tie_heavy(shape, rng))
    scores = jnp.asarray(tie_heavy((shape[dim],), rng))
    dm = structured_random_mask(shape, dim, rng) if with_dm else None
    units = shape[dim] if dm is None else int(alive(dm, dim).sum())
    small, big = two_amounts(data, units)
    n = data.draw(st.sampled_from(NORMS), label="n")

    def run(amount):
        if method == "ln":
            return jp.ln_structured(t, amount, n, dim, default_mask=dm_arg(dm))
        if method == "random":
            return jp.random_structured(key_of(seed), t, amount, dim, default_mask=dm_arg(dm))
        return jp.structured_mask(scores, shape, amount, dim, default_mask=dm_arg(dm))

    assert_nested(run(small), run(big))


@FAST
@given(seed=seeds, method=st.sampled_from(["l1", "random"]), data=st.data())
def test_global_masks_are_nested_in_amount(seed, method, data):
    rng = np.random.default_rng(seed)
    tree = global_tree(rng)
    small, big = two_amounts(data, sum(x.size for x in tree.values()))
    m_small = jp.global_unstructured(tree, small, method=method, key=key_of(seed))
    m_big = jp.global_unstructured(tree, big, method=method, key=key_of(seed))
    assert_nested(flat_leaves(m_small), flat_leaves(m_big))


def test_compute_mask_nested_along_a_schedule():
    """A fixed key and a rising sparsity schedule never revive a pruned channel."""
    key, t = key_of(3), jnp.zeros((2, 64, 3, 3))
    previous = np.zeros(64, bool)
    for amount in (0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0):
        pruned = ~alive(np.asarray(jp.compute_mask(key, t, amount, 1)), 1)
        assert not np.any(previous & ~pruned)
        assert pruned.sum() == round(amount * 64)
        previous = pruned


# --------------------------------------------------------------------------
# Determinism per key
# --------------------------------------------------------------------------


@FEW
@given(seed=seeds, other=seeds)
def test_same_key_same_mask_different_key_different_mask(seed, other):
    assume(seed != other)
    t = jnp.ones((40, 32))  # 1280 entries, 40 rows: a collision of masks is astronomically unlikely
    a = np.asarray(jp.random_unstructured(key_of(seed), t, 0.5))
    np.testing.assert_array_equal(a, np.asarray(jp.random_unstructured(key_of(seed), t, 0.5)))
    assert not np.array_equal(a, np.asarray(jp.random_unstructured(key_of(other), t, 0.5)))

    s = np.asarray(jp.random_structured(key_of(seed), t, 0.5, 0))
    np.testing.assert_array_equal(s, np.asarray(jp.random_structured(key_of(seed), t, 0.5, 0)))
    np.testing.assert_array_equal(s, np.asarray(jp.compute_mask(key_of(seed), t, 0.5, 0)))
    assert not np.array_equal(s, np.asarray(jp.random_structured(key_of(other), t, 0.5, 0)))

    tree = {"a": t, "b": jnp.ones((30, 30))}
    g = jp.global_unstructured(tree, 0.5, method="random", key=key_of(seed))
    g2 = jp.global_unstructured(tree, 0.5, method="random", key=key_of(seed))
    g3 = jp.global_unstructured(tree, 0.5, method="random", key=key_of(other))
    np.testing.assert_array_equal(flat_leaves(g), flat_leaves(g2))
    assert not np.array_equal(flat_leaves(g), flat_leaves(g3))


def test_legacy_uint32_key_is_deterministic_and_matches_the_typed_key():
    t = jnp.ones((10, 10))
    raw = jax.random.PRNGKey(5)  # the same key as jax.random.key(5), as raw uint32[2]
    a = np.asarray(jp.random_unstructured(raw, t, 0.3))
    np.testing.assert_array_equal(a, np.asarray(jp.random_unstructured(raw, t, 0.3)))
    np.testing.assert_array_equal(a, np.asarray(jp.random_unstructured(key_of(5), t, 0.3)))
    assert n_pruned(a) == 30


# --------------------------------------------------------------------------
# jit == eager (bitwise), with traced amounts and traced default masks
# --------------------------------------------------------------------------


@jax.jit
def jit_l1(t, amount, dm):
    return jp.l1_unstructured(t, amount, default_mask=dm)


@jax.jit
def jit_unstructured_mask(s, amount, dm):
    return jp.unstructured_mask(s, amount, default_mask=dm)


@jax.jit
def jit_random_unstructured(key, t, amount, dm):
    return jp.random_unstructured(key, t, amount, default_mask=dm)


@functools.partial(jax.jit, static_argnames=("n", "dim"))
def jit_ln(t, amount, n, dim, dm):
    return jp.ln_structured(t, amount, n, dim, default_mask=dm)


@functools.partial(jax.jit, static_argnames=("dim",))
def jit_random_structured(key, t, amount, dim, dm):
    return jp.random_structured(key, t, amount, dim, default_mask=dm)


@functools.partial(jax.jit, static_argnames=("shape", "dim"))
def jit_structured_mask(s, shape, amount, dim, dm):
    return jp.structured_mask(s, shape, amount, dim, default_mask=dm)


@functools.partial(jax.jit, static_argnames=("dim",))
def jit_compute_mask(key, t, amount, dim):
    return jp.compute_mask(key, t, amount, dim)


@functools.partial(jax.jit, static_argnames=("method",))
def jit_global(tree, amount, dms, key, method):
    return jp.global_unstructured(tree, amount, method=method, key=key, default_masks=dms)


def traced_and_python_amount(data, units: int):
    """A (jnp array amount, Python amount) pair that must give the same k.

    The float32 amount ``a`` corresponds to the Python float ``float(np.float32(a))``."""
    if data.draw(st.booleans(), label="as count"):
        count = data.draw(st.integers(0, units), label="count")
        return jnp.int32(count), count
    a = data.draw(st.one_of(st.floats(0.0, 1.0, width=32), st.sampled_from([0.5, 0.15, 0.35, 0.29])), label="frac")
    return jnp.float32(a), float(np.float32(a))


JIT_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@JIT_SETTINGS
@given(
    method=st.sampled_from(["l1", "scores", "random"]),
    with_dm=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_jit_equals_eager_unstructured(method, with_dm, seed, data):
    shape = (2, 3, 4)
    rng = np.random.default_rng(seed)
    t = jnp.asarray(tie_heavy(shape, rng))
    dm = jnp.asarray(random_mask(shape, rng)) if with_dm else None
    units = math.prod(shape) if dm is None else int(dm.sum())
    traced, python = traced_and_python_amount(data, units)
    if method == "l1":
        eager = jp.l1_unstructured(t, python, default_mask=dm)
        jitted = jit_l1(t, traced, dm)
        # a concrete (not traced) array amount, eagerly: the same device rule
        np.testing.assert_array_equal(np.asarray(jp.l1_unstructured(t, traced, default_mask=dm)), np.asarray(eager))
    elif method == "scores":
        eager = jp.unstructured_mask(t, python, default_mask=dm)
        jitted = jit_unstructured_mask(t, traced, dm)
    else:
        key = key_of(seed)
        eager = jp.random_unstructured(key, t, python, default_mask=dm)
        jitted = jit_random_unstructured(key, t, traced, dm)
    assert jitted.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))


@settings(max_examples=8, deadline=None)
@given(seed=seeds, data=st.data())
def test_jit_equals_eager_on_a_large_tensor(seed, data):
    """70x80 = 5600 values: the radix-select path, with a traced fraction and a traced default mask."""
    rng = np.random.default_rng(seed)
    t = jnp.asarray(tie_heavy((70, 80), rng))
    dm = jnp.asarray(random_mask((70, 80), rng))
    a = data.draw(st.floats(0.0, 1.0, width=32), label="fraction")
    eager = jp.l1_unstructured(t, float(np.float32(a)), default_mask=dm)
    np.testing.assert_array_equal(np.asarray(jit_l1(t, jnp.float32(a), dm)), np.asarray(eager))


@JIT_SETTINGS
@given(
    method=st.sampled_from(["ln", "scores", "random", "compute_mask"]),
    with_dm=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_jit_equals_eager_structured(method, with_dm, seed, data):
    shape, dim = (2, 3, 4), -1
    rng = np.random.default_rng(seed)
    t = jnp.asarray(tie_heavy(shape, rng))
    dm = structured_random_mask(shape, dim, rng) if with_dm and method != "compute_mask" else None
    units = shape[dim] if dm is None else int(alive(dm, dim).sum())
    traced, python = traced_and_python_amount(data, units)
    dmj = dm_arg(dm)
    key = key_of(seed)
    if method == "ln":
        n = data.draw(st.sampled_from([1, 2, math.inf]), label="n")
        eager = jp.ln_structured(t, python, n, dim, default_mask=dmj)
        jitted = jit_ln(t, traced, n, dim, dmj)
    elif method == "scores":
        s = jnp.asarray(tie_heavy((shape[dim],), rng))
        eager = jp.structured_mask(s, shape, python, dim, default_mask=dmj)
        jitted = jit_structured_mask(s, shape, traced, dim, dmj)
    elif method == "random":
        eager = jp.random_structured(key, t, python, dim, default_mask=dmj)
        jitted = jit_random_structured(key, t, traced, dim, dmj)
    else:
        eager = jp.compute_mask(key, t, python, dim)
        jitted = jit_compute_mask(key, t, traced, dim)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))


@JIT_SETTINGS
@given(seed=seeds, method=st.sampled_from(["l1", "random"]), with_dm=st.booleans(), data=st.data())
def test_jit_equals_eager_global(seed, method, with_dm, data):
    rng = np.random.default_rng(seed)
    tree = global_tree(rng)
    dms = {n: jnp.asarray(random_mask(x.shape, rng)) for n, x in tree.items()} if with_dm else None
    units = sum(int(m.sum()) for m in dms.values()) if with_dm else sum(x.size for x in tree.values())
    traced, python = traced_and_python_amount(data, units)
    key = key_of(seed)
    eager = jp.global_unstructured(tree, python, method=method, key=key, default_masks=dms)
    jitted = jit_global(tree, traced, dms, key, method)
    np.testing.assert_array_equal(flat_leaves(jitted), flat_leaves(eager))


def test_jit_with_static_python_amount_equals_eager():
    """A Python amount closed over (static) under jit, with a traced default mask."""
    amount = 0.5
    rng = np.random.default_rng(0)
    t = jnp.asarray(tie_heavy((2, 3, 4), rng))
    dm = jnp.asarray(random_mask((2, 3, 4), rng, 0.2))
    key = key_of(1)
    cases = {
        "l1": (lambda t, dm: jp.l1_unstructured(t, amount, default_mask=dm)),
        "random": (lambda t, dm: jp.random_unstructured(key, t, amount, default_mask=dm)),
        "ln": (lambda t, dm: jp.ln_structured(t, amount, 2, 0, default_mask=dm)),
        "random_structured": (lambda t, dm: jp.random_structured(key, t, amount, 1, default_mask=dm)),
    }
    for name, fn in cases.items():
        np.testing.assert_array_equal(np.asarray(jax.jit(fn)(t, dm)), np.asarray(fn(t, dm)), err_msg=name)


@jax.jit
def _pruned_count_with_traced_units(amount, dm):
    mask = jp.unstructured_mask(jnp.zeros(dm.shape), amount, default_mask=dm)
    return jnp.sum(dm & ~mask, dtype=jnp.int32)  # newly pruned among the candidates


@settings(max_examples=60, deadline=None)
@given(a=st.floats(0.0, 1.0, width=32), units=st.integers(0, 3000), seed=seeds)
def test_traced_float32_amount_rule_matches_python(a, units, seed):
    """Traced float32 amount and traced unit count: k == round(float(np.float32(a)) * N)."""
    rng = np.random.default_rng(seed)
    dm = np.zeros(3000, bool)
    dm[rng.choice(3000, size=units, replace=False)] = True
    got = int(_pruned_count_with_traced_units(jnp.float32(a), jnp.asarray(dm)))
    assert got == round(float(np.float32(a)) * units)


@jax.jit
def _traced_k(amount, units):
    return _amounts.count_to_prune(_amounts.check_amount(amount), units)


@settings(max_examples=100, deadline=None)
@given(
    a=st.one_of(st.floats(0.0, 1.0, width=32), st.sampled_from([0.5, 0.15, 0.35, 0.29, 0.45, 0.05, 1.0])),
    units=st.one_of(st.integers(0, 2**31 - 1), st.integers(0, 10_000), st.sampled_from([1, 3, 5, 7, 10, 64, 100])),
    dtype=st.sampled_from([jnp.float32, jnp.float16, jnp.bfloat16]),
)
def test_traced_amount_count_rule_for_large_unit_counts(a, units, dtype):
    """The device rule (emulated float64 product, then half-to-even) for any N < 2**31."""
    amount = jnp.asarray(a, dtype)
    got = int(_traced_k(amount, jnp.int32(units)))
    assert got == round(float(amount) * units)


@pytest.mark.parametrize(
    "a, units, k",
    [(0.5, 1, 0), (0.5, 3, 2), (0.5, 5, 2), (0.5, 7, 4), (0.25, 10, 2), (0.75, 10, 8), (0.125, 12, 2), (1.0, 15, 15)],
    ids=lambda v: repr(v),
)
def test_traced_float32_exact_halves(a, units, k):
    """Values exact in float32: halves round to even under jit, as Python does."""
    assert round(a * units) == k
    assert int(_traced_k(jnp.float32(a), jnp.int32(units))) == k
    t = jnp.arange(1.0, 17.0)
    dm = jnp.arange(16) < units  # the first ``units`` entries are the candidates
    mask = np.asarray(jit_l1(t, jnp.float32(a), dm))
    assert not mask[:k].any() and mask[k:units].all()  # the k smallest candidates, exactly


# --------------------------------------------------------------------------
# vmap == loop
# --------------------------------------------------------------------------

_vmap_keys_unstructured = jax.jit(jax.vmap(lambda k, t: jp.random_unstructured(k, t, 0.4), in_axes=(0, None)))
_vmap_keys_structured = jax.jit(jax.vmap(lambda k, t: jp.random_structured(k, t, 3, 1), in_axes=(0, None)))
_vmap_keys_global = jax.jit(
    jax.vmap(lambda k, tree: jp.global_unstructured(tree, 0.3, method="random", key=k), in_axes=(0, None))
)
_vmap_amounts_l1 = jax.jit(jax.vmap(lambda a, t, dm: jp.l1_unstructured(t, a, default_mask=dm), in_axes=(0, None, None)))
_vmap_amounts_ln = jax.jit(jax.vmap(lambda a, t: jp.ln_structured(t, a, 1, 0), in_axes=(0, None)))
_vmap_tensors_l1 = jax.jit(jax.vmap(lambda t, dm: jp.l1_unstructured(t, 0.35, default_mask=dm)))
_vmap_tensors_ln = jax.jit(jax.vmap(lambda t: jp.ln_structured(t, 2, 2, -1)))
_vmap_tensors_scores = jax.jit(jax.vmap(lambda s, dm: jp.unstructured_mask(s, 5, default_mask=dm)))


@FEW
@given(seed=seeds)
def test_vmap_over_keys_equals_loop(seed):
    keys = jax.random.split(key_of(seed), 5)
    t = jnp.ones((6, 7))
    batched = np.asarray(_vmap_keys_unstructured(keys, t))
    batched_s = np.asarray(_vmap_keys_structured(keys, t))
    tree = {"a": jnp.ones((4, 5)), "b": jnp.ones(6)}
    batched_g = _vmap_keys_global(keys, tree)
    for i in range(5):
        np.testing.assert_array_equal(batched[i], np.asarray(jp.random_unstructured(keys[i], t, 0.4)))
        np.testing.assert_array_equal(batched_s[i], np.asarray(jp.random_structured(keys[i], t, 3, 1)))
        single = jp.global_unstructured(tree, 0.3, method="random", key=keys[i])
        for name in tree:
            np.testing.assert_array_equal(np.asarray(batched_g[name][i]), np.asarray(single[name]))


@FEW
@given(seed=seeds, fractions=st.lists(st.floats(0.0, 1.0, width=32), min_size=4, max_size=4))
def test_vmap_over_amounts_equals_loop(seed, fractions):
    rng = np.random.default_rng(seed)
    t = jnp.asarray(tie_heavy((6, 7), rng))
    dm = jnp.asarray(random_mask((6, 7), rng))
    counts = [int(c) for c in rng.integers(0, int(dm.sum()) + 1, size=4)]
    by_fraction = _vmap_amounts_l1(jnp.asarray(fractions, jnp.float32), t, dm)
    by_count = _vmap_amounts_l1(jnp.asarray(counts, jnp.int32), t, dm)
    by_fraction_ln = _vmap_amounts_ln(jnp.asarray(fractions, jnp.float32), t)
    for i in range(4):
        a = float(np.float32(fractions[i]))
        np.testing.assert_array_equal(np.asarray(by_fraction[i]), np.asarray(jp.l1_unstructured(t, a, default_mask=dm)))
        np.testing.assert_array_equal(
            np.asarray(by_count[i]), np.asarray(jp.l1_unstructured(t, counts[i], default_mask=dm))
        )
        np.testing.assert_array_equal(np.asarray(by_fraction_ln[i]), np.asarray(jp.ln_structured(t, a, 1, 0)))


@FEW
@given(seed=seeds)
def test_vmap_over_tensors_equals_loop(seed):
    rng = np.random.default_rng(seed)
    ts = jnp.asarray(tie_heavy((4, 6, 7), rng))
    dms = jnp.asarray(random_mask((4, 6, 7), rng, 0.3))
    l1 = _vmap_tensors_l1(ts, dms)
    ln = _vmap_tensors_ln(ts)
    sc = _vmap_tensors_scores(ts, dms)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(l1[i]), np.asarray(jp.l1_unstructured(ts[i], 0.35, default_mask=dms[i])))
        np.testing.assert_array_equal(np.asarray(ln[i]), np.asarray(jp.ln_structured(ts[i], 2, 2, -1)))
        np.testing.assert_array_equal(np.asarray(sc[i]), np.asarray(jp.unstructured_mask(ts[i], 5, default_mask=dms[i])))


# --------------------------------------------------------------------------
# No retracing / recompiling across amounts
# --------------------------------------------------------------------------

FLOAT_AMOUNTS = [0.0, 0.1, 0.25, 0.5, 0.77, 1.0]
INT_AMOUNTS = [0, 1, 5, 17, 30]


def _method_calls():
    """Each method as ``call(t, amount, default_mask)`` on a (rows, columns) tensor, dim=1 for structured."""
    key = key_of(0)
    return {
        "l1": lambda t, a, dm: jp.l1_unstructured(t, a, default_mask=dm),
        "unstructured_mask": lambda t, a, dm: jp.unstructured_mask(t, a, default_mask=dm),
        "random_unstructured": lambda t, a, dm: jp.random_unstructured(key, t, a, default_mask=dm),
        "ln": lambda t, a, dm: jp.ln_structured(t, a, 2, 1, default_mask=dm),
        "random_structured": lambda t, a, dm: jp.random_structured(key, t, a, 1, default_mask=dm),
        "global": lambda t, a, dm: jp.global_unstructured(
            {"w": t, "v": t[0]}, a, default_masks=None if dm is None else {"w": dm, "v": dm[0]}
        ),
    }


@pytest.mark.parametrize("kind", ["float32", "int32"])
@pytest.mark.parametrize("method", ["l1", "random_unstructured", "ln", "random_structured", "global"])
def test_jit_traces_once_across_amounts(method, kind):
    # (unstructured_mask shares l1's kernel; structured_mask and compute_mask are in the chex test)
    """Changing the traced amount (and the traced default mask) never retraces."""
    call = _method_calls()[method]
    traces = 0

    def fn(t, a, dm):
        nonlocal traces
        traces += 1
        return call(t, a, dm)

    jitted = jax.jit(fn)
    rng = np.random.default_rng(0)
    t = jnp.asarray(tie_heavy((5, 40), rng))
    amounts = [jnp.float32(a) for a in FLOAT_AMOUNTS] if kind == "float32" else [jnp.int32(a) for a in INT_AMOUNTS]
    outputs = []
    for i, a in enumerate(amounts):
        dm = random_mask((5, 40), np.random.default_rng(i), 0.2)
        dm[0] = True  # every column keeps an entry: count amounts stay valid
        outputs.append(jitted(t, a, jnp.asarray(dm)))
    jax.block_until_ready(outputs)
    assert traces == 1


def test_chex_assert_max_traces_across_amounts():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, t, a):  # no default mask
        return (
            jp.l1_unstructured(t, a),
            jp.ln_structured(t, a, 1, 0),
            jp.random_unstructured(key, t, a),
            jp.random_structured(key, t, a, 1),
            jp.unstructured_mask(t, a),
            jp.structured_mask(t[:, 0], t.shape, a, 0),
            jp.compute_mask(key, t, a, 0),
        )

    t = jnp.arange(1.0, 31.0).reshape(5, 6)
    for a in FLOAT_AMOUNTS:
        masks = step(key_of(0), t, jnp.float32(a))
        assert n_pruned(masks[0]) == round(float(np.float32(a)) * 30)
        assert n_pruned_slices(masks[1], 0) == round(float(np.float32(a)) * 5)


EAGER_METHODS = ("l1", "unstructured_mask", "random_unstructured", "ln", "random_structured", "global")


@pytest.mark.parametrize("with_dm", [False, True], ids=["nodm", "dm"])
@pytest.mark.parametrize("method", EAGER_METHODS)
def test_eager_calls_do_not_recompile_across_amounts(method, with_dm):
    """Eager calls through the compiled kernels (the path of accelerator and
    sharded arrays) with new Python amounts (or new default-mask values) trace
    nothing new."""
    with _selection.forced(host=False):
        _check_no_retrace(_method_calls()[method], with_dm)


@pytest.mark.parametrize("with_dm", [False, True], ids=["nodm", "dm"])
@pytest.mark.parametrize("method", EAGER_METHODS)
def test_eager_calls_on_the_host_trace_nothing(method, with_dm):
    """Concrete CPU inputs take the NumPy path: no shape, amount or mask traces a kernel."""
    call = _method_calls()[method]
    if method == "global":  # (slicing t[0] there would trace a kernel of the test's own)
        call = lambda t, a, dm: jp.global_unstructured({"w": t, "v": t}, a,  # noqa: E731
                                                       default_masks=None if dm is None else {"w": dm, "v": dm})
    inputs = []
    for i, shape in enumerate([(6, 33), (5, 7), (3, 4, 5)]):
        t = jax.device_put(tie_heavy(shape, np.random.default_rng(i)))  # (jnp.asarray traces a copy kernel)
        dm = jax.device_put(random_mask(shape, np.random.default_rng(i), 0.2)) if with_dm else None
        inputs.append((t, dm))
    key_of(0)
    with counting_traces() as traces:
        for t, dm in inputs:
            for a in (0.3, 0.7, 2):
                jax.block_until_ready(call(t, a, dm))
    assert traces == []
    # Guard: the counter sees kernels (settings never used before: the jit caches cannot hold them).
    with _selection.forced(host=False, host_max=next(_UNUSED_HOST_MAX)), counting_traces() as traces:
        jax.block_until_ready(kernel_call_with_new_shape(call, with_dm))
    assert traces


_UNUSED_HOST_MAX = itertools.count(1_000_003)


def _check_no_retrace(call, with_dm):
    t = jnp.asarray(tie_heavy((6, 33), np.random.default_rng(0)))
    masks = [random_mask((6, 33), np.random.default_rng(i), 0.2) for i in range(3)]
    for m in masks:
        m[0] = True  # every column stays alive: the int counts below stay valid

    def run(a, i):
        return call(t, a, jnp.asarray(masks[i % 3]) if with_dm else None)

    jax.block_until_ready(run(0.3, 0))  # warm up this shape
    with counting_traces() as traces:
        for i, a in enumerate(FLOAT_AMOUNTS + [0.123, 0.999]):
            jax.block_until_ready(run(a, i))
    assert traces == [], "different float amounts retraced the kernel"
    with counting_traces() as traces:
        for i, a in enumerate([0, 1, 3, 6]):
            jax.block_until_ready(run(a, i))
    assert traces == [], "int amounts (after float ones) retraced the kernel"
    # Guard: the counter sees a retrace (a new shape).
    with counting_traces() as traces:
        jax.block_until_ready(kernel_call_with_new_shape(call, with_dm))
    assert traces, "the trace counter saw nothing"


def kernel_call_with_new_shape(call, with_dm):
    t = jnp.ones((5, 7))
    return call(t, 0.5, jnp.ones((5, 7), bool) if with_dm else None)


@contextlib.contextmanager
def counting_traces():
    """Collects one entry per jaxpr traced in the block (jax's public monitoring events)."""
    traces = []

    def listen(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traces.append(kwargs.get("fun_name", event))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield traces
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# --------------------------------------------------------------------------
# Ties and NaN, on both selection paths
# --------------------------------------------------------------------------

PATHS = {
    "sort": dict(sort_max=1 << 40),
    "radix": dict(sort_max=0),
    "radix-small-chunks": dict(sort_max=0, chunk=64, row_max=8),
}


@pytest.fixture(params=list(PATHS))
def selection_path(request):
    """Force one selection path (and small chunks/rows); jit caches are keyed on it."""
    with _selection.forced(**PATHS[request.param]):
        yield request.param


def first_k(shape, k) -> np.ndarray:
    pruned = np.zeros(math.prod(shape), bool)
    pruned[:k] = True
    return pruned.reshape(shape)


def test_all_equal_scores_prune_the_first_k_flat_indices(selection_path):
    shape = (3, 4, 9)  # 108 values: two 64-value chunks and rows of 6 on the small-chunk radix path
    units = math.prod(shape)
    signs = np.where(np.arange(units) % 3 == 0, -1.0, 1.0).astype(np.float32).reshape(shape)
    t = jnp.asarray(2.5 * signs)  # equal magnitudes, mixed signs
    for k in sorted({0, 1, 2, units // 3, units // 2, units - 1, units}):
        np.testing.assert_array_equal(~np.asarray(jp.l1_unstructured(t, k)), first_k(shape, k), err_msg=f"l1 k={k}")
        np.testing.assert_array_equal(
            ~np.asarray(jp.unstructured_mask(jnp.full(shape, 1.5), k)), first_k(shape, k), err_msg=f"scores k={k}"
        )
    for frac in (0.1, 0.5, 0.9):
        k = round(frac * units)
        np.testing.assert_array_equal(~np.asarray(jp.l1_unstructured(t, frac)), first_k(shape, k))


def test_all_equal_scores_with_default_mask_prune_first_k_candidates(selection_path):
    rng = np.random.default_rng(1)
    shape = (6, 11)
    dm = random_mask(shape, rng, 0.4)
    cand_positions = np.flatnonzero(dm.ravel())
    for k in (0, 1, 5, len(cand_positions) // 2, len(cand_positions)):
        expected = dm.copy().ravel()
        expected[cand_positions[:k]] = False
        got = jp.l1_unstructured(jnp.ones(shape), k, default_mask=jnp.asarray(dm))
        np.testing.assert_array_equal(np.asarray(got).ravel(), expected, err_msg=f"k={k}")


def test_equal_slice_scores_prune_the_first_k_slices(selection_path):
    shape = (9, 4)
    for k in range(10):
        expected = np.ones(shape, bool)
        expected[:k] = False
        np.testing.assert_array_equal(np.asarray(jp.ln_structured(jnp.ones(shape), k, 1, 0)), expected)
        np.testing.assert_array_equal(np.asarray(jp.structured_mask(jnp.zeros(9), shape, k, 0)), expected)


def test_global_ties_follow_leaf_order(selection_path):
    tree = [jnp.ones((2, 3)), -jnp.ones(4), jnp.ones((1, 5))]
    for k in range(16):
        masks = jp.global_unstructured(tree, k)
        np.testing.assert_array_equal(~flat_leaves(masks), first_k((15,), k), err_msg=f"k={k}")


def test_nan_scores_are_pruned_last(selection_path):
    t = np.array([np.nan, 0.1, 5.0, -0.2, np.nan, 3.0, np.inf, -np.inf], np.float32)
    order = [1, 3, 5, 2, 6, 7, 0, 4]  # |t| ascending, inf before NaN, NaNs by index
    for k in range(t.size + 1):
        expected = np.ones(t.size, bool)
        expected[order[:k]] = False
        np.testing.assert_array_equal(np.asarray(jp.l1_unstructured(jnp.asarray(t), k)), expected, err_msg=f"k={k}")
    # structured: a slice with a NaN norm is pruned last
    m = np.ones((4, 3), np.float32)
    m[1, 2] = np.nan
    m[3] *= 5.0
    for k, pruned_rows in [(1, [0]), (2, [0, 2]), (3, [0, 2, 3]), (4, [0, 1, 2, 3])]:
        keep = np.asarray(jp.ln_structured(jnp.asarray(m), k, 2, 0))
        assert sorted(np.flatnonzero(~keep.any(axis=1))) == pruned_rows


@FAST
@given(shape=st.sampled_from([(5, 7), (70, 80)]), seed=seeds, data=st.data())
def test_nan_pruned_last_random(shape, seed, data):
    rng = np.random.default_rng(seed)
    t = tie_heavy(shape, rng)
    t[rng.random(shape) < rng.uniform(0, 0.5)] = np.nan
    k = data.draw(st.integers(0, t.size), label="k")
    got = np.asarray(jp.l1_unstructured(jnp.asarray(t), k))
    np.testing.assert_array_equal(~got, reference_pruned(np.abs(t), k))
    finite = ~np.isnan(t)
    if k <= finite.sum():
        assert np.all(got[~finite]), "a NaN was pruned while finite entries remained"
    else:
        assert not np.any(got[finite])


def test_signed_zero_scores_are_ties():
    """-0.0 == +0.0: equal scores, so the lower flat index goes first (the tie rule)."""
    scores = jnp.array([0.0, -0.0, 0.0, -0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(jp.unstructured_mask(scores, 2)), [False, False, True, True, True])
    np.testing.assert_array_equal(
        np.asarray(jp.structured_mask(scores, (2, 5), 1, 1))[0], [False, True, True, True, True]
    )


def test_l1_signed_zeros_are_ties():
    t = jnp.array([0.0, -0.0, 0.0, -0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(jp.l1_unstructured(t, 2)), [False, False, True, True, True])


# --------------------------------------------------------------------------
# The sort path and the radix path agree (compiled once per path)
# --------------------------------------------------------------------------

AGREE_SHAPE = (12, 25)  # 300 values; CHUNK=64 -> 5 histogram chunks, ROW_MAX=8 -> rows of 6
AGREE_SLICES = (300, 2)  # 300 slices along dim 0


def _agree_fns():
    def entries(s, amount, dm):
        return jp.unstructured_mask(s, amount, default_mask=dm)

    def entries_nodm(s, amount):
        return jp.unstructured_mask(s, amount)

    def l1(t, amount, dm):
        return jp.l1_unstructured(t, amount, default_mask=dm)

    def slices(s, amount, dm):
        return jp.structured_mask(s, AGREE_SLICES, amount, 0, default_mask=dm)

    def global_(tree, amount, dms):
        return jp.global_unstructured(tree, amount, default_masks=dms)

    return {"entries": entries, "entries_nodm": entries_nodm, "l1": l1, "slices": slices, "global": global_}


AGREE_PATHS = ("sort", "radix-small-chunks")


def _agree_args(name, amount):
    s = jnp.zeros(AGREE_SHAPE)
    dm = jnp.ones(AGREE_SHAPE, bool)
    if name == "entries_nodm":
        return (s, amount)
    if name in ("entries", "l1"):
        return (s, amount, dm)
    if name == "slices":
        return (jnp.zeros(AGREE_SLICES[0]), amount, jnp.ones(AGREE_SLICES, bool))
    tree = [jnp.zeros((7, 11)), jnp.zeros(150), jnp.zeros((3, 5, 5))]
    return (tree, amount, [jnp.ones(x.shape, bool) for x in tree])


# A traced fraction for some functions, a traced count for the others (one compile each).
AGREE_KINDS = {"entries": "count", "entries_nodm": "fraction", "l1": "fraction", "slices": "count", "global": "fraction"}


@pytest.fixture(scope="module")
def compiled_paths():
    """{path: {fn name: compiled executable}}, each lowered under its own settings."""
    out = {}
    for path in AGREE_PATHS:
        with _selection.forced(**PATHS[path]):
            fns = {}
            for name, fn in _agree_fns().items():
                amount = jnp.float32(0.0) if AGREE_KINDS[name] == "fraction" else jnp.int32(0)
                fns[name] = jax.jit(fn).lower(*_agree_args(name, amount)).compile()
            out[path] = fns
    return out


def test_compiled_paths_really_differ(compiled_paths):
    """Guard: the monkeypatch took effect (the sort path sorts, the radix path does not)."""
    sort_hlo = compiled_paths["sort"]["entries"].as_text()
    radix_hlo = compiled_paths["radix-small-chunks"]["entries"].as_text()
    sort_op = re.compile(r"\ssort\(")  # an HLO sort instruction (not a name in the metadata)
    assert sort_op.search(sort_hlo)
    assert not sort_op.search(radix_hlo)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, spread=st.sampled_from([1, 3, 50]), data=st.data())
def test_sort_and_radix_paths_agree(compiled_paths, seed, spread, data):
    rng = np.random.default_rng(seed)

    def values(shape):
        return rng.integers(-spread, spread + 1, size=shape).astype(np.float32)

    s = values(AGREE_SHAPE)
    if data.draw(st.booleans(), label="nan"):
        s[rng.random(AGREE_SHAPE) < 0.1] = np.nan
    dm = random_mask(AGREE_SHAPE, rng)
    slice_scores = values(AGREE_SLICES[0])
    slice_dm = structured_random_mask(AGREE_SLICES, 0, rng)
    tree = [jnp.asarray(values(x)) for x in [(7, 11), (150,), (3, 5, 5)]]
    tree_dms = [jnp.asarray(random_mask(x.shape, rng)) for x in tree]

    remaining = {
        "entries": int(dm.sum()),
        "entries_nodm": s.size,
        "l1": int(dm.sum()),
        "slices": int(alive(slice_dm, 0).sum()),
        "global": sum(int(m.sum()) for m in tree_dms),
    }
    args = {
        "entries": lambda a: (jnp.asarray(s), a, jnp.asarray(dm)),
        "entries_nodm": lambda a: (jnp.asarray(s), a),
        "l1": lambda a: (jnp.asarray(s), a, jnp.asarray(dm)),
        "slices": lambda a: (jnp.asarray(slice_scores), a, jnp.asarray(slice_dm)),
        "global": lambda a: (tree, a, tree_dms),
    }
    for name, make_args in args.items():
        units = remaining[name]
        if AGREE_KINDS[name] == "count":
            python = data.draw(st.integers(0, units), label=f"{name} count")
            amount = jnp.int32(python)
        else:
            amount = jnp.float32(data.draw(st.floats(0.0, 1.0, width=32), label=f"{name} fraction"))
            python = float(amount)
        k = expected_k(python, units)
        results = {
            path: [np.asarray(x) for x in jax.tree.leaves(fns[name](*make_args(amount)))]
            for path, fns in compiled_paths.items()
        }
        for got, want in zip(results["radix-small-chunks"], results["sort"]):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: radix vs sort")
        # and both equal the reference
        if name in ("entries", "entries_nodm", "l1"):
            scores = np.abs(s) if name == "l1" else s
            cands = None if name == "entries_nodm" else dm
            expected = ~reference_pruned(scores, k, cands)
            if cands is not None:
                expected &= cands
            np.testing.assert_array_equal(results["sort"][0], expected, err_msg=name)
        elif name == "slices":
            np.testing.assert_array_equal(
                results["sort"][0], reference_structured_keep(slice_scores, AGREE_SLICES, 0, k, slice_dm)
            )
        else:
            flat_dm = np.concatenate([np.asarray(m).ravel() for m in tree_dms])
            flat_scores = np.abs(np.concatenate([np.asarray(x).ravel() for x in tree]))
            expected = flat_dm & ~reference_pruned(flat_scores, k, flat_dm)
            np.testing.assert_array_equal(np.concatenate([r.ravel() for r in results["sort"]]), expected)


# --------------------------------------------------------------------------
# Traced out-of-range amounts clamp as documented
# --------------------------------------------------------------------------

CLAMP_CASES = [
    pytest.param(jnp.float32(-0.5), "none", id="fraction=-0.5"),
    pytest.param(jnp.float32(np.nan), "none", id="fraction=nan"),
    pytest.param(jnp.float32(-np.inf), "none", id="fraction=-inf"),
    pytest.param(jnp.float32(1.5), "all", id="fraction=1.5"),
    pytest.param(jnp.float32(np.inf), "all", id="fraction=inf"),
    pytest.param(jnp.int32(-3), "none", id="count=-3"),
    pytest.param(jnp.int32(25), "all", id="count=units+1"),
    pytest.param(jnp.int32(2**31 - 1), "all", id="count=int32max"),
]


@pytest.mark.parametrize("amount, expect", CLAMP_CASES)
def test_traced_out_of_range_amounts_clamp(amount, expect):
    t = jnp.arange(1.0, 25.0).reshape(2, 3, 4)  # 24 entries, 2 slices along dim 0
    key = key_of(0)
    unstructured = {
        "l1": jit_l1(t, amount, None),
        "scores": jit_unstructured_mask(t, amount, None),
        "random": jit_random_unstructured(key, t, amount, None),
        "global": jit_global({"w": t}, amount, None, key, "l1")["w"],
    }
    structured = {
        "ln": jit_ln(t, amount, 2, 0, None),
        "random_structured": jit_random_structured(key, t, amount, 0, None),
        "structured_mask": jit_structured_mask(t[:, 0, 0], t.shape, amount, 0, None),
    }
    for name, mask in {**unstructured, **structured}.items():
        m = np.asarray(mask)
        if expect == "none":
            assert m.all(), f"{name}: nothing should be pruned"
        else:
            assert not m.any(), f"{name}: everything should be pruned"


@pytest.mark.parametrize("amount, expect", CLAMP_CASES)
def test_traced_out_of_range_amounts_clamp_with_default_mask(amount, expect):
    t = jnp.arange(1.0, 25.0).reshape(2, 3, 4)
    dm = np.ones((2, 3, 4), bool)
    dm[:, 1] = False  # slice 1 along dim 1 entirely pruned
    dm[1, 2, 3] = False
    dm = jnp.asarray(dm)
    for name, mask in {
        "l1": jit_l1(t, amount, dm),
        "ln": jit_ln(t, amount, 2, 1, dm),
        "random": jit_random_unstructured(key_of(0), t, amount, dm),
    }.items():
        m = np.asarray(mask)
        if expect == "none":
            np.testing.assert_array_equal(m, np.asarray(dm), err_msg=name)
        else:
            assert not m.any(), f"{name}: everything should be pruned"
