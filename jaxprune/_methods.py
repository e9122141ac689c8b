"""torch's pruning methods as pure functions returning boolean keep-masks.

Each public function validates its inputs eagerly (so a bad amount, dim or
shape fails at the call, with torch's error types), then runs a jitted kernel.
Inside a user's ``jit`` the kernels inline; amounts and default masks may be
traced, and changing them never recompiles.

The two building blocks, :func:`unstructured_mask` and :func:`structured_mask`,
are public: every built-in method is one of them applied to its own scores,
and a custom strategy is the same with the user's scores.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
from collections.abc import Iterator
from typing import Literal, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _host
from ._amounts import CheckedAmount, Count, as_count, check_amount, count_true, host_count, is_traced, prune_count
from ._errors import NormOrderError, PruningShapeError
from ._selection import like, magnitude_bits, magnitude_keys, placed, select_lowest, settings, sort_keys
from ._typing import Amount, Array, ArrayLike, NormOrder, PRNGKey

_T = TypeVar("_T", Array, np.ndarray)

# --------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------


def as_tensor(t: ArrayLike, name: str = "t") -> Array:
    """``t`` as a jax array of a real numeric dtype (integer or floating).

    Without x64, jax holds no 64-bit values: a 64-bit NumPy integer array is
    accepted when its values fit in 32 bits (then it ranks exactly), and a
    float64 one when its finite values fit in float32 (it ranks at float32
    precision); otherwise ``TypeError`` says to enable x64.
    """
    return t if isinstance(t, jax.Array) and _check_real(t.dtype, name) else jnp.asarray(host_tensor(t, name))


def host_tensor(t: ArrayLike, name: str = "t") -> np.ndarray:
    """:func:`as_tensor`'s checks and dtype, as a NumPy array (a view where it can be)."""
    if type(t) is np.ndarray and t.dtype in _HOST_CANONICAL:
        return t  # (what the checks below return for it, without their cost per leaf)
    if isinstance(t, jax.Array):
        _check_real(t.dtype, name)
        return np.asarray(t)
    host = _host_array(t, name)
    if host.dtype == np.bool_ or not (jnp.issubdtype(host.dtype, jnp.integer) or jnp.issubdtype(host.dtype,
                                                                                                 jnp.floating)):
        raise TypeError(f"{name} must have a real numeric dtype (integer or floating), got {host.dtype}: {t!r}")
    _check_narrowing(host, name)
    return host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)


# Real dtypes that jax keeps as they are with or without x64 (no narrowing to check).
_HOST_CANONICAL = frozenset(np.dtype(d) for d in ("float32", "float16", "int32", "int16", "int8", "uint32",
                                                   "uint16", "uint8"))


def _check_real(dtype: np.dtype, name: str) -> bool:
    if dtype == jnp.bool_ or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"{name} must have a real numeric dtype (integer or floating), got {dtype}")
    return True


def _host_array(t: object, name: str) -> np.ndarray:
    """``np.asarray(t)``, with a clear error for what NumPy cannot read (a torch
    tensor that requires grad, or on a GPU, raises torch's RuntimeError)."""
    if type(t).__module__.split(".")[0] == "torch":
        try:
            return np.asarray(t)
        except (RuntimeError, TypeError) as err:
            raise TypeError(
                f"{name} is a torch.Tensor ({getattr(t, 'dtype', '?')}, requires_grad="
                f"{getattr(t, 'requires_grad', '?')}) that NumPy cannot read: convert it with "
                "jaxprune.interop.to_jax(t) (or t.detach().cpu().numpy())"
            ) from err
    try:
        return np.asarray(t)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array, got {type(t).__name__}: {t!r}") from err


