"""Type aliases shared by the whole package (one place, as in optax)."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np

Array = jax.Array
#: Anything ``jnp.asarray`` accepts as a tensor: jax and numpy arrays, Python scalars.
ArrayLike = jax.typing.ArrayLike
#: A PRNG key: a typed key (``jax.random.key``) or a legacy ``uint32[2]`` key.
PRNGKey = jax.Array
#: A pytree of arrays (parameters, scores) or of masks.
PyTree = Any
#: A pruning amount: an int (count of units) or a float in [0, 1] (fraction of units),
#: as a Python/NumPy scalar or a 0-d array (NumPy, or jax: possibly traced under ``jit``).
Amount = int | float | numbers.Real | np.number | np.ndarray | jax.Array
#: The ``n`` of ``ln_structured``: a real p-norm order, ``inf``, ``-inf``, ``'fro'`` or ``'nuc'``.
NormOrder = int | float | str
