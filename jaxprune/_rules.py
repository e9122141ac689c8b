"""Pruning whole parameter trees by rules: path patterns -> method specs.

A rule set maps glob patterns over a leaf's dotted path (``"*.kernel"``,
``"encoder.layers.0.*"``; ``*`` also crosses dots) to method specs, or is a
callable ``(path, leaf) -> spec | None``. The first pattern (in the mapping's
order) that matches a leaf decides its method. Leaves matched by one
:class:`GlobalUnstructured` rule are ranked together. Every check (a pattern
that matches nothing, a spec for a non-floating leaf, a dim the leaf lacks)
runs when the rules are resolved, before any tracing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import _methods
from ._amounts import check_amount
from ._plan import match_patterns
from ._specs import PruningMethod
from ._trees import _align, _leaves_with_paths, global_masks, leaf_key
from ._typing import Amount, Array, PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class GlobalUnstructured:
    """Rule value: rank every leaf this rule matches together (torch's
    ``global_unstructured``), pruning ``amount`` of their entries in total.

    One rule pattern is one group. To rank leaves of several patterns (or of
    a callable's answers) together, give them the same ``group`` name; a
    callable's ungrouped answers form one group per distinct value.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> params = {"a": {"kernel": jnp.array([1.0, -5.0])}, "b": {"kernel": jnp.array([0.5, 4.0])}}
    >>> masks = jp.prune_tree(None, params, {"*.kernel": jp.GlobalUnstructured(2)})
    >>> masks["a"]["kernel"], masks["b"]["kernel"]
    (Array([False,  True], dtype=bool), Array([False,  True], dtype=bool))
    """

    PRUNING_TYPE = "unstructured"
    amount: Amount
    method: str = "l1"
    group: str | None = None

    def __post_init__(self) -> None:
        check_amount(self.amount)
        if self.method not in ("l1", "random"):
            raise ValueError(f"GlobalUnstructured method must be 'l1' or 'random', got {self.method!r}")


RuleValue = Union[PruningMethod, GlobalUnstructured]
Rules = Union[Mapping[str, Any], Callable[[str, Array], Any]]


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One leaf that a rule selects: its position among the leaves, path, and rule value."""

    index: int
    path: str
    value: Any
    pattern: str | None


def resolve_rules(
    params: PyTree, rules: Rules, *, accept: Callable[[Any], bool] | None = None, what: str = "a method spec"
) -> list[Assignment]:
    """Match ``rules`` against the leaves of ``params`` and validate the result.

    Raises at once: a pattern that matches no leaf (``ValueError``), a rule
    value that ``accept`` refuses (``TypeError``), a rule for a leaf that is not
    a floating array (``TypeError``), a structured spec whose ``dim`` the leaf
    lacks (``IndexError``/``ValueError``, as the methods).
    """
    accept = accept or _is_rule_value
    named = _leaves_with_paths(params)
    chosen: list[Assignment] = []
    if callable(rules) and not isinstance(rules, Mapping):
        for index, (path, leaf) in enumerate(named):
            value = rules(path, leaf)
            if value is not None:
                chosen.append(Assignment(index, path, value, None))
    elif isinstance(rules, Mapping):
        for index, pattern, value in match_patterns([path for path, _ in named], rules):
            if value is not None:
                chosen.append(Assignment(index, named[index][0], value, pattern))
    else:
        raise TypeError(f"rules must be a dict of pattern -> spec or a callable (path, leaf) -> spec, got {rules!r}")

    for a in chosen:
        leaf = named[a.index][1]
        where = f"rule {a.pattern!r} for {a.path!r}" if a.pattern else f"rule for {a.path!r}"
        if not accept(a.value):
            raise TypeError(f"{where}: expected {what}, got {a.value!r}")
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{where}: only floating parameters can be pruned, got dtype {dtype}")
        dim = getattr(a.value, "dim", None)
        if getattr(a.value, "PRUNING_TYPE", None) == "structured" and dim is not None:
            try:
                _methods.check_dim(tuple(leaf.shape), dim)
            except (IndexError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
    return chosen


def global_group(rule: Any, pattern: str | None) -> tuple[str | None, Any]:
    """The group a global rule's leaf joins: its ``group`` name, else its pattern."""
    name = getattr(rule, "group", None)
    return (pattern, rule) if name is None else (name, dataclasses.replace(rule, group=None))


def _key_path(a: Assignment) -> str:
    """The name a leaf's random stream is derived from: its path, unless the
    spec names another (``key_path``; the torch bridge uses the torch name)."""
    return getattr(a.value, "key_path", None) or a.path


def _is_rule_value(value: Any) -> bool:
    return isinstance(value, (PruningMethod, GlobalUnstructured))


def prune_tree(
    key: PRNGKey | None,
    params: PyTree,
    rules: Rules,
    *,
    default_masks: PyTree | None = None,
    importance_scores: PyTree | None = None,
) -> PyTree:
    """Masks for a whole parameter tree (NNX state, Linen params, any pytree).

    Args:
      key: a PRNG key (needed when a rule is random; may be None otherwise).
        Each leaf draws from ``leaf_key(key, path)``, so adding or removing a
        layer never changes another layer's mask.
      params: the parameter tree.
      rules: ``{pattern: spec}`` (first matching pattern wins; a pattern that
        matches nothing raises) or a callable ``(path, leaf) -> spec | None``.
        Leaves matched by one :class:`GlobalUnstructured` value are pruned together.
      default_masks: a mask tree from an earlier pruning (None for a leaf = all
        kept): iterative pruning, as for the single-tensor methods.
      importance_scores: a tree like ``params`` (None = rank the leaf itself).

    Returns:
      A tree with the structure of ``params``: a bool mask where a rule applies,
      None elsewhere. Use :func:`apply_masks` to zero the pruned entries.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> params = {"conv": {"kernel": jnp.arange(1.0, 9.0).reshape(2, 2, 2), "bias": jnp.ones(2)},
    ...           "fc": {"kernel": jnp.array([[1.0, -3.0], [0.5, 2.0]]), "bias": jnp.ones(2)}}
    >>> masks = jp.prune_tree(jax.random.key(0), params, {
    ...     "conv.kernel": jp.LnStructured(1, n=2, dim=-1), "fc.kernel": jp.L1Unstructured(0.5)})
    >>> masks["fc"]
    {'bias': None, 'kernel': Array([[False,  True],
           [False,  True]], dtype=bool)}
    >>> jp.pruned_indices(masks["conv"]["kernel"], -1)
    array([0])
    """
    leaves, treedef = jax.tree.flatten(params)
    assignments = resolve_rules(params, rules)
    dms = _align(params, default_masks, "default_masks")
    scores = _align(params, importance_scores, "importance_scores")
    masks: list[Array | None] = [None] * len(leaves)
    groups: dict[tuple[str | None, GlobalUnstructured], list[Assignment]] = {}
    for a in assignments:
        if isinstance(a.value, GlobalUnstructured):
            groups.setdefault(global_group(a.value, a.pattern), []).append(a)
            continue
        target = leaves[a.index] if scores[a.index] is None else scores[a.index]
        leaf_rng = None if key is None else leaf_key(_methods.check_key(key), _key_path(a))
        masks[a.index] = a.value.compute_mask(leaf_rng, target, dms[a.index])
    for (_, rule), members in groups.items():
        out = global_masks(
            [a.path for a in members],
            [leaves[a.index] for a in members],
            check_amount(rule.amount),
            method=rule.method,
            key=key,
            importance_scores=[scores[a.index] for a in members],
            default_masks=[dms[a.index] for a in members],
        )
        for a, mask in zip(members, out):
            masks[a.index] = mask
    return jax.tree.unflatten(treedef, masks)


# --------------------------------------------------------------------------
# Sparsity report
# --------------------------------------------------------------------------


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
class SparsityReport:
    """Per-leaf and total sparsity; ``str(report)`` is a table."""

    leaves: tuple[LeafSparsity, ...]

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
        return "\n".join(lines)


def sparsity_report(tree: PyTree, masks: PyTree | None = None) -> SparsityReport:
    """How much of each leaf is pruned (host-side).

    With ``masks`` (a mask tree, None = leaf not pruned), counts the False
    entries of each mask over every leaf of ``tree``. Without, counts the
    False entries of bool leaves and the zeros of numeric leaves of ``tree``.

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
    """
    named = _leaves_with_paths(tree)
    mask_leaves: Sequence[Any] = _align(tree, masks, "masks") if masks is not None else [None] * len(named)
    rows = []
    for (path, leaf), mask in zip(named, mask_leaves):
        arr = np.asarray(leaf)
        if masks is not None:
            pruned = 0 if mask is None else int(np.size(mask) - np.count_nonzero(np.asarray(mask)))
        else:
            pruned = int(arr.size - np.count_nonzero(arr))
        rows.append(LeafSparsity(path, tuple(arr.shape), int(arr.size), pruned))
    return SparsityReport(tuple(rows))