def _check_narrowing(host: np.ndarray, name: str) -> None:
    """Refuse 64-bit values that jax without x64 would change (wrap or overflow)."""
    # canonicalize_dtype(int64) is int64 exactly when x64 is on (jax.config.jax_enable_x64, which stubs lack)
    if host.dtype.itemsize != 8 or jax.dtypes.canonicalize_dtype(jnp.int64) == jnp.int64 or host.size == 0:
        return
    if host.dtype.kind in "iu":
        narrow = np.int32 if host.dtype.kind == "i" else np.uint32
        info = np.iinfo(narrow)
        bad = (host < info.min) | (host > info.max)
    else:
        finite = np.isfinite(host)
        bad = finite & (np.abs(host) > np.finfo(np.float32).max)
    if bad.any():
        value = host[bad].flat[0]
        raise TypeError(
            f"{name} has dtype {host.dtype} and holds {value!r}, which jax without x64 cannot represent "
            f"(it narrows {host.dtype} to 32 bits): enable x64 (jax.config.update('jax_enable_x64', True)) "
            "or convert the values"
        )


def check_key(key: PRNGKey) -> PRNGKey:
    """Accept a typed key (``jax.random.key``) or a legacy ``uint32[2]`` key."""
    if isinstance(key, (jax.Array, np.ndarray)):
        if key.dtype == np.uint32 and key.shape == (2,):
            return key
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
    raise TypeError(
        "key must be a PRNG key from jax.random.key(seed) (or a legacy jax.random.PRNGKey), "
        f"got {type(key).__name__}: {key!r}"
    )


def as_mask(mask: ArrayLike, shape: tuple[int, ...], name: str, t: ArrayLike | None = None) -> Array:
    """A keep-mask of ``shape`` as bool (a 0/1 torch-style mask: nonzero = keep).

    Given the tensor ``t``, a mask placed on other devices is refused (a mask
    sharded differently over the same devices is resharded like ``t``).
    """
    arr = mask if isinstance(mask, jax.Array) else jnp.asarray(_host_array(mask, name))
    if tuple(arr.shape) != tuple(shape):
        raise PruningShapeError(f"{name} must have the tensor's shape {tuple(shape)}, got {tuple(arr.shape)}")
    if t is not None:
        check_placement(arr, t, name)
    return arr if arr.dtype == jnp.bool_ else arr != 0


def host_mask(mask: ArrayLike, shape: tuple[int, ...], name: str, t: object = None) -> np.ndarray:
    """:func:`as_mask` as a NumPy bool array."""
    if tuple(np.shape(mask)) != tuple(shape):
        raise PruningShapeError(f"{name} must have the tensor's shape {tuple(shape)}, got {tuple(np.shape(mask))}")
    if t is not None:
        check_placement(mask, t, name)
    arr = mask if isinstance(mask, np.ndarray) else np.asarray(mask) if isinstance(mask, jax.Array) \
        else _host_array(mask, name)
    return arr if arr.dtype == np.bool_ else np.not_equal(arr, 0)


def _device_ids(x: jax.Array) -> list[int]:
    return sorted(d.id for d in x.sharding.device_set)


def check_placement(mask: ArrayLike, t: object, name: str) -> None:
    """Refuse a concrete mask committed to other devices than its tensor."""
    if not (isinstance(mask, jax.Array) and isinstance(t, jax.Array)) or is_traced(mask) or is_traced(t):
        return
    if mask.committed and mask.sharding.device_set != t.sharding.device_set:
        raise ValueError(
            f"{name} is on devices {_device_ids(mask)} but its tensor is on devices {_device_ids(t)}: "
            "put the mask where the tensor is, e.g. jax.device_put(mask, tensor.sharding)"
        )


def check_scores(t: _T, importance_scores: ArrayLike | None) -> _T:
    """``importance_scores`` checked against ``t`` (``t`` itself when None);
    NumPy when ``t`` is NumPy (the host path)."""
    if importance_scores is None:
        return t
    host = isinstance(t, np.ndarray)
    scores = host_tensor(importance_scores, "importance_scores") if host else as_tensor(importance_scores,
                                                                                         "importance_scores")
    if scores.shape != t.shape:
        raise PruningShapeError(
            f"importance_scores should have the same shape as tensor t, got {scores.shape} vs {t.shape}"
        )
    return cast(_T, scores)


