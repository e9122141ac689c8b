"""``jaxprune prune``: parse the request, validate the paths, compute the masks, write, report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

from .. import _state_dicts
from .._files import atomic_outputs
from .._patterns import n_m_violations, resolve_axis
from .._plan import match_patterns
from ._checkpoints import Checkpoint, checkpoint_writer, file_format, read_checkpoint, torch_module
from ._errors import CliError
from ._spec import Pattern, Rule, parse_amount, parse_rule
from ._text import Progress, escape, first_line, fmt_shape, natural_key, print_table

MAX_SEED = 2**32 - 1  # jax.random.key(seed) is the same with and without x64 in [0, 2**32)
PROGRESS_MIN_TENSORS = 20  # matched tensors: below that a run is too short to need a bar


@dataclasses.dataclass(frozen=True)
class Request:
    """What the command line asks for, validated."""

    rules: list[Rule]
    global_amount: int | float | None
    global_method: str | None
    seed: int | None


@dataclasses.dataclass
class Weights:
    """A checkpoint seen as weights and earlier masks: ``*_orig``/``*_mask`` pairs collapse to their name."""

    dense: dict[str, np.ndarray]  # dense values (``*_orig`` for pairs)
    masks: dict[str, np.ndarray]  # bool keep-masks of earlier pruning

    @classmethod
    def of(cls, ckpt: Checkpoint, path: str) -> Weights:
        try:
            dense, stored = _state_dicts.split_pairs(ckpt.tensors)
        except ValueError as err:
            raise CliError(f"{path!r}: {err}") from None
        return cls(dense, {name: np.asarray(_state_dicts.kept(m)) for name, m in stored.items()})

    def effective(self, name: str) -> np.ndarray:
        """``orig * mask`` in the tensor's dtype, as torch's forward pre-hook computes it."""
        w = self.dense[name]
        if name not in self.masks:
            return w
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in torch, without a warning
            return w * self.masks[name].astype(w.dtype)


def parse_request(args: argparse.Namespace) -> Request:
    """The rules, ``--global`` and ``--seed``, checked against each other."""
    global_amount = None
    if args.global_amount is not None:
        try:
            global_amount = parse_amount(args.global_amount)
            jp.GlobalUnstructured(global_amount)
        except (ValueError, TypeError) as err:
            raise CliError(f"--global {args.global_amount!r}: {err}") from None
    rules: list[Rule] = []
    for text in args.rule:
        try:
            rule = parse_rule(text, needs_amount=global_amount is None)
        except ValueError as err:
            raise CliError(str(err)) from None
        if rule.pattern in [r.pattern for r in rules]:
            raise CliError(f"--rule pattern {rule.pattern.text!r} is given twice")
        rules.append(rule)
    global_method = None if global_amount is None else _global_method(rules, str(args.global_amount))
    random = [r for r in rules if r.spec.method.random]
    if args.seed is None and random:
        raise CliError(f"--seed N is needed: --rule {random[0].text!r} is random (masks are drawn from "
                       "jax.random.key(N))")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise CliError(f"--seed {args.seed} is out of range (0 to {MAX_SEED})")
    return Request(rules, global_amount, global_method, args.seed)


def _global_method(rules: list[Rule], amount_text: str) -> str:
    method = None
    for rule in rules:
        if rule.spec.method.name == "skip":
            continue
        if not rule.spec.method.global_ok:
            raise CliError(f"--rule {rule.text}: --global ranks entries; its rules must be l1 or random "
                           f"(unstructured), got {rule.spec.method.name}")
        if rule.spec.amount is not None:
            raise CliError(f"--rule {rule.text}: with --global the amount is --global's ({amount_text}); write "
                           f"the SPEC without one, e.g. {rule.spec.method.name}")
        if method not in (None, rule.spec.method.name):
            raise CliError(f"--global ranks all its tensors with one method, got both {method} and "
                           f"{rule.spec.method.name}")
        method = rule.spec.method.name
    return method or "l1"


def _same_file(a: str, b: str) -> bool:
    """The same file after symlinks, ``..`` and hard links (inode when both exist, real path otherwise)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_paths(args: argparse.Namespace) -> dict[str, str]:
    """``{output path: format}``; refuse a folder that is missing and any output that is another file's.

    OUT may be IN (written atomically, so IN is read whole first); ``--masks``
    may be neither IN nor OUT.
    """
    outputs = [("output", args.output)] + ([("--masks", args.masks)] if args.masks is not None else [])
    formats = {}
    for what, path in outputs:
        formats[path] = file_format(path, what, writing=True)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CliError(f"{what} folder {os.path.dirname(path) or '.'!r} does not exist (for {path!r})")
        if os.path.isdir(path):
            raise CliError(f"{what} {path!r} is a directory")
        if formats[path] == "torch":
            torch_module(f"writing {path!r} (a torch file)")  # fail before any work when torch is missing
    if args.masks is not None:
        if _same_file(args.masks, args.input):
            raise CliError(f"--masks {args.masks!r} is the same file as the input {args.input!r}: writing the "
                           "masks there would destroy it")
        if _same_file(args.masks, args.output):
            raise CliError(f"--masks {args.masks!r} is the same file as the output {args.output!r}")
    return formats


