"""Channel groups: which channels to keep, their masks, and models made smaller.

A :class:`~jaxprune.ChannelGroup` (see ``_group_types.py``) names the
positions that each of its channels owns along axes of several leaves.
:func:`group_keep` scores every channel over all its positions and keeps the
best; :func:`group_masks` zeroes the others (the model keeps its size);
:func:`shrink` and :func:`shrink_model` delete them (the arrays, and the sizes
NNX modules hold, get smaller: less memory and less compute).

Every function checks first that the groups were read from the tree it is
given (``group.signature``): a group of another model, or of this model
before it changed, is refused before anything is computed or modified.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._amounts import CheckedAmount, Count, check_amount, count_int32, is_traced, prune_count
from ._errors import KeyRequiredError
from ._group_types import ChannelGroup, Member, signature_of
from ._methods import _keep_lowest_entries, as_k, check_key
from ._trees import leaf_key, path_str
from ._typing import Amount, Array, ArrayLike, PRNGKey, PyTree

_METHODS = ("l1", "l2", "random")

# --------------------------------------------------------------------------
# Checks shared by every function
# --------------------------------------------------------------------------


def _check_groups(groups: object) -> tuple[ChannelGroup, ...]:
    if isinstance(groups, ChannelGroup):
        raise TypeError("groups must be a sequence of ChannelGroup (what jp.channel_groups returns), "
                        "got a single ChannelGroup: pass (group,)")
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a sequence of ChannelGroup, got {type(groups).__name__}: {groups!r}")
    groups = tuple(groups)
    for i, group in enumerate(groups):
        if not isinstance(group, ChannelGroup):
            raise TypeError(f"groups[{i}] must be a ChannelGroup, got {type(group).__name__}: {group!r}")
    return groups


def _tree_of(params: PyTree) -> PyTree:
    """An NNX module's state (the tree its groups were read from); any other tree as it is."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(params, nnx.Module):
        return nnx.state(params)
    return params


def _leaves_by_path(groups: tuple[ChannelGroup, ...], tree: PyTree, what: str) -> dict[str, Any]:
    """The tree's leaves by path, after checking that every group was read from this tree."""
    signature = signature_of(tree) if groups else ""
    for i, group in enumerate(groups):
        if group.signature != signature:
            raise ValueError(
                f"groups[{i}] ({group!r}) was read from another tree than {what} (signature "
                f"{group.signature!r}, {what} has {signature!r}: other paths, shapes or dtypes; a model "
                "changed since jp.channel_groups ran, or already shrunk): call jp.channel_groups on it again"
            )
    leaves = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    for i, group in enumerate(groups):
        for member in group.members:
            _check_member(i, group, member, leaves)
    return leaves


def _check_member(i: int, group: ChannelGroup, member: Member, leaves: Mapping[str, Any]) -> None:
    if member.path not in leaves:
        raise ValueError(f"groups[{i}] has a member at {member.path!r}, which is not a leaf of the tree "
                         f"(its leaves: {', '.join(list(leaves)[:8])}{', ...' if len(leaves) > 8 else ''})")
    shape = np.shape(leaves[member.path])
    if not 0 <= member.axis < len(shape) or shape[member.axis] != member.length:
        raise ValueError(f"groups[{i}] has a member {member!r} with axis {member.axis} of length "
                         f"{member.length}, but the leaf has shape {shape}")
    positions = member.positions
    if positions.shape[0] != group.size:
        raise ValueError(f"groups[{i}] has {group.size} channels but its member {member!r} has positions "
                         f"for {positions.shape[0]}")
    if positions.size and (positions.min() < 0 or positions.max() >= member.length):
        raise ValueError(f"groups[{i}] has a member {member!r} with positions outside [0, {member.length})")


