"""What a pruning method is (the protocol every consumer uses), and the built-in methods.

A method is a small frozen object that says *how* to prune: it holds its
arguments (validated at construction, so a bad amount fails where it is
written, not inside a jitted step) and computes a keep-mask with
``method.compute_mask(key, t, default_mask=None)``. Methods are hashable, so
they can be static arguments of ``jax.jit`` and values in rule dictionaries.

Everything that consumes methods (``prune_tree``, ``jp.pruning``, the torch
bridge, the command line) reads only the :class:`PruningMethod` protocol: which
units the amount counts, how to set the amount, whether the method draws
random numbers, which name its key comes from, which extra inputs it needs,
and whether it ranks several leaves together.

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
>>> MeanAbsFilters(amount=1).unit, MeanAbsFilters(amount=1).units((3, 2))
('slices', 3)
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Hashable, Sequence
from typing import ClassVar, TypeVar

import jax
import jax.numpy as jnp

from . import _methods
from ._amounts import check_amount
from ._errors import PruningShapeError
from ._trees import global_masks
from ._typing import Amount, Array, ArrayLike, NormOrder, PRNGKey

_M = TypeVar("_M", bound="PruningMethod")


class PruningMethod(abc.ABC):
    """The protocol of a pruning method: what every consumer may ask of one.

    A subclass defines :meth:`compute_mask` and, where the defaults do not
    fit, the rest:

    * ``unit``, :meth:`units`, :meth:`pruned_units`: what the amount counts
      (``"entries"``, ``"slices"``...), how many a leaf of a shape has, and
      how many a mask has pruned (traced; used by schedules).
    * ``has_amount`` and :meth:`with_amount`: whether the method takes an
      amount (``Identity`` and ``CustomFromMask`` do not) and a copy with
      another one (a schedule sets it).
    * ``is_random`` (needs a key: the planner passes a leaf's key only to a
      method that declares it, others get None) and ``key_name`` (the name the
      leaf's key is derived from; None = the leaf's own path).
    * ``extra_args``: names of per-leaf inputs ``compute_mask`` takes as
      keyword arguments besides the tensor (``"grads"`` for Taylor scores).
    * :meth:`check_leaf`: validate a leaf's shape before any tracing.
    * :meth:`group_of` and :meth:`group_masks`: methods that rank several leaves
      together (``GlobalUnstructured``) name the group a leaf joins.

    ``t`` holds the importance scores (the parameter itself, or other scores
    of its shape), as in torch. ``default_mask`` is the keep-mask of earlier
    pruning; the new mask is within it, and the amount applies to what it
    still keeps (torch's ``PruningContainer`` rule).
    """

    #: What the amount counts.
    unit: ClassVar[str] = "entries"
    #: Whether the method draws random numbers (then a key is required).
    is_random: ClassVar[bool] = False
    #: Per-leaf inputs ``compute_mask`` takes as keyword arguments.
    extra_args: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        """The keep-mask for ``t`` (True = keep)."""

    @property
    def key_name(self) -> str | None:
        """The name this method's key is derived from (None: the leaf's path)."""
        return None

    @property
    def has_amount(self) -> bool:
        """Whether the method has an amount that :meth:`with_amount` can set."""
        return dataclasses.is_dataclass(self) and any(f.name == "amount" for f in dataclasses.fields(self))

    def with_amount(self: _M, amount: Amount) -> _M:
        """This method with another amount (validated as at construction)."""
        if not self.has_amount:
            raise TypeError(f"{self!r} has no amount to set")
        return dataclasses.replace(self, amount=amount)  # type: ignore[type-var]

    def units(self, shape: tuple[int, ...]) -> int:
        """How many units a leaf of ``shape`` has."""
        return math.prod(shape)

    def pruned_units(self, mask: Array) -> Array:
        """How many units a keep-mask has pruned (an integer array; traceable)."""
        return _count_false(mask)

    def check_leaf(self, shape: tuple[int, ...]) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise (``IndexError``/``ValueError``, as the methods do) if a leaf of
        ``shape`` cannot be pruned by this method."""

    def group_of(self, pattern: str | None) -> Hashable | None:
        """The group a leaf matched by ``pattern`` joins (leaves of one group
        are ranked together by :meth:`group_masks`); None = pruned alone."""
        return None

    def group_masks(self, key: PRNGKey | None, group: Group) -> list[Array]:
        """The masks of one group's leaves, ranked together."""
        raise NotImplementedError(f"{type(self).__name__} prunes each leaf alone")


