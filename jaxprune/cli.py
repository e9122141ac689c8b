"""The ``jaxprune`` command: prune checkpoints from the shell, report sparsity, run the demo.

Three subcommands (``jaxprune --help``, ``jaxprune COMMAND --help``)::

    jaxprune prune IN -o OUT --rule PATTERN=SPEC [--rule ...] --seed N
                   [--global AMOUNT] [--masks MASKS] [--torch-reparam] [--json]
    jaxprune report FILE [--json]
    jaxprune demo [--seed 0] [--steps 2000] [--plot jaxprune_demo.png]

Checkpoints are flat ``{name: tensor}`` files: ``.safetensors`` (read and
written here without torch or the safetensors package, bfloat16 included) or
torch ``.pt``/``.pth``/``.bin`` state_dicts (need torch; read with
``torch.load(weights_only=True)``, so a file that needs pickled code is
refused, never run). A state_dict with ``<name>_orig``/``<name>_mask`` pairs
(what torch's pruning saves) is understood: the tensor is ``<name>``, its mask
the earlier pruning, and ``prune`` prunes it further as torch's
``PruningContainer`` would.

SPEC is ``METHOD[:AMOUNT][:key=value...]``, one of::

    l1:AMOUNT                            L1 unstructured (alias l1-unstructured)
    random:AMOUNT                        random unstructured (alias random-unstructured)
    random-structured:AMOUNT[:dim=D]     random slices along dim (default -1, as torch)
    ln-structured:AMOUNT:n=N[:dim=D]     the slices of lowest n-norm; n is a number,
                                         inf, -inf, fro or nuc
    identity                             prunes nothing (an all-True mask, as torch's)
    skip                                 leave the tensors this pattern matches alone

AMOUNT is an integer count of units (``l1:3``: three entries) or, when it has
a ``.`` or an exponent, a fraction (``l1:0.5``: half), exactly as the library.
Patterns are globs over the tensor names (``*`` crosses dots); the first
matching ``--rule`` wins; a pattern that matches nothing is an error.
``--global AMOUNT`` ranks every matched tensor together (torch's
``global_unstructured``); its rules are then ``l1`` or ``random`` without an
amount (one method for all).

The PRNG key is ``jax.random.key(SEED)`` and every tensor draws from
``jp.leaf_key(key, name)``, so the masks equal
``interop.prune_module(jax.random.key(SEED), module, rules)`` on the module
the state_dict came from. Same input, rules and seed: byte-identical outputs.
Outputs are written to temporary files beside them and renamed into place
only when all are complete, so OUT may be IN itself, and a failed run leaves
no file behind. Bad input is one line on stderr, ``jaxprune: error: ...``,
and exit status 2.

>>> import os, tempfile, numpy as np
>>> from jaxprune.cli import main, write_checkpoint
>>> folder = tempfile.mkdtemp()
>>> write_checkpoint(os.path.join(folder, "in.safetensors"),
...                  {"fc.weight": np.array([[0.5, -2.0], [0.1, 3.0]], np.float32), "fc.bias": np.ones(2, np.float32)})
>>> main(["prune", os.path.join(folder, "in.safetensors"), "-o", os.path.join(folder, "out.safetensors"),
...       "--rule", "*.weight=l1:0.5", "--seed", "0"])  # doctest: +ELLIPSIS
tensor     shape   dtype    method  pruned units  sparsity
fc.bias    (2,)    float32  -       -                0.00%
fc.weight  (2, 2)  float32  l1:0.5  2/4 entries     50.00%
total                               2/6 entries     33.33%
wrote .../out.safetensors (pruned weights, 2 tensors)
0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import jaxprune as jp

__all__ = ("CliError", "main", "parse_spec", "read_checkpoint", "write_checkpoint")

PROG = "jaxprune"
MAX_SEED = 2**32 - 1  # jax.random.key(seed) is the same with and without x64 in [0, 2**32)
PROGRESS_MIN_TENSORS = 20
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


class CliError(Exception):
    """Bad input: printed as one line ``jaxprune: error: <message>``, exit status 2."""


# --------------------------------------------------------------------------
# SPEC parsing
# --------------------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclasses.dataclass(frozen=True)
class _Method:
    """What a SPEC's method takes: whether an amount, which ``key=value`` options."""

    name: str
    amount: bool  # takes an amount (required unless --global)
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    structured: bool = False


