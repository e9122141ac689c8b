"""Eager masks on the host: the same selections in NumPy, with nothing to compile.

A jitted kernel is compiled once per input shape, which costs 0.2-2 s on a
CPU. That is nothing inside a training step that runs thousands of times, and
everything when a model is pruned once, leaf by leaf (a model has tens of
distinct shapes). So concrete inputs that live in host memory (NumPy arrays,
torch CPU tensors read through NumPy, jax arrays on one CPU device) take this
path instead; traced, sharded and accelerator arrays keep the XLA kernels.

The contract is the kernels' contract, bit for bit: the same sort keys (up to
an order-preserving relabelling), the same ``k``, ties cut by position (lower
flat index first, leaves in their given order), NaN ranked above ``+inf``; the
same uniform draws (jax's partitionable threefry, computed here in NumPy); so
the same masks. One difference is deliberate: slice norms are summed in
float64 here (XLA sums in the tensor's precision), so two slices whose norms
agree to float32 precision may rank the other way round than under ``jit``.

The selection is ``np.partition`` (introselect, linear time) on the keys: on
a 2-core machine it finds the cut of 16.8M magnitudes about 8x faster than
torch's ``topk`` (benchmarks/bench_models.py). A structured method's few
slice scores are sorted outright (a stable sort: the same order).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import math
import os
from collections.abc import Iterator, Sequence
from typing import Literal

import jax
import numpy as np

# --------------------------------------------------------------------------
# Sort keys (the same order as jaxprune._selection.sort_keys / magnitude_keys)
# --------------------------------------------------------------------------


def _float_bits(x: np.ndarray) -> tuple[np.ndarray, int]:
    """The raw bits of a float array as unsigned ints, and its bit width."""
    width = x.dtype.itemsize * 8
    return x.view(np.dtype(f"uint{width}")), width


def magnitude_keys(x: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """Unsigned keys ordered as ``|x|`` (NaN above ``+inf``, all NaN equal),
    read from the bit pattern: no float arithmetic, so subnormals keep their
    order (a float comparison under flush-to-zero would tie them with 0).
    ``dtype`` puts leaves of several dtypes on one scale, as in the kernels."""
    if x.dtype.kind in "iu":
        width = x.dtype.itemsize * 8
        u = x.view(np.dtype(f"uint{width}"))
        if x.dtype.kind == "i":
            u = np.where(x < 0, (~u) + np.array(1, u.dtype), u)  # |INT_MIN| in the unsigned type
        if dtype is not None and np.dtype(dtype) != u.dtype:
            return magnitude_keys(u.astype(dtype))  # exact: magnitude_dtype picks a dtype that holds them all
        return u.astype(np.uint64 if width == 64 else np.uint32)
    if dtype is not None and np.dtype(dtype) != x.dtype:
        x = x.astype(dtype)  # exact, as above
    bits, width = _float_bits(x)
    udt = np.dtype(np.uint64 if width == 64 else np.uint32)
    mag = (bits & np.array((1 << (width - 1)) - 1, bits.dtype)).astype(udt)
    nan = np.isnan(x)
    if nan.any():
        mag[nan] = np.iinfo(udt).max
    return mag


def sort_keys(x: np.ndarray) -> np.ndarray:
    """Unsigned keys ordered as the signed scores ``x`` (``-0.0`` ties with
    ``+0.0``, NaN above ``+inf``, all NaN equal)."""
    width = x.dtype.itemsize * 8
    udt = np.dtype(np.uint64 if width == 64 else np.uint32)
    if x.dtype.kind == "u":
        return x.astype(udt)
    if x.dtype.kind == "i":
        sign = np.array(1 << (udt.itemsize * 8 - 1), udt)
        signed = x.astype(np.int64 if width == 64 else np.int32)
        return signed.view(udt) ^ sign
    bits, width = _float_bits(x)
    sign = np.array(1 << (width - 1), bits.dtype)
    bits = np.where(bits == sign, np.zeros((), bits.dtype), bits)  # -0.0 -> +0.0, on the bits
    keys = np.where(bits >= sign, ~bits, bits | sign).astype(udt)
    if udt.itemsize * 8 != width:  # a narrow float: spread its keys over the wide scale, order kept
        keys <<= np.array(udt.itemsize * 8 - width, udt)
    nan = np.isnan(x)
    if nan.any():
        keys[nan] = np.iinfo(udt).max
    return keys


# --------------------------------------------------------------------------
# Exact selection of the k lowest keys
# --------------------------------------------------------------------------


def select_lowest(keys: Sequence[np.ndarray], candidates: Sequence[np.ndarray | None], k: int) -> list[np.ndarray]:
    """Bool arrays (each of its keys' shape): the ``k`` candidates of lowest
    key over all arrays, ties cut by position (earlier array, then lower flat
    index). ``candidates[i]`` (bool, or None = all) limits which entries count."""
    flat = [key.reshape(-1) for key in keys]
    cands = [None if c is None else c.reshape(-1) for c in candidates]
    out = [np.zeros(key.shape, bool) for key in keys]
    live = [f if c is None else f[c] for f, c in zip(flat, cands)]
    total = sum(v.size for v in live)
    if k <= 0:
        return out
    if k >= total:
        return [np.ones(key.shape, bool) if c is None else c.reshape(key.shape).copy()
                for key, c in zip(keys, cands)]
    pool = live[0] if len(live) == 1 else np.concatenate(live)
    threshold = np.partition(pool, k - 1)[k - 1]
    del pool
    below = [np.less(f, threshold) for f in flat]
    ties = [np.equal(f, threshold) for f in flat]
    for b, t, c in zip(below, ties, cands):
        if c is not None:
            b &= c
            t &= c
    left = k - sum(int(np.count_nonzero(b)) for b in below)
    for o, b, t in zip(out, below, ties):
        flat_out = o.reshape(-1)
        np.copyto(flat_out, b)
        if left > 0:
            where = np.flatnonzero(t)[:left]
            flat_out[where] = True
            left -= where.size
    return out


def lowest_slices(scores: np.ndarray, alive: np.ndarray | None, k: int) -> np.ndarray:
    """Indices of the ``k`` entries of lowest score among ``alive`` (None = all)
    of a 1-D array of slice scores (float norms or uint32 draws), in one
    stable sort: :func:`select_lowest`'s order (ties by position; ``-0.0``
    ties with ``+0.0`` and NaN ranks above ``+inf``, all NaN equal, as in
    NumPy's float sort). A tensor has few slices, so sorting them costs less
    than making sort keys and the threshold passes."""
    if alive is None:
        return np.argsort(scores, kind="stable")[:k]
    candidates = np.flatnonzero(alive)
    return candidates[np.argsort(scores[candidates], kind="stable")[:k]]


# --------------------------------------------------------------------------
# jax's uniform uint32 draws, in NumPy
# --------------------------------------------------------------------------

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_CHUNK = 1 << 16  # entries per block: the rounds' temporaries stay in cache


def threefry_key(key: object) -> tuple[int, int] | None:
    """The two key words of a threefry key whose draws this module reproduces
    (jax's partitionable threefry, the default since jax 0.5), else None."""
    if not jax.config.jax_threefry_partitionable:  # pyright: ignore[reportAttributeAccessIssue]
        return None
    return threefry_words(key)


def threefry_words(key: object) -> tuple[int, int] | None:
    """The two words of a concrete threefry key (typed or legacy ``uint32[2]``), else None."""
    if isinstance(key, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        return None
    # (a NumPy array is never a typed key)
    if type(key) is not np.ndarray and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # pyright: ignore[reportAttributeAccessIssue]
        impl = str(jax.random.key_impl(key))  # pyright: ignore[reportArgumentType]
        if "threefry2x32" not in impl:
            return None
        # The key's own uint32 array when jax keeps one (a concrete key does):
        # key_data's dispatch costs more than the rest of a small draw.
        data = getattr(key, "_base_array", None)
        if not isinstance(data, jax.Array):
            data = jax.random.key_data(key)  # pyright: ignore[reportArgumentType]
        if isinstance(data, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue] - under a trace
            return None
        data = np.asarray(data)
    else:
        if "threefry" not in str(jax.config.jax_default_prng_impl):  # pyright: ignore[reportAttributeAccessIssue]
            return None
        data = np.asarray(key)
    words = data.reshape(-1)
    return int(words[0]), int(words[1])


def fold_in(key: tuple[int, int], data: int) -> tuple[int, int]:
    """``jax.random.fold_in``'s new key words for a threefry key: threefry-2x32
    of the pair ``(0, data)`` (``data`` a uint32)."""
    return _threefry2x32_ints(key, 0, data)


def fold_in_many(key: tuple[int, int], data: Sequence[int]) -> list[tuple[int, int]]:
    """:func:`fold_in` of each of ``data``, in one pass of NumPy rounds."""
    if len(data) <= _SCALAR_MAX:
        return [fold_in(key, d) for d in data]
    x0, x1 = _threefry2x32(key, np.zeros(len(data), np.uint32), np.array(data, np.uint32))
    return list(zip(x0.tolist(), x1.tolist()))


def random_bits_many(keys: Sequence[tuple[int, int]], sizes: Sequence[int]) -> list[np.ndarray]:
    """``[random_bits(key, n) for key, n in zip(keys, sizes)]``, bit for bit, in
    one pass of NumPy rounds over all the draws (each with its own key words):
    NumPy's ~110 calls per pass cost more than a small tensor's draws."""
    if not keys:
        return []
    lengths = np.array(sizes, np.int64)
    if int(lengths.max()) > _MASK:
        return [random_bits(key, n) for key, n in zip(keys, sizes)]
    words = np.array(keys, np.uint32).reshape(-1, 2)
    starts = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    # Each draw's counter within its own tensor (high word 0: every n < 2**32), and its key's words.
    counter = (np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)).astype(np.uint32)
    k0, k1 = np.repeat(words[:, 0], lengths), np.repeat(words[:, 1], lengths)
    x0, x1 = _threefry2x32((k0, k1), np.zeros(total, np.uint32), counter)
    np.bitwise_xor(x0, x1, out=x0)
    return np.split(x0, starts[1:].tolist())


_PRECOMPUTED: contextvars.ContextVar[dict[tuple[tuple[int, int], int], np.ndarray] | None] = contextvars.ContextVar(
    "precomputed_bits", default=None)


@contextlib.contextmanager
def precomputed_bits(keys: Sequence[tuple[int, int]], sizes: Sequence[int]) -> Iterator[None]:
    """Inside the block, :func:`random_bits` of one of these ``(key, n)`` pairs
    returns the draws made here, for all of them at once (:func:`random_bits_many`)."""
    draws: list[np.ndarray] = []
    start = 0
    while start < len(keys):  # passes of at most about _CHUNK draws: the rounds' temporaries stay in cache
        stop, total = start, 0
        while stop < len(keys) and (stop == start or total + sizes[stop] <= _CHUNK):
            total += sizes[stop]
            stop += 1
        draws += random_bits_many(keys[start:stop], sizes[start:stop])
        start = stop
    token = _PRECOMPUTED.set({(key, n): d for key, n, d in zip(keys, sizes, draws)})
    try:
        yield
    finally:
        _PRECOMPUTED.reset(token)


def random_bits(key: tuple[int, int], n: int) -> np.ndarray:
    """``jax.random.bits(key, (n,), jnp.uint32)`` for a threefry key, bit for bit:
    entry ``i`` is the xor of the two words of threefry-2x32 of the counter ``i``."""
    ready = _PRECOMPUTED.get()
    if ready is not None:
        found = ready.pop((key, n), None)  # (handed out once: a second ask for the same draws makes its own)
        if found is not None:
            return found
    if n <= _SCALAR_MAX:  # a few draws (a structured method's slices): plain ints beat NumPy's per-call cost
        return np.array([x0 ^ x1 for x0, x1 in (_threefry2x32_ints(key, i >> 32, i & _MASK) for i in range(n))],
                        np.uint32)
    out = np.empty(n, np.uint32)
    starts = range(0, n, _CHUNK)
    workers = min(_THREADS, len(starts))
    if workers <= 1:
        _bits_into(out, key, starts)
    else:  # NumPy releases the GIL in the rounds: one block of chunks per thread
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: _bits_into(out, key, starts[i::workers]), range(workers)))
    return out


