"""jaxprune: torch.nn.utils.prune as pure, jit-compiled JAX functions.

Every method returns a boolean keep-mask (True = keep), takes an explicit PRNG
key where it is random, counts units exactly as torch does, and breaks ties
deterministically (lower flat index pruned first, NaN last).

>>> import jax, jax.numpy as jnp, jaxprune as jp
>>> w = jnp.arange(1.0, 9.0).reshape(2, 4)
>>> jp.l1_unstructured(w, 0.25)
Array([[False, False,  True,  True],
       [ True,  True,  True,  True]], dtype=bool)
"""

from ._errors import NormOrderError as NormOrderError
from ._errors import PruningShapeError as PruningShapeError
from ._methods import compute_mask as compute_mask
from ._methods import identity as identity
from ._methods import l1_unstructured as l1_unstructured
from ._methods import ln_structured as ln_structured
from ._methods import random_structured as random_structured
from ._methods import random_unstructured as random_unstructured
from ._methods import slice_norms as slice_norms
from ._methods import structured_mask as structured_mask
from ._methods import unstructured_mask as unstructured_mask
from ._specs import CustomFromMask as CustomFromMask
from ._specs import Identity as Identity
from ._specs import L1Unstructured as L1Unstructured
from ._specs import LnStructured as LnStructured
from ._specs import PruningMethod as PruningMethod
from ._specs import RandomStructured as RandomStructured
from ._specs import RandomUnstructured as RandomUnstructured
from ._specs import StructuredMethod as StructuredMethod
from ._specs import UnstructuredMethod as UnstructuredMethod
from ._trees import apply_masks as apply_masks
from ._trees import global_unstructured as global_unstructured
from ._trees import leaf_key as leaf_key
from ._trees import path_str as path_str
from ._trees import pruned_indices as pruned_indices

__version__ = "0.1.0"

__all__ = (
    "CustomFromMask",
    "Identity",
    "L1Unstructured",
    "LnStructured",
    "NormOrderError",
    "PruningMethod",
    "PruningShapeError",
    "RandomStructured",
    "RandomUnstructured",
    "StructuredMethod",
    "UnstructuredMethod",
    "apply_masks",
    "compute_mask",
    "global_unstructured",
    "identity",
    "l1_unstructured",
    "leaf_key",
    "ln_structured",
    "path_str",
    "pruned_indices",
    "random_structured",
    "random_unstructured",
    "slice_norms",
    "structured_mask",
    "unstructured_mask",
)
