"""N:M (2:4) and block sparsity: masks whose pruned entries follow a pattern.

N:M keeps at most ``n`` of every ``m`` consecutive entries along one axis
(NVIDIA's sparse tensor cores run 2:4). The groups must run along the
*matmul's input* (contracting) axis: that is the axis the hardware and
torch's semi-structured format group, and it is not the last axis of every
layout (a Flax ``Dense`` kernel is ``(in, out)``). :func:`matmul_input_axis`
says which axis that is, and ``axis="flax"`` / ``axis="torch"`` pick it per
leaf.

Block sparsity prunes whole blocks of a given shape, the lowest-scoring
first, with exactly ``round(amount * number_of_blocks)`` of them pruned.

Both are exact and need no sort: within a group of ``m``, an entry's rank is
the number of entries of its group that beat it (``m * m`` comparisons per
group, which vectorize); blocks are ranked by jaxprune's linear-time
selection. Ties follow jaxprune's rule everywhere: the lower index is pruned
first, NaN last.

>>> import jax.numpy as jnp, jaxprune as jp
>>> w = jnp.array([[0.5, -3.0, 0.1, 2.0], [1.0, 1.0, 1.0, 1.0]])
>>> jp.n_m_mask(w, 2, 4, axis=1).astype(int).tolist()  # ties: the lower index pruned first
[[0, 1, 0, 1], [0, 0, 1, 1]]
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._amounts import Count, check_amount, is_traced, prune_count
from ._methods import as_k, as_mask, as_tensor, check_scores, count_units
from ._selection import like, magnitude_keys, select_lowest
from ._specs import PruningMethod, _count_false, count_dtype
from ._typing import Amount, Array, ArrayLike, PRNGKey

#: The layouts :func:`matmul_input_axis` and ``axis="..."`` know.
LAYOUTS = ("torch", "flax")

_KINDS = {
    # kind: (torch weight layout, its input axis; Flax kernel layout, its input axis)
    "linear": ("(out, in)", 1, "(in, out)", -2),
    "conv": ("(out, in, *kernel)", 1, "(*kernel, in, out)", -2),
    "conv_transpose": ("(in, out, *kernel)", 0, "(*kernel, in, out)", -2),
}
_ALIASES = {"dense": "linear", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv"}

_UNROLL_MAX = 16  # groups up to this size are ranked by pairwise comparisons; larger ones by a sort
_PATTERNS_MAX = 4096  # transposable masks enumerate the valid m x m tiles; beyond this many, refuse
_TILE_BATCH = 1 << 16  # tiles scored per matmul (bounds the (tiles, patterns) score matrix)


# --------------------------------------------------------------------------
# Which axis: the matmul's input axis
# --------------------------------------------------------------------------


def matmul_input_axis(kind: str, layout: str) -> int:
    """The input (contracting) axis of a layer's weight: the axis N:M groups run along.

    ============================  ======================  ====  =====================  ====
    kind                          torch weight            axis  Flax kernel            axis
    ============================  ======================  ====  =====================  ====
    ``"linear"`` (``"dense"``)    ``(out, in)``           1     ``(in, out)``          -2
    ``"conv"``                    ``(out, in, kh, kw)``   1     ``(kh, kw, in, out)``  -2
    ``"conv_transpose"``          ``(in, out, kh, kw)``   0     ``(kh, kw, in, out)``  -2
    ============================  ======================  ====  =====================  ====

    -2 is axis 0 of a ``Dense`` kernel and axis 2 of a 2-D ``Conv`` kernel.
    ``axis="torch"`` / ``axis="flax"`` in :func:`n_m_mask` and :class:`NMSparse`
    mean these axes (1, and -2) for every leaf (right for linear and conv
    layers; a torch ``ConvTranspose`` weight needs ``axis=0``).

    >>> import jaxprune as jp
    >>> jp.matmul_input_axis("linear", "torch"), jp.matmul_input_axis("dense", "flax")
    (1, -2)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    name = _ALIASES.get(str(kind).lower(), str(kind).lower()) if isinstance(kind, str) else kind
    if name not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, [*_KINDS, *_ALIASES]))}, got {kind!r} "
                         "(an embedding table is no matmul weight)")
    _, torch_axis, _, flax_axis = _KINDS[name]
    return torch_axis if layout == "torch" else flax_axis


