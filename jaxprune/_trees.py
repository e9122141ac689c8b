"""Pytrees of parameters and masks: global pruning, applying masks, reading them.

A mask tree has the structure of its parameter tree; ``None`` marks a leaf that
is not pruned. Leaf paths are written ``"encoder.layers.0.kernel"`` (dict keys,
sequence indices and attribute names joined by dots); each leaf's random key is
derived from the caller's key and that path, so adding or removing a leaf never
changes another leaf's draws.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from . import _host, _methods
from ._amounts import CheckedAmount, Count, as_count, check_amount, count_add, count_int, prune_count
from ._errors import PruningShapeError
from ._selection import (
    Ranking,
    key_dtype,
    like,
    magnitude_dtype,
    placed,
    radix_passes,
    select_lowest,
    select_lowest_by_leaf,
)
from ._typing import Amount, Array, ArrayLike, PRNGKey, PyTree

_A = TypeVar("_A", Array, np.ndarray)


def path_str(path: Sequence[Any]) -> str:
    """A key path as a dotted string: ``('a', 0, 'kernel')`` -> ``"a.0.kernel"``.

    A final ``.value`` attribute (the array inside a Flax NNX ``Variable``) is
    left out, so an NNX state and the equivalent dict give the same paths.

    >>> import jax
    >>> [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path({"a": [1, 2]})]
    ['a.0', 'a.1']
    """
    parts = []
    path = list(path)
    if path and isinstance(path[-1], tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    for entry in path:
        if isinstance(entry, tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return ".".join(parts)


def path_hash(path: str) -> int:
    """The 32-bit hash of a leaf path that :func:`leaf_key` folds into the key (stable across runs)."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=4).digest(), "little")


def leaf_key(key: PRNGKey, path: str) -> PRNGKey:
    """The key for the leaf at ``path``: ``key`` folded with a stable hash of the path.

    >>> import jax
    >>> k = jax.random.key(0)
    >>> bool((jax.random.key_data(leaf_key(k, "a.kernel")) == jax.random.key_data(leaf_key(k, "a.kernel"))).all())
    True
    """
    if not isinstance(path, str):
        raise TypeError(f"path must be a str (a leaf path such as 'a.kernel'), got {type(path).__name__}: {path!r}")
    key = _methods.check_key(key)
    data = path_hash(path)
    words = _host.threefry_words(key)
    if words is None:
        return jax.random.fold_in(key, data)
    # The same key, derived in NumPy: jax's fold_in costs a dispatch (milliseconds) per leaf.
    new = np.array(_host.fold_in(words, data), np.uint32)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(new, impl=jax.random.key_impl(key))  # type: ignore[arg-type]
    return jax.device_put(new)


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    """``(path, leaf)`` for every leaf of ``tree``, paths as :func:`path_str` writes them."""
    return [(path_str(p), leaf) for p, leaf in tree_util.tree_leaves_with_path(tree)]


def leaves_like(tree: PyTree, other: PyTree | None, name: str) -> list[Any]:
    """Leaves of ``other`` matched to ``tree``'s array leaves (None where ``other`` has None).

    ``other`` must have exactly ``tree``'s structure, a None standing for a leaf.
    """
    if other is None:
        return [None] * len(tree_util.tree_leaves(tree))
    tree_leaves = jax.tree.leaves(tree, is_leaf=_is_none)
    return [o for t, o in zip(tree_leaves, leaves_like_all(tree, other, name, "the tree")) if t is not None]


def leaves_like_all(tree: PyTree, other: PyTree, name: str, tree_name: str) -> list[Any]:
    """``other``'s leaves matched to every leaf of ``tree``, None leaves included."""
    tree_def = jax.tree.structure(tree, is_leaf=_is_none)
    other_leaves, other_def = jax.tree.flatten(other, is_leaf=_is_none)
    if tree_def != other_def:
        # NNX variables of other kinds (an optimizer's state wraps its masks):
        # pair up by value.
        unwrapped_def = jax.tree.structure(unwrap_variables(tree), is_leaf=_is_none)
        other_leaves, other_def = jax.tree.flatten(unwrap_variables(other), is_leaf=_is_none)
    if tree_def != other_def and unwrapped_def != other_def:
        raise ValueError(
            f"{name} must have the structure of {tree_name} (None where a leaf has none / is not pruned): "
            f"{tree_name} {tree_def}, {name} {other_def}"
        )
    return other_leaves


