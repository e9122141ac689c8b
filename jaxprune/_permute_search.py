"""Channel permutation for N:M sparsity: reorder a weight's input channels so N:M keeps more.

N:M sparsity keeps the ``n`` largest of every ``m`` consecutive input
channels (a "stripe" of ``m`` columns). Which channels share a stripe is an
accident of the layer's layout; permuting the columns (and, in the model, the
producer of those channels the same way, so the function is unchanged) lets
large entries avoid competing in one stripe. This is Pool & Yu's channel
permutation (NeurIPS 2021; NVIDIA ASP / apex ``permutation_lib``), as jitted
programs (one ``lax.while_loop`` per phase below).

The search (:func:`n_m_permutation`) is a local search over groups of stripes,
in rounds of disjoint groups that all move at once:

1. Pairs. A round-robin (circle-method) schedule pairs the ``S`` stripes, so a
   round is ``S // 2`` disjoint pairs and every pair meets once a cycle of
   ``S - 1`` rounds (``S`` when ``S`` is odd). In each pair every split of
   its ``2m`` columns into two stripes is scored (``C(2m, m) / 2``: 3 for
   ``m = 2``, 35 for ``m = 4``, 6435 for ``m = 8``; beyond ``m = 8`` only the
   ``m * m`` single-column swaps) and the pair takes its best split when it
   is strictly better. The phase ends after a full cycle without a move.
2. Triples (``m <= 4``), which escape many of the pairs' local optima (apex's
   ``optimize_stripe_groups`` with 12 columns): every split of 3 stripes'
   ``3m`` columns (5775 for 2:4). With at most ``_TRIPLE_MAX_STRIPES``
   stripes a cycle visits every triple once; beyond, round ``t`` groups the
   stripes three by three in the order of an integer hash of ``(stripe, t)``,
   and the phase ends after ``2 * S`` rounds without a move.
3. Back to 1 while 2 moved; the search stops when neither phase moves, or
   after ``max_rounds`` rounds of either kind.

Exact and the same on every backend: the scores are rounded on the host to
integers of ``QUANT_BITS`` bits relative to the largest score (a power-of-two
scale, so the rounding is exact and backend-free), and the search sums them in
integers (two 16-bit limbs), so no decision depends on the order of a float
reduction and a move must gain at least one unit (it cannot cycle). A final
float64 check on the host returns the identity if the result kept less.

Work: a pair round scores ``rows * (S // 2) * C(2m, m)`` candidate stripes of
``m`` entries (70 per pair for 2:4), a triple round ``rows * (S // 3) *
C(3m, m)`` (495 per triple), in chunks of rows and groups that gather at
most ``_CHUNK_ELEMENTS`` entries (about 16 MiB of int32), so memory stays
bounded whatever the layer (one group's subsets at least: 12870 x 8 entries
for 4:8 pairs). A pair cycle is every stripe pair once:
for a 4096 x 4096 2:4 layer 1.5e8 candidates a round and 1023 rounds. On a
CPU bound big layers with ``max_rounds`` (``benchmarks/bench_permute.py``
measures time and efficacy against rounds).

>>> import numpy as np
>>> w = np.array([[9.0, 8.0, 1.0, 0.5], [1.0, 0.5, 9.0, 8.0]])  # 1:2, stripes {0, 1} and {2, 3}
>>> perm = n_m_permutation(w, 1, 2)
>>> perm.tolist(), float(n_m_kept(w, 1, 2)), float(n_m_kept(w[:, perm], 1, 2))
([0, 2, 1, 3], 20.0, 34.0)
"""

from __future__ import annotations

import functools
import itertools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._patterns import check_n_m
from ._typing import Array, ArrayLike

#: Bits the scores are rounded to (relative to the largest score) for the exact integer search.
QUANT_BITS = 20
_LIMB = 16  # sums are held as hi * 2**16 + lo
_FULL_SPLIT_MAX_M = 8  # up to this m every split of a stripe pair is scored; beyond, single swaps
_TRIPLE_MAX_M = 4  # after the pairs converge, triples of stripes (5775 splits for m = 4) ...
_TRIPLE_MAX_STRIPES = 32  # ... when the layer has at most this many stripes (every triple once a cycle)
_CHUNK_ELEMENTS = 1 << 22  # entries gathered at once (row x group x subset x m): about 16 MiB of int32 each


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def n_m_kept(scores: ArrayLike, n: int, m: int) -> Array:
    """The total score N:M keeps: the ``n`` largest of every ``m`` consecutive columns, summed over rows.

    Args:
      scores: 2-D ``(rows, columns)`` importances (e.g. ``|W|`` with the
        matmul's input axis last); ``columns`` a multiple of ``m``.
      n: entries kept per stripe, ``0 <= n < m``.
      m: the stripe (group) size.

    Returns:
      A float32 scalar (float16 / bfloat16 scores are summed in float32).

    >>> import numpy as np
    >>> float(n_m_kept(np.array([[1.0, 4.0, 2.0, 3.0], [5.0, 0.0, 0.0, 1.0]]), 2, 4))
    13.0
    """
    n, m = check_n_m(n, m)
    x = jnp.asarray(scores)
    _check_shape(x.shape, x.dtype, m)
    return _kept(x.astype(jnp.float32), n=n, m=m)


