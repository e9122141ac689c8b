"""Sparsity schedules: pure, jit-friendly functions of a (traced) step.

The reference for the polynomial schedule is Zhu & Gupta (2017):
s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** power, evaluated at the
last update step <= t (0 before t0, s_f after t0 + n * dt).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp


def zhu_gupta(t, s_i, s_f, t0, n, dt, power=3.0):
    """Python float64 reference: the target at step t (held between updates)."""
    if t < t0:
        return 0.0
    k = min((t - t0) // dt, n)  # index of the last update step <= t
    last = t0 + k * dt
    if n == 0:
        return s_f
    return s_f + (s_i - s_f) * (1.0 - (last - t0) / (n * dt)) ** power


def zhu_gupta_updates(t0, n, dt):
    return {t0 + k * dt for k in range(n + 1)}


POLY_CONFIGS = [
    # (s_i, s_f, t0, n, dt, power)
    (0.0, 0.9, 0, 10, 10, 3.0),
    (0.0, 0.9, 0, 9, 10, 3.0),
    (0.1, 0.8, 7, 5, 4, 3.0),
    (0.0, 0.5, 3, 12, 1, 1.0),
    (0.2, 0.95, 20, 6, 7, 2.0),
    (0.0, 0.75, 5, 8, 3, 0.5),
    (0.3, 0.3, 2, 4, 5, 3.0),
    (0.0, 1.0, 0, 4, 25, 3.0),
]
POLY_IDS = [f"si{c[0]}-sf{c[1]}-t0{c[2]}-n{c[3]}-dt{c[4]}-p{c[5]}" for c in POLY_CONFIGS]


def make_poly(s_i, s_f, t0, n, dt, power):
    return jp.polynomial_schedule(s_i, s_f, start=t0, end=t0 + n * dt, every=dt, power=power)


@pytest.mark.parametrize("config", POLY_CONFIGS, ids=POLY_IDS)
def test_polynomial_target_matches_zhu_gupta_formula(config):
    s_i, s_f, t0, n, dt, power = config
    sched = make_poly(*config)
    end = t0 + n * dt
    steps = range(0, end + 3 * dt + 5)
    got_eager = [float(sched.target(t)) for t in steps]
    target = jax.jit(sched.target)
    got_jit = [float(target(jnp.int32(t))) for t in steps]
    expected = [zhu_gupta(t, s_i, s_f, t0, n, dt, power) for t in steps]
    np.testing.assert_allclose(got_eager, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_jit, expected, rtol=1e-6, atol=1e-6)
    # The end value is the final sparsity (as a float32), for every later step.
    for t in (end, end + 1, end + 1000):
        assert float(sched.target(t)) == float(np.float32(s_f))


@pytest.mark.parametrize("config", POLY_CONFIGS, ids=POLY_IDS)
def test_polynomial_updates_only_every_dt_between_start_and_end(config):
    s_i, s_f, t0, n, dt, power = config
    sched = make_poly(*config)
    end = t0 + n * dt
    steps = np.arange(0, end + 4 * dt + 3)
    is_update = jax.jit(sched.is_update)
    got = {int(t) for t in steps if bool(is_update(jnp.int32(t)))}
    assert got == zhu_gupta_updates(t0, n, dt)
    assert len(got) == n + 1
    # The target only moves at update steps.
    for t in steps[1:]:
        if int(t) not in got:
            assert float(sched.target(int(t))) == float(sched.target(int(t) - 1)), t


@pytest.mark.parametrize("config", [c for c in POLY_CONFIGS if c[0] <= c[1]], ids=[
    i for c, i in zip(POLY_CONFIGS, POLY_IDS) if c[0] <= c[1]])
def test_polynomial_target_is_monotone_and_in_range(config):
    sched = make_poly(*config)
    s_i, s_f, t0, n, dt, _ = config
    values = np.asarray(jax.vmap(sched.target)(jnp.arange(t0 + n * dt + 10, dtype=jnp.int32)))
    assert values.dtype == np.float32
    assert np.all(np.diff(values) >= 0)
    assert values.min() >= 0.0 and values.max() <= np.float32(s_f)
    assert values[t0] == pytest.approx(s_i, abs=1e-7)


def test_polynomial_default_power_is_three():
    a = jp.polynomial_schedule(0.0, 0.9, start=0, end=100, every=10)
    b = jp.polynomial_schedule(0.0, 0.9, start=0, end=100, every=10, power=3)
    for t in range(0, 120, 5):
        assert float(a.target(t)) == float(b.target(t))
        assert float(a.target(t)) == pytest.approx(zhu_gupta(t, 0.0, 0.9, 0, 10, 10, 3.0), abs=1e-6)


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0, 4.5], ids=lambda p: f"power{p}")
def test_polynomial_power_is_configurable(power):
    sched = jp.polynomial_schedule(0.0, 0.8, start=0, end=40, every=10, power=power)
    mid = float(sched.target(20))  # progress 0.5
    assert mid == pytest.approx(0.8 * (1 - 0.5 ** power), abs=1e-6)


@pytest.mark.parametrize("power", [0.5, 1.5, 2.5], ids=lambda p: f"power{p}")
@pytest.mark.parametrize("n,dt", [(8, 3), (10, 10), (7, 5)], ids=["n8-dt3", "n10-dt10", "n7-dt5"])
def test_polynomial_target_under_jit_is_final_sparsity_at_and_after_end(power, n, dt):
    """At t >= end the progress is exactly 1: the base (1 - progress) is 0,
    never a tiny negative number that a fractional power turns into NaN."""
    sched = jp.polynomial_schedule(0.0, 0.75, start=5, end=5 + n * dt, every=dt, power=power)
    target = jax.jit(sched.target)
    for t in (5 + n * dt, 5 + n * dt + 1, 5 + n * dt + 100):
        got = float(target(jnp.int32(t)))
        assert got == pytest.approx(0.75, abs=1e-6), (t, got)


def test_polynomial_start_equals_end_is_one_update_to_final():
    sched = jp.polynomial_schedule(0.0, 0.6, start=5, end=5, every=3)
    assert [bool(sched.is_update(t)) for t in range(12)] == [t == 5 for t in range(12)]
    assert float(sched.target(4)) == 0.0
    assert float(sched.target(5)) == pytest.approx(0.6)
    assert float(sched.target(50)) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "sparsity,start,every",
    [(0.5, 0, None), (0.25, 10, None), (0.7, 3, 4), (1.0, 0, 1), (0.0, 2, 5)],
    ids=["at0", "at10", "every4-from3", "full-every1", "zero-every5"],
)
def test_constant_schedule(sparsity, start, every):
    sched = jp.constant_schedule(sparsity, start=start, every=every)
    for t in range(0, 40):
        expected_update = t == start if every is None else (t >= start and (t - start) % every == 0)
        assert bool(sched.is_update(t)) == expected_update, t
        expected_target = 0.0 if t < start else sparsity
        assert float(sched.target(t)) == pytest.approx(expected_target, abs=1e-7), t


@pytest.mark.parametrize("step", [0, 1, 17], ids=lambda s: f"step{s}")
def test_one_shot_schedule_updates_once(step):
    sched = jp.one_shot_schedule(0.8, step)
    updates = [t for t in range(60) if bool(sched.is_update(t))]
    assert updates == [step]
    assert all(float(sched.target(t)) == 0.0 for t in range(step))
    assert all(float(sched.target(t)) == pytest.approx(0.8) for t in range(step, 60))


@pytest.mark.parametrize(
    "sched",
    [jp.polynomial_schedule(0.0, 0.9, start=5, end=95, every=10, power=3),
     jp.constant_schedule(0.4, start=3, every=7),
     jp.one_shot_schedule(0.5, 12)],
    ids=["polynomial", "constant", "one_shot"],
)
def test_schedules_trace_once_over_a_run(sched):
    chex.clear_trace_counter()
    traces = [0]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def query(step):
        traces[0] += 1
        return sched.target(step), sched.is_update(step)

    results = []
    for t in range(100):
        target, update = query(jnp.int32(t))
        results.append((float(target), bool(update)))
    assert traces[0] == 1
    assert [u for _, u in results] == [bool(sched.is_update(t)) for t in range(100)]
    np.testing.assert_allclose([v for v, _ in results], [float(sched.target(t)) for t in range(100)],
                               rtol=1e-6, atol=1e-7)
    target, update = query(jnp.int32(50))
    assert target.dtype == jnp.float32 and target.shape == ()
    assert update.dtype == jnp.bool_ and update.shape == ()


def test_schedules_work_in_a_lax_loop_with_a_traced_step():
    sched = jp.polynomial_schedule(0.0, 0.9, start=0, end=90, every=10)

    def body(carry, t):
        return carry + sched.is_update(t).astype(jnp.int32), sched.target(t)

    n_updates, targets = jax.lax.scan(body, jnp.int32(0), jnp.arange(100, dtype=jnp.int32))
    assert int(n_updates) == 10
    np.testing.assert_allclose(np.asarray(targets), [zhu_gupta(t, 0.0, 0.9, 0, 9, 10) for t in range(100)],
                               atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: jp.polynomial_schedule(0.0, 1.5, start=0, end=10, every=1),
        lambda: jp.polynomial_schedule(0.0, -0.1, start=0, end=10, every=1),
        lambda: jp.polynomial_schedule(0.0, math.nan, start=0, end=10, every=1),
        lambda: jp.polynomial_schedule(-0.2, 0.5, start=0, end=10, every=1),
        lambda: jp.polynomial_schedule(1.2, 0.5, start=0, end=10, every=1),
        lambda: jp.polynomial_schedule(0.0, 0.5, start=20, end=10, every=1),
        lambda: jp.polynomial_schedule(0.0, 0.5, start=0, end=10, every=0),
        lambda: jp.polynomial_schedule(0.0, 0.5, start=0, end=10, every=-2),
        lambda: jp.constant_schedule(1.01),
        lambda: jp.constant_schedule(-0.5),
        lambda: jp.constant_schedule(0.5, every=0),
        lambda: jp.constant_schedule(0.5, every=-1),
        lambda: jp.one_shot_schedule(2.0, 5),
        lambda: jp.one_shot_schedule(-1.0, 5),
    ],
    ids=["poly-final>1", "poly-final<0", "poly-final-nan", "poly-initial<0", "poly-initial>1",
         "poly-start-after-end", "poly-dt0", "poly-dt-negative", "const>1", "const<0", "const-every0",
         "const-every-negative", "oneshot>1", "oneshot<0"],
)
def test_bad_schedules_raise_value_error_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_bad_schedule_messages_name_the_value():
    with pytest.raises(ValueError, match="1.5"):
        jp.polynomial_schedule(0.0, 1.5, start=0, end=10, every=1)
    with pytest.raises(ValueError, match="start"):
        jp.polynomial_schedule(0.0, 0.5, start=20, end=10, every=1)