def check_dim(shape: tuple[int, ...], dim: int) -> int:
    """torch's structured checks; returns ``dim`` made non-negative."""
    if len(shape) <= 1:
        raise ValueError(
            "Structured pruning can only be applied to multidimensional tensors. "
            f"Found tensor of shape {tuple(shape)} with {len(shape)} dims"
        )
    if is_traced(dim):
        raise TypeError(
            "dim must be a static Python int, got a traced value: under jax.jit mark it static, "
            "e.g. jax.jit(f, static_argnames=('dim', 'n'))"
        )
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}: {dim!r}")
    if not -len(shape) <= dim < len(shape):
        raise IndexError(
            f"Invalid index {dim} for tensor of shape {tuple(shape)} (dims {-len(shape)} to {len(shape) - 1})"
        )
    return int(dim) % len(shape)


def check_shape(shape: object) -> tuple[int, ...]:
    """A shape: a sequence of non-negative ints (a float extent such as 3.5 is refused, not truncated)."""
    try:
        extents = tuple(shape)  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError(f"shape must be a tuple of ints, got {type(shape).__name__}: {shape!r}") from err
    for s in extents:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s < 0:
            raise TypeError(f"shape must be a tuple of non-negative ints, got {shape!r} (extent {s!r})")
    return tuple(int(s) for s in extents)


def check_norm(n: NormOrder, ndim: int | None = None) -> float | Literal["fro", "nuc"]:
    """Validate ``ln_structured``'s ``n`` (and, given ``ndim``, that torch accepts it there)."""
    if n is None:
        return 2.0
    if isinstance(n, str):
        if n not in ("fro", "nuc"):
            raise NormOrderError(f"Unsupported norm order n={n!r}: expected a real number, inf, -inf, 'fro' or 'nuc'")
        if ndim is not None:
            allowed = (2, 3) if n == "fro" else (3,)
            if ndim not in allowed:
                raise NormOrderError(
                    f"n={n!r} needs a tensor with {' or '.join(map(str, allowed))} dims (torch reduces the other "
                    f"dims as a matrix), got {ndim} dims; use n=2 for the vector 2-norm"
                )
        return n
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Real) or math.isnan(float(n)):
        raise NormOrderError(f"Unsupported norm order n={n!r}: expected a real number, inf, -inf, 'fro' or 'nuc'")
    return float(n)


def count_units(default_mask: Array | None, total: int) -> int | Count:
    """Units still unpruned: a Python int when the mask is concrete, a
    two-word :class:`~jaxprune._amounts.Count` when traced (exact beyond 2**31)."""
    if default_mask is None:
        return total
    if is_traced(default_mask):
        return count_true(default_mask)
    return int(np.count_nonzero(np.asarray(default_mask)))


def as_k(k: int | Count) -> Count:
    # One abstract type for every k (two uint32 words), so amounts never recompile.
    return host_count(k) if isinstance(k, int) else as_count(k)


# --------------------------------------------------------------------------
# The NumPy path for eager calls (jaxprune/_host.py)
# --------------------------------------------------------------------------


def on_host(*values: object) -> bool:
    """Whether a call on these inputs (arrays, amounts; None ignored) runs in
    NumPy: every one concrete and in host memory (not a jax array on an
    accelerator or on several devices), at most ``settings().host_max``
    values in all, and the ``host`` setting on."""
    config = settings()
    if not config.host:
        return False
    total = 0
    for x in values:
        if x is None:
            continue
        if is_traced(x):
            return False
        dtype = x.dtype if isinstance(x, (np.ndarray, jax.Array)) else None
        if dtype is not None and dtype.kind not in "biuf" and dtype != jnp.bfloat16:
            return False  # float8 and other ml_dtypes: the kernels (the bit tricks here assume IEEE layouts)
        if isinstance(x, jax.Array):
            devices = x.sharding.device_set
            if len(devices) != 1 or next(iter(devices)).platform != "cpu":
                return False
        shape = np.shape(x)  # type: ignore[arg-type]
        total += math.prod(shape) if shape else 0  # (amounts are no values)
    return total <= config.host_max


