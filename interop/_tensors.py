"""torch tensors <-> JAX arrays through DLPack.

Zero-copy where both sides allow it (a detached, compact tensor of a dtype both
share, on the same device); otherwise one copy, never an error the caller must
work around: parameters and tensors that require grad are detached, strided
views (``t[::2]``, ``t[:, 4:8]``, ``expand``) are made contiguous first.

Aliasing policy. A zero-copy result *shares memory* with its source, like
``torch.from_numpy``: JAX treats arrays as immutable, torch does not, so an
in-place torch op on the source changes the JAX view (and can race with a JAX
computation still reading it). Therefore:

* ``to_jax(t)`` is a view; pass ``copy=True`` for a snapshot that later torch
  mutations cannot reach (``jax.dlpack.from_dlpack(copy=True)`` does not copy
  on CPU in jax 0.10, so the copy is made explicitly);
* ``to_torch(a)`` is a view too; treat it as read-only or pass ``copy=True``;
* every pruning function of ``jaxprune.interop`` computes masks from a
  snapshot and hands out finished results, so mutating a module afterwards
  never changes a mask already returned.

dtypes: float32, float16, bfloat16, int8, int16, int32, uint8, bool round-trip
exactly. float64 and int64 follow JAX's x64 setting: with x64 on they stay
64-bit (zero-copy); with it off they become float32/int32 (a copy, as
``jnp.asarray`` would). Complex and other dtypes raise ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import torch

_SHARED_DTYPES = ("float32", "float16", "bfloat16", "int8", "int16", "int32", "uint8", "bool")
_WIDE_DTYPES = {"float64": jnp.float32, "int64": jnp.int32}


def import_torch():
    try:
        import torch
        import torch.nn.utils.prune  # noqa: F401 - a submodule torch does not import by itself
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError("jaxprune.interop needs torch: pip install 'jaxprune[torch]'") from err
    return torch


def check_module(module: object, where: str) -> None:
    """Refuse anything but a ``torch.nn.Module`` where the bridge needs one
    (a state_dict is the usual mistake: the layouts come from the layer types)."""
    torch = import_torch()
    if isinstance(module, torch.nn.Module):
        return
    if isinstance(module, Mapping):
        raise TypeError(f"{where}: expected a torch.nn.Module, got a {type(module).__name__} (a state_dict?): build "
                        "the module and load the state_dict into it (module.load_state_dict(state_dict)), then "
                        "pass the module")
    raise TypeError(f"{where}: expected a torch.nn.Module, got {type(module).__name__}")


def _dtype_name(dtype: object) -> str:
    return str(dtype).replace("torch.", "")


def to_jax(tensor: torch.Tensor, *, copy: bool = False) -> jax.Array:
    """A torch tensor as a JAX array (zero-copy where possible; see the module doc).

    Args:
      tensor: any torch tensor or ``nn.Parameter`` (detached here; gradients
        are not tracked across frameworks).
      copy: return a snapshot that shares no memory with ``tensor``.

    >>> import torch
    >>> from jaxprune import interop
    >>> interop.to_jax(torch.arange(6, dtype=torch.float32).reshape(2, 3)[:, ::2])
    Array([[0., 2.],
           [3., 5.]], dtype=float32)
    """
    torch = import_torch()
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"to_jax expects a torch.Tensor, got {type(tensor).__name__}")
    name = _dtype_name(tensor.dtype)
    if name not in _SHARED_DTYPES and name not in _WIDE_DTYPES:
        raise TypeError(
            f"to_jax: unsupported dtype {tensor.dtype}; supported: {', '.join(_SHARED_DTYPES)}, "
            "float64 and int64 (64-bit with JAX_ENABLE_X64, else narrowed to 32-bit)"
        )
    t = tensor.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.device.type != "cpu":
        _check_backend(t)
    if name in _WIDE_DTYPES and jax.dtypes.canonicalize_dtype(jnp.int64) != jnp.int64:  # x64 off
        return jnp.asarray(_from_dlpack(t), _WIDE_DTYPES[name])  # jax narrows these anyway; say so explicitly
    array = _from_dlpack(t)
    if copy and _shares_memory(array, t):
        # The copy is torch's (a memcpy): jnp.array(copy=True) would compile a kernel per shape.
        array = _from_dlpack(t.clone(memory_format=torch.contiguous_format))
    return array


def _from_dlpack(t: torch.Tensor) -> jax.Array:
    try:
        return jax.dlpack.from_dlpack(t)
    except Exception:  # noqa: BLE001 - non-compact strides (step slices, expand): copy once
        return jax.dlpack.from_dlpack(t.contiguous())


def _shares_memory(array: jax.Array, t: torch.Tensor) -> bool:
    if t.numel() == 0:
        return False
    try:
        return array.unsafe_buffer_pointer() == t.data_ptr()
    except Exception:  # noqa: BLE001 - some backends cannot report a pointer: assume shared
        return True


def _check_backend(t: torch.Tensor) -> None:
    platform = "gpu" if t.device.type == "cuda" else t.device.type
    try:
        available = jax.devices(platform)
    except RuntimeError:
        available = []
    if not available:
        raise RuntimeError(
            f"to_jax: the tensor is on {t.device}, but JAX has no {platform} backend "
            f"(JAX devices: {jax.devices()}). Install a JAX build for it (for CUDA: pip install 'jax[cuda12]') "
            "or move the tensor with .cpu() first."
        )


def to_torch(array: jax.Array | np.ndarray, *, copy: bool = False) -> torch.Tensor:
    """A JAX (or NumPy) array as a torch tensor (zero-copy where possible).

    The result shares memory with ``array`` unless ``copy=True``: do not modify
    it in place (JAX assumes its arrays never change).

    >>> import jax.numpy as jnp
    >>> from jaxprune import interop
    >>> interop.to_torch(jnp.array([True, False]))
    tensor([ True, False])
    """
    torch = import_torch()
    if isinstance(array, np.ndarray):
        array = jax.device_put(array)  # not jnp.asarray, which compiles a copy per shape
    if not isinstance(array, jax.Array):
        raise TypeError(f"to_torch expects a jax.Array or numpy array, got {type(array).__name__}")
    if len(array.devices()) > 1:
        raise ValueError(
            f"to_torch: the array is sharded over {len(array.devices())} devices; DLPack moves one buffer. "
            "Convert its shards (array.addressable_shards[i].data) one by one."
        )
    name = str(array.dtype)
    if name not in _SHARED_DTYPES and name not in ("float64", "int64"):
        raise TypeError(f"to_torch: unsupported dtype {array.dtype}; supported: {', '.join(_SHARED_DTYPES)}, "
                        "float64, int64")
    tensor = torch.from_dlpack(array)
    return tensor.clone() if copy else tensor
