"""The torch bridge, imported as ``jaxprune.interop``.

Everything here touches torch (imported lazily, so ``import jaxprune.interop``
itself does not need it); the core package never imports this one.
"""

from ._layouts import Placement as Placement
from ._layouts import TorchLayout as TorchLayout
from ._layouts import flax_dim as flax_dim
from ._layouts import flax_rules as flax_rules
from ._layouts import flax_to_torch as flax_to_torch
from ._layouts import masks_to_flax as masks_to_flax
from ._layouts import masks_to_torch as masks_to_torch
from ._layouts import placements as placements
from ._layouts import register_layout as register_layout
from ._layouts import torch_to_flax as torch_to_flax
from ._modules import compute_module_masks as compute_module_masks
from ._modules import prunable_parameters as prunable_parameters
from ._modules import prune_module as prune_module
from ._modules import pruned_state_dict as pruned_state_dict
from ._modules import read_pruned as read_pruned
from ._one_shot import one_shot as one_shot
from ._semi_structured import SemiStructured as SemiStructured
from ._semi_structured import from_semi_structured as from_semi_structured
from ._semi_structured import to_semi_structured as to_semi_structured
from ._tensors import to_jax as to_jax
from ._tensors import to_torch as to_torch

__all__ = (
    "Placement",
    "SemiStructured",
    "TorchLayout",
    "compute_module_masks",
    "flax_dim",
    "flax_rules",
    "flax_to_torch",
    "from_semi_structured",
    "masks_to_flax",
    "masks_to_torch",
    "one_shot",
    "placements",
    "prunable_parameters",
    "prune_module",
    "pruned_state_dict",
    "read_pruned",
    "register_layout",
    "to_jax",
    "to_semi_structured",
    "to_torch",
    "torch_to_flax",
)
