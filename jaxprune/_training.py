"""Pruning while training: an optax ``GradientTransformation`` that owns the masks.

``jp.pruning(inner, rules, schedule, key=key)`` wraps any optax optimizer. Its
state holds the step count and the masks; on the schedule's update steps it
recomputes the masks inside the jitted step (``lax.cond``: no Python branching,
the whole run compiles once). Its updates zero the gradients of pruned entries
before the inner optimizer sees them (no resurrection through momentum) and
send every pruned parameter to exactly 0 under ``optax.apply_updates``: there
is no second call to remember.

Composition (the wrapper must have the last word on the updates):

* ``optax.chain``: put the chain inside, ``jp.pruning(optax.chain(clip, adam), ...)``.
  A transformation chained *after* ``jp.pruning`` (say ``optax.scale``) would
  rescale the ``-param`` updates of pruned entries and break the zeros.
* ``optax.MultiSteps``: wrap the pruning optimizer, ``optax.MultiSteps(jp.pruning(...), k)``;
  the schedule then counts optimizer steps (every k micro-batches), and the
  skipped micro-steps apply zero updates, which keep pruned weights at 0.
* learning-rate schedules live in the inner optimizer and count its own steps.

Limitation: a pruned parameter that is ``inf`` or NaN cannot be sent to 0 by
an additive update (``inf + -inf`` is NaN); ``jp.apply_masks`` zeroes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax

from . import _methods
from ._amounts import CheckedAmount, count_to_prune
from ._plan import Plan, check_key_for, compute_masks, extra_leaves, named_leaves, plan
from ._rules import Rules
from ._schedules import Schedule
from ._specs import PruningMethod, count_dtype
from ._trees import apply_masks
from ._typing import Array, ArrayLike, PRNGKey, PyTree

if TYPE_CHECKING:
    import optax


class PruningState(NamedTuple):
    """State of :func:`pruning`: the step count, the masks, the inner state."""

    count: Array
    masks: PyTree
    inner_state: Any


@dataclasses.dataclass(frozen=True)
class _CallableSchedule(Schedule):
    """An optax-style schedule ``step -> sparsity``: the masks are recomputed at
    step 0 and whenever the target rises."""

    fn: Callable[[Array], ArrayLike]

    def target(self, step: ArrayLike) -> Array:
        return jnp.clip(jnp.asarray(self.fn(jnp.asarray(step)), jnp.float32), 0.0, 1.0)

    def is_update(self, step: ArrayLike) -> Array:
        step = jnp.asarray(step)
        return (step == 0) | (self.target(step) > self.target(jnp.maximum(step - 1, 0)))


def _as_schedule(schedule: Any) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if callable(schedule):
        return _CallableSchedule(cast(Callable[[Array], ArrayLike], schedule))
    raise TypeError(f"schedule must be a jaxprune schedule (e.g. jp.polynomial_schedule(...)) or a callable "
                    f"step -> sparsity (an optax schedule), got {schedule!r}")


def _import_optax() -> Any:
    try:
        import optax
    except ImportError as err:
        raise ImportError("jp.pruning needs optax: pip install 'jaxprune[optax]' (or pip install optax)") from err
    return optax


def _refuse_set_amounts(p: Plan) -> None:
    """The schedule sets the amount: a rule value written with a non-zero one is a mistake."""
    for a in p.assignments:
        if isinstance(a.value, PruningMethod) and a.method.has_amount:
            amount = a.method.amount  # type: ignore[attr-defined]
            if not isinstance(amount, jax.Array) and amount != 0:
                raise ValueError(
                    f"{a.where}: {a.value!r} sets amount={amount!r}, but jp.pruning's schedule sets the amount; "
                    f"write {type(a.value).__name__}(0) or the class {type(a.value).__name__} (or use "
                    "jp.prune_tree for a fixed amount)"
                )


def pruning(
    inner: optax.GradientTransformation,
    rules: Rules,
    schedule: Schedule | Callable[[Array], ArrayLike],
    *,
    key: PRNGKey | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` (an optax optimizer) so that it prunes by ``schedule``.

    Args:
      inner: any ``optax.GradientTransformation``; it receives the extra
        arguments of ``update`` too.
      rules: ``{pattern: method}`` over parameter paths (see :func:`prune_tree`),
        or a callable ``(path, leaf) -> method | None``. A method is a class
        (``jp.L1Unstructured``), a method with amount 0 (``jp.L1Unstructured(0)``),
        or ``functools.partial(jp.LnStructured, n=2, dim=-1)``: the schedule
        sets the amount. ``jp.GlobalUnstructured(0)`` ranks its leaves
        together; a method without an amount (``jp.CustomFromMask``) is
        applied as it is at every update step.
      schedule: the target sparsity per step (:func:`polynomial_schedule`, ...,
        or an optax-style callable ``step -> sparsity``, which updates the
        masks at step 0 and whenever the target rises). At an update step,
        each leaf (or global group) is pruned until ``round(target * units)``
        of its units are pruned; masks only grow.
      key: PRNG key for random methods; each update folds in the step and
        each leaf its path.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with :class:`PruningState`.
      Call ``update(grads, state, params, **extra_args)`` (params are
      required). Extra arguments reach the inner optimizer and the methods
      that name them in ``extra_args`` (a tree like ``params`` or a dict
      ``{path: array}``; :class:`TaylorUnstructured` gets ``grads`` from the
      gradients themselves). The rules are resolved once per parameter
      structure, at ``init``.

    >>> import jax, jax.numpy as jnp, optax, jaxprune as jp
    >>> params = {"w": jnp.array([0.1, -2.0, 0.3, 4.0]), "b": jnp.zeros(2)}
    >>> tx = jp.pruning(optax.sgd(0.1), {"w": jp.L1Unstructured}, jp.one_shot_schedule(0.5, step=0))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones(4), "b": jnp.ones(2)}
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([ 0. , -2.1,  0. ,  3.9], dtype=float32)
    """
    optax = _import_optax()
    schedule = _as_schedule(schedule)
    inner = optax.with_extra_args_support(inner)
    if key is not None:
        key = _methods.check_key(key)
    plans: dict[Any, Plan] = {}

    def plan_for(params: PyTree) -> tuple[list[tuple[str, Any]], Plan]:
        named = named_leaves(params)
        signature = (jax.tree.structure(params), tuple((jnp.shape(x), jnp.result_type(x)) for _, x in named))
        if signature not in plans:
            p = plan(named, rules, factory_amount=0)
            _refuse_set_amounts(p)
            check_key_for(p, key)
            plans[signature] = p
        return named, plans[signature]

    def init(params: PyTree) -> PruningState:
        named, p = plan_for(params)
        masks: list[Array | None] = [None] * len(named)
        for a in p.assignments:
            masks[a.index] = _methods.identity(named[a.index][1])  # all kept, sharded like the leaf
        treedef = jax.tree.structure(params)
        return PruningState(jnp.zeros((), jnp.int32), jax.tree.unflatten(treedef, masks), inner.init(params))

    def update(
        updates: PyTree, state: PruningState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, PruningState]:
        if params is None:
            raise ValueError("jp.pruning needs the parameters: call tx.update(grads, state, params)")
        named, p = plan_for(params)
        step = state.count
        paths = [path for path, _ in named]
        wanted = {name for a in p.assignments for name in a.method.extra_args}
        given = {name: value for name, value in extra_args.items() if name in wanted}
        if "grads" in wanted and "grads" not in given:
            given["grads"] = updates
        extra = extra_leaves(params, paths, given)

        def recompute(masks: PyTree) -> PyTree:
            step_key = None if key is None else jax.random.fold_in(key, step)
            old = jax.tree.leaves(masks, is_leaf=_is_none)
            target = schedule.target(step)
            new = compute_masks(p, step_key, [leaf for _, leaf in named], default_masks=old, extra=extra,
                                amount=lambda method, dms: _new_count(method, dms, target))
            return jax.tree.unflatten(jax.tree.structure(masks, is_leaf=_is_none), new)  # None where unpruned

        masks = lax.cond(schedule.is_update(step), recompute, lambda m: m, state.masks)
        grads = apply_masks(updates, masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)

        def finish(mask: Array | None, update: Array, param: Array) -> Array:
            if mask is None:
                return update
            # param + (-param) is exactly 0: pruned weights land on zero, even
            # those pruned in this very step. The update takes the parameter's
            # dtype so that a low-precision update cannot round -param.
            return jnp.where(mask, update.astype(param.dtype), -param)

        final = jax.tree.map(finish, masks, inner_updates, params, is_leaf=_is_none)
        return final, PruningState(optax.safe_int32_increment(step), masks, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def _is_none(x: Any) -> bool:
    return x is None


def _new_count(method: PruningMethod, masks: Sequence[Array], target: Array) -> Any:
    """The amount that brings these masks to ``target``: a count of the units
    not pruned yet (the planner asks only methods that have an amount)."""
    units = sum(method.units(tuple(m.shape)) for m in masks)
    already = sum(method.pruned_units(m) for m in masks)
    dtype = count_dtype()
    if units > jnp.iinfo(dtype).max:
        raise ValueError(f"{method!r} prunes {units} units in one group: counts beyond 2**31 inside a training "
                         "step need x64 (jax.config.update('jax_enable_x64', True)); jp.prune_tree and "
                         "jp.global_unstructured count them exactly without it")
    total = count_to_prune(CheckedAmount(target, is_count=False), jnp.asarray(units, dtype))
    return jnp.maximum(total - already, 0).astype(dtype)
