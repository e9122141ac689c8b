"""Many leaves in one traced selection (issue 11, "Many leaves").

With one device, :func:`select_lowest` lays the arrays' keys end to end and
selects from the concatenation: the compiled code no longer holds a copy of
the radix passes and the tie cut per array (XLA's compile time grew faster
than linearly with that code). These tests check that the masks are those of
the per-array path (what several devices run) and of an independent
reference, and that the traced code grows by a few equations per leaf.
"""

import jax
import jax.extend.core  # ClosedJaxpr, Jaxpr: the submodule is not an attribute of ``jax``
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import _selection
from jaxprune._selection import select_lowest


def reference(scores: list[np.ndarray], cands: list[np.ndarray | None], k: int) -> list[np.ndarray]:
    """The k lowest candidates of the concatenation by a stable sort (NaN last,
    ties by position), as bool arrays of the inputs' shapes."""
    flat = np.concatenate([np.asarray(s, np.float64).ravel() for s in scores])
    cand = np.concatenate([np.ones(s.size, bool) if c is None else c.ravel() for s, c in zip(scores, cands)])
    order = np.lexsort((np.arange(flat.size), flat, ~cand))
    chosen = np.zeros(flat.size, bool)
    chosen[order[:k]] = True
    out, start = [], 0
    for s in scores:
        out.append(chosen[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def distinct_shapes(n: int) -> list[tuple[int, ...]]:
    """``n`` distinct shapes of 0 to 3 dims, an empty one and a 0-d one among them."""
    shapes: list[tuple[int, ...]] = [(), (0, 3), (1,)]
    i = 0
    while len(shapes) < n:
        shapes.append([(5 + i,), (3, 4 + i), (2, 3, 2 + i)][i % 3])
        i += 1
    return shapes[:n]


def tie_heavy(rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Few distinct values (ties inside and across leaves), some NaN and -0.0."""
    out = []
    for s in shapes:
        x = rng.integers(-2, 3, size=s).astype(np.float32)
        x[rng.random(s) < 0.05] = np.nan
        x[x == 0] = np.where(rng.random(np.count_nonzero(x == 0)) < 0.5, -0.0, 0.0)
        out.append(x)
    return out


@jax.jit
def _select(scores, cands, k):
    return select_lowest(scores, cands, k)


def run(scores, cands, k, **settings) -> list[np.ndarray]:
    with _selection.forced(sort_max=0, **settings):
        got = _select([jnp.asarray(s) for s in scores], [None if c is None else jnp.asarray(c) for c in cands],
                      jnp.int32(k))
    return [np.asarray(g) for g in got]


def test_one_device_concatenates_by_default():
    assert jax.device_count() == 1
    assert _selection.concatenates()
    with _selection.forced(concatenate=False):
        assert not _selection.concatenates()


@pytest.mark.parametrize("keep_shapes", [False, True])
@pytest.mark.parametrize("with_cands", [False, True])
def test_concatenated_masks_equal_the_per_array_path_and_the_reference(keep_shapes, with_cands):
    """24 leaves of distinct shapes, ties inside and across leaves, NaN, -0.0;
    the cut at every kind of place (nothing, inside a tie group, everything)."""
    rng = np.random.default_rng(11)
    shapes = distinct_shapes(24)
    scores = tie_heavy(rng, shapes)
    cands = [None if not with_cands or i % 3 == 0 else rng.random(s) < 0.7 for i, s in enumerate(shapes)]
    total = sum(int(np.prod(s)) if c is None else int(c.sum()) for s, c in zip(shapes, cands))
    for k in sorted({0, 1, total // 5, total // 2, total - 3, total - 1, total}):
        want = reference(scores, cands, k)
        joined = run(scores, cands, k, keep_shapes=keep_shapes, concatenate=True)
        apart = run(scores, cands, k, keep_shapes=keep_shapes, concatenate=False)
        for i, (a, b, r) in enumerate(zip(joined, apart, want)):
            assert a.shape == b.shape == shapes[i]
            np.testing.assert_array_equal(a, r, err_msg=f"concatenated, leaf {i}, k {k}")
            np.testing.assert_array_equal(b, r, err_msg=f"per array, leaf {i}, k {k}")


def test_ties_across_leaves_go_to_the_lower_leaf_then_the_lower_index():
    """Every score ties: the first k in leaf order, then flat order, whatever
    the shapes (and a total of prime size: padding makes the rows long)."""
    shapes = [(7, 3), (1,), (0,), (5, 2, 2), (13,), (2, 9)]
    scores = [np.full(s, 0.5, np.float32) for s in shapes]
    total = sum(int(np.prod(s)) for s in shapes)
    assert total == 73  # prime: the flat row view alone would have rows of 1
    for k in range(total + 1):
        got = np.concatenate([g.ravel() for g in run(scores, [None] * len(shapes), k, row_max=8)])
        np.testing.assert_array_equal(got, np.arange(total) < k, err_msg=f"k {k}")


def test_padding_is_never_selected_even_when_every_score_is_nan():
    """The padding has the largest key, like NaN: selecting every candidate
    still selects every real entry, and k - 1 leaves out the last one."""
    shapes = [(3, 5), (11,), (2, 2, 3)]
    scores = [np.full(s, np.nan, np.float32) for s in shapes]
    total = sum(int(np.prod(s)) for s in shapes)
    for k in (total, total - 1):
        got = np.concatenate([g.ravel() for g in run(scores, [None] * 3, k)])
        np.testing.assert_array_equal(got, np.arange(total) < k)


@pytest.mark.parametrize("dtypes", [(np.float32,), (np.float16, ml_dtypes.bfloat16, np.float32), (np.int8, np.int32)])
def test_jitted_global_unstructured_over_many_leaves_of_mixed_dtypes(dtypes):
    """jp.global_unstructured inside jit (the concatenated selection) equals
    the eager leaf-by-leaf selection and the reference on |x| (ties by leaf
    order, then flat index; NaN last), with default masks."""
    rng = np.random.default_rng(12)
    shapes = distinct_shapes(14)
    values = tie_heavy(rng, shapes)
    if not np.issubdtype(dtypes[0], np.floating):
        values = [np.where(np.isnan(v), -128.0, v * 40) for v in values]  # -128 and -80..80: int8 edge values
    tree = {f"l{i:02d}": jnp.asarray(v.astype(dtypes[i % len(dtypes)])) for i, v in enumerate(values)}
    dms = {name: None if i % 4 else jnp.asarray(rng.random(leaf.shape) < 0.8) for i, (name, leaf) in
           enumerate(tree.items())}
    leaves = [np.abs(np.asarray(x, np.float64)) for x in tree.values()]
    cands = [None if m is None else np.asarray(m) for m in dms.values()]
    total = sum(x.size if c is None else int(c.sum()) for x, c in zip(leaves, cands))
    jitted = jax.jit(lambda t, a, d: jp.global_unstructured(t, a, default_masks=d))
    for amount in (0.0, 0.3, 0.5, 0.97, 1.0):
        k = round(amount * total)
        with _selection.forced(sort_max=0):
            got = jitted(tree, jnp.float32(amount), dms)
            eager = jp.global_unstructured(tree, amount, default_masks=dms)
        for name, r, c in zip(tree, reference(leaves, cands, k), cands):
            want = ~r if c is None else c & ~r
            np.testing.assert_array_equal(np.asarray(got[name]), want, err_msg=f"{name} amount {amount}")
            np.testing.assert_array_equal(np.asarray(eager[name]), want, err_msg=f"eager {name} amount {amount}")


def test_jitted_random_global_equals_the_eager_draws():
    """method="random": the draws of every leaf, ranked end to end, give the
    eager path's masks."""
    shapes = distinct_shapes(10)
    tree = [jnp.zeros(s) for s in shapes]
    key = jax.random.key(3)
    with _selection.forced(sort_max=0):
        eager = jp.global_unstructured(tree, 0.4, method="random", key=key)
        jitted = jax.jit(lambda t, a, k: jp.global_unstructured(t, a, method="random", key=k))(
            tree, jnp.float32(0.4), key)
    for a, b in zip(eager, jitted):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jitted_global_equals_torch_global_unstructured():
    """torch's prune.global_unstructured (L1) over 22 modules' weights of
    distinct shapes: the same masks (distinct values, so no tie rule involved)."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    rng = np.random.default_rng(13)
    shapes = [s for s in distinct_shapes(25) if np.prod(s) > 0 and len(s) > 0]
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    holders = [torch.nn.Module() for _ in params]
    for holder, p in zip(holders, params):
        holder.weight = p
    prune.global_unstructured([(h, "weight") for h in holders], pruning_method=prune.L1Unstructured, amount=0.45)
    with _selection.forced(sort_max=0):
        got = jax.jit(lambda t: jp.global_unstructured(t, 0.45))([jnp.asarray(v) for v in values])
    for i, (g, h) in enumerate(zip(got, holders)):
        np.testing.assert_array_equal(np.asarray(g), h.weight_mask.numpy().astype(bool), err_msg=f"leaf {i}")


def _equations(jaxpr: jax.extend.core.Jaxpr) -> int:
    """Equations of a jaxpr and of every jaxpr inside it (cond branches, loop bodies, inner jits)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _equations(sub)
    return count


def _traced_size(n: int, **settings) -> int:
    shapes = [(3, 5 + i) for i in range(n)]  # distinct shapes
    scores = [jax.ShapeDtypeStruct(s, jnp.uint32) for s in shapes]
    with _selection.forced(sort_max=0, keep_shapes=False, **settings):
        closed = jax.make_jaxpr(lambda xs, k: select_lowest(xs, [None] * n, k))(scores, jnp.int32(7))
    return _equations(closed.jaxpr)


def test_traced_code_grows_by_a_few_equations_per_leaf():
    """The selection's code is a fixed kernel plus a few equations per leaf
    (ravel, concatenate, slice, reshape), nested jaxprs included. Code per
    leaf (each array's own histogram loops and tie cut: about 60 equations
    a leaf) made XLA:CPU's compile time grow faster than linearly."""
    small, medium, big = (_traced_size(n) for n in (50, 100, 200))
    per_leaf = (medium - small) / 50
    assert per_leaf <= 8, f"{per_leaf} equations per leaf"
    assert big - medium <= 2.2 * (medium - small)  # linear
    assert (_traced_size(100, concatenate=False) - _traced_size(50, concatenate=False)) / 50 > 20  # the old code
