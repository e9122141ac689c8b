"""Export of 2:4 masked weights to torch's semi-structured format, validated first.

torch compresses a dense weight that must *already* be 2:4 (at most 2 nonzero
entries in every group of 4 consecutive entries along the last axis, the
input features of a ``Linear`` weight ``(out, in)``), and its packer keeps the
first two nonzeros of a group that has more, silently. ``to_semi_structured``
checks the mask first and raises naming the first bad group instead.

* On CUDA it returns torch's own ``SparseSemiStructuredTensor``
  (``torch.sparse.to_sparse_semi_structured``; the backend, cuSPARSELt or
  CUTLASS, is torch's choice: ``SparseSemiStructuredTensor._FORCE_CUTLASS``).
* Elsewhere it returns :class:`SemiStructured`: the packed values and the
  metadata in CUTLASS's layout, computed here in NumPy, byte for byte what
  torch's CUTLASS backend stores (``torch.sparse._semi_structured_conversions``
  is the reference the tests compare with). :func:`from_semi_structured`
  inverts it.

The layout. The packed values ``(rows, cols // 2)`` hold each group's two
stored entries in column order. Each group's 4-bit code holds the two stored
positions (``first | second << 2``); 4 codes make an int16 metadata element
(8 codes an int32 one for int8), lowest code in the lowest bits. The metadata
matrix is then reordered for the tensor cores' loads: inside each band of 32
rows (16 for int32), row ``8 * a + b`` moves to ``b * 4 + a`` (``b * 2 + a``);
each 2 x 2 block of elements is transposed; the result is stored
column-major in pairs of columns.

float32 is 1:2 in CUTLASS's format, not 2:4: the tensor cores read a float32
as two 16-bit halves, so each pair of consecutive entries keeps at most one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from ._tensors import import_torch, to_torch

if TYPE_CHECKING:
    import torch

# Smallest (rows, cols) per dtype, each dimension a multiple of it: torch's
# ``_DTYPE_SHAPE_CONSTRAINTS`` of SparseSemiStructuredTensorCUTLASS and
# SparseSemiStructuredTensorCUSPARSELT.
_CUTLASS_SHAPES = {"int8": (16, 128), "float16": (32, 64), "bfloat16": (32, 64), "float32": (32, 32)}
_CUSPARSELT_SHAPES = {"float8_e4m3fn": (32, 32), "int8": (32, 32), "float16": (16, 16), "bfloat16": (16, 16)}


class SemiStructured(NamedTuple):
    """A 2:4 weight in CUTLASS's layout: what torch's CUTLASS backend stores.

    Attributes:
      packed: ``(rows, cols // 2)``, the weight's dtype: each group's two
        stored entries (kept entries, topped up with zeros).
      meta: the reordered metadata, ``(rows, cols // 16)`` int16 for 16-bit
        and float32 weights, ``(rows, cols // 32)`` int32 for int8.
    """

    packed: torch.Tensor
    meta: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """The dense weight's shape."""
        return (int(self.packed.shape[0]), 2 * int(self.packed.shape[1]))

    def to_dense(self) -> torch.Tensor:
        """The dense weight (pruned entries zero): :func:`from_semi_structured`."""
        return from_semi_structured(self)


def to_semi_structured(weight: Any, mask: Any) -> SemiStructured | torch.Tensor:
    """A 2:4 masked weight in torch's semi-structured format, the mask validated first.

    Args:
      weight: a 2-D torch tensor, JAX or NumPy array in torch's ``Linear``
        layout ``(out, in)``; the 2:4 groups run along the last axis (the
        input features, the matmul's contracting axis). float16, bfloat16 or
        int8; float32 on CPU and on torch's CUTLASS backend, where it is 1:2.
        Rows and columns must be multiples of the backend's minimum (CUTLASS:
        float16/bfloat16 (32, 64), int8 (16, 128), float32 (32, 32);
        cuSPARSELt: float16/bfloat16 (16, 16), int8 (32, 32)). Any strides.
      mask: bool, same shape, True = kept: at most 2 kept in every group of 4
        consecutive entries along the last axis (fewer is fine: the packer
        stores zeros).

    Returns:
      On CUDA, torch's ``SparseSemiStructuredTensor`` of the masked weight.
      Otherwise a :class:`SemiStructured` (CPU tensors in CUTLASS's layout).
      Kept entries equal to zero (``-0.0`` included) are stored as ``+0.0``.

    Raises:
      ValueError: a mask that is not 2:4 (1:2 for float32), naming the first
        bad group; a weight that is not 2-D, a shape the backend refuses, a
        mask of another shape.
      TypeError: a weight or mask of an unsupported type or dtype.

    >>> import torch
    >>> from jaxprune import interop
    >>> w = torch.arange(1, 32 * 64 + 1, dtype=torch.float16).reshape(32, 64)
    >>> mask = torch.tensor([True, False, False, True]).repeat(32, 16)
    >>> sparse = interop.to_semi_structured(w, mask)  # on CPU: CUTLASS's values and metadata
    >>> tuple(sparse.packed.shape), sparse.packed.dtype, tuple(sparse.meta.shape), sparse.meta.dtype
    ((32, 32), torch.float16, (32, 4), torch.int16)
    >>> bool((interop.from_semi_structured(sparse) == torch.where(mask, w, 0)).all())
    True
    >>> interop.to_semi_structured(w, mask | torch.eye(32, 64, dtype=torch.bool))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: to_semi_structured: the mask is not 2:4 along the last axis: row 1, columns 0..3 keep [1, 1, 0, 1] ...
    """
    torch = import_torch()
    w = _as_tensor(weight, "weight").detach()
    if w.dim() != 2:
        raise ValueError(f"to_semi_structured: expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    m = _as_tensor(mask, "mask").detach()
    if m.dtype != torch.bool:
        raise TypeError(f"to_semi_structured: the mask must be bool (True = kept), got {_name(m.dtype)}")
    if m.shape != w.shape:
        raise ValueError(f"to_semi_structured: mask shape {tuple(m.shape)} differs from weight shape {tuple(w.shape)}")
    cuda = w.device.type == "cuda"
    backend = _backend(torch) if cuda else "CUTLASS"
    _check_dtype_and_shape(w, backend)
    m = m.to(w.device)
    if _name(w.dtype) == "float32":
        _check_pattern(m, 1, 2, "float32 is 1:2 in CUTLASS's format (the tensor cores read it as two 16-bit "
                       "halves): cast the weight to float16 or bfloat16 for 2:4, or make the mask 1:2")
    else:
        _check_pattern(m, 2, 4, "torch's packer would drop the extra entries silently: make the mask 2:4 along "
                       "the weight's input axis first")
    # Pruned entries and kept zeros become +0.0: the pattern is read from the
    # nonzeros (as torch's packer does), and no -0.0 reaches a kernel.
    dense = torch.where(m & (w != 0), w, torch.zeros((), dtype=w.dtype, device=w.device)).contiguous()
    if cuda:
        return torch.sparse.to_sparse_semi_structured(dense)
    return _pack(dense.cpu())


def from_semi_structured(sparse: SemiStructured | tuple[Any, Any]) -> torch.Tensor:
    """The dense CPU tensor of a weight in CUTLASS's layout (pruned entries zero).

    Args:
      sparse: a :class:`SemiStructured`, a ``(packed, meta)`` pair of torch
        tensors in CUTLASS's layout (such as torch's
        ``sparse_semi_structured_from_dense_cutlass`` returns), or torch's
        CUTLASS ``SparseSemiStructuredTensor`` (its ``packed`` and ``meta``).

    >>> import torch
    >>> from jaxprune import interop
    >>> w = torch.ones(16, 128, dtype=torch.int8)
    >>> mask = torch.tensor([False, True, False, False]).repeat(16, 32)
    >>> dense = interop.from_semi_structured(interop.to_semi_structured(w, mask))
    >>> dense.dtype, dense[0, :8].tolist()
    (torch.int8, [0, 1, 0, 0, 0, 1, 0, 0])
    """
    torch = import_torch()
    if hasattr(sparse, "packed") and hasattr(sparse, "meta") and not isinstance(sparse, tuple):
        if sparse.meta is None or sparse.meta.dim() != 2:
            raise ValueError("from_semi_structured: this SparseSemiStructuredTensor has no CUTLASS metadata "
                             "(cuSPARSELt stores an opaque format): use its .to_dense()")
        sparse = (sparse.packed, sparse.meta)
    if not isinstance(sparse, tuple) or len(sparse) != 2:
        raise TypeError(f"from_semi_structured: expected a SemiStructured or a (packed, meta) pair, "
                        f"got {type(sparse).__name__}")
    if not all(isinstance(t, torch.Tensor) for t in sparse):
        raise TypeError(f"from_semi_structured: packed and meta must be torch tensors, "
                        f"got {', '.join(type(t).__name__ for t in sparse)}")
    packed, meta = (t.detach().cpu() for t in sparse)
    codes = _unpack_meta(packed, meta)
    bits = packed.contiguous().view(_torch_bits(packed.dtype)).numpy()
    rows, half = bits.shape
    if _name(packed.dtype) == "float32":
        _check_codes(codes, np.isin(codes, (_FIRST_OF_PAIR, _SECOND_OF_PAIR)), "a 1:2 code (0b0100 or 0b1110)")
        dense = np.zeros((rows, half, 2), bits.dtype)
        np.put_along_axis(dense, (codes == _SECOND_OF_PAIR)[..., None].astype(np.intp), bits[..., None], -1)
    else:
        first, second = codes & 3, codes >> 2
        _check_codes(codes, first < second, "two increasing 2-bit positions")
        dense = np.zeros((rows, half // 2, 4), bits.dtype)
        np.put_along_axis(dense, np.stack((first, second), -1).astype(np.intp), bits.reshape(rows, half // 2, 2), -1)
    return torch.from_numpy(dense.reshape(rows, 2 * half)).view(packed.dtype)


# ----- validation

def _as_tensor(x: Any, what: str) -> torch.Tensor:
    torch = import_torch()
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (jax.Array, np.ndarray)):
        return to_torch(x)
    raise TypeError(f"to_semi_structured: the {what} must be a torch tensor, JAX or NumPy array, "
                    f"got {type(x).__name__}")


def _name(dtype: object) -> str:
    return str(dtype).replace("torch.", "")


def _backend(torch: Any) -> str:
    return "CUTLASS" if torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS else "cuSPARSELt"


def _check_dtype_and_shape(w: torch.Tensor, backend: str) -> None:
    shapes = _CUTLASS_SHAPES if backend == "CUTLASS" else _CUSPARSELT_SHAPES
    name = _name(w.dtype)
    if name not in shapes:
        raise TypeError(f"to_semi_structured: dtype {name} is not supported by torch's {backend} 2:4 format; "
                        f"supported: {', '.join(shapes)}")
    min_rows, min_cols = shapes[name]
    rows, cols = w.shape
    if rows == 0 or rows % min_rows or cols == 0 or cols % min_cols:
        raise ValueError(f"to_semi_structured: a {name} weight of shape {tuple(w.shape)} does not fit torch's "
                         f"{backend} 2:4 format: rows must be a positive multiple of {min_rows} and columns of "
                         f"{min_cols} (pad with zeros: zero rows and columns are valid 2:4)")


def _check_pattern(mask: torch.Tensor, n: int, m: int, fix: str) -> None:
    rows, cols = mask.shape
    groups = mask.reshape(rows, cols // m, m)
    bad = groups.sum(-1) > n
    count = int(bad.sum())
    if not count:
        return
    first = int(bad.reshape(-1).to(import_torch().uint8).argmax())  # the first True (argmax returns the first maximum)
    row, group = divmod(first, cols // m)
    bits = groups[row, group].int().tolist()
    raise ValueError(f"to_semi_structured: the mask is not {n}:{m} along the last axis: row {row}, columns "
                     f"{group * m}..{group * m + m - 1} keep {bits} ({sum(bits)} kept, at most {n} allowed; "
                     f"{count} bad groups in all). {fix}")


def _check_codes(codes: np.ndarray, valid: np.ndarray, what: str) -> None:
    if not valid.all():
        row, unit = np.unravel_index(int(np.argmin(valid)), valid.shape)
        raise ValueError(f"from_semi_structured: the metadata is not CUTLASS's: row {row}, group {unit} has code "
                         f"{int(codes[row, unit]):#06b}, expected {what}")


# ----- packing (NumPy, on the raw bits)

def _stored_positions() -> np.ndarray:
    """For each 4-bit kept pattern of a group (bit i = entry i kept), the two positions stored.

    The kept positions, topped up with positions 2 then 3 when fewer than two
    are kept (zeros are stored there): the codes CUTLASS's reference encoder
    gives, which the byte-for-byte comparison holds us to. Patterns with more
    than two kept are refused before packing; their row is unused.
    """
    table = np.zeros((16, 2), np.uint8)
    for pattern in range(16):
        kept = [i for i in range(4) if pattern >> i & 1]
        stored = sorted(kept + [i for i in (2, 3) if i not in kept][: max(0, 2 - len(kept))])
        if len(stored) == 2:
            table[pattern] = stored
    return table


_STORED = _stored_positions()
# float32: one 32-bit value = two 16-bit halves, stored from positions (0, 1) or (2, 3).
_FIRST_OF_PAIR, _SECOND_OF_PAIR = 0 | 1 << 2, 2 | 3 << 2


def _torch_bits(dtype: torch.dtype) -> torch.dtype:
    torch = import_torch()
    return {1: torch.int8, 2: torch.int16, 4: torch.int32}[dtype.itemsize]


def _pack(dense: torch.Tensor) -> SemiStructured:
    torch = import_torch()
    bits = dense.view(_torch_bits(dense.dtype)).numpy()  # zeros are +0: zero bits
    rows, cols = bits.shape
    if _name(dense.dtype) == "float32":
        pairs = bits.reshape(rows, cols // 2, 2)
        first_kept = pairs[..., 0] != 0
        packed = np.where(first_kept, pairs[..., 0], pairs[..., 1])
        codes = np.where(first_kept, _FIRST_OF_PAIR, _SECOND_OF_PAIR).astype(np.uint8)
    else:
        quads = bits.reshape(rows, cols // 4, 4)
        nonzero = (quads != 0).astype(np.uint8)
        pattern = nonzero[..., 0] | nonzero[..., 1] << 1 | nonzero[..., 2] << 2 | nonzero[..., 3] << 3
        stored = _STORED[pattern]
        packed = np.take_along_axis(quads, stored.astype(np.intp), -1).reshape(rows, cols // 2)
        codes = stored[..., 0] | stored[..., 1] << 2
    meta_bytes = 4 if dense.dtype.itemsize == 1 else 2  # int8 values get int32 metadata, the others int16
    return SemiStructured(
        packed=torch.from_numpy(np.ascontiguousarray(packed)).view(dense.dtype),
        meta=torch.from_numpy(_reorder(_pack_codes(codes, meta_bytes))),
    )


def _pack_codes(codes: np.ndarray, meta_bytes: int) -> np.ndarray:
    """4-bit codes (rows, units) -> metadata elements of ``meta_bytes`` bytes, lowest code in the lowest bits."""
    byte = np.ascontiguousarray(codes[:, 0::2] | codes[:, 1::2] << 4)
    little = np.dtype(f"<i{meta_bytes}")
    return byte.view(little).astype(little.newbyteorder("="))


def _unpack_codes(meta: np.ndarray) -> np.ndarray:
    byte = np.ascontiguousarray(meta.astype(meta.dtype.newbyteorder("<"))).view(np.uint8)
    return np.stack((byte & 15, byte >> 4), -1).reshape(meta.shape[0], -1)


def _band(meta: np.ndarray) -> tuple[int, int]:
    band = 32 if meta.dtype.itemsize == 2 else 16
    return band, band // 8


def _reorder(meta: np.ndarray) -> np.ndarray:
    """Metadata (rows, ncols) in the order CUTLASS's sparse kernels load it."""
    rows, ncols = meta.shape
    band, weave = _band(meta)
    # Inside each band of rows, row 8 * a + b moves to b * weave + a.
    meta = meta.reshape(rows // band, weave, 8, ncols).transpose(0, 2, 1, 3).reshape(rows, ncols)
    # Each 2 x 2 block of elements is transposed.
    meta = meta.reshape(rows // 2, 2, ncols // 2, 2).transpose(0, 3, 2, 1).reshape(rows, ncols)
    # Stored column-major in pairs of columns ("ColumnMajorInterleaved<2>").
    return np.ascontiguousarray(meta.reshape(rows, ncols // 2, 2).transpose(1, 0, 2)).reshape(rows, ncols)


def _unreorder(stored: np.ndarray) -> np.ndarray:
    rows, ncols = stored.shape
    band, weave = _band(stored)
    meta = stored.reshape(ncols // 2, rows, 2).transpose(1, 0, 2).reshape(rows, ncols)
    meta = meta.reshape(rows // 2, 2, ncols // 2, 2).transpose(0, 3, 2, 1).reshape(rows, ncols)
    return meta.reshape(rows // band, 8, weave, ncols).transpose(0, 2, 1, 3).reshape(rows, ncols)


def _unpack_meta(packed: torch.Tensor, meta: torch.Tensor) -> np.ndarray:
    """The 4-bit codes (rows, units) of ``meta``, after checking it fits ``packed``."""
    torch = import_torch()
    name = _name(packed.dtype)
    if packed.dim() != 2 or meta.dim() != 2:
        raise ValueError(f"from_semi_structured: expected 2-D packed and meta, got shapes {tuple(packed.shape)} "
                         f"and {tuple(meta.shape)}")
    if name not in _CUTLASS_SHAPES:
        raise TypeError(f"from_semi_structured: packed dtype {name} is not one of CUTLASS's "
                        f"({', '.join(_CUTLASS_SHAPES)})")
    meta_dtype = torch.int32 if name == "int8" else torch.int16
    if meta.dtype != meta_dtype:
        raise TypeError(f"from_semi_structured: {name} values need {_name(meta_dtype)} metadata, "
                        f"got {_name(meta.dtype)}")
    rows, half = packed.shape
    units = half // 2 if name != "float32" else half  # one code per group of 4 (per pair for float32)
    codes_per_meta = 2 * meta_dtype.itemsize
    band = 32 if meta_dtype.itemsize == 2 else 16
    ncols = units // codes_per_meta
    if rows % band or units % (2 * codes_per_meta) or tuple(meta.shape) != (rows, ncols):
        raise ValueError(f"from_semi_structured: packed {tuple(packed.shape)} and meta {tuple(meta.shape)} "
                         f"are not CUTLASS's layout of one weight (rows a multiple of {band}, meta "
                         f"(rows, {'packed columns' if name == 'float32' else 'packed columns // 2'} // "
                         f"{codes_per_meta}), an even number of meta columns)")
    return _unpack_codes(_unreorder(meta.contiguous().numpy()))
