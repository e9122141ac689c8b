"""The unit count k: torch's rule on the host, and its exact emulation on the device."""

import fractions
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune._amounts import (
    _float_parts_device,
    _float_parts_host,
    _to_limbs_host,
    check_amount,
    count_int,
    count_to_prune,
    round_scaled,
)


def _ints(count) -> np.ndarray:
    """A (batched) Count as Python ints."""
    return np.array([(int(h) << 32) | int(lo) for h, lo in zip(np.ravel(count.hi), np.ravel(count.lo))], object)


@pytest.mark.parametrize(
    ("amount", "units", "expected"),
    [
        (0.5, 1, 0), (0.5, 3, 2), (0.5, 5, 2), (0.5, 7, 4), (0.5, 9, 4),
        (0.25, 10, 2), (0.15, 10, 2), (0.35, 10, 4), (0.45, 10, 4), (0.05, 10, 0),
        (0.051, 10, 1), (0.3, 64, 19), (0.4, 17, 7), (0.29, 100, 29), (1.0, 15, 15),
        (0.3, 0, 0), (0, 15, 0), (10, 15, 10), (1, 15, 1), (15, 15, 15),
    ],
)
def test_host_count_matches_torch_observations(amount, units, expected):
    assert count_to_prune(check_amount(amount), units) == expected


def test_numpy_and_fraction_amounts():
    assert count_to_prune(check_amount(np.int64(3)), 10) == 3
    assert count_to_prune(check_amount(np.float64(0.25)), 10) == 2
    # NumPy floats are taken at their exact value, as float(amount).
    assert count_to_prune(check_amount(np.float32(0.5)), 5) == 2
    assert count_to_prune(check_amount(fractions.Fraction(1, 2)), 5) == 2
    assert count_to_prune(check_amount(fractions.Fraction(1, 3)), 6) == 2


def _device_k(amount: float, units: int) -> int:
    mantissa, shift = _float_parts_host(amount)
    limbs = jnp.asarray(_to_limbs_host(mantissa), jnp.uint32)
    return count_int(round_scaled(limbs, jnp.int32(shift), jnp.int32(units)))


def _random_cases(n: int, seed: int) -> list[tuple[float, int]]:
    rnd = random.Random(seed)
    cases = []
    for _ in range(n):
        r = rnd.random()
        amount = rnd.choice([r, round(r, 2), round(r, 1), rnd.randint(0, 20) / 20, r * 1e-7, 1.0, 0.0, 0.5])
        units = rnd.choice([rnd.randint(0, 50), rnd.randint(0, 10**6), rnd.randint(0, 2**31 - 1)])
        cases.append((amount, units))
    return cases


def test_device_rule_equals_python_round_for_python_floats():
    cases = _random_cases(2000, seed=1)
    limbs = jnp.asarray([_to_limbs_host(_float_parts_host(a)[0]) for a, _ in cases], jnp.uint32)
    shifts = jnp.asarray([_float_parts_host(a)[1] for a, _ in cases], jnp.int32)
    units = jnp.asarray([n for _, n in cases], jnp.int32)
    got = _ints(jax.jit(jax.vmap(round_scaled))(limbs, shifts, units))
    expected = np.array([round(a * n) for a, n in cases])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("amount", "units"), [(0.1, 5), (0.3, 5), (0.7, 5), (0.05, 10), (0.29, 100), (0.5, 2**31 - 1)])
def test_device_rule_keeps_pythons_float64_rounding(amount, units):
    # Exactly these products are half-integers only after float64 rounding.
    assert _device_k(amount, units) == round(amount * units)


def test_device_rule_for_traced_float32_amounts():
    cases = _random_cases(2000, seed=2)
    amounts = np.array([a for a, _ in cases], np.float32)
    units = np.array([n for _, n in cases], np.int32)
    rule = jax.jit(jax.vmap(lambda a, n: round_scaled(*_float_parts_device(a), n)))
    got = _ints(rule(jnp.asarray(amounts), jnp.asarray(units)))
    expected = np.array([round(float(a) * int(n)) for a, n in zip(amounts, units)])
    np.testing.assert_array_equal(got, expected)


def test_traced_default_mask_gives_the_eager_count():
    # Eager: the units are counted on the host (Python's rule); jitted: on the
    # device. Both must prune the same number, including at float64 half cases.
    x = jnp.arange(1.0, 11.0)
    masks = jnp.stack([jnp.arange(10) >= 10 - kept for kept in range(11)])
    for amount in (0.1, 0.3, 0.5, 0.7, 0.25, 0.45):
        jitted = jax.jit(jax.vmap(lambda d, a=amount: jp.l1_unstructured(x, a, default_mask=d)))(masks)
        for kept in range(11):
            eager = jp.l1_unstructured(x, amount, default_mask=masks[kept])
            np.testing.assert_array_equal(eager, jitted[kept])
            assert int(masks[kept].sum() - eager.sum()) == round(amount * kept)


@pytest.mark.parametrize(
    ("amount", "pruned"),
    [(jnp.float32(-0.5), 0), (jnp.float32(np.nan), 0), (jnp.float32(1.5), 10), (jnp.float32(np.inf), 10),
     (jnp.int32(-3), 0), (jnp.int32(11), 10), (jnp.int32(4), 4), (jnp.float32(0.25), 2), (jnp.float32(0.35), 3),
     (jnp.uint32(2**31), 10), (jnp.uint32(2**32 - 1), 10), (jnp.uint8(255), 10)],
    ids=["neg-fraction", "nan", "fraction>1", "inf", "neg-count", "count>units", "count", "fraction", "float32-value",
         "uint32-2**31", "uint32-max", "uint8-max"],
)
def test_traced_out_of_range_amounts_are_clamped(amount, pruned):
    # float32(0.35) is 0.3499999940..., so 3.4999999 rounds to 3 (Python's 0.35 gives 4).
    x = jnp.arange(1.0, 11.0)
    mask = jax.jit(jp.l1_unstructured)(x, amount)
    assert int((~mask).sum()) == pruned


def test_traced_count_is_clamped_to_remaining_units():
    x = jnp.arange(1.0, 11.0)
    dm = jnp.arange(10) < 3
    mask = jax.jit(lambda d, a: jp.l1_unstructured(x, a, default_mask=d))(dm, jnp.int32(5))
    assert not bool(mask.any())


def test_concrete_array_amounts_are_validated_eagerly():
    with pytest.raises(ValueError, match="1.5"):
        jp.l1_unstructured(jnp.ones(4), jnp.float32(1.5))
    with pytest.raises(ValueError, match="-2"):
        jp.l1_unstructured(jnp.ones(4), jnp.int32(-2))
    with pytest.raises(TypeError, match="bool"):
        jp.l1_unstructured(jnp.ones(4), jnp.bool_(True))


def test_zero_d_numpy_arrays_are_amounts():
    """DESIGN: an integer-dtype array is a count, a floating array a fraction."""
    x = jnp.arange(1.0, 11.0)
    assert int((~jp.l1_unstructured(x, np.array(0.25))).sum()) == 2
    assert int((~jp.l1_unstructured(x, np.array(3, np.int64))).sum()) == 3
    for bad in (np.array(True), np.array("0.5"), np.array(0.5 + 0j)):
        with pytest.raises(TypeError, match="amount"):
            jp.l1_unstructured(x, bad)
    with pytest.raises(TypeError, match=r"shape \(1,\)"):
        jp.l1_unstructured(x, np.array([0.5]))
