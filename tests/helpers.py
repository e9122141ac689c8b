"""Helpers shared by the tests (as equinox's tests/helpers.py)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def is_none(x: Any) -> bool:
    return x is None


def n_pruned(mask: Any) -> int:
    """How many entries a keep-mask prunes."""
    return int(np.size(mask) - np.count_nonzero(np.asarray(mask)))


def assert_trees_identical(a: Any, b: Any) -> None:
    """Same structure (None positions included), dtypes, shapes and bits."""
    assert jax.tree.structure(a, is_leaf=is_none) == jax.tree.structure(b, is_leaf=is_none)
    for x, y in zip(jax.tree.leaves(a, is_leaf=is_none), jax.tree.leaves(b, is_leaf=is_none)):
        if x is None or y is None:
            assert x is None and y is None
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        # compare bits (so -0.0 != 0.0 and NaN payloads count)
        np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))
