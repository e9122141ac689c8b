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
from ._amounts import CheckedAmount, as_count, count_to_prune
from ._errors import KeyRequiredError
from ._group_types import ChannelGroup
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
    rules: Rules | ChannelPruning | Sequence[ChannelGroup],
    schedule: Schedule | Callable[[Array], ArrayLike],
    *,
    key: PRNGKey | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` (an optax optimizer) so that it prunes by ``schedule``.

    Args:
      inner: any ``optax.GradientTransformation``; it receives the extra
        arguments of ``update`` too.
      rules: ``{pattern: method}`` over parameter paths (see :func:`prune_tree`),
        or a callable ``(path, leaf) -> method | None``; or channel groups
        (``jp.channel_groups(...)``, or :class:`ChannelPruning` to choose
        how channels are scored): whole channels are pruned, see
        :class:`ChannelPruning`. A method is a class
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
    if isinstance(rules, ChannelPruning) or _is_groups(rules):
        spec = rules if isinstance(rules, ChannelPruning) else ChannelPruning(tuple(rules))  # type: ignore[arg-type]
        return _channel_pruning(optax, inner, spec, schedule, key)
    leaf_rules = cast(Rules, rules)
    plans: dict[Any, Plan] = {}

    def plan_for(params: PyTree) -> tuple[list[tuple[str, Any]], Plan]:
        named = named_leaves(params)
        signature = (jax.tree.structure(params), tuple((jnp.shape(x), jnp.result_type(x)) for _, x in named))
        if signature not in plans:
            p = plan(named, leaf_rules, factory_amount=0)
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

        return _masked_step(optax, inner, schedule, recompute, updates, state, params, extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


def _is_none(x: Any) -> bool:
    return x is None


def _masked_step(
    optax: Any,
    inner: Any,
    schedule: Schedule,
    recompute: Callable[[PyTree], PyTree],
    updates: PyTree,
    state: PruningState,
    params: PyTree,
    extra_args: dict[str, Any],
) -> tuple[PyTree, PruningState]:
    """One step of either kind of rules: masks recomputed on update steps, gradients masked, the
    inner optimizer, then pruned parameters sent to 0."""
    step = state.count
    masks = lax.cond(schedule.is_update(step), recompute, lambda m: m, state.masks)
    grads = apply_masks(updates, masks)
    inner_updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
    final = jax.tree.map(_finish, masks, inner_updates, params, is_leaf=_is_none)
    return final, PruningState(optax.safe_int32_increment(step), masks, inner_state)


def _finish(mask: Array | None, update: Array, param: Array) -> Array:
    if mask is None:
        return update
    # param + (-param) is exactly 0: pruned weights land on zero, even
    # those pruned in this very step. The update takes the parameter's
    # dtype so that a low-precision update cannot round -param.
    return jnp.where(mask, update.astype(param.dtype), -param)


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


# --------------------------------------------------------------------------
# Whole channels: jp.pruning over channel groups
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChannelPruning:
    """Rules for :func:`pruning` that prune whole channels of channel groups.

    At each update step of the schedule, every group is pruned until
    ``round(target * group.size)`` of its channels are pruned (channels pruned
    before stay pruned and count), the lowest-scoring first: ``method`` as in
    :func:`group_keep` (``"l2"``, ``"l1"``, or ``"random"`` with ``pruning``'s
    key, folded with the step). A channel's positions are masked in every
    member the optimizer sees (members outside the optimized tree, such as
    BatchNorm statistics, are left alone until :func:`shrink`). Passing the
    groups themselves as ``rules`` means ``ChannelPruning(groups)``.

    >>> import jax, jax.numpy as jnp, optax, jaxprune as jp
    >>> def mlp(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.arange(1.0, 9.0).reshape(2, 4), "w2": jnp.ones((4, 1))}
    >>> groups = jp.channel_groups(mlp, params, jnp.ones((3, 2)))
    >>> tx = jp.pruning(optax.sgd(0.0), jp.ChannelPruning(groups, "l1"), jp.one_shot_schedule(0.5, step=0))
    >>> updates, state = tx.update(params, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w1"]
    Array([[0., 0., 3., 4.],
           [0., 0., 7., 8.]], dtype=float32)
    """

    groups: tuple[ChannelGroup, ...]
    method: str = "l2"

    def __post_init__(self) -> None:
        if not _is_groups(self.groups):
            raise TypeError(f"ChannelPruning expects channel groups (jp.channel_groups(...)), got {self.groups!r}")
        if self.method not in ("l1", "l2", "random"):
            raise ValueError(f"method must be 'l1', 'l2' or 'random', got {self.method!r}")
        object.__setattr__(self, "groups", tuple(self.groups))


def _is_groups(rules: Any) -> bool:
    return isinstance(rules, (tuple, list)) and len(rules) > 0 and all(isinstance(g, ChannelGroup) for g in rules)


def _channel_pruning(optax: Any, inner: Any, spec: ChannelPruning, schedule: Schedule, key: PRNGKey | None) -> Any:
    from ._shrink import _axis_keeps, _check_member, _keep_lowest_entries, _leaf_mask, _scores, channel_alive

    if spec.method == "random" and key is None:
        raise KeyRequiredError("ChannelPruning(method='random') draws scores: pass key= to jp.pruning")

    def present(params: PyTree) -> tuple[list[tuple[str, Any]], tuple[ChannelGroup, ...]]:
        """The groups restricted to the members in this tree (an optimizer sees params only)."""
        named = named_leaves(params)
        leaves = dict(named)
        groups = []
        for i, g in enumerate(spec.groups):
            members = tuple(m for m in g.members if m.path in leaves)
            for m in members:
                _check_member(i, g, m, leaves)  # a group of another model: a clear error
            groups.append(dataclasses.replace(g, members=members))
        if not any(g.members for g in groups):
            raise ValueError("none of the channel groups' members is in the parameters given to the optimizer")
        return named, tuple(groups)

    def masks_of(params: PyTree, groups: tuple[ChannelGroup, ...], keep: Sequence[Array]) -> PyTree:
        named = named_leaves(params)
        axes = _axis_keeps(groups, keep, jnp)
        shapes = dict((path, jnp.shape(leaf)) for path, leaf in named)
        leaves = [_leaf_mask(shapes[path], axes[path]) if path in axes else None for path, _ in named]
        return jax.tree.unflatten(jax.tree.structure(params), leaves)

    def init(params: PyTree) -> PruningState:
        _, groups = present(params)
        keep = [jnp.ones(g.size, bool) for g in groups]
        return PruningState(jnp.zeros((), jnp.int32), masks_of(params, groups, keep), inner.init(params))

    def update(
        updates: PyTree, state: PruningState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, PruningState]:
        if params is None:
            raise ValueError("jp.pruning needs the parameters: call tx.update(grads, state, params)")
        named, groups = present(params)
        step = state.count

        def recompute(masks: PyTree) -> PyTree:
            step_key = None if key is None else jax.random.fold_in(key, step)
            by_path = {path: m for (path, _), m in zip(named, jax.tree.leaves(masks, is_leaf=_is_none))}
            leaves = dict(named)
            target = CheckedAmount(schedule.target(step), is_count=False)
            keep = []
            for g in groups:
                if not g.members:
                    keep.append(jnp.ones(g.size, bool))
                    continue
                old = channel_alive(g.members[0], by_path[g.members[0].path], jnp)  # whole channels masked
                total = count_to_prune(target, jnp.asarray(g.size, jnp.int32))
                k = jnp.maximum(total - (g.size - jnp.sum(old, dtype=jnp.int32)), 0)
                scores = _scores(g, leaves, spec.method, step_key)
                keep.append(_keep_lowest_entries(scores, old, as_count(k)))
            return masks_of(params, groups, keep)

        return _masked_step(optax, inner, schedule, recompute, updates, state, params, extra_args)

    return optax.GradientTransformationExtraArgs(init, update)
