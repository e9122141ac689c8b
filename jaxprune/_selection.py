"""Exact selection of the k lowest scores: the kernel every method stands on.

The contract: given scores and a count ``k``, mark exactly ``k`` candidates, the
ones with the lowest scores. Ties are broken by position (the lower flat index
is selected first; across several arrays, the order is their concatenation),
and NaN ranks above ``+inf`` (selected last).

Why not a sort: on XLA:CPU ``sort``, ``argsort`` and ``top_k`` are single
threaded and much slower than torch's ``topk`` on millions of values (see
benchmarks/). Instead the scores become unsigned integer *sort keys* (a
monotone bit mapping), and a radix select finds the key of the k-th lowest
candidate with one 65536-bin histogram per 16 bits of key (two passes over
float32 data). Ties at that key are cut by position with per-row counts, so
the count is exact without a full-length ``cumsum``. Small inputs (the
per-slice scores of structured methods, for instance) take a stable sort
instead, which is cheaper there.

Everything here is traceable: ``k`` may be a traced integer, so changing the
amount never recompiles.

Counts are exact beyond 2**31 entries without x64: ``k``, histogram bins and
running sums are two-word :class:`~jaxprune._amounts.Count` values, each
scatter counts fewer than 2**32 entries into uint32 bins, and arrays are
addressed by rows (int32 row indices), never by int32 flat positions.

How it runs (the sort threshold, chunk and row sizes, whether shapes are
kept and whether several arrays are laid end to end) is :class:`Settings`,
changed for a block with :func:`forced`.

Many arrays (a tree of hundreds of leaves): with one device, their keys are
laid end to end and selected as one array (:func:`concatenates`), so the
compiled code is one kernel plus a concatenation and a split, whatever the
number of arrays. Code per array made XLA's compile time grow faster than
linearly with their number (benchmarks/bench_leaves.py).

Sharding: when the process has several devices, arrays may be sharded, and
flattening or slicing them into chunks would make XLA gather whole parameters
onto every device. The selection then keeps each array's shape: every pass is
an elementwise map plus a reduction, which XLA partitions into per-shard work
and one small all-reduce (a 65536-bin histogram per pass; for the tie cut, one
count per row and one row of the last axis). Results get their input's
sharding (:func:`like`). The same path runs on GPUs (one scatter per pass
beats chunks there); with one CPU device the chunked path runs instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._amounts import (
    Count,
    as_count,
    count_add,
    count_cumsum,
    count_equal,
    count_int,
    count_int32,
    count_less,
    count_sub,
    count_true,
    host_count,
)
from ._sharding import CHAIN, check_chain, constrain, explicit_sharding
from ._typing import Array

_R = TypeVar("_R")

#: At most this many values in total take the stable-sort path (the default of
#: :class:`Settings`).
SORT_MAX = 4096
#: Histogram passes split large arrays into chunks of about this many values
#: (XLA:CPU scatters a chunk faster than a whole array, and the scratch space of
#: a training step that may prune stays small).
CHUNK = 1 << 18
#: Row length cap for the tie cut (rows of at most this many values).
ROW_MAX = 4096
#: Several arrays of at most this many values in total are selected from as
#: one, laid end to end (compile time linear in the number of arrays, for a
#: copy of their keys: 256 MiB of 32-bit keys at this size); bigger groups are
#: selected array by array, copying nothing.
CONCAT_MAX = 1 << 26
#: Concrete host-resident inputs of at most this many values in total are
#: selected in NumPy, with nothing to compile (see jaxprune/_host.py).
HOST_MAX = 1 << 24


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the selection runs. ``keep_shapes``: keep array shapes (the
    sharding-safe path); None picks it when there are several devices or the
    backend is not the CPU. ``concatenate``: select from several arrays laid
    end to end; None picks it when there is one device. ``host``: let
    concrete inputs in host memory (up to ``host_max`` values) take the NumPy
    path. The others are the sizes above."""

    keep_shapes: bool | None = None
    concatenate: bool | None = None
    concat_max: int = CONCAT_MAX
    sort_max: int = SORT_MAX
    chunk: int = CHUNK
    row_max: int = ROW_MAX
    host: bool = True
    host_max: int = HOST_MAX
    sharding: tuple[str, ...] = CHAIN


# A jit-cache-keyed context: a jitted function traced under other settings is
# traced again, never served from the cache (jax.make_user_context).
_SETTINGS = jax.make_user_context(Settings())


def settings() -> Settings:
    """The settings in force (read while tracing)."""
    return _SETTINGS.value


