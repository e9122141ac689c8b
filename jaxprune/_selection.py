"""Exact selection of the k lowest scores: the kernel every method stands on.

The contract: given scores and a count ``k``, mark exactly ``k`` candidates, the
ones with the lowest scores. Ties are broken by position (the lower flat index
is selected first; across several arrays, the order is their concatenation),
and NaN ranks above ``+inf`` (selected last).

Why not a sort: on XLA:CPU ``sort``, ``argsort`` and ``top_k`` are single
threaded and 9-25x slower than torch's ``topk`` on millions of values. Instead
the scores become unsigned integer *sort keys* (a monotone bit mapping), and a
radix select finds the key of the k-th lowest candidate with one 65536-bin
histogram per 16 bits of key (two passes over float32 data). Ties at that key
are cut by position with per-row counts, so the count is exact without a
full-length ``cumsum``. Small inputs (the per-slice scores of structured
methods, for instance) take a stable sort instead, which is cheaper there.

Everything here is traceable: ``k`` may be a traced integer, so changing the
amount never recompiles.

Sharding: when the process has several devices, arrays may be sharded, and
flattening or slicing them into chunks would make XLA gather whole parameters
onto every device. The selection then keeps each array's shape: every pass is
an elementwise map plus a reduction, which XLA partitions into per-shard work
and one small all-reduce (a 65536-bin histogram per pass; for the tie cut, one
count per row and one row of the last axis). Results get their input's
sharding (``shard_alike``). The same path runs on GPUs (one scatter per pass
beats chunks there); with one CPU device the chunked path runs instead.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._typing import Array

try:  # where jax <= 0.10 exposes it
    from jax.experimental.shard_alike import shard_alike
except ImportError:  # later jax: the implementation module (no public name found yet)
    try:
        from jax._src.shard_alike import shard_alike
    except ImportError:
        shard_alike = None

#: At most this many values in total take the stable-sort path.
SORT_MAX = 4096
#: Histogram passes split large arrays into chunks of about this many values
#: (XLA:CPU scatters a chunk faster than a whole array, and the scratch space of
#: a training step that may prune stays small).
CHUNK = 1 << 18
#: Row length cap for the tie cut (rows of at most this many values).
ROW_MAX = 4096

#: Keep array shapes (the sharding-safe path)? None: when there are several
#: devices or the backend is not the CPU. Tests set it to force a path (then
#: clear jax's caches).
KEEP_SHAPES: bool | None = None

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS


# --------------------------------------------------------------------------
# Sort keys
# --------------------------------------------------------------------------


def key_dtype(dtype: np.dtype) -> np.dtype:
    """The unsigned key dtype for scores of ``dtype`` (32 or 64 bits)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.uint64) if dtype.itemsize == 8 else np.dtype(np.uint32)


def sort_keys(scores: Array) -> Array:
    """Map real scores to unsigned keys with the same order (NaN above +inf).

    Floats use the IEEE trick (flip all bits of negatives, set the sign bit of
    positives), with every NaN mapped to the largest key; signed integers are
    offset by half their range. ``-0.0`` and ``+0.0`` are equal (a tie).
    """
    dtype = scores.dtype
    if jnp.issubdtype(dtype, jnp.unsignedinteger):
        return scores.astype(key_dtype(dtype))
    if jnp.issubdtype(dtype, jnp.signedinteger):
        udt = key_dtype(dtype)
        sdt = np.int64 if udt == np.uint64 else np.int32
        sign = np.array(1 << (udt.itemsize * 8 - 1), udt)
        return lax.bitcast_convert_type(scores.astype(sdt), udt) ^ sign
    if jnp.issubdtype(dtype, jnp.floating):
        fdt = np.float64 if np.dtype(dtype).itemsize == 8 else np.float32
        udt = key_dtype(fdt)
        x = scores.astype(fdt)
        x = jnp.where(x == 0, jnp.zeros((), fdt), x)  # -0.0 ties with +0.0
        bits = lax.bitcast_convert_type(x, udt)
        sign = np.array(1 << (udt.itemsize * 8 - 1), udt)
        keys = jnp.where(bits >= sign, ~bits, bits | sign)
        return jnp.where(jnp.isnan(x), np.array(np.iinfo(udt).max, udt), keys)
    raise TypeError(f"scores must be real numbers, got dtype {dtype}")


