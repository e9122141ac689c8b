"""N:M sparsity over a whole model: each weight's N:M axis read from the jaxpr, and the
channel permutation that lets N:M keep more magnitude without changing the function.

Hardware N:M (2:4) groups run along a matmul's contracted dimension, whatever the
framework's layout. ``n_m_axes`` finds, for every parameter the model uses as the
weight of a ``dot_general`` or ``conv_general_dilated``, the parameter axis that is
contracted with the input's innermost contracted axis; ``n_m_rules`` turns them into
rules for ``prune_tree`` / ``pruning`` / ``one_shot``.

``permute_for_n_m`` is the channel permutation of Pool & Yu (NeurIPS 2021, NVIDIA's
ASP): the input channels of an N:M-pruned weight can be reordered so that large
weights fall into different groups of m, provided every parameter that indexes those
channels (the producing layer's output axis and bias, a norm's scale, sibling
consumers) is reordered the same way. Those parameters are exactly a channel group
(``channel_groups``), so the permuted model computes the same function, up to the
order of floating-point sums. The search itself (``n_m_permutation``) runs on the
stacked magnitudes of the group's consumers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from ._group_types import ChannelGroup, Member
from ._groups import channel_groups, permutation_safe, split_model
from ._one_shot import matmul_uses
from ._one_shot_types import reporter
from ._patterns import NMSparse, check_n_m
from ._permute_search import check_max_rounds, n_m_kept, n_m_permutation
from ._plan import match_patterns
from ._trees import path_str

_logger = logging.getLogger("jaxprune")


def _model(fn: Any, args: tuple[Any, ...], what: str, n_before: int
           ) -> tuple[Callable[..., Any], Any, tuple[Any, ...], tuple[Any, ...], Any]:
    """``(call, params, leading, model_args, module)`` for ``fn(params, *leading, *model_args)``
    or ``nnx_module(*leading, *model_args)``, with ``n_before`` leading arguments (n, m)."""
    call, params, rest = split_model(fn, args, what)
    module = None if call is fn else fn  # split_model wraps a module's call
    if len(rest) < n_before:
        raise TypeError(f"{what}: expected n, m after the {'params' if module is None else 'module'}")
    return call, params, tuple(rest[:n_before]), tuple(rest[n_before:]), module


def _axes(call: Callable[..., Any], params: Any, model_args: tuple[Any, ...]) -> dict[str, tuple[int, bool]]:
    """{path: (N:M axis, whether only matmuls use the weight)} for every matmul weight."""
    axes = {}
    for path, (found, other) in matmul_uses(lambda p, a: call(p, *a), params, model_args).items():
        ks = sorted({u.k_axis for u in found})
        if len(ks) > 1:
            raise ValueError(f"{path!r} is the weight of {len(found)} matmuls that contract different axes "
                             f"({ks}): N:M needs one input axis per weight")
        axes[path] = (ks[0], not other)
    return axes


def n_m_axes(fn: Any, *args: Any) -> dict[str, int]:
    """For every parameter the model uses as a matmul or convolution weight: the axis N:M runs along.

    ``n_m_axes(fn, params, *args)`` traces ``fn(params, *args)``; ``n_m_axes(module,
    *args)`` an NNX module's call (paths those of ``nnx.state(module)``). Nothing
    runs: arguments may be ``jax.ShapeDtypeStruct``. The axis is the parameter
    axis contracted with the input's innermost contracted axis (for a matmul: a
    ``Dense`` kernel ``(in, out)`` gives 0, a torch-layout ``x @ w.T`` 1, a
    ``LinearGeneral``/einsum over ``(heads, head_dim)`` the ``head_dim`` axis;
    for a convolution the kernel's input-channel axis, from its dimension
    numbers). Parameters used otherwise (biases, norms, embedding lookups) are
    not in the result; a weight two matmuls contract along different axes is an error.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> def net(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"].T
    >>> params = {"w1": jnp.ones((8, 16)), "w2": jnp.ones((4, 16))}
    >>> jp.n_m_axes(net, params, jax.ShapeDtypeStruct((2, 8), jnp.float32))
    {'w1': 0, 'w2': 1}
    """
    call, params, _, model_args, _ = _model(fn, args, "n_m_axes", 0)
    return {path: axis for path, (axis, _) in _axes(call, params, model_args).items()}


def n_m_rules(fn: Any, *args: Any) -> dict[str, NMSparse]:
    """``{path: jp.NMSparse(n, m, axis=...)}`` for every matmul weight whose N:M axis divides by m.

    ``n_m_rules(fn, params, n, m, *args)`` or ``n_m_rules(module, n, m, *args)``:
    the axes of :func:`n_m_axes`, as rules ``prune_tree``, ``pruning`` and
    ``one_shot`` accept. Left out: a weight whose axis length is not a multiple
    of ``m`` (a first convolution over 3 colour channels), a weight something
    else uses too (a tied embedding, whose lookups a mask would prune as well:
    name it in a rule yourself if you mean it), and every parameter that is no
    matmul weight.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> def net(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 16)), "w2": jnp.ones((16, 4))}
    >>> jp.n_m_rules(net, params, 2, 4, jnp.ones((2, 3)))
    {'w2': NMSparse(n=2, m=4, axis=0, transposable=False, amount=0)}
    """
    call, params, (n, m), model_args, _ = _model(fn, args, "n_m_rules", 2)
    n, m = check_n_m(n, m)
    shapes = {path_str(p): np.shape(x) for p, x in tree_util.tree_leaves_with_path(params)}
    return {path: NMSparse(n, m, axis=axis) for path, axis in _ruled(_axes(call, params, model_args), shapes, m)}


def _ruled(axes: dict[str, tuple[int, bool]], shapes: dict[str, tuple[int, ...]], m: int) -> list[tuple[str, int]]:
    """The weights ``n_m_rules`` gives rules to, with their axes: used by matmuls only, the axis a multiple of m."""
    return [(path, axis) for path, (axis, alone) in axes.items() if alone and shapes[path][axis] % m == 0]


# --------------------------------------------------------------------------
# permute_for_n_m
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class GroupPermutation:
    """The permutation chosen for one channel group.

    Attributes:
      group: the channel group (every member was permuted alike).
      permutation: int64 array: new channel ``c`` is old channel ``permutation[c]``.
      consumers: the N:M-pruned weights whose input axis the group indexes.
      kept_before: the magnitude N:M keeps of the consumers' weights unpermuted
        (the sum of the n largest |w| of every group of m along their N:M axes).
      kept_after: the same, permuted (never less than ``kept_before``).
    """

    group: ChannelGroup
    permutation: np.ndarray
    consumers: tuple[str, ...]
    kept_before: float
    kept_after: float

    @property
    def changed(self) -> bool:
        """Whether the permutation is not the identity."""
        return bool(np.any(self.permutation != np.arange(self.permutation.size)))

    def __repr__(self) -> str:
        return (f"GroupPermutation(size={self.group.size}, consumers={list(self.consumers)}, "
                f"kept {self.kept_before:.6g} -> {self.kept_after:.6g})")


class PermuteResult(tuple):
    """``(new_params, permutations)``, with :attr:`skipped`: groups whose consumers could not be
    permuted, each as ``(members' paths, reason)``.

    >>> r = PermuteResult({"w": 1}, (), (("w", "why"),))
    >>> new_params, perms = r
    >>> r.skipped
    (('w', 'why'),)
    """

    skipped: tuple[tuple[str, str], ...]

    def __new__(cls, params: Any, permutations: Iterable[GroupPermutation],
                skipped: Iterable[tuple[str, str]] = ()) -> PermuteResult:
        self = super().__new__(cls, (params, tuple(permutations)))
        self.skipped = tuple(skipped)
        return self

    @property
    def params(self) -> Any:
        """The permuted parameters (the first element)."""
        return self[0]

    @property
    def permutations(self) -> tuple[GroupPermutation, ...]:
        """One entry per channel group searched (the second element)."""
        return self[1]


def _log_permutation(p: GroupPermutation) -> None:
    _logger.info("permute_for_n_m: %d channels, consumers %s: kept %.6g -> %.6g",
                 p.group.size, ", ".join(p.consumers), p.kept_before, p.kept_after)


def _slots(member: Member, m: int) -> list[int] | None:
    """The start of each of the member's slots when every slot's channels fill whole groups of m
    in channel order (``positions[:, j] == start_j + arange(size)``, ``start_j % m == 0``)."""
    size, per_channel = member.positions.shape
    if size % m:
        return None
    starts = []
    for j in range(per_channel):
        column = member.positions[:, j]
        start = int(column[0])
        if start % m or not np.array_equal(column, start + np.arange(size)):
            return None
        starts.append(start)
    return starts


def _scores(leaf: Any, member: Member, starts: list[int]) -> np.ndarray:
    """|leaf| as (rows, group.size): the N:M axis last, each slot's columns stacked as more rows."""
    x = np.abs(np.asarray(jnp.asarray(leaf).astype(jnp.float32)))
    x = np.moveaxis(x, member.axis, -1).reshape(-1, member.length)
    size = member.positions.shape[0]
    return np.concatenate([x[:, s:s + size] for s in starts], axis=0)


def _check_weights(weights: Any, paths: list[str]) -> set[str] | None:
    if weights is None:
        return None
    if isinstance(weights, str):
        weights = [weights]
    patterns = list(weights)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"weights must be path patterns (str), got {weights!r}")
    return {paths[i] for i, _, _ in match_patterns(paths, dict.fromkeys(patterns, True))}


