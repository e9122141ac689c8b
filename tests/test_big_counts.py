"""Counts beyond 2**31 entries: unit counts, k, histograms and the tie cut.

jax has no 64-bit integers without x64, so counts on the device are two uint32
words (``_amounts.Count``). Tested cheaply: the counting functions with big
unit counts directly, synthetic histograms of billions of entries, and shapes
made large by broadcasting inside ``jit`` (XLA never materialises them).
``benchmarks/bench_big_counts.py`` runs the real 2.3B-entry case.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxprune as jp
from jaxprune import _methods, _selection
from jaxprune._amounts import (
    Count,
    _float_parts_host,
    _to_limbs_host,
    as_count,
    check_amount,
    count_cumsum,
    count_int,
    count_true,
    host_count,
    prune_count,
    round_scaled,
)

BIG = 3 * 768_000_000  # the tree of the report: 3 leaves of 768M entries


def _ints(count: Count) -> list[int]:
    return [(int(h) << 32) | int(lo) for h, lo in zip(np.ravel(count.hi), np.ravel(count.lo))]


def test_host_k_of_a_big_tree_is_exact_and_becomes_a_count():
    """Before: k became np.int32(k), so amount=1.0 of 2.3B raised OverflowError."""
    for amount, expected in [(0.5, BIG // 2), (1.0, BIG), (BIG, BIG), (2**31, 2**31)]:
        k = prune_count(check_amount(amount), BIG)
        assert k == expected
        assert count_int(_methods.as_k(k)) == expected
    with pytest.raises(ValueError, match=f"amount={BIG + 1} should be smaller than .*={BIG}"):
        prune_count(check_amount(BIG + 1), BIG)


def test_device_rule_for_unit_counts_beyond_2_31():
    rnd = random.Random(5)
    cases = [(rnd.choice([rnd.random(), 0.5, 0.1, 0.3, 1.0, 0.0, rnd.randint(0, 20) / 20]),
              rnd.choice([rnd.randint(2**31, 2**33), BIG, rnd.randint(2**33, 2**50)])) for _ in range(1000)]
    cases += [(0.5, 2**31 + 1), (0.5, 2**31 + 3), (0.25, 2**32 + 2), (1.0, 2**50 - 1)]
    limbs = jnp.asarray([_to_limbs_host(_float_parts_host(a)[0]) for a, _ in cases], jnp.uint32)
    shifts = jnp.asarray([_float_parts_host(a)[1] for a, _ in cases], jnp.int32)
    units = Count(jnp.asarray([n >> 32 for _, n in cases], jnp.uint32),
                  jnp.asarray([n & 0xFFFFFFFF for _, n in cases], jnp.uint32))
    got = _ints(jax.jit(jax.vmap(round_scaled))(limbs, shifts, units))
    assert got == [round(a * n) for a, n in cases]


@pytest.mark.parametrize(
    ("amount", "units", "expected"),
    [
        (jnp.float32(0.5), BIG, BIG // 2),
        (jnp.float32(1.0), BIG, BIG),
        (jnp.uint32(2**31), 2**33, 2**31),  # before: the uint32 wrapped to int32 -2**31 and clamped to 0
        (jnp.uint32(2**32 - 1), 2**33, 2**32 - 1),
        (jnp.uint32(2**31), 10, 10),
        (jnp.int32(2**31 - 1), BIG, 2**31 - 1),
        (jnp.int32(-1), BIG, 0),
    ],
)
def test_traced_amounts_count_beyond_2_31(amount, units, expected):
    k = jax.jit(lambda a, n: prune_count(check_amount(a), n))(amount, host_count(units))
    assert count_int(k) == expected


def test_count_cumsum_and_count_true_are_exact():
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 2**32, size=3000, dtype=np.uint64)
    hi = rng.integers(0, 4, size=3000, dtype=np.uint64)
    got = _ints(count_cumsum(Count(jnp.asarray(hi, jnp.uint32), jnp.asarray(lo, jnp.uint32))))
    assert got == np.cumsum([int(h) << 32 | int(v) for h, v in zip(hi, lo)]).tolist()
    # 5 * 2**30 and 2**32 + 7 True entries, never materialised.
    for shape in [(5, 2**30), (2**32 + 7,)]:
        n = jax.jit(lambda shape=shape: count_true(jnp.broadcast_to(jnp.bool_(True), shape)))()
        assert count_int(n) == int(np.prod(shape, dtype=object))


def _reference_threshold(counts: dict[int, int], k: int) -> tuple[int, int, int]:
    below = 0
    for key in sorted(counts):
        if below + counts[key] >= k:
            return key, k - below, counts[key]
        below += counts[key]
    raise AssertionError("k above the total")


def _synthetic_histogram(counts: dict[int, int]):
    """The histogram callback of uint32 keys with these multiplicities (any size)."""

    def histogram(shift: int, prefix: jax.Array) -> Count:
        hist = np.zeros(1 << 16, object)
        for key, n in counts.items():
            if shift == 0 and key >> 16 != int(prefix) >> 16:
                continue
            hist[(key >> shift) & 0xFFFF] += n
        return Count(jnp.asarray([h >> 32 for h in hist], jnp.uint32),
                     jnp.asarray([h & 0xFFFFFFFF for h in hist], jnp.uint32))

    return histogram


@pytest.mark.parametrize("k", [1, 2**31 - 1, 2**31, 2**31 + 1, 5 * 2**31, 5 * 2**31 + 3, 6 * 2**31 + 10**9 + 17])
def test_radix_threshold_with_billions_of_entries(k):
    """The histogram passes and their running sums with 13.9B entries (some
    bins above 2**32): before, int32 histograms wrapped and everything was pruned."""
    counts = {0: 5 * 2**31, 1: 3, 0x10002: 2**31 + 7, 0xFFFF0000: 10**9 + 10, 0xFFFFFFFF: 2**33}
    threshold, remaining, tied = _selection._threshold(
        _synthetic_histogram(counts), np.dtype(np.uint32), host_count(k)
    )
    assert (int(threshold), count_int(remaining), count_int(tied)) == _reference_threshold(counts, k)


SIZE = (2**10 + 1) * 2**21  # 2**31 + 2**21 entries
ROWS = (SIZE // 2**12, 2**12)


def _zeros() -> jax.Array:
    return jnp.broadcast_to(jnp.float32(0.0), ROWS)  # inside jit: never stored


@pytest.mark.parametrize("k", [2**31 + 12345, SIZE - 1])
def test_histogram_passes_over_a_tensor_beyond_2_31(k):
    """One tensor of 2**31 + 2**21 equal scores: the digit histogram's one bin
    holds them all (before: an int32 bin wrapped to a negative count)."""
    to_keys = _selection.sort_keys

    def threshold():
        x = _zeros()
        hist = jax.tree.map(lambda a: a, _selection._histogram([x], [None], to_keys, 16, jnp.uint32(0)))
        thr, remaining, tied = _selection._threshold(
            lambda shift, prefix: _selection._histogram([x], [None], to_keys, shift, prefix),
            np.dtype(np.uint32), host_count(k))
        return hist, thr, remaining, tied

    with _selection.forced(keep_shapes=False):
        hist, thr, remaining, tied = jax.jit(threshold)()
    zero_key = int(to_keys(jnp.float32(0.0)))
    assert _ints(hist)[zero_key >> 16] == SIZE
    assert (int(thr), count_int(remaining), count_int(tied)) == (zero_key, k, SIZE)


@pytest.mark.parametrize("keep_shapes", [False, True])
@pytest.mark.parametrize("k", [4097, 2**31 + 12345])
def test_tie_cut_over_a_tensor_beyond_2_31(keep_shapes, k):
    """All 2**31 + 2**21 entries tie at the threshold: the first k by position
    are selected (before: the int32 running sum of row counts wrapped)."""
    to_keys = _selection.sort_keys
    row = (k - 1) // ROWS[1]  # the row holding the k-th entry

    def cut(zero):
        # Nothing 2**31 long is ever stored: the flat path reads the scores in a
        # loop, where XLA:CPU keeps a broadcast constant unmaterialised; the
        # shape-keeping path reduces in place (a traced value there, so that
        # XLA does not spend its time constant-folding the reductions).
        zero = zero if keep_shapes else jnp.float32(0.0)
        x = jnp.broadcast_to(zero, ROWS)
        (selected,) = _selection._tie_cut([x], [None], to_keys, to_keys(zero), host_count(k))
        # Only a few rows of the 2 GB mask leave the function (XLA never stores it).
        rows = jnp.concatenate([selected[:1], lax.dynamic_slice_in_dim(selected, row - 1, 3), selected[-1:]])
        return jnp.sum(rows, axis=1, dtype=jnp.int32)

    with _selection.forced(keep_shapes=keep_shapes):
        got = jax.jit(cut)(jnp.float32(0.0))
    assert np.asarray(got).tolist() == [ROWS[1], ROWS[1], (k - 1) % ROWS[1] + 1, 0, 0]