def n_m_permutation(scores: ArrayLike, n: int, m: int, *, max_rounds: int | None = None) -> np.ndarray:
    """A permutation of the columns of ``scores`` under which N:M keeps more (channel permutation).

    Args:
      scores: 2-D ``(rows, columns)`` non-negative importances (e.g. ``|W|``)
        with the N:M groups along axis 1 (``m`` consecutive columns form a
        stripe). Weights that share input channels are given as one matrix,
        their rows stacked (a conv kernel as ``(out * kh * kw, in)``).
        float16 / bfloat16 are read as float32.
      n: entries kept per stripe, ``0 <= n < m`` (2 for 2:4).
      m: the stripe size (4 for 2:4); ``columns`` must be a multiple of it.
      max_rounds: stop after this many rounds (a round moves up to
        ``columns // (2 * m)`` disjoint stripe pairs, or ``columns // (3 * m)``
        triples); None: run until no pair or triple moves (see the module
        docstring).

    Returns:
      An int64 NumPy array ``perm``: column ``j`` of ``scores[:, perm]`` is
      column ``perm[j]`` of ``scores``. ``n_m_kept(scores[:, perm], n, m)`` is
      never below the identity's (the identity is returned when nothing
      improves), and the result is deterministic: no randomness, and the
      search runs in exact integer arithmetic, so every backend returns the
      same permutation.

    Raises:
      ValueError: ``scores`` not 2-D, columns not a multiple of ``m``,
        negative, NaN or infinite scores; ``n`` / ``m`` as in
        :func:`jaxprune.n_m_mask`.

    >>> import numpy as np
    >>> w = np.array([[4.0, 3.0, 0.0, 1.0], [0.0, 1.0, 4.0, 3.0]])  # 1:2: the large entries share a stripe
    >>> perm = n_m_permutation(w, 1, 2)
    >>> perm.tolist(), float(n_m_kept(w, 1, 2)), float(n_m_kept(w[:, perm], 1, 2))
    ([0, 2, 1, 3], 10.0, 14.0)
    """
    n, m = check_n_m(n, m)
    check_max_rounds(max_rounds)
    x = _host_scores(scores, m)
    rows, cols = x.shape
    identity = np.arange(cols, dtype=np.int64)
    stripes = cols // m
    if n == 0 or stripes < 2 or rows == 0 or max_rounds == 0 or not np.any(x):
        return identity
    if rows * n >= 1 << 25:  # a triple's total, rows * n * 2**QUANT_BITS * 3, fits the two int32 limbs
        raise ValueError(f"scores has {rows} rows; the exact search supports rows * n < 2**25 (n={n}): "
                         "search on a subset of the rows")
    q = _quantize(x)
    phases: list[np.ndarray | None] = [_round_robin(stripes)]  # None: hashed triples
    if m <= _TRIPLE_MAX_M and stripes >= 3:
        phases.append(_triple_rounds(stripes) if stripes <= _TRIPLE_MAX_STRIPES else None)
    budget = np.iinfo(np.int32).max if max_rounds is None else int(max_rounds)
    perm = jnp.arange(cols, dtype=jnp.int32)
    idle_phases, hashed_start = 0, 0
    while budget > 0 and idle_phases < len(phases):  # pairs, then triples, ... until neither moves
        for schedule in phases:
            before = perm
            perm, ran = _run_phase(q, perm, schedule, hashed_start, n, m, budget)
            budget -= ran
            hashed_start += ran if schedule is None else 0
            idle_phases = idle_phases + 1 if bool(jnp.all(perm == before)) else 1
            if budget <= 0 or idle_phases >= len(phases):
                break
    perm = np.asarray(perm).astype(np.int64)
    if _kept_host(x[:, perm], n, m) < _kept_host(x, n, m):  # quantization cannot make it worse by more
        return identity
    return perm