def resolve_axis(axis: int | str, shape: tuple[int, ...]) -> int:
    """``axis`` (an int, or ``"torch"``/``"flax"``) as a non-negative axis of ``shape``."""
    if isinstance(axis, str):
        if axis not in LAYOUTS:
            raise ValueError(f"axis must be an int or one of {', '.join(map(repr, LAYOUTS))}, got {axis!r}")
        axis = 1 if axis == "torch" else -2
        if len(shape) < 2:
            raise ValueError(f"axis='{'torch' if axis == 1 else 'flax'}' means a matmul weight's input axis, "
                             f"but the tensor has shape {tuple(shape)} ({len(shape)} dims): give the axis as an int")
    if is_traced(axis):
        raise TypeError("axis must be a static Python int, got a traced value: under jax.jit mark it static")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int (or 'torch'/'flax'), got {type(axis).__name__}: {axis!r}")
    if not -len(shape) <= axis < len(shape):
        raise IndexError(f"axis {axis} is out of range for a tensor of shape {tuple(shape)} "
                         f"(axes {-len(shape)} to {len(shape) - 1})")
    return int(axis) % len(shape)


def check_n_m(n: int, m: int) -> tuple[int, int]:
    """Validate ``n`` and ``m`` (static ints, ``1 <= m``, ``0 <= n < m``)."""
    for name, v in (("n", n), ("m", m)):
        if is_traced(v):
            raise TypeError(f"{name} must be a static Python int, got a traced value: under jax.jit mark it static")
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}: {v!r}")
    if m < 1:
        raise ValueError(f"m must be >= 1 (the group size), got m={m}")
    if not 0 <= n < m:
        raise ValueError(f"n must be in [0, m) = [0, {m}) (n kept of every m), got n={n}, m={m}")
    return int(n), int(m)


def _check_groups(shape: tuple[int, ...], axis: int, m: int) -> None:
    if shape[axis] % m:
        raise ValueError(f"axis {axis} has size {shape[axis]}, which is not a multiple of m={m} (shape "
                         f"{tuple(shape)}): N:M groups cover the axis exactly")


# --------------------------------------------------------------------------
# N:M masks
# --------------------------------------------------------------------------


def n_m_mask(
    t: ArrayLike,
    n: int,
    m: int,
    *,
    axis: int | str,
    importance_scores: ArrayLike | None = None,
    default_mask: ArrayLike | None = None,
    transposable: bool = False,
) -> Array:
    """Keep the ``n`` largest of every ``m`` consecutive entries along ``axis`` (N:M sparsity).

    Args:
      t: the tensor (any real dtype), at least 1-D.
      n: entries kept per group, ``0 <= n < m`` (2 for 2:4).
      m: the group size (4 for 2:4); ``t.shape[axis]`` must be a multiple of it.
      axis: the axis the groups run along: the matmul's input axis (see
        :func:`matmul_input_axis`), as an int or as ``"torch"`` (1) /
        ``"flax"`` (-2).
      importance_scores: rank by ``|importance_scores|`` instead of ``|t|``.
      default_mask: keep-mask of an earlier pruning: its pruned entries stay
        pruned and count as pruned in their group (a group of 4 with one
        entry pruned keeps its 2 largest other entries under 2:4).
      transposable: a 2-D ``t`` whose both sides are multiples of ``m``: each
        ``m x m`` tile gets the valid N:M pattern along both axes (at most
        ``n`` kept in each of its rows and columns) that keeps the largest
        total magnitude, so the transposed matrix is N:M too (for training
        where the backward matmul also runs sparse). The candidates are the
        tiles with exactly ``n`` kept per row and column (90 for 2:4), in
        ascending order of their row-major bits read as a binary number (the
        first entry most significant); among equal totals the first wins, so
        ties prune earlier entries first. Totals are float32 sums (float64
        for float64), NaN ranking above inf and inf above every finite value.

    Returns:
      A bool mask of ``t.shape``, True = keep: in each group, the ``n``
      largest ``|t|``; among equal magnitudes the lower index is pruned
      first; NaN is pruned last.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> kernel = jnp.array([[1.0, -4.0], [3.0, 0.5], [-2.0, 2.0], [0.1, 1.0]])  # Flax Dense (in=4, out=2)
    >>> jp.n_m_mask(kernel, 2, 4, axis="flax").astype(int).tolist()  # 2:4 down each column
    [[0, 1], [1, 0], [1, 1], [0, 0]]
    """
    n, m = check_n_m(n, m)
    t = as_tensor(t)
    if t.ndim == 0:
        raise IndexError(f"axis {axis!r} is out of range for a 0-d tensor: N:M needs at least 1 dim")
    ax = resolve_axis(axis, tuple(t.shape))
    _check_groups(t.shape, ax, m)
    scores = check_scores(t, importance_scores)
    mask = None if default_mask is None else as_mask(default_mask, t.shape, "default_mask", t)
    if transposable:
        _check_tiles(t.shape, m)
        return _transposable_mask(scores, mask, n, m)
    return _n_m_keep(scores, mask, jnp.asarray(n, jnp.int32), m, ax)