_NUMPY_RESULTS: contextvars.ContextVar[bool] = contextvars.ContextVar("numpy_results", default=False)


@contextlib.contextmanager
def numpy_results() -> Iterator[None]:
    """Inside the block, masks computed on the NumPy path are returned as
    NumPy arrays (for a caller that wants them on the host, such as the torch
    bridge: a device transfer per small tensor costs more than its mask)."""
    token = _NUMPY_RESULTS.set(True)
    try:
        yield
    finally:
        _NUMPY_RESULTS.reset(token)


def host_result(mask: np.ndarray, t: object) -> Array:
    """A NumPy mask as the jax array a kernel would return (on ``t``'s device
    when ``t`` is a jax array committed to one), or as it is inside :func:`numpy_results`."""
    if _NUMPY_RESULTS.get():
        return mask  # type: ignore[return-value] - numpy_results() callers take NumPy
    if isinstance(t, jax.Array) and t.committed:
        return jax.device_put(mask, t.sharding)
    return jax.device_put(mask)  # not jnp.asarray: it compiles a copy kernel per shape


def _host_entries(scores: np.ndarray, amount: CheckedAmount, mask: np.ndarray | None, keys: np.ndarray) -> np.ndarray:
    """The keep-mask that prunes ``amount`` of the candidates with the lowest ``keys``."""
    k = prune_count(amount, scores.size if mask is None else int(np.count_nonzero(mask)))
    selected = _host.select_lowest([keys], [mask], int(k))[0]  # type: ignore[arg-type] - concrete: an int
    return ~selected if mask is None else mask & ~selected


_SORT_SLICES_MAX = 1 << 16  # slices sorted outright; beyond, the linear-time selection (same order)


def _host_slices(
    scores: np.ndarray, amount: CheckedAmount, shape: tuple[int, ...], dim: int, mask: np.ndarray | None
) -> np.ndarray:
    """:func:`prune_slices` in NumPy: ``scores`` has one entry per slice."""
    others = tuple(d for d in range(len(shape)) if d != dim)
    alive = None if mask is None else np.asarray(mask.any(axis=others))
    if scores.size <= _SORT_SLICES_MAX and scores.dtype.kind in "iuf":  # (NumPy sorts its own dtypes NaN last)
        k = prune_count(amount, scores.size if alive is None else int(np.count_nonzero(alive)))
        keep_slices = np.ones(scores.shape, bool) if alive is None else alive.copy()
        keep_slices[_host.lowest_slices(scores, alive, int(k))] = False  # type: ignore[arg-type] - concrete: an int
    else:
        keep_slices = _host_entries(scores, amount, alive, _host.sort_keys(scores))
    view = [1] * len(shape)
    view[dim] = shape[dim]
    keep = np.broadcast_to(keep_slices.reshape(view), shape)
    return keep.copy() if mask is None else keep & mask


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("absolute",))
def _keep_lowest_entries(scores: Array, default_mask: Array | None, k: Array, absolute: bool = False) -> Array:
    to_keys = magnitude_keys if absolute else sort_keys
    selected = select_lowest([scores], [default_mask], k, to_keys=to_keys)[0]
    return like(~selected if default_mask is None else default_mask & ~selected, scores)


@jax.jit
def _keep_lowest_random(key: PRNGKey, t: Array, default_mask: Array | None, k: Array) -> Array:
    # ``t`` gives the shape and, where arrays may be sharded, the sharding of
    # the draws (threefry draws do not depend on how they are sharded).
    draws = like(jax.random.bits(key, t.shape, jnp.uint32), t)
    return _keep_lowest_entries(draws, default_mask, k)


