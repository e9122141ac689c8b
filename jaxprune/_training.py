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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import _methods
from ._amounts import CheckedAmount, count_to_prune
from ._rules import Assignment, GlobalUnstructured, Rules, _key_path, global_group, resolve_rules
from ._schedules import Schedule
from ._specs import CustomFromMask, Identity, PruningMethod, RandomStructured, RandomUnstructured
from ._trees import apply_masks, global_masks, leaf_key
from ._typing import Array, PRNGKey, PyTree


class PruningState(NamedTuple):
    """State of :func:`pruning`: the step count, the masks, the inner state."""

    count: Array
    masks: PyTree
    inner_state: Any


def _make_method(value: Any, amount: Any) -> Any:
    """The rule's method with this amount: a spec gets its amount replaced, a
    factory (a spec class, a partial) is called with it."""
    if isinstance(value, (PruningMethod, GlobalUnstructured)) and dataclasses.is_dataclass(value):
        return dataclasses.replace(value, amount=amount)
    return value(amount)


def _accepts(value: Any) -> bool:
    if isinstance(value, (Identity, CustomFromMask)):
        return False
    try:
        probe = _make_method(value, 0)
    except Exception:  # noqa: BLE001 - any failure means "not a usable rule value"
        return False
    return isinstance(probe, (PruningMethod, GlobalUnstructured)) and hasattr(probe, "amount")


def _resolve(params: PyTree, rules: Rules) -> list[tuple[Assignment, Any]]:
    assignments = resolve_rules(
        params, rules, accept=_accepts,
        what="a method with an amount (a spec such as jp.L1Unstructured(0.0), a spec class, "
             "or a callable amount -> spec)",
    )
    resolved = [(a, _make_method(a.value, 0)) for a in assignments]
    leaves = jax.tree.leaves(params)
    for a, probe in resolved:
        if getattr(probe, "PRUNING_TYPE", None) == "structured":
            try:
                _methods.check_dim(tuple(jnp.shape(leaves[a.index])), probe.dim)
            except (IndexError, ValueError) as err:
                raise type(err)(f"rule {a.pattern or ''!r} for {a.path!r}: {err}") from None
    return resolved


def pruning(
    inner: Any,
    rules: Rules,
    schedule: Schedule,
    *,
    key: PRNGKey | None = None,
) -> Any:
    """Wrap ``inner`` (an optax optimizer) so that it prunes by ``schedule``.

    Args:
      inner: any ``optax.GradientTransformation``.
      rules: ``{pattern: method}`` over parameter paths (see :func:`prune_tree`),
        or a callable ``(path, leaf) -> method | None``. A method is a spec
        whose amount the schedule replaces (``jp.L1Unstructured(0.0)``), a spec
        class (``jp.L1Unstructured``), or ``functools.partial(jp.LnStructured,
        n=2, dim=-1)``. ``jp.GlobalUnstructured`` ranks its leaves together.
      schedule: the target sparsity per step (:func:`polynomial_schedule`, ...).
        At an update step, each leaf (or global group) is pruned until
        ``round(target * units)`` of its units are pruned; masks only grow.
      key: PRNG key for random methods; each update folds in the step and
        each leaf its path.

    Returns:
      An ``optax.GradientTransformation`` with :class:`PruningState`. Call
      ``update(grads, state, params)`` (params are required).

    >>> import jax, jax.numpy as jnp, optax, jaxprune as jp
    >>> params = {"w": jnp.array([0.1, -2.0, 0.3, 4.0]), "b": jnp.zeros(2)}
    >>> tx = jp.pruning(optax.sgd(0.1), {"w": jp.L1Unstructured}, jp.one_shot_schedule(0.5, step=0))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones(4), "b": jnp.ones(2)}
    >>> updates, state = jax.jit(tx.update)(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([ 0. , -2.1,  0. ,  3.9], dtype=float32)
    """
    import optax  # the optax extra; jaxprune's core does not need it

    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a jaxprune schedule (e.g. jp.polynomial_schedule(...)), got {schedule!r}")
    if key is not None:
        key = _methods.check_key(key)

    def init(params: PyTree) -> PruningState:
        resolved = _resolve(params, rules)
        if key is None:
            for a, probe in resolved:
                if isinstance(probe, (RandomUnstructured, RandomStructured)) or getattr(probe, "method", "") == "random":
                    raise ValueError(f"rule for {a.path!r} is random: pass key=jax.random.key(seed) to jp.pruning")
        leaves, treedef = jax.tree.flatten(params)
        masks: list[Array | None] = [None] * len(leaves)
        for a, _ in resolved:
            masks[a.index] = _methods.identity(leaves[a.index])  # all kept, sharded like the leaf
        return PruningState(jnp.zeros((), jnp.int32), jax.tree.unflatten(treedef, masks), inner.init(params))

    def update(updates: PyTree, state: PruningState, params: PyTree | None = None) -> tuple[PyTree, PruningState]:
        if params is None:
            raise ValueError("jp.pruning needs the parameters: call tx.update(grads, state, params)")
        resolved = _resolve(params, rules)
        step = state.count

        def recompute(masks: PyTree) -> PyTree:
            step_key = None if key is None else jax.random.fold_in(key, step)
            return _scheduled_masks(step_key, params, resolved, masks, schedule.target(step))

        masks = lax.cond(schedule.is_update(step), recompute, lambda m: m, state.masks)
        grads = apply_masks(updates, masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)

        def finish(mask: Array | None, update: Array, param: Array) -> Array:
            if mask is None:
                return update
            # param + (-param) is exactly 0: pruned weights land on zero, even
            # those pruned in this very step. The update takes the parameter's
            # dtype so that a low-precision update cannot round -param.
            return jnp.where(mask, update.astype(param.dtype), -param)

        final = jax.tree.map(finish, masks, inner_updates, params, is_leaf=lambda x: x is None)
        return final, PruningState(optax.safe_int32_increment(step), masks, inner_state)

    return optax.GradientTransformation(init, update)