_THREADS = min(4, os.cpu_count() or 1)


def _bits_into(out: np.ndarray, key: tuple[int, int], starts: Sequence[int]) -> None:
    for start in starts:
        counter = np.arange(start, min(out.size, start + _CHUNK), dtype=np.uint64)
        x0, x1 = _threefry2x32(key, (counter >> np.uint64(32)).astype(np.uint32), counter.astype(np.uint32))
        np.bitwise_xor(x0, x1, out=out[start:start + counter.size])


_SCALAR_MAX = 10  # NumPy's rounds cost about as much as 10 draws in Python ints
_MASK = 0xFFFFFFFF


def _threefry2x32_ints(key: tuple[int, int], x0: int, x1: int) -> tuple[int, int]:
    """:func:`_threefry2x32` of one word pair, in Python ints."""
    ks = (key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA)
    x0, x1 = (x0 + ks[0]) & _MASK, (x1 + ks[1]) & _MASK
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = (x0 + x1) & _MASK
            x1 = (((x1 << r) | (x1 >> (32 - r))) & _MASK) ^ x0
        x0 = (x0 + ks[(block + 1) % 3]) & _MASK
        x1 = (x1 + ks[(block + 2) % 3] + block + 1) & _MASK
    return x0, x1


def _threefry2x32(
    key: tuple[int, int] | tuple[np.ndarray, np.ndarray], x0: np.ndarray, x1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 (20 rounds) of the word pairs ``(x0, x1)`` under ``key``
    (two ints, or two uint32 arrays: a key per pair), in place."""
    if isinstance(key[0], np.ndarray):
        ks = (key[0], key[1], key[0] ^ key[1] ^ np.uint32(0x1BD11BDA))
    else:
        ks = (np.uint32(key[0]), np.uint32(key[1]), np.uint32(key[0] ^ key[1] ^ 0x1BD11BDA))
    tmp = np.empty_like(x1)
    x0 += ks[0]
    x1 += ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 += x1
            np.right_shift(x1, np.uint32(32 - r), out=tmp)
            np.left_shift(x1, np.uint32(r), out=x1)
            x1 |= tmp
            x1 ^= x0
        x0 += ks[(block + 1) % 3]
        x1 += ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


# --------------------------------------------------------------------------
# Slice norms
# --------------------------------------------------------------------------


def slice_norms(t: np.ndarray, n: float | Literal["fro", "nuc"], dim: int) -> np.ndarray:
    """torch's ``_compute_norm`` of each slice along ``dim``, in float64.

    Slices along a C-contiguous tensor's first dim (a conv's filters, a
    Linear's output rows) are normed a block of rows at a time: each row is
    reduced exactly as in the whole array (the same contiguous run, the same
    pairwise sums), and the float64 copy stays in cache instead of costing a
    fresh allocation of twice the tensor's bytes."""
    if n == "nuc":
        mats = np.moveaxis(t.astype(np.float64), dim, 0)
        return np.linalg.svd(mats, compute_uv=False).sum(axis=-1)
    rows = t.shape[0]
    row_size = t.size // rows if rows else 0
    if dim == 0 and t.flags.c_contiguous and row_size and rows > 1 and t.size > _NORM_BLOCK:
        out = np.empty(rows, np.float64)
        step = max(1, _NORM_BLOCK // row_size)
        for start in range(0, rows, step):
            out[start:start + step] = _slice_norms(t[start:start + step], n, 0)
        return out
    return _slice_norms(t, n, dim)


_NORM_BLOCK = 1 << 15  # values per block of rows (256 KiB in float64)


def _slice_norms(t: np.ndarray, n: float | Literal["fro"], dim: int) -> np.ndarray:
    others = tuple(d for d in range(t.ndim) if d != dim)
    a = t.astype(np.float64)  # a copy: float64 holds every float32 value exactly, subnormals included
    if n == "fro" or n == 2.0:
        return np.sqrt(np.square(a, out=a).sum(axis=others))
    a = np.abs(a, out=a)
    if n == math.inf:
        return a.max(axis=others, initial=0.0)
    if n == -math.inf:
        return a.min(axis=others, initial=math.inf)
    if n == 0.0:
        return np.count_nonzero(a, axis=others).astype(np.float64)
    if n == 1.0:
        return a.sum(axis=others)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.sum(a**n, axis=others) ** (1.0 / n)