def _is_none(x: object) -> bool:
    return x is None


def unwrap_variables(tree: PyTree) -> PyTree:
    """``tree`` with every Flax NNX ``Variable`` (``Param``, the wrappers of an
    ``nnx.Optimizer``'s state) replaced by its value; flax is never imported here."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or tree is None:
        return tree
    variable = nnx.Variable

    def value(x: Any) -> Any:
        if not isinstance(x, variable):
            return x
        return x.get_value() if hasattr(x, "get_value") else x.value  # get_value: flax >= 0.12

    return jax.tree.map(value, tree, is_leaf=lambda x: x is None or isinstance(x, variable))


def global_unstructured(
    tree: PyTree,
    amount: Amount,
    *,
    method: str = "l1",
    key: PRNGKey | None = None,
    importance_scores: PyTree | None = None,
    default_masks: PyTree | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
) -> PyTree:
    """Prune ``amount`` entries across every leaf of ``tree`` at once (torch's
    ``global_unstructured``), returning a mask tree of the same structure.

    Args:
      tree: a pytree of arrays (every leaf is pruned).
      amount: int count or float fraction of all (still unpruned) entries.
      method: ``"l1"`` (lowest ``|score|`` across the tree) or ``"random"``.
      key: required for ``"random"``; each leaf draws from a key derived from
        its path (see :func:`leaf_key`).
      importance_scores: a tree like ``tree`` (None for a leaf = its own
        values) to rank instead of the parameters (``"l1"`` only).
      default_masks: keep-masks of earlier pruning (None for a leaf = all
        kept); the amount applies to the entries they keep.
      progress: for long calls outside ``jit``: a callable ``(done, total)``
        called after each pass over the tree (two selection passes for 32-bit
        scores, four for 64-bit, then the masks), or True to log those lines
        to the ``"jaxprune"`` logger at INFO. Reuse one callable: it is part of
        the compiled function's identity.

    Returns:
      A tree of bool masks. Exactly ``k`` entries are pruned in total; ties go
      to the lower position in the leaves' order (``jax.tree.leaves``).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> params = {"m": jnp.array([[1.0, 2.0, 3.0, 4.0], [-4.0, -3.0, -2.0, -1.0]]),
    ...           "n": jnp.array([[0.0, 0.1, -2.0]])}
    >>> masks = jp.global_unstructured(params, amount=4)
    >>> masks["n"]
    Array([[False, False,  True]], dtype=bool)
    >>> big = {"w": jnp.arange(8192.0)}
    >>> _ = jp.global_unstructured(big, 0.5, progress=lambda done, total: print(f"pass {done}/{total}"))
    pass 1/3
    pass 2/3
    pass 3/3
    """
    if method not in ("l1", "random"):
        raise ValueError(f"method must be 'l1' or 'random', got {method!r}")
    if progress is True:
        progress = _log_progress
    elif progress is False:
        progress = None
    elif progress is not None and not callable(progress):
        raise TypeError(f"progress must be None, a bool or a callable (done, total), got {progress!r}")
    checked = check_amount(amount)
    named = named_leaves(tree)
    if not named:
        raise ValueError("global_unstructured needs at least one array in the tree, got an empty tree")
    paths = [path for path, _ in named]
    out = global_masks(
        paths,
        [leaf for _, leaf in named],
        checked,
        method=method,
        key=key,
        importance_scores=leaves_like(tree, importance_scores, "importance_scores"),
        default_masks=leaves_like(tree, default_masks, "default_masks"),
        progress=progress,
    )
    return jax.tree.unflatten(jax.tree.structure(tree), out)


_logger = logging.getLogger("jaxprune")


def _log_progress(done: int, total: int) -> None:
    _logger.info("global_unstructured: pass %d/%d done", done, total)


def _pass_done(progress: Callable[[int, int], None], total: int, number: int) -> None:
    progress(number, total)


def global_masks(
    paths: Sequence[str],
    leaves: Sequence[ArrayLike],
    amount: CheckedAmount,
    *,
    method: str,
    key: PRNGKey | None,
    importance_scores: Sequence[ArrayLike | None],
    default_masks: Sequence[ArrayLike | None],
    progress: Callable[[int, int], None] | None = None,
) -> list[Array]:
    """Global pruning over explicit lists (the leaves in ranking order, with their paths)."""
    if progress is None and _methods.on_host(amount.value, *leaves, *importance_scores, *default_masks):
        host = _global_on_host(paths, leaves, amount, method=method, key=key, importance_scores=importance_scores,
                               default_masks=default_masks)
        if host is not None:
            return host
    leaves = [_methods.as_tensor(leaf, f"leaf {path!r}") for path, leaf in zip(paths, leaves)]
    masks = [
        None if m is None else _methods.as_mask(m, leaf.shape, f"default_masks[{path!r}]", leaf)
        for path, leaf, m in zip(paths, leaves, default_masks)
    ]
    if method == "random":
        if any(s is not None for s in importance_scores):
            raise ValueError("importance_scores only apply to method='l1'")
        key = _methods.check_key(key)  # pyright: ignore[reportArgumentType] - None raises its TypeError here
        keys = tuple(leaf_key(key, path) for path in paths)
        scores = None
    else:
        scores = _leaf_scores(paths, leaves, importance_scores, _methods.as_tensor)
        keys = None

    k = _methods.as_k(prune_count(amount, _total_units(leaves, masks)))
    if scores is None:  # random: each leaf's source is its key, its values uint32 draws
        ranking, sources = Ranking(draws=True), list(keys or ())
    else:
        ranking = Ranking(absolute=True, dtype=magnitude_dtype([s.dtype for s in scores]))
        sources = scores
    total = _passes(leaves, ranking, sources[0].dtype if scores is not None else np.uint32) + 1
    if any(_methods.is_traced(x) for x in [*leaves, *(m for m in masks if m is not None), *sources, *k]):
        # Inside the caller's jit: one traced selection.
        return _global_keep(sources, leaves, masks, k, ranking=ranking, progress=progress, total=total)
    # Concrete arrays: leaf by leaf, one small compiled kernel per leaf shape.
    on_pass = None if progress is None else functools.partial(_pass_done, progress, total)
    out = select_lowest_by_leaf(sources, leaves, masks, count_int(k), ranking=ranking, on_pass=on_pass)
    if progress is not None:
        out = jax.block_until_ready(out)
        progress(total, total)
    return out


def _global_on_host(
    paths: Sequence[str],
    leaves: Sequence[ArrayLike],
    amount: CheckedAmount,
    *,
    method: str,
    key: PRNGKey | None,
    importance_scores: Sequence[ArrayLike | None],
    default_masks: Sequence[ArrayLike | None],
) -> list[Array] | None:
    """:func:`global_masks` in NumPy (same checks, same masks); None when the
    key's draws are not ones NumPy reproduces."""
    host = [_methods.host_tensor(leaf, f"leaf {path!r}") for path, leaf in zip(paths, leaves)]
    masks = [
        None if m is None else _methods.host_mask(m, h.shape, f"default_masks[{path!r}]", leaf)
        for path, h, leaf, m in zip(paths, host, leaves, default_masks)
    ]
    if method == "random":
        if any(s is not None for s in importance_scores):
            raise ValueError("importance_scores only apply to method='l1'")
        key = _methods.check_key(key)  # pyright: ignore[reportArgumentType] - None raises its TypeError here
        words = [_host.threefry_key(leaf_key(key, path)) for path in paths]
        if any(w is None for w in words):
            return None
        keys = [_host.random_bits(w, h.size).reshape(h.shape) for w, h in zip(words, host)]  # type: ignore[arg-type]
    else:
        scores = _leaf_scores(paths, host, importance_scores, _methods.host_tensor)
        dtype = magnitude_dtype([s.dtype for s in scores])
        keys = [_host.magnitude_keys(s, dtype) for s in scores]
    units = sum(h.size if m is None else int(np.count_nonzero(m)) for h, m in zip(host, masks))
    k = prune_count(amount, units)
    selected = _host.select_lowest(keys, masks, int(k))  # type: ignore[arg-type] - concrete: an int
    return [_methods.host_result(~sel if m is None else m & ~sel, leaf)
            for sel, m, leaf in zip(selected, masks, leaves)]