def keeps_shapes() -> bool:
    """Whether selection keeps array shapes: with several devices (arrays may
    be sharded) and off CPU (a GPU scatters a whole array faster than chunks:
    on an H100, random_unstructured of 8192x8192 took 2.2 ms vs 7.8 ms)."""
    if KEEP_SHAPES is not None:
        return KEEP_SHAPES
    return jax.device_count() > 1 or jax.default_backend() != "cpu"


def like(x: Array, t: Array) -> Array:
    """``x`` constrained to ``t``'s sharding (same shape) where arrays may be sharded."""
    if shard_alike is not None and keeps_shapes() and x.shape == t.shape:
        x, _ = shard_alike(x, t)
    return x


# --------------------------------------------------------------------------
# The public kernel
# --------------------------------------------------------------------------


def select_lowest(
    scores: Sequence[Array],
    candidates: Sequence[Array | None],
    k: Array,
    *,
    to_keys: Callable[[Array], Array] = sort_keys,
    on_pass: Callable[[int], None] | None = None,
) -> list[Array]:
    """Mark exactly ``k`` candidates with the lowest keys, ties by position.

    Args:
      scores: arrays whose flat concatenation is the ranked sequence.
      candidates: for each array, a bool array of its shape (False: never
        selected) or None (every entry is a candidate).
      k: int32 scalar, ``0 <= k <= number of candidates`` (the caller clamps).
      to_keys: maps (a chunk of) scores to unsigned sort keys of one dtype; it
        is applied inside each pass, so keys for the whole input never sit in
        memory at once.
      on_pass: called on the host with the pass number (1, 2, ...) when each
        radix pass has run (see :func:`radix_passes`); nothing on the sort path.

    Returns:
      For each array, a bool array of its shape: True where selected.
    """
    k = jnp.asarray(k, jnp.int32)
    out = [jnp.zeros(jnp.shape(x), bool) for x in scores]
    nonempty = [i for i, x in enumerate(scores) if jnp.size(x)]
    if not nonempty:
        return out
    xs = [scores[i] for i in nonempty]
    cs = [candidates[i] for i in nonempty]
    if sum(x.size for x in xs) <= SORT_MAX:
        flat = _select_by_sort([to_keys(jnp.ravel(x)) for x in xs], [_ravel(c) for c in cs], k)
        selected = [sel.reshape(x.shape) for sel, x in zip(flat, xs)]
    else:
        selected = _select_by_radix(xs, cs, k, to_keys, on_pass)
    for i, sel in zip(nonempty, selected):
        out[i] = sel
    return out


def radix_passes(sizes: Sequence[int], key_dtype: np.dtype) -> int:
    """How many histogram passes :func:`select_lowest` makes over inputs of
    these sizes with keys of ``key_dtype`` (0: they take the sort path)."""
    if sum(sizes) <= SORT_MAX:
        return 0
    return np.dtype(key_dtype).itemsize * 8 // _DIGIT_BITS


def _ravel(c: Array | None) -> Array | None:
    return None if c is None else jnp.ravel(c)


def _select_by_sort(keys: list[Array], cands: list[Array | None], k: Array) -> list[Array]:
    flat = jnp.concatenate(keys)
    excluded = jnp.concatenate(
        [jnp.zeros(x.shape, jnp.uint8) if c is None else (~c).astype(jnp.uint8) for x, c in zip(keys, cands)]
    )
    position = lax.iota(jnp.int32, flat.size)
    # Non-candidates sort after every candidate; equal keys keep their order.
    _, _, order = lax.sort((excluded, flat, position), num_keys=2, is_stable=True)
    rank = jnp.zeros(flat.size, jnp.int32).at[order].set(position)
    selected = rank < k
    out, start = [], 0
    for x in keys:
        out.append(selected[start : start + x.size])
        start += x.size
    return out


# --------------------------------------------------------------------------
# Radix select
# --------------------------------------------------------------------------