def check_max_rounds(max_rounds: object) -> None:
    """``max_rounds`` must be None or an int >= 0 (a ValueError naming it otherwise)."""
    if max_rounds is not None and (isinstance(max_rounds, (bool, np.bool_))
                                   or not isinstance(max_rounds, numbers.Integral) or max_rounds < 0):
        raise ValueError(f"max_rounds must be None or an int >= 0, got {max_rounds!r}")


def _run_phase(q: np.ndarray, perm: Array, schedule: np.ndarray | None, start: int, n: int, m: int,
               limit: int) -> tuple[Array, int]:
    """Rounds from ``perm`` until ``limit`` rounds or an idle cycle: a table's rounds, or (None) hashed
    triples from round ``start``, idle after ``_hashed_idle_rounds(stripes)`` rounds without a move."""
    rows, cols = q.shape
    stripes = cols // m
    hashed = schedule is None
    if schedule is None:
        groups, idle = (stripes // 3, 3), _hashed_idle_rounds(stripes)
        schedule = np.zeros((1, 1, 3), np.int32)
    else:
        groups, idle = schedule.shape[1:], schedule.shape[0]
    subsets, _ = _candidate_table(m, groups[1])
    chunk, group_chunk = _chunks(rows, n, groups[0], len(subsets), m)
    padded = -(-rows // chunk) * chunk
    q = np.pad(q, ((0, padded - rows), (0, 0)))
    perm, ran = _search(jnp.asarray(q), perm, jnp.asarray(schedule), jnp.asarray(start, jnp.uint32),
                        jnp.asarray(min(limit, np.iinfo(np.int32).max), jnp.int32), jnp.asarray(idle, jnp.int32),
                        n=n, m=m, chunk=chunk, group_chunk=group_chunk, hashed=hashed)
    return perm, int(ran)


def _hashed_idle_rounds(stripes: int) -> int:
    return 2 * stripes


# --------------------------------------------------------------------------
# Validation and host-side preparation
# --------------------------------------------------------------------------


def _check_shape(shape: tuple[int, ...], dtype: np.dtype, m: int) -> None:
    if len(shape) != 2:
        raise ValueError(f"scores must be 2-D (rows, columns) with the N:M groups along axis 1, got shape "
                         f"{tuple(shape)}: stack the rows of weights that share input channels")
    if shape[1] % m:
        raise ValueError(f"scores has {shape[1]} columns (shape {tuple(shape)}), which is not a multiple of "
                         f"m={m}: N:M stripes cover the columns exactly")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"scores must be real numbers, got dtype {dtype}")


def _host_scores(scores: ArrayLike, m: int) -> np.ndarray:
    """``scores`` as a float64 NumPy array, checked: 2-D, columns a multiple of m, finite, >= 0."""
    raw = np.asarray(scores)
    _check_shape(raw.shape, raw.dtype, m)
    x = raw.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"scores must be finite, got {x[r, c]} at [{r}, {c}]")
    if x.size and x.min() < 0:
        r, c = np.unravel_index(int(np.argmin(x)), x.shape)
        raise ValueError(f"scores must be non-negative importances (e.g. |W|), got {x[r, c]} at [{r}, {c}]")
    return x


def _quantize(x: np.ndarray) -> np.ndarray:
    """Round down to integers below ``2**QUANT_BITS``, scaled by a power of two (exact in float64)."""
    _, exponent = np.frexp(x.max())  # max < 2**exponent
    return np.floor(np.ldexp(x, QUANT_BITS - int(exponent))).astype(np.int32)


