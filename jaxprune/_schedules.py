r"""Sparsity schedules: pure functions of a (traced) step.

A schedule answers two questions for any step, with jnp operations only (so a
training step that asks them compiles once): ``target(step)``, the sparsity
the masks should have reached by then (a float32 in [0, 1]), and
``is_update(step)``, whether the masks are recomputed at that step. Between
updates the target stays at its last update's value. Arguments are checked
when the schedule is built.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax.numpy as jnp
import numpy as np

from ._typing import Array, ArrayLike


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a sparsity in [0, 1], got {value!r}")
    return float(value)


def _check_step(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Schedule:
    """Base of the sparsity schedules: ``target(step)`` and ``is_update(step)``."""

    def target(self, step: ArrayLike) -> Array:
        """Sparsity to reach at ``step`` (float32 scalar)."""
        raise NotImplementedError

    def is_update(self, step: ArrayLike) -> Array:
        """Whether masks are recomputed at ``step`` (bool scalar)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """Prune to ``sparsity`` at ``start``, then every ``every`` steps (or never again).

    >>> import jaxprune as jp
    >>> s = jp.constant_schedule(0.5, start=10)
    >>> [bool(s.is_update(t)) for t in (0, 10, 11)], float(s.target(3)), float(s.target(10))
    ([False, True, False], 0.0, 0.5)
    """

    sparsity: float
    start: int = 0
    every: int | None = None

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)
        _check_step("start", self.start)
        if self.every is not None:
            _check_step("every", self.every, minimum=1)

    def target(self, step: ArrayLike) -> Array:
        return jnp.where(jnp.asarray(step) >= self.start, jnp.float32(self.sparsity), jnp.float32(0.0))

    def is_update(self, step: ArrayLike) -> Array:
        step = jnp.asarray(step)
        if self.every is None:
            return step == self.start
        return (step >= self.start) & ((step - self.start) % self.every == 0)


def constant_schedule(sparsity: float, *, start: int = 0, every: int | None = None) -> ConstantSchedule:
    """A constant target: prune to ``sparsity`` at ``start`` (and again every
    ``every`` steps, which re-ranks the surviving weights at the same sparsity).
    """
    return ConstantSchedule(sparsity, start, every)


def one_shot_schedule(sparsity: float, step: int) -> ConstantSchedule:
    """Prune once, to ``sparsity``, at ``step``.

    >>> import jaxprune as jp
    >>> s = jp.one_shot_schedule(0.8, step=100)
    >>> bool(s.is_update(100)), bool(s.is_update(200)), float(s.target(99)), round(float(s.target(500)), 6)
    (True, False, 0.0, 0.8)
    """
    return ConstantSchedule(sparsity, step, None)


@dataclasses.dataclass(frozen=True)
class PolynomialSchedule(Schedule):
    r"""Zhu & Gupta (2017), "To prune, or not to prune": gradual pruning.

    With initial sparsity :math:`s_i`, final :math:`s_f`, start :math:`t_0`,
    :math:`n` updates every :math:`\Delta t` steps (``end = start + n * every``):

    .. math::

       s_t = s_f + (s_i - s_f) \left(1 - \frac{t - t_0}{n \Delta t}\right)^{p}

    evaluated at the last update step :math:`\le t` (so the target is constant
    between updates), 0 before :math:`t_0` and :math:`s_f` after the end.
    Updates happen at :math:`t_0, t_0 + \Delta t, \dots, t_0 + n \Delta t`.

    >>> import jaxprune as jp
    >>> s = jp.polynomial_schedule(0.0, 0.9, start=0, end=100, every=10)
    >>> [round(float(s.target(t)), 4) for t in (0, 10, 15, 50, 100, 1000)]
    [0.0, 0.2439, 0.2439, 0.7875, 0.9, 0.9]
    >>> int(sum(bool(s.is_update(t)) for t in range(200)))
    11
    """

    initial_sparsity: float
    final_sparsity: float
    start: int
    end: int
    every: int
    power: float = 3.0

    def __post_init__(self) -> None:
        _check_fraction("initial_sparsity", self.initial_sparsity)
        _check_fraction("final_sparsity", self.final_sparsity)
        _check_step("start", self.start)
        _check_step("end", self.end)
        if self.end < self.start:
            raise ValueError(f"start={self.start} is after end={self.end}")
        _check_step("every (dt)", self.every, minimum=1)
        if (self.end - self.start) % self.every:
            raise ValueError(
                f"end - start = {self.end - self.start} must be a multiple of every={self.every} "
                "(the last update falls on end)"
            )
        if isinstance(self.power, bool) or not isinstance(self.power, numbers.Real) or not self.power > 0:
            raise ValueError(f"power must be a positive number, got {self.power!r}")

    def targets(self) -> np.ndarray:
        """The target at each update step, computed once in float64 and then
        rounded to float32, so eager and jitted steps read identical values."""
        n = (self.end - self.start) // self.every
        left = (n - np.arange(n + 1)) / max(n, 1)  # 1 - (t - t0) / (n dt), exactly 0 at the end
        if n == 0:
            left = np.zeros(1)
        values = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * left**self.power
        return values.astype(np.float32)

    def target(self, step: ArrayLike) -> Array:
        step = jnp.asarray(step, jnp.int32)
        index = (jnp.clip(step, self.start, self.end) - self.start) // self.every
        value = jnp.asarray(self.targets())[index]
        return jnp.where(step < self.start, jnp.float32(0.0), value)

    def is_update(self, step: ArrayLike) -> Array:
        step = jnp.asarray(step, jnp.int32)
        return (step >= self.start) & (step <= self.end) & ((step - self.start) % self.every == 0)


def polynomial_schedule(
    initial_sparsity: float,
    final_sparsity: float,
    *,
    start: int,
    end: int,
    every: int,
    power: float = 3.0,
) -> PolynomialSchedule:
    """Gradual pruning from ``initial_sparsity`` at ``start`` to
    ``final_sparsity`` at ``end``, updating the masks every ``every`` steps
    (Zhu & Gupta 2017, ``power=3``). See :class:`PolynomialSchedule`."""
    return PolynomialSchedule(initial_sparsity, final_sparsity, start, end, every, power)