@contextlib.contextmanager
def forced(**changes: object) -> Iterator[Settings]:
    """Run the selection with other :class:`Settings` inside the block (tests,
    benchmarks): ``with forced(keep_shapes=True, sort_max=0): ...``.

    jax's jit caches are keyed on the settings, so a kernel compiled under
    other settings is never reused.

    >>> with forced(sort_max=0) as s:
    ...     s.sort_max, settings().sort_max
    (0, 0)
    >>> settings().sort_max == SORT_MAX
    True
    """
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"forced() got unknown settings {unknown}; expected some of {sorted(names)}")
    if "sharding" in changes:
        changes["sharding"] = check_chain(changes["sharding"])  # type: ignore[arg-type] - checked there
    new = dataclasses.replace(settings(), **changes)
    with _SETTINGS(new):
        yield new


_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS


# --------------------------------------------------------------------------
# Sort keys
# --------------------------------------------------------------------------


def key_dtype(dtype: jax.typing.DTypeLike) -> np.dtype:
    """The unsigned key dtype for scores of ``dtype`` (32 or 64 bits)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.uint64) if dtype.itemsize == 8 else np.dtype(np.uint32)


def sort_keys(scores: Array) -> Array:
    """Map real scores to unsigned keys with the same order (NaN above +inf).

    Floats use the IEEE trick (flip all bits of negatives, set the sign bit of
    positives), with every NaN mapped to the largest key; signed integers are
    offset by half their range. ``-0.0`` and ``+0.0`` are equal (a tie);
    subnormals keep their order (the keys are read from the bits).

    >>> keys = sort_keys(jnp.array([1e-40, 0.0, -0.0, -1e-40]))
    >>> [int(a > b) for a, b in zip(keys.tolist(), keys.tolist()[1:])]  # 1e-40 > 0 == -0 > -1e-40
    [1, 0, 1]
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
        x = scores.astype(fdt)  # exact, subnormals included (conversions are not flushed)
        # On the bits, never a float comparison: XLA:CPU compares with subnormals
        # flushed to zero, which would tie every |x| < 2**-126 with 0.
        bits = lax.bitcast_convert_type(x, udt)
        sign = np.array(1 << (udt.itemsize * 8 - 1), udt)
        bits = jnp.where(bits == sign, np.array(0, udt), bits)  # -0.0 ties with +0.0
        keys = jnp.where(bits >= sign, ~bits, bits | sign)
        return jnp.where(jnp.isnan(x), np.array(np.iinfo(udt).max, udt), keys)
    raise TypeError(f"scores must be real numbers, got dtype {dtype}")


def magnitude_keys(x: Array, dtype: np.dtype | None = None) -> Array:
    """Sort keys of ``|x|``, exact: an integer's magnitude is taken in the
    unsigned type of its width (``|int8(-128)|`` is 128, where ``jnp.abs``
    wraps to -128). ``dtype`` (from :func:`magnitude_dtype`) puts arrays of
    several dtypes on one exact scale.

    >>> import jax.numpy as jnp
    >>> keys = magnitude_keys(jnp.array([-128, 127, -1], jnp.int8))
    >>> keys.dtype.name, keys.tolist()
    ('uint32', [128, 127, 1])
    """
    if jnp.issubdtype(x.dtype, jnp.integer):
        udt = np.dtype(f"uint{x.dtype.itemsize * 8}")
        u = x.astype(udt)
        magnitude = jnp.where(x < 0, np.array(0, udt) - u, u) if jnp.issubdtype(x.dtype, jnp.signedinteger) else u
        return sort_keys(magnitude if dtype is None else magnitude.astype(dtype))
    x = x if dtype is None else x.astype(dtype)
    fdt = np.float64 if np.dtype(x.dtype).itemsize == 8 else np.float32
    bits = magnitude_bits(x.astype(fdt))  # exact: conversions keep subnormals
    sign = np.array(1 << (bits.dtype.itemsize * 8 - 1), bits.dtype)
    return jnp.where(jnp.isnan(x), np.array(np.iinfo(bits.dtype).max, bits.dtype), bits | sign)


def magnitude_bits(x: Array) -> Array:
    """The bits of ``|x|`` for a float ``x`` (32 or 64 bits), as unsigned ints
    ordered as the magnitudes (NaN above inf). Integer operations only: on
    XLA:CPU, ``jnp.abs`` or a compare fused with the bitcast may see
    subnormals as zero (flush-to-zero)."""
    udt = key_dtype(x.dtype)
    return lax.bitcast_convert_type(x, udt) & np.array((1 << (udt.itemsize * 8 - 1)) - 1, udt)


