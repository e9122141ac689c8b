"""Saving and loading masks (and any tree of arrays) as safetensors files.

The format: one tensor per leaf, named by the leaf's dotted path (see
:func:`path_str`), masks as ``bool``. A file written from a mask tree, the
params, or a whole optimizer state loads back into a tree of the same
structure (``like``). Pure NumPy (:mod:`jaxprune._safetensors`): no extra
package is needed.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from . import _safetensors
from ._files import atomic_write
from ._trees import path_str
from ._typing import PyTree


def _host(leaf: Any) -> np.ndarray:
    """The leaf as the NumPy array that is stored: the same conversion for saving and loading."""
    return _safetensors.contiguous(jax.device_get(leaf))


def save_tree(path: str | os.PathLike[str], tree: PyTree) -> None:
    """Write every array leaf of ``tree`` (None leaves are skipped) to ``path``.

    Leaves may be jax or NumPy arrays of any dtype safetensors holds
    (bfloat16 and float8 included) or Python scalars. The file is written
    beside ``path`` and renamed into place, so a failure leaves no file behind.

    >>> import os, tempfile, jax.numpy as jnp, jaxprune as jp
    >>> masks = {"conv": {"kernel": jnp.array([True, False]), "bias": None}}
    >>> path = os.path.join(tempfile.mkdtemp(), "masks.safetensors")
    >>> jp.save_tree(path, masks)
    >>> jp.load_tree(path, like=masks)["conv"]["kernel"]
    Array([ True, False], dtype=bool)
    """
    tensors: dict[str, np.ndarray] = {}
    for key_path, leaf in tree_util.tree_leaves_with_path(tree):
        name = path_str(key_path) or "."
        if name in tensors:
            raise ValueError(f"two leaves share the path {name!r}; cannot name them apart in the file")
        tensors[name] = _host(leaf)
        if _safetensors.dtype_name(tensors[name].dtype) is None:
            raise ValueError(f"leaf {name!r} has dtype {tensors[name].dtype}, which safetensors cannot store "
                             f"(it holds {', '.join(_safetensors.DTYPES)})")
    atomic_write(path, lambda f: _safetensors.write(f, tensors))


def load_tree(path: str | os.PathLike[str], like: PyTree) -> PyTree:
    """Read a file written by :func:`save_tree` into the structure of ``like``.

    Each leaf comes back as the kind of its ``like`` leaf: a jax array for a
    jax array, a NumPy array for a NumPy array, a Python scalar for one.

    Raises ``ValueError`` naming the file when it is not valid safetensors,
    when a leaf of ``like`` is missing from the file or has another shape or
    dtype there, or when the file has extra tensors.

    >>> import os, tempfile, numpy as np, jaxprune as jp
    >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
    >>> jp.save_tree(path, {"step": 3, "w": np.array([0.5, 1.0])})
    >>> tree = jp.load_tree(path, like={"step": 0, "w": np.zeros(2)})
    >>> tree["step"], tree["w"].dtype.name, tree["w"].tolist()
    (3, 'float64', [0.5, 1.0])
    """
    where = os.fspath(path)
    stored, _ = _safetensors.read(where)
    named, treedef = tree_util.tree_flatten_with_path(like)
    out = []
    for key_path, leaf in named:
        name = path_str(key_path) or "."
        if name not in stored:
            raise ValueError(f"{where!r} has no tensor {name!r}")
        value = stored.pop(name)
        shape, dtype = _shape_dtype(leaf)
        if (value.shape, value.dtype) != (shape, dtype):
            raise ValueError(f"tensor {name!r} in {where!r} is {value.dtype}{list(value.shape)}, "
                             f"expected {dtype}{list(shape)}")
        out.append(_like(value, leaf))
    if stored:
        raise ValueError(f"{where!r} has tensors the tree lacks: {sorted(stored)[:5]}")
    return jax.tree.unflatten(treedef, out)


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """What :func:`_host` gives for ``leaf``, without copying a device array to the host."""
    dtype = leaf.dtype if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) else np.asarray(leaf).dtype
    return tuple(np.shape(leaf)), np.dtype(dtype)


def _like(value: np.ndarray, leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        return jnp.asarray(value)
    if isinstance(leaf, (bool, int, float, complex)):
        return type(leaf)(value.item())
    if isinstance(leaf, np.generic):
        return value[()]
    return value.copy()  # a writable array that owns its memory, not a view of the file's bytes
