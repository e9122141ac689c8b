"""The torch bridge, imported as ``jaxprune.interop``.

Everything here touches torch (imported lazily, so ``import jaxprune.interop``
itself does not need it); the core package never imports this one.
Available now: :func:`to_jax` and :func:`to_torch` (DLPack, zero-copy where
both sides allow it). Pruning torch modules and torch <-> Flax weight
conversion are the next steps of the torch-bridge issue.
"""

from ._tensors import to_jax as to_jax
from ._tensors import to_torch as to_torch

__all__ = ("to_jax", "to_torch")
