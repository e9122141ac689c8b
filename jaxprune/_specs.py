"""Method specs with torch's names: small frozen objects that say *how* to prune.

A spec holds its arguments (validated at construction, so a bad amount fails
where it is written, not inside a jitted step) and computes a mask with
``spec.compute_mask(key, t, default_mask=None)``. Deterministic methods ignore
the key. Specs are hashable, so they can be static arguments of ``jax.jit``
and values in rule dictionaries.

Custom strategies subclass :class:`UnstructuredMethod` (define ``scores``) or
:class:`StructuredMethod` (define ``slice_scores``) and get torch's counting,
exact-k selection, tie rule and iterative pruning for free:

>>> import dataclasses, jax, jax.numpy as jnp, jaxprune as jp
>>> @dataclasses.dataclass(frozen=True)
... class MeanAbsFilters(jp.StructuredMethod):
...     amount: float
...     dim: int = 0
...     def slice_scores(self, key, t):
...         return jnp.mean(jnp.abs(jnp.moveaxis(t, self.dim, 0)).reshape(t.shape[self.dim], -1), axis=1)
>>> w = jnp.array([[1.0, 1.0], [9.0, 9.0], [0.5, 4.0]])
>>> MeanAbsFilters(amount=1).compute_mask(None, w)
Array([[False, False],
       [ True,  True],
       [ True,  True]], dtype=bool)
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from . import _methods
from ._amounts import check_amount
from ._errors import PruningShapeError
from ._typing import Amount, Array, ArrayLike, NormOrder, PRNGKey


class PruningMethod(abc.ABC):
    """A pruning method: ``compute_mask(key, t, default_mask=None) -> bool mask``.

    ``t`` holds the importance scores (the parameter itself, or other scores
    of its shape), as in torch. ``default_mask`` is the keep-mask of earlier
    pruning; the new mask is within it, and the amount applies to what it
    still keeps (torch's ``PruningContainer`` rule).
    """

    PRUNING_TYPE: ClassVar[str]

    @abc.abstractmethod
    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        """The keep-mask for ``t`` (True = keep)."""


class UnstructuredMethod(PruningMethod):
    """Base for methods that prune individual entries with the lowest scores.

    Subclasses are frozen dataclasses with an ``amount`` field and define
    ``scores(key, t)``, an array of ``t``'s shape (higher = more important).
    """

    PRUNING_TYPE: ClassVar[str] = "unstructured"
    amount: Amount

    def __post_init__(self) -> None:
        check_amount(self.amount)

    @abc.abstractmethod
    def scores(self, key: PRNGKey | None, t: Array) -> Array:
        """Per-entry importance, the shape of ``t``."""

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        t = _methods.as_tensor(t)
        scores = jnp.asarray(self.scores(key, t))
        if scores.shape != t.shape:
            raise PruningShapeError(f"{type(self).__name__}.scores returned shape {scores.shape}, expected {t.shape}")
        return _methods.unstructured_mask(scores, self.amount, default_mask=default_mask)


class StructuredMethod(PruningMethod):
    """Base for methods that prune whole slices along ``dim``.

    Subclasses are frozen dataclasses with ``amount`` and ``dim`` fields and
    define ``slice_scores(key, t)``, one score per slice (``(t.shape[dim],)``).
    """

    PRUNING_TYPE: ClassVar[str] = "structured"
    amount: Amount
    dim: int

    def __post_init__(self) -> None:
        check_amount(self.amount)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(f"dim must be an int, got {type(self.dim).__name__}: {self.dim!r}")

    @abc.abstractmethod
    def slice_scores(self, key: PRNGKey | None, t: Array) -> Array:
        """One importance score per slice along ``self.dim``."""

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        t = _methods.as_tensor(t)
        dim = _methods.check_dim(t.shape, self.dim)
        scores = jnp.asarray(self.slice_scores(key, t))
        if scores.shape != (t.shape[dim],):
            raise PruningShapeError(
                f"{type(self).__name__}.slice_scores returned shape {scores.shape}, expected ({t.shape[dim]},)"
            )
        return _methods._prune_slices(scores, check_amount(self.amount), t.shape, dim, default_mask, t)


@dataclasses.dataclass(frozen=True)
class Identity(PruningMethod):
    """Prunes nothing: the mask is ``default_mask`` (or all True)."""

    PRUNING_TYPE: ClassVar[str] = "unstructured"

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        t = _methods.as_tensor(t)
        if default_mask is None:
            return _methods.identity(t)
        return _methods.as_mask(default_mask, t.shape, "default_mask", t)


@dataclasses.dataclass(frozen=True)
class RandomUnstructured(UnstructuredMethod):
    """Prune ``amount`` entries uniformly at random (see :func:`random_unstructured`)."""

    amount: Amount

    def scores(self, key: PRNGKey | None, t: Array) -> Array:
        return jax.random.bits(_methods.check_key(key), t.shape, jnp.uint32)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.random_unstructured(key, t, self.amount, default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class L1Unstructured(UnstructuredMethod):
    """Prune the ``amount`` smallest-magnitude entries (see :func:`l1_unstructured`).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.L1Unstructured(2).compute_mask(None, jnp.array([0.5, -3.0, 0.1, 2.0]))
    Array([False,  True, False,  True], dtype=bool)
    """

    amount: Amount

    def scores(self, key: PRNGKey | None, t: Array) -> Array:
        return jnp.abs(t)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.l1_unstructured(t, self.amount, default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class RandomStructured(StructuredMethod):
    """Prune ``amount`` random slices along ``dim`` (see :func:`random_structured`)."""

    amount: Amount
    dim: int = -1

    def slice_scores(self, key: PRNGKey | None, t: Array) -> Array:
        return jax.random.bits(_methods.check_key(key), (t.shape[self.dim],), jnp.uint32)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.random_structured(key, t, self.amount, self.dim, default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class LnStructured(StructuredMethod):
    """Prune the ``amount`` slices along ``dim`` of smallest ``n``-norm (see :func:`ln_structured`).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.LnStructured(1, n=1, dim=1).compute_mask(None, jnp.array([[1.0, -5.0], [2.0, 0.0]]))
    Array([[False,  True],
           [False,  True]], dtype=bool)
    """

    amount: Amount
    n: NormOrder
    dim: int = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        _methods.check_norm(self.n)

    def slice_scores(self, key: PRNGKey | None, t: Array) -> Array:
        return _methods.slice_norms(t, self.n, self.dim)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.ln_structured(t, self.amount, self.n, self.dim, default_mask=default_mask)


@dataclasses.dataclass(frozen=True, eq=False)
class CustomFromMask(PruningMethod):
    """Prune where a given mask is False (0); combined with ``default_mask``.

    Hashes by identity (the mask is an array).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.CustomFromMask(jnp.array([1, 0, 1])).compute_mask(None, jnp.ones(3))
    Array([ True, False,  True], dtype=bool)
    """

    PRUNING_TYPE: ClassVar[str] = "global"
    mask: ArrayLike

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        t = _methods.as_tensor(t)
        mask = _methods.as_mask(self.mask, t.shape, "CustomFromMask.mask", t)
        if default_mask is None:
            return mask
        return _methods.as_mask(default_mask, t.shape, "default_mask", t) & mask