@functools.partial(jax.jit, static_argnames=("m", "axis"))
def _n_m_keep(scores: Array, mask: Array | None, n: Array, m: int, axis: int) -> Array:
    """The N:M keep-mask; ``n`` may be traced (a schedule moves 1:4 to 2:4 without recompiling)."""
    shape = scores.shape
    grouped = shape[:axis] + (shape[axis] // m, m) + shape[axis + 1:]
    keys = magnitude_keys(scores).reshape(grouped)  # NaN has the largest key: pruned last
    alive = None if mask is None else mask.reshape(grouped)
    rank = _ranks(keys, alive, axis + 1, m) if m <= _UNROLL_MAX else _sorted_ranks(keys, alive, axis + 1, m)
    keep = rank < n
    keep = keep if alive is None else keep & alive
    return like(keep.reshape(shape), scores)


def _ranks(keys: Array, alive: Array | None, g: int, m: int) -> Array:
    """Each entry's rank in its group (along axis ``g``): how many live entries beat it.

    ``j`` beats ``i`` when its key is larger, or equal and ``j > i`` (so the
    lower index is pruned first): ``m * (m - 1)`` comparisons, no sort."""
    cols = [lax.index_in_dim(keys, i, g, keepdims=False) for i in range(m)]
    live = None if alive is None else [lax.index_in_dim(alive, i, g, keepdims=False) for i in range(m)]
    ranks = []
    for i in range(m):
        count = jnp.zeros(cols[i].shape, jnp.int32)
        for j in range(m):
            if j == i:
                continue
            beats = cols[j] > cols[i] if j < i else cols[j] >= cols[i]
            beats = beats if live is None else beats & live[j]
            count = count + beats.astype(jnp.int32)
        ranks.append(count)
    return jnp.stack(ranks, axis=g)


def _sorted_ranks(keys: Array, alive: Array | None, g: int, m: int) -> Array:
    """:func:`_ranks` by two sorts along the group (for large ``m``): live
    entries first, then larger keys, then higher indices."""
    index = lax.broadcasted_iota(jnp.int32, keys.shape, g)
    dead = jnp.zeros(keys.shape, jnp.uint8) if alive is None else (~alive).astype(jnp.uint8)
    *_, order = lax.sort((dead, ~keys, m - 1 - index, index), dimension=g, num_keys=3)
    _, rank = lax.sort((order, index), dimension=g, num_keys=1)  # rank[i] = position of entry i
    return rank


def n_m_valid(x: ArrayLike, n: int, m: int, *, axis: int | str) -> bool:
    """Whether ``x`` (a mask, or a tensor: its nonzeros) has at most ``n`` kept
    entries in every group of ``m`` along ``axis`` (concrete inputs).

    >>> import numpy as np, jaxprune as jp
    >>> jp.n_m_valid(np.array([[0.0, 1.0, 0.0, 2.0]]), 2, 4, axis=1), jp.n_m_valid(np.ones((1, 4)), 2, 4, axis=1)
    (True, False)
    """
    return n_m_violations(x, n, m, axis=axis) == 0


def n_m_violations(x: ArrayLike, n: int, m: int, *, axis: int | str) -> int:
    """How many groups of ``m`` along ``axis`` keep more than ``n`` entries of ``x`` (concrete; NumPy)."""
    n, m = check_n_m(n, m)
    a = np.asarray(x)
    if a.ndim == 0:
        raise IndexError(f"axis {axis!r} is out of range for a 0-d tensor: N:M needs at least 1 dim")
    ax = resolve_axis(axis, a.shape)
    _check_groups(a.shape, ax, m)
    kept = np.moveaxis(a != 0, ax, -1).reshape(-1, m).sum(axis=1, dtype=np.int64)
    return int(np.count_nonzero(kept > n))


# --------------------------------------------------------------------------
# Transposable N:M: the best valid m x m tile
# --------------------------------------------------------------------------


@functools.cache
def tile_patterns(n: int, m: int) -> np.ndarray:
    """The ``m x m`` 0/1 tiles with exactly ``n`` ones in every row and column,
    in ascending order of their row-major bits read as a binary number
    (first entry most significant), shape ``(count, m * m)``, bool.

    >>> tile_patterns(2, 4).shape
    (90, 16)
    """
    rows = [tuple(int(i in c) for i in range(m)) for c in itertools.combinations(range(m), n)]
    found: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...], columns: tuple[int, ...]) -> None:
        if len(found) > _PATTERNS_MAX:
            return
        if len(prefix) == m * m:
            found.append(prefix)
            return
        left = m - len(prefix) // m - 1  # rows still to place after this one
        for r in rows:
            c = tuple(a + b for a, b in zip(columns, r))
            if all(n - left <= k <= n for k in c):  # the rest can still fill every column
                extend(prefix + r, c)

    extend((), (0,) * m)
    if len(found) > _PATTERNS_MAX:
        raise ValueError(f"transposable {n}:{m} has more than {_PATTERNS_MAX} valid {m}x{m} tiles to compare; "
                         "transposable masks support small m (2:4 has 90)")
    return np.array(sorted(found, reverse=False), dtype=bool).reshape(-1, m * m)