_METHODS = {
    m.name: m
    for m in (
        _Method("l1", amount=True),
        _Method("random", amount=True),
        _Method("random-structured", amount=True, options=("dim",), structured=True),
        _Method("ln-structured", amount=True, options=("n", "dim"), required=("n",), structured=True),
        _Method("identity", amount=False),
        _Method("skip", amount=False),
    )
}
_ALIASES = {"l1-unstructured": "l1", "random-unstructured": "random"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed SPEC: its text, method name, amount (None when absent) and options."""

    text: str
    method: str
    amount: int | float | None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def structured(self) -> bool:
        return _METHODS[self.method].structured

    @property
    def dim(self) -> int:
        return int(dict(self.options).get("dim", -1))

    def build(self) -> jp.PruningMethod | None:
        """The library's spec object (None for ``skip``); validates the amount and options."""
        opts = dict(self.options)
        if self.method == "l1":
            return jp.L1Unstructured(self.amount)
        if self.method == "random":
            return jp.RandomUnstructured(self.amount)
        if self.method == "random-structured":
            return jp.RandomStructured(self.amount, dim=opts.get("dim", -1))
        if self.method == "ln-structured":
            return jp.LnStructured(self.amount, n=opts["n"], dim=opts.get("dim", -1))
        if self.method == "identity":
            return jp.Identity()
        return None


def parse_amount(text: str) -> int | float:
    """An AMOUNT: an integer literal is a count, a decimal or exponent literal a fraction.

    >>> parse_amount("3"), parse_amount("0.5"), parse_amount("1e-1")
    (3, 0.5, 0.1)
    """
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    raise ValueError(f"amount {text!r} is not a number (an integer count like 3, or a fraction like 0.3)")


def _parse_norm(text: str) -> int | float | str:
    low = text.strip().lower()
    if low in ("inf", "+inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low in ("fro", "nuc"):
        return low
    try:
        return parse_amount(low)
    except ValueError:
        raise ValueError(f"n={text!r} is not a norm order (a number, inf, -inf, fro or nuc)") from None


def _parse_dim(text: str) -> int:
    if not _INT.fullmatch(text.strip()):
        raise ValueError(f"dim={text!r} is not an integer")
    return int(text)


_OPTION_PARSERS: dict[str, Callable[[str], Any]] = {"n": _parse_norm, "dim": _parse_dim}


def parse_spec(text: str, *, needs_amount: bool = True) -> Spec:
    """Parse ``METHOD[:AMOUNT][:key=value...]``; raise ``ValueError`` naming the SPEC.

    ``needs_amount=False`` (under ``--global``) accepts a method without an amount.
    The returned spec's :meth:`Spec.build` gives the library's method spec.

    >>> spec = parse_spec("ln-structured:0.3:n=2:dim=0")
    >>> spec.method, spec.amount, dict(spec.options)
    ('ln-structured', 0.3, {'n': 2, 'dim': 0})
    >>> spec.build()
    LnStructured(amount=0.3, n=2, dim=0)
    >>> parse_spec("l1:3").build()
    L1Unstructured(amount=3)
    >>> parse_spec("l1:0.5:dim=0")
    Traceback (most recent call last):
    ...
    ValueError: SPEC 'l1:0.5:dim=0': unknown option 'dim' (l1 takes no options)
    """
    where = f"SPEC {text!r}"
    parts = text.strip().split(":")
    name = parts[0].strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    if name not in _METHODS:
        known = ", ".join(list(_METHODS) + list(_ALIASES))
        raise ValueError(f"{where}: unknown method {parts[0].strip()!r} (known: {known})")
    method = _METHODS[name]
    rest = parts[1:]
    amount: int | float | None = None
    if rest and "=" not in rest[0]:
        if not method.amount:
            raise ValueError(f"{where}: {name} takes no amount, got {rest[0]!r}")
        try:
            amount = parse_amount(rest[0])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        rest = rest[1:]
    elif method.amount and needs_amount:
        raise ValueError(f"{where}: {name} needs an amount, e.g. {name}:0.3 (a fraction) or {name}:10 (a count)")
    options: dict[str, Any] = {}
    for part in rest:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise ValueError(f"{where}: expected key=value after the amount, got {part!r}")
        if key not in method.options:
            takes = f"takes {', '.join(method.options)}" if method.options else "takes no options"
            raise ValueError(f"{where}: unknown option {key!r} ({name} {takes})")
        if key in options:
            raise ValueError(f"{where}: option {key!r} given twice")
        try:
            options[key] = _OPTION_PARSERS[key](value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    for key in method.required:
        if key not in options:
            raise ValueError(f"{where}: {name} needs {key}=..., e.g. {name}:0.3:n=2:dim=0")
    spec = Spec(text.strip(), name, amount, tuple(options.items()))
    if amount is not None or not method.amount:
        try:
            spec.build()  # the library validates amount, dim type and n
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None
    return spec


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ``--rule PATTERN=SPEC``."""

    pattern: str
    spec: Spec


def parse_rule(text: str, *, needs_amount: bool = True) -> Rule:
    """``PATTERN=SPEC`` (split at the first ``=``).

    >>> parse_rule("*.weight=random-structured:0.25:dim=0").spec.build()
    RandomStructured(amount=0.25, dim=0)
    """
    pattern, eq, spec = text.partition("=")
    if not eq or not pattern.strip() or not spec.strip():
        raise ValueError(f"--rule {text!r}: expected PATTERN=SPEC, e.g. '*.weight=l1:0.5'")
    return Rule(pattern.strip(), parse_spec(spec, needs_amount=needs_amount))


# --------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------

_ST_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_ST_NAMES = {dtype: name for name, dtype in _ST_DTYPES.items()}
_MAX_HEADER = 100_000_000


@dataclasses.dataclass
class Checkpoint:
    """A flat checkpoint: ``{name: numpy array}`` in file order, and safetensors metadata."""

    tensors: dict[str, np.ndarray]
    format: str  # "safetensors" or "torch"
    metadata: dict[str, str] | None = None


def _format_of(path: str, what: str) -> str:
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    raise CliError(f"unknown format of {what} {path!r}: expected a .safetensors, .pt, .pth or .bin file")


def read_checkpoint(path: str) -> Checkpoint:
    """Read a ``.safetensors`` file (no torch needed) or a torch state_dict (``weights_only=True``).

    Raises :class:`CliError` with a one-line reason for anything it cannot read.

    >>> import os, tempfile, numpy as np, ml_dtypes
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> write_checkpoint(path, {"w": np.array([1.5, 0.0], ml_dtypes.bfloat16)})
    >>> w = read_checkpoint(path).tensors["w"]
    >>> w.dtype.name, w.tolist()
    ('bfloat16', [1.5, 0.0])
    """
    fmt = _format_of(path, "input")
    if not os.path.exists(path):
        raise CliError(f"cannot read {path!r}: no such file")
    if os.path.isdir(path):
        raise CliError(f"cannot read {path!r}: it is a directory")
    try:
        with open(path, "rb") as f:
            if fmt == "safetensors":
                return _read_safetensors(f, path)
            return _read_torch(f, path)
    except OSError as err:
        raise CliError(f"cannot read {path!r}: {err.strerror or err}") from None


def _read_safetensors(f: IO[bytes], path: str) -> Checkpoint:
    data = f.read()
    bad = f"{path!r} is not a valid safetensors file"
    if len(data) < 8:
        raise CliError(f"{bad}: too short ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > min(_MAX_HEADER, len(data) - 8):
        raise CliError(f"{bad}: header length {n} does not fit the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CliError(f"{bad}: the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise CliError(f"{bad}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CliError(f"{bad}: __metadata__ must map strings to strings")
    body = memoryview(data)[8 + n :]
    tensors: dict[str, np.ndarray] = {}
    spans = []
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except KeyError as err:
            if isinstance(info, dict) and "dtype" in info and err.args[0] == info["dtype"]:
                raise CliError(f"{bad}: tensor {name!r} has dtype {info['dtype']!r}, which jaxprune cannot "
                               f"read (supported: {', '.join(_ST_DTYPES)})") from None
            raise CliError(f"{bad}: tensor {name!r} lacks {err}") from None
        except (TypeError, ValueError):
            raise CliError(f"{bad}: tensor {name!r} has a malformed entry {info!r}") from None
        size = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(body) or end - begin != size * dtype.itemsize:
            raise CliError(f"{bad}: tensor {name!r} ({info['dtype']}{list(shape)}) has data offsets "
                           f"[{begin}, {end}] that do not fit")
        spans.append((begin, end))
        tensors[name] = np.frombuffer(body, dtype=dtype, count=size, offset=begin).reshape(shape)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise CliError(f"{bad}: tensor data overlap or leave a gap at byte {position}")
        position = end
    if position != len(body):
        raise CliError(f"{bad}: {len(body) - position} bytes after the last tensor")
    return Checkpoint(tensors, "safetensors", metadata)


def _torch(purpose: str) -> Any:
    try:
        import torch
    except ImportError:
        raise CliError(f"{purpose} needs torch: pip install 'jaxprune[torch]'") from None
    return torch


def _read_torch(f: IO[bytes], path: str) -> Checkpoint:
    import pickle

    torch = _torch(f"reading {path!r} (a torch file)")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            reason = ""
            if "WeightsUnpickler error:" in str(err):  # keep torch's reason, not its advice to allowlist the code
                reason = _first_line(str(err).split("WeightsUnpickler error:")[-1]).split(". ")[0].rstrip(".")
            raise CliError(
                f"refused {path!r}: it needs arbitrary pickled code to load, which jaxprune never runs "
                f"(torch.load weights_only=True){': ' + reason if reason else ''}"
            ) from None
        raise CliError(f"cannot read {path!r} as a torch checkpoint: {_first_line(str(err))}") from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for corrupt files
        raise CliError(f"cannot read {path!r} as a torch checkpoint: {type(err).__name__}: "
                       f"{_first_line(str(err))}") from None
    if not isinstance(state, Mapping):
        raise CliError(f"{path!r} holds a {type(state).__name__}, expected a state_dict (a dict of name -> tensor)")
    tensors = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CliError(f"{path!r}: entry {name!r} is not a tensor (type {type(value).__name__}); expected a "
                           "state_dict (name -> tensor). Extract the state_dict from a wrapping checkpoint first")
        tensors[name] = _torch_to_numpy(torch, value, name)
    return Checkpoint(tensors, "torch")


def _torch_to_numpy(torch: Any, t: Any, name: str) -> np.ndarray:
    t = t.detach()
    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise CliError(f"tensor {name!r}: unsupported tensor ({t.layout}, {t.dtype}, {t.device})")
    t = t.contiguous()
    special = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
               torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
               torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2)}
    try:
        if t.dtype in special:
            as_int, dtype = special[t.dtype]
            return t.view(as_int).numpy().view(dtype).copy()
        return t.numpy().copy()
    except (TypeError, RuntimeError) as err:
        raise CliError(f"tensor {name!r}: cannot convert {t.dtype} ({_first_line(str(err))})") from None


def _contiguous(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")  # np.ascontiguousarray makes 0-d arrays 1-d


def _numpy_to_torch(torch: Any, a: np.ndarray) -> Any:
    special = {np.dtype(ml_dtypes.bfloat16): (np.int16, torch.bfloat16),
               np.dtype(ml_dtypes.float8_e4m3fn): (np.uint8, torch.float8_e4m3fn),
               np.dtype(ml_dtypes.float8_e5m2): (np.uint8, torch.float8_e5m2)}
    a = _contiguous(a)
    if a.dtype in special:
        as_int, dtype = special[a.dtype]
        return torch.from_numpy(a.view(as_int).copy()).view(dtype)
    return torch.from_numpy(a.copy())


def _encode_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> list[bytes | memoryview]:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    chunks: list[bytes | memoryview] = []
    offset = 0
    for name in sorted(tensors):
        a = _contiguous(tensors[name])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        kind = _ST_NAMES.get(a.dtype)
        if kind is None:
            raise CliError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in safetensors by jaxprune")
        raw = memoryview(a.reshape(-1).view(np.uint8))
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return [len(text).to_bytes(8, "little"), text, *chunks]


def _write_to(f: IO[bytes], tensors: Mapping[str, np.ndarray], fmt: str,
              metadata: Mapping[str, str] | None) -> None:
    if fmt == "safetensors":
        for chunk in _encode_safetensors(tensors, metadata):
            f.write(chunk)
        return
    torch = _torch("writing a torch .pt file")
    state = {name: _numpy_to_torch(torch, tensors[name]) for name in sorted(tensors)}
    # A file object, not a path: torch names the archive after a path, and the temporary name would leak in.
    torch.save(state, f)


def write_checkpoint(path: str, tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``{name: array}`` as safetensors or a torch state_dict (by suffix), names sorted.

    Byte-identical for identical input (no timestamps). Written to a temporary
    file in the destination folder and renamed into place.
    """
    with _outputs() as add:
        add(path, tensors, _format_of(path, "output"), metadata)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[0]) if lines else ""


@contextlib.contextmanager
def _outputs() -> Iterator[Callable[[str, Mapping[str, np.ndarray], str, Mapping[str, str] | None], None]]:
    """Yield ``add(path, tensors, fmt, metadata)``: each output goes to a temporary file beside
    ``path``; all are renamed into place when the block succeeds, and removed otherwise."""
    pending: list[tuple[str, str]] = []

    def add(path: str, tensors: Mapping[str, np.ndarray], fmt: str, metadata: Mapping[str, str] | None) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".jaxprune-tmp", dir=folder)
        pending.append((tmp, path))
        with os.fdopen(fd, "wb") as f:
            _write_to(f, tensors, fmt, metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0o600; give the file the usual permissions

    try:
        yield add
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.remove(tmp)


def _check_output(path: str, what: str) -> str:
    fmt = _format_of(path, what)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{what} folder {os.path.dirname(path) or '.'!r} does not exist (for {path!r})")
    if os.path.isdir(path):
        raise CliError(f"{what} {path!r} is a directory")
    return fmt


# --------------------------------------------------------------------------
# Pairs (*_orig / *_mask) and effective weights
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _State:
    """A checkpoint seen as weights and masks: pairs collapse to their base name."""

    weights: dict[str, np.ndarray]  # dense values (``*_orig`` for pairs)
    masks: dict[str, np.ndarray]  # bool masks of earlier pruning

    def effective(self, name: str) -> np.ndarray:
        """``orig * mask`` in the tensor's dtype, as torch's forward pre-hook computes it."""
        w = self.weights[name]
        if name not in self.masks:
            return w
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in torch, without a warning
            return w * self.masks[name].astype(w.dtype)


def _split_pairs(tensors: Mapping[str, np.ndarray]) -> _State:
    weights: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in tensors:
            name = key[: -len("_orig")]
            mask = tensors[name + "_mask"]
            if mask.shape != value.shape:
                raise CliError(f"{name + '_mask'!r} has shape {mask.shape}, but {key!r} has {value.shape}")
            if name in tensors:
                raise CliError(f"the checkpoint has both {name!r} and the pair {key!r}/{name + '_mask'!r}")
            weights[name] = value
            masks[name] = mask != 0
        elif key.endswith("_mask") and key[: -len("_mask")] + "_orig" in tensors:
            continue
        else:
            weights[key] = value
    return _State(weights, masks)


def _is_floating(a: np.ndarray) -> bool:
    return bool(jnp.issubdtype(a.dtype, jnp.floating))


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(int(d) for d in shape))


def _dtype(a: np.ndarray) -> str:
    return str(a.dtype)


# --------------------------------------------------------------------------
# prune
# --------------------------------------------------------------------------


def _match(names: Sequence[str], rules: Sequence[Rule]) -> dict[str, Rule]:
    """First matching rule per name (glob; ``*`` crosses dots); a pattern that matches nothing raises."""
    import fnmatch

    chosen: dict[str, Rule] = {}
    matched: set[str] = set()
    won: set[str] = set()
    for name in names:
        hits = [rule for rule in rules if fnmatch.fnmatchcase(name, rule.pattern)]
        matched.update(rule.pattern for rule in hits)
        if hits:
            chosen[name] = hits[0]
            won.add(hits[0].pattern)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    for rule in rules:
        if rule.pattern not in matched:
            raise CliError(f"--rule pattern {rule.pattern!r} matches no tensor; the tensors are: {shown or '(none)'}")
        if rule.pattern not in won:
            raise CliError(f"--rule pattern {rule.pattern!r} never applies: an earlier --rule takes every tensor "
                           "it matches (the first matching rule wins)")
    return chosen


class _Progress:
    """A one-line progress bar on a terminal (``\\r`` updates); silent otherwise."""

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total, self.stream, self.enabled, self.width = total, stream, enabled, 0

    def show(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        filled = 24 * done // max(self.total, 1)
        line = f"pruning [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} {label[:48]}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(line))

    def close(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _slices_pruned(mask: np.ndarray, dim: int) -> int:
    dim = dim % mask.ndim
    axes = tuple(d for d in range(mask.ndim) if d != dim)
    return int((~np.any(mask, axis=axes)).sum())


def _prune(args: argparse.Namespace) -> dict[str, Any]:
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
        if any(r.pattern == rule.pattern for r in rules):
            raise CliError(f"--rule pattern {rule.pattern!r} is given twice")
        rules.append(rule)
    global_method = None
    if global_amount is not None:
        for rule in rules:
            if rule.spec.method == "skip":
                continue
            if rule.spec.method not in ("l1", "random"):
                raise CliError(f"--rule {rule.pattern}={rule.spec.text}: --global ranks entries; its rules must be "
                               f"l1 or random (unstructured), got {rule.spec.method}")
            if rule.spec.amount is not None:
                raise CliError(f"--rule {rule.pattern}={rule.spec.text}: with --global the amount is "
                               f"--global's ({args.global_amount}); write the SPEC without one, e.g. "
                               f"{rule.spec.method}")
            if global_method not in (None, rule.spec.method):
                raise CliError(f"--global ranks all its tensors with one method, got both {global_method} and "
                               f"{rule.spec.method}")
            global_method = rule.spec.method
    if not 0 <= args.seed <= MAX_SEED:
        raise CliError(f"--seed {args.seed} is out of range (0 to {MAX_SEED})")

    out_fmt = _check_output(args.output, "output")
    masks_fmt = None if args.masks is None else _check_output(args.masks, "--masks")
    if args.masks is not None and os.path.abspath(args.masks) == os.path.abspath(args.output):
        raise CliError(f"--masks {args.masks!r} is the same file as the output")
    for path, fmt in ((args.output, out_fmt), (args.masks, masks_fmt)):
        if fmt == "torch":
            _torch(f"writing {path!r} (a torch file)")  # fail before any work when torch is missing

    ckpt = read_checkpoint(args.input)
    try:
        state = _split_pairs(ckpt.tensors)
    except CliError as err:
        raise CliError(f"{args.input!r}: {err}") from None
    names = sorted(state.weights)
    chosen = {name: rule for name, rule in _match(names, rules).items() if rule.spec.method != "skip"}
    for name, rule in chosen.items():
        w = state.weights[name]
        if not _is_floating(w):
            raise CliError(f"tensor {name!r} is {w.dtype}, not floating, but --rule {rule.pattern!r} matches it; "
                           "only floating tensors can be pruned (exclude it with an earlier "
                           f"--rule '{name}=skip' or a narrower pattern)")

    new_masks = _compute_masks(state, chosen, global_amount, global_method, args.seed)
    masks = {**state.masks, **new_masks}

    if args.torch_reparam:
        out: dict[str, np.ndarray] = {}
        for name, w in state.weights.items():
            if name in masks:
                out[name + "_orig"] = w
                out[name + "_mask"] = masks[name].astype(w.dtype)
            else:
                out[name] = w
    else:
        with jax.enable_x64(True):
            out = {name: np.asarray(jp.apply_masks(jnp.asarray(w), jnp.asarray(masks[name])))
                   if name in masks else w for name, w in state.weights.items()}
    metadata = ckpt.metadata if ckpt.metadata else {"format": "pt"}
    with _outputs() as add:
        add(args.output, out, out_fmt, metadata)
        if args.masks is not None:
            add(args.masks, {name: masks[name] for name in masks}, masks_fmt, None)

    rows = []
    for name in names:
        w = state.weights[name]
        rule = chosen.get(name)
        mask = masks.get(name)
        pruned = 0 if mask is None else int(mask.size - np.count_nonzero(mask))
        if rule is not None and global_amount is not None:
            method = f"global {rule.spec.method}:{args.global_amount}"
        elif rule is not None:
            method = rule.spec.text
        elif mask is not None:
            method = "earlier mask"
        else:
            method = None
        if rule is not None and rule.spec.structured:
            dim = rule.spec.dim % w.ndim
            unit, units_pruned, units_total = f"dim-{dim} slices", _slices_pruned(mask, dim), int(w.shape[dim])
        else:
            unit, units_pruned, units_total = "entries", pruned, int(w.size)
        rows.append({"name": name, "shape": list(w.shape), "dtype": _dtype(w), "method": method, "unit": unit,
                     "units_pruned": units_pruned, "units_total": units_total, "pruned": pruned,
                     "size": int(w.size), "sparsity": pruned / w.size if w.size else 0.0})
    total_pruned = sum(r["pruned"] for r in rows)
    total_size = sum(r["size"] for r in rows)
    return {
        "command": "prune",
        "input": args.input,
        "output": args.output,
        "output_kind": "torch *_orig/*_mask pairs" if args.torch_reparam else "pruned weights",
        "output_tensors": len(out),
        "masks": args.masks,
        "seed": args.seed,
        "global": global_amount,
        "rules": [{"pattern": r.pattern, "spec": r.spec.text} for r in rules],
        "tensors": rows,
        "total": {"pruned": total_pruned, "size": total_size,
                  "sparsity": total_pruned / total_size if total_size else 0.0},
    }


def _compute_masks(state: _State, chosen: Mapping[str, Rule], global_amount: float | None,
                   global_method: str | None, seed: int) -> dict[str, np.ndarray]:
    """The new masks: one library call per tensor (so progress can show), one for the global group."""
    singles = [name for name in chosen if global_amount is None]
    group = [name for name in chosen if global_amount is not None]
    steps = len(singles) + (1 if group else 0)
    progress = _Progress(steps, sys.stderr, sys.stderr.isatty() and len(chosen) >= PROGRESS_MIN_TENSORS)
    out: dict[str, np.ndarray] = {}
    try:
        # x64 so float64 tensors rank exactly; keys in [0, 2**32) are the same with and without it.
        with jax.enable_x64(True):
            key = jax.random.key(seed)
            for i, name in enumerate(singles):
                progress.show(i, name)
                spec = chosen[name].spec
                method = spec.build()
                params = {name: jnp.asarray(state.effective(name))}
                default = None if name not in state.masks else {name: jnp.asarray(state.masks[name])}
                try:
                    mask = jp.prune_tree(key, params, lambda path, leaf, m=method: m, default_masks=default)[name]
                except (ValueError, TypeError, IndexError) as err:
                    reason = _first_line(str(err)).removeprefix(f"rule for {name!r}: ")
                    raise CliError(f"tensor {name!r} {_shape(params[name].shape)} with {spec.text!r}: "
                                   f"{reason}") from None
                out[name] = np.asarray(mask)
            if group:
                progress.show(len(singles), f"global group of {len(group)} tensors")
                rule = jp.GlobalUnstructured(global_amount, method=global_method)
                params = {name: jnp.asarray(state.effective(name)) for name in group}
                default = {name: jnp.asarray(state.masks[name]) if name in state.masks else None for name in group}
                try:
                    masks = jp.prune_tree(key, params, lambda path, leaf: rule,
                                          default_masks=default if state.masks else None)
                except (ValueError, TypeError, IndexError) as err:
                    raise CliError(f"--global {global_amount!r} over {len(group)} tensors: "
                                   f"{_first_line(str(err))}") from None
                out.update({name: np.asarray(masks[name]) for name in group})
            progress.show(steps, "done")
    finally:
        progress.close()
    return out


def _print_prune(doc: Mapping[str, Any]) -> None:
    header = ["tensor", "shape", "dtype", "method", "pruned units", "sparsity"]
    rows = []
    for r in doc["tensors"]:
        units = f"{r['units_pruned']:,}/{r['units_total']:,} {r['unit']}" if r["method"] else "-"
        rows.append([r["name"], _shape(r["shape"]), r["dtype"], r["method"] or "-", units, f"{r['sparsity']:.2%}"])
    total = doc["total"]
    rows.append(["total", "", "", "", f"{total['pruned']:,}/{total['size']:,} entries", f"{total['sparsity']:.2%}"])
    _print_table(header, rows, right={5})
    print(f"wrote {doc['output']} ({doc['output_kind']}, {doc['output_tensors']} tensors)")
    if doc["masks"]:
        print(f"wrote {doc['masks']} (bool masks, {sum(r['method'] is not None for r in doc['tensors'])} tensors)")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> None:
    right = set(right)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    for row in [header, *rows]:
        print(fmt(row))


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> dict[str, Any]:
    ckpt = read_checkpoint(args.file)
    try:
        state = _split_pairs(ckpt.tensors)
    except CliError as err:
        raise CliError(f"{args.file!r}: {err}") from None
    rows = []
    for name in sorted(state.weights):
        a = state.effective(name)
        zero = a == 0
        zeros = int(np.count_nonzero(zero))
        slices = []
        if a.ndim >= 2 and a.size and (_is_floating(a) or a.dtype == np.bool_):
            for dim in range(a.ndim):
                axes = tuple(d for d in range(a.ndim) if d != dim)
                slices.append({"dim": dim, "zero": int(np.all(zero, axis=axes).sum()), "total": int(a.shape[dim])})
        rows.append({"name": name, "pair": name in state.masks, "shape": list(a.shape), "dtype": _dtype(a),
                     "zeros": zeros, "size": int(a.size), "sparsity": zeros / a.size if a.size else 0.0,
                     "zero_slices": slices})
    zeros = sum(r["zeros"] for r in rows)
    size = sum(r["size"] for r in rows)
    return {"command": "report", "file": args.file, "format": ckpt.format, "tensors": rows,
            "total": {"zeros": zeros, "size": size, "sparsity": zeros / size if size else 0.0}}


def _print_report(doc: Mapping[str, Any]) -> None:
    header = ["tensor", "shape", "dtype", "zeros", "size", "sparsity", "all-zero slices"]
    rows = []
    for r in doc["tensors"]:
        slices = ", ".join(f"dim{s['dim']} {s['zero']}/{s['total']}" for s in r["zero_slices"])
        name = f"{r['name']} (orig*mask)" if r["pair"] else r["name"]
        rows.append([name, _shape(r["shape"]), r["dtype"], f"{r['zeros']:,}", f"{r['size']:,}",
                     f"{r['sparsity']:.2%}", slices])
    t = doc["total"]
    rows.append(["total", "", "", f"{t['zeros']:,}", f"{t['size']:,}", f"{t['sparsity']:.2%}", ""])
    _print_table(header, rows, right={3, 4, 5})


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> None:
    try:
        from . import demo
    except ImportError as err:
        missing = f" ({err.name} is missing)" if getattr(err, "name", None) else ""
        raise CliError(f"the demo needs flax, optax, scikit-learn and matplotlib{missing}: "
                       "pip install 'jaxprune[examples]'") from None
    try:
        schedule = demo.make_schedule(args.steps)
    except ValueError as err:
        raise CliError(f"--steps: {err}") from None
    del schedule
    plot_folder = os.path.dirname(os.path.abspath(args.plot))
    if not os.path.isdir(plot_folder):
        raise CliError(f"--plot folder {os.path.dirname(args.plot)!r} does not exist (for {args.plot!r})")
    demo.run(seed=args.seed, steps=args.steps, plot_path=args.plot)


# --------------------------------------------------------------------------
# argument parsing and main
# --------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2 (through :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxprune`` command."""
    parser = _Parser(prog=PROG, description="Prune checkpoints with jaxprune (torch.nn.utils.prune in JAX), "
                     "report their sparsity, or run the demo.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {jp.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "prune", help="prune a .safetensors or torch .pt checkpoint by rules",
        description="Prune the tensors of a checkpoint by rules, reproducibly. SPEC is METHOD[:AMOUNT][:key=value...]"
        ": l1:AMOUNT, random:AMOUNT, random-structured:AMOUNT[:dim=D], ln-structured:AMOUNT:n=N[:dim=D], identity, "
        "skip. An integer AMOUNT is a count of units, one with '.' or 'e' a fraction. dim defaults to -1 (torch's).",
        epilog="example: jaxprune prune model.pt -o pruned.safetensors --rule '*.weight=l1:0.5' --seed 0",
    )
    p.add_argument("input", metavar="IN", help="checkpoint: .safetensors, or a torch state_dict .pt/.pth/.bin")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="where to write the result: .safetensors or .pt/.pth/.bin (may be IN: written atomically)")
    p.add_argument("--rule", metavar="PATTERN=SPEC", action="append", required=True,
                   help="glob over tensor names = method spec, e.g. '*.weight=ln-structured:0.3:n=2:dim=0'; "
                   "repeatable, the first matching rule wins")
    p.add_argument("--global", dest="global_amount", metavar="AMOUNT",
                   help="rank all matched tensors together (torch's global_unstructured); rules are then "
                   "'l1' or 'random' without an amount")
    p.add_argument("--seed", type=int, required=True, metavar="N",
                   help=f"PRNG seed for random methods: jax.random.key(N), 0 <= N <= {MAX_SEED}")
    p.add_argument("--masks", metavar="MASKS", help="also write the bool masks there (.safetensors or .pt)")
    p.add_argument("--torch-reparam", action="store_true",
                   help="write *_orig/*_mask pairs (torch's pruning state_dict) instead of pruned weights")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of the table")

    r = sub.add_parser("report", help="the sparsity of any checkpoint, pruned or not",
                       description="Zeros per tensor and all-zero slices along each dim. Pairs *_orig/*_mask "
                       "are reported as their effective weight orig*mask.")
    r.add_argument("file", metavar="FILE", help="checkpoint: .safetensors or .pt/.pth/.bin")
    r.add_argument("--json", action="store_true", help="print a JSON document instead of the table")

    d = sub.add_parser("demo", help="gradual pruning of a CNN on scikit-learn's digits: table and plot",
                       description="Train a small Flax CNN on scikit-learn's digits dense and with jp.pruning "
                       "(L1, polynomial schedule to 90%%), print accuracy against sparsity, write the plot. "
                       "Needs pip install 'jaxprune[examples]'.")
    d.add_argument("--seed", type=int, default=0, help="model init, batch order and pruning key (default 0)")
    d.add_argument("--steps", type=int, default=2000, help="training steps of each run (default 2000)")
    d.add_argument("--plot", default="jaxprune_demo.png", help="where to write the PNG plot (default "
                   "jaxprune_demo.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``jaxprune`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    >>> main(["prune", "in.safetensors", "-o", "out.safetensors", "--rule", "w=magic:0.5", "--seed", "0"])
    2
    """
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help, --version
            return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
        if args.command == "demo":
            _demo(args)
        else:
            run, show = (_prune, _print_prune) if args.command == "prune" else (_report, _print_report)
            doc = run(args)
            if args.json:
                print(json.dumps(doc, indent=2))
            else:
                show(doc)
    except (CliError, _UsageError) as err:
        return _fail(str(err))
    except OSError as err:
        where = f" {err.filename!r}" if err.filename else ""
        return _fail(f"cannot write{where}: {err.strerror or err}")
    except KeyboardInterrupt:
        return _fail("interrupted")
    return 0


def _fail(message: str) -> int:
    sys.stdout.flush()
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
