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

from importlib import metadata as _metadata

from ._cache import enable as _enable_cache
from ._calibration import InputStats as InputStats
from ._calibration import SparseGPT as SparseGPT
from ._calibration import Wanda as Wanda
from ._calibration import input_stats as input_stats
from ._calibration import relative_error as relative_error
from ._calibration import sparsegpt as sparsegpt
from ._calibration import wanda_mask as wanda_mask
from ._errors import KeyRequiredError as KeyRequiredError
from ._errors import NormOrderError as NormOrderError
from ._errors import PruningShapeError as PruningShapeError
from ._group_types import ChannelGroup as ChannelGroup
from ._group_types import ChannelGroups as ChannelGroups
from ._group_types import DroppedGroup as DroppedGroup
from ._group_types import Member as Member
from ._groups import channel_groups as channel_groups
from ._io import load_tree as load_tree
from ._io import save_tree as save_tree
from ._methods import compute_mask as compute_mask
from ._methods import identity as identity
from ._methods import l1_unstructured as l1_unstructured
from ._methods import ln_structured as ln_structured
from ._methods import random_structured as random_structured
from ._methods import random_unstructured as random_unstructured
from ._methods import slice_norms as slice_norms
from ._methods import structured_mask as structured_mask
from ._methods import unstructured_mask as unstructured_mask
from ._nm_model import GroupPermutation as GroupPermutation
from ._nm_model import PermuteResult as PermuteResult
from ._nm_model import n_m_axes as n_m_axes
from ._nm_model import n_m_rules as n_m_rules
from ._nm_model import permute_for_n_m as permute_for_n_m
from ._one_shot import one_shot as one_shot
from ._one_shot_types import LayerReport as LayerReport
from ._one_shot_types import OneShotResult as OneShotResult
from ._patterns import BlockSparse as BlockSparse
from ._patterns import NMSparse as NMSparse
from ._patterns import block_mask as block_mask
from ._patterns import matmul_input_axis as matmul_input_axis
from ._patterns import n_m_mask as n_m_mask
from ._patterns import n_m_valid as n_m_valid
from ._permute_search import n_m_kept as n_m_kept
from ._permute_search import n_m_permutation as n_m_permutation
from ._report import SparsityReport as SparsityReport
from ._report import sparsity_report as sparsity_report
from ._rules import prune_tree as prune_tree
from ._schedules import ConstantSchedule as ConstantSchedule
from ._schedules import PolynomialSchedule as PolynomialSchedule
from ._schedules import Schedule as Schedule
from ._schedules import constant_schedule as constant_schedule
from ._schedules import one_shot_schedule as one_shot_schedule
from ._schedules import polynomial_schedule as polynomial_schedule
from ._shrink import group_keep as group_keep
from ._shrink import group_masks as group_masks
from ._shrink import shrink as shrink
from ._shrink import shrink_model as shrink_model
from ._shrink import shrunk_sizes as shrunk_sizes
from ._specs import ActivationUnstructured as ActivationUnstructured
from ._specs import CustomFromMask as CustomFromMask
from ._specs import GlobalUnstructured as GlobalUnstructured
from ._specs import Identity as Identity
from ._specs import L1Unstructured as L1Unstructured
from ._specs import LnStructured as LnStructured
from ._specs import PruningMethod as PruningMethod
from ._specs import RandomStructured as RandomStructured
from ._specs import RandomUnstructured as RandomUnstructured
from ._specs import StructuredMethod as StructuredMethod
from ._specs import TaylorUnstructured as TaylorUnstructured
from ._specs import UnstructuredMethod as UnstructuredMethod
from ._training import ChannelPruning as ChannelPruning
from ._training import PruningState as PruningState
from ._training import pruning as pruning
from ._trees import apply_masks as apply_masks
from ._trees import global_unstructured as global_unstructured
from ._trees import leaf_key as leaf_key
from ._trees import path_str as path_str
from ._trees import pruned_indices as pruned_indices

_enable_cache()  # jax's persistent compilation cache in a user cache folder (see _cache.py)

try:
    __version__ = _metadata.version("jaxprune")  # one source of truth: pyproject.toml
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = (
    "ActivationUnstructured",
    "BlockSparse",
    "ChannelGroup",
    "ChannelGroups",
    "ChannelPruning",
    "ConstantSchedule",
    "CustomFromMask",
    "DroppedGroup",
    "GlobalUnstructured",
    "GroupPermutation",
    "Identity",
    "InputStats",
    "KeyRequiredError",
    "L1Unstructured",
    "LayerReport",
    "LnStructured",
    "Member",
    "NMSparse",
    "NormOrderError",
    "OneShotResult",
    "PermuteResult",
    "PolynomialSchedule",
    "PruningMethod",
    "PruningShapeError",
    "PruningState",
    "RandomStructured",
    "RandomUnstructured",
    "Schedule",
    "SparseGPT",
    "SparsityReport",
    "StructuredMethod",
    "TaylorUnstructured",
    "UnstructuredMethod",
    "Wanda",
    "apply_masks",
    "block_mask",
    "channel_groups",
    "compute_mask",
    "constant_schedule",
    "global_unstructured",
    "group_keep",
    "group_masks",
    "identity",
    "input_stats",
    "l1_unstructured",
    "leaf_key",
    "ln_structured",
    "load_tree",
    "matmul_input_axis",
    "n_m_axes",
    "n_m_kept",
    "n_m_mask",
    "n_m_permutation",
    "n_m_rules",
    "n_m_valid",
    "one_shot",
    "one_shot_schedule",
    "path_str",
    "permute_for_n_m",
    "polynomial_schedule",
    "prune_tree",
    "pruned_indices",
    "pruning",
    "random_structured",
    "random_unstructured",
    "relative_error",
    "save_tree",
    "shrink",
    "shrink_model",
    "shrunk_sizes",
    "slice_norms",
    "sparsegpt",
    "sparsity_report",
    "structured_mask",
    "unstructured_mask",
    "wanda_mask",
)