def _leaf_scores(paths: Sequence[str], leaves: Sequence[_A], importance_scores: Sequence[ArrayLike | None],
                 convert: Callable[[ArrayLike, str], _A]) -> list[_A]:
    """Each leaf's scores: its importance scores (made arrays by ``convert``,
    checked against the leaf's shape), or the leaf itself."""
    scores = []
    for path, leaf, s in zip(paths, leaves, importance_scores):
        s = leaf if s is None else convert(s, f"importance_scores[{path!r}]")
        if s.shape != leaf.shape:
            raise PruningShapeError(
                f"importance_scores[{path!r}] should have the shape of the leaf, got {s.shape} vs {leaf.shape}"
            )
        scores.append(s)
    return scores


def _total_units(leaves: Sequence[Array], masks: Sequence[Array | None]) -> int | Count:
    """The candidates of a global group: a Python int, or a two-word Count when
    a mask is traced (exact beyond 2**31 either way)."""
    counts = [_methods.count_units(mask, leaf.size) for leaf, mask in zip(leaves, masks)]
    concrete = [n for n in counts if isinstance(n, int)]
    if len(concrete) == len(counts):
        return sum(concrete)
    return functools.reduce(count_add, [as_count(n) for n in counts])


def _passes(leaves: Sequence[Array], ranking: Ranking, dtype: Any) -> int:
    keys = np.dtype(np.uint32) if ranking.draws else key_dtype(np.dtype(ranking.dtype or dtype))
    return radix_passes([leaf.size for leaf in leaves], keys)