def _kept_host(x: np.ndarray, n: int, m: int) -> float:
    rows, cols = x.shape
    return float(np.sort(x.reshape(rows, cols // m, m), axis=-1)[..., m - n:].sum())


@functools.cache
def _candidate_table(m: int, g: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``subsets`` (K, m): column choices among a group's ``g * m`` slots (stripe i holds slots
    ``i*m .. i*m+m-1``); ``candidates`` (J, g): the subsets that become the group's new stripes, every
    split of the slots into ``g`` unordered stripes (beyond ``_FULL_SPLIT_MAX_M``, pairs only: the
    single-column swaps). Candidate 0 is the identity."""
    if m <= _FULL_SPLIT_MAX_M:
        combos = list(itertools.combinations(range(g * m), m))  # (0..m-1) first
        index = {c: i for i, c in enumerate(combos)}

        def splits(left: tuple[int, ...]) -> list[list[int]]:  # the stripe holding the lowest slot first
            if not left:
                return [[]]
            out = []
            for rest in itertools.combinations(left[1:], m - 1):
                stripe = (left[0], *rest)
                remaining = tuple(i for i in left if i not in stripe)
                out += [[index[stripe], *tail] for tail in splits(remaining)]
            return out

        return np.array(combos, np.int32), np.array(splits(tuple(range(g * m))), np.int32)
    if g != 2:
        raise ValueError(f"groups of {g} stripes need m <= {_FULL_SPLIT_MAX_M}, got m={m}")
    first, second = list(range(m)), list(range(m, 2 * m))
    subsets = [first, second]
    for i in range(m):
        for j in range(m, 2 * m):
            a, b = first.copy(), second.copy()
            a[i], b[j - m] = j, i
            subsets += [a, b]
    return np.array(subsets, np.int32), np.arange(len(subsets), dtype=np.int32).reshape(-1, 2)


def _round_robin(stripes: int) -> np.ndarray:
    """(rounds, pairs, 2): the circle method; every pair of stripes meets once per cycle of rounds."""
    s = stripes + stripes % 2  # odd: a dummy stripe, whose partner sits the round out
    ring = list(range(1, s))
    rounds = []
    for r in range(s - 1):
        order = [0] + ring[r:] + ring[:r]
        pairs = [(order[i], order[s - 1 - i]) for i in range(s // 2)]
        rounds.append([p for p in pairs if max(p) < stripes])
    return np.array(rounds, np.int32)


def _triple_rounds(stripes: int) -> np.ndarray:
    """(rounds, stripes // 3, 3): every triple of stripes once, packed first-fit into rounds of disjoint
    triples; a round with fewer triples is padded with ``(stripes, stripes, stripes)``, a group that
    never moves."""
    todo = list(itertools.combinations(range(stripes), 3))
    width = stripes // 3
    rounds = []
    while todo:
        used: set[int] = set()
        this, rest = [], []
        for t in todo:
            if len(this) < width and not used.intersection(t):
                this.append(t)
                used.update(t)
            else:
                rest.append(t)
        rounds.append(this + [(stripes,) * 3] * (width - len(this)))
        todo = rest
    return np.array(rounds, np.int32)


def _chunks(rows: int, n: int, groups: int, subsets: int, m: int) -> tuple[int, int]:
    """(rows, groups) scored at once: at most ``_CHUNK_ELEMENTS`` candidate stripes (more only when one
    group's subsets exceed it), and a chunk's integer sum below 2**31."""
    group_chunk = max(1, min(groups, _CHUNK_ELEMENTS // (subsets * m)))
    exact = (1 << (31 - QUANT_BITS)) // max(n, 1)  # chunk * n * 2**QUANT_BITS < 2**31
    memory = max(1, _CHUNK_ELEMENTS // (group_chunk * subsets * m))
    return max(1, min(rows, exact, memory)), group_chunk


# --------------------------------------------------------------------------
# The jitted search
# --------------------------------------------------------------------------


def _top_n_sum(values: list[Array], n: int) -> Array:
    """The sum of the ``n`` largest of ``values`` (same-shape arrays), by bubble passes of min/max."""
    m = len(values)
    v = list(values)
    largest = n <= m - n
    passes = n if largest else m - n
    picked = []
    for p in range(passes):
        for i in range(m - 1 - p):
            lo, hi = jnp.minimum(v[i], v[i + 1]), jnp.maximum(v[i], v[i + 1])
            v[i], v[i + 1] = (lo, hi) if largest else (hi, lo)
        picked.append(v[m - 1 - p])
    if largest:
        return functools.reduce(jnp.add, picked) if picked else jnp.zeros_like(v[0])
    return functools.reduce(jnp.add, v[: m - passes]) if m - passes else jnp.zeros_like(v[0])


@functools.partial(jax.jit, static_argnames=("n", "m"))
def _kept(x: Array, n: int, m: int) -> Array:
    rows, cols = x.shape
    g = x.reshape(rows, cols // m, m)
    return jnp.sum(_top_n_sum([g[..., i] for i in range(m)], n), dtype=jnp.float32)


def _hashed_triples(stripes: int, t: Array) -> Array:
    """(stripes // 3, 3) disjoint triples: the stripes in the order of a 32-bit integer hash of
    (stripe, t), three at a time. A bijective hash (distinct keys), integers only: the same on every
    backend, and no random state."""
    key = lax.iota(jnp.uint32, stripes) * jnp.uint32(0x9E3779B1) + t * jnp.uint32(0x85EBCA77)
    key = (key ^ (key >> 15)) * jnp.uint32(0x2C1B3C6D)
    key = (key ^ (key >> 12)) * jnp.uint32(0x297A2D39)
    key = key ^ (key >> 15)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    return order[: stripes // 3 * 3].reshape(-1, 3)


def _split(s: Array) -> tuple[Array, Array]:
    return s >> _LIMB, s & ((1 << _LIMB) - 1)


@functools.partial(jax.jit, static_argnames=("n", "m", "chunk", "group_chunk", "hashed"))
def _search(q: Array, perm: Array, schedule: Array, start: Array, limit: Array, idle_limit: Array,
            *, n: int, m: int, chunk: int, group_chunk: int, hashed: bool) -> tuple[Array, Array]:
    """Rounds from ``perm`` until ``idle_limit`` rounds in a row move nothing or ``limit`` rounds:
    (the permutation, the rounds run). Round ``r`` takes ``schedule[r % len(schedule)]``, or with
    ``hashed`` the triples of :func:`_hashed_triples` at ``start + r``."""
    rows, cols = q.shape
    stripes = cols // m
    rounds, groups, g = schedule.shape
    if hashed:
        groups, g = stripes // 3, 3
    subsets, candidates = _candidate_table(m, g)  # constants of the program
    chunks = rows // chunk
    q_chunks = q.reshape(chunks, chunk, cols)

    def group_columns(perm: Array, group: Array) -> Array:  # (groups, g*m) original column ids
        held = perm.reshape(stripes, m)
        return jnp.concatenate([held[jnp.minimum(group[:, i], stripes - 1)] for i in range(g)], axis=1)

    def subset_sums(columns: Array) -> tuple[Array, Array]:  # (groups, K) exact sums, as (hi, lo)
        def one_block(cols_block: Array) -> tuple[Array, Array]:  # (group_chunk, g*m) -> (group_chunk, K)
            def body(c: int, acc: tuple[Array, Array]) -> tuple[Array, Array]:
                block = q_chunks[c][:, cols_block.T]  # (chunk, g*m, group_chunk)
                kept = _top_n_sum([block[:, subsets[:, i]] for i in range(m)], n)  # (chunk, K, group_chunk)
                hi, lo = _split(jnp.sum(kept, axis=0, dtype=jnp.int32).T)
                acc_hi, acc_lo = acc[0] + hi, acc[1] + lo
                carry, acc_lo = _split(acc_lo)
                return acc_hi + carry, acc_lo

            zero = jnp.zeros((group_chunk, len(subsets)), jnp.int32)
            return lax.fori_loop(0, chunks, body, (zero, zero))

        blocks = -(-groups // group_chunk)
        padded = jnp.pad(columns, ((0, blocks * group_chunk - groups), (0, 0)))
        hi, lo = lax.map(one_block, padded.reshape(blocks, group_chunk, g * m))
        return hi.reshape(-1, len(subsets))[:groups], lo.reshape(-1, len(subsets))[:groups]

    def best_split(hi: Array, lo: Array) -> Array:  # (groups,) the first candidate of the largest total
        c_lo = functools.reduce(jnp.add, [lo[:, candidates[:, i]] for i in range(g)])
        c_hi = functools.reduce(jnp.add, [hi[:, candidates[:, i]] for i in range(g)])
        carry, c_lo = _split(c_lo)
        c_hi = c_hi + carry
        top = jnp.max(c_hi, axis=1, keepdims=True)
        return jnp.argmax(jnp.where(c_hi == top, c_lo, -1), axis=1).astype(jnp.int32)

    def step(state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        perm, r, idle = state
        group = _hashed_triples(stripes, start + r.astype(jnp.uint32)) if hashed else schedule[r % rounds]
        columns = group_columns(perm, group)
        best = jnp.where(group[:, 0] < stripes, best_split(*subset_sums(columns)), 0)  # padding never moves
        chosen = jnp.asarray(subsets[candidates].reshape(-1, g * m))[best]  # each group's new order of its slots
        moved = jnp.take_along_axis(columns, chosen, axis=1)
        held = perm.reshape(stripes, m)
        for i in range(g):
            held = held.at[group[:, i]].set(moved[:, i * m:(i + 1) * m], mode="drop")
        held = jnp.sort(held, axis=1)  # a stripe's columns in ascending order: one form per set
        return held.reshape(-1), r + 1, jnp.where(jnp.any(best != 0), 0, idle + 1)

    def running(state: tuple[Array, Array, Array]) -> Array:
        _, r, idle = state
        return (r < limit) & (idle < idle_limit)

    perm, ran, _ = lax.while_loop(running, step, (perm, jnp.int32(0), jnp.int32(0)))
    return perm, ran