def unstructured_mask(
    scores: ArrayLike, amount: Amount, *, default_mask: ArrayLike | None = None
) -> Array:
    """Keep-mask that prunes the ``amount`` entries with the lowest ``scores``.

    The building block of every unstructured method (L1 is ``|t|`` as scores).
    Exactly ``k`` entries are pruned, ``k`` counted as torch does; ties go to
    the lower flat index; NaN scores are pruned last. With ``default_mask``,
    only entries it keeps are candidates and ``amount`` applies to them
    (torch's iterative ``PruningContainer`` rule); the result is within it.

    Args:
      scores: real scores, any shape (higher = more important).
      amount: int count or float fraction of the candidates to prune.
      default_mask: keep-mask of an earlier pruning, or None.

    Returns:
      A bool array of ``scores.shape``, True where kept.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.unstructured_mask(jnp.array([3.0, 1.0, 2.0, 1.0]), 2)
    Array([ True, False,  True, False], dtype=bool)
    """
    if on_host(scores, amount, default_mask):
        host = host_tensor(scores, "scores")
        return _prune_entries_on_host(host, scores, check_amount(amount), default_mask, absolute=False)
    scores = as_tensor(scores, "scores")
    checked = check_amount(amount)
    return _prune_entries(scores, checked, default_mask, absolute=False)


def _prune_entries(scores: Array, amount: CheckedAmount, default_mask: ArrayLike | None, absolute: bool) -> Array:
    mask = None if default_mask is None else as_mask(default_mask, scores.shape, "default_mask", scores)
    k = prune_count(amount, count_units(mask, scores.size))
    return placed(_keep_lowest_entries(scores, mask, as_k(k), absolute=absolute), scores)


def _prune_entries_on_host(
    scores: np.ndarray, like_t: object, amount: CheckedAmount, default_mask: ArrayLike | None, absolute: bool
) -> Array:
    mask = None if default_mask is None else host_mask(default_mask, scores.shape, "default_mask", like_t)
    keys = _host.magnitude_keys(scores) if absolute else _host.sort_keys(scores)
    return host_result(_host_entries(scores, amount, mask, keys), like_t)


def alive_slices(mask: Array, dim: int) -> Array:
    """Which slices along ``dim`` a keep-mask still has (any entry kept)."""
    others = tuple(d for d in range(mask.ndim) if d != dim % mask.ndim)
    return jnp.any(mask, axis=others)


@functools.partial(jax.jit, static_argnames=("shape", "dim"))
def _keep_lowest_slices(
    slice_scores: Array,
    default_mask: Array | None,
    alive: Array | None,
    k: Array,
    shape: tuple[int, ...],
    dim: int,
    t: Array | None = None,
) -> Array:
    selected = select_lowest([slice_scores], [alive], k)[0]
    keep_slices = ~selected if alive is None else alive & ~selected
    view = [1] * len(shape)
    view[dim] = shape[dim]
    keep = jnp.broadcast_to(keep_slices.reshape(view), shape)
    keep = keep if default_mask is None else keep & default_mask
    return keep if t is None else like(keep, t)


def structured_mask(
    slice_scores: ArrayLike,
    shape: tuple[int, ...],
    amount: Amount,
    dim: int = -1,
    *,
    default_mask: ArrayLike | None = None,
) -> Array:
    """Keep-mask of ``shape`` that prunes the ``amount`` slices along ``dim``
    with the lowest ``slice_scores``.

    The building block of every structured method (LnStructured scores a slice
    by its norm). Units are the ``shape[dim]`` slices; with ``default_mask``,
    slices it has already pruned entirely are not candidates and ``amount``
    applies to the rest (torch's ``PruningContainer`` rule). Ties go to the
    lower index; NaN scores are pruned last.

    Args:
      slice_scores: one real score per slice, shape ``(shape[dim],)``.
      shape: the shape of the tensor being pruned (at least 2-D, as in torch).
      amount: int count or float fraction of the candidate slices to prune.
      dim: the axis whose slices are the units (negative counts from the end).
      default_mask: keep-mask of an earlier pruning, or None.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.structured_mask(jnp.array([5.0, 1.0, 3.0]), (2, 3), 1, dim=1)
    Array([[ True, False,  True],
           [ True, False,  True]], dtype=bool)
    """
    shape = check_shape(shape)
    dim = check_dim(shape, dim)
    host = on_host(slice_scores, amount, default_mask)
    scores = host_tensor(slice_scores, "slice_scores") if host else as_tensor(slice_scores, "slice_scores")
    if scores.shape != (shape[dim],):
        raise PruningShapeError(f"slice_scores must have shape ({shape[dim]},) (one per slice), got {scores.shape}")
    return prune_slices(scores, check_amount(amount), shape, dim, default_mask)


