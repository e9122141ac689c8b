"""interop.to_semi_structured / from_semi_structured: torch's 2:4 format, byte for byte, validated first."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.sparse import _semi_structured_conversions as conversions  # noqa: E402

from jaxprune import interop  # noqa: E402
from jaxprune.interop import _semi_structured  # noqa: E402

SHAPES = [(32, 64), (64, 128), (128, 256)]
INT8_SHAPES = [(16, 128), (64, 128), (128, 256)]  # int8's columns: multiples of 128


def random_mask(shape, n, m, seed):
    """At most n of every m along the last axis: each group keeps 0..n entries (fewer than n included)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = shape
    order = torch.rand(rows, cols // m, m, generator=g).argsort(-1).argsort(-1)
    keep = torch.randint(0, n + 1, (rows, cols // m, 1), generator=g)
    return (order < keep).reshape(shape)


def random_weight(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.int8:
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


def masked(w, mask):
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype))


def raw(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def assert_same_bytes(ours, theirs):
    packed, meta = theirs
    assert ours.packed.dtype == packed.dtype and ours.meta.dtype == meta.dtype
    assert ours.packed.shape == packed.shape and ours.meta.shape == meta.shape
    assert raw(ours.packed) == raw(packed)
    assert raw(ours.meta) == raw(meta)


CASES = [(dtype, shape) for dtype in (torch.float16, torch.bfloat16) for shape in SHAPES]
CASES += [(torch.int8, shape) for shape in INT8_SHAPES]


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=str)
def test_bytes_equal_torch_reference_and_round_trip(dtype, shape):
    w, mask = random_weight(shape, dtype, 1), random_mask(shape, 2, 4, 2)
    ours = interop.to_semi_structured(w, mask)
    dense = masked(w, mask)
    assert_same_bytes(ours, conversions.sparse_semi_structured_from_dense_cutlass(dense))
    assert ours.shape == shape
    # Back to dense, both ways: our inverse and torch's.
    assert raw(interop.from_semi_structured(ours)) == raw(dense)
    assert raw(ours.to_dense()) == raw(dense)
    assert raw(conversions.sparse_semi_structured_to_dense_cutlass(ours.packed, ours.meta)) == raw(dense)
    # Our inverse reads torch's output too.
    assert raw(interop.from_semi_structured(conversions.sparse_semi_structured_from_dense_cutlass(dense))) == raw(dense)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_is_one_of_two_and_bytes_equal_torch(shape):
    w, mask = random_weight(shape, torch.float32, 3), random_mask(shape, 1, 2, 4)
    ours = interop.to_semi_structured(w, mask)
    dense = masked(w, mask)
    assert_same_bytes(ours, conversions.sparse_semi_structured_from_dense_cutlass(dense))
    assert ours.packed.shape == (shape[0], shape[1] // 2) and ours.meta.dtype == torch.int16
    assert raw(interop.from_semi_structured(ours)) == raw(dense)
    # torch's float32 inverse scatters the values as float16 halves, which turns a low half that
    # reads as a signalling NaN into a quiet one (one mantissa bit changes); ours copies the bits.
    # So torch's inverse is checked on values whose low halves are zero.
    w16 = w.bfloat16().float()
    ours16 = interop.to_semi_structured(w16, mask)
    back = conversions.sparse_semi_structured_to_dense_cutlass(ours16.packed, ours16.meta)
    assert raw(back) == raw(masked(w16, mask))


def test_float32_low_halves_that_read_as_nan_survive_our_round_trip():
    w = torch.full((32, 32), 1.0)
    w.view(torch.int32)[:, 0::2] = 0x3FF5FCF7  # low half 0xFCF7: a signalling NaN as float16
    mask = torch.tensor([True, False]).repeat(32, 16)
    back = interop.from_semi_structured(interop.to_semi_structured(w, mask))
    assert raw(back) == raw(masked(w, mask))


def test_every_pattern_with_at_most_two_kept():
    # The 11 patterns with 0, 1 or 2 kept of 4, each in its own group; fewer than 2 kept
    # is valid 2:4: the packer stores zeros in the free slots.
    patterns = [p for p in range(16) if bin(p).count("1") <= 2]
    bits = torch.tensor([[p >> i & 1 for i in range(4)] for p in patterns], dtype=torch.bool)
    mask = torch.zeros(32, 64, dtype=torch.bool)
    mask[: len(patterns), :4] = bits
    mask[:, 4:] = bits[torch.arange(32 * 15) % len(patterns)].reshape(32, 60)
    w = torch.arange(1, 32 * 64 + 1).reshape(32, 64).to(torch.float16)
    ours = interop.to_semi_structured(w, mask)
    assert_same_bytes(ours, conversions.sparse_semi_structured_from_dense_cutlass(masked(w, mask)))
    assert raw(ours.to_dense()) == raw(masked(w, mask))
    # One kept: the kept value and a zero; none kept: two zeros.
    first, last, none = patterns.index(0b0001), patterns.index(0b1000), patterns.index(0)
    assert ours.packed[first, :2].tolist() == [w[first, 0].item(), 0.0]
    assert ours.packed[last, :2].tolist() == [0.0, w[last, 3].item()]
    assert ours.packed[none, :2].tolist() == [0.0, 0.0]


def test_stored_positions_are_torchs_documented_codes():
    # From the comment in torch's sparse_semi_structured_from_dense_cutlass: the 4-bit code of each
    # kept pattern (first stored position | second << 2), written here as the kept entries.
    documented = {
        (1, 1, 0, 0): 0b0100, (1, 0, 1, 0): 0b1000, (0, 1, 1, 0): 0b1001, (1, 0, 0, 1): 0b1100,
        (0, 1, 0, 1): 0b1101, (0, 0, 1, 1): 0b1110, (0, 0, 0, 0): 0b1110, (0, 0, 0, 1): 0b1110,
        (0, 0, 1, 0): 0b1110, (0, 1, 0, 0): 0b1001, (1, 0, 0, 0): 0b1000,
    }
    for kept, code in documented.items():
        first, second = _semi_structured._STORED[sum(b << i for i, b in enumerate(kept))]
        assert first | second << 2 == code, kept


def test_jax_and_numpy_inputs_give_torchs_bytes():
    w, mask = random_weight((64, 128), torch.bfloat16, 5), random_mask((64, 128), 2, 4, 6)
    expected = interop.to_semi_structured(w, mask)
    from_jax = interop.to_semi_structured(interop.to_jax(w), jnp.asarray(mask.numpy()))
    from_numpy_mask = interop.to_semi_structured(w, mask.numpy())
    for got in (from_jax, from_numpy_mask):
        assert raw(got.packed) == raw(expected.packed) and raw(got.meta) == raw(expected.meta)


def test_parameters_and_strided_weights():
    w, mask = random_weight((64, 128), torch.float16, 7), random_mask((64, 128), 2, 4, 8)
    expected = interop.to_semi_structured(w, mask)
    param = torch.nn.Parameter(w.clone())
    got = interop.to_semi_structured(param, mask)
    assert raw(got.packed) == raw(expected.packed) and raw(got.meta) == raw(expected.meta)
    strided = w.T.contiguous().T  # same values, column-major strides
    assert not strided.is_contiguous()
    got = interop.to_semi_structured(strided, mask.T.contiguous().T)
    assert raw(got.packed) == raw(expected.packed) and raw(got.meta) == raw(expected.meta)


def test_kept_zeros_are_stored_as_positive_zero_and_pruned_nans_do_not_leak():
    w = torch.ones(32, 64, dtype=torch.float16)
    w[:, 0] = -0.0  # kept, but zero
    w[:, 2] = float("nan")  # pruned
    mask = torch.tensor([True, True, False, False]).repeat(32, 16)
    ours = interop.to_semi_structured(w, mask)
    assert not (ours.packed.view(torch.int16) == torch.tensor(-0.0, dtype=torch.float16).view(torch.int16)).any()
    dense = ours.to_dense()
    assert not dense.isnan().any()
    assert dense[:, :4].view(torch.int16).tolist() == [[0, 0x3C00, 0, 0]] * 32  # +0.0, 1.0, +0, +0


def test_original_is_left_unchanged():
    w, mask = random_weight((32, 64), torch.float16, 9), random_mask((32, 64), 2, 4, 10)
    before = w.clone()
    interop.to_semi_structured(w, mask)
    assert raw(w) == raw(before)


# ----- bad input

def test_mask_not_two_of_four_names_the_first_bad_group():
    mask = torch.tensor([True, False, False, True]).repeat(32, 16)
    mask[7, 0:4] = True  # 4 kept, later in row order
    mask[5, 60:64] = torch.tensor([True, True, True, False])  # 3 kept, same row but later column
    mask[5, 8:12] = torch.tensor([False, True, True, True])  # the first bad group
    w = torch.ones(32, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"not 2:4 along the last axis: row 5, columns 8\.\.11 keep \[0, 1, 1, 1\] "
                                         r"\(3 kept, at most 2 allowed; 3 bad groups in all\)\. torch's packer"):
        interop.to_semi_structured(w, mask)


def test_mask_with_four_kept_is_refused():
    with pytest.raises(ValueError, match=r"row 0, columns 0\.\.3 keep \[1, 1, 1, 1\] \(4 kept, at most 2 allowed; "
                                         r"512 bad groups in all\)"):
        interop.to_semi_structured(torch.ones(32, 64, dtype=torch.bfloat16), torch.ones(32, 64, dtype=torch.bool))


def test_float32_needs_one_of_two_and_says_to_cast():
    mask = torch.tensor([True, True, False, False]).repeat(32, 8)  # 2:4, but not 1:2
    with pytest.raises(ValueError, match=r"not 1:2 along the last axis: row 0, columns 0\.\.1 keep \[1, 1\] \(2 kept, "
                                         r"at most 1 allowed; 256 bad groups in all\)\. float32 is 1:2 in CUTLASS's "
                                         r"format .*: cast the weight to float16 or bfloat16 for 2:4"):
        interop.to_semi_structured(torch.ones(32, 32), mask)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((48, 64), torch.float16, r"float16 weight of shape \(48, 64\) .* multiple of 32 and columns of 64"),
        ((32, 96), torch.bfloat16, r"bfloat16 weight of shape \(32, 96\) .* multiple of 32 and columns of 64"),
        ((16, 64), torch.int8, r"int8 weight of shape \(16, 64\) .* multiple of 16 and columns of 128"),
        ((32, 16), torch.float32, r"float32 weight of shape \(32, 16\) .* multiple of 32 and columns of 32"),
        ((0, 64), torch.float16, r"float16 weight of shape \(0, 64\) .* positive multiple of 32"),
    ],
    ids=["rows", "columns", "int8-columns", "float32-columns", "empty"],
)
def test_shapes_the_format_refuses(shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        interop.to_semi_structured(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8, torch.bool], ids=str)
def test_dtypes_the_format_refuses(dtype):
    with pytest.raises(TypeError, match=rf"dtype {str(dtype)[6:]} is not supported by torch's CUTLASS 2:4 format; "
                                        r"supported: int8, float16, bfloat16, float32"):
        interop.to_semi_structured(torch.zeros(32, 64, dtype=dtype), torch.zeros(32, 64, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(64,), (2, 32, 64), ()], ids=str)
def test_weights_that_are_not_two_dimensional(shape):
    with pytest.raises(ValueError, match=rf"expected a 2-D weight \(out, in\), got shape {re_shape(shape)}"):
        interop.to_semi_structured(torch.zeros(shape, dtype=torch.float16), torch.zeros(shape, dtype=torch.bool))


def re_shape(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_mask_of_another_shape():
    with pytest.raises(ValueError, match=r"mask shape \(64, 32\) differs from weight shape \(32, 64\)"):
        interop.to_semi_structured(torch.zeros(32, 64, dtype=torch.float16), torch.zeros(64, 32, dtype=torch.bool))


def test_mask_that_is_not_bool():
    with pytest.raises(TypeError, match=r"the mask must be bool \(True = kept\), got float16"):
        interop.to_semi_structured(torch.zeros(32, 64, dtype=torch.float16), torch.zeros(32, 64, dtype=torch.float16))


@pytest.mark.parametrize(("weight", "what"), [([[1.0]], "weight"), (torch.zeros(32, 64, dtype=torch.float16), "mask")])
def test_inputs_that_are_not_arrays(weight, what):
    with pytest.raises(TypeError, match=rf"the {what} must be a torch tensor, JAX or NumPy array, got list"):
        interop.to_semi_structured(weight, [[True]])


def test_cusparselt_shapes_and_dtypes():
    # The table used on CUDA when torch picks cuSPARSELt (its default): no float32 there.
    _semi_structured._check_dtype_and_shape(torch.zeros(16, 16, dtype=torch.float16), "cuSPARSELt")
    with pytest.raises(TypeError, match=r"dtype float32 is not supported by torch's cuSPARSELt 2:4 format; "
                                        r"supported: float8_e4m3fn, int8, float16, bfloat16"):
        _semi_structured._check_dtype_and_shape(torch.zeros(32, 32), "cuSPARSELt")
    with pytest.raises(ValueError, match=r"int8 weight of shape \(16, 32\) does not fit torch's cuSPARSELt"):
        _semi_structured._check_dtype_and_shape(torch.zeros(16, 32, dtype=torch.int8), "cuSPARSELt")


def test_from_semi_structured_refuses_what_is_not_cutlass_layout():
    ours = interop.to_semi_structured(torch.ones(32, 64, dtype=torch.float16), random_mask((32, 64), 2, 4, 11))
    with pytest.raises(TypeError, match=r"float16 values need int16 metadata, got int32"):
        interop.from_semi_structured((ours.packed, ours.meta.to(torch.int32)))
    with pytest.raises(ValueError, match=r"packed \(32, 32\) and meta \(32, 2\) are not CUTLASS's layout"):
        interop.from_semi_structured((ours.packed, ours.meta[:, :2]))
    with pytest.raises(ValueError, match=r"expected 2-D packed and meta, got shapes \(1024,\) and \(32, 4\)"):
        interop.from_semi_structured((ours.packed.reshape(-1), ours.meta))
    bad = ours.meta.clone()
    bad[0, 0] = 0b0101  # first code 0b0101: the same position twice
    with pytest.raises(ValueError, match=r"the metadata is not CUTLASS's: row \d+, group \d+ has code 0b0101, "
                                         r"expected two increasing 2-bit positions"):
        interop.from_semi_structured((ours.packed, bad))
    with pytest.raises(TypeError, match=r"expected a SemiStructured or a \(packed, meta\) pair, got Tensor"):
        interop.from_semi_structured(ours.packed)
    with pytest.raises(TypeError, match=r"packed and meta must be torch tensors, got ndarray, Tensor"):
        interop.from_semi_structured((ours.packed.numpy(), ours.meta))
    # torch's cuSPARSELt tensors keep no CUTLASS metadata (meta is None).
    with pytest.raises(ValueError, match=r"no CUTLASS metadata \(cuSPARSELt stores an opaque format\): use its "
                                         r"\.to_dense\(\)"):
        interop.from_semi_structured(types.SimpleNamespace(packed=ours.packed, meta=None))


def test_from_semi_structured_refuses_float32_codes_that_are_not_one_of_two():
    ours = interop.to_semi_structured(torch.ones(32, 32), torch.tensor([True, False]).repeat(32, 16))
    bad = ours.meta.clone()
    bad[3, 1] = 0b0100_0100_0100_1000  # one code 0b1000: a 2:4 code, not one of float32's two
    with pytest.raises(ValueError, match=r"has code 0b1000, expected a 1:2 code \(0b0100 or 0b1110\)"):
        interop.from_semi_structured((ours.packed, bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_returns_torchs_tensor_and_matches_the_cpu_bytes():
    w, mask = random_weight((128, 256), torch.float16, 12), random_mask((128, 256), 2, 4, 13)
    x = torch.randn(256, 64, dtype=torch.float16, device="cuda")
    sparse = interop.to_semi_structured(w.cuda(), mask.cuda())
    assert isinstance(sparse, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(torch.mm(sparse, x), torch.mm(masked(w, mask).cuda(), x))
    cls = torch.sparse.SparseSemiStructuredTensor
    force, cls._FORCE_CUTLASS = cls._FORCE_CUTLASS, True
    try:
        cutlass = interop.to_semi_structured(w.cuda(), mask.cuda())
    finally:
        cls._FORCE_CUTLASS = force
    ours = interop.to_semi_structured(w, mask)
    assert raw(cutlass.packed.cpu()) == raw(ours.packed) and raw(cutlass.meta.cpu()) == raw(ours.meta)
    assert raw(interop.from_semi_structured(cutlass)) == raw(masked(w, mask))


def test_numpy_bytes_do_not_depend_on_the_host_byte_order():
    # The metadata is packed through explicit little-endian views (CUTLASS's order), not the host's.
    codes = np.arange(16, dtype=np.uint8).reshape(1, 16) % 16
    meta = _semi_structured._pack_codes(codes, 2)
    assert meta.dtype == np.int16 and meta.view(np.uint16).tolist() == [[0x3210, 0x7654, 0xBA98, 0xFEDC]]
    assert _semi_structured._unpack_codes(meta).tolist() == codes.tolist()