@dataclasses.dataclass(frozen=True)
class Group:
    """The leaves of one group, in ranking order: their paths, the leaves,
    the scores to rank instead (None = the leaf) and earlier keep-masks (None = all kept)."""

    paths: Sequence[str]
    leaves: Sequence[ArrayLike]
    scores: Sequence[ArrayLike | None]
    default_masks: Sequence[ArrayLike | None]


def count_dtype() -> jnp.dtype:
    """The integer type of traced unit counts: int64 with x64, else int32."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.int64))


def _count_false(mask: Array) -> Array:
    return mask.size - jnp.sum(mask, dtype=count_dtype())


class _Entries(PruningMethod):
    """Methods whose units are a leaf's entries."""

    unit: ClassVar[str] = "entries"


class _Slices(PruningMethod):
    """Methods whose units are the slices of a leaf along ``dim`` (at least 2-D)."""

    unit: ClassVar[str] = "slices"
    dim: int

    def _check_dim_type(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(
                f"dim must be an int, got {type(self.dim).__name__}: {self.dim!r} (under jax.jit, mark it "
                "static: static_argnames=('dim',))"
            )

    def units(self, shape: tuple[int, ...]) -> int:
        return shape[_methods.check_dim(shape, self.dim)]

    def pruned_units(self, mask: Array) -> Array:
        dim = _methods.check_dim(mask.shape, self.dim)
        alive = _methods.alive_slices(mask, dim)
        return mask.shape[dim] - jnp.sum(alive, dtype=count_dtype())

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        _methods.check_dim(shape, self.dim)


class UnstructuredMethod(_Entries):
    """Base for methods that prune individual entries with the lowest scores.

    Subclasses are frozen dataclasses with an ``amount`` field and define
    ``scores(key, t)``, an array of ``t``'s shape (higher = more important).
    Set ``is_random = True`` when the scores draw from the key (``jp.pruning``
    and ``prune_tree`` then refuse to run without one).
    """

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


class StructuredMethod(_Slices):
    """Base for methods that prune whole slices along ``dim``.

    Subclasses are frozen dataclasses with ``amount`` and ``dim`` fields and
    define ``slice_scores(key, t)``, one score per slice (``(t.shape[dim],)``).
    """

    amount: Amount
    dim: int

    def __post_init__(self) -> None:
        check_amount(self.amount)
        self._check_dim_type()

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
        return _methods.prune_slices(scores, check_amount(self.amount), t.shape, dim, default_mask, t)


# --------------------------------------------------------------------------
# torch's methods: each one is its function in ``_methods`` (one implementation)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity(_Entries):
    """Prunes nothing: the mask is ``default_mask`` (or all True)."""

    PRUNING_TYPE: ClassVar[str] = "unstructured"  # torch's name of the kind; jaxprune reads `unit`

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        t = _methods.as_tensor(t)
        if default_mask is None:
            return _methods.identity(t)
        return _methods.as_mask(default_mask, t.shape, "default_mask", t)


@dataclasses.dataclass(frozen=True)
class RandomUnstructured(_Entries):
    """Prune ``amount`` entries uniformly at random (see :func:`random_unstructured`)."""

    PRUNING_TYPE: ClassVar[str] = "unstructured"
    is_random: ClassVar[bool] = True
    amount: Amount

    def __post_init__(self) -> None:
        check_amount(self.amount)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.random_unstructured(key, t, self.amount, default_mask=default_mask)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class L1Unstructured(_Entries):
    """Prune the ``amount`` smallest-magnitude entries (see :func:`l1_unstructured`).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.L1Unstructured(2).compute_mask(None, jnp.array([0.5, -3.0, 0.1, 2.0]))
    Array([False,  True, False,  True], dtype=bool)
    """

    PRUNING_TYPE: ClassVar[str] = "unstructured"
    amount: Amount

    def __post_init__(self) -> None:
        check_amount(self.amount)

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.l1_unstructured(t, self.amount, default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class RandomStructured(_Slices):
    """Prune ``amount`` random slices along ``dim`` (see :func:`random_structured`)."""

    PRUNING_TYPE: ClassVar[str] = "structured"
    is_random: ClassVar[bool] = True
    amount: Amount
    dim: int = -1

    def __post_init__(self) -> None:
        check_amount(self.amount)
        self._check_dim_type()

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.random_structured(key, t, self.amount, self.dim,  # type: ignore[arg-type]
                                          default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class LnStructured(_Slices):
    """Prune the ``amount`` slices along ``dim`` of smallest ``n``-norm (see :func:`ln_structured`).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.LnStructured(1, n=1, dim=1).compute_mask(None, jnp.array([[1.0, -5.0], [2.0, 0.0]]))
    Array([[False,  True],
           [False,  True]], dtype=bool)
    """

    PRUNING_TYPE: ClassVar[str] = "structured"
    amount: Amount
    n: NormOrder
    dim: int = -1

    def __post_init__(self) -> None:
        check_amount(self.amount)
        self._check_dim_type()
        _methods.check_norm(self.n)

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        _methods.check_dim(shape, self.dim)
        _methods.check_norm(self.n, len(shape))

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        return _methods.ln_structured(t, self.amount, self.n, self.dim, default_mask=default_mask)


@dataclasses.dataclass(frozen=True, eq=False)
class CustomFromMask(_Entries):
    """Prune where a given mask is False (0); combined with ``default_mask``.

    Hashes by identity (the mask is an array).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> jp.CustomFromMask(jnp.array([1, 0, 1])).compute_mask(None, jnp.ones(3))
    Array([ True, False,  True], dtype=bool)
    """

    PRUNING_TYPE: ClassVar[str] = "global"
    mask: ArrayLike

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        if tuple(jnp.shape(self.mask)) != tuple(shape):
            raise PruningShapeError(
                f"CustomFromMask.mask has shape {tuple(jnp.shape(self.mask))}, the leaf has shape {tuple(shape)}"
            )

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        t = _methods.as_tensor(t)
        mask = _methods.as_mask(self.mask, t.shape, "CustomFromMask.mask", t)
        if default_mask is None:
            return mask
        return _methods.as_mask(default_mask, t.shape, "default_mask", t) & mask


# --------------------------------------------------------------------------
# Scores from more than the parameter: gradients, activations
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaylorUnstructured(_Entries):
    """Prune the ``amount`` entries of lowest first-order Taylor score ``|w * g|``
    (the change of the loss that a first-order expansion predicts for zeroing ``w``).

    Needs the gradient as the extra input ``grads``: ``jp.pruning`` passes the
    gradients it receives; ``prune_tree`` takes ``extra_args={"grads": grads}``.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> w, g = jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([4.0, 0.1, 1.0, 1.0])
    >>> jp.TaylorUnstructured(2).compute_mask(None, w, grads=g)  # |w g| = 4, 0.2, 3, 4
    Array([ True, False, False,  True], dtype=bool)
    """

    extra_args: ClassVar[tuple[str, ...]] = ("grads",)
    amount: Amount

    def __post_init__(self) -> None:
        check_amount(self.amount)

    def compute_mask(
        self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None, *, grads: ArrayLike
    ) -> Array:
        t = _methods.as_tensor(t)
        g = _methods.as_tensor(grads, "grads")
        if g.shape != t.shape:
            raise PruningShapeError(f"grads has shape {g.shape}, expected the parameter's shape {t.shape}")
        dtype = jnp.promote_types(t.dtype, g.dtype)
        return _methods.unstructured_mask(jnp.abs(t.astype(dtype) * g.astype(dtype)), self.amount,
                                          default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class ActivationUnstructured(_Entries):
    """Prune the ``amount`` entries of lowest ``|w| * ||x||``, where ``||x||`` is
    the norm of the input feature ``w`` multiplies (Wanda's score), ranked over
    the whole leaf.

    Needs the extra input ``input_norms``: one non-negative value per index of
    the leaf's input axis ``in_axis`` (0 for a Flax ``Dense`` kernel ``(in,
    out)``, -2 for a Flax ``Conv`` kernel, 1 for a torch ``Linear`` weight).
    Collect it from the layer's inputs (``jnp.linalg.norm(x.reshape(-1, d),
    axis=0)``) and pass it to ``jp.pruning``'s ``update(..., input_norms=...)``
    or to ``prune_tree(..., extra_args={"input_norms": ...})``, as a tree like
    the parameters (None where absent) or a dict ``{path: norms}``.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> w = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # a Dense kernel: 3 inputs, 2 outputs
    >>> jp.ActivationUnstructured(2).compute_mask(None, w, input_norms=jnp.array([10.0, 0.1, 1.0]))
    Array([[ True,  True],
           [False, False],
           [ True,  True]], dtype=bool)
    """

    extra_args: ClassVar[tuple[str, ...]] = ("input_norms",)
    amount: Amount
    in_axis: int = 0

    def __post_init__(self) -> None:
        check_amount(self.amount)
        if isinstance(self.in_axis, bool) or not isinstance(self.in_axis, int):
            raise TypeError(f"in_axis must be an int, got {type(self.in_axis).__name__}: {self.in_axis!r}")

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        if not -len(shape) <= self.in_axis < len(shape):
            raise IndexError(f"in_axis {self.in_axis} is out of range for a leaf with {len(shape)} dims")

    def compute_mask(
        self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None, *, input_norms: ArrayLike
    ) -> Array:
        t = _methods.as_tensor(t)
        self.check_leaf(t.shape)
        axis = self.in_axis % t.ndim
        norms = _methods.as_tensor(input_norms, "input_norms")
        if norms.shape != (t.shape[axis],):
            raise PruningShapeError(f"input_norms has shape {norms.shape}, expected ({t.shape[axis]},): one norm "
                                    f"per index of the leaf's input axis {self.in_axis}")
        view = [1] * t.ndim
        view[axis] = t.shape[axis]
        dtype = jnp.promote_types(t.dtype, norms.dtype)
        scores = jnp.abs(t.astype(dtype)) * norms.astype(dtype).reshape(view)
        return _methods.unstructured_mask(scores, self.amount, default_mask=default_mask)


# --------------------------------------------------------------------------
# Ranking several leaves together
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlobalUnstructured(_Entries):
    """Rank every leaf this rule matches together (torch's ``global_unstructured``),
    pruning ``amount`` of their entries in total.

    One rule pattern is one group. To rank leaves of several patterns (or of
    a callable's answers) together, give them the same ``group`` name; a
    callable's ungrouped answers form one group per distinct value.
    ``method`` ranks by ``"l1"`` (``|w|``, or the importance scores) or by
    ``"random"`` draws (each leaf's from its path's key).

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> params = {"a": {"kernel": jnp.array([1.0, -5.0])}, "b": {"kernel": jnp.array([0.5, 4.0])}}
    >>> masks = jp.prune_tree(None, params, {"*.kernel": jp.GlobalUnstructured(2)})
    >>> masks["a"]["kernel"], masks["b"]["kernel"]
    (Array([False,  True], dtype=bool), Array([False,  True], dtype=bool))
    """

    PRUNING_TYPE: ClassVar[str] = "unstructured"
    amount: Amount
    method: str = "l1"
    group: str | None = None

    def __post_init__(self) -> None:
        check_amount(self.amount)
        if isinstance(self.method, PruningMethod):  # an N:M or block pattern is per leaf: no global ranking
            raise TypeError(f"GlobalUnstructured ranks entries across leaves by 'l1' or 'random'; {self.method!r} "
                            "prunes each leaf by its own pattern: give it as the leaves' rule instead")
        if self.method not in ("l1", "random"):
            raise ValueError(f"GlobalUnstructured method must be 'l1' or 'random', got {self.method!r}")

    @property
    def is_random(self) -> bool:  # type: ignore[override]
        return self.method == "random"

    def group_of(self, pattern: str | None) -> Hashable:
        if self.group is not None:
            return ("group", self.group)
        return ("pattern", pattern, self)

    def group_masks(self, key: PRNGKey | None, group: Group) -> list[Array]:
        return global_masks(list(group.paths), list(group.leaves), check_amount(self.amount), method=self.method,
                            key=key, importance_scores=list(group.scores), default_masks=list(group.default_masks))

    def compute_mask(self, key: PRNGKey | None, t: ArrayLike, default_mask: ArrayLike | None = None) -> Array:
        """The mask of a group of one leaf whose path is ``""``."""
        return self.group_masks(key, Group([""], [t], [None], [default_mask]))[0]
