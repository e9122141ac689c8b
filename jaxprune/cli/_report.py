"""``jaxprune report``: zeros per tensor and all-zero slices along each dim, of any checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._checkpoints import read_checkpoint
from ._prune import Weights
from ._text import fmt_shape, natural_key, print_table


def _zero_slices(a: np.ndarray) -> list[dict[str, int]]:
    if a.ndim < 2 or not a.size or not (jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == np.bool_):
        return []  # vectors have no slices worth counting; integer buffers are not weights
    zero = a == 0
    return [{"dim": dim, "zero": int(np.all(zero, axis=tuple(d for d in range(a.ndim) if d != dim)).sum()),
             "total": int(a.shape[dim])} for dim in range(a.ndim)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The report's document (what :func:`show` prints, or ``--json``)."""
    ckpt = read_checkpoint(args.file, args.key)
    weights = Weights.of(ckpt, args.file)
    rows = []
    for name in sorted(weights.dense, key=natural_key):
        a = weights.effective(name)
        zeros = int(a.size - np.count_nonzero(a))
        rows.append({"name": name, "pair": name in weights.masks, "shape": list(a.shape), "dtype": str(a.dtype),
                     "zeros": zeros, "size": int(a.size), "sparsity": zeros / a.size if a.size else 0.0,
                     "zero_slices": _zero_slices(a)})
    zeros = sum(r["zeros"] for r in rows)
    size = sum(r["size"] for r in rows)
    return {"command": "report", "file": args.file, "format": ckpt.format, "tensors": rows,
            "total": {"zeros": zeros, "size": size, "sparsity": zeros / size if size else 0.0}}


def show(doc: Mapping[str, Any]) -> None:
    """The report as a table."""
    header = ["tensor", "shape", "dtype", "zeros", "size", "sparsity", "all-zero slices"]
    rows = []
    for r in doc["tensors"]:
        slices = ", ".join(f"dim{s['dim']} {s['zero']}/{s['total']}" for s in r["zero_slices"])
        name = f"{r['name']} (orig*mask)" if r["pair"] else r["name"]
        rows.append([name, fmt_shape(r["shape"]), r["dtype"], f"{r['zeros']:,}", f"{r['size']:,}",
                     f"{r['sparsity']:.2%}", slices])
    t = doc["total"]
    rows.append(["total", "", "", f"{t['zeros']:,}", f"{t['size']:,}", f"{t['sparsity']:.2%}", ""])
    print_table(header, rows, right={3, 4, 5})
