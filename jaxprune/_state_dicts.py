"""torch's pruning state_dicts: ``<name>_orig`` / ``<name>_mask`` pairs, split and joined.

The one home of the pair convention, shared by the command line (NumPy
arrays) and ``jaxprune.interop`` (torch tensors): the functions only name,
pair and check shapes, so they work on any array type. One rule says what
a stored mask keeps: **nonzero = keep** (torch writes 0/1 in the weight's
dtype; a mask holding 2.0 keeps, as ``apply_masks`` reads it).

>>> import numpy as np
>>> weights, masks = split_pairs({"w_orig": np.ones(2), "w_mask": np.array([2.0, 0.0]), "b": np.zeros(1)})
>>> sorted(weights), kept(masks["w"]).tolist()
(['b', 'w'], [True, False])
>>> sorted(join_pairs(weights, masks, as_mask=lambda name, m, w: m))
['b', 'w_mask', 'w_orig']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
ORIG, MASK = "_orig", "_mask"


def kept(mask: Any) -> Any:
    """The bool keep-mask of a stored mask of any dtype: nonzero = keep."""
    return mask != 0


def split_pairs(tensors: Mapping[str, T]) -> tuple[dict[str, T], dict[str, T]]:
    """``({name: weight}, {name: stored mask})``: a pair gives its dense ``*_orig`` under ``name``.

    Every other entry is a weight under its own name, in the input's order.
    Masks are returned as stored (read them with :func:`kept`).

    Raises ``ValueError`` when a pair's shapes differ, or when ``name`` is
    present beside its own pair.
    """
    weights: dict[str, T] = {}
    masks: dict[str, T] = {}
    for key, value in tensors.items():
        if key.endswith(ORIG) and key[: -len(ORIG)] + MASK in tensors:
            name = key[: -len(ORIG)]
            mask = tensors[name + MASK]
            if _shape(mask) != _shape(value):
                raise ValueError(f"{name + MASK!r} has shape {_shape(mask)}, but {key!r} has {_shape(value)}")
            if name in tensors:
                raise ValueError(f"the state_dict has both {name!r} and the pair {key!r}/{name + MASK!r}")
            weights[name] = value
            masks[name] = mask
        elif not (key.endswith(MASK) and key[: -len(MASK)] + ORIG in tensors):
            weights[key] = value
    return weights, masks


def join_pairs(weights: Mapping[str, T], masks: Mapping[str, Any],
               *, as_mask: Callable[[str, Any, T], T]) -> dict[str, T]:
    """The state_dict: ``<name>_orig`` and ``<name>_mask = as_mask(name, mask, weight)`` where a mask
    is given (not None), ``<name>`` elsewhere, in the order of ``weights``.

    Raises ``ValueError`` for a mask whose name has no weight.
    """
    unknown = [name for name in masks if name not in weights]
    if unknown:
        raise ValueError(f"masks for tensors that have no weights: {sorted(unknown)}")
    out: dict[str, T] = {}
    for name, weight in weights.items():
        if masks.get(name) is not None:
            out[name + ORIG] = weight
            out[name + MASK] = as_mask(name, masks[name], weight)
        else:
            out[name] = weight
    return out


def _shape(x: Any) -> tuple[int, ...]:
    """The shape of a NumPy array, jax array or torch tensor (all have ``.shape``)."""
    return tuple(x.shape)