def _count_digits(hist: Array, keys: Array, live: Array | None, shift: int, prefix: Array) -> Array:
    """Add to ``hist`` the key digits at ``shift`` of the live entries whose
    higher digits equal those of ``prefix`` (any shape: a scatter-add)."""
    udt = prefix.dtype
    higher = shift + _DIGIT_BITS
    digit = ((keys >> np.array(shift, udt)) & np.array(_BINS - 1, udt)).astype(jnp.int32)
    if higher < udt.itemsize * 8:
        same = (keys >> np.array(higher, udt)) == (prefix >> np.array(higher, udt))
        live = same if live is None else live & same
    if live is not None:
        digit = jnp.where(live, digit, _BINS)  # out of range: dropped
    return hist.at[digit].add(1, mode="drop")


def _histogram(
    scores: list[Array],
    cands: list[Array | None],
    to_keys: Callable[[Array], Array],
    shift: int,
    prefix: Array,
) -> Array:
    """The digit histogram of the arrays.

    Where arrays keep their shapes (:func:`keeps_shapes`), one scatter per
    array. Otherwise each array is read flat, in chunks of CHUNK values inside
    a loop, so only one chunk's keys and digits exist at a time (and XLA:CPU
    scatters a chunk faster than a whole array).
    """
    hist = jnp.zeros(_BINS, jnp.int32)
    for x, c in zip(scores, cands):
        if keeps_shapes():
            hist = _count_digits(hist, to_keys(x), c, shift, prefix)
            continue
        x, c = jnp.ravel(x), _ravel(c)
        full = x.size // CHUNK
        if full:

            def body(i: Array, hist: Array, x: Array = x, c: Array | None = c) -> Array:
                start = i * CHUNK
                part = lax.dynamic_slice_in_dim(x, start, CHUNK)
                live = None if c is None else lax.dynamic_slice_in_dim(c, start, CHUNK)
                return _count_digits(hist, to_keys(part), live, shift, prefix)

            hist = lax.fori_loop(0, full, body, hist)
        if x.size % CHUNK:
            tail = full * CHUNK
            hist = _count_digits(hist, to_keys(x[tail:]), None if c is None else c[tail:], shift, prefix)
    return hist


def _threshold(
    histogram: Callable[[int, Array], Array],
    udt: np.dtype,
    k: Array,
    on_pass: Callable[[int], None] | None = None,
) -> tuple[Array, Array, Array]:
    """Radix select of the k-th lowest key, 16 bits per pass.

    Returns ``(threshold, remaining, tied)``: every candidate with a key below
    ``threshold`` is selected, and ``remaining`` of the ``tied`` candidates
    whose key equals it.
    """
    prefix = jnp.zeros((), udt)
    remaining = k  # how many still to select at or above the current prefix
    tied = jnp.zeros((), jnp.int32)
    for number, shift in enumerate(range(udt.itemsize * 8 - _DIGIT_BITS, -1, -_DIGIT_BITS), start=1):
        hist = histogram(shift, prefix)
        cum = jnp.cumsum(hist)
        if on_pass is not None:  # runs once the histogram exists (it is the callback's operand)
            jax.debug.callback(lambda _, number=number: on_pass(number), cum[-1])
        digit = jnp.minimum(_count_below(cum, remaining), _BINS - 1)
        tied = hist[digit]
        remaining = remaining - (cum[digit] - tied)
        prefix = prefix | (digit.astype(udt) << np.array(shift, udt))
    return prefix, remaining, tied


def _select_by_radix(
    scores: list[Array],
    cands: list[Array | None],
    k: Array,
    to_keys: Callable[[Array], Array],
    on_pass: Callable[[int], None] | None = None,
) -> list[Array]:
    """The radix select: the histogram passes, then one mask per array (the
    tie cut only when ties straddle the k-th key)."""
    udt = jax.eval_shape(to_keys, jax.ShapeDtypeStruct((1,), scores[0].dtype)).dtype
    threshold, remaining, tied = _threshold(
        functools.partial(_histogram, scores, cands, to_keys), udt, k, on_pass
    )

    def below_or_equal(_: None) -> list[Array]:
        return [like(_live(to_keys(x) <= threshold, c), x) for x, c in zip(scores, cands)]

    def cut_ties(_: None) -> list[Array]:
        return _tie_cut(scores, cands, to_keys, threshold, remaining)

    return lax.cond(remaining == tied, below_or_equal, cut_ties, None)