def _check_keep(groups: tuple[ChannelGroup, ...], keep: object, allow_empty: bool,
                concrete: bool) -> list[Array | np.ndarray]:
    """``keep`` as one bool vector per group; NumPy when ``concrete`` (shrinking needs the values)."""
    if isinstance(keep, (jax.Array, np.ndarray)) or not isinstance(keep, Sequence) or isinstance(keep, str):
        raise TypeError(f"keep must be a sequence of bool vectors, one per group (what jp.group_keep "
                        f"returns), got {type(keep).__name__}: {keep!r}")
    if len(keep) != len(groups):
        raise ValueError(f"keep has {len(keep)} vectors for {len(groups)} groups: expected one per group")
    out = []
    for i, (group, vector) in enumerate(zip(groups, keep)):
        if is_traced(vector):
            if concrete:
                raise TypeError(f"keep[{i}] is traced: shrinking changes shapes, so it needs concrete keep "
                                "vectors (call it outside jit)")
            arr = vector
        else:
            arr = np.asarray(vector) if not isinstance(vector, jax.Array) or concrete else vector
        if arr.dtype != np.bool_:
            raise TypeError(f"keep[{i}] must be a bool vector (True = keep), got dtype {arr.dtype}")
        if arr.shape != (group.size,):
            raise ValueError(f"keep[{i}] must have shape ({group.size},) (one entry per channel of "
                             f"{group!r}), got {arr.shape}")
        if not allow_empty and not is_traced(arr) and group.size and not bool(np.any(np.asarray(arr))):
            raise ValueError(f"keep[{i}] keeps no channel of {group!r}: pass allow_empty=True to remove "
                             "every channel of a group")
        out.append(arr)
    return out


# --------------------------------------------------------------------------
# group_keep
# --------------------------------------------------------------------------


def group_keep(
    groups: Sequence[ChannelGroup],
    params: PyTree,
    amount: Amount | Sequence[Amount],
    *,
    method: str = "l2",
    key: PRNGKey | None = None,
    round_to: int = 1,
    allow_empty: bool = False,
) -> tuple[Array, ...]:
    """Which channels of each group to keep: one bool vector (True = keep) per group.

    In each group, exactly ``round(amount * group.size)`` channels are pruned
    (a float amount; an int amount is a count), counted as every jaxprune
    method counts; the channels with the lowest scores go, ties to the lower
    channel index, NaN scores last.

    Args:
      groups: from :func:`jaxprune.channel_groups` (or built by hand).
      params: the tree the groups were read from (an NNX module: its state).
      amount: a fraction in [0, 1] or a count, for every group, or a sequence
        of them, one per group. Under ``jit`` an amount may be traced (then
        out-of-range values are clamped, as elsewhere, and the checks below
        that need its value do not run).
      method: ``"l2"``: a channel scores the sum, over the members, of the
        squares of the entries at its positions (every other axis summed);
        ``"l1"``: the same with absolute values; ``"random"``: uniform draws
        from ``jp.leaf_key(key, group.members[0].path)``. Scores are computed
        in float32 (float64 when x64 is on).
      key: the PRNG key of ``"random"``.
      round_to: the number of channels KEPT is rounded UP to a multiple of
        ``round_to`` (hardware-friendly widths), at most the group's size: a
        group smaller than ``round_to``, or not a multiple of it, may keep all
        its channels; one that the amount empties stays empty.
      allow_empty: allow keeping no channel of a group (otherwise ValueError).

    Raises:
      ValueError: an amount out of range or a count above a group's size, a
        wrong number of amounts, a group read from another tree, a group left
        with no channel (without ``allow_empty``).
      KeyRequiredError: ``method="random"`` without a key.

    >>> import jax.numpy as jnp, numpy as np, jaxprune as jp
    >>> from jaxprune._group_types import ChannelGroup, Member, signature_of
    >>> params = {"w1": jnp.array([[1.0, 5.0, 0.5, 2.0]]), "w2": jnp.array([[1.0], [0.0], [0.5], [3.0]])}
    >>> hidden = ChannelGroup(4, (Member("w1", 1, 4, np.arange(4)[:, None]),
    ...                           Member("w2", 0, 4, np.arange(4)[:, None])), True, (), signature_of(params))
    >>> [k.tolist() for k in jp.group_keep([hidden], params, 0.5)]  # scores 2, 25, 0.5, 13
    [[False, True, False, True]]
    """
    groups = _check_groups(groups)
    tree = _tree_of(params)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, _METHODS))}, got {method!r}")
    if method == "random" and key is None:
        raise KeyRequiredError("method='random' draws channel scores: pass a PRNG key (key=jax.random.key(seed))")
    key = None if key is None else check_key(key)
    round_to = _check_round_to(round_to)
    amounts = _amounts(amount, len(groups))
    leaves = _leaves_by_path(groups, tree, "params")
    counts = [_count(i, g, a, round_to, allow_empty) for i, (g, a) in enumerate(zip(groups, amounts))]
    keep = []
    for group, k in zip(groups, counts):
        scores = _scores(group, leaves, method, key)
        keep.append(_keep_lowest_entries(scores, None, as_k(k)))
    return tuple(keep)


