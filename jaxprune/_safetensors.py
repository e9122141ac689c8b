"""The safetensors format in pure NumPy: the one codec of the package.

``save_tree`` / ``load_tree`` and the command line read and write through it,
so neither torch nor the ``safetensors`` package is needed. bfloat16 and the
float8 types are ml_dtypes' NumPy dtypes. A file is an 8-byte little-endian
header length, a JSON header ``{name: {dtype, shape, data_offsets}}`` with an
optional ``__metadata__`` of strings, then the tensors' bytes, back to back.

Reading treats the file as hostile: IN must be a regular file, the header is
bounded before it is parsed, and every shape, offset and dtype is checked, so
a bad file is one :class:`SafetensorsError` naming it, never a traceback or a
read that does not end.

>>> import os, tempfile, numpy as np, ml_dtypes
>>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
>>> with open(path, "wb") as f:
...     write(f, {"w": np.array([1.5, -2.0], ml_dtypes.bfloat16), "n": np.arange(3)})
>>> tensors, metadata = read(path)
>>> sorted(tensors), tensors["w"].dtype.name, tensors["w"].tolist(), metadata
(['n', 'w'], 'bfloat16', [1.5, -2.0], None)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import IO, Any

import ml_dtypes
import numpy as np

from ._files import open_regular

MAX_HEADER = 100_000_000  # bytes, the safetensors package's own limit
MAX_DIMS = 64
_MAX_BYTES = 2**62  # per tensor, counting a 0 extent as 1: far beyond any file, and NumPy can hold the shape

# Every dtype of the format that NumPy (with ml_dtypes) holds one element per item of.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "C64": np.dtype("<c8"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
if hasattr(ml_dtypes, "float8_e8m0fnu"):  # newer ml_dtypes only
    DTYPES["F8_E8M0"] = np.dtype(ml_dtypes.float8_e8m0fnu)
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_PACKED = ("F4", "F6_E2M3", "F6_E3M2")  # several elements per byte: no NumPy dtype holds them


class SafetensorsError(ValueError):
    """A file that is not valid safetensors, or an array the format cannot hold."""


def dtype_name(dtype: np.dtype) -> str | None:
    """The format's name of a NumPy dtype (``"BF16"``), None when it has none.

    >>> dtype_name(np.dtype(np.float32)), dtype_name(np.dtype(np.complex128))
    ('F32', None)
    """
    return _NAMES.get(np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype))


def contiguous(a: Any) -> np.ndarray:
    """``a`` as a C-contiguous array, 0-d staying 0-d (``np.ascontiguousarray`` makes it 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def encode(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> list[bytes | memoryview]:
    """The file's bytes as chunks: names sorted, no timestamps, so equal input gives equal bytes.

    Raises :class:`SafetensorsError` naming a tensor whose dtype the format cannot hold.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    chunks: list[bytes | memoryview] = []
    offset = 0
    for name in sorted(tensors):
        a = contiguous(tensors[name])
        kind = dtype_name(a.dtype)
        if kind is None:
            raise SafetensorsError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in safetensors "
                                   f"(it holds {', '.join(DTYPES)})")
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        raw = memoryview(a.reshape(-1).view(np.uint8))  # pyright: ignore[reportArgumentType] - ndarray is a buffer
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned, as the safetensors package writes it
    return [len(text).to_bytes(8, "little"), text, *chunks]


def write(f: IO[bytes], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``{name: array}`` (and string ``metadata``) to the open binary file ``f``."""
    for chunk in encode(tensors, metadata):
        f.write(chunk)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """``({name: array}, metadata)`` of the file at ``path``, tensors in the header's order.

    Raises :class:`SafetensorsError` naming the file for anything that is not
    a valid safetensors file, and ``OSError`` when it cannot be opened (or is
    not a regular file).
    """
    path = os.fspath(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, f"too short ({size} bytes)")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise _bad(path, f"header length {n} does not fit the file ({size} bytes) or exceeds {MAX_HEADER}")
        header = _parse_header(path, f.read(n))
        body = f.read(size - 8 - n)
    if len(body) != size - 8 - n:
        raise _bad(path, "the file changed while it was read")
    metadata = _metadata(path, header.pop("__metadata__", None))
    tensors = {}
    spans = []
    for name, info in header.items():
        dtype, shape, begin, end = _entry(path, name, info, len(body))
        spans.append((begin, end, name))
        tensors[name] = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=begin).reshape(shape)
    _check_spans(path, spans, len(body))
    return tensors, metadata


def _bad(path: str, reason: str) -> SafetensorsError:
    return SafetensorsError(f"{path!r} is not a valid safetensors file: {reason}")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        names = [key for key, _ in pairs]
        raise ValueError(f"the key {next(k for k in names if names.count(k) > 1)!r} appears twice")
    return out


def _parse_header(path: str, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except RecursionError:
        raise _bad(path, "the header nests too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _bad(path, f"the header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    return header


def _metadata(path: str, metadata: Any) -> dict[str, str] | None:
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise _bad(path, "__metadata__ must map strings to strings")
    return metadata


def _is_count(x: Any) -> bool:
    return type(x) is int and x >= 0  # not bool, not float (1e400 parses as inf)


def _entry(path: str, name: str, info: Any, body_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """Validate one header entry: its dtype, shape and offsets (as Python ints, checked before use)."""
    where = f"tensor {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"{where} must have exactly dtype, shape and data_offsets, got {_short(info)}")
    kind, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if kind in _PACKED:
        raise _bad(path, f"{where} has the packed dtype {kind}, which NumPy cannot hold")
    if not isinstance(kind, str) or kind not in DTYPES:
        raise _bad(path, f"{where} has dtype {_short(kind)}, expected one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _bad(path, f"{where} has shape {_short(shape)}, expected a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise _bad(path, f"{where} has {len(shape)} dimensions, at most {MAX_DIMS} are supported")
    dtype = DTYPES[kind]
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > _MAX_BYTES:
        raise _bad(path, f"{where} has shape {_short(shape)}, too large for any file")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)):
        raise _bad(path, f"{where} has data_offsets {_short(offsets)}, expected [begin, end]")
    begin, end = offsets
    if not begin <= end <= body_size or end - begin != math.prod(shape) * dtype.itemsize:
        raise _bad(path, f"{where} ({kind}{shape}) has data_offsets [{begin}, {end}], which do not fit "
                         f"its size or the {body_size} bytes of data")
    return dtype, tuple(shape), begin, end


def _check_spans(path: str, spans: list[tuple[int, int, str]], body_size: int) -> None:
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps another tensor" if begin < position else f"leaves a gap at byte {position}"
            raise _bad(path, f"the data of tensor {name!r} {what}")
        position = end
    if position != body_size:
        raise _bad(path, f"{body_size - position} bytes after the last tensor")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