def _tie_cut(
    scores: list[Array],
    cands: list[Array | None],
    to_keys: Callable[[Array], Array],
    threshold: Array,
    remaining: Array,
) -> list[Array]:
    """Select keys below ``threshold`` plus the first ``remaining`` equal ones
    (by position), in the arrays' shapes, on the path :func:`keeps_shapes` picks."""
    if keeps_shapes():
        return _tie_cut_in_place(scores, cands, to_keys, threshold, remaining)
    flat = _select_with_tie_cut([jnp.ravel(x) for x in scores], [_ravel(c) for c in cands], to_keys,
                                threshold, remaining)
    return [sel.reshape(x.shape) for sel, x in zip(flat, scores)]


def _count_below(ascending: Array, value: Array) -> Array:
    """``searchsorted(ascending, value, side="left")`` as one vectorized count:
    no loop, so many of them (one per leaf) compile quickly."""
    return jnp.sum(ascending < value, dtype=jnp.int32)


def _live(mask: Array, cand: Array | None) -> Array:
    return mask if cand is None else mask & cand


def _row_length(n: int) -> int:
    """The largest divisor of ``n`` that is at most ROW_MAX."""
    for length in range(min(n, ROW_MAX), 0, -1):
        if n % length == 0:
            return length
    return 1


