"""The NumPy path (jaxprune/_host.py): eager calls on host arrays compile
nothing and give the compiled kernels' masks, bit for bit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import _host
from jaxprune._selection import forced
from jaxprune._trees import leaf_key

from test_properties import counting_traces


def _both(call):
    """(NumPy path result, compiled path result) as NumPy arrays (trees flattened)."""
    host = jax.tree.leaves(call())
    with forced(host=False):
        compiled = jax.tree.leaves(call())
    return [np.asarray(h) for h in host], [np.asarray(c) for c in compiled]


def assert_same_masks(call):
    host, compiled = _both(call)
    assert len(host) == len(compiled)
    for h, c in zip(host, compiled):
        assert h.dtype == c.dtype == np.bool_ and h.shape == c.shape
        np.testing.assert_array_equal(h, c)


# --------------------------------------------------------------------------
# jax's draws and key derivation, in NumPy
# --------------------------------------------------------------------------

KEYS = [jax.random.key(0), jax.random.key(2**31 - 1), jax.random.PRNGKey(12345), jax.random.key(7)]


@pytest.mark.parametrize("key", KEYS, ids=["key0", "key-big", "legacy", "key7"])
@pytest.mark.parametrize("n", [0, 1, 5, 10, 11, 64, 65535, 65536, 65537, 200_001])
def test_random_bits_are_jaxs(key, n):
    words = _host.threefry_key(key)
    assert words is not None
    np.testing.assert_array_equal(_host.random_bits(words, n), np.asarray(jax.random.bits(key, (n,), jnp.uint32)))


@pytest.mark.parametrize("key", KEYS, ids=["key0", "key-big", "legacy", "key7"])
@pytest.mark.parametrize("data", [0, 1, 2**31, 2**32 - 1, 0x9E3779B9])
def test_fold_in_is_jaxs(key, data):
    words = _host.threefry_words(key)
    assert words is not None
    ref = jax.random.fold_in(key, data)
    ref_words = jax.random.key_data(ref) if jax.dtypes.issubdtype(ref.dtype, jax.dtypes.prng_key) else ref
    assert _host.fold_in(words, data) == tuple(int(w) for w in np.asarray(ref_words))


def test_draws_and_keys_of_many_leaves_in_one_pass_are_jaxs():
    """random_bits_many / fold_in_many (a key per draw, one pass of NumPy
    rounds) and precomputed_bits give each leaf jax's own draws and keys."""
    keys = [_host.threefry_words(k) for k in KEYS]
    assert None not in keys
    sizes = [0, 1, 11, 4096]
    leaf_keys = [k for k in keys for _ in sizes]
    leaf_sizes = sizes * len(keys)
    refs = [np.asarray(jax.random.bits(key, (n,), jnp.uint32)) for key in KEYS for n in sizes]
    for got, ref in zip(_host.random_bits_many(leaf_keys, leaf_sizes), refs, strict=True):
        np.testing.assert_array_equal(got, ref)
    with _host.precomputed_bits(leaf_keys, leaf_sizes):
        for key, n, ref in zip(leaf_keys, leaf_sizes, refs):
            np.testing.assert_array_equal(_host.random_bits(key, n), ref)
        # each is handed out once: asked again, the draws are made again, the same
        np.testing.assert_array_equal(_host.random_bits(leaf_keys[-1], 4096), refs[-1])
    data = [0, 1, 2**31, 2**32 - 1, 0x9E3779B9] * 3  # (more than the few folded in Python ints)
    for key, words in zip(KEYS, keys):
        folded = [jax.random.fold_in(key, d) for d in data]
        ref = [tuple(int(w) for w in np.asarray(jax.random.key_data(f) if jax.dtypes.issubdtype(
            f.dtype, jax.dtypes.prng_key) else f)) for f in folded]
        assert _host.fold_in_many(words, data) == ref


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("n", [2.0, "fro", 1.0, math.inf, -math.inf, 0.0, 3.0, -1.0])
def test_norms_of_row_blocks_are_the_whole_arrays_bit_for_bit(dtype, n):
    """Slice norms along dim 0 of a big contiguous tensor are made a block of
    rows at a time; each equals the whole array's float64 reduction exactly
    (magnitudes spread over many binades, so any change of summation order shows)."""
    rng = np.random.default_rng(0)
    for shape in [(1000, 64), (1024, 576), (3, 40000), (70000, 1), (96, 40, 3, 3)]:
        if n == "fro" and len(shape) != 2:
            continue
        t = (rng.standard_normal(shape) * np.exp(rng.uniform(-8, 8, shape))).astype(dtype)
        others = tuple(range(1, t.ndim))
        a = np.abs(t.astype(np.float64))
        with np.errstate(divide="ignore", over="ignore"):
            ref = {2.0: lambda: np.sqrt(np.square(a).sum(axis=others)), 1.0: lambda: a.sum(axis=others),
                   math.inf: lambda: a.max(axis=others), -math.inf: lambda: a.min(axis=others),
                   0.0: lambda: np.count_nonzero(a, axis=others).astype(np.float64),
                   3.0: lambda: np.sum(a**3.0, axis=others) ** (1 / 3.0),
                   -1.0: lambda: np.sum(a**-1.0, axis=others) ** -1.0}[2.0 if n == "fro" else n]()
            got = _host.slice_norms(t, n, 0)
        np.testing.assert_array_equal(got.view(np.uint64), ref.view(np.uint64))


