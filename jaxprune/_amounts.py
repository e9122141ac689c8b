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
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._typing import Amount, Array


def is_traced(x: object) -> bool:
    """True for values only known inside a trace (jit, vmap, grad...)."""
    return isinstance(x, jax.core.Tracer)


@dataclass(frozen=True)
class CheckedAmount:
    """A validated amount: a count or a fraction, concrete or a traced 0-d array."""

    value: object  # Python int / numbers.Real, or a 0-d jax array
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
    """The number of units to prune, ``k``.

    Returns a Python int when both the amount and ``units`` are concrete (and
    raises ``ValueError`` for a count above ``units``, as torch), otherwise an
    int32 array (clamped into ``[0, units]``).

    >>> count_to_prune(check_amount(0.5), 5), count_to_prune(check_amount(0.5), 7)
    (2, 4)
    >>> count_to_prune(check_amount(9), 8)
    Traceback (most recent call last):
    ...
    ValueError: amount=9 should be smaller than the number of parameters to prune=8
    """
    if amount.concrete and not is_traced(units):
        units = int(units)
        if amount.is_count:
            k = amount.value
        else:
            value = amount.value
            if isinstance(value, float) or isinstance(value, numbers.Rational):
                k = round(value * units)
            else:  # another numbers.Real: use its float value
                k = round(float(value) * units)
        if k > units:
            raise ValueError(f"amount={k} should be smaller than the number of parameters to prune={units}")
        return int(k)

    units = jnp.asarray(units, jnp.int32)
    if amount.is_count:
        if amount.concrete:
            return jnp.minimum(jnp.int32(min(amount.value, np.iinfo(np.int32).max)), units)
        return _clamp_count(amount.value, units)
    if amount.concrete:
        mantissa, shift = _float_parts_host(float(amount.value))
        limbs = jnp.asarray(_to_limbs_host(mantissa), jnp.uint32)
        return round_scaled(limbs, jnp.asarray(shift, jnp.int32), units)
    limbs, shift = _float_parts_device(amount.value)
    return round_scaled(limbs, shift, units)


def _clamp_count(count: Array, units: Array) -> Array:
    count = jnp.asarray(count)
    if count.dtype.itemsize > 4:
        count = jnp.clip(count, 0, jnp.iinfo(jnp.int32).max)
    return jnp.clip(count.astype(jnp.int32), 0, units)


# --------------------------------------------------------------------------
# Exact round(float(a) * n) on the device, with 16-bit limbs in uint32.
# a = mantissa * 2**-shift with mantissa < 2**53; n < 2**31.
# --------------------------------------------------------------------------

_LIMB = 16
_LIMB_MASK = (1 << _LIMB) - 1
_M_LIMBS = 4  # mantissa: 64 bits
_P_LIMBS = 6  # product: 96 bits


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


def round_scaled(mantissa_limbs: Array, shift: Array, units: Array) -> Array:
    """``round(float(a) * units)`` exactly, with ``a = mantissa * 2**-shift <= 1``.

    Emulates Python: the product is rounded to a float64 (53 significant bits,
    half to even), then to an integer (half to even).
    """
    units = units.astype(jnp.uint32)
    n_limbs = [units & _LIMB_MASK, units >> _LIMB]
    columns = [jnp.zeros((), jnp.uint32) for _ in range(_P_LIMBS)]
    for i in range(_M_LIMBS):
        for j in range(2):
            prod = mantissa_limbs[i] * n_limbs[j]
            columns[i + j] = columns[i + j] + (prod & _LIMB_MASK)
            columns[i + j + 1] = columns[i + j + 1] + (prod >> _LIMB)
    product = _normalize(columns)
    # float64 rounding of the product: keep its 53 most significant bits.
    positions = jnp.arange(_P_LIMBS)
    top = jnp.max(jnp.where(product != 0, positions, -1))
    top_limb = product[jnp.maximum(top, 0)]
    msb = _LIMB * top + (31 - lax.clz(top_limb).astype(jnp.int32))
    dropped = jnp.maximum(msb - 52, 0)
    as_double = _shift_right_rne(product, dropped)  # value * 2**dropped
    k = _shift_right_rne(as_double, jnp.maximum(shift - dropped, 0))
    result = (k[0] | (k[1] << _LIMB)).astype(jnp.int32)
    return jnp.where(top < 0, 0, result)