def _tie_row_counts(
    x: Array, c: Array | None, to_keys: Callable[[Array], Array], threshold: Array, length: int
) -> Array:
    """Per-row counts of candidates whose key equals ``threshold`` (rows of ``length``).

    Counted block by block in a loop: XLA:CPU would otherwise materialise the
    whole comparison as int32 before reducing it (4 bytes per entry).
    """

    def count(part: Array, live: Array | None) -> Array:
        tie = _live(to_keys(part) == threshold, live).reshape(-1, length)
        return jnp.sum(tie, axis=1, dtype=jnp.int32)

    rows = x.size // length
    block = max(1, CHUNK // length)  # rows per loop step
    steps = rows // block
    pieces = []
    if steps:

        def body(i: Array, acc: Array) -> Array:
            start = i * (block * length)
            part = lax.dynamic_slice_in_dim(x, start, block * length)
            live = None if c is None else lax.dynamic_slice_in_dim(c, start, block * length)
            return lax.dynamic_update_slice_in_dim(acc, count(part, live), i * block, 0)

        pieces.append(lax.fori_loop(0, steps, body, jnp.zeros(steps * block, jnp.int32)))
    tail = steps * block * length
    if tail < x.size:
        pieces.append(count(x[tail:], None if c is None else c[tail:]))
    return jnp.concatenate(pieces)


def _select_with_tie_cut(
    scores: list[Array],
    cands: list[Array | None],
    to_keys: Callable[[Array], Array],
    threshold: Array,
    remaining: Array,
) -> list[Array]:
    """Select keys below ``threshold`` plus the first ``remaining`` equal ones.

    Each array is viewed as rows; per-row counts of tied candidates locate the
    row holding the cut, and a cumulative sum over that one row finds the column.
    """
    lengths = [_row_length(x.size) for x in scores]
    counts = jnp.concatenate(
        [_tie_row_counts(x, c, to_keys, threshold, n) for x, c, n in zip(scores, cands, lengths)]
    )
    cum = jnp.cumsum(counts)
    cut_row = _count_below(cum, remaining)
    cut_row = jnp.minimum(cut_row, counts.size - 1)
    in_row = remaining - (cum[cut_row] - counts[cut_row])  # ties to take in the cut row

    rows = [x.size // n for x, n in zip(scores, lengths)]
    offsets = [int(o) for o in np.cumsum([0] + rows[:-1])]
    cut_col = jnp.zeros((), jnp.int32)
    for x, c, length, n_rows, offset in zip(scores, cands, lengths, rows, offsets):
        start = jnp.clip(cut_row - offset, 0, n_rows - 1) * length
        row = to_keys(lax.dynamic_slice_in_dim(x, start, length)) == threshold
        if c is not None:
            row = row & lax.dynamic_slice_in_dim(c, start, length)
        col = _count_below(jnp.cumsum(row, dtype=jnp.int32), in_row)
        inside = (cut_row >= offset) & (cut_row < offset + n_rows)
        cut_col = jnp.where(inside, col, cut_col)

    out = []
    for x, c, length, n_rows, offset in zip(scores, cands, lengths, rows, offsets):
        keys = to_keys(x).reshape(n_rows, length)
        row_ids = lax.broadcasted_iota(jnp.int32, (n_rows, length), 0) + np.int32(offset)
        col_ids = lax.broadcasted_iota(jnp.int32, (n_rows, length), 1)
        before_cut = (row_ids < cut_row) | ((row_ids == cut_row) & (col_ids <= cut_col))
        chosen = (keys < threshold) | ((keys == threshold) & before_cut & (remaining > 0))
        out.append(_live(chosen.reshape(-1), c))
    return out


# --------------------------------------------------------------------------
# The tie cut keeping shapes (arrays that may be sharded)
# --------------------------------------------------------------------------


def _as_rows(x: Array) -> Array:
    """The view the in-place tie cut reads: rows along the last axis (a 1-D
    array is split into rows of at most ROW_MAX, a 0-d one is one row)."""
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        length = _row_length(x.size)
        return x.reshape(x.size // length, length)
    return x


def _row_ids(shape: tuple[int, ...], offset: int) -> Array:
    """Flat row-major index of every position of ``shape``, plus ``offset``."""
    ids = jnp.full(shape, np.int32(offset))
    stride = 1
    for d in range(len(shape) - 1, -1, -1):
        ids = ids + lax.broadcasted_iota(jnp.int32, shape, d) * np.int32(stride)
        stride *= shape[d]
    return ids


def _tie_cut_in_place(
    scores: list[Array],
    cands: list[Array | None],
    to_keys: Callable[[Array], Array],
    threshold: Array,
    remaining: Array,
) -> list[Array]:
    """Select keys below ``threshold`` plus the first ``remaining`` equal ones,
    rows being the last axis: per-row tie counts (one reduction) locate the
    cut row, a masked sum over rows extracts that row for a short cumsum."""
    views = [(_as_rows(x), None if c is None else _as_rows(c)) for x, c in zip(scores, cands)]

    def ties(x: Array, c: Array | None) -> Array:
        return _live(to_keys(x) == threshold, c)

    counts = jnp.concatenate([jnp.sum(ties(x, c), axis=-1, dtype=jnp.int32).ravel() for x, c in views])
    cum = jnp.cumsum(counts)
    cut_row = jnp.minimum(_count_below(cum, remaining), counts.size - 1)
    in_row = remaining - (cum[cut_row] - counts[cut_row])  # ties to take in the cut row

    row_ids, offset = [], 0
    cut_col = jnp.zeros((), jnp.int32)
    for x, c in views:
        ids = _row_ids(x.shape[:-1], offset)
        n_rows = x.size // x.shape[-1]
        row = jnp.sum(ties(x, c) & (ids == cut_row)[..., None], axis=tuple(range(x.ndim - 1)), dtype=jnp.int32)
        col = _count_below(jnp.cumsum(row), in_row)
        inside = (cut_row >= offset) & (cut_row < offset + n_rows)
        cut_col = jnp.where(inside, col, cut_col)
        row_ids.append(ids)
        offset += n_rows

    out = []
    for (x, c), ids, orig in zip(views, row_ids, scores):
        keys = to_keys(x)
        col_ids = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
        ids = ids[..., None]
        before_cut = (ids < cut_row) | ((ids == cut_row) & (col_ids <= cut_col))
        chosen = (keys < threshold) | ((keys == threshold) & before_cut & (remaining > 0))
        out.append(like(_live(chosen, c).reshape(orig.shape), orig))
    return out


# --------------------------------------------------------------------------
# Leaf by leaf, outside jit (big trees of concrete arrays)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ranking:
    """How :func:`select_lowest_by_leaf` makes a leaf's ranked values and keys.

    ``draws``: the leaf's source is a PRNG key and its values are uint32 draws
    of the leaf's shape (and sharding). Otherwise the source is the scores
    array; the keys are those of ``|scores|`` (``absolute``) cast to ``dtype``
    (when given).
    """

    draws: bool = False
    absolute: bool = False
    dtype: np.dtype | None = None

    def values(self, source: Array, leaf: Array) -> Array:
        return like(jax.random.bits(source, leaf.shape, jnp.uint32), leaf) if self.draws else source

    def keys(self, x: Array) -> Array:
        if self.draws:
            return sort_keys(x)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        return sort_keys(jnp.abs(x) if self.absolute else x)


@functools.partial(jax.jit, static_argnames=("ranking", "shift"))
def _leaf_histogram(
    source: Array, leaf: Array, cand: Array | None, prefix: Array, *, ranking: Ranking, shift: int
) -> Array:
    return _histogram([ranking.values(source, leaf)], [cand], ranking.keys, shift, prefix)


@functools.partial(jax.jit, static_argnames=("ranking",))
def _leaf_ties(source: Array, leaf: Array, cand: Array | None, threshold: Array, *, ranking: Ranking) -> Array:
    keys = ranking.keys(ranking.values(source, leaf))
    return jnp.sum(_live(keys == threshold, cand), dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("ranking", "ties"))
def _leaf_keep(
    source: Array,
    leaf: Array,
    cand: Array | None,
    threshold: Array,
    remaining: Array,
    *,
    ranking: Ranking,
    ties: str,
) -> Array:
    """The keep-mask of one leaf: prune keys below ``threshold`` and, of the
    keys equal to it, ``ties="all"``, ``"none"`` or ``"first"`` (the first
    ``remaining`` by position)."""
    x = ranking.values(source, leaf)
    if ties == "first":
        selected = _tie_cut([x], [cand], ranking.keys, threshold, remaining)[0]
    else:
        keys = ranking.keys(x)
        selected = _live(keys <= threshold if ties == "all" else keys < threshold, cand)
    keep = ~selected if cand is None else cand & ~selected
    return like(keep, leaf)


def select_lowest_by_leaf(
    sources: Sequence[Array],
    leaves: Sequence[Array],
    candidates: Sequence[Array | None],
    k: int,
    *,
    ranking: Ranking,
    on_pass: Callable[[int], None] | None = None,
) -> list[Array]:
    """:func:`select_lowest` for concrete inputs, one leaf at a time; returns
    keep-masks (the candidates not selected), with their leaves' shardings.

    The same radix passes, driven from the host: each pass runs one small
    jitted kernel per leaf (compiled once per leaf shape, so a tree of
    hundreds of leaves compiles in seconds, where tracing it whole takes
    minutes) and adds up their histograms; only one leaf's temporaries exist
    at a time. ``leaves`` give each leaf's shape and sharding (the scores
    themselves for L1). The result is bit for bit the traced path's.
    """
    live = [i for i, leaf in enumerate(leaves) if leaf.size]
    # Eager arrays are real buffers: only empty leaves get their (empty) mask now.
    out: list[Array | None] = [None if leaf.size else jnp.zeros(leaf.shape, bool) for leaf in leaves]
    if not live:
        return out
    if sum(leaves[i].size for i in live) <= SORT_MAX:
        values = [ranking.values(sources[i], leaves[i]) for i in live]
        selected = select_lowest(values, [candidates[i] for i in live], np.int32(k), to_keys=ranking.keys)
        for i, sel in zip(live, selected):
            c = candidates[i]
            out[i] = ~sel if c is None else c & ~sel
        return out
    value_dtype = jnp.uint32 if ranking.draws else sources[live[0]].dtype
    udt = jax.eval_shape(ranking.keys, jax.ShapeDtypeStruct((1,), value_dtype)).dtype

    def histogram(shift: int, prefix: Array) -> Array:
        hists = [_leaf_histogram(sources[i], leaves[i], candidates[i], prefix, ranking=ranking, shift=shift)
                 for i in live]
        return functools.reduce(jnp.add, hists)

    # The traced path's passes, run eagerly: each leaf kernel is compiled on its own.
    threshold, remaining, tied = _threshold(histogram, udt, jnp.int32(k), on_pass)
    remaining, tied = int(remaining), int(tied)
    left = remaining  # ties still to select, lowest positions first, in leaf order
    for i in live:
        if remaining == tied:  # every tie is selected: no leaf needs counting
            ties = "all"
        elif left == 0:
            ties = "none"
        else:
            n = int(_leaf_ties(sources[i], leaves[i], candidates[i], threshold, ranking=ranking))
            ties = "all" if n <= left else "first"
        out[i] = _leaf_keep(sources[i], leaves[i], candidates[i], threshold, np.int32(left), ranking=ranking,
                            ties=ties)
        if ties == "all" and remaining != tied:
            left -= n
        elif ties == "first":
            left = 0
    return out
