"""Channel-permutation search for N:M: brute-force optima, invariances, determinism, apex's efficacy, bad input."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune._permute_search as ps
from jaxprune._permute_search import _hashed_triples, n_m_kept, n_m_permutation

# --------------------------------------------------------------------------
# Independent references (NumPy, float64)
# --------------------------------------------------------------------------


def kept_ref(x: np.ndarray, n: int, m: int) -> float:
    """Sum over rows and stripes of the n largest entries (a sort per stripe)."""
    rows, cols = x.shape
    return float(np.sort(np.asarray(x, np.float64).reshape(rows, cols // m, m), axis=-1)[..., m - n:].sum())


def partitions(columns: tuple[int, ...], m: int):
    """Every split of ``columns`` into unordered stripes of m (the stripe of the lowest column first)."""
    if not columns:
        yield []
        return
    for rest in itertools.combinations(columns[1:], m - 1):
        stripe = (columns[0], *rest)
        for tail in partitions(tuple(c for c in columns if c not in stripe), m):
            yield [*stripe, *tail]


def brute_optimum(x: np.ndarray, n: int, m: int) -> float:
    return max(kept_ref(x[:, list(p)], n, m) for p in partitions(tuple(range(x.shape[1])), m))


def integer_scores(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Small integers: every sum is exact, so optima compare with ==."""
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(np.float32)


def apex_efficacy(x: np.ndarray, perm: np.ndarray, n: int = 2, m: int = 4) -> float:
    """apex permutation_tests' efficacy: the share of the gap from default N:M to the
    "50% rows" bound (each row keeps its n/m largest entries) that the permutation closes."""
    default = kept_ref(x, n, m)
    bound = float(np.sort(x, axis=1)[:, x.shape[1] - x.shape[1] * n // m:].sum())
    return (kept_ref(x[:, perm], n, m) - default) / (bound - default)


def check_perm(perm: np.ndarray, cols: int) -> None:
    assert perm.dtype == np.int64 and perm.shape == (cols,)
    assert sorted(perm.tolist()) == list(range(cols))


# --------------------------------------------------------------------------
# n_m_kept
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (0, 4)])
def test_kept_matches_sort_reference(n, m):
    x = integer_scores(0, (5, 4 * m))
    assert float(n_m_kept(x, n, m)) == kept_ref(x, n, m)
    assert float(jax.jit(n_m_kept, static_argnums=(1, 2))(jnp.asarray(x), n, m)) == kept_ref(x, n, m)


def test_kept_half_precision_sums_in_float32():
    x = np.full((64, 64), 1.0 + 2**-7, np.float32)  # 4096 entries: float16/bfloat16 sums would round
    for dtype in (jnp.float16, jnp.bfloat16):
        out = n_m_kept(jnp.asarray(x, dtype), 2, 4)
        assert out.dtype == jnp.float32 and float(out) == 2048 * (1.0 + 2**-7)


# --------------------------------------------------------------------------
# The search: exact on small problems
# --------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 3, 4])
def test_two_stripes_reach_the_brute_force_optimum(m):
    for n in range(1, m):
        for seed in range(3):
            x = integer_scores(seed, (6, 2 * m))
            perm = n_m_permutation(x, n, m)
            check_perm(perm, 2 * m)
            assert kept_ref(x[:, perm], n, m) == brute_optimum(x, n, m), (n, m, seed)


@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (1, 4), (3, 4)])
def test_three_stripes_reach_the_brute_force_optimum(n, m):
    for seed in range(2):
        x = integer_scores(10 + seed, (7, 3 * m))
        perm = n_m_permutation(x, n, m)
        check_perm(perm, 3 * m)
        assert kept_ref(x[:, perm], n, m) == brute_optimum(x, n, m), (n, m, seed)


def test_input_order_does_not_change_the_optimum():
    x = integer_scores(3, (6, 12))
    best = kept_ref(x[:, n_m_permutation(x, 2, 4)], 2, 4)
    rng = np.random.default_rng(0)
    for _ in range(3):
        y = x[rng.permutation(6)][:, rng.permutation(12)]
        assert kept_ref(y[:, n_m_permutation(y, 2, 4)], 2, 4) == best


def test_row_order_gives_the_same_permutation():
    # the search sums rows in exact integers: the order of the rows cannot change a decision
    x = np.random.default_rng(1).random((48, 64))
    perm = n_m_permutation(x, 2, 4)
    assert np.array_equal(n_m_permutation(x[::-1], 2, 4), perm)
    assert np.array_equal(n_m_permutation(x[np.random.default_rng(2).permutation(48)], 2, 4), perm)


# --------------------------------------------------------------------------
# Any problem: a valid permutation, never worse, deterministic
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rows,cols,n,m", [
    (1, 8, 2, 4), (3, 20, 2, 4), (9, 36, 3, 4), (5, 30, 1, 2), (8, 48, 4, 8),
    (4, 64, 8, 16),  # m > 8: the single-column swaps
    (6, 140, 2, 4),  # 35 stripes: hashed triples
])
def test_valid_never_worse_deterministic(rows, cols, n, m):
    x = np.abs(np.random.default_rng(rows * cols).standard_normal((rows, cols)))
    perm = n_m_permutation(x, n, m)
    check_perm(perm, cols)
    assert kept_ref(x[:, perm], n, m) >= kept_ref(x, n, m)
    assert np.array_equal(n_m_permutation(jnp.asarray(x, jnp.float32), n, m), perm)