def prune_slices(
    scores: Array | np.ndarray,
    amount: CheckedAmount,
    shape: tuple[int, ...],
    dim: int,
    default_mask: ArrayLike | None,
    t: ArrayLike | None = None,
) -> Array:
    """Structured pruning from slice scores; ``t`` (the pruned tensor, when
    known) gives the mask its sharding. NumPy scores take the NumPy path."""
    if isinstance(scores, np.ndarray):
        host = None if default_mask is None else host_mask(default_mask, shape, "default_mask", t)
        return host_result(_host_slices(scores, amount, shape, dim, host), t)
    t = t if isinstance(t, jax.Array) else None  # (a jax array whenever the scores are)
    mask = None if default_mask is None else as_mask(default_mask, shape, "default_mask", t)
    alive = None if mask is None else alive_slices(mask, dim)
    k = prune_count(amount, count_units(alive, shape[dim]))
    return placed(_keep_lowest_slices(scores, mask, alive, as_k(k), shape, dim, t), t)


# --------------------------------------------------------------------------
# torch's methods
# --------------------------------------------------------------------------


def identity(t: ArrayLike) -> Array:
    """The all-keep mask of ``t``'s shape (torch's ``Identity``).

    >>> import jaxprune as jp
    >>> jp.identity([[1.0, 2.0]])
    Array([[ True,  True]], dtype=bool)
    """
    if on_host(t):
        return host_result(np.ones(host_tensor(t).shape, bool), t)
    t = as_tensor(t)
    return placed(_all_kept(t), t)


@jax.jit
def _all_kept(t: Array) -> Array:
    return like(jnp.ones(t.shape, bool), t)


def l1_unstructured(
    t: ArrayLike,
    amount: Amount,
    *,
    importance_scores: ArrayLike | None = None,
    default_mask: ArrayLike | None = None,
) -> Array:
    """Prune the ``amount`` entries of smallest magnitude (torch's ``L1Unstructured``).

    Args:
      t: the tensor (any real dtype, any shape, 0-d included).
      amount: int = number of entries, float in [0, 1] = fraction of entries;
        ``k = round(amount * n)`` with Python's half-to-even rounding.
      importance_scores: rank by ``|importance_scores|`` instead of ``|t|``.
      default_mask: keep-mask of an earlier pruning; the amount applies to the
        entries it keeps, and the result is within it.

    Returns:
      A bool mask of ``t.shape``, True = keep. Exactly ``k`` candidates are
      pruned; among equal magnitudes the lower flat index goes first; NaN last.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> w = jnp.array([[1.0, 2.0, 3.0, 4.0], [-4.0, -3.0, -2.0, -1.0]])
    >>> jp.l1_unstructured(w, amount=2)
    Array([[False,  True,  True,  True],
           [ True,  True,  True, False]], dtype=bool)
    >>> jp.l1_unstructured(w, 0.5).sum()  # round(0.5 * 8) = 4 pruned
    Array(4, dtype=int32)
    """
    if on_host(t, amount, importance_scores, default_mask):
        host = host_tensor(t)
        scores = check_scores(host, importance_scores)
        return _prune_entries_on_host(scores, t, check_amount(amount), default_mask, absolute=True)
    t = as_tensor(t)
    scores = check_scores(t, importance_scores)
    return _prune_entries(scores, check_amount(amount), default_mask, absolute=True)


