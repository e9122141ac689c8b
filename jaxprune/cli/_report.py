"""``jaxprune report``: zeros per tensor and all-zero slices along each dim, of any checkpoint
(and, asked for, N:M validity and all-zero blocks)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, cast

import jax.numpy as jnp
import numpy as np

import jaxprune as jp

from .._patterns import check_block
from ._checkpoints import read_checkpoint
from ._errors import CliError
from ._prune import Weights, n_m_note
from ._spec import parse_block, parse_spec
from ._text import fmt_shape, natural_key, print_table


def _zero_slices(a: np.ndarray) -> list[dict[str, int]]:
    if a.ndim < 2 or not a.size or not (jnp.issubdtype(a.dtype, jnp.floating) or a.dtype == np.bool_):
        return []  # vectors have no slices worth counting; integer buffers are not weights
    zero = a == 0
    return [{"dim": dim, "zero": int(np.all(zero, axis=tuple(d for d in range(a.ndim) if d != dim)).sum()),
             "total": int(a.shape[dim])} for dim in range(a.ndim)]


def _patterns(args: argparse.Namespace) -> tuple[jp.NMSparse | None, tuple[int, ...] | None]:
    """``--nm`` and ``--block``, parsed with the rule grammar's own parsers."""
    nm = block = None
    if getattr(args, "nm", None) is not None:
        try:
            nm = cast(jp.NMSparse, parse_spec(f"nm:{args.nm}").build())
        except ValueError as err:
            raise CliError(f"--nm {args.nm!r}: {str(err).split(': ', 1)[-1]}") from None
    if getattr(args, "block", None) is not None:
        try:
            block = check_block(parse_block(args.block))
        except (ValueError, TypeError) as err:
            raise CliError(f"--block {args.block!r}: {err}") from None
    return nm, block


def _pattern_notes(a: np.ndarray, nm: jp.NMSparse | None, block: tuple[int, ...] | None) -> dict[str, str]:
    """``"2:4 along axis 1: valid"`` and ``"3/8 4x4 blocks zero"``, where the tensor has that axis or dims."""
    notes = {}
    if nm is not None and a.ndim >= 2 and a.size:  # (vectors are no matmul weights, as for zero slices)
        try:
            notes["nm"] = n_m_note(nm, a)
        except (ValueError, IndexError):
            pass  # no such axis, or its size is not a multiple of M: not an N:M tensor
    if block is not None and len(block) == a.ndim and a.size:
        spec = jp.BlockSparse(0, block)
        zero = int(spec.pruned_units(jnp.asarray(a != 0)))
        notes["block"] = f"{zero:,}/{spec.units(a.shape):,} {'x'.join(map(str, block))} blocks zero"
    return notes


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The report's document (what :func:`show` prints, or ``--json``)."""
    nm, block = _patterns(args)
    ckpt = read_checkpoint(args.file, args.key)
    weights = Weights.of(ckpt, args.file)
    rows = []
    for name in sorted(weights.dense, key=natural_key):
        a = weights.effective(name)
        zeros = int(a.size - np.count_nonzero(a))
        rows.append({"name": name, "pair": name in weights.masks, "shape": list(a.shape), "dtype": str(a.dtype),
                     "zeros": zeros, "size": int(a.size), "sparsity": zeros / a.size if a.size else 0.0,
                     "zero_slices": _zero_slices(a), **_pattern_notes(a, nm, block)})
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
        slices = "; ".join(x for x in (slices, r.get("nm"), r.get("block")) if x)
        rows.append([name, fmt_shape(r["shape"]), r["dtype"], f"{r['zeros']:,}", f"{r['size']:,}",
                     f"{r['sparsity']:.2%}", slices])
    t = doc["total"]
    rows.append(["total", "", "", f"{t['zeros']:,}", f"{t['size']:,}", f"{t['sparsity']:.2%}", ""])
    print_table(header, rows, right={3, 4, 5})