def _check_round_to(round_to: object) -> int:
    if isinstance(round_to, (bool, np.bool_)) or not isinstance(round_to, (int, np.integer)):
        raise TypeError(f"round_to must be an int >= 1, got {type(round_to).__name__}: {round_to!r}")
    if round_to < 1:
        raise ValueError(f"round_to must be an int >= 1, got {round_to}")
    return int(round_to)


def _amounts(amount: Amount | Sequence[Amount], n: int) -> list[CheckedAmount]:
    """One checked amount per group: ``amount`` for every group, or a sequence (a 1-D array) of n."""
    if isinstance(amount, (list, tuple)) or (isinstance(amount, (np.ndarray, jax.Array)) and amount.ndim == 1):
        if len(amount) != n:
            raise ValueError(f"amount has {len(amount)} entries for {n} groups: expected one per group "
                             "(or a single amount for all)")
        return [check_amount(a) for a in amount]
    checked = check_amount(amount)  # type: ignore[arg-type]
    return [checked] * n


def _count(i: int, group: ChannelGroup, amount: CheckedAmount, round_to: int, allow_empty: bool) -> int | Count:
    """The number of the group's channels to prune, after ``round_to`` (an int, or a device Count when traced)."""
    k = prune_count(amount, group.size)
    if isinstance(k, int):
        kept = min(group.size, -(-(group.size - k) // round_to) * round_to)
        if kept == 0 and group.size and not allow_empty:
            raise ValueError(f"amount={amount.value!r} prunes every channel of groups[{i}] ({group!r}): "
                             "pass allow_empty=True to allow it, or a smaller amount")
        return group.size - kept
    if round_to == 1:
        return k
    size = np.int32(group.size)
    kept = size - count_int32(k)  # group sizes are small: int32 is exact here
    kept = jnp.minimum(size, (kept + np.int32(round_to - 1)) // np.int32(round_to) * np.int32(round_to))
    return Count(np.uint32(0), (size - kept).astype(jnp.uint32))


def _score_dtype() -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))  # float64 with x64 on, float32 off


def _scores(group: ChannelGroup, leaves: Mapping[str, Any], method: str, key: PRNGKey | None) -> Array:
    if method == "random":
        assert key is not None  # (checked by group_keep)
        return jax.random.bits(leaf_key(key, group.members[0].path), (group.size,), jnp.uint32)
    dtype = _score_dtype()
    total = jnp.zeros(group.size, dtype)
    for member in group.members:
        sums = _position_sums(jnp.asarray(leaves[member.path]), member.axis, method == "l1", dtype)
        total = total + _channel_sums(sums, member.positions)
    return total


@functools.partial(jax.jit, static_argnames=("axis", "l1", "dtype"))
def _position_sums(x: Array, axis: int, l1: bool, dtype: np.dtype) -> Array:
    """Per position along ``axis``: the sum of ``|x|`` (l1) or ``x**2`` over every other axis, in ``dtype``."""
    x = x.astype(dtype)
    values = jnp.abs(x) if l1 else x * x
    return jnp.sum(values, axis=tuple(d for d in range(x.ndim) if d != axis))


def _channel_sums(sums: Array, positions: np.ndarray) -> Array:
    # The positions fit int32: they index one axis of an array.
    return jnp.sum(sums[positions.astype(np.int32)], axis=1)


# --------------------------------------------------------------------------
# group_masks
# --------------------------------------------------------------------------


def group_masks(
    groups: Sequence[ChannelGroup], params: PyTree, keep: Sequence[ArrayLike], *, allow_empty: bool = False
) -> PyTree:
    """The keep-masks of the channels ``keep`` keeps: the model pruned, at its size.

    Returns a tree of ``params``' structure (an NNX module: of its state): for
    every leaf that a group indexes, a bool array of its shape, False at the
    positions of every channel removed (from any group: the positions of
    several groups on one axis are combined), and ``None`` for every other
    leaf, so ``jp.apply_masks(params, masks)`` is the masked model. ``keep``
    may be traced (masks inside ``jit``, for gradual pruning).

    >>> import jax.numpy as jnp, numpy as np, jaxprune as jp
    >>> from jaxprune._group_types import ChannelGroup, Member, signature_of
    >>> params = {"b": jnp.ones(3), "w": jnp.ones((2, 3))}
    >>> g = ChannelGroup(3, (Member("w", 1, 3, np.arange(3)[:, None]),), True, (), signature_of(params))
    >>> masks = jp.group_masks([g], params, [np.array([True, False, True])])
    >>> masks["b"], masks["w"].tolist()
    (None, [[True, False, True], [True, False, True]])
    """
    groups = _check_groups(groups)
    tree = _tree_of(params)
    leaves = _leaves_by_path(groups, tree, "params")
    vectors = _check_keep(groups, keep, allow_empty, concrete=False)
    axes = _axis_keeps(groups, vectors, jnp)
    masks = {path: _leaf_mask(np.shape(leaves[path]), by_axis) for path, by_axis in axes.items()}
    return jax.tree_util.tree_map_with_path(lambda p, _: masks.get(path_str(p)), tree)


def _axis_keeps(groups: tuple[ChannelGroup, ...], vectors: Sequence[Any], xp: Any) -> dict[str, dict[int, Any]]:
    """For every (path, axis) a group indexes: a bool vector of the axis, False where a removed channel lies.

    ``xp`` is ``np`` (concrete keep vectors) or ``jnp`` (possibly traced).
    """
    out: dict[str, dict[int, Any]] = {}
    for group, vector in zip(groups, vectors):
        for member in group.members:
            by_axis = out.setdefault(member.path, {})
            current = by_axis.get(member.axis, xp.ones(member.length, bool))
            per_channel = member.positions.shape[1]
            if xp is np:
                removed = member.positions[~np.asarray(vector)].ravel()
                current = current.copy()
                current[removed] = False
            else:
                flat = member.positions.ravel().astype(np.int32)
                current = current.at[flat].set(current[flat] & jnp.repeat(vector, per_channel))
            by_axis[member.axis] = current
    return out


def _leaf_mask(shape: tuple[int, ...], by_axis: Mapping[int, Array]) -> Array:
    mask = jnp.ones(shape, bool)
    for axis, vector in by_axis.items():
        view = [1] * len(shape)
        view[axis] = shape[axis]
        mask = mask & jnp.reshape(vector, view)
    return mask


def channel_alive(member: Member, alive: Any, xp: Any = np) -> Any:
    """Per channel of ``member``'s group: whether any entry at its positions along the member's
    axis is alive (``alive``: a bool array of the leaf's shape; ``xp``: ``np``, or ``jnp`` under a trace).

    How the kept channels are read back from masks or weights (``jp.pruning`` masks whole channels).
    """
    by_position = xp.reshape(xp.moveaxis(xp.asarray(alive, bool), member.axis, 0), (member.length, -1))
    per_position = xp.any(by_position, axis=1)
    positions = member.positions if xp is np else member.positions.astype(np.int32)  # an axis length fits int32
    return xp.any(per_position[positions], axis=1)


# --------------------------------------------------------------------------
# shrink
# --------------------------------------------------------------------------


def shrink(params: PyTree, groups: Sequence[ChannelGroup], keep: Sequence[ArrayLike], *,
           allow_empty: bool = False) -> PyTree:
    """``params`` with the removed channels deleted: smaller arrays, the same tree structure.

    In every leaf that a group indexes, the positions of the channels that
    ``keep`` removes are deleted along the member's axis (the positions of
    several groups on one axis are combined); every other leaf is returned
    as it is. dtypes are kept; jax arrays stay jax arrays, NumPy arrays
    NumPy. Dicts, lists, NNX states and other pytrees work alike. A function
    that reads its sizes from the arrays computes, on the shrunk tree, what it
    computes on ``jp.apply_masks(params, jp.group_masks(groups, params, keep))``
    (for exact groups). ``keep`` must be concrete (shapes depend on it).

    >>> import jax.numpy as jnp, numpy as np, jaxprune as jp
    >>> from jaxprune._group_types import ChannelGroup, Member, signature_of
    >>> params = {"w1": jnp.ones((2, 3)), "w2": jnp.ones((3, 4))}
    >>> g = ChannelGroup(3, (Member("w1", 1, 3, np.arange(3)[:, None]),
    ...                      Member("w2", 0, 3, np.arange(3)[:, None])), True, (), signature_of(params))
    >>> small = jp.shrink(params, [g], [np.array([True, False, True])])
    >>> small["w1"].shape, small["w2"].shape
    ((2, 2), (2, 4))
    """
    groups = _check_groups(groups)
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(params, nnx.Module):
        raise TypeError("shrink takes a tree of arrays (an NNX module's nnx.state(model)); "
                        "to shrink an NNX module in place, use jp.shrink_model(model, groups, keep)")
    leaves = _leaves_by_path(groups, params, "params")
    kept = _kept_positions(groups, keep, allow_empty)
    shrunk = {path: _take(leaves[path], by_axis) for path, by_axis in kept.items()}
    return jax.tree_util.tree_map_with_path(lambda p, x: shrunk.get(path_str(p), x), params)


def _kept_positions(
    groups: tuple[ChannelGroup, ...], keep: object, allow_empty: bool
) -> dict[str, dict[int, np.ndarray]]:
    """For every (path, axis) a group indexes: the kept positions, sorted (int64 on the host)."""
    vectors = _check_keep(groups, keep, allow_empty, concrete=True)
    return {path: {axis: np.flatnonzero(v) for axis, v in by_axis.items()}
            for path, by_axis in _axis_keeps(groups, vectors, np).items()}


def _take(x: Any, by_axis: Mapping[int, np.ndarray]) -> Any:
    for axis, kept in sorted(by_axis.items()):
        if kept.size == x.shape[axis]:
            continue  # nothing removed on this axis: no copy
        if isinstance(x, jax.Array):
            x = jnp.take(x, jnp.asarray(kept, np.int32), axis=axis)  # (an axis length fits int32)
        else:
            x = np.take(np.asarray(x), kept, axis=axis)
    return x


# --------------------------------------------------------------------------
# shrink_model (NNX, in place)
# --------------------------------------------------------------------------


def shrink_model(model: Any, groups: Sequence[ChannelGroup], keep: Sequence[ArrayLike], *,
                 allow_empty: bool = False) -> None:
    """Shrink an NNX module in place: its Variables and the sizes its modules hold.

    Every Variable that a group indexes (parameters, batch statistics,
    caches, ...) gets its shrunk value (as :func:`shrink` computes it), and
    the attributes that hold sizes are set from the new shapes, so that
    ``model(x)`` runs with the same Python code and gives the masked model's
    output: ``in_features``/``out_features`` of ``nnx.Linear``,
    ``nnx.LinearGeneral`` (tuples, and ``batch_axis``), ``nnx.Conv`` and
    ``nnx.ConvTranspose`` (with ``kernel_shape``, a fixed ``mask``, and
    ``feature_group_count``: a depthwise conv stays depthwise),
    ``kernel_shape``/``bias_shape`` of ``nnx.Einsum``, ``in_features``/``out_features``
    of ``nnx.LoRA``,
    ``num_features`` of the norms (``group_size`` of ``nnx.GroupNorm``, whose
    ``num_groups`` stays), ``features``/``num_embeddings`` of ``nnx.Embed``, and
    ``num_heads``, ``num_kv_heads``, ``head_dim``, ``qkv_features``,
    ``in_features``, ``in_kv_features``, ``out_features`` of
    ``nnx.MultiHeadAttention``. Modules of other types get their Variables
    shrunk; sizes they store themselves are theirs to update.

    Everything is checked before anything changes: on an error the model is
    untouched.

    >>> import numpy as np, jax.numpy as jnp, jaxprune as jp
    >>> from flax import nnx
    >>> from jaxprune._group_types import ChannelGroup, Member, signature_of
    >>> model = nnx.Sequential(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 1, rngs=nnx.Rngs(1)))
    >>> one = np.arange(4)[:, None]
    >>> g = ChannelGroup(4, (Member("layers.0.bias", 0, 4, one), Member("layers.0.kernel", 1, 4, one),
    ...                      Member("layers.1.kernel", 0, 4, one)), True, (), signature_of(nnx.state(model)))
    >>> jp.shrink_model(model, [g], [np.array([True, False, False, True])])
    >>> model.layers[0].out_features, model.layers[1].in_features, model(jnp.ones((1, 2))).shape
    (2, 2, (1, 1))
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(model, nnx.Module):
        raise TypeError(f"shrink_model takes a Flax NNX module, got {type(model).__name__}; "
                        "for a tree of arrays use jp.shrink(params, groups, keep)")
    groups = _check_groups(groups)
    state = nnx.state(model)
    leaves = _leaves_by_path(groups, state, "nnx.state(model)")
    kept = _kept_positions(groups, keep, allow_empty)
    shrunk = {path: _take(leaves[path], by_axis) for path, by_axis in kept.items()}
    changes = _attribute_changes(nnx, model, shrunk, kept)  # validates: raises before any change
    new_state = jax.tree_util.tree_map_with_path(lambda p, x: shrunk.get(path_str(p), x), state)
    nnx.update(model, new_state)
    for module, name, value in changes:
        setattr(module, name, value)


def _attribute_changes(nnx: Any, model: Any, shrunk: Mapping[str, Any],
                       kept: Mapping[str, Mapping[int, np.ndarray]]) -> list[tuple[Any, str, Any]]:
    """``(module, attribute, new value)`` for every size attribute of a known module type that changes."""
    changes: list[tuple[Any, str, Any]] = []
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module):
            continue
        prefix = "".join(f"{p}." for p in path)
        touched = any(name.startswith(prefix) for name in shrunk)
        if not touched:
            continue

        def shape(name: str, module: Any = module, prefix: str = prefix) -> tuple[int, ...]:
            value = shrunk.get(prefix + name)
            if value is None:  # unchanged: read the Variable, through sub-modules ("query.kernel")
                value = functools.reduce(getattr, name.split("."), module)[...]
            return tuple(np.shape(value))

        where = prefix[:-1] or "the model"
        for handler_type, handler in _handlers(nnx):
            if isinstance(module, handler_type):
                for name, value in handler(module, shape, where, kept.get(prefix + "kernel", {})).items():
                    if hasattr(module, name) and _differs(getattr(module, name), value):  # (flax versions)
                        changes.append((module, name, value))
                break
    return changes


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, (jax.Array, np.ndarray)) or isinstance(new, (jax.Array, np.ndarray)):
        return old is not new
    return bool(old != new) or type(old) is not type(new)


ShapeOf = Callable[[str], tuple[int, ...]]


def _handlers(nnx: Any) -> list[tuple[type | tuple[type, ...], Callable[..., dict[str, Any]]]]:
    # Subclasses first: the first match applies.
    return [
        (nnx.MultiHeadAttention, _attention_sizes),
        (nnx.Linear, _linear_sizes),
        (nnx.LinearGeneral, _linear_general_sizes),
        (nnx.ConvTranspose, _conv_transpose_sizes),
        (nnx.Conv, _conv_sizes),
        (nnx.Embed, _embed_sizes),
        (nnx.Einsum, _einsum_sizes),
        (nnx.LoRA, _lora_sizes),
        (nnx.GroupNorm, _group_norm_sizes),
        ((nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm), _norm_sizes),
    ]


# The handlers read shapes from their last axes: a module made by nnx.vmap (layers
# stacked for nnx.scan) has Variables with leading layer axes, and sizes per layer.


def _linear_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    in_features, out_features = shape("kernel")[-2:]
    return {"in_features": in_features, "out_features": out_features}


def _linear_general_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    n_batch, n_in = len(module.batch_axis), len(module.in_features)
    kernel = shape("kernel")[-(n_batch + n_in + len(module.out_features)):]
    sizes: dict[str, Any] = {"in_features": kernel[n_batch:n_batch + n_in], "out_features": kernel[n_batch + n_in:]}
    if n_batch:
        batch = type(module.batch_axis)(zip(module.batch_axis.keys(), kernel[:n_batch]))
        if dict(batch) != dict(module.batch_axis):
            sizes["batch_axis"] = batch
    return sizes


def _conv_sizes(module: Any, shape: ShapeOf, where: str, kept: Mapping[int, np.ndarray]) -> dict[str, Any]:
    kernel = shape("kernel")[-len(module.kernel_shape):]
    per_group_in, out = kernel[-2], kernel[-1]
    groups = module.feature_group_count
    sizes: dict[str, Any] = {"kernel_shape": kernel, "out_features": out}
    if groups == 1:
        sizes["in_features"] = per_group_in
    else:
        per_group_out = module.out_features // groups
        if out % per_group_out:
            raise ValueError(f"cannot shrink the grouped conv at {where!r} (feature_group_count={groups}, "
                             f"{per_group_out} outputs per group) to {out} outputs: not whole groups")
        new_groups = out // per_group_out
        sizes["feature_group_count"] = new_groups
        sizes["in_features"] = new_groups * per_group_in
    return {**sizes, **_conv_mask(module, shape, kept)}


def _conv_mask(module: Any, shape: ShapeOf, kept: Mapping[int, np.ndarray]) -> dict[str, Any]:
    """A conv's fixed ``mask`` (the kernel's shape) shrunk like the kernel, unless a group did."""
    mask = getattr(module, "mask", None)
    if mask is None or shape("mask") == shape("kernel"):
        return {}
    return {"mask": _take(mask, kept)}


def _conv_transpose_sizes(module: Any, shape: ShapeOf, where: str, kept: Mapping[int, np.ndarray]) -> dict[str, Any]:
    # (*kernel_size, in, out), or (*kernel_size, out, in) with transpose_kernel
    kernel = shape("kernel")[-len(module.kernel_shape):]
    in_features, out_features = (kernel[-1], kernel[-2]) if module.transpose_kernel else (kernel[-2], kernel[-1])
    sizes = {"kernel_shape": kernel, "in_features": in_features, "out_features": out_features}
    return {**sizes, **_conv_mask(module, shape, kept)}


def _embed_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    num_embeddings, features = shape("embedding")[-2:]
    return {"num_embeddings": num_embeddings, "features": features}


def _einsum_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    sizes = {"kernel_shape": shape("kernel")[-len(module.kernel_shape):]}
    if module.bias is not None and module.bias_shape is not None:
        sizes["bias_shape"] = shape("bias")[-len(module.bias_shape):]
    return sizes


def _lora_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    return {"in_features": shape("lora_a")[-2], "out_features": shape("lora_b")[-1]}


def _norm_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    for name in ("mean", "scale", "bias"):
        if getattr(module, name, None) is not None:
            return {"num_features": shape(name)[-1]}
    return {}


def _group_norm_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    # GroupNorm holds no num_features: its num_groups stays, its group_size follows.
    features = _norm_sizes(module, shape, where, kept).get("num_features")
    if features is None:
        return {}
    if features % module.num_groups:
        raise ValueError(f"cannot shrink the GroupNorm at {where!r} to {features} features: "
                         f"not a multiple of its num_groups={module.num_groups}")
    return {"group_size": features // module.num_groups}


def _attention_sizes(module: Any, shape: ShapeOf, where: str, kept: Any) -> dict[str, Any]:
    query = _sub_shape(module, shape, "query")  # (in_features, num_heads, head_dim)
    key = _sub_shape(module, shape, "key")  # (in_kv_features, num_kv_heads, head_dim)
    value = _sub_shape(module, shape, "value")  # (in_kv_features, num_kv_heads, head_dim)
    out = _sub_shape(module, shape, "out")  # (num_heads, head_dim, out_features)
    num_heads, head_dim = query[1], query[2]
    if key[2] != head_dim or value != key or out[:2] != (num_heads, head_dim) or num_heads % key[1]:
        raise ValueError(f"cannot shrink the MultiHeadAttention at {where!r}: query kernel {query}, key kernel "
                         f"{key}, value kernel {value} and out kernel {out} would no longer agree on heads and "
                         "head_dim")
    return {"in_features": query[0], "in_kv_features": key[0], "num_heads": num_heads, "num_kv_heads": key[1],
            "head_dim": head_dim, "qkv_features": num_heads * head_dim, "out_features": out[-1]}


def _sub_shape(module: Any, shape: ShapeOf, name: str) -> tuple[int, ...]:
    return shape(f"{name}.kernel")[-3:]


# --------------------------------------------------------------------------
# Linen: the sizes to rebuild a module with
# --------------------------------------------------------------------------

_COLLECTIONS = ("params", "batch_stats", "cache", "intermediates", "constants")


def shrunk_sizes(groups: Sequence[ChannelGroup], params: PyTree, keep: Sequence[ArrayLike], *,
                 allow_empty: bool = False) -> dict[tuple[str, str], int]:
    """The new sizes to rebuild Flax Linen modules with after :func:`shrink`.

    Linen modules check their parameters' shapes against their attributes,
    so a shrunk tree needs a module built with the new sizes. This returns
    ``{(module path, attribute): new size}`` for every axis the groups
    shrink in ``params`` (the tree they were read from): the module path is
    the member's path without its leaf name (and without a leading
    collection name such as ``params`` or ``batch_stats``); the attribute is
    ``"features"`` for the last axis of a ``kernel`` (``nn.Dense``,
    ``nn.Conv``) and for axis 1 of an ``embedding`` (``nn.Embed``),
    ``"num_embeddings"`` for axis 0 of an embedding. Axes that Linen infers
    from the inputs (axis 0 of a 2-D kernel, biases, scales, batch
    statistics) are left out; any other axis is reported as
    ``"<leaf>.shape[<axis>]"`` (the heads axis of an attention kernel; the
    input axis of a conv kernel, which Linen infers), for the caller to map
    onto the module's own attributes.

    >>> import jax, jax.numpy as jnp, numpy as np, jaxprune as jp
    >>> import flax.linen as nn
    >>> from jaxprune._group_types import ChannelGroup, Member, signature_of
    >>> class MLP(nn.Module):
    ...     hidden: int = 4
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         h = nn.relu(nn.Dense(self.hidden)(x))  # Dense_0
    ...         return nn.Dense(1)(h)  # Dense_1
    >>> variables = MLP().init(jax.random.key(0), jnp.ones((1, 2)))
    >>> one = np.arange(4)[:, None]
    >>> g = ChannelGroup(4, (Member("params.Dense_0.bias", 0, 4, one), Member("params.Dense_0.kernel", 1, 4, one),
    ...                      Member("params.Dense_1.kernel", 0, 4, one)), True, (), signature_of(variables))
    >>> keep = [np.array([True, False, True, True])]
    >>> jp.shrunk_sizes([g], variables, keep)
    {('Dense_0', 'features'): 3}
    >>> small = jp.shrink(variables, [g], keep)
    >>> MLP(hidden=3).apply(small, jnp.ones((1, 2))).shape  # the module rebuilt with the new size
    (1, 1)
    """
    groups = _check_groups(groups)
    leaves = _leaves_by_path(groups, _tree_of(params), "params")
    sizes: dict[tuple[str, str], int] = {}
    for path, by_axis in _kept_positions(groups, keep, allow_empty).items():
        for axis, positions in sorted(by_axis.items()):
            entry = _linen_attribute(path, axis, len(np.shape(leaves[path])))
            if entry is not None:
                sizes[entry] = int(positions.size)
    return sizes


def _linen_attribute(path: str, axis: int, ndim: int) -> tuple[str, str] | None:
    parts = path.split(".")
    if len(parts) > 1 and parts[0] in _COLLECTIONS:
        parts = parts[1:]
    module, leaf = ".".join(parts[:-1]), parts[-1]
    if leaf == "embedding" and ndim == 2:
        return (module, "num_embeddings" if axis == 0 else "features")
    if leaf == "kernel" and axis == ndim - 1:
        return (module, "features")
    if (leaf == "kernel" and ndim == 2) or (leaf in ("bias", "scale", "mean", "var") and ndim == 1):
        return None
    return (module, f"{leaf}.shape[{axis}]")
