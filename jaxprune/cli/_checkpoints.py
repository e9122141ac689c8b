"""Checkpoint files: ``.safetensors`` (no torch needed), torch ``.pt``/``.pth``/``.bin``
state_dicts (``torch.load(weights_only=True)``: pickled code is refused, never run)
and ``.npz`` (read only). A torch checkpoint that wraps its state_dict
(``{"model": sd, "epoch": 3}``, Lightning's ``{"state_dict": ...}``) is read
with ``key="model"`` (dotted for nesting) and written back whole, the inner
state_dict replaced.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Mapping
from typing import IO, Any

import ml_dtypes
import numpy as np

from .. import _safetensors
from .._files import atomic_write, open_regular
from ._errors import CliError
from ._text import first_line

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_WRITABLE = {".safetensors": "safetensors", **{s: "torch" for s in TORCH_SUFFIXES}}
_READABLE = {**_WRITABLE, ".npz": "npz"}


@dataclasses.dataclass
class Checkpoint:
    """A flat checkpoint ``{name: numpy array}`` in file order, and what surrounds it in the file."""

    tensors: dict[str, np.ndarray]
    format: str  # "safetensors", "torch" or "npz"
    metadata: dict[str, str] | None = None  # safetensors' __metadata__
    wrapper: Any = None  # the torch object around the state_dict (None for a plain state_dict)
    key: str | None = None  # where the state_dict sits in ``wrapper``


def file_format(path: str, what: str, *, writing: bool = False) -> str:
    """``"safetensors"``, ``"torch"`` or ``"npz"`` by suffix; a :class:`CliError` otherwise."""
    table = _WRITABLE if writing else _READABLE
    suffix = next((s for s in table if path.lower().endswith(s)), None)
    if suffix is None:
        raise CliError(f"unknown format of {what} {path!r}: expected a {', '.join(table)} file")
    return table[suffix]


def torch_module(purpose: str) -> Any:
    """torch, imported now (the command never imports it for safetensors files)."""
    try:
        import torch
    except ImportError:
        raise CliError(f"{purpose} needs torch: pip install 'jaxprune[torch]'") from None
    return torch


def read_checkpoint(path: str, key: str | None = None) -> Checkpoint:
    """Read a checkpoint (by suffix); raise :class:`CliError` with a one-line reason.

    >>> import os, tempfile, numpy as np, ml_dtypes
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> write_checkpoint(path, {"w": np.array([1.5, 0.0], ml_dtypes.bfloat16)})
    >>> w = read_checkpoint(path).tensors["w"]
    >>> w.dtype.name, w.tolist()
    ('bfloat16', [1.5, 0.0])
    """
    fmt = file_format(path, "input")
    if key is not None and fmt != "torch":
        raise CliError(f"--key {key!r}: only torch checkpoints wrap a state_dict; {path!r} is {fmt}")
    try:
        if fmt == "safetensors":
            tensors, metadata = _safetensors.read(path)
            return Checkpoint(tensors, fmt, metadata)
        with open_regular(path) as f:
            return _read_torch(f, path, key) if fmt == "torch" else _read_npz(f, path)
    except _safetensors.SafetensorsError as err:
        raise CliError(str(err)) from None
    except FileNotFoundError:
        raise CliError(f"cannot read {path!r}: no such file") from None
    except OSError as err:
        raise CliError(f"cannot read {path!r}: {err.strerror or err}") from None


def _read_npz(f: IO[bytes], path: str) -> Checkpoint:
    try:
        with np.load(f, allow_pickle=False) as archive:
            return Checkpoint({name: archive[name] for name in archive.files}, "npz")
    except (ValueError, OSError, EOFError) as err:
        raise CliError(f"cannot read {path!r} as a NumPy .npz archive: {first_line(str(err))}") from None


def _load_torch(f: IO[bytes], path: str) -> Any:
    torch = torch_module(f"reading {path!r} (a torch file)")
    try:
        return torch, torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            reason = ""
            if "WeightsUnpickler error:" in str(err):  # keep torch's reason, not its advice to allowlist the code
                reason = first_line(str(err).split("WeightsUnpickler error:")[-1]).split(". ")[0].rstrip(".")
            raise CliError(
                f"refused {path!r}: it needs arbitrary pickled code to load, which jaxprune never runs "
                f"(torch.load weights_only=True){': ' + reason if reason else ''}"
            ) from None
        raise CliError(f"cannot read {path!r} as a torch checkpoint: {first_line(str(err))}") from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for corrupt files
        raise CliError(f"cannot read {path!r} as a torch checkpoint: {type(err).__name__}: "
                       f"{first_line(str(err))}") from None


def _read_torch(f: IO[bytes], path: str, key: str | None) -> Checkpoint:
    torch, loaded = _load_torch(f, path)
    is_tensor = lambda v: isinstance(v, torch.Tensor)  # noqa: E731
    state = loaded if key is None else _inner(loaded, key, path)
    if not isinstance(state, Mapping):
        where = f"--key {key!r} in {path!r}" if key else repr(path)
        raise CliError(f"{where} holds a {type(state).__name__}, expected a state_dict (a dict of name -> tensor)")
    bad = next(((k, v) for k, v in state.items() if not isinstance(k, str) or not is_tensor(v)), None)
    if bad is not None:
        candidates = _state_dict_keys(state, is_tensor)
        hint = (f"pass --key with one of: {', '.join(map(repr, candidates))}" if candidates
                else "no entry in it is a state_dict")
        raise CliError(f"{path!r}{f' --key {key!r}' if key else ''}: entry {bad[0]!r} is not a tensor (type "
                       f"{type(bad[1]).__name__}): a wrapped checkpoint, not a state_dict; {hint}")
    tensors = {name: _torch_to_numpy(torch, value, name) for name, value in state.items()}
    return Checkpoint(tensors, "torch", wrapper=None if key is None else loaded, key=key)


def _inner(loaded: Any, key: str, path: str) -> Any:
    node = loaded
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(key.split(".")[:depth]) or "the top level"
            keys = list(node) if isinstance(node, Mapping) else []
            raise CliError(f"--key {key!r}: {path!r} has no entry {part!r} at {where} (entries: "
                           f"{', '.join(map(repr, keys[:10])) or 'none'})")
        node = node[part]
    return node


def _state_dict_keys(node: Any, is_tensor: Callable[[Any], bool], prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted keys of the entries (up to ``depth`` levels down) that are whole state_dicts."""
    found = []
    for k, v in node.items() if isinstance(node, Mapping) and depth else ():
        if isinstance(v, Mapping) and v and all(isinstance(n, str) and is_tensor(t) for n, t in v.items()):
            found.append(f"{prefix}{k}")
        elif isinstance(k, str):
            found += _state_dict_keys(v, is_tensor, f"{prefix}{k}.", depth - 1)
    return found