@functools.partial(jax.jit, static_argnames=("ranking", "progress", "total"))
def _global_keep(
    sources: list[Array],
    leaves: list[Array],
    masks: list[Array | None],
    k: Array,
    *,
    ranking: Ranking,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> list[Array]:
    on_pass = None if progress is None else functools.partial(_pass_done, progress, total)
    ranked = [ranking.values(source, leaf) for source, leaf in zip(sources, leaves)]
    selected = select_lowest(ranked, masks, k, to_keys=ranking.keys, on_pass=on_pass)
    return [~sel if mask is None else ~sel & mask for sel, mask in zip(selected, masks)]


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zero the pruned entries: ``where(mask, param, 0)`` leaf by leaf.

    ``masks`` has the structure of ``params`` with None for leaves left alone
    (a single array and its mask work too). Pruned entries become exactly 0,
    even where the parameter is NaN or inf.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.apply_masks({"w": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])},
    ...                {"w": jnp.array([False, True]), "b": None})
    {'b': Array([3.], dtype=float32), 'w': Array([ 0., -2.], dtype=float32)}
    """

    if isinstance(params, (jax.Array, np.ndarray)):
        return _apply_one(masks, params, "the mask")
    named, treedef = tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    aligned = leaves_like_all(params, masks, "masks", "params")
    return jax.tree.unflatten(
        treedef, [_apply_one(m, p, f"masks[{path_str(path)!r}]") for m, (path, p) in zip(aligned, named)]
    )


def _apply_one(mask: ArrayLike | None, param: ArrayLike | None, name: str) -> ArrayLike | None:
    if mask is None or param is None:
        return param
    param_arr = jnp.asarray(param)
    mask_arr = jnp.asarray(mask)
    if mask_arr.shape != param_arr.shape:
        raise PruningShapeError(f"a mask of shape {mask_arr.shape} does not fit a parameter of shape {param_arr.shape}")
    _methods.check_placement(mask_arr, param_arr, name)
    return placed(_masked(mask_arr, param_arr), param_arr)


@jax.jit
def _masked(mask: Array, param: Array) -> Array:
    keep = mask if mask.dtype == jnp.bool_ else mask != 0
    return like(jnp.where(keep, param, jnp.zeros((), param.dtype)), param)


def pruned_indices(mask: ArrayLike, dim: int) -> np.ndarray:
    """Indices of the slices along ``dim`` that ``mask`` prunes entirely (host-side).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.pruned_indices(jnp.array([[True, False, True], [True, False, False]]), dim=1)
    array([1])
    """
    arr = np.asarray(mask)
    if arr.ndim == 0:
        raise ValueError("pruned_indices needs a mask with at least 1 dim, got a 0-d mask")
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}: {dim!r}")
    if not -arr.ndim <= dim < arr.ndim:
        raise IndexError(f"Invalid index {dim} for a mask of shape {arr.shape}")
    keep = arr if arr.dtype == np.bool_ else arr != 0
    dim = int(dim) % arr.ndim
    others = tuple(d for d in range(arr.ndim) if d != dim)
    alive = np.any(keep, axis=others) if others else keep
    return np.flatnonzero(~alive)