def _check_tiles(shape: tuple[int, ...], m: int) -> None:
    if len(shape) != 2 or shape[0] % m or shape[1] % m:
        raise ValueError(f"a transposable N:M mask needs a 2-D tensor whose both sides are multiples of m={m} "
                         f"(m x m tiles), got shape {tuple(shape)}")


def _transposable_mask(scores: Array, mask: Array | None, n: int, m: int) -> Array:
    return _transposable_keep(scores, mask, jnp.asarray(tile_patterns(n, m)), m)


@functools.partial(jax.jit, static_argnames=("m",))
def _transposable_keep(scores: Array, mask: Array | None, patterns: Array, m: int) -> Array:
    rows, cols = scores.shape
    fdt = jnp.float64 if scores.dtype.itemsize == 8 else jnp.float32

    def tiles(x: Array) -> Array:  # (rows, cols) -> (tiles, m * m), row-major within a tile
        return x.reshape(rows // m, m, cols // m, m).transpose(0, 2, 1, 3).reshape(-1, m * m)

    x = tiles(scores)
    live = None if mask is None else tiles(mask)
    mag = jnp.abs(x.astype(fdt))
    finite = jnp.isfinite(mag)
    # Lexicographic objective: kept NaNs, then kept infs, then the finite total.
    special = jnp.where(jnp.isnan(mag), float(m * m + 1), jnp.where(finite, 0.0, 1.0)).astype(fdt)
    mag = jnp.where(finite, mag, 0.0)
    if live is not None:
        special, mag = jnp.where(live, special, 0.0), jnp.where(live, mag, 0.0)
    p = patterns.astype(fdt)

    hi = lax.Precision.HIGHEST  # no reduced-precision passes (TF32 on GPUs)

    def best(tile: tuple[Array, Array]) -> Array:  # one tile; vmapped into (tiles, m*m) @ (m*m, patterns)
        s, a = tile
        first = jnp.matmul(p, s, precision=hi)
        second = jnp.matmul(p, a, precision=hi)
        return jnp.argmax(jnp.where(first == jnp.max(first), second, -jnp.inf))  # the first best on ties

    def best_finite(tile: tuple[Array, Array]) -> Array:  # no NaN or inf anywhere: one matmul
        return jnp.argmax(jnp.matmul(p, tile[1], precision=hi))

    def choose(fn: Callable[[tuple[Array, Array]], Array]) -> Array:
        if len(x) > _TILE_BATCH:
            return lax.map(fn, (special, mag), batch_size=_TILE_BATCH)
        return jax.vmap(fn)((special, mag))

    choice = lax.cond(jnp.all(finite), lambda: choose(best_finite), lambda: choose(best))
    keep = patterns[choice]
    keep = keep if live is None else keep & live
    out = keep.reshape(rows // m, cols // m, m, m).transpose(0, 2, 1, 3).reshape(rows, cols)
    return like(out, scores)


# --------------------------------------------------------------------------
# Block masks
# --------------------------------------------------------------------------

_REDUCES = ("l1", "l2", "max")


def check_block(block: object, ndim: int | None = None) -> tuple[int, ...]:
    """``block`` as a tuple of positive ints (one per dim of the tensor, given ``ndim``)."""
    try:
        extents = tuple(block)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"block must be a tuple of ints (one per dim, 1 = not blocked), got {block!r}") from None
    for b in extents:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Integral):
            raise TypeError(f"block must be a tuple of ints, got {block!r} (extent {b!r})")
        if b < 1:
            raise ValueError(f"block extents must be >= 1, got {block!r}")
    if not extents:
        raise ValueError("block must have at least one extent (one per dim of the tensor)")
    if ndim is not None and len(extents) != ndim:
        raise ValueError(f"block {tuple(extents)} has {len(extents)} extents, but the tensor has {ndim} dims: "
                         "give one extent per dim (1 = not blocked)")
    return tuple(int(b) for b in extents)


