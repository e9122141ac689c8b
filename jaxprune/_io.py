"""Saving and loading masks (and any tree of arrays) as safetensors files.

The format: one tensor per leaf, named by the leaf's dotted path (see
:func:`path_str`), masks as ``bool``. A file written from a mask tree, the
params, or a whole optimizer state loads back into a tree of the same
structure (``like``). Needs the ``safetensors`` package (extra ``[io]``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from ._trees import path_str
from ._typing import PyTree


def save_tree(path: str | os.PathLike[str], tree: PyTree) -> None:
    """Write every array leaf of ``tree`` (None leaves are skipped) to ``path``.

    >>> import os, tempfile, jax.numpy as jnp, jaxprune as jp
    >>> masks = {"conv": {"kernel": jnp.array([True, False]), "bias": None}}
    >>> path = os.path.join(tempfile.mkdtemp(), "masks.safetensors")
    >>> jp.save_tree(path, masks)
    >>> jp.load_tree(path, like=masks)["conv"]["kernel"]
    Array([ True, False], dtype=bool)
    """
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for key_path, leaf in tree_util.tree_leaves_with_path(tree):
        name = path_str(key_path) or "."
        if name in tensors:
            raise ValueError(f"two leaves share the path {name!r}; cannot name them apart in the file")
        array = np.asarray(jax.device_get(leaf))
        tensors[name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # keeps 0-d as 0-d
    tmp = f"{os.fspath(path)}.tmp"
    save_file(tensors, tmp)
    os.replace(tmp, path)


def load_tree(path: str | os.PathLike[str], like: PyTree) -> PyTree:
    """Read a file written by :func:`save_tree` into the structure of ``like``.

    Raises ``ValueError`` when a leaf of ``like`` is missing from the file or
    has another shape or dtype there, or when the file has extra tensors.
    """
    from safetensors.numpy import load_file

    stored = load_file(os.fspath(path))
    named, treedef = tree_util.tree_flatten_with_path(like)
    out = []
    for key_path, leaf in named:
        name = path_str(key_path) or "."
        if name not in stored:
            raise ValueError(f"{os.fspath(path)!r} has no tensor {name!r}")
        value = stored.pop(name)
        expected = (tuple(np.shape(leaf)), np.dtype(jnp.asarray(leaf).dtype))
        if (value.shape, value.dtype) != expected:
            raise ValueError(f"tensor {name!r} in {os.fspath(path)!r} is {value.dtype}{list(value.shape)}, "
                             f"expected {expected[1]}{list(expected[0])}")
        out.append(jnp.asarray(value))
    if stored:
        raise ValueError(f"{os.fspath(path)!r} has tensors the tree lacks: {sorted(stored)[:5]}")
    return jax.tree.unflatten(treedef, out)