def _pruned_units(mask: Array, method: Any) -> tuple[int, Array]:
    """(units, units already pruned) of a leaf for this method, traced."""
    if getattr(method, "PRUNING_TYPE", None) == "structured":
        units = mask.shape[method.dim % mask.ndim]
        return units, units - jnp.sum(_methods.alive_slices(mask, method.dim), dtype=jnp.int32)
    return mask.size, mask.size - jnp.sum(mask, dtype=jnp.int32)


def _new_count(target: Array, units: int, already: Array) -> Array:
    total = count_to_prune(CheckedAmount(target, is_count=False), jnp.int32(units))
    return jnp.maximum(total - already, 0).astype(jnp.int32)


def _scheduled_masks(
    key: PRNGKey | None,
    params: PyTree,
    resolved: list[tuple[Assignment, Any]],
    masks: PyTree,
    target: Array,
) -> PyTree:
    leaves, _ = jax.tree.flatten(params)
    mask_leaves, mask_def = jax.tree.flatten(masks, is_leaf=lambda x: x is None)
    new = list(mask_leaves)
    groups: dict[Any, list[Assignment]] = {}
    for a, probe in resolved:
        if isinstance(probe, GlobalUnstructured):
            groups.setdefault(global_group(a.value, a.pattern), []).append(a)
            continue
        mask = mask_leaves[a.index]
        units, already = _pruned_units(mask, probe)
        method = _make_method(a.value, _new_count(target, units, already))
        leaf_rng = None if key is None else leaf_key(key, _key_path(a))
        new[a.index] = method.compute_mask(leaf_rng, leaves[a.index], mask)
    for (_, value), members in groups.items():
        old = [mask_leaves[a.index] for a in members]
        units = sum(m.size for m in old)
        already = sum(m.size - jnp.sum(m, dtype=jnp.int32) for m in old)
        probe = _make_method(value, 0)
        out = global_masks(
            [a.path for a in members],
            [leaves[a.index] for a in members],
            CheckedAmount(_new_count(target, units, already), is_count=True),
            method=probe.method,
            key=key,
            importance_scores=[None] * len(members),
            default_masks=old,
        )
        for a, mask in zip(members, out):
            new[a.index] = mask
    return jax.tree.unflatten(mask_def, new)

