"""How much of a tree is pruned: per-leaf counts and a table; with channel groups, what shrinking saves."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._plan import leaves_like, named_leaves
from ._trees import unwrap_variables
from ._typing import PyTree


@dataclasses.dataclass(frozen=True)
class LeafSparsity:
    path: str
    shape: tuple[int, ...]
    size: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class GroupSparsity:
    """One channel group: its channels, how many are pruned in every member, what removing them saves."""

    index: int
    size: int
    members: int
    removable: int
    params_saved: int


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-leaf and total sparsity; ``str(report)`` is a table.

    With channel groups: ``groups`` (one row per group), ``params_after`` (the
    parameter count once every removable channel is removed by ``jp.shrink``),
    and, with a model function, ``flops`` and ``flops_after`` (XLA's cost
    analysis of the jitted call, before and after shrinking).
    """

    leaves: tuple[LeafSparsity, ...]
    groups: tuple[GroupSparsity, ...] = ()
    params_after: int | None = None
    flops: float | None = None
    flops_after: float | None = None

    @property
    def size(self) -> int:
        return sum(leaf.size for leaf in self.leaves)

    @property
    def pruned(self) -> int:
        return sum(leaf.pruned for leaf in self.leaves)

    @property
    def sparsity(self) -> float:
        return self.pruned / self.size if self.size else 0.0

    def as_dict(self) -> dict[str, dict[str, Any]]:
        rows = {leaf.path: {"shape": list(leaf.shape), "size": leaf.size, "pruned": leaf.pruned,
                            "sparsity": leaf.sparsity} for leaf in self.leaves}
        rows["total"] = {"size": self.size, "pruned": self.pruned, "sparsity": self.sparsity}
        return rows

    def __str__(self) -> str:
        width = max([len("parameter")] + [len(leaf.path) for leaf in self.leaves])
        lines = [f"{'parameter':<{width}}  {'shape':>16}  {'pruned':>12}  {'size':>12}  sparsity"]
        for leaf in self.leaves:
            lines.append(f"{leaf.path:<{width}}  {str(leaf.shape):>16}  {leaf.pruned:>12,}  {leaf.size:>12,}  "
                         f"{leaf.sparsity:8.2%}")
        lines.append(f"{'total':<{width}}  {'':>16}  {self.pruned:>12,}  {self.size:>12,}  {self.sparsity:8.2%}")
        if self.params_after is not None:
            lines.append("")
            lines.append(f"{'group':>5}  {'channels':>8}  {'members':>7}  {'removable':>9}  {'params saved':>12}")
            for g in self.groups:
                lines.append(f"{g.index:>5}  {g.size:>8,}  {g.members:>7}  {g.removable:>9,}  {g.params_saved:>12,}")
            lines.append(f"shrinking: {self.size:,} -> {self.params_after:,} values")
            if self.flops is not None and self.flops_after is not None:
                lines.append(f"FLOPs: {self.flops:,.0f} -> {self.flops_after:,.0f}")
        return "\n".join(lines)


