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

from collections.abc import Callable, Mapping
from typing import Any

import jax

from . import _methods
from ._plan import check_key_for, compute_masks, extra_leaves, leaves_like, named_leaves, plan
from ._specs import GlobalUnstructured as GlobalUnstructured  # its home before the protocol
from ._typing import Array, PRNGKey, PyTree

Rules = Mapping[str, Any] | Callable[[str, Array], Any]


def prune_tree(
    key: PRNGKey | None,
    params: PyTree,
    rules: Rules,
    *,
    default_masks: PyTree | None = None,
    importance_scores: PyTree | None = None,
    extra_args: Mapping[str, PyTree] | None = None,
) -> PyTree:
    """Masks for a whole parameter tree (NNX state, Linen params, any pytree).

    Args:
      key: a PRNG key (needed when a rule is random; may be None otherwise).
        Each leaf draws from ``leaf_key(key, path)``, so adding or removing a
        layer never changes another layer's mask.
      params: the parameter tree.
      rules: ``{pattern: method}`` (first matching pattern wins; a pattern that
        matches nothing raises) or a callable ``(path, leaf) -> method | None``.
        A method carries its amount (``jp.L1Unstructured(0.3)``); leaves matched
        by one :class:`GlobalUnstructured` value are pruned together.
      default_masks: a mask tree from an earlier pruning (None for a leaf = all
        kept): iterative pruning, as for the single-tensor methods.
      importance_scores: a tree like ``params`` (None = rank the leaf itself).
      extra_args: per-leaf inputs that methods need besides the parameter
        (``method.extra_args``), by name: ``{"grads": grads}`` for
        :class:`TaylorUnstructured`. Each is a tree like ``params`` (None where
        absent) or a dict ``{path: array}``.

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
    named = named_leaves(params)
    p = plan(named, rules)
    if key is not None:
        key = _methods.check_key(key)
    check_key_for(p, key)
    leaves = [leaf for _, leaf in named]
    masks = compute_masks(
        p,
        key,
        leaves,
        default_masks=leaves_like(params, default_masks, "default_masks"),
        scores=leaves_like(params, importance_scores, "importance_scores"),
        extra=extra_leaves(params, [path for path, _ in named], extra_args),
    )
    return jax.tree.unflatten(jax.tree.structure(params), masks)


# The sparsity report lived here before it got its own module.
from ._report import LeafSparsity as LeafSparsity  # noqa: E402
from ._report import SparsityReport as SparsityReport  # noqa: E402
from ._report import sparsity_report as sparsity_report  # noqa: E402