def plan(weights: Weights, request: Request) -> dict[str, Rule]:
    """``{name: rule}`` for the tensors a rule (not ``skip``) prunes, through the one shared matcher."""
    names = sorted(weights.dense, key=natural_key)
    try:
        matches = match_patterns(
            names, {r.pattern: r for r in request.rules},
            eligible=lambda i, pattern: cast(Pattern, pattern).admits(weights.dense[names[i]].ndim),
        )
    except (ValueError, TypeError) as err:
        raise CliError(f"--rule: {err}") from None
    chosen = {names[i]: rule for i, _, rule in matches if rule.spec.method.name != "skip"}
    for name, rule in chosen.items():
        w = weights.dense[name]
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise CliError(f"tensor {name!r} is {w.dtype}, not floating, but --rule {rule.pattern.text!r} matches "
                           f"it; only floating tensors can be pruned (exclude it with an earlier --rule "
                           f"'{name}=skip' or a narrower pattern)")
    return chosen


def compute_masks(weights: Weights, chosen: Mapping[str, Rule], request: Request) -> dict[str, np.ndarray]:
    """The new masks, through ``jp.prune_tree``: one call per tensor (so progress can show), one for
    the ``--global`` group."""
    group = list(chosen) if request.global_amount is not None else []
    singles = [name for name in chosen if not group]
    steps = len(singles) + (1 if group else 0)
    progress = Progress(steps, sys.stderr, sys.stderr.isatty() and len(chosen) >= PROGRESS_MIN_TENSORS)
    out: dict[str, np.ndarray] = {}
    try:
        # x64 so float64 tensors rank exactly; keys in [0, 2**32) are the same with and without it.
        with jax.enable_x64(True):
            # jax.random.key(seed)'s own words, wrapped: the same key without compiling jax's seeding kernel.
            words: Any = np.array([0, request.seed or 0], np.uint32)  # wrap_key_data takes NumPy too
            key = None if request.seed is None else jax.random.wrap_key_data(words)
            for i, name in enumerate(singles):
                progress.show(i, name)
                out[name] = _prune_one(key, weights, name, chosen[name])
            if group:
                progress.show(len(singles), f"global group of {len(group)} tensors")
                out.update(_prune_group(key, weights, group, request))
            progress.show(steps, "done")
    finally:
        progress.close()
    return out


def _defaults(weights: Weights, names: list[str]) -> dict[str, Any] | None:
    if not any(name in weights.masks for name in names):
        return None
    return {name: weights.masks.get(name) for name in names}


def _prune_one(key: jax.Array | None, weights: Weights, name: str, rule: Rule) -> np.ndarray:
    method = rule.spec.build()
    # NumPy arrays: jaxprune's host path prunes them without compiling a kernel per shape.
    params = {name: weights.effective(name)}
    try:
        masks = jp.prune_tree(key, params, lambda path, leaf: method, default_masks=_defaults(weights, [name]))
    except (ValueError, TypeError, IndexError) as err:
        reason = first_line(str(err)).removeprefix(f"rule for {name!r}: ")
        raise CliError(f"tensor {name!r} {fmt_shape(params[name].shape)} with {rule.spec.text!r}: {reason}") from None
    return np.asarray(masks[name])


def _prune_group(key: jax.Array | None, weights: Weights, group: list[str], request: Request) -> dict[str, np.ndarray]:
    assert request.global_amount is not None and request.global_method is not None  # a --global request
    rule = jp.GlobalUnstructured(request.global_amount, method=request.global_method)
    params = {name: weights.effective(name) for name in group}
    try:
        masks = jp.prune_tree(key, params, lambda path, leaf: rule, default_masks=_defaults(weights, group))
    except (ValueError, TypeError, IndexError) as err:
        raise CliError(f"--global {request.global_amount!r} over {len(group)} tensors: "
                       f"{first_line(str(err))}") from None
    return {name: np.asarray(masks[name]) for name in group}


def output_tensors(weights: Weights, masks: Mapping[str, np.ndarray], torch_reparam: bool) -> dict[str, np.ndarray]:
    """What OUT holds: ``*_orig``/``*_mask`` pairs, or the effective (pruned) weights."""
    if torch_reparam:
        return _state_dicts.join_pairs(weights.dense, masks, as_mask=lambda name, m, w: m.astype(w.dtype))
    # Pruned entries exactly 0 (even NaN or inf ones), every dtype kept as it is.
    return {name: np.where(masks[name], w, np.zeros((), w.dtype)) if name in masks else w
            for name, w in weights.dense.items()}


