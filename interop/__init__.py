"""The torch bridge, imported as ``jaxprune.interop``.

Everything here touches torch (imported lazily, so ``import jaxprune.interop``
itself does not need it); the core package never imports this one.
"""

from ._modules import compute_module_masks as compute_module_masks
from ._modules import prunable_parameters as prunable_parameters
from ._modules import prune_module as prune_module
from ._modules import pruned_state_dict as pruned_state_dict
from ._modules import read_pruned as read_pruned
from ._tensors import to_jax as to_jax
from ._tensors import to_torch as to_torch

__all__ = (
    "compute_module_masks",
    "prunable_parameters",
    "prune_module",
    "pruned_state_dict",
    "read_pruned",
    "to_jax",
    "to_torch",
)