def magnitude_dtype(dtypes: Sequence[np.dtype]) -> np.dtype | None:
    """One dtype that holds the magnitudes of all these dtypes exactly (None:
    a single dtype, ranked as it is), so that arrays of several dtypes rank on
    one scale. Raises ``TypeError`` for a mix no dtype holds exactly.

    >>> magnitude_dtype([jnp.float16, jnp.bfloat16, jnp.float32]).name
    'float32'
    >>> magnitude_dtype([jnp.int8, jnp.int32]).name
    'uint32'
    """
    kinds = sorted({np.dtype(d) for d in dtypes}, key=str)
    if len(kinds) <= 1:
        return None
    floats = [d for d in kinds if jnp.issubdtype(d, jnp.floating)]
    ints = [d for d in kinds if not jnp.issubdtype(d, jnp.floating)]
    if not floats:
        return np.dtype(f"uint{max(d.itemsize for d in ints) * 8}")
    wide = max(d.itemsize for d in floats) == 8 or any(d.itemsize == 4 for d in ints)
    fdt = np.dtype(np.float64 if wide else np.float32)
    exact_bits = 53 if wide else 24  # integers up to 2**bits are exact floats
    too_wide = [d for d in ints if d.itemsize * 8 > exact_bits]
    # canonicalize_dtype(int64) is int64 exactly when x64 is on (jax.config.jax_enable_x64, which stubs lack)
    if too_wide or (wide and not jax.dtypes.canonicalize_dtype(jnp.int64) == jnp.int64):
        names = ", ".join(d.name for d in kinds)
        raise TypeError(
            f"cannot rank leaves of dtypes {names} on one scale exactly: "
            + ("no float holds those integers exactly" if too_wide else "that needs float64, and x64 is off")
            + "; cast the leaves (or their importance_scores) to one dtype first"
            + ("" if too_wide else ", or enable x64 (jax.config.update('jax_enable_x64', True))")
        )
    return fdt


def keeps_shapes() -> bool:
    """Whether selection keeps array shapes: with several devices (arrays may
    be sharded) and off CPU (a GPU scatters a whole array faster than chunks;
    benchmarks/gpu_paths.py measures both), unless :func:`forced` says."""
    forced_value = settings().keep_shapes
    if forced_value is not None:
        return forced_value
    return jax.device_count() > 1 or jax.default_backend() != "cpu"


def concatenates() -> bool:
    """Whether several arrays are selected from as one, their keys laid end to
    end (a copy of the keys): with one device (no array is sharded, so the
    concatenation gathers nothing), unless :func:`forced` says."""
    forced_value = settings().concatenate
    if forced_value is not None:
        return forced_value
    return jax.device_count() == 1


def placed(x: Array, t: object) -> Array:
    """An eager result ``x`` placed as the concrete array ``t``:
    ``jax.device_put`` where it is placed otherwise, whichever ways of the
    chain ran inside (the API's boundary). Traced values pass unchanged.

    >>> import jax.numpy as jnp
    >>> t = jnp.ones(2)
    >>> placed(jnp.zeros(2, bool), t).sharding == t.sharding
    True
    """
    if x is None or not isinstance(t, jax.Array) or np.shape(x) != t.shape:
        return x
    return constrain(x, t, ("device_put",))


def like(x: Array, t: Array) -> Array:
    """``x`` with ``t``'s sharding (same shape) where arrays may be sharded:
    traced or concrete, in auto or explicit sharding mode, on every supported
    jax (the ways are in jaxprune/_sharding.py). An explicit-sharding type
    is kept on one device too (it is part of the mask's type there)."""
    if x.shape == t.shape and (keeps_shapes() or explicit_sharding(t) is not None):
        return constrain(x, t, settings().sharding)
    return x


# --------------------------------------------------------------------------
# The public kernel
# --------------------------------------------------------------------------


def select_lowest(
    scores: Sequence[Array],
    candidates: Sequence[Array | None],
    k: int | Array | Count,
    *,
    to_keys: Callable[[Array], Array] = sort_keys,
    on_pass: Callable[[int], None] | None = None,
) -> list[Array]:
    """Mark exactly ``k`` candidates with the lowest keys, ties by position.

    Args:
      scores: arrays whose flat concatenation is the ranked sequence.
      candidates: for each array, a bool array of its shape (False: never
        selected) or None (every entry is a candidate).
      k: ``0 <= k <= number of candidates`` (the caller clamps): a
        :class:`~jaxprune._amounts.Count` (exact beyond 2**31), or an int32
        scalar or Python int.
      to_keys: maps (a chunk of) scores to unsigned sort keys of one dtype; it
        is applied inside each pass, so keys for the whole input never sit in
        memory at once.
      on_pass: called on the host with the pass number (1, 2, ...) when each
        radix pass has run (see :func:`radix_passes`); nothing on the sort path.

    Returns:
      For each array, a bool array of its shape: True where selected.
    """
    k = as_count(k)
    if any(explicit_sharding(x) is not None for x in scores):
        return _in_auto_mode(
            lambda xs, cs, k: select_lowest(xs, cs, k, to_keys=to_keys, on_pass=on_pass), scores, candidates, k
        )
    out = [jnp.zeros(jnp.shape(x), bool) for x in scores]
    nonempty = [i for i, x in enumerate(scores) if jnp.size(x)]
    if not nonempty:
        return out
    xs = [scores[i] for i in nonempty]
    cs = [candidates[i] for i in nonempty]
    if sum(x.size for x in xs) <= settings().sort_max:
        flat = _select_by_sort([to_keys(jnp.ravel(x)) for x in xs], [_ravel(c) for c in cs], count_int32(k))
        # like(): the flat sort gathers; the masks go back to their scores' sharding
        selected = [like(sel.reshape(x.shape), x) for sel, x in zip(flat, xs)]
    elif (len(xs) > 1 and concatenates() and sum(x.size for x in xs) <= settings().concat_max
          and len({_key_dtype(to_keys, x) for x in xs}) == 1):
        selected = _select_concatenated(xs, cs, k, to_keys, on_pass)
    else:
        selected = _select_by_radix(xs, cs, k, to_keys, on_pass)
    for i, sel in zip(nonempty, selected):
        out[i] = sel
    return out