def permute_for_n_m(fn: Any, *args: Any, weights: str | Iterable[str] | None = None,
                    max_rounds: int | None = None,
                    progress: bool | Callable[[GroupPermutation], None] | None = None) -> PermuteResult:
    """Permute channels so that N:M pruning keeps more magnitude; the model's function is unchanged.

    ``permute_for_n_m(fn, params, n, m, *args)`` for ``fn(params, *args)``, or
    ``permute_for_n_m(module, n, m, *args)`` for an NNX module (permuted in place,
    all at once after the search succeeded). Nothing runs the model: arguments
    may be ``jax.ShapeDtypeStruct``.

    The weights to be N:M-pruned (``weights``: path patterns as in
    :func:`prune_tree`; default every weight :func:`n_m_rules` gives) are found
    with their N:M axes (:func:`n_m_axes`). For each channel group
    (:func:`channel_groups`) that indexes such an axis, one permutation of its
    channels is searched (:func:`n_m_permutation`) on the magnitudes of all
    its consumers stacked, and applied to every member of the group: the
    consumers' input axes, the producers' output axes and biases, norms,
    siblings. Groups that are inexact only because of permutation-invariant
    computations (a norm's statistics over the channels, attention's
    ``1/sqrt(d)``) are permuted too. A group is skipped, with its reason in
    ``.skipped``, when it reaches the model's inputs or outputs, when an
    operation depends on the channels' order, or when its channels do not fill
    whole groups of m along a consumer's axis (a flatten that interleaves
    them, a width not divisible by m).

    Prune afterwards with ``n_m_rules`` (or ``jp.NMSparse`` on the same axes).

    Args:
      fn: the model ``fn(params, *args)``, or an ``nnx.Module``.
      *args: ``params, n, m, *model_args`` (for a module: ``n, m, *model_args``).
      weights: path patterns of the weights that will be N:M-pruned.
      max_rounds: a bound on each search's rounds (see :func:`n_m_permutation`).
        None searches until no move helps, which on a CPU can take long for
        big groups (a transformer's residual stream has every block's q, k,
        v and MLP input as rows): see the README's cost tables.
      progress: True logs one line per searched group (logger ``"jaxprune"``,
        INFO); a callable receives each :class:`GroupPermutation` as it is made.

    Returns:
      ``(new_params, permutations)``: the permuted parameters (same tree, shapes
      and dtypes) and a :class:`GroupPermutation` per searched group;
      ``.skipped`` lists the groups left as they were, and why.

    >>> import jax, jax.numpy as jnp, numpy as np, jaxprune as jp
    >>> def mlp(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 4))}
    >>> x = jnp.ones((2, 8))
    >>> new, (perm,) = jp.permute_for_n_m(mlp, params, 2, 4, x)
    >>> perm.consumers, perm.kept_after >= perm.kept_before
    (('w2',), True)
    >>> bool(jnp.allclose(mlp(new, x), mlp(params, x), rtol=1e-5, atol=1e-5))
    True
    """
    call, params, (n, m), model_args, module = _model(fn, args, "permute_for_n_m", 2)
    n, m = check_n_m(n, m)
    report = reporter(progress, _log_permutation, "permute_for_n_m", "GroupPermutation")
    check_max_rounds(max_rounds)
    named, treedef = tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in named]
    leaves = dict(zip(paths, (x for _, x in named), strict=True))
    chosen = _check_weights(weights, paths)
    axes = _axes(call, params, model_args)
    if chosen is None:  # n_m_rules' weights
        consumers = dict(_ruled(axes, {path: np.shape(x) for path, x in leaves.items()}, m))
    else:
        consumers = {path: axis for path, (axis, _) in axes.items() if path in chosen}
    if chosen is not None and (missing := sorted(chosen - set(axes))):
        raise ValueError(f"permute_for_n_m: {missing[0]!r} (weights={weights!r}) is no matmul's weight in the "
                         "model: N:M applies to matmul and convolution weights")

    groups = channel_groups(call, params, *model_args, exact_only=False)
    searched: list[GroupPermutation] = []
    skipped: list[tuple[str, str]] = []
    gathers: dict[str, dict[int, np.ndarray]] = {}

    def describe(members: Iterable[Member]) -> str:
        return ", ".join(dict.fromkeys(f"{mem.path}[{mem.axis}]" for mem in members))

    for dropped in groups.dropped:
        if any(consumers.get(mem.path) == mem.axis for mem in dropped.members):
            skipped.append((describe(dropped.members), dropped.reason))
    for group in groups:
        users = [mem for mem in group.members if consumers.get(mem.path) == mem.axis]
        if not users:
            continue
        unsafe = [r for r in group.reasons if not permutation_safe(r)]
        if unsafe:
            skipped.append((describe(group.members), "the channels' order matters: " + "; ".join(unsafe)))
            continue
        slots = [(mem, _slots(mem, m)) for mem in users]
        bad = [mem for mem, starts in slots if starts is None]
        if bad:
            skipped.append((describe(group.members),
                            f"its {group.size} channels do not fill whole groups of {m} along the N:M axis "
                            f"of {bad[0].path!r} (axis {bad[0].axis})"))
            continue
        stacked = np.concatenate([_scores(leaves[mem.path], mem, starts) for mem, starts in slots
                                  if starts is not None], axis=0)
        perm = np.asarray(n_m_permutation(stacked, n, m, max_rounds=max_rounds), np.int64)
        before = float(n_m_kept(stacked, n, m))
        after = float(n_m_kept(stacked[:, perm], n, m))
        searched.append(GroupPermutation(group, perm, tuple(mem.path for mem in users), before, after))
        report(searched[-1])
        if not searched[-1].changed:
            continue
        for mem in group.members:
            by_axis = gathers.setdefault(mem.path, {})
            current = by_axis[mem.axis] if mem.axis in by_axis else np.arange(mem.length)
            step = np.arange(mem.length)
            step[mem.positions.ravel()] = mem.positions[perm].ravel()
            by_axis[mem.axis] = current[step]

    new_leaves = []
    for path in paths:
        x = leaves[path]
        for axis, index in sorted(gathers.get(path, {}).items()):
            if isinstance(x, jax.Array):
                x = jnp.take(x, jnp.asarray(index, np.int32), axis=axis)  # an axis length fits int32
            else:
                x = np.take(np.asarray(x), index, axis=axis)
        new_leaves.append(x)
    new_params = tree_util.tree_unflatten(treedef, new_leaves)
    if module is not None:
        from flax import nnx

        nnx.update(module, new_params)
    return PermuteResult(new_params, searched, dict.fromkeys(skipped))

