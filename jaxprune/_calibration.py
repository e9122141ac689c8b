"""One-shot pruning of one matmul weight from calibration inputs: Wanda and SparseGPT.

Both methods read a layer's calibration inputs only through two running
statistics, accumulated in float32 by :func:`input_stats` (memory does not
grow with the calibration set): the sum of squares of each input feature
(Wanda's ``||X_j||_2**2``) and the unscaled Hessian ``X^T X`` (SparseGPT).

* :func:`wanda_mask` (Sun et al. 2023, locuslab/wanda): score
  ``|W_ij| * ||X_j||_2``, compared within each output unit.
* :func:`sparsegpt` (Frantar & Alistarh 2023, IST-DASLab/sparsegpt): the
  optimal-brain-surgeon sweep over the input columns, block by block, with the
  remaining weights updated to make up for the pruned ones.
* :func:`relative_error`: ``||(W - W') X||_F / ||W X||_F`` from the Hessian.

Kernels are 2-D matmul weights; ``in_axis`` names their input-features axis
(0 for a Flax ``Dense`` kernel ``(in, out)``, 1 for a torch ``Linear`` weight
``(out, in)``). Masks are keep-masks (True = keep), as everywhere in jaxprune.

>>> import jax, jax.numpy as jnp, jaxprune as jp
>>> x = jax.random.normal(jax.random.key(0), (64, 8))      # 64 tokens, 8 input features
>>> w = jax.random.normal(jax.random.key(1), (8, 4))       # a Dense kernel (in, out)
>>> stats = jp.input_stats(x)
>>> keep = jp.wanda_mask(w, stats, 0.5)
>>> jnp.sum(~keep, axis=0).tolist()                        # 4 of 8 inputs pruned per output unit
[4, 4, 4, 4]
>>> new_w, keep = jp.sparsegpt(w, stats, nm=(2, 4))
>>> bool(jnp.all(new_w[~keep] == 0)), float(jp.relative_error(w, new_w, stats)) < 1
(True, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._amounts import Count, check_amount, count_add, count_int32, host_count, is_traced, prune_count
from ._selection import keeps_shapes, select_lowest, sort_keys
from ._typing import Amount, Array, ArrayLike

_HIGHEST = lax.Precision.HIGHEST  # float32 products (a GPU would otherwise use TF32)


class InputStats(NamedTuple):
    """Running statistics of a matmul's calibration inputs, accumulated in float32.

    Attributes:
      count: the rows (tokens) seen, a :class:`~jaxprune._amounts.Count` (two
        uint32 words: exact beyond 2**31).
      sum_sq: ``(in,)`` float32, the sum over rows of ``x_j**2`` (Wanda's
        ``||X_j||_2**2``).
      hessian: ``(in, in)`` float32, the sum over rows of ``x x^T`` (the
        unscaled ``X^T X``), or None when not accumulated.
    """

    count: Count
    sum_sq: Array
    hessian: Array | None


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def input_stats(inputs: ArrayLike, stats: InputStats | None = None, *, hessian: bool = True) -> InputStats:
    """Add a batch of calibration inputs to running statistics.

    Args:
      inputs: activations ``(..., in_features)``; every leading dim is a row
        (a token). Cast to float32.
      stats: the running statistics to add to (None: start from zero). Its
        ``hessian is None`` must agree with ``hessian``.
      hessian: accumulate ``X^T X`` too (SparseGPT needs it; Wanda does not).

    Returns:
      The new statistics. Pure and jittable (``stats`` may be traced); NaN in
      concrete inputs raises ``ValueError`` (under ``jit`` it is not checked,
      and propagates into the statistics).

    The official code keeps running means (Wanda) and ``2/N X^T X``
    (SparseGPT); both methods are invariant to a common scale of the
    statistics, so sums are kept (nothing is rescaled per batch).

    >>> import jax.numpy as jnp
    >>> s = input_stats(jnp.ones((2, 3, 4)))                    # 6 rows of 4 features
    >>> s = input_stats(2 * jnp.ones((5, 4)), s)
    >>> s.sum_sq.tolist(), s.hessian.shape
    ([26.0, 26.0, 26.0, 26.0], (4, 4))
    >>> from jaxprune._amounts import count_int
    >>> count_int(s.count)
    11
    """
    x = _as_inputs(inputs)
    n_in = x.shape[-1]
    if stats is not None:
        _check_stats(stats, n_in, "stats")
        if (stats.hessian is None) == hessian:
            raise ValueError(
                f"stats has {'no' if stats.hessian is None else 'a'} hessian but hessian={hessian}: "
                "accumulate every batch with the same hessian= setting"
            )
    rows = math.prod(x.shape[:-1])
    if rows and _has_nan(x):
        raise ValueError(f"inputs of shape {x.shape} contain NaN: calibration inputs must be finite numbers")
    flat = x.reshape(rows, n_in)
    count = _as_device_count(host_count(rows))
    if stats is None:
        sum_sq, gram = _accumulate(flat, None, None, hessian)
        return InputStats(count, sum_sq, gram)
    sum_sq, gram = _accumulate(flat, stats.sum_sq, stats.hessian, hessian)
    return InputStats(count_add(_as_device_count(stats.count), count), sum_sq, gram)


@functools.partial(jax.jit, static_argnums=3)
def _accumulate(
    flat: Array, sum_sq: Array | None, gram: Array | None, hessian: bool
) -> tuple[Array, Array | None]:
    """The running sums plus this batch's, in one kernel (XLA adds the product
    into its output; no intermediate ``X^T X``). Computing only the upper
    triangle's tiles of ``X^T X`` cut its CPU time a little but not its wall
    time on two cores when measured, so the product is whole."""
    batch_sq = jnp.sum(jnp.square(flat), axis=0)
    sum_sq = batch_sq if sum_sq is None else sum_sq + batch_sq
    if not hessian:
        return sum_sq, None
    batch_gram = lax.dot_general(flat, flat, (((0,), (0,)), ((), ())), precision=_HIGHEST)
    return sum_sq, batch_gram if gram is None else gram + batch_gram


def _as_device_count(c: Count) -> Count:
    return Count(jnp.asarray(c.hi, jnp.uint32), jnp.asarray(c.lo, jnp.uint32))


def _as_inputs(inputs: ArrayLike) -> Array:
    x = jnp.asarray(inputs)
    if x.ndim < 1:
        raise ValueError(f"inputs must have at least 1 dim (..., in_features), got a scalar {inputs!r}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"inputs must have a real numeric dtype, got {x.dtype}")
    return x.astype(jnp.float32)


def _check_stats(stats: InputStats, n_in: int, name: str) -> None:
    if not isinstance(stats, InputStats):
        raise TypeError(f"{name} must be a jaxprune InputStats (from jp.input_stats), got {type(stats).__name__}")
    if jnp.shape(stats.sum_sq) != (n_in,):
        raise ValueError(
            f"{name} has {jnp.shape(stats.sum_sq)[-1] if jnp.ndim(stats.sum_sq) else '?'} input features "
            f"(sum_sq of shape {jnp.shape(stats.sum_sq)}), but {n_in} were expected"
        )
    if stats.hessian is not None and jnp.shape(stats.hessian) != (n_in, n_in):
        raise ValueError(f"{name}.hessian has shape {jnp.shape(stats.hessian)}, expected {(n_in, n_in)}")


def _stats_for(inputs: InputStats | ArrayLike, n_in: int, hessian: bool) -> InputStats:
    """The statistics of ``inputs`` (computed from activations, or checked)."""
    if isinstance(inputs, InputStats):
        _check_stats(inputs, n_in, "inputs")
        if hessian and inputs.hessian is None:
            raise ValueError(
                "SparseGPT needs the inputs' Hessian, but these InputStats have none: "
                "accumulate them with jp.input_stats(..., hessian=True)"
            )
        return inputs
    x = _as_inputs(inputs)
    if x.shape[-1] != n_in:
        raise ValueError(
            f"inputs have {x.shape[-1]} features (last dim of shape {x.shape}), but the kernel's input axis has "
            f"{n_in}: pass the activations that enter this matmul, or check in_axis"
        )
    return input_stats(x, hessian=hessian)


# --------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------


def _as_kernel(kernel: ArrayLike, in_axis: int) -> tuple[Array, int]:
    """The kernel as a jax array, and ``in_axis`` made non-negative."""
    k = jnp.asarray(kernel)
    if k.ndim != 2:
        raise ValueError(f"kernel must be a 2-D matmul weight, got shape {k.shape}")
    if not jnp.issubdtype(k.dtype, jnp.floating):
        raise TypeError(f"kernel must have a floating dtype, got {k.dtype}")
    if isinstance(in_axis, (bool, np.bool_)) or not isinstance(in_axis, numbers.Integral) or not -2 <= in_axis < 2:
        raise ValueError(f"in_axis must be 0, 1, -1 or -2 (the kernel's input-features axis), got {in_axis!r}")
    return k, int(in_axis) % 2


def check_nm(nm: object) -> tuple[int, int]:
    """``nm = (n, m)``: ints with ``0 <= n < m``."""
    if not isinstance(nm, (tuple, list)) or len(nm) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in nm
    ):
        raise TypeError(f"nm must be a pair of ints (n, m): keep n of every m inputs, got {nm!r}")
    n, m = int(nm[0]), int(nm[1])
    if not 0 <= n < m:
        raise ValueError(f"nm={nm!r}: expected 0 <= n < m (keep n of every m consecutive inputs)")
    return n, m


def _check_choice(amount: Amount | None, nm: object) -> tuple[Amount | None, tuple[int, int] | None]:
    """Exactly one of ``amount`` and ``nm``, each validated."""
    if (amount is None) == (nm is None):
        raise ValueError(
            f"give exactly one of amount and nm, got amount={amount!r} and nm={nm!r}"
        )
    if nm is not None:
        return None, check_nm(nm)
    check_amount(amount)  # type: ignore[arg-type]
    return amount, None


def _check_nm_fits(nm: tuple[int, int] | None, n_in: int) -> None:
    if nm is not None and n_in % nm[1]:
        raise ValueError(f"nm={nm}: m={nm[1]} must divide the kernel's {n_in} input features")


def _check_block(block_size: object, damp: object, nm: tuple[int, int] | None) -> None:
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if nm is not None and block_size % nm[1]:
        raise ValueError(
            f"block_size={block_size} must be a multiple of m={nm[1]} for nm={nm} (a group of m inputs "
            "is chosen inside one block)"
        )
    if (isinstance(damp, (bool, np.bool_)) or not isinstance(damp, numbers.Real)
            or not math.isfinite(float(damp)) or damp < 0):
        raise ValueError(f"damp must be a finite real >= 0 (a fraction of the Hessian's mean diagonal), got {damp!r}")


def _rows_view(kernel: Array, in_axis: int) -> Array:
    """The kernel as ``(out, in)`` float32 (torch's layout): one row per output unit."""
    w = kernel.astype(jnp.float32)
    return w if in_axis == 1 else w.T


def _from_rows(rows: Array, in_axis: int) -> Array:
    return rows if in_axis == 1 else rows.T


def _amount_k(amount: Amount, units: int) -> int | Array:
    """jaxprune's ``k`` for ``units``: a Python int, or int32 when the amount is traced."""
    k = prune_count(check_amount(amount), units)
    return k if isinstance(k, int) else count_int32(k)


# --------------------------------------------------------------------------
# Per-row selection
# --------------------------------------------------------------------------


#: Rows per step of the per-row selection: about this many keys, which stay in cache for every count.
_ROW_BLOCK_KEYS = 1 << 15


def _lowest_per_row(keys: Array, k: int | Array) -> Array:
    """Mark the ``k`` lowest keys of every row (last axis), ties by the lower
    index: exact, without a sort.

    Per row, a search for the smallest key ``T`` with ``count(keys <= T) >= k``
    by counts: each step counts the keys at or below a guess, interpolated
    between the bracket's keys and counts (every third step halves the
    bracket, so the worst case stays a bisection's 32 steps). A row is done
    when a guess counts exactly ``k`` (then no tie straddles it), or when the
    bracket is one key (then the ties at ``T`` are cut by index). On smooth
    score distributions the interpolation needs far fewer counts than a
    bisection; benchmarks/bench_one_shot.py measures it against a sort.

    With one CPU device, rows go in blocks of about ``_ROW_BLOCK_KEYS`` keys,
    so that every count of a block reads it from cache. Otherwise (a sharded
    kernel, a GPU) all rows go at once: each count is an elementwise map and a
    per-row sum, which shard along the rows.
    """
    n_rows, n = keys.shape
    if n_rows == 0 or n == 0:
        return jnp.zeros(keys.shape, bool)
    k = jnp.asarray(k, jnp.int32)
    if keeps_shapes():
        return _lowest_in_rows(keys, k)
    block = max(1, min(n_rows, _ROW_BLOCK_KEYS // n))
    steps = -(-n_rows // block)
    padded = jnp.pad(keys, ((0, steps * block - n_rows), (0, 0)))  # equal keys: done at once

    def body(i: Array, out: Array) -> Array:
        rows = lax.dynamic_slice_in_dim(padded, i * block, block, axis=0)
        return lax.dynamic_update_slice_in_dim(out, _lowest_in_rows(rows, k), i * block, axis=0)

    out = lax.fori_loop(0, steps, body, jnp.zeros(padded.shape, bool))
    return out[:n_rows]


def _lowest_in_rows(keys: Array, k: Array) -> Array:
    """:func:`_lowest_per_row` on one block of rows (all in one search)."""
    n = keys.shape[1]
    udt = keys.dtype

    def count_le(t: Array) -> Array:
        return jnp.sum(keys <= t[:, None], axis=1, dtype=jnp.int32)

    def done(state: tuple[Array, ...]) -> Array:
        _, lo, hi, _, c_hi = state
        return (c_hi == k) | (lo == hi) | (k <= 0)

    def step(state: tuple[Array, ...]) -> tuple[Array, ...]:
        # Invariant: count(keys < lo) = c_lo < k <= c_hi = count(keys <= hi).
        it, lo, hi, c_lo, c_hi = state
        span = hi - lo
        frac = (k - c_lo).astype(jnp.float32) / jnp.maximum(c_hi - c_lo, 1).astype(jnp.float32)
        guess = jnp.clip(jnp.floor(frac * span.astype(jnp.float32)), 0, None).astype(udt)
        offset = jnp.where(it % 3 == 2, span // 2, guess)
        mid = lo + jnp.minimum(offset, jnp.maximum(span, 1) - 1)  # in [lo, hi): always progresses
        c = count_le(mid)
        active, enough = ~done(state), c >= k
        up, down = active & ~enough, active & enough
        return (it + 1, jnp.where(up, mid + 1, lo), jnp.where(down, mid, hi),
                jnp.where(up, c, c_lo), jnp.where(down, c, c_hi))

    rows = keys.shape[0]
    start = (jnp.zeros((), jnp.int32), jnp.min(keys, axis=1), jnp.max(keys, axis=1),
             jnp.zeros(rows, jnp.int32), jnp.full(rows, n, jnp.int32))
    _, lo, hi, c_lo, c_hi = lax.while_loop(lambda s: jnp.any(~done(s)), step, start)
    threshold = hi[:, None]

    def cut_ties(_: None) -> Array:
        tie = keys == threshold
        order = jnp.cumsum(tie, axis=1, dtype=jnp.int32)
        return (keys < threshold) | (tie & (order <= (k - c_lo)[:, None]))

    prune = lax.cond(jnp.all((c_hi == k) | (k <= 0)), lambda _: keys <= threshold, cut_ties, None)
    return prune & (k > 0)


def _group_prune(scores: Array, n: int, m: int) -> Array:
    """N:M: in every group of ``m`` consecutive entries of the last axis, the
    ``m - n`` lowest scores pruned (ties: the lower index first; NaN last)."""
    keys = sort_keys(scores)
    groups = keys.reshape(*keys.shape[:-1], -1, m)
    if m <= 16:  # small groups: pairwise comparisons beat a sort
        a, b = groups[..., :, None], groups[..., None, :]  # a: entry j, b: entry i
        earlier = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]  # [j, i]: i before j
        earlier = earlier.reshape((1,) * (groups.ndim - 1) + (m, m))
        ranks = jnp.sum((b < a) | ((b == a) & earlier), axis=-1, dtype=jnp.int32)
        return (ranks < m - n).reshape(scores.shape)
    return _lowest_per_row(groups.reshape(-1, m), m - n).reshape(scores.shape)


# --------------------------------------------------------------------------
# Wanda
# --------------------------------------------------------------------------


def wanda_mask(
    kernel: ArrayLike,
    inputs: InputStats | ArrayLike,
    amount: Amount | None = None,
    *,
    in_axis: int = 0,
    nm: tuple[int, int] | None = None,
) -> Array:
    """Wanda's keep-mask: prune by ``|W_ij| * ||X_j||_2`` within each output unit.

    Args:
      kernel: a 2-D matmul weight.
      inputs: the layer's calibration inputs ``(..., in)`` or their
        :class:`InputStats` (``sum_sq`` is used).
      amount: per output unit, how many of its inputs to prune: an int count
        or a fraction (``k = round(amount * in)``, torch's counting; may be
        traced under ``jit``).
      in_axis: the kernel's input-features axis (0: ``(in, out)``, 1: ``(out, in)``).
      nm: ``(n, m)`` instead of ``amount``: keep ``n`` of every ``m``
        consecutive inputs of each output unit (2:4 keeps 2 of 4).

    Returns:
      A bool keep-mask of the kernel's shape. Exactly ``k`` inputs of every
      output unit are pruned (``m - n`` of every group for ``nm``): the lowest
      scores, ties broken by the lower input index, NaN scores pruned last.

    The official code prunes ``int(amount * in)`` per row (truncation: 0.3 of
    10 inputs is 3 there, but 0.35 of 10 is 3 there and 4 here) after a full
    stable sort; here the count is torch's ``round`` and the tie rule the same
    stable order.

    >>> import jax.numpy as jnp
    >>> w = jnp.array([[1.0, -2.0, 3.0, 0.5]])      # one output unit (torch layout)
    >>> x = jnp.array([[1.0, 1.0, 0.1, 4.0]])       # one token
    >>> wanda_mask(w, x, 0.5, in_axis=1).tolist()   # scores 1, 2, 0.3, 2
    [[False, True, False, True]]
    """
    k_arr, in_axis = _as_kernel(kernel, in_axis)
    n_in = k_arr.shape[in_axis]
    amount, nm = _check_choice(amount, nm)
    _check_nm_fits(nm, n_in)
    stats = _stats_for(inputs, n_in, hessian=False)
    _check_finite(stats.sum_sq, "the inputs' sum of squares")
    k = None if nm is None else 0
    if amount is not None:
        k = _amount_k(amount, n_in)
    return _wanda(k_arr, stats.sum_sq, k, in_axis=in_axis, nm=nm)


@functools.partial(jax.jit, static_argnames=("in_axis", "nm"))
def _wanda(kernel: Array, sum_sq: Array, k: int | Array, *, in_axis: int, nm: tuple[int, int] | None) -> Array:
    scores = jnp.abs(_rows_view(kernel, in_axis)) * jnp.sqrt(sum_sq)[None, :]
    if nm is not None:
        prune = _group_prune(scores, *nm)
    else:
        prune = _lowest_per_row(sort_keys(scores), k)
    return _from_rows(~prune, in_axis)


def _has_nan(x: Array) -> bool:
    """NaN in a concrete array (checked where it lives; only a bool comes
    back), also inside a user's trace that closes over it; False for a traced
    one, which cannot be checked."""
    if is_traced(x):
        return False
    with jax.ensure_compile_time_eval():  # a concrete value inside a trace: evaluate, do not stage
        return bool(jnp.isnan(x).any())


def _check_finite(x: Array, what: str) -> None:
    if _has_nan(x):
        raise ValueError(f"{what} contain NaN: the calibration inputs must be finite numbers")


# --------------------------------------------------------------------------
# SparseGPT
# --------------------------------------------------------------------------


def sparsegpt(
    kernel: ArrayLike,
    inputs: InputStats | ArrayLike,
    amount: Amount | None = None,
    *,
    in_axis: int = 0,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[Array, Array]:
    """SparseGPT: prune a matmul weight and update the rest to keep its outputs.

    The official algorithm (IST-DASLab/sparsegpt, ``fasterprune``):

    * ``H = X^T X`` (the official ``2/N X^T X``: a common scale changes
      nothing, the damping being relative); inputs never seen (``H_jj = 0``)
      get ``H_jj = 1`` and their weights 0; ``damp * mean(diag H)`` is added to
      the diagonal; ``U``, the upper Cholesky factor of ``H^-1``, is computed
      (here from one Cholesky factorization of ``H`` with its order reversed,
      ``U = P L^-1 P``: the same factor, without forming ``H^-1``).
    * The input columns are swept in blocks of ``block_size``. With
      ``amount``, at the start of each block the mask is chosen over the
      whole ``(out, block)`` slab on ``w**2 / U_jj**2``: exactly
      ``round(amount * out * block)`` entries pruned (a shorter last block
      counts its own size), ties by the kernel's flat order (lower first),
      NaN last. The official threshold ``<=`` on the sorted ``int(...)``-th
      score prunes one entry more than that. With ``nm``, the ``m - n``
      lowest of every group of ``m`` inputs are chosen per output row when
      the sweep reaches the group, on the updated weights (as the official
      code does).
    * Column by column, each pruned weight's error ``(w - q) / U_jj`` is
      spread over the later columns with row ``j`` of ``U`` (the
      optimal-brain-surgeon update); pruned weights are exactly 0.

    Args:
      kernel: a 2-D matmul weight (the result has its dtype).
      inputs: calibration inputs ``(..., in)`` or :class:`InputStats` with a Hessian.
      amount: per block slab, the count or fraction of its entries to prune
        (torch's counting; may be traced). A count applies to every block, so
        a shorter last block must hold it.
      in_axis: the kernel's input-features axis.
      nm: ``(n, m)`` instead of ``amount``: keep ``n`` of every ``m``
        consecutive inputs per output unit (``block_size`` a multiple of ``m``).
      block_size: columns per block (the mask's granularity with ``amount``).
      damp: the damping, a fraction of the mean of ``diag H``.

    Returns:
      ``(new_kernel, keep_mask)``. With concrete arguments, a Hessian that is
      not positive definite after damping raises ``ValueError`` (raise
      ``damp``); under ``jit`` it is not checked, and the result is NaN.

    The computation is one jitted sweep: ``lax.fori_loop`` over blocks and
    columns, the later columns updated through a binary tree of block
    products (each column pair updated once, as the official per-block
    update, in matmuls). Output rows are independent, so a kernel sharded on
    its output axis needs no collective but the slab selection's counts.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (256, 16))
    >>> w = jax.random.normal(jax.random.key(1), (16, 8))
    >>> new_w, keep = sparsegpt(w, x, 0.5, block_size=8)
    >>> int(jnp.sum(~keep)), new_w.dtype.name, bool(jnp.all(new_w[~keep] == 0))
    (64, 'float32', True)
    """
    k_arr, in_axis = _as_kernel(kernel, in_axis)
    n_out, n_in = k_arr.shape[1 - in_axis], k_arr.shape[in_axis]
    amount, nm = _check_choice(amount, nm)
    _check_nm_fits(nm, n_in)
    _check_block(block_size, damp, nm)
    stats = _stats_for(inputs, n_in, hessian=True)
    hess = jnp.asarray(stats.hessian)
    _check_finite(hess, "the inputs' Hessian entries")
    block = min(int(block_size), n_in)
    rest = n_in % block
    k_full: int | Array = 0
    k_rest: int | Array = 0
    if amount is not None:
        k_full = _amount_k(amount, n_out * block)
        checked = check_amount(amount)
        if rest and checked.is_count and checked.concrete and int(checked.value) > n_out * rest:  # type: ignore[arg-type]
            raise ValueError(
                f"amount={amount} entries per block is more than the {n_out * rest} entries of the last block "
                f"({n_in} inputs are not a multiple of block_size={block}): give a fraction, or a block_size "
                "that divides the inputs"
            )
        k_rest = _amount_k(amount, n_out * rest) if rest else 0
    new, keep, ok = _sparsegpt(
        k_arr, hess, k_full, k_rest, jnp.float32(damp), in_axis=in_axis, nm=nm, block=block,
    )
    if not is_traced(ok) and not bool(ok):
        raise ValueError(
            f"the Hessian of the inputs is not positive definite after damping with damp={damp}: "
            f"raise damp (e.g. damp={max(10 * float(damp), 0.01):g}), or calibrate with more inputs"
        )
    return new, keep


@functools.partial(jax.jit, static_argnames=("in_axis", "nm", "block"))
def _sparsegpt(
    kernel: Array,
    hessian: Array,
    k_full: int | Array,
    k_rest: int | Array,
    damp: Array,
    *,
    in_axis: int,
    nm: tuple[int, int] | None,
    block: int,
) -> tuple[Array, Array, Array]:
    w = _rows_view(kernel, in_axis)
    n_in = w.shape[1]
    dead = jnp.diagonal(hessian) == 0
    eye = jnp.eye(n_in, dtype=bool)
    h = jnp.where(eye & dead[None, :], jnp.float32(1), hessian)
    w = jnp.where(dead[None, :], jnp.float32(0), w)
    h = h + jnp.where(eye, damp * jnp.mean(jnp.diagonal(h)), jnp.float32(0))
    u = _upper_inverse_factor(h)
    ok = ~jnp.isnan(u).any()
    q, prune = _sweep_layer(w, u, k_full, k_rest, nm=nm, block=block, flat_ties=in_axis == 0)
    return _from_rows(q, in_axis).astype(kernel.dtype), _from_rows(~prune, in_axis), ok


def _upper_inverse_factor(h: Array) -> Array:
    """``U`` upper triangular with ``U^T U = h^-1`` (torch's
    ``cholesky(cholesky_inverse(cholesky(h)), upper=True)``), from one
    Cholesky factorization: with ``P`` the order reversal and ``P h P = L L^T``,
    ``h^-1 = (P L^-T P)(P L^-1 P)`` and ``P L^-1 P`` is upper triangular with
    a positive diagonal, hence the factor. NaN when ``h`` is not positive
    definite."""
    return jnp.triu(_lower_inverse(_cholesky(h[::-1, ::-1]))[::-1, ::-1])


#: Matrices up to this size are factored and inverted by LAPACK's routines;
#: larger ones split in halves whose products are matmuls (XLA:CPU runs those
#: on every core, LAPACK's Cholesky on one; a triangular solve against the
#: identity would also cost three times a triangular inverse's flops).
_FACTOR_BASE = 512


def _cholesky(a: Array) -> Array:
    """The lower Cholesky factor, by halves: ``L11 = chol(A11)``,
    ``L21 = A21 L11^-T``, ``L22 = chol(A22 - L21 L21^T)``."""
    n = a.shape[0]
    if n <= _FACTOR_BASE:
        return jnp.linalg.cholesky(a)
    k = n // 2
    l11 = _cholesky(a[:k, :k])
    l21 = lax.linalg.triangular_solve(l11, a[k:, :k], left_side=False, lower=True, transpose_a=True)
    l22 = _cholesky(a[k:, k:] - _dot(l21, l21.T))
    return jnp.block([[l11, jnp.zeros((k, n - k), a.dtype)], [l21, l22]])


def _lower_inverse(lower: Array) -> Array:
    """``L^-1`` for a lower triangular ``L``, by halves:
    ``[[X11, 0], [-X22 L21 X11, X22]]`` with ``X11, X22`` the halves' inverses."""
    n = lower.shape[0]
    if n <= _FACTOR_BASE:
        return lax.linalg.triangular_solve(lower, jnp.eye(n, dtype=lower.dtype), left_side=True, lower=True)
    k = n // 2
    x11, x22 = _lower_inverse(lower[:k, :k]), _lower_inverse(lower[k:, k:])
    x21 = -_dot(x22, _dot(lower[k:, :k], x11))
    return jnp.block([[x11, jnp.zeros((k, n - k), lower.dtype)], [x21, x22]])


def _sweep_layer(
    w: Array, u: Array, k_full: int | Array, k_rest: int | Array, *,
    nm: tuple[int, int] | None, block: int, flat_ties: bool,
) -> tuple[Array, Array]:
    """The column sweep over the whole ``(out, in)`` weight: full blocks in a
    tree sweep, then the shorter last block (its columns first receive the
    update of every full block, one product)."""
    n_in = w.shape[1]
    full, rest = divmod(n_in, block)
    width = full * block

    def process_block(_: Array, w_blk: Array, u_blk: Array) -> tuple[Array, Array, Array]:
        return _sweep_block(w_blk, u_blk, k_full, nm=nm, flat_ties=flat_ties)

    w_full, err, prune = _tree_sweep(w[:, :width], u[:width, :width], block, full, process_block)
    if not rest:
        return w_full, prune
    w_rest = w[:, width:] - _dot(err, u[:width, width:])
    q_rest, _, prune_rest = _sweep_block(w_rest, u[width:, width:], k_rest, nm=nm, flat_ties=flat_ties)
    return jnp.concatenate([w_full, q_rest], axis=1), jnp.concatenate([prune, prune_rest], axis=1)


def _dot(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


#: Columns per leaf of a block's inner sweep (rank-one updates on ``(out, leaf)``).
_LEAF = 16


def _sweep_block(
    w_blk: Array, u_blk: Array, k: int | Array, *, nm: tuple[int, int] | None, flat_ties: bool
) -> tuple[Array, Array, Array]:
    """One block: its mask (the slab's ``k`` lowest ``w**2 / U_jj**2`` with
    ``amount``), then its columns swept in leaves. Returns ``(q, err, prune)``."""
    width = w_blk.shape[1]
    diag = jnp.diagonal(u_blk)
    if nm is None:
        scores = jnp.square(w_blk) / jnp.square(diag)[None, :]
        slab = scores.T if flat_ties else scores  # ties in the kernel's flat order
        (selected,) = select_lowest([slab], [None], k)
        prune_blk = selected.T if flat_ties else selected
        leaf = math.gcd(width, _LEAF)
    else:
        prune_blk = jnp.zeros(w_blk.shape, bool)
        leaf = nm[1] * math.gcd(width // nm[1], max(1, _LEAF // nm[1]))

    def process_leaf(j: Array, w_leaf: Array, u_leaf: Array) -> tuple[Array, Array, Array]:
        prune_leaf = lax.dynamic_slice_in_dim(prune_blk, j * leaf, leaf, axis=1)
        return _sweep_columns(w_leaf, u_leaf, prune_leaf, nm)

    return _tree_sweep(w_blk, u_blk, leaf, width // leaf, process_leaf)


def _sweep_columns(
    w: Array, u: Array, prune: Array, nm: tuple[int, int] | None
) -> tuple[Array, Array, Array]:
    """The official column loop on a few columns: prune, then spread each
    column's error over the later ones with rank-one updates (``u`` is upper
    triangular: earlier columns get exact zeros). With ``nm``, each group's
    mask is chosen when the loop reaches it, on the updated weights."""
    width = w.shape[1]
    diag = jnp.diagonal(u)

    def column(i: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        w, err, prune = carry
        col = lax.dynamic_index_in_dim(w, i, axis=1, keepdims=False)
        q = jnp.where(lax.dynamic_index_in_dim(prune, i, axis=1, keepdims=False), jnp.float32(0), col)
        e = (col - q) / diag[i]
        w = w - e[:, None] * lax.dynamic_index_in_dim(u, i, axis=0, keepdims=True)
        w = lax.dynamic_update_index_in_dim(w, q, i, axis=1)
        return w, lax.dynamic_update_index_in_dim(err, e, i, axis=1), prune

    carry = (w, jnp.zeros_like(w), prune)
    if nm is None:
        return lax.fori_loop(0, width, column, carry)
    n, m = nm

    def group(g: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        w, err, prune = carry
        cols = lax.dynamic_slice_in_dim(w, g * m, m, axis=1)
        d = lax.dynamic_slice_in_dim(diag, g * m, m)
        chosen = _group_prune(jnp.square(cols) / jnp.square(d)[None, :], n, m)
        prune = lax.dynamic_update_slice_in_dim(prune, chosen, g * m, axis=1)
        return lax.fori_loop(g * m, g * m + m, column, (w, err, prune))

    return lax.fori_loop(0, width // m, group, carry)


LeafFn = Callable[[Array, Array, Array], tuple[Array, Array, Array]]


def _tree_sweep(w: Array, u: Array, leaf: int, leaves: int, process: LeafFn) -> tuple[Array, Array, Array]:
    """Sweep ``leaves`` leaves of ``leaf`` columns left to right.

    ``process(j, w_leaf, u_leaf) -> (q, err, prune)`` prunes leaf ``j`` once
    every earlier column's update has reached it. The updates travel down a
    binary tree: when leaf ``t - 1`` completes a node of ``p`` leaves that is
    a left child, the node's errors update its right sibling (``p`` leaves, cut
    at the end) in one product. Every column then reaches every later one
    exactly once, as in the official per-block update of all later columns,
    but with static shapes (one branch of ``lax.switch`` per node shape) and
    no product on columns already swept.
    """
    n_out = w.shape[0]
    if leaves == 0:
        return w, jnp.zeros_like(w), jnp.zeros(w.shape, bool)
    shapes, branch = _tree_schedule(leaves)

    def update(p: int, c: int) -> Callable[[Array, Array, Array], Array]:
        def apply(t: Array, w: Array, err: Array) -> Array:
            e_node = lax.dynamic_slice(err, (0, (t - p) * leaf), (n_out, p * leaf))
            u_node = lax.dynamic_slice(u, ((t - p) * leaf, t * leaf), (p * leaf, c * leaf))
            window = lax.dynamic_slice(w, (0, t * leaf), (n_out, c * leaf))
            return lax.dynamic_update_slice(w, window - _dot(e_node, u_node), (0, t * leaf))
        return apply

    branches = [lambda t, w, err: w] + [update(p, c) for p, c in shapes]
    table = jnp.asarray(branch, jnp.int32)

    def step(j: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        w, err, prune = carry
        start = j * leaf
        w_leaf = lax.dynamic_slice_in_dim(w, start, leaf, axis=1)
        u_leaf = lax.dynamic_slice(u, (start, start), (leaf, leaf))
        q, e, p = process(j, w_leaf, u_leaf)
        w = lax.dynamic_update_slice_in_dim(w, q, start, axis=1)
        err = lax.dynamic_update_slice_in_dim(err, e, start, axis=1)
        prune = lax.dynamic_update_slice_in_dim(prune, p, start, axis=1)
        w = lax.switch(table[j], branches, j + 1, w, err)
        return w, err, prune

    carry = (w, jnp.zeros_like(w), jnp.zeros(w.shape, bool))
    return lax.fori_loop(0, leaves, step, carry)


@functools.cache
def _tree_schedule(leaves: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The update after each leaf: ``shapes``, the distinct ``(node leaves,
    window leaves)`` products, and ``branch[j]`` (0: none, else 1 + index)."""
    shapes: list[tuple[int, int]] = []
    branch = []
    for j in range(leaves):
        t = j + 1
        if t == leaves:
            branch.append(0)
            continue
        p = t & -t  # the node that leaf j completes as a left child: t's lowest set bit
        shape = (p, min(p, leaves - t))
        if shape not in shapes:
            shapes.append(shape)
        branch.append(1 + shapes.index(shape))
    return shapes, branch


# --------------------------------------------------------------------------
# Reconstruction error
# --------------------------------------------------------------------------


def relative_error(kernel: ArrayLike, new_kernel: ArrayLike, stats: InputStats, *, in_axis: int = 0) -> Array:
    """``||(W - W') X||_F / ||W X||_F`` on the calibration inputs, from their Hessian.

    Computed as ``sqrt(tr(D H D^T) / tr(W H W^T))`` with ``D = W - W'`` and
    ``H = X^T X`` (float32); 0 where ``W X = 0``.

    >>> import jax.numpy as jnp
    >>> s = input_stats(jnp.eye(3))
    >>> w = jnp.array([[3.0], [4.0], [0.0]])
    >>> round(float(relative_error(w, w.at[0, 0].set(0.0), s)), 6)
    0.6
    """
    k_arr, in_axis = _as_kernel(kernel, in_axis)
    new = jnp.asarray(new_kernel)
    if new.shape != k_arr.shape:
        raise ValueError(f"new_kernel has shape {new.shape}, expected the kernel's {k_arr.shape}")
    _check_stats(stats, k_arr.shape[in_axis], "stats")
    if stats.hessian is None:
        raise ValueError(
            "relative_error needs the inputs' Hessian: accumulate stats with jp.input_stats(..., hessian=True)"
        )
    return _relative_error(k_arr, new, stats.hessian, in_axis=in_axis)


@functools.partial(jax.jit, static_argnames="in_axis")
def _relative_error(kernel: Array, new: Array, hessian: Array, *, in_axis: int) -> Array:
    w = _rows_view(kernel, in_axis)
    d = w - _rows_view(new, in_axis)
    num = jnp.maximum(jnp.sum(_dot(d, hessian) * d), 0)
    den = jnp.sum(_dot(w, hessian) * w)
    return jnp.where(den > 0, jnp.sqrt(num / jnp.where(den > 0, den, 1)), jnp.float32(0))


# --------------------------------------------------------------------------
# Specs for one_shot
# --------------------------------------------------------------------------


def _check_spec(amount: Amount | None, nm: object) -> tuple[int, int] | None:
    if is_traced(amount):
        raise TypeError("a spec's amount must be concrete (it is a static, hashable value), got a traced array")
    _, checked = _check_choice(amount, nm)
    return checked


@dataclasses.dataclass(frozen=True)
class Wanda:
    """Wanda (prune by ``|W| * ||X||`` per output unit) for :func:`jaxprune.one_shot`.

    ``Wanda(0.5)``: half of each output unit's inputs; ``Wanda(nm=(2, 4))``:
    2 of every 4. See :func:`wanda_mask`.

    >>> import jax.numpy as jnp
    >>> spec = Wanda(nm=(1, 2))
    >>> new, keep = spec.prune(jnp.array([[1.0, 2.0], [3.0, 0.5]]), input_stats(jnp.ones((1, 2))))
    >>> new.tolist(), keep.tolist()
    ([[0.0, 2.0], [3.0, 0.0]], [[False, True], [True, False]])
    """

    amount: float | int | None = None
    nm: tuple[int, int] | None = None
    needs_hessian: ClassVar[bool] = False  # one_shot may accumulate it anyway, for its report

    def __post_init__(self) -> None:
        nm = _check_spec(self.amount, self.nm)
        object.__setattr__(self, "nm", nm)  # a list becomes the hashable tuple

    def prune(self, kernel: Array, stats: InputStats, *, in_axis: int = 0) -> tuple[Array, Array]:
        """``(kernel with pruned entries 0, keep-mask)``."""
        keep = wanda_mask(kernel, stats, self.amount, in_axis=in_axis, nm=self.nm)
        kernel = jnp.asarray(kernel)
        return jnp.where(keep, kernel, jnp.zeros((), kernel.dtype)), keep


@dataclasses.dataclass(frozen=True)
class SparseGPT:
    """SparseGPT (optimal-brain-surgeon updates from the inputs' Hessian) for
    :func:`jaxprune.one_shot`.

    ``SparseGPT(0.5)``, ``SparseGPT(nm=(2, 4), block_size=128, damp=0.01)``.
    See :func:`sparsegpt`.

    >>> SparseGPT(0.5) == SparseGPT(amount=0.5, block_size=128), SparseGPT.needs_hessian
    (True, True)
    """

    amount: float | int | None = None
    nm: tuple[int, int] | None = None
    block_size: int = 128
    damp: float = 0.01
    needs_hessian: ClassVar[bool] = True

    def __post_init__(self) -> None:
        nm = _check_spec(self.amount, self.nm)
        _check_block(self.block_size, self.damp, nm)
        object.__setattr__(self, "nm", nm)

    def prune(self, kernel: Array, stats: InputStats, *, in_axis: int = 0) -> tuple[Array, Array]:
        """``(updated kernel with pruned entries 0, keep-mask)``."""
        return sparsegpt(
            kernel, stats, self.amount, in_axis=in_axis, nm=self.nm, block_size=self.block_size, damp=self.damp
        )