def _in_auto_mode(
    select: Callable[[list[Array], list[Array | None], Count], list[Array]],
    scores: Sequence[Array],
    candidates: Sequence[Array | None],
    k: Count,
) -> list[Array]:
    """``select(scores, candidates, k)`` with jax's explicit-sharding types
    switched off inside (``jax.sharding.auto_axes``; every array it reads is
    an argument: auto mode refuses explicit-typed values from outside), its
    masks typed as their scores. Inside, XLA shards the passes as in auto
    mode: explicit types would refuse a histogram scatter or a sort of
    sharded values."""
    shardings = [explicit_sharding(x) for x in scores]
    mesh = next(s for s in shardings if s is not None).mesh
    out_sharding = [_replicated(mesh) if s is None else s for s in shardings]
    auto = cast(Callable[..., list[Array]], jax.sharding.auto_axes(select, out_sharding=out_sharding))
    return auto(list(scores), list(candidates), k)


def _replicated(mesh: jax.sharding.AbstractMesh | jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def radix_passes(sizes: Sequence[int], key_dtype: np.dtype) -> int:
    """How many histogram passes :func:`select_lowest` makes over inputs of
    these sizes with keys of ``key_dtype`` (0: they take the sort path)."""
    if sum(sizes) <= settings().sort_max:
        return 0
    return np.dtype(key_dtype).itemsize * 8 // _DIGIT_BITS


def _ravel(c: Array | None) -> Array | None:
    return None if c is None else jnp.ravel(c)


def _key_dtype(to_keys: Callable[[Array], Array], x: Array) -> np.dtype:
    return np.dtype(jax.eval_shape(to_keys, jax.ShapeDtypeStruct((1,), x.dtype)).dtype)


def _unchanged(keys: Array) -> Array:
    return keys


def _select_concatenated(
    scores: list[Array],
    cands: list[Array | None],
    k: Count,
    to_keys: Callable[[Array], Array],
    on_pass: Callable[[int], None] | None,
) -> list[Array]:
    """Several arrays as one: the radix select of their keys laid end to end,
    split back into the arrays' shapes.

    Selecting from the concatenation is the contract itself (ties by position
    in it), so the masks are bit for bit those of the arrays taken one by one,
    and the compiled code no longer grows with the number of arrays beyond a
    concatenation and a split. Scores of one dtype are concatenated before
    their keys are made (one kernel; per array, XLA:CPU compiles one kernel
    each). The cost: a copy of the keys (4 bytes per entry, 8 for 64-bit
    keys), briefly next to the concatenated scores, and when an array has
    candidates, a copy of those (1 byte per entry). The keys are padded with
    the largest key up to a multiple of ``row_max``, so that the flat row view
    has long rows whatever the sizes; padding ranks after every entry (largest
    key, last positions) and the caller's ``k`` is at most the number of
    candidates, so it is never selected.
    """
    if len({x.dtype for x in scores}) == 1:  # one key computation (XLA: one kernel, not one per array)
        keys = [to_keys(jnp.concatenate([jnp.ravel(x) for x in scores]))]
    else:
        keys = [to_keys(jnp.ravel(x)) for x in scores]
    pad = -sum(x.size for x in scores) % settings().row_max
    udt = keys[0].dtype
    keys.append(jnp.full(pad, np.iinfo(udt).max, udt))
    cand = None
    if any(c is not None for c in cands):
        parts = [jnp.ones(x.size, bool) if c is None else jnp.ravel(c) for x, c in zip(scores, cands)]
        cand = jnp.concatenate([*parts, jnp.zeros(pad, bool)])
    (selected,) = _select_by_radix([jnp.concatenate(keys)], [cand], k, _unchanged, on_pass)
    out, start = [], 0
    for x in scores:
        out.append(selected[start : start + x.size].reshape(x.shape))
        start += x.size
    return out


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

#: Histogram bins are uint32: exact for up to this many entries per scatter
#: (bigger arrays are counted in parts, added as two-word counts).
_BIN_MAX = (1 << 32) - 1


def _count_digits(hist: Array, keys: Array, live: Array | None, shift: int, prefix: Array) -> Array:
    """Add to ``hist`` (uint32) the key digits at ``shift`` of the live entries
    whose higher digits equal those of ``prefix`` (any shape: a scatter-add)."""
    udt = prefix.dtype
    higher = shift + _DIGIT_BITS
    digit = ((keys >> np.array(shift, udt)) & np.array(_BINS - 1, udt)).astype(jnp.int32)
    if higher < udt.itemsize * 8:
        same = (keys >> np.array(higher, udt)) == (prefix >> np.array(higher, udt))
        live = same if live is None else live & same
    if live is not None:
        digit = jnp.where(live, digit, _BINS)  # out of range: dropped
    return hist.at[digit].add(np.uint32(1), mode="drop")


def _zero_hist() -> Array:
    return jnp.zeros(_BINS, jnp.uint32)


def _histogram(
    scores: list[Array],
    cands: list[Array | None],
    to_keys: Callable[[Array], Array],
    shift: int,
    prefix: Array,
) -> Count:
    """The digit histogram of the arrays, as two-word counts (exact at any size).

    Where arrays keep their shapes (:func:`keeps_shapes`), one scatter per
    array. Otherwise each array is read as rows (:func:`_rows`), a block of
    rows of about ``chunk`` values per loop step, so only one block's keys and
    digits exist at a time (and XLA:CPU scatters a chunk faster than a whole
    array). Each scatter counts fewer than 2**32 entries into uint32 bins.
    """
    zero = jnp.zeros(_BINS, jnp.uint32)
    parts = []
    for x, c in zip(scores, cands):
        if keeps_shapes() and x.size <= _BIN_MAX:
            parts.append(_count_digits(_zero_hist(), to_keys(x), c, shift, prefix))
            continue
        parts.extend(_block_histogram(part, to_keys, shift, prefix) for part in _row_blocks(x, c))
    if sum(x.size for x in scores) <= _BIN_MAX:  # no bin can carry: one word is exact
        return Count(zero, functools.reduce(jnp.add, parts))
    return functools.reduce(count_add, [Count(zero, p) for p in parts])


def _rows(x: Array) -> Array:
    """The flat row view: ``x`` as ``(rows, length)``, ``length`` the largest
    divisor of its size up to ``row_max`` (a free reshape). Row indices, not
    flat positions, address it, so int32 indices reach beyond 2**31 entries."""
    length = _row_length(x.size)
    if x.size // length > np.iinfo(np.int32).max:
        raise ValueError(
            f"cannot select among {x.size} entries: its rows of {length} (the largest divisor of the size up to "
            f"{settings().row_max}) are too many to index with int32; reshape the scores"
        )
    return x.reshape(x.size // length, length)


def _row_blocks(x: Array, c: Array | None) -> list[tuple[Array, Array | None, int, int, int]]:
    """``(rows, cand rows, first, last, block)``: ranges of the row view of
    fewer than 2**32 entries each, read ``block`` rows per loop step."""
    rows = _rows(x)
    crows = None if c is None else c.reshape(rows.shape)
    n_rows, length = rows.shape
    per_part = max(1, _BIN_MAX // length)
    block = max(1, settings().chunk // length)
    return [(rows, crows, first, min(n_rows, first + per_part), block) for first in range(0, n_rows, per_part)]


def _block_histogram(
    part: tuple[Array, Array | None, int, int, int], to_keys: Callable[[Array], Array], shift: int, prefix: Array
) -> Array:
    rows, crows, first, last, block = part
    steps = (last - first) // block

    def body(i: Array, hist: Array) -> Array:
        start = first + i * block
        live = None if crows is None else _row_block(crows, start, block)
        return _count_digits(hist, to_keys(_row_block(rows, start, block)), live, shift, prefix)

    hist = lax.fori_loop(0, steps, body, _zero_hist()) if steps else _zero_hist()
    tail = first + steps * block
    if tail < last:
        live = None if crows is None else crows[tail:last].reshape(-1)
        hist = _count_digits(hist, to_keys(rows[tail:last].reshape(-1)), live, shift, prefix)
    return hist


def _row_block(rows: Array, start: Array, block: int) -> Array:
    """Rows ``start`` to ``start + block`` of the row view, flat. Below 2**31
    entries, one slice of the flat array (XLA:CPU reads it in place, where a
    2-D slice made flat costs a copy); beyond, a 2-D slice (row indices)."""
    length = rows.shape[1]
    if rows.size <= np.iinfo(np.int32).max:
        return lax.dynamic_slice_in_dim(rows.reshape(-1), start * length, block * length)
    return lax.dynamic_slice_in_dim(rows, start, block).reshape(-1)


def _threshold(
    histogram: Callable[[int, Array], Count],
    udt: np.dtype,
    k: Count,
    on_pass: Callable[[int], None] | None = None,
    size: int = _BIN_MAX + 1,
) -> tuple[Array, Count, Count]:
    """Radix select of the k-th lowest key, 16 bits per pass.

    Returns ``(threshold, remaining, tied)``: every candidate with a key below
    ``threshold`` is selected, and ``remaining`` of the ``tied`` candidates
    whose key equals it (counts as two words: exact beyond 2**31). ``size``
    bounds the histograms' total (static: below 2**32, one-word sums suffice).
    """
    prefix = jnp.zeros((), udt)
    remaining = k  # how many still to select at or above the current prefix
    tied = as_count(jnp.zeros((), jnp.uint32))
    for number, shift in enumerate(range(udt.itemsize * 8 - _DIGIT_BITS, -1, -_DIGIT_BITS), start=1):
        hist = histogram(shift, prefix)
        cum = count_cumsum(hist, size <= _BIN_MAX)
        # hist and cum are Counts of arrays (the cast: a Count's words may also be NumPy scalars)
        if on_pass is not None:  # runs once the histogram exists (it is the callback's operand)
            jax.debug.callback(lambda _, number=number: on_pass(number), cast(Array, cum.lo)[-1])
        digit = jnp.minimum(jnp.sum(count_less(cum, remaining), dtype=jnp.int32), _BINS - 1)
        tied = Count(cast(Array, hist.hi)[digit], cast(Array, hist.lo)[digit])
        remaining = count_sub(remaining, count_sub(Count(cast(Array, cum.hi)[digit], cast(Array, cum.lo)[digit]), tied))
        prefix = prefix | (digit.astype(udt) << np.array(shift, udt))
    return prefix, remaining, tied


def _select_by_radix(
    scores: list[Array],
    cands: list[Array | None],
    k: Count,
    to_keys: Callable[[Array], Array],
    on_pass: Callable[[int], None] | None = None,
) -> list[Array]:
    """The radix select: the histogram passes, then one mask per array (the
    tie cut only when ties straddle the k-th key)."""
    udt = jax.eval_shape(to_keys, jax.ShapeDtypeStruct((1,), scores[0].dtype)).dtype
    threshold, remaining, tied = _threshold(
        functools.partial(_histogram, scores, cands, to_keys), udt, k, on_pass, sum(x.size for x in scores)
    )

    def below_or_equal(_: None) -> list[Array]:
        return [like(_live(to_keys(x) <= threshold, c), x) for x, c in zip(scores, cands)]

    def cut_ties(_: None) -> list[Array]:
        return _tie_cut(scores, cands, to_keys, threshold, remaining)

    return lax.cond(count_equal(remaining, tied), below_or_equal, cut_ties, None)


def _count_below(ascending: Array, value: Array) -> Array:
    """``searchsorted(ascending, value, side="left")`` as one vectorized count:
    no loop, so many of them (one per leaf) compile quickly."""
    return jnp.sum(ascending < value, dtype=jnp.int32)


def _live(mask: Array, cand: Array | None) -> Array:
    return mask if cand is None else mask & cand


def _row_length(n: int) -> int:
    """The largest divisor of ``n`` that is at most ``row_max``."""
    for length in range(min(n, settings().row_max), 0, -1):
        if n % length == 0:
            return length
    return 1


# --------------------------------------------------------------------------
# The tie cut
# --------------------------------------------------------------------------


def _as_rows(x: Array) -> Array:
    """The rows the tie cut reads. Keeping shapes: rows along the last axis
    (a 1-D array is split into rows of at most ``row_max``, a 0-d one is one
    row). Otherwise the flat row view, :func:`_rows`."""
    if not keeps_shapes():
        return _rows(x)
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        return _rows(x)
    return x


def _row_ids(shape: tuple[int, ...], offset: int) -> Array:
    """Row-major index of every position of ``shape``, plus ``offset`` (int32:
    the caller checks that the rows fit)."""
    ids = jnp.full(shape, np.int32(offset))
    stride = 1
    for d in range(len(shape) - 1, -1, -1):
        ids = ids + lax.broadcasted_iota(jnp.int32, shape, d) * np.int32(stride)
        stride *= shape[d]
    return ids


def _row_tie_counts(rows: Array, crows: Array | None, ties: Callable[[Array, Array | None], Array]) -> Array:
    """Tied candidates per row (int32, the rows' leading shape). Keeping
    shapes, one reduction; otherwise block by block in a loop: XLA:CPU would
    otherwise materialise the whole comparison as int32 before reducing it
    (4 bytes per entry)."""

    def count(part: Array, live: Array | None) -> Array:
        return jnp.sum(ties(part, live), axis=-1, dtype=jnp.int32)

    if keeps_shapes():
        return count(rows, crows)
    n_rows, length = rows.shape
    block = max(1, settings().chunk // length)  # rows per loop step
    steps = n_rows // block
    pieces = []
    if steps:

        def body(i: Array, acc: Array) -> Array:
            part = _row_block(rows, i * block, block).reshape(block, length)
            live = None if crows is None else _row_block(crows, i * block, block).reshape(block, length)
            return lax.dynamic_update_slice_in_dim(acc, count(part, live), i * block, 0)

        pieces.append(lax.fori_loop(0, steps, body, jnp.zeros(steps * block, jnp.int32)))
    tail = steps * block
    if tail < n_rows:
        pieces.append(count(rows[tail:], None if crows is None else crows[tail:]))
    return jnp.concatenate(pieces)


def _cut_row(rows: Array, crows: Array | None, ids: Array, local: Array, cut_row: Array,
             ties: Callable[[Array, Array | None], Array]) -> Array:
    """The tie flags of row ``cut_row`` of these rows (``local``: its index
    here, clipped). Keeping shapes, a masked sum over rows (no gather across
    shards); otherwise one dynamic slice of the flat row view."""
    if keeps_shapes():
        picked = ties(rows, crows) & (ids == cut_row)[..., None]
        return jnp.sum(picked, axis=tuple(range(rows.ndim - 1)), dtype=jnp.int32)
    row = lax.dynamic_slice_in_dim(rows, local, 1)
    crow = None if crows is None else lax.dynamic_slice_in_dim(crows, local, 1)
    return ties(row, crow)[0].astype(jnp.int32)


def _tie_cut(
    scores: list[Array],
    cands: list[Array | None],
    to_keys: Callable[[Array], Array],
    threshold: Array,
    remaining: Count,
) -> list[Array]:
    """Select keys below ``threshold`` plus the first ``remaining`` equal ones
    (by position), in the arrays' shapes.

    Each array is read as rows (:func:`_as_rows`): per-row counts of tied
    candidates (int32: a row is short) and their two-word running sum (exact
    beyond 2**31) locate the row holding the cut, and a cumulative sum over
    that one row finds the column. Rows are numbered across the arrays, in
    order, with int32 (at most 2**31 - 1 rows in all).
    """
    views = [(_as_rows(x), None if c is None else _as_rows(c)) for x, c in zip(scores, cands)]
    n_rows = [x.size // x.shape[-1] for x, _ in views]
    if sum(n_rows) > np.iinfo(np.int32).max:
        raise ValueError(f"cannot cut ties over {sum(n_rows)} rows (at most 2**31 - 1): reshape the scores")

    def ties(x: Array, c: Array | None) -> Array:
        return _live(to_keys(x) == threshold, c)

    counts = jnp.concatenate([_row_tie_counts(x, c, ties).ravel() for x, c in views])
    cum = count_cumsum(as_count(counts), sum(x.size for x in scores) <= _BIN_MAX)
    cut_row = jnp.minimum(jnp.sum(count_less(cum, remaining), dtype=jnp.int32), counts.size - 1)
    # cum is a Count of arrays (the cast: a Count's words may also be NumPy scalars)
    before = count_sub(Count(cast(Array, cum.hi)[cut_row], cast(Array, cum.lo)[cut_row]), as_count(counts[cut_row]))
    in_row = count_int32(count_sub(remaining, before))  # ties to take in the cut row (< its length)
    any_left = (remaining.hi | remaining.lo) != 0

    row_ids, offset = [], 0
    cut_col = jnp.zeros((), jnp.int32)
    for (x, c), rows_here in zip(views, n_rows):
        ids = _row_ids(x.shape[:-1], offset)
        local = jnp.clip(cut_row - offset, 0, rows_here - 1)
        col = _count_below(jnp.cumsum(_cut_row(x, c, ids, local, cut_row, ties)), in_row)
        inside = (cut_row >= offset) & (cut_row < offset + rows_here)
        cut_col = jnp.where(inside, col, cut_col)
        row_ids.append(ids)
        offset += rows_here

    out = []
    for (x, c), ids, orig in zip(views, row_ids, scores):
        keys = to_keys(x)
        col_ids = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
        ids = ids[..., None]
        before_cut = (ids < cut_row) | ((ids == cut_row) & (col_ids <= cut_col))
        chosen = (keys < threshold) | ((keys == threshold) & before_cut & any_left)
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
    array; the keys are those of ``|scores|`` (``absolute``, exact: see
    :func:`magnitude_keys`) on the scale of ``dtype`` (when given: leaves of
    several dtypes, see :func:`magnitude_dtype`).
    """

    draws: bool = False
    absolute: bool = False
    dtype: np.dtype | None = None

    def values(self, source: Array, leaf: Array) -> Array:
        return like(jax.random.bits(source, leaf.shape, jnp.uint32), leaf) if self.draws else source

    def keys(self, x: Array) -> Array:
        if self.draws:
            return sort_keys(x)
        if self.absolute:
            return magnitude_keys(x, self.dtype)
        return sort_keys(x if self.dtype is None else x.astype(self.dtype))


@functools.partial(jax.jit, static_argnames=("ranking", "shift"))
def _leaf_histogram(
    source: Array, leaf: Array, cand: Array | None, prefix: Array, *, ranking: Ranking, shift: int
) -> Count:
    def run(source: Array, leaf: Array, cand: Array | None, prefix: Array) -> Count:
        return _histogram([ranking.values(source, leaf)], [cand], ranking.keys, shift, prefix)

    return _leaf_kernel(run, (source, leaf, cand, prefix), leaf, replicated=True)


@functools.partial(jax.jit, static_argnames=("ranking",))
def _leaf_ties(source: Array, leaf: Array, cand: Array | None, threshold: Array, *, ranking: Ranking) -> Count:
    def run(source: Array, leaf: Array, cand: Array | None, threshold: Array) -> Count:
        keys = ranking.keys(ranking.values(source, leaf))
        return count_true(_live(keys == threshold, cand))

    return _leaf_kernel(run, (source, leaf, cand, threshold), leaf, replicated=True)


@functools.partial(jax.jit, static_argnames=("ranking", "ties"))
def _leaf_keep(
    source: Array,
    leaf: Array,
    cand: Array | None,
    threshold: Array,
    remaining: Count,
    *,
    ranking: Ranking,
    ties: str,
) -> Array:
    """The keep-mask of one leaf: prune keys below ``threshold`` and, of the
    keys equal to it, ``ties="all"``, ``"none"`` or ``"first"`` (the first
    ``remaining`` by position)."""

    def run(source: Array, leaf: Array, cand: Array | None, threshold: Array, remaining: Count) -> Array:
        x = ranking.values(source, leaf)
        if ties == "first":
            selected = _tie_cut([x], [cand], ranking.keys, threshold, remaining)[0]
        else:
            keys = ranking.keys(x)
            selected = _live(keys <= threshold if ties == "all" else keys < threshold, cand)
        keep = ~selected if cand is None else cand & ~selected
        return like(keep, leaf)

    return _leaf_kernel(run, (source, leaf, cand, threshold, remaining), leaf, replicated=False)


def _leaf_kernel(run: Callable[..., _R], args: tuple[object, ...], leaf: Array, *, replicated: bool) -> _R:
    """``run(*args)``; when ``leaf`` has an explicit-sharding type, in auto
    mode inside (as :func:`_in_auto_mode`; every array it reads is an
    argument: auto mode refuses explicit-typed values from outside), its
    result typed replicated (counts) or as ``leaf`` (a mask)."""
    sharding = explicit_sharding(leaf)
    if sharding is None:
        return run(*args)
    auto = jax.sharding.auto_axes(run, out_sharding=_replicated(sharding.mesh) if replicated else sharding)
    return cast(Callable[..., _R], auto)(*args)  # (jax's annotation of auto_axes is a decorator's)


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
    # Eager arrays are real buffers: only empty leaves get their (empty) mask now. Every None (a live
    # leaf) is replaced before each return, hence the casts to list[Array] there.
    out: list[Array | None] = [None if leaf.size else jnp.zeros(leaf.shape, bool) for leaf in leaves]
    if not live:
        return cast("list[Array]", out)
    if sum(leaves[i].size for i in live) <= settings().sort_max:
        values = [ranking.values(sources[i], leaves[i]) for i in live]
        selected = select_lowest(values, [candidates[i] for i in live], k, to_keys=ranking.keys)
        for i, sel in zip(live, selected):
            c = candidates[i]
            out[i] = placed(~sel if c is None else c & ~sel, leaves[i])
        return cast("list[Array]", out)
    value_dtype = jnp.uint32 if ranking.draws else sources[live[0]].dtype
    udt = jax.eval_shape(ranking.keys, jax.ShapeDtypeStruct((1,), value_dtype)).dtype

    def histogram(shift: int, prefix: Array) -> Count:
        hists = [_leaf_histogram(sources[i], leaves[i], candidates[i], prefix, ranking=ranking, shift=shift)
                 for i in live]
        return functools.reduce(count_add, hists)

    # The traced path's passes, run eagerly: each leaf kernel is compiled on its own.
    threshold, remaining, tied = _threshold(histogram, udt, host_count(k), on_pass, sum(leaves[i].size for i in live))
    remaining, tied = count_int(remaining), count_int(tied)
    left = remaining  # ties still to select, lowest positions first, in leaf order
    for i in live:
        if remaining == tied:  # every tie is selected: no leaf needs counting
            ties = "all"
        elif left == 0:
            ties = "none"
        else:
            n = count_int(_leaf_ties(sources[i], leaves[i], candidates[i], threshold, ranking=ranking))
            ties = "all" if n <= left else "first"
        out[i] = placed(_leaf_keep(sources[i], leaves[i], candidates[i], threshold, host_count(left),
                                   ranking=ranking, ties=ties), leaves[i])
        if ties == "all" and remaining != tied:
            left -= n
        elif ties == "first":
            left = 0
    return cast("list[Array]", out)
