"""A mask takes its parameter's sharding, on every supported jax, with public API only.

:func:`constrain` gives ``x`` the sharding of ``t`` (same shape) by the
first of these ways that applies (the *chain*; :data:`CHAIN` is the
default, and ``jaxprune._selection.forced(sharding=...)`` runs another, so
that tests can take each way on one jax):

``"reshard"``
    ``t``'s type carries an explicit sharding (``jax.typeof(t).sharding``
    on a mesh with ``AxisType.Explicit`` axes, jax's explicit-sharding
    mode): ``jax.sharding.reshard(x, that sharding)``. The type then says
    the sharding, so the next operation sees it too.
``"device_put"``
    ``t`` is a concrete array (an eager call): ``jax.device_put(x,
    t.sharding)`` when ``x`` is placed otherwise (nothing moves when it is
    placed alike).
``"shard_alike"``
    traced in auto mode, where jax ships ``jax.experimental.shard_alike``
    (older versions; README's table says which): XLA gives both the same
    sharding.
``"derive"``
    traced in auto mode without ``shard_alike`` (newer versions): nothing can
    be read from ``t``'s type, so ``x`` is made to depend elementwise on
    ``t`` with an expression that is always zero (``x ^ ((bits(t) >>
    (width - 1)) > 1)``): the bits of ``x`` are unchanged, and XLA's
    sharding propagation gives ``x`` the sharding of ``t``. The expression
    must not be one XLA simplifies away before propagating (``x & 0`` or
    ``where(p, x, x)`` are: ``x`` then came back replicated, measured with
    ``shard_alike`` switched off).

What that means for a mask made inside a user's own ``jit`` in auto mode on a
jax without ``shard_alike``: its sharding is XLA's propagation from the
parameter through ``"derive"``, which is what XLA chose for the parameter
there. To pin it, give the jit ``out_shardings`` or constrain the mask with
``jax.lax.with_sharding_constraint(mask, param.sharding)`` (or use explicit
sharding, where the type says it).

>>> import jax, jax.numpy as jnp
>>> x, t = jnp.array([True, False]), jnp.array([1.0, -2.0])
>>> jax.jit(lambda x, t: constrain(x, t, ("derive",)))(x, t).tolist()  # the same bits
[True, False]
>>> "xor" in str(jax.make_jaxpr(lambda x, t: constrain(x, t, ("derive",)))(x, t))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax import lax

from ._amounts import is_traced
from ._typing import Array

try:  # older jax ships it; newer versions do not
    from jax.experimental.shard_alike import shard_alike as _shard_alike
except ImportError:
    _shard_alike = None

#: The default chain (every way, in the order tried).
CHAIN = ("reshard", "device_put", "shard_alike", "derive")


def explicit_sharding(t: Array) -> jax.sharding.NamedSharding | None:
    """The sharding ``t``'s type carries in jax's explicit-sharding mode, or
    None (auto mode, or a jax without ``jax.typeof`` / ``reshard``)."""
    typeof = getattr(jax, "typeof", None)
    if typeof is None or getattr(jax.sharding, "reshard", None) is None:
        return None
    sharding = getattr(typeof(t), "sharding", None)
    axis_types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
    explicit = getattr(jax.sharding.AxisType, "Explicit", None)
    return sharding if explicit is not None and explicit in axis_types else None


def _reshard(x: Array, t: Array) -> Array | None:
    sharding = explicit_sharding(t)
    if sharding is None:
        return None
    return x if explicit_sharding(x) == sharding else jax.sharding.reshard(x, sharding)


def _device_put(x: Array, t: Array) -> Array | None:
    if is_traced(t) or is_traced(x) or not isinstance(t, jax.Array) or not isinstance(x, jax.Array):
        return None
    return x if x.sharding.is_equivalent_to(t.sharding, x.ndim) else jax.device_put(x, t.sharding)


def _shard_alike_branch(x: Array, t: Array) -> Array | None:
    if _shard_alike is None or not is_traced(t):
        return None
    return _shard_alike(x, t)[0]


def _derive(x: Array, t: Array) -> Array | None:
    if not is_traced(t):
        return None
    zero = _always_false(t)
    flip = _xor_bits(x)
    if zero is None or flip is None:
        return None
    return flip(zero)


def _always_false(t: Array) -> Array | None:
    """A bool array of ``t``'s shape, all False, computed from ``t``'s bits:
    the top bit shifted to the lowest place is 0 or 1, never above 1."""
    dtype = np.dtype(t.dtype)
    if dtype == np.bool_:
        bits = t.astype(np.uint8)
    elif dtype.itemsize in (1, 2, 4, 8):
        bits = lax.bitcast_convert_type(t, np.dtype(f"uint{dtype.itemsize * 8}"))
    else:
        return None
    width = bits.dtype.itemsize * 8
    return (bits >> np.array(width - 1, bits.dtype)) > np.array(1, bits.dtype)


def _xor_bits(x: Array) -> Callable[[Array], Array] | None:
    """``zero -> x ^ zero`` on ``x``'s bits (x unchanged when zero is False)."""
    dtype = np.dtype(x.dtype)
    if dtype == np.bool_:
        return lambda zero: x ^ zero
    if dtype.kind in "iu":
        return lambda zero: x ^ zero.astype(dtype)
    if dtype.itemsize in (1, 2, 4, 8):
        udt = np.dtype(f"uint{dtype.itemsize * 8}")
        return lambda zero: lax.bitcast_convert_type(lax.bitcast_convert_type(x, udt) ^ zero.astype(udt), dtype)
    return None


_WAYS: dict[str, Callable[[Array, Array], Array | None]] = {
    "reshard": _reshard,
    "device_put": _device_put,
    "shard_alike": _shard_alike_branch,
    "derive": _derive,
}


def check_chain(chain: Sequence[str]) -> tuple[str, ...]:
    """``chain`` as a tuple of known ways; ``ValueError`` names an unknown one."""
    if isinstance(chain, str):
        raise TypeError(f"sharding must be a sequence of ways, got the string {chain!r}; e.g. ({chain!r},)")
    unknown = [w for w in chain if w not in _WAYS]
    if unknown:
        raise ValueError(f"unknown sharding ways {unknown}; expected some of {list(_WAYS)}")
    return tuple(chain)


def constrain(x: Array, t: Array, chain: Sequence[str] = CHAIN) -> Array:
    """``x`` with ``t``'s sharding (``x.shape == t.shape``): the first way of
    ``chain`` that applies; ``x`` unchanged when none does."""
    for name in chain:
        out = _WAYS[name](x, t)
        if out is not None:
            return out
    return x