# torch dtypes NumPy lacks: moved as raw bits through an integer view (by name; both sides call them the same)
_TORCH_VIEWS = {name: (np.int16 if name == "bfloat16" else np.uint8, getattr(ml_dtypes, name))
                for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu") if hasattr(ml_dtypes, name)}


def _torch_to_numpy(torch: Any, t: Any, name: str) -> np.ndarray:
    t = t.detach()
    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise CliError(f"tensor {name!r}: unsupported tensor ({t.layout}, {t.dtype}, {t.device})")
    t = t.contiguous()
    view = _TORCH_VIEWS.get(str(t.dtype).removeprefix("torch."))
    try:
        if view is not None:
            as_int, dtype = view
            return t.view(getattr(torch, np.dtype(as_int).name)).numpy().view(dtype).copy()
        return t.numpy().copy()
    except (TypeError, RuntimeError) as err:
        raise CliError(f"tensor {name!r}: cannot convert {t.dtype} ({first_line(str(err))})") from None


def _numpy_to_torch(torch: Any, a: np.ndarray) -> Any:
    a = _safetensors.contiguous(a)
    if a.dtype.name in _TORCH_VIEWS:
        as_int, _ = _TORCH_VIEWS[a.dtype.name]
        return torch.from_numpy(a.view(as_int).copy()).view(getattr(torch, a.dtype.name))
    return torch.from_numpy(a.copy())


def _replace_inner(wrapper: Any, key: str, state: Any) -> Any:
    """A copy of ``wrapper`` with the entry at the dotted ``key`` replaced by ``state``."""
    head, _, rest = key.partition(".")
    return {**wrapper, head: _replace_inner(wrapper[head], rest, state) if rest else state}


def checkpoint_writer(path: str, tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None,
                      wrapper: Any = None, key: str | None = None) -> Callable[[IO[bytes]], None]:
    """``write(f)`` for :func:`jaxprune._files.atomic_outputs`: the format by ``path``'s suffix, names
    sorted. A torch file with a ``wrapper`` is the wrapper with its state_dict at ``key`` replaced."""
    fmt = file_format(path, "output", writing=True)
    if fmt == "safetensors":
        chunks = _encode(tensors, metadata)  # now: a dtype safetensors cannot hold fails before any file exists

        def write(f: IO[bytes]) -> None:
            for chunk in chunks:
                f.write(chunk)

        return write
    torch = torch_module("writing a torch .pt file")
    state = {name: _numpy_to_torch(torch, tensors[name]) for name in sorted(tensors)}
    if wrapper is not None and key is not None:
        state = _replace_inner(wrapper, key, state)
    # A file object, not a path: torch names the archive after a path, and the temporary name would leak in.
    return lambda f: torch.save(state, f)


def _encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None) -> list[bytes | memoryview]:
    try:
        return _safetensors.encode(tensors, metadata)
    except _safetensors.SafetensorsError as err:
        raise CliError(str(err)) from None


def write_checkpoint(
    path: str, tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``{name: array}`` as safetensors or a torch state_dict (by suffix), atomically.

    Byte-identical for identical input (names sorted, no timestamps).
    """
    atomic_write(path, checkpoint_writer(path, tensors, metadata=metadata))