def test_improves_random_layers_and_half_precision_reads_as_float32():
    x = np.abs(np.random.default_rng(5).standard_normal((48, 64))).astype(np.float32)
    perm = n_m_permutation(x, 2, 4)
    assert kept_ref(x[:, perm], 2, 4) > kept_ref(x, 2, 4)
    xb = jnp.asarray(x, jnp.bfloat16)
    assert np.array_equal(n_m_permutation(xb, 2, 4), n_m_permutation(np.asarray(xb, np.float32), 2, 4))


def test_chunks_of_rows_and_groups_give_the_same_search(monkeypatch):
    x = np.random.default_rng(8).random((40, 64))
    whole = n_m_permutation(x, 2, 4)
    monkeypatch.setattr(ps, "_CHUNK_ELEMENTS", 1200)  # pairs: 4 of 8 groups and 1 row a chunk; triples: 1 and 1
    assert ps._chunks(40, 2, 8, 70, 4) == (1, 4) and ps._chunks(40, 2, 5, 495, 4) == (1, 1)
    assert np.array_equal(n_m_permutation(x, 2, 4), whole)


def test_hashed_triples_are_disjoint_and_vary():
    rounds = [np.asarray(_hashed_triples(35, jnp.uint32(t))) for t in range(3)]
    for r in rounds:
        assert r.shape == (11, 3) and len(set(r.ravel().tolist())) == 33 and r.min() >= 0 and r.max() < 35
    assert not np.array_equal(rounds[0], rounds[1])


def test_max_rounds():
    x = np.random.default_rng(6).random((48, 64))
    assert np.array_equal(n_m_permutation(x, 2, 4, max_rounds=0), np.arange(64))
    one = n_m_permutation(x, 2, 4, max_rounds=1)
    check_perm(one, 64)
    assert kept_ref(x, 2, 4) < kept_ref(x[:, one], 2, 4) <= kept_ref(x[:, n_m_permutation(x, 2, 4)], 2, 4)


@pytest.mark.parametrize("x", [np.ones((4, 16)), np.zeros((4, 16)), np.full((4, 16), 0.25)])
def test_ties_keep_the_identity(x):
    assert np.array_equal(n_m_permutation(x, 2, 4), np.arange(16))


def test_trivial_cases_are_the_identity():
    x = np.random.default_rng(7).random((4, 8))
    assert np.array_equal(n_m_permutation(x, 0, 4), np.arange(8))  # n = 0 keeps nothing
    assert np.array_equal(n_m_permutation(x[:, :4], 2, 4), np.arange(4))  # one stripe
    assert np.array_equal(n_m_permutation(np.zeros((0, 8)), 2, 4), np.arange(8))


# --------------------------------------------------------------------------
# Quality: apex's random 64-channel x 128-filter matrix
# --------------------------------------------------------------------------


def test_efficacy_on_apex_random_matrix():
    # apex permutation_tests: np.random.seed(1); np.random.rand(filters=128, channels=64); its default
    # 2:4 keeps 2852.377 and its strategies reach 32.1-36.6% (optimize_stripe_groups,12,0: 36.6%).
    np.random.seed(1)
    x = np.random.rand(128, 64)
    assert round(kept_ref(x, 2, 4), 3) == 2852.377
    perm = n_m_permutation(x, 2, 4)
    assert apex_efficacy(x, perm) >= 0.36  # measured 0.380


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n,m,err,match", [
    (2, 2, ValueError, "n must be in"), (-1, 4, ValueError, "n must be in"), (0, 0, ValueError, "m must be >= 1"),
    (2.0, 4, TypeError, "n must be an int"), (2, True, TypeError, "m must be an int"),
])
def test_bad_n_m(n, m, err, match):
    with pytest.raises(err, match=match):
        n_m_permutation(np.ones((2, 8)), n, m)
    with pytest.raises(err, match=match):
        n_m_kept(np.ones((2, 8)), n, m)


@pytest.mark.parametrize("x,match", [
    (np.ones(8), r"2-D .*shape \(8,\)"), (np.ones((2, 2, 8)), "2-D"), (np.ones((2, 10)), "10 columns.*m=4"),
])
def test_bad_shapes(x, match):
    with pytest.raises(ValueError, match=match):
        n_m_permutation(x, 2, 4)
    with pytest.raises(ValueError, match=match):
        n_m_kept(x, 2, 4)


@pytest.mark.parametrize("value,match", [
    (-0.5, r"non-negative.*-0.5 at \[1, 3\]"), (np.nan, r"finite.*nan at \[1, 3\]"), (np.inf, "finite.*inf"),
])
def test_bad_values(value, match):
    x = np.ones((2, 8))
    x[1, 3] = value
    with pytest.raises(ValueError, match=match):
        n_m_permutation(x, 2, 4)


def test_bad_types_and_rounds():
    with pytest.raises(TypeError, match="real numbers.*complex"):
        n_m_permutation(np.ones((2, 8), np.complex64), 2, 4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_rounds"):
            n_m_permutation(np.ones((2, 8)), 2, 4, max_rounds=bad)  # type: ignore[arg-type]