def test_leaf_keys_keep_their_type_and_bits():
    for key in KEYS:
        for path in ["", "a.kernel", "layers.10.mlp.weight", "ünïcode"]:
            got = leaf_key(key, path)
            assert got.dtype == key.dtype and got.shape == key.shape
            data = got if got.dtype == jnp.uint32 else jax.random.key_data(got)
            import hashlib
            folded = jax.random.fold_in(key, int.from_bytes(hashlib.blake2b(path.encode(), digest_size=4).digest(),
                                                             "little"))
            ref = folded if folded.dtype == jnp.uint32 else jax.random.key_data(folded)
            np.testing.assert_array_equal(np.asarray(data), np.asarray(ref))


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1])
def test_seed_words_are_jax_random_key_without_compiling(seed):
    # The README's ways to get jax.random.key(seed) on a fresh process without
    # jax's seeding kernel: its words wrapped, or as a NumPy key. The same masks.
    words = np.array([0, seed], np.uint32)
    t = np.ones((6, 7), np.float32)
    with counting_traces() as traces:
        key = jax.random.wrap_key_data(words)
        masks = [jp.random_structured(k, t, 0.5, dim=1) for k in (key, words)]
        masks.append(jp.prune_tree(words, {"a": t}, {"a": jp.RandomUnstructured(0.5)})["a"])
    assert traces == []
    ref = jax.random.key(seed)
    assert key.dtype == ref.dtype
    assert np.asarray(jax.random.key_data(key)).tolist() == np.asarray(jax.random.key_data(ref)).tolist()
    want = [jp.random_structured(ref, t, 0.5, 1), jp.random_structured(ref, t, 0.5, 1),
            jp.prune_tree(ref, {"a": t}, {"a": jp.RandomUnstructured(0.5)})["a"]]
    for got, expected in zip(masks, want, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("host_max", [None, 0], ids=["numpy", "kernels"])
def test_tree_random_masks_draw_from_leaf_key(host_max):
    # The planner hands its own random methods a NumPy leaf's key as plain
    # words: the masks must stay those of leaf_key's typed key, on both paths.
    tree = {"a": np.ones((40, 3), np.float32), "b": {"c": np.ones((5, 7), np.float16)}, "d": np.ones(30, np.float32)}
    rules = {"a": jp.RandomStructured(0.4, 0), "b.c": jp.RandomUnstructured(0.5), "d": jp.RandomUnstructured(7)}
    key = jax.random.key(21)
    with forced(host_max=host_max) if host_max is not None else forced():
        got = jp.prune_tree(key, tree, rules)
    want = {"a": jp.random_structured(leaf_key(key, "a"), tree["a"], 0.4, 0),
            "b": {"c": jp.random_unstructured(leaf_key(key, "b.c"), tree["b"]["c"], 0.5)},
            "d": jp.random_unstructured(leaf_key(key, "d"), tree["d"], 7)}
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_threefry_words_read_under_a_trace_give_none():
    seen = []
    jax.jit(lambda k: seen.append(_host.threefry_words(k)) or k)(jax.random.key(3))
    assert seen == [None]
    assert _host.threefry_words(jax.random.key(3)) == (0, 3)


def test_keys_numpy_cannot_reproduce_take_the_compiled_path():
    key = jax.random.key(0, impl="rbg")
    assert _host.threefry_key(key) is None
    t = np.ones((6, 7), np.float32)
    assert_same_masks(lambda: jp.random_unstructured(key, t, 0.4))
    assert_same_masks(lambda: jp.random_structured(key, t, 0.5, dim=1))
    assert_same_masks(lambda: jp.global_unstructured({"a": t, "b": t[0]}, 0.3, method="random", key=key))


# --------------------------------------------------------------------------
# The same masks as the compiled kernels
# --------------------------------------------------------------------------

DTYPES = [np.float32, jnp.bfloat16, np.float16, np.int8, np.int32, np.uint8]


def _values(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, int(info.max) + 1, size=shape)
        x.flat[: x.size // 4] = rng.integers(-2, 3, size=x.size // 4).clip(info.min)  # ties
        return x.astype(dtype)
    x = rng.standard_normal(shape) * np.where(rng.random(shape) < 0.3, 1e-39, 1.0)
    x = np.where(rng.random(shape) < 0.2, np.round(x), x)  # ties, zeros
    flat = x.reshape(-1)
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, np.nan]
    flat[: len(specials)] = specials[: flat.size]
    return rng.permutation(flat).reshape(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1,), (9, 13), (4, 3, 5)])
