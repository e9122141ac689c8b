"""The selection kernel: exact k lowest, ties by position, NaN last, on both paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import _selection
from jaxprune._selection import select_lowest, sort_keys


def reference(scores: list[np.ndarray], cands: list[np.ndarray | None], k: int) -> list[np.ndarray]:
    """Stable argsort of the concatenation (NaN last), first k candidates."""
    flat = np.concatenate([s.ravel() for s in scores])
    cand = np.concatenate([np.ones(s.size, bool) if c is None else c.ravel() for s, c in zip(scores, cands)])
    order = np.lexsort((np.arange(flat.size), flat, ~cand))  # numpy sorts NaN last
    chosen = np.zeros(flat.size, bool)
    chosen[order[:k]] = True
    out, start = [], 0
    for s in scores:
        out.append(chosen[start : start + s.size])
        start += s.size
    return out


PATH_SETTINGS = {
    "sort": dict(sort_max=10**9, keep_shapes=False),
    "radix": dict(sort_max=0, keep_shapes=False),
    "radix-small-chunks": dict(sort_max=0, keep_shapes=False, chunk=37, row_max=7),
    "in-place": dict(sort_max=0, keep_shapes=True),
    "in-place-small-rows": dict(sort_max=0, keep_shapes=True, row_max=7),
}


@pytest.fixture(params=list(PATH_SETTINGS))
def path(request):
    """Each selection path: the stable sort, the chunked radix select (one
    device), and the shape-keeping radix select (several devices)."""
    with _selection.forced(**PATH_SETTINGS[request.param]):
        yield request.param


@jax.jit
def _select(scores, cands, k):
    return select_lowest(scores, cands, k)


def run(scores, cands, k):
    cj = [None if c is None else jnp.asarray(c) for c in cands]
    return [np.asarray(x) for x in _select([jnp.asarray(s) for s in scores], cj, jnp.int32(k))]


@pytest.mark.parametrize("k", [0, 1, 5, 50, 199, 200])
def test_ties_everywhere(path, k):
    scores = [np.ones(200, np.float32)]
    (got,) = run(scores, [None], k)
    np.testing.assert_array_equal(got, np.arange(200) < k)


def test_matches_reference_with_many_ties_and_candidates(path):
    rng = np.random.default_rng(1)
    layouts = [(250,), (0, 120), (97, 1, 260), (300, 64)]
    for trial in range(12):
        sizes = layouts[trial % len(layouts)]
        scores = [rng.integers(-3, 4, size=int(n)).astype(np.float32) for n in sizes]
        cands = [None if (trial + i) % 3 == 0 else rng.random(int(n)) < 0.7 for i, n in enumerate(sizes)]
        total = sum(int(n) if c is None else int(c.sum()) for n, c in zip(sizes, cands))
        for k in {0, total // 3, total // 2, total}:
            got = run(scores, cands, k)
            for g, r in zip(got, reference(scores, cands, k)):
                np.testing.assert_array_equal(g, r, err_msg=f"trial {trial} k {k}")


def test_nan_and_infinities_rank_last(path):
    x = np.array([np.nan, 0.1, np.inf, -np.inf, 0.0, -0.0, np.nan, 5.0], np.float32)
    order = []
    for k in range(1, x.size + 1):
        (got,) = run([x], [None], k)
        order.append(int(np.flatnonzero(got & ~np.isin(np.arange(x.size), order))[0]))
    assert order == [3, 4, 5, 1, 7, 2, 0, 6]


def test_integer_and_unsigned_scores(path):
    ints = np.array([5, -7, 0, 2**31 - 1, -(2**31), 3], np.int32)
    (got,) = run([ints], [None], 3)
    np.testing.assert_array_equal(got, [False, True, True, False, True, False])
    uints = np.array([2**32 - 1, 0, 7, 2**31], np.uint32)
    (got,) = run([uints], [None], 2)
    np.testing.assert_array_equal(got, [False, True, True, False])


def test_large_random_input_exact_count():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(3 * _selection.settings().chunk // 2).astype(np.float32)
    x[::1000] = 0.25  # a big tie group straddling chunks
    for k in (1, 12345, x.size // 2):
        (got,) = run([np.abs(x)], [None], k)
        (ref,) = reference([np.abs(x)], [None], k)
        np.testing.assert_array_equal(got, ref)


def test_sort_keys_order():
    x = jnp.array([-np.inf, -2.0, -0.0, 1e-30, 3.0, np.inf, np.nan, -np.nan, 0.0], jnp.float32)
    keys = np.asarray(sort_keys(x))
    assert (np.diff(keys[:6].astype(np.int64)) > 0).all()
    assert keys[2] == keys[8]  # -0.0 ties with +0.0
    assert keys[6] == keys[7] == np.iinfo(np.uint32).max
    half = sort_keys(jnp.array([-1.0, 0.5, 2.0], jnp.bfloat16))
    assert (np.diff(np.asarray(half).astype(np.int64)) > 0).all()


def test_empty_input(path):
    (got,) = run([np.zeros(0, np.float32)], [None], 0)
    assert got.shape == (0,)


@pytest.mark.parametrize("shapes", [[(7, 13)], [(3, 4, 5), (0, 3), (6,), ()], [(2, 1, 9), (40, 1)], [(1, 300)]])
def test_nd_shapes_ties_across_rows(path, shapes):
    """Results keep each input's shape; ties straddle rows, arrays, and the
    cut lands at every position of a row."""
    rng = np.random.default_rng(3)
    scores = [rng.integers(0, 3, size=s).astype(np.float32) for s in shapes]
    cands = [None if i % 2 else rng.random(s) < 0.8 for i, s in enumerate(shapes)]
    total = sum(int(np.prod(s)) if c is None else int(c.sum()) for s, c in zip(shapes, cands))
    for k in sorted({0, 1, total // 4, total // 2, total - 1, total} - {-1}):
        got = run(scores, cands, k)
        for g, r, s in zip(got, reference(scores, cands, k), shapes):
            assert g.shape == tuple(s)
            np.testing.assert_array_equal(g.ravel(), r, err_msg=f"shapes {shapes} k {k}")


def test_leaf_by_leaf_selection_matches_the_reference(path):
    """The host-driven, one-kernel-per-leaf selection (global pruning outside
    jit) cuts ties across leaves exactly like the traced one."""
    rng = np.random.default_rng(4)
    shapes = [(30, 17), (0, 4), (5,), (12, 40), (1,), (25, 9)]
    for trial in range(6):
        scores = [rng.integers(-2, 3, size=s).astype(np.float32) for s in shapes]
        cands = [None if (trial + i) % 2 else rng.random(s) < 0.75 for i, s in enumerate(shapes)]
        total = sum(int(np.prod(s)) if c is None else int(c.sum()) for s, c in zip(shapes, cands))
        for k in sorted({0, 1, total // 3, total // 2, total - 1, total}):
            arrays = [jnp.asarray(s) for s in scores]
            keep = _selection.select_lowest_by_leaf(
                arrays, arrays, [None if c is None else jnp.asarray(c) for c in cands], k, ranking=_selection.Ranking())
            for got, ref, c, s in zip(keep, reference(scores, cands, k), cands, shapes):
                expected = ~ref.reshape(s) if c is None else c & ~ref.reshape(s)
                np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"trial {trial} k {k}")


def test_leaf_by_leaf_random_draws_equal_the_traced_draws(path):
    keys = [jax.random.key(i) for i in range(3)]
    shapes = [(40, 50), (7,), (30, 3, 3)]
    ranking = _selection.Ranking(draws=True)
    leaves = [jnp.zeros(s) for s in shapes]
    keep = _selection.select_lowest_by_leaf(keys, leaves, [None] * 3, 1234, ranking=ranking)
    draws = [jax.random.bits(k, s, jnp.uint32) for k, s in zip(keys, shapes)]
    traced = jax.jit(lambda d: select_lowest(d, [None] * 3, jnp.int32(1234)))(draws)
    for got, sel in zip(keep, traced):
        np.testing.assert_array_equal(np.asarray(got), ~np.asarray(sel))


def test_forced_settings_key_the_jit_cache():
    """A function jitted under other settings is traced again, never served
    stale from jax's cache (no jax.clear_caches() needed)."""
    traces = []

    @jax.jit
    def f(x):
        traces.append(_selection.settings())  # runs once per trace
        return select_lowest([x], [None], jnp.int32(3))[0]

    x = jnp.arange(300.0)[::-1]
    expected = np.arange(300) >= 297
    for settings in [{}, {}, {"sort_max": 0}, {"sort_max": 0}, {}, {"sort_max": 0, "keep_shapes": True}]:
        with _selection.forced(**settings):
            np.testing.assert_array_equal(np.asarray(f(x)), expected)
    default = _selection.Settings()
    assert traces == [default, _selection.Settings(sort_max=0), _selection.Settings(sort_max=0, keep_shapes=True)]
    assert _selection.settings() == default


def test_forced_refuses_unknown_settings():
    with pytest.raises(TypeError, match=r"unknown settings \['SORT_MAX'\].*'sort_max'"):
        with _selection.forced(SORT_MAX=0):
            pass
