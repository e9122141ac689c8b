"""How much of a tree is pruned: per-leaf counts and a table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

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

    Flax NNX variables are read as their values, so ``nnx.state(model,
    nnx.Param)`` and the masks of an ``nnx.Optimizer``'s state
    (``optimizer.opt_state.masks``, wrapped as optimizer variables) pair up.

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
    return SparsityReport(tuple(rows))