def write_outputs(args: argparse.Namespace, ckpt: Checkpoint, out: Mapping[str, np.ndarray],
                  masks: Mapping[str, np.ndarray]) -> None:
    """OUT (and MASKS) written together, atomically; SIGTERM and SIGHUP clean up as Ctrl-C does."""
    metadata = ckpt.metadata if ckpt.metadata else {"format": "pt"}
    with atomic_outputs(handle_signals=True) as add:
        add(args.output, checkpoint_writer(args.output, out, metadata=metadata, wrapper=ckpt.wrapper, key=ckpt.key))
        if args.masks is not None:
            add(args.masks, checkpoint_writer(args.masks, masks))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole command; returns the document that :func:`show` prints (or ``--json``)."""
    request = parse_request(args)
    check_paths(args)
    ckpt = read_checkpoint(args.input, args.key)
    weights = Weights.of(ckpt, args.input)
    chosen = plan(weights, request)
    masks = {**weights.masks, **compute_masks(weights, chosen, request)}
    out = output_tensors(weights, masks, args.torch_reparam)
    write_outputs(args, ckpt, out, masks)
    return _document(args, request, weights, chosen, masks, ckpt, len(out))


def _row(name: str, w: np.ndarray, rule: Rule | None, mask: np.ndarray | None, request: Request) -> dict[str, Any]:
    pruned = 0 if mask is None else int(mask.size - np.count_nonzero(mask))
    if rule is not None and request.global_amount is not None:
        method = f"global {rule.spec.method.name}:{request.global_amount}"
    else:
        method = rule.spec.text if rule is not None else "earlier mask" if mask is not None else None
    if rule is not None and mask is not None and rule.spec.method.structured:
        dim = rule.spec.dim % w.ndim
        axes = tuple(d for d in range(w.ndim) if d != dim)
        unit, units_pruned, units_total = f"dim-{dim} slices", int((~np.any(mask, axis=axes)).sum()), w.shape[dim]
    elif rule is not None and mask is not None and rule.spec.method.name == "block":
        spec = cast(jp.BlockSparse, rule.spec.build())
        unit, units_total = f"{'x'.join(map(str, spec.block))} blocks", spec.units(w.shape)
        units_pruned = int(spec.pruned_units(jnp.asarray(mask)))
    else:
        unit, units_pruned, units_total = "entries", pruned, w.size
    row = {"name": name, "shape": list(w.shape), "dtype": str(w.dtype), "method": method, "unit": unit,
           "units_pruned": units_pruned, "units_total": int(units_total), "pruned": pruned,
           "size": int(w.size), "sparsity": pruned / w.size if w.size else 0.0}
    if rule is not None and mask is not None and rule.spec.method.name == "nm":
        row["pattern"] = n_m_note(cast(jp.NMSparse, rule.spec.build()), mask)
    return row


def n_m_note(spec: jp.NMSparse, mask: np.ndarray) -> str:
    """``"2:4 along axis 1: valid"`` (or how many groups break it)."""
    axis = resolve_axis(spec.axis, mask.shape)
    bad = n_m_violations(mask, cast(int, spec.n), spec.m, axis=axis)
    verdict = "valid" if not bad else f"{bad:,} groups keep more than {spec.n}"
    return f"{spec.n}:{spec.m} along axis {axis}: {verdict}"


def _document(args: argparse.Namespace, request: Request, weights: Weights, chosen: Mapping[str, Rule],
              masks: Mapping[str, np.ndarray], ckpt: Checkpoint, n_out: int) -> dict[str, Any]:
    rows = [_row(name, weights.dense[name], chosen.get(name), masks.get(name), request)
            for name in sorted(weights.dense, key=natural_key)]
    total_pruned = sum(r["pruned"] for r in rows)
    total_size = sum(r["size"] for r in rows)
    kind = "torch *_orig/*_mask pairs" if args.torch_reparam else "pruned weights"
    if ckpt.key is not None and file_format(args.output, "output", writing=True) == "torch":
        kind += f", inside the checkpoint's {ckpt.key!r}"
    return {
        "command": "prune", "input": args.input, "output": args.output, "output_kind": kind,
        "output_tensors": n_out, "masks": args.masks, "seed": request.seed, "global": request.global_amount,
        "rules": [{"pattern": r.pattern.text, "spec": r.spec.text} for r in request.rules],
        "tensors": rows,
        "total": {"pruned": total_pruned, "size": total_size,
                  "sparsity": total_pruned / total_size if total_size else 0.0},
    }


def show(doc: Mapping[str, Any]) -> None:
    """The table and the files written."""
    header = ["tensor", "shape", "dtype", "method", "pruned units", "sparsity"]
    rows = []
    for r in doc["tensors"]:
        units = f"{r['units_pruned']:,}/{r['units_total']:,} {r['unit']}" if r["method"] else "-"
        method = r["method"] or "-"
        method += f" ({r['pattern']})" if r.get("pattern") else ""
        rows.append([r["name"], fmt_shape(r["shape"]), r["dtype"], method, units, f"{r['sparsity']:.2%}"])
    total = doc["total"]
    rows.append(["total", "", "", "", f"{total['pruned']:,}/{total['size']:,} entries", f"{total['sparsity']:.2%}"])
    print_table(header, rows, right={5})
    print(f"wrote {escape(doc['output'])} ({doc['output_kind']}, {doc['output_tensors']} tensors)")
    if doc["masks"]:
        n = sum(r["method"] is not None for r in doc["tensors"])
        print(f"wrote {escape(doc['masks'])} (bool masks, {n} tensors)")
