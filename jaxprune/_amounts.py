"""Pruning amounts: validation, and the number of units ``k`` to prune.

torch's rule (``torch.nn.utils.prune._compute_nparams_toprune``): an integer
amount is a count of units, a real amount is a fraction and
``k = round(amount * n)`` with Python's ``round`` (half to even) applied to the
float64 product. We reproduce it bit for bit, including where it is only known
inside a trace:

* concrete amount, concrete unit count: computed on the host, and a count
  larger than the units raises ``ValueError`` as torch does;
* a traced unit count (a traced ``default_mask``) or a traced amount: computed
  on the device by exact integer arithmetic that emulates Python's float64
  product and rounding, so the result equals ``round(float(amount) * n)``.

Traced amounts cannot raise, so out-of-range values are clamped (documented
in the README and tested): a fraction below 0 or NaN prunes nothing, above 1
prunes every unit; a count below 0 prunes nothing, above the number of units
prunes them all.

Counts go beyond 2**31 (a 7B-parameter model is an ordinary input), and jax
has no 64-bit integers unless x64 is on: on the device a count is a
:class:`Count`, a pair of uint32 words, with the few operations the selection
needs. On the host counts are Python ints.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple, TypeGuard, cast

import jax
import jax.core  # jax.core.Tracer: the submodule is not an attribute of ``jax`` for type checkers
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._typing import Amount, Array, ArrayLike


def is_traced(x: object) -> TypeGuard[jax.core.Tracer]:
    """True for values only known inside a trace (jit, vmap, grad...)."""
    return isinstance(x, jax.core.Tracer)


#: A word of a :class:`Count`: a jax array, or NumPy (known at trace time, e.g. a zero high word).
Word = Array | np.ndarray | np.unsignedinteger


class Count(NamedTuple):
    """A non-negative count below 2**64 on the device: ``hi * 2**32 + lo``.

    Two uint32 words (scalars, or arrays of one shape: a histogram), since
    int32 overflows at 2**31 entries and int64 needs x64. A pytree, so it
    passes through ``jit`` and ``lax.cond``.
    """

    hi: Word
    lo: Word


_U32 = jnp.uint32
_WORD = 1 << 32


def host_count(n: int | np.integer) -> Count:
    """A Python int ``0 <= n < 2**64`` as a Count of NumPy words (one abstract type for every n)."""
    n = int(n)
    if not 0 <= n < _WORD * _WORD:
        raise ValueError(f"a count must be in [0, 2**64), got {n}")
    return Count(np.uint32(n >> 32), np.uint32(n & (_WORD - 1)))


def as_count(n: int | Array | Count) -> Count:
    """A Count from a Python int, a Count, or a non-negative integer array of at most 32 bits."""
    if isinstance(n, Count):
        return n
    if isinstance(n, (int, np.integer)):
        return host_count(n)
    n = jnp.asarray(n)
    if n.dtype.itemsize > 4:  # x64 on: a wide integer array
        wide = jnp.maximum(n, 0).astype(jnp.uint64)
        return Count((wide >> 32).astype(_U32), (wide & 0xFFFFFFFF).astype(_U32))
    # A NumPy zero high word: known at trace time (see round_scaled).
    return Count(np.zeros(n.shape, _U32), jnp.maximum(n, 0).astype(_U32))


def count_int(c: Count) -> int:
    """A concrete scalar Count as a Python int."""
    return (int(c.hi) << 32) | int(c.lo)


def count_add(a: Count, b: Count) -> Count:
    lo = a.lo + b.lo
    return Count(a.hi + b.hi + (lo < a.lo).astype(_U32), lo)


def count_sub(a: Count, b: Count) -> Count:
    """``a - b`` for ``a >= b``."""
    return Count(a.hi - b.hi - (a.lo < b.lo).astype(_U32), a.lo - b.lo)


def count_less(a: Count, b: Count) -> Array | np.ndarray | np.bool_:
    return (a.hi < b.hi) | ((a.hi == b.hi) & (a.lo < b.lo))


def count_equal(a: Count, b: Count) -> Array | np.ndarray | np.bool_:
    return (a.hi == b.hi) & (a.lo == b.lo)


def count_where(pred: ArrayLike, a: Count, b: Count) -> Count:
    return Count(jnp.where(pred, a.hi, b.hi), jnp.where(pred, a.lo, b.lo))


def count_min(a: Count, b: Count) -> Count:
    return count_where(count_less(a, b), a, b)


def count_clip(c: Count, low: Count, high: Count) -> Count:
    """``c`` clipped into ``[low, high]`` (``low <= high``)."""
    return count_min(count_where(count_less(c, low), low, c), high)


def count_int32(c: Count) -> Array:
    """The count as int32, saturating at 2**31 - 1 (for counts known to be smaller)."""
    big = (c.hi != 0) | (c.lo > np.uint32(np.iinfo(np.int32).max))
    return jnp.where(big, np.int32(np.iinfo(np.int32).max), c.lo.astype(jnp.int32))


def count_cumsum(c: Count, total_below_2_32: bool = False) -> Count:
    """Inclusive cumulative sums of a 1-D Count, exact: the low words are
    summed modulo 2**32, and a step whose running low word went down carried
    one into the high word (each addend is below 2**32, so at most one carry).

    ``total_below_2_32``: the caller knows (from static sizes) that the sum is
    below 2**32, so the low words alone are exact (one cumsum, not two: less
    to compile).
    """
    lo = jnp.cumsum(c.lo, dtype=_U32)
    if total_below_2_32:
        return Count(jnp.zeros(lo.shape, _U32), lo)
    before = jnp.concatenate([jnp.zeros(1, _U32), lo[:-1]])
    return Count(jnp.cumsum(c.hi + (lo < before).astype(_U32), dtype=_U32), lo)


def count_true(mask: Array) -> Count:
    """The number of True entries of a bool array, exact at any size.

    Below 2**32 entries, one uint32 sum. Beyond: rows along the last axis are
    summed in uint32 and the row sums added with carries (a two-word
    reduction); a 1-D mask is summed in static slices of fewer than 2**32.
    """
    zero = jnp.zeros((), _U32)
    if mask.size < _WORD:
        return Count(np.uint32(0), jnp.sum(mask, dtype=_U32))
    if mask.ndim == 1 or mask.shape[-1] >= _WORD:
        flat, total = mask.reshape(-1), Count(zero, zero)
        for start in range(0, flat.size, _WORD - 1):
            total = count_add(total, Count(zero, jnp.sum(flat[start : start + _WORD - 1], dtype=_U32)))
        return total
    sums = jnp.sum(mask, axis=-1, dtype=_U32).reshape(-1)
    hi, lo = lax.reduce(
        (jnp.zeros(sums.shape, _U32), sums),
        (np.uint32(0), np.uint32(0)),
        lambda a, b: tuple(count_add(Count(*a), Count(*b))),
        (0,),
    )
    return Count(hi, lo)


@dataclass(frozen=True)
class CheckedAmount:
    """A validated amount: a count or a fraction, concrete or a traced 0-d array."""

    value: int | float | numbers.Real | Array  # Python int / numbers.Real, or a 0-d jax array
    is_count: bool

    @property
    def concrete(self) -> bool:
        return not isinstance(self.value, jax.Array)


def check_amount(amount: Amount) -> CheckedAmount:
    """Validate an amount the way torch's ``_validate_pruning_amount_init`` does.

    Stricter than torch in two places: ``bool`` is rejected (torch accepts it
    and then fails inside ``topk``) and NaN raises here (torch fails later).

    >>> check_amount(3).is_count, check_amount(0.5).is_count
    (True, False)
    >>> check_amount(1.5)
    Traceback (most recent call last):
    ...
    ValueError: amount=1.5 should either be a float in the range [0, 1] or a non-negative integer
    """
    if isinstance(amount, (np.timedelta64, np.datetime64)) or (
        isinstance(amount, np.ndarray) and amount.dtype.kind in "mM"
    ):  # NumPy counts timedelta64 as an integer type: a duration is not a count
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float, not a {np.dtype(amount.dtype)}.")
    if isinstance(amount, np.ndarray):
        if amount.ndim != 0:
            raise TypeError(f"Invalid amount: {amount!r}. Must be a scalar, got shape {amount.shape}.")
        amount = amount[()]  # a NumPy scalar, checked below
    if isinstance(amount, (bool, np.bool_)):
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float, not bool.")
    if isinstance(amount, jax.Array):
        return _check_array_amount(amount)
    if isinstance(amount, np.generic):
        if not isinstance(amount, (np.integer, np.floating)):
            raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
        amount = amount.item()
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(
                f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer"
            )
        return CheckedAmount(int(amount), is_count=True)
    if math.isnan(float(amount)):
        raise ValueError(f"amount={amount} is NaN; expected a float in the range [0, 1] or a non-negative integer")
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
    return CheckedAmount(amount, is_count=False)


def _check_array_amount(amount: jax.Array) -> CheckedAmount:
    if amount.ndim != 0:
        raise TypeError(f"Invalid amount: an array of shape {amount.shape}. Must be a scalar (0-d).")
    dtype = amount.dtype
    if dtype == jnp.bool_ or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"Invalid dtype for amount: {dtype}. Must be an integer or floating array.")
    checked = CheckedAmount(amount, is_count=bool(jnp.issubdtype(dtype, jnp.integer)))
    if not is_traced(amount):
        # A concrete array: validate its value now, but keep it an array so that
        # eager calls and jitted calls share one rule (the device rule).
        value = amount.item()
        if checked.is_count:
            check_amount(int(value))
        else:
            check_amount(float(value))
    return checked


def count_to_prune(amount: CheckedAmount, units: int | Array) -> int | Array:
    """The number of units to prune, ``k``, for unit counts below 2**31.

    Returns a Python int when both the amount and ``units`` are concrete (and
    raises ``ValueError`` for a count above ``units``, as torch), otherwise an
    int32 array (clamped into ``[0, units]``). :func:`prune_count` is the same
    rule at any size.

    >>> count_to_prune(check_amount(0.5), 5), count_to_prune(check_amount(0.5), 7)
    (2, 4)
    >>> count_to_prune(check_amount(9), 8)
    Traceback (most recent call last):
    ...
    ValueError: amount=9 should be smaller than the number of parameters to prune=8
    """
    k = prune_count(amount, units)
    return k if isinstance(k, int) else count_int32(k)


def prune_count(amount: CheckedAmount, units: int | Array | Count) -> int | Count:
    """``k`` exactly, for any number of units (beyond 2**31 too).

    A Python int when the amount and ``units`` are concrete (a concrete array
    amount included: it raises as the Python number does), otherwise a
    :class:`Count` clamped into ``[0, units]``.

    >>> prune_count(check_amount(0.5), 3 * 768_000_000)
    1152000000
    >>> count_int(prune_count(check_amount(jnp.float32(0.5)), host_count(5 * 2**31)))
    5368709120
    """
    value = amount.value
    if not is_traced(value) and not is_traced(units) and not isinstance(units, Count):
        host_value = value.item() if isinstance(value, jax.Array) else value
        return _host_count_to_prune(host_value, amount.is_count, int(units))
    units = as_count(units)
    if amount.is_count:
        if is_traced(value):
            return _clamp_count(value, units)
        count = cast("int | Array", value)  # a count: a Python int or a concrete integer array (check_amount)
        return count_min(host_count(min(int(count), _WORD * _WORD - 1)), units)
    if not is_traced(value):
        mantissa, shift = _float_parts_host(float(value))
        limbs = jnp.asarray(_to_limbs_host(mantissa), jnp.uint32)
        return round_scaled(limbs, jnp.asarray(shift, jnp.int32), units)
    limbs, shift = _float_parts_device(value)
    return round_scaled(limbs, shift, units)


def _host_count_to_prune(value: int | float | numbers.Real, is_count: bool, units: int) -> int:
    if is_count:
        k = int(cast(int, value))  # a count: a Python int (check_amount)
    elif isinstance(value, float) or isinstance(value, numbers.Rational):
        # typeshed's numbers ABCs: a Rational times an int is a Complex there (a Real at runtime)
        k = round(value * units)  # pyright: ignore[reportArgumentType]
    else:  # another numbers.Real: use its float value
        k = round(float(value) * units)
    if k > units:
        raise ValueError(f"amount={k} should be smaller than the number of parameters to prune={units}")
    return int(k)


def _clamp_count(count: Array, units: Count) -> Count:
    """A traced integer count clamped into ``[0, units]`` (negative: 0; unsigned: never wraps)."""
    return count_min(as_count(count), units)


# --------------------------------------------------------------------------
# Exact round(float(a) * n) on the device, with 16-bit limbs in uint32.
# a = mantissa * 2**-shift with mantissa < 2**53; n < 2**51 (then the float64
# product keeps its units digit: no shift left is ever needed).
# --------------------------------------------------------------------------

_LIMB = 16
_LIMB_MASK = (1 << _LIMB) - 1
_M_LIMBS = 4  # mantissa: 64 bits
# units: 64 bits (4 limbs), or 32 bits when known below 2**32; the product: 96 or 128 bits


def _float_parts_host(a: float) -> tuple[int, int]:
    num, den = a.as_integer_ratio()  # den is a power of two
    return num, den.bit_length() - 1


def _to_limbs_host(value: int) -> list[int]:
    return [(value >> (_LIMB * i)) & _LIMB_MASK for i in range(_M_LIMBS)]


# (float dtype, same-width unsigned dtype, fraction bits, exponent bias)
_FLOAT_LAYOUTS = {8: (jnp.float64, jnp.uint64, 52, 1023), 4: (jnp.float32, jnp.uint32, 23, 127)}


def _float_parts_device(a: Array) -> tuple[Array, Array]:
    """Mantissa limbs and shift of a traced fraction, clamped into [0, 1]; NaN -> 0."""
    fdt, udt, frac_bits, bias = _FLOAT_LAYOUTS[8 if a.dtype.itemsize == 8 else 4]
    x = a.astype(fdt)
    x = jnp.where(jnp.isnan(x), jnp.zeros((), fdt), jnp.clip(x, 0.0, 1.0))
    bits = lax.bitcast_convert_type(x, udt)
    exponent = (bits >> frac_bits).astype(jnp.int32)  # the sign bit is 0 after the clip
    fraction = bits & np.array((1 << frac_bits) - 1, udt)
    mantissa = jnp.where(exponent == 0, fraction, fraction | np.array(1 << frac_bits, udt))
    shift = jnp.where(exponent == 0, bias + frac_bits - 1, bias + frac_bits - exponent)
    n_limbs = (frac_bits + 1 + _LIMB - 1) // _LIMB
    limbs = [((mantissa >> np.array(_LIMB * i, udt)) & np.array(_LIMB_MASK, udt)).astype(jnp.uint32)
             for i in range(n_limbs)]
    limbs += [jnp.zeros((), jnp.uint32)] * (_M_LIMBS - n_limbs)
    return jnp.stack(limbs), shift


def _normalize(columns: list[Array]) -> Array:
    """Carry-propagate column sums (each < 2**32) into 16-bit limbs."""
    out, carry = [], jnp.zeros((), jnp.uint32)
    for col in columns:
        total_lo = (col & _LIMB_MASK) + carry
        out.append(total_lo & _LIMB_MASK)
        carry = (col >> _LIMB) + (total_lo >> _LIMB)
    return jnp.stack(out)


def _shift_right_rne(limbs: Array, shift: Array) -> Array:
    """Limbs of round-half-even(P / 2**shift), for a dynamic ``shift >= 0``."""
    n = limbs.shape[0]
    shift = jnp.minimum(shift, _LIMB * n + 1)
    word, bit = shift // _LIMB, (shift % _LIMB).astype(jnp.uint32)
    padded = jnp.concatenate([limbs, jnp.zeros(n + 2, jnp.uint32)])
    idx = jnp.arange(n) + word
    low = padded[idx] >> bit
    high = (padded[idx + 1] << (_LIMB - bit)) & _LIMB_MASK
    quotient = low | high
    # Round bit: bit (shift-1) of P; sticky: any bit below it.
    r = jnp.maximum(shift - 1, 0)
    rword, rbit = r // _LIMB, (r % _LIMB).astype(jnp.uint32)
    round_bit = (padded[rword] >> rbit) & 1
    positions = jnp.arange(n)
    below = jnp.where(positions < rword, _LIMB_MASK,
                      jnp.where(positions == rword, (jnp.uint32(1) << rbit) - 1, 0)).astype(jnp.uint32)
    sticky = jnp.any((limbs & below) != 0)
    increment = (shift > 0) & (round_bit == 1) & (sticky | ((quotient[0] & 1) == 1))
    columns = [quotient[0] + increment.astype(jnp.uint32)] + [quotient[i] for i in range(1, n)]
    return _normalize(columns)


def round_scaled(mantissa_limbs: Array, shift: Array, units: Array | Count) -> Count:
    """``round(float(a) * units)`` exactly, with ``a = mantissa * 2**-shift <= 1``.

    Emulates Python: the product is rounded to a float64 (53 significant bits,
    half to even), then to an integer (half to even). ``units`` is a Count
    (or a non-negative int32 array) below 2**51; so is the result.
    """
    units = as_count(units)
    n_limbs = [units.lo & _LIMB_MASK, units.lo >> _LIMB, units.hi & _LIMB_MASK, units.hi >> _LIMB]
    if isinstance(units.hi, (np.ndarray, np.generic)) and not np.any(units.hi):
        n_limbs = n_limbs[:2]  # units known below 2**32: a smaller product (less to compile)
    columns = [jnp.zeros((), jnp.uint32) for _ in range(_M_LIMBS + len(n_limbs))]
    for i in range(_M_LIMBS):
        for j in range(len(n_limbs)):
            prod = mantissa_limbs[i] * n_limbs[j]
            columns[i + j] = columns[i + j] + (prod & _LIMB_MASK)
            columns[i + j + 1] = columns[i + j + 1] + (prod >> _LIMB)
    product = _normalize(columns)
    # float64 rounding of the product: keep its 53 most significant bits.
    positions = jnp.arange(len(columns))
    top = jnp.max(jnp.where(product != 0, positions, -1))
    top_limb = product[jnp.maximum(top, 0)]
    msb = _LIMB * top + (31 - lax.clz(top_limb).astype(jnp.int32))
    dropped = jnp.maximum(msb - 52, 0)
    as_double = _shift_right_rne(product, dropped)  # value * 2**dropped
    k = _shift_right_rne(as_double, jnp.maximum(shift - dropped, 0))
    zero = jnp.zeros((), jnp.uint32)
    lo = jnp.where(top < 0, zero, k[0] | (k[1] << _LIMB))
    hi = jnp.where(top < 0, zero, k[2] | (k[3] << _LIMB))
    return Count(hi, lo)