def _check_reduce(reduce: str) -> str:
    if reduce not in _REDUCES:
        raise ValueError(f"reduce must be one of {', '.join(map(repr, _REDUCES))}, got {reduce!r}")
    return reduce


def block_grid(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """The number of blocks along each dim (edge blocks included)."""
    return tuple(-(-s // b) for s, b in zip(shape, block))


def block_mask(
    t: ArrayLike,
    amount: Amount,
    block: Sequence[int],
    *,
    reduce: str = "l1",
    importance_scores: ArrayLike | None = None,
    default_mask: ArrayLike | None = None,
) -> Array:
    """Prune whole blocks of shape ``block``: the ``amount`` lowest-scoring ones.

    Args:
      t: the tensor (any real dtype, at least 1-D).
      amount: int count or float fraction of the blocks;
        ``k = round(amount * number_of_blocks)``, counted as torch counts.
      block: one extent per dim of ``t`` (1 = not blocked); the shape need not
        be a multiple of it (edge blocks are smaller).
      reduce: a block's score: ``"l1"`` (sum of ``|t|``), ``"l2"`` (its
        2-norm) or ``"max"`` (largest ``|t|``). An edge block that the shape
        does not fill is scored by its mean over the entries present, scaled
        to a full block (the L1 of a full block of that mean; for L2, of that
        mean square), so edge blocks compete on the scale of full ones.
      importance_scores: score ``|importance_scores|`` instead of ``|t|``.
      default_mask: keep-mask of an earlier pruning: blocks it prunes
        entirely are no longer candidates, the amount applies to the others,
        and the result is within it (as for structured methods).

    Returns:
      A bool mask of ``t.shape``, True = keep. Exactly ``k`` candidate blocks
      are pruned; among equal scores the block with the lower row-major index
      in the grid of blocks goes first; NaN scores last.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> w = jnp.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0], [9.0, 9.0, 0.1, 0.1]])
    >>> jp.block_mask(w, 2, (2, 2)).astype(int).tolist()  # blocks of 2x2; the last row's are edge blocks
    [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]
    """
    t = as_tensor(t)
    block = check_block(block, t.ndim)
    reduce = _check_reduce(reduce)
    checked = check_amount(amount)
    scores = check_scores(t, importance_scores)
    mask = None if default_mask is None else as_mask(default_mask, t.shape, "default_mask", t)
    grid = block_grid(t.shape, block)
    alive = None if mask is None else _alive_blocks(mask, block)
    k = prune_count(checked, count_units(alive, math.prod(grid)))
    return _keep_blocks(scores, mask, alive, as_k(k), block, reduce)


_SLICE_MAX = 16  # block extents up to this are reduced slice by slice; longer ones by a reduction


def _block_reduce(x: Array, block: tuple[int, ...], fill: object, op: Callable[[Array, Array], Array],
                  reduce: Callable[..., Array]) -> Array:
    """Each block of ``x`` (padded with ``fill`` to whole blocks) reduced to one value, one dim at
    a time. A short extent is reduced by adding (``op``) its slices: XLA:CPU runs a reduction over a
    short axis several times slower than the elementwise loop the slices fuse into."""
    grid = block_grid(x.shape, block)
    pads = [(0, g * b - s, 0) for s, b, g in zip(x.shape, block, grid)]
    if any(p[1] for p in pads):
        x = lax.pad(x, jnp.asarray(fill, x.dtype), pads)
    for d, (g, b) in enumerate(zip(grid, block)):
        if b == 1:
            continue

        def one_dim(x: Array, d: int = d, g: int = g, b: int = b) -> Array:
            y = x.reshape(x.shape[:d] + (g, b) + x.shape[d + 1:])
            if b <= _SLICE_MAX:
                return functools.reduce(op, [lax.index_in_dim(y, i, d + 1, keepdims=False) for i in range(b)])
            return reduce(y, axis=d + 1)

        x = one_dim(x) if d < x.ndim - 1 else _last_axis(one_dim, x)
    return x


def _last_axis(fn: Callable[[Array], Array], x: Array) -> Array:
    """``fn(x)`` for an ``fn`` that groups ``x``'s last axis, run as two halves of the first axis
    in a loop. Fused with the code that produces ``x`` (the reduction of the other dims), XLA:CPU
    ran such strided reads several times slower than a pass over the input
    (benchmarks/bench_patterns.py); a loop body is compiled apart, so ``x`` is written out first
    and the halves read it at full speed."""
    if x.ndim < 2 or x.shape[0] % 2:
        return fn(x)
    halves = lax.map(fn, x.reshape((2, x.shape[0] // 2) + x.shape[1:]))
    return halves.reshape((x.shape[0],) + halves.shape[2:])


@functools.partial(jax.jit, static_argnames=("block",))
def _alive_blocks(mask: Array, block: tuple[int, ...]) -> Array:
    return _block_reduce(mask, block, False, jnp.logical_or, jnp.any)


def _present(shape: tuple[int, ...], block: tuple[int, ...]) -> np.ndarray | None:
    """How many entries each block has (None when every block is full)."""
    if all(s % b == 0 for s, b in zip(shape, block)):
        return None
    counts = [np.minimum(b, s - b * np.arange(g)) for s, b, g in zip(shape, block, block_grid(shape, block))]
    return functools.reduce(np.multiply.outer, counts).astype(np.float64)


def block_scores(scores: Array, block: tuple[int, ...], reduce: str) -> Array:
    """One score per block (the grid's shape), see :func:`block_mask`."""
    if reduce == "max":  # compared as magnitude keys: exact, NaN above inf
        return _block_reduce(magnitude_keys(scores), block, 0, jnp.maximum, jnp.max)
    fdt = jnp.float64 if scores.dtype.itemsize == 8 else jnp.float32
    a = jnp.abs(scores.astype(fdt))
    total = _block_reduce(a if reduce == "l1" else a * a, block, 0, jnp.add, jnp.sum)
    present = _present(scores.shape, block)
    if present is not None:  # edge blocks: their mean over the entries present, as a full block
        total = total * jnp.asarray(math.prod(block) / present, fdt)
    return total if reduce == "l1" else jnp.sqrt(total)


@functools.partial(jax.jit, static_argnames=("block", "reduce"))
def _keep_blocks(
    scores: Array, mask: Array | None, alive: Array | None, k: Count, block: tuple[int, ...], reduce: str
) -> Array:
    selected = select_lowest([block_scores(scores, block, reduce)], [alive], k)[0]
    keep_blocks = ~selected if alive is None else alive & ~selected
    keep = _unblock(keep_blocks, scores.shape, block)
    keep = keep if mask is None else keep & mask
    return like(keep, scores)


def _unblock(keep_blocks: Array, shape: tuple[int, ...], block: tuple[int, ...]) -> Array:
    """Each block's value over its entries, cropped to ``shape``."""
    grid = keep_blocks.shape
    view = [d for g in grid for d in (g, 1)]
    full = [d for g, b in zip(grid, block) for d in (g, b)]
    out = jnp.broadcast_to(keep_blocks.reshape(view), full).reshape([g * b for g, b in zip(grid, block)])
    return out[tuple(slice(0, s) for s in shape)]


def pruned_blocks(mask: ArrayLike, block: tuple[int, ...]) -> Array:
    """How many blocks a keep-mask has pruned entirely (traceable)."""
    m = jnp.asarray(mask)
    alive = _alive_blocks(m, check_block(block, m.ndim))
    return alive.size - jnp.sum(alive, dtype=count_dtype())


# --------------------------------------------------------------------------
# The methods (specs)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NMSparse(PruningMethod):
    """N:M sparsity along ``axis`` as a rule value: keep the ``n`` largest of
    every ``m`` consecutive entries (see :func:`n_m_mask`).

    ``axis`` is the matmul's input axis: an int, or ``"torch"`` (1, for torch
    ``Linear``/``Conv`` weights) / ``"flax"`` (-2, for Flax ``Dense``/``Conv``
    kernels), resolved per leaf. The units are entries (a 2:4 mask prunes half
    of them). ``transposable=True`` asks for the transposable mask.

    In ``jp.pruning`` an N:M rule is applied at the schedule's update steps, so
    a schedule that first updates at step ``s`` (``jp.one_shot_schedule(0.5,
    step=s)``) turns it on at ``s``. To move through 1:4, then 2:4 pruned,
    write ``n=None``: the schedule sets the amount, and at a target sparsity
    ``s`` each group has ``floor(round(s * size) / groups)`` pruned (``s =
    0.25``: 1 of 4, ``s = 0.5``: 2 of 4). Outside a schedule, ``n=None``
    takes ``amount`` (a fraction or count of the entries still kept, as
    torch counts): the entries pruned before plus those, shared evenly by
    the groups and rounded down.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> params = {"dense": {"kernel": jnp.arange(1.0, 9.0).reshape(4, 2)}}
    >>> masks = jp.prune_tree(None, params, {"*.kernel": jp.NMSparse(2, 4, axis="flax")})
    >>> masks["dense"]["kernel"].astype(int).tolist()
    [[0, 0], [0, 0], [1, 1], [1, 1]]
    """

    n: int | None
    m: int
    axis: int | str
    transposable: bool = False
    amount: Amount = 0  # only with n=None: the schedule's amount (entries to prune beyond default_mask)

    def __post_init__(self) -> None:
        if self.n is None:
            check_n_m(0, self.m)
            check_amount(self.amount)
        else:
            check_n_m(self.n, self.m)
            if not (isinstance(self.amount, int) and self.amount == 0):
                raise ValueError(f"NMSparse takes an amount only with n=None (the schedule sets n), got "
                                 f"n={self.n}, amount={self.amount!r}")
        if isinstance(self.axis, str):
            if self.axis not in LAYOUTS:
                raise ValueError(f"axis must be an int or one of {', '.join(map(repr, LAYOUTS))}, got {self.axis!r}")
        elif isinstance(self.axis, (bool, np.bool_)) or not isinstance(self.axis, numbers.Integral):
            raise TypeError(f"axis must be an int (or 'torch'/'flax'), got {type(self.axis).__name__}: {self.axis!r}")
        if not isinstance(self.transposable, bool):
            raise TypeError(f"transposable must be a bool, got {self.transposable!r}")
        if self.transposable and self.n is None:
            raise ValueError("a transposable NMSparse needs a fixed n (n=None lets a schedule set it)")

    @property
    def has_amount(self) -> bool:
        return self.n is None

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        if not shape:
            raise IndexError(f"axis {self.axis!r} is out of range for a 0-d tensor: N:M needs at least 1 dim")
        _check_groups(shape, resolve_axis(self.axis, shape), self.m)
        if self.transposable:
            _check_tiles(shape, self.m)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        if self.n is not None:
            return n_m_mask(t, self.n, self.m, axis=self.axis, default_mask=default_mask,
                            transposable=self.transposable)
        t = as_tensor(t)
        self.check_leaf(tuple(t.shape))
        ax = resolve_axis(self.axis, tuple(t.shape))
        mask = None if default_mask is None else as_mask(default_mask, t.shape, "default_mask", t)
        n = self._scheduled_n(t.size, mask)
        return _n_m_keep(t, mask, n, self.m, ax)

    def _scheduled_n(self, size: int, mask: Array | None) -> Array:
        """``n`` from the amount: the entries pruned after this step (earlier
        ones plus ``round(amount * candidates)``), shared evenly by the groups."""
        live = count_units(mask, size)
        k = prune_count(check_amount(self.amount), live)
        groups = size // self.m
        if isinstance(live, int) and isinstance(k, int):  # concrete: exact Python ints at any size
            return jnp.asarray(self.m - min((size - live + k) // groups, self.m), jnp.int32)
        before = 0 if mask is None else _count_false(mask)  # traced: jp.pruning checks its counts fit
        total = before + (k if isinstance(k, int) else _count_value(k))
        return (self.m - jnp.clip(total // groups, 0, self.m)).astype(jnp.int32)


def _count_value(c: Count) -> Array:
    """A :class:`Count` as one integer (the training step's counts fit: it checks)."""
    dtype = count_dtype()
    lo = jnp.asarray(c.lo).astype(dtype)
    return jnp.asarray(c.hi).astype(dtype) * (1 << 32) + lo if dtype == jnp.int64 else lo


@dataclasses.dataclass(frozen=True)
class BlockSparse(PruningMethod):
    """Prune the ``amount`` lowest-scoring blocks of shape ``block`` (see :func:`block_mask`).

    The units are blocks (edge blocks included): ``units(shape)`` is the
    number of blocks, and a block counts as pruned when all its entries are,
    so schedules and reports count blocks.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> spec = jp.BlockSparse(0.5, (2, 2))
    >>> spec.unit, spec.units((4, 6))
    ('blocks', 6)
    """

    unit: ClassVar[str] = "blocks"
    amount: Amount
    block: tuple[int, ...]
    reduce: str = "l1"

    def __post_init__(self) -> None:
        check_amount(self.amount)
        object.__setattr__(self, "block", check_block(self.block))
        _check_reduce(self.reduce)

    def units(self, shape: tuple[int, ...]) -> int:
        return math.prod(block_grid(shape, check_block(self.block, len(shape))))

    def pruned_units(self, mask: Array) -> Array:
        return pruned_blocks(mask, self.block)

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        check_block(self.block, len(shape))

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return block_mask(t, self.amount, self.block, reduce=self.reduce, default_mask=default_mask)