def random_unstructured(
    key: PRNGKey, t: ArrayLike, amount: Amount, *, default_mask: ArrayLike | None = None
) -> Array:
    """Prune ``amount`` entries chosen uniformly at random (torch's ``RandomUnstructured``).

    Each entry gets a uniform 32-bit draw from ``key``; the lowest draws are
    pruned. So the same key gives the same mask (with or without ``jit``, on
    any backend), and with one key a larger amount prunes a superset.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> mask = jp.random_unstructured(jax.random.key(0), jnp.ones((4, 5)), 0.3)
    >>> int((~mask).sum())  # round(0.3 * 20)
    6
    """
    key = check_key(key)
    words = _host.threefry_key(key) if on_host(t, amount, default_mask) else None
    if words is not None:
        host = host_tensor(t)
        checked = check_amount(amount)
        mask = None if default_mask is None else host_mask(default_mask, host.shape, "default_mask", t)
        draws = _host.random_bits(words, host.size).reshape(host.shape)
        return host_result(_host_entries(draws, checked, mask, draws), t)
    t = as_tensor(t)
    checked = check_amount(amount)
    mask = None if default_mask is None else as_mask(default_mask, t.shape, "default_mask", t)
    k = prune_count(checked, count_units(mask, t.size))
    return placed(_keep_lowest_random(key, t, mask, as_k(k)), t)


def random_structured(
    key: PRNGKey, t: ArrayLike, amount: Amount, dim: int = -1, *, default_mask: ArrayLike | None = None
) -> Array:
    """Prune ``amount`` whole slices along ``dim`` at random (torch's ``RandomStructured``).

    For a Conv2d weight ``(out, in, kh, kw)``: ``dim=0`` prunes filters, ``dim=1``
    input channels, ``dim=2``/``3`` kernel rows/columns. Each slice gets a
    uniform 32-bit draw from ``key``; the lowest draws are pruned.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> mask = jp.random_structured(jax.random.key(0), jnp.ones((8, 4)), 0.5, dim=0)
    >>> jp.pruned_indices(mask, 0).size  # round(0.5 * 8) rows
    4
    """
    key = check_key(key)
    words = _host.threefry_key(key) if on_host(t, amount, default_mask) else None
    if words is not None:
        shape = host_tensor(t).shape  # its checks; the draws do not read the values
        dim = check_dim(shape, dim)
        return prune_slices(_host.random_bits(words, shape[dim]), check_amount(amount), shape, dim, default_mask, t)
    t = as_tensor(t)
    dim = check_dim(t.shape, dim)
    draws = jax.random.bits(key, (t.shape[dim],), jnp.uint32)
    return prune_slices(draws, check_amount(amount), t.shape, dim, default_mask, t)


def compute_mask(key: PRNGKey, t: ArrayLike, amount: Amount, dim: int = -1) -> Array:
    """Random structured pruning, the call the torch blog post meant.

    ``torch.nn.utils.prune.RandomStructured(amount, dim).compute_mask(t, default_mask)``
    with an explicit key; returns the keep-mask only (use :func:`pruned_indices`
    for the pruned slice indices). Same as :func:`random_structured`.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> t = jnp.zeros((2, 64, 3, 3))
    >>> mask = jp.compute_mask(jax.random.key(0), t, amount=0.3, dim=1)
    >>> jp.pruned_indices(mask, dim=1).size  # round(0.3 * 64)
    19
    """
    return random_structured(key, t, amount, dim)


def slice_norms(t: ArrayLike, n: NormOrder, dim: int) -> Array:
    """The ``n``-norm of each slice of ``t`` along ``dim`` (torch's ``_compute_norm``).

    ``n`` is any real p (``(sum |x|**p)**(1/p)``; 0 counts nonzeros; negative
    p as torch), ``inf``/``-inf`` (max/min of ``|x|``), ``'fro'`` (2-D and 3-D
    tensors) or ``'nuc'`` (3-D: nuclear norm of each remaining matrix).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.slice_norms(jnp.array([[3.0, 0.0], [4.0, 1.0]]), 2, dim=1)
    Array([5., 1.], dtype=float32)
    """
    t = as_tensor(t)
    dim = check_dim(t.shape, dim)
    n = check_norm(n, t.ndim)
    return _slice_norms(t, n, dim)