def sparsity_report(
    tree: PyTree,
    masks: PyTree | None = None,
    *,
    groups: Sequence[Any] | None = None,
    fn: Callable[..., Any] | None = None,
    args: Sequence[Any] = (),
) -> SparsityReport:
    """How much of each leaf is pruned (host-side).

    Flax NNX variables are read as their values, so ``nnx.state(model,
    nnx.Param)`` and the masks of an ``nnx.Optimizer``'s state
    (``optimizer.opt_state.masks``, wrapped as optimizer variables) pair up.

    With ``masks`` (a mask tree, None = leaf not pruned), counts the False
    entries of each mask over every leaf of ``tree``. Without, counts the
    False entries of bool leaves and the zeros of numeric leaves of ``tree``.

    With ``groups`` (from ``jp.channel_groups``), also what shrinking would
    save: a channel is removable when every position it owns in every member
    (found in ``tree``) is pruned (masked, or zero without a mask). With a
    model function ``fn(tree, *args)``, or ``tree`` an NNX module and its call
    ``args``, the FLOPs of the jitted call (XLA's cost analysis) before and
    after shrinking.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> params = {"w": jnp.array([0.0, 2.0, 0.0, 1.0]), "b": jnp.ones(2)}
    >>> report = jp.sparsity_report(params, {"w": jnp.array([False, True, False, True]), "b": None})
    >>> report.pruned, report.size, f"{report.sparsity:.3f}"
    (2, 6, '0.333')
    >>> print(report)
    parameter             shape        pruned          size  sparsity
    b                      (2,)             0             2     0.00%
    w                      (4,)             2             4    50.00%
    total                                   2             6    33.33%

    >>> import jax
    >>> def mlp(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.array([[1.0, 0.0, 2.0]]), "w2": jnp.array([[1.0], [0.0], [3.0]])}
    >>> groups = jp.channel_groups(mlp, params, jnp.ones((2, 1)))
    >>> report = jp.sparsity_report(params, groups=groups, fn=mlp, args=(jnp.ones((2, 1)),))
    >>> report.params_after, [g.removable for g in report.groups]
    (4, [1])
    """
    model = None
    if _is_nnx_module(tree):
        model, tree = tree, _nnx().state(tree)
    tree, masks = unwrap_variables(tree), unwrap_variables(masks)
    named = named_leaves(tree)
    mask_leaves: Sequence[Any] = leaves_like(tree, masks, "masks")
    rows = []
    for (path, leaf), mask in zip(named, mask_leaves):
        arr = np.asarray(leaf)
        if masks is not None:
            pruned = 0 if mask is None else int(np.size(mask) - np.count_nonzero(np.asarray(mask)))
        else:
            pruned = int(arr.size - np.count_nonzero(arr))
        rows.append(LeafSparsity(path, tuple(arr.shape), int(arr.size), pruned))
    report = SparsityReport(tuple(rows))
    if groups is None:
        return report
    values = {path: np.asarray(leaf) for path, leaf in named}
    given = {path: (None if m is None else np.asarray(m)) for (path, _), m in zip(named, mask_leaves)}
    keep = [_removable(g, values, given if masks is not None else {}) for g in groups]
    rows_g = tuple(
        GroupSparsity(i, g.size, len(g.members), int(np.sum(~k)), _saved(values, [g], [k]))
        for i, (g, k) in enumerate(zip(groups, keep))
    )
    after = report.size - _saved(values, groups, keep)
    flops = flops_after = None
    if model is not None and args:
        flops, flops_after = _model_flops(model, groups, keep, args)
    elif fn is not None:
        from ._shrink import shrink

        flops = _flops(fn, tree, args)
        flops_after = _flops(fn, shrink(tree, groups, [jnp.asarray(k) for k in keep], allow_empty=True), args)
    return dataclasses.replace(report, groups=rows_g, params_after=after, flops=flops, flops_after=flops_after)


def _nnx() -> Any:
    import flax.nnx as nnx

    return nnx


def _is_nnx_module(x: Any) -> bool:
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Module)


def _removable(group: Any, values: dict[str, np.ndarray], masks: dict[str, np.ndarray | None]) -> np.ndarray:
    """Keep vector of ``group``: False for channels pruned at every position of every member present."""
    from ._shrink import channel_alive

    keep = np.zeros(group.size, bool)
    for m in group.members:
        if m.path in values:
            mask = masks.get(m.path)
            keep |= channel_alive(m, mask if mask is not None else values[m.path] != 0)
    return keep


def _saved(values: dict[str, np.ndarray], groups: Sequence[Any], keep: Sequence[np.ndarray]) -> int:
    """Values removed from the tree when the channels ``keep`` drops are removed (positions combined per axis)."""
    from ._shrink import _axis_keeps

    saved = 0
    for path, by_axis in _axis_keeps(tuple(groups), keep, np).items():
        if path in values:
            shape = values[path].shape
            kept = [int(np.count_nonzero(by_axis[d])) if d in by_axis else n for d, n in enumerate(shape)]
            saved += int(np.prod(shape, dtype=np.int64)) - int(np.prod(kept, dtype=np.int64))
    return saved


def _flops(fn: Callable[..., Any], tree: PyTree, args: Sequence[Any]) -> float:
    cost: Any = jax.jit(fn).lower(tree, *args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", float("nan")))


def _model_flops(
    model: Any, groups: Sequence[Any], keep: Sequence[np.ndarray], args: Sequence[Any]
) -> tuple[float, float]:
    from ._shrink import shrink_model

    nnx = _nnx()

    def flops_of(m: Any) -> float:
        graphdef, state = nnx.split(m)
        return _flops(lambda s, *a: nnx.merge(graphdef, s)(*a), state, args)

    clone = nnx.clone(model)
    before = flops_of(clone)
    shrink_model(clone, groups, [jnp.asarray(k) for k in keep], allow_empty=True)
    return before, flops_of(clone)