def test_unstructured_methods_match_the_kernels(dtype, shape):
    t = _values(shape, dtype, 1)
    dm = np.random.default_rng(2).random(shape) > 0.3
    dm.flat[-1] = True  # a candidate left for amount=1
    key = jax.random.key(5)
    for amount in (0, 1, 0.37, 0.5, 1.0):
        assert_same_masks(lambda: jp.l1_unstructured(t, amount))
        assert_same_masks(lambda: jp.l1_unstructured(t, amount, default_mask=dm))
        assert_same_masks(lambda: jp.unstructured_mask(t, amount, default_mask=dm))
        assert_same_masks(lambda: jp.random_unstructured(key, t, amount, default_mask=dm))
        assert_same_masks(lambda: jp.l1_unstructured(t, amount, importance_scores=_values(shape, dtype, 3)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,dim", [((9, 13), 1), ((4, 3, 5), 1), ((6, 2, 3, 3), 0)])
def test_structured_methods_match_the_kernels(dtype, shape, dim):
    t = _values(shape, dtype, 4)
    dm = np.random.default_rng(5).random(shape) > 0.1
    dm[tuple(slice(0, 1) if d == dim else slice(None) for d in range(len(shape)))] = False  # a slice pruned before
    key = jax.random.key(6)
    for amount in (0, 1, 0.5, 1.0):
        assert_same_masks(lambda: jp.random_structured(key, t, amount, dim, default_mask=dm))
        for n in (math.inf, -math.inf, 0):  # exact norms: both paths rank the same values
            assert_same_masks(lambda: jp.ln_structured(t, amount, n, dim, default_mask=dm))
        scores = _values((shape[dim],), dtype, 7)
        assert_same_masks(lambda: jp.structured_mask(scores, shape, amount, dim, default_mask=dm))


def test_slices_sorted_or_selected_give_one_mask(monkeypatch):
    # Few slices are sorted outright, many go through the keys' selection: one order.
    from jaxprune import _methods

    scores = _values((300,), np.float32, 16)  # NaN, +-inf, +-0.0, ties
    t = _values((300, 3), np.float32, 17)
    dm = np.random.default_rng(18).random((300, 3)) > 0.2
    dm[:40] = False  # slices pruned before

    def masks():
        return [np.asarray(m) for amount in (1, 0.3, 0.97) for m in (
            jp.structured_mask(scores, (300, 3), amount, 0, default_mask=dm),
            jp.structured_mask(_values((300,), np.int32, 20), (300, 3), amount, 0),
            jp.ln_structured(t, amount, 1, 0, default_mask=dm),
            jp.random_structured(jax.random.key(19), t, amount, 0, default_mask=dm))]

    sorted_masks = masks()
    monkeypatch.setattr(_methods, "_SORT_SLICES_MAX", 0)
    for got, want in zip(masks(), sorted_masks, strict=True):
        np.testing.assert_array_equal(got, want)


def test_dyadic_norms_match_the_kernels():
    """n=1 and n=2 norms of dyadic values are exact sums on both paths."""
    t = (np.random.default_rng(8).integers(-8, 9, size=(32, 20)) / 4).astype(np.float32)
    for n in (1, 2, "fro"):
        for dim in (0, 1):
            assert_same_masks(lambda: jp.ln_structured(t, 0.4, n, dim))


@pytest.mark.parametrize("method", ["l1", "random"])
def test_global_masks_match_the_kernels(method):
    rng = np.random.default_rng(9)
    tree = {"a": _values((30, 20), np.float32, 10), "b": _values((7,), np.float32, 11),
            "c": _values((4, 5, 3), jnp.bfloat16, 12), "d": _values((9, 9), np.float16, 13)}
    if method == "l1":
        tree["e"] = _values((3, 3), np.int8, 14)
    dms = {k: rng.random(np.shape(v)) > 0.2 for k, v in tree.items()}
    key = jax.random.key(15) if method == "random" else None
    for amount in (0, 5, 0.3, 0.99, 1.0):
        assert_same_masks(lambda: jp.global_unstructured(tree, amount, method=method, key=key))
        assert_same_masks(lambda: jp.global_unstructured(tree, amount, method=method, key=key, default_masks=dms))


# --------------------------------------------------------------------------
# Subnormals rank by their bits
# --------------------------------------------------------------------------


def test_subnormals_are_not_zero():
    """XLA:CPU compares floats with subnormals flushed to zero; ranks are read from the bits."""
    t = jnp.array([1e-40, 0.0, 1.0, 2e-40])
    expected = [True, False, True, True]  # torch prunes the 0, the smallest magnitude
    assert np.asarray(jp.l1_unstructured(t, 1)).tolist() == expected
    with forced(host=False):
        assert np.asarray(jp.l1_unstructured(t, 1)).tolist() == expected
    assert np.asarray(jax.jit(jp.l1_unstructured, static_argnums=1)(t, 1)).tolist() == expected
    neg = jnp.array([-1e-40, -0.0, 0.0, -2e-40])  # -0.0 ties with +0.0: the lower index goes first
    assert np.asarray(jp.l1_unstructured(neg, 2)).tolist() == [True, False, False, True]
    with forced(host=False):
        assert np.asarray(jp.l1_unstructured(neg, 2)).tolist() == [True, False, False, True]


def test_subnormal_norms_rank_as_torchs():
    torch = pytest.importorskip("torch")
    import torch.nn.utils.prune as prune

    t = np.array([[1e-40, 0.0], [0.0, 0.0], [3e-40, 0.0], [0.0, 2e-40]], np.float32)
    for n in (math.inf, 1, 2):
        theirs = prune.LnStructured(2, n=n, dim=0).compute_mask(torch.from_numpy(t), torch.ones(4, 2))
        assert np.asarray(jp.ln_structured(t, 2, n, 0)).tolist() == theirs.bool().tolist(), n
    with forced(host=False):  # the kernels: inf reads bits; sums of subnormals flush on XLA:CPU
        assert np.asarray(jp.ln_structured(t, 2, math.inf, 0)).tolist() == [[False, False], [False, False],
                                                                            [True, True], [True, True]]


# --------------------------------------------------------------------------
# When the NumPy path runs
# --------------------------------------------------------------------------


def test_inputs_above_host_max_take_the_kernels():
    t = jax.device_put(np.arange(12, dtype=np.float32))
    jp.l1_unstructured(t, 0.5)
    with forced(host_max=12), counting_traces() as traces:
        jp.l1_unstructured(t, 0.5)
    assert traces == []
    with forced(host_max=11), counting_traces() as traces:
        jp.l1_unstructured(t, 0.5)
    assert traces


def test_traced_inputs_take_the_kernels():
    t = np.arange(10, dtype=np.float32)
    out = jax.jit(lambda x: jp.l1_unstructured(x, 3))(t)
    assert np.asarray(out).tolist() == [False] * 3 + [True] * 7


def test_a_committed_input_gets_a_committed_result_on_its_device():
    device = jax.devices()[-1]
    t = jax.device_put(np.arange(10, dtype=np.float32), device)
    assert t.committed
    for mask in (jp.l1_unstructured(t, 3), jp.random_unstructured(jax.random.key(0), t, 3), jp.identity(t),
                 jp.global_unstructured({"t": t}, 3)["t"]):
        assert mask.committed and mask.devices() == {device}
    loose = jp.l1_unstructured(np.arange(10, dtype=np.float32), 3)
    assert not loose.committed


def test_the_host_path_does_not_change_its_inputs():
    t = _values((20, 10), np.float32, 20)
    dm = np.random.default_rng(21).random((20, 10)) > 0.5
    before = t.copy(), dm.copy()
    jp.l1_unstructured(t, 0.5, default_mask=dm)
    jp.ln_structured(t, 0.5, 2, 0, default_mask=dm)
    jp.global_unstructured({"t": t}, 0.5, default_masks={"t": dm})
    np.testing.assert_array_equal(t, before[0])
    np.testing.assert_array_equal(dm, before[1])