@functools.partial(jax.jit, static_argnames=("n", "dim"))
def _slice_norms(t: Array, n: float | Literal["fro", "nuc"], dim: int) -> Array:
    if not jnp.issubdtype(t.dtype, jnp.floating) or t.dtype.itemsize < 4:
        t = t.astype(jnp.float32)
    if n == "nuc":
        mats = jnp.moveaxis(t, dim, 0)
        return jnp.sum(jnp.linalg.svd(mats, compute_uv=False), axis=-1)
    # Reduce over the other axes in place (no reshape: a sharded tensor stays
    # sharded, and each device reduces its own shard).
    others = tuple(d for d in range(t.ndim) if d != dim)
    a = jnp.abs(t)
    if n == "fro" or n == 2.0:
        return jnp.sqrt(jnp.sum(a * a, axis=others))
    if n in (math.inf, -math.inf):
        return _extreme_magnitude(t, others, largest=n == math.inf)
    if n == 0.0:  # nonzeros, counted on the bits (a float compare sees subnormals as 0 on XLA:CPU)
        return jnp.sum(magnitude_bits(t) != 0, axis=others).astype(t.dtype)
    if n == 1.0:
        return jnp.sum(a, axis=others)
    return jnp.sum(a**n, axis=others) ** (1.0 / n)


def _extreme_magnitude(t: Array, axes: tuple[int, ...], largest: bool) -> Array:
    """The largest (smallest) of the magnitudes ``|t|`` over ``axes``, NaN if
    any is NaN. Compared as bits: XLA:CPU's float max/min see subnormals as 0."""
    bits = magnitude_bits(t)
    if largest:  # NaN bits lie above +inf's, so a NaN wins
        return lax.bitcast_convert_type(jnp.max(bits, axis=axes, initial=0), t.dtype)
    inf_bits = magnitude_bits(jnp.array(math.inf, t.dtype))
    low = lax.bitcast_convert_type(jnp.min(bits, axis=axes, initial=inf_bits), t.dtype)
    return jnp.where(jnp.any(jnp.isnan(t), axis=axes), jnp.array(math.nan, t.dtype), low)


def ln_structured(
    t: ArrayLike,
    amount: Amount,
    n: NormOrder,
    dim: int = -1,
    *,
    importance_scores: ArrayLike | None = None,
    default_mask: ArrayLike | None = None,
) -> Array:
    """Prune the ``amount`` slices along ``dim`` with the smallest ``n``-norm
    (torch's ``LnStructured``).

    Args:
      t: a tensor with at least 2 dims, floating (or integer scores, ranked as float).
      amount: int count or float fraction of the slices.
      n: the norm order, see :func:`slice_norms`.
      dim: the axis whose slices are the units.
      importance_scores: take norms of these instead of ``t``.
      default_mask: keep-mask of an earlier pruning; fully pruned slices are no
        longer candidates.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> t = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    >>> jp.ln_structured(t, amount=1, n=2, dim=0)  # row norms 5.5 < 13.2
    Array([[False, False, False, False],
           [ True,  True,  True,  True]], dtype=bool)
    """
    if on_host(t, amount, importance_scores, default_mask):
        host = host_tensor(t)
        host_scores = check_scores(host, importance_scores)
        dim = check_dim(host.shape, dim)
        n = check_norm(n, host.ndim)
        checked = check_amount(amount)
        return prune_slices(_host.slice_norms(host_scores, n, dim), checked, host.shape, dim, default_mask, t)
    t = as_tensor(t)
    scores = check_scores(t, importance_scores)
    dim = check_dim(t.shape, dim)
    n = check_norm(n, t.ndim)
    checked = check_amount(amount)
    return prune_slices(_slice_norms(scores, n, dim), checked, t.shape, dim, default_mask, t)
