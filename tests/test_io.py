"""save_tree / load_tree (safetensors): masks, params and whole optimizer
states round-trip, and a run restored from files continues bitwise identically
to an uninterrupted one. The pure-NumPy codec (jaxprune._safetensors): every
dtype it writes loads back, files agree with the safetensors package both
ways, and broken or hostile files are one clear error naming the file."""

import functools
import json
import os
import struct

import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from helpers import assert_trees_identical, is_none
from jaxprune import _safetensors

KEY = jax.random.key(0)


def load_file(path):
    return _safetensors.read(path)[0]


X = jax.random.normal(jax.random.key(100), (16, 8))
Y = jax.random.normal(jax.random.key(101), (16, 10))



def normal(seed, shape, scale=0.5):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def make_params(seed=0):
    return {"a": {"kernel": normal(seed + 1, (8, 12)), "bias": normal(seed + 2, (12,), 0.1)},
            "c": {"kernel": normal(seed + 3, (12, 10)), "bias": normal(seed + 4, (10,), 0.1)}}


def loss_fn(params):
    h = jax.nn.relu(X @ params["a"]["kernel"] + params["a"]["bias"][None, :])
    return jnp.mean((h @ params["c"]["kernel"] + params["c"]["bias"][None, :] - Y) ** 2)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.encoder = nnx.Linear(8, 12, rngs=rngs)
        self.decoder = nnx.Linear(12, 10, rngs=rngs)

    def __call__(self, x):
        return self.decoder(nnx.relu(self.encoder(x)))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(12)(x)))


def dict_masks():
    return make_params(), jp.prune_tree(KEY, make_params(), {"a.kernel": jp.RandomUnstructured(0.5),
                                                             "c.*": jp.L1Unstructured(0.3)})


def nnx_masks():
    state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    return state, jp.prune_tree(KEY, state, {"*.kernel": jp.RandomStructured(0.5, dim=-1)})


def linen_masks():
    variables = LinenMLP().init(jax.random.key(0), X)
    return variables, jp.prune_tree(KEY, variables, {"*.kernel": jp.GlobalUnstructured(0.6)})


def list_masks():
    params = [normal(0, (4, 4)), (normal(1, (3,)), {"w": normal(2, (2, 5))})]
    return params, jp.prune_tree(None, params, {"1.1.w": jp.L1Unstructured(3), "0": jp.L1Unstructured(0.5)})


@pytest.mark.parametrize("make", [dict_masks, nnx_masks, linen_masks, list_masks],
                         ids=["dict", "nnx-state", "linen", "list-tuple"])
def test_masks_round_trip(make, tmp_path):
    params, masks = make()
    path = tmp_path / "masks.safetensors"
    jp.save_tree(path, masks)
    loaded = jp.load_tree(path, like=masks)
    assert type(loaded) is type(masks)
    assert_trees_identical(loaded, masks)
    # the loaded masks work as masks
    assert_trees_identical(jp.apply_masks(params, loaded), jp.apply_masks(params, masks))
    assert jp.sparsity_report(params, loaded).as_dict() == jp.sparsity_report(params, masks).as_dict()
    # and so do the params themselves
    ppath = tmp_path / "params.safetensors"
    jp.save_tree(ppath, params)
    assert_trees_identical(jp.load_tree(ppath, like=params), params)


def test_file_holds_one_bool_tensor_per_mask_named_by_path(tmp_path):
    _, masks = dict_masks()
    path = tmp_path / "m.safetensors"
    jp.save_tree(str(path), masks)  # a str path works as well as a Path
    stored = load_file(str(path))
    assert sorted(stored) == ["a.kernel", "c.bias", "c.kernel"]
    for name, tensor in stored.items():
        assert tensor.dtype == np.bool_
        first, second = name.split(".")
        np.testing.assert_array_equal(tensor, np.asarray(masks[first][second]))
    nnx_state, nnx_m = nnx_masks()
    jp.save_tree(path, nnx_m)  # overwrites
    assert sorted(load_file(str(path))) == ["decoder.kernel", "encoder.kernel"]


def test_masks_load_into_a_fresh_like_tree(tmp_path):
    """like= only gives the structure: a freshly computed mask tree of other values works."""
    state, masks = nnx_masks()
    path = tmp_path / "m.safetensors"
    jp.save_tree(path, masks)
    fresh_state = nnx.state(MLP(nnx.Rngs(9)), nnx.Param)
    like = jp.prune_tree(jax.random.key(9), fresh_state, {"*.kernel": jp.RandomStructured(0.5, dim=-1)})
    loaded = jp.load_tree(path, like=like)
    assert_trees_identical(loaded, masks)


@pytest.mark.parametrize(
    "value",
    [jnp.int32(7), jnp.float32(0.25), jnp.array(True), jnp.zeros((), jnp.uint32)],
    ids=["int32", "float32", "bool", "uint32"],
)
def test_scalar_leaves_keep_their_shape(value, tmp_path):
    """0-d leaves (an optimizer's step count) come back 0-d."""
    tree = {"count": value, "w": jnp.ones((2, 3))}
    path = tmp_path / "s.safetensors"
    jp.save_tree(path, tree)
    assert load_file(str(path))["count"].shape == ()
    loaded = jp.load_tree(path, like=tree)
    assert_trees_identical(loaded, tree)


def test_pruning_state_round_trip(tmp_path):
    params = make_params()
    tx = jp.pruning(optax.sgd(0.1, momentum=0.9), {"*.kernel": jp.L1Unstructured}, jp.one_shot_schedule(0.5, 0))
    state = tx.init(params)
    _, state = jax.jit(tx.update)(jax.grad(loss_fn)(params), state, params)
    path = tmp_path / "state.safetensors"
    jp.save_tree(path, state)
    loaded = jp.load_tree(path, like=tx.init(make_params(seed=3)))
    assert isinstance(loaded, jp.PruningState)
    assert_trees_identical(loaded, state)
    assert int(loaded.count) == 1


def test_load_tree_rejects_mismatches(tmp_path):
    _, masks = dict_masks()
    path = tmp_path / "m.safetensors"
    jp.save_tree(path, masks)
    missing = {"a": {"kernel": masks["a"]["kernel"], "bias": None},
               "c": {"kernel": masks["c"]["kernel"], "bias": masks["c"]["bias"]},
               "d": {"kernel": masks["c"]["kernel"]}}
    with pytest.raises(ValueError, match="d.kernel"):
        jp.load_tree(path, like=missing)
    fewer = {"a": {"kernel": masks["a"]["kernel"], "bias": None}, "c": {"kernel": masks["c"]["kernel"], "bias": None}}
    with pytest.raises(ValueError, match="c.bias"):
        jp.load_tree(path, like=fewer)
    wrong_shape = jax.tree.map(lambda m: m, masks)
    wrong_shape["a"]["kernel"] = jnp.ones((12, 8), bool)
    with pytest.raises(ValueError, match="a.kernel"):
        jp.load_tree(path, like=wrong_shape)
    wrong_dtype = jax.tree.map(lambda m: m, masks)
    wrong_dtype["a"]["kernel"] = jnp.ones((8, 12), jnp.float32)
    with pytest.raises(ValueError, match="a.kernel"):
        jp.load_tree(path, like=wrong_dtype)


# --------------------------------------------------------------------------
# Optimizer state and restored runs
# --------------------------------------------------------------------------

SCHED = jp.polynomial_schedule(0.0, 0.8, start=2, end=30, every=4)
RULES = {"a.kernel": jp.RandomUnstructured, "c.kernel": functools.partial(jp.LnStructured, n=2, dim=-1),
         "*.bias": jp.GlobalUnstructured(0.0, method="random")}
INNERS = {
    "sgd-momentum": lambda: optax.sgd(0.05, momentum=0.9),
}


def make_step(tx):
    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


@pytest.mark.parametrize("name", list(INNERS), ids=list(INNERS))
def test_restored_run_continues_bitwise(name, tmp_path, standard_promotion):
    n_first, n_second = 13, 21  # the save falls between two mask updates; updates follow

    # the uninterrupted run
    tx = jp.pruning(INNERS[name](), RULES, SCHED, key=KEY)
    step = make_step(tx)
    params, state = make_params(), None
    state = tx.init(params)
    full_masks = []
    for t in range(n_first + n_second):
        params, state = step(params, state)
        full_masks.append(state.masks)
        if t == n_first - 1:
            saved_params, saved_state = params, state
            jp.save_tree(tmp_path / "params.safetensors", params)
            jp.save_tree(tmp_path / "opt_state.safetensors", state)
    full_params, full_state = params, state

    # a fresh start: other params, a new transformation and state, loaded from files
    fresh_params = make_params(seed=50)
    tx2 = jp.pruning(INNERS[name](), RULES, SCHED, key=KEY)
    fresh_state = tx2.init(fresh_params)
    params2 = jp.load_tree(tmp_path / "params.safetensors", like=fresh_params)
    state2 = jp.load_tree(tmp_path / "opt_state.safetensors", like=fresh_state)
    assert isinstance(state2, jp.PruningState)
    assert_trees_identical(params2, saved_params)
    assert_trees_identical(state2, saved_state)
    assert int(state2.count) == n_first
    step2 = make_step(tx2)
    for t in range(n_second):
        params2, state2 = step2(params2, state2)
        assert_trees_identical(state2.masks, full_masks[n_first + t])
    assert_trees_identical(params2, full_params)
    assert_trees_identical(state2, full_state)
    # the run did prune after the restore
    assert int(np.sum(~np.asarray(full_state.masks["a"]["kernel"]))) == round(0.8 * 96)
    assert int(np.sum(~np.asarray(saved_state.masks["a"]["kernel"]))) < round(0.8 * 96)


def test_nnx_optimizer_restored_run_continues_bitwise(tmp_path, standard_promotion):
    rules = {"encoder.kernel": jp.RandomUnstructured, "decoder.kernel": jp.L1Unstructured,
             "*.bias": jp.RandomUnstructured}

    def build(seed):
        model = MLP(nnx.Rngs(seed))
        tx = jp.pruning(optax.adam(optax.linear_schedule(1e-2, 1e-3, 30)), rules, SCHED, key=KEY)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    n_first, n_second = 11, 23
    model, optimizer = build(0)
    for t in range(n_first + n_second):
        step(model, optimizer)
        if t == n_first - 1:
            jp.save_tree(tmp_path / "model.safetensors", nnx.state(model, nnx.Param))
            jp.save_tree(tmp_path / "optimizer.safetensors", nnx.state(optimizer))
            saved_masks = jax.tree.map(np.asarray, nnx.state(optimizer)["opt_state"]["masks"])

    model2, optimizer2 = build(7)
    nnx.update(model2, jp.load_tree(tmp_path / "model.safetensors", like=nnx.state(model2, nnx.Param)))
    nnx.update(optimizer2, jp.load_tree(tmp_path / "optimizer.safetensors", like=nnx.state(optimizer2)))
    assert_trees_identical(nnx.state(optimizer2)["opt_state"]["masks"], saved_masks)
    for _ in range(n_second):
        step(model2, optimizer2)
    assert_trees_identical(nnx.state(model2, nnx.Param), nnx.state(model, nnx.Param))
    assert_trees_identical(nnx.state(optimizer2), nnx.state(optimizer))
    kernel = np.asarray(model2.encoder.kernel[...])
    mask = np.asarray(optimizer2.opt_state.masks["encoder"]["kernel"][...])
    assert int((~mask).sum()) == round(0.8 * 96)
    assert np.all(kernel[~mask] == 0)


# --------------------------------------------------------------------------
# Every dtype saved loads back; the codec against the safetensors package
# --------------------------------------------------------------------------


def test_numpy_wide_leaves_and_python_scalars_load_back(tmp_path):
    """float64 / int64 NumPy leaves and Python scalars were written, then refused by load_tree."""
    tree = {"w": np.array([0.1, 1e300]), "n": np.arange(3, dtype=np.int64), "step": 7, "lr": 0.25,
            "flag": True, "u": np.uint64(2**63 + 1), "x": jnp.ones(2, jnp.float32)}
    path = tmp_path / "t.safetensors"
    jp.save_tree(path, tree)
    loaded = jp.load_tree(path, like=tree)
    assert loaded["step"] == 7 and type(loaded["step"]) is int
    assert loaded["lr"] == 0.25 and type(loaded["lr"]) is float
    assert loaded["flag"] is True
    assert loaded["u"] == np.uint64(2**63 + 1) and loaded["u"].dtype == np.uint64
    assert loaded["w"].dtype == np.float64 and loaded["w"].tolist() == [0.1, 1e300]
    assert loaded["n"].dtype == np.int64 and loaded["n"].tolist() == [0, 1, 2]
    assert isinstance(loaded["x"], jax.Array) and loaded["x"].dtype == jnp.float32


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "bfloat16"])
def test_float8_and_bfloat16_leaves_load_back(dtype, tmp_path):
    """float8 leaves were written by save_tree but could not be read back."""
    import ml_dtypes

    value = np.array([[0.5, 2.0], [4.0, 1.0]], getattr(ml_dtypes, dtype))
    tree = {"q": value, "j": jnp.asarray(value)}
    path = tmp_path / "f8.safetensors"
    jp.save_tree(path, tree)
    loaded = jp.load_tree(path, like=tree)
    for leaf in loaded.values():
        assert leaf.dtype.name == dtype and np.asarray(leaf).astype(np.float32).tolist() == [[0.5, 2.0], [4.0, 1.0]]


def test_a_dtype_safetensors_cannot_hold_is_refused_before_writing(tmp_path):
    path = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match=r"leaf 'z' has dtype complex128"):
        jp.save_tree(path, {"z": np.ones(2, np.complex128)})
    assert os.listdir(tmp_path) == []


def test_a_failed_save_leaves_no_temporary_file(tmp_path):
    """save_tree wrote path.tmp and left it behind when the rename failed (here: path is a folder)."""
    target = tmp_path / "taken.safetensors"
    target.mkdir()
    with pytest.raises(OSError):
        jp.save_tree(target, {"w": jnp.ones(3)})
    assert os.listdir(tmp_path) == ["taken.safetensors"] and os.listdir(target) == []


def test_files_agree_with_the_safetensors_package_both_ways(tmp_path):
    sf = pytest.importorskip("safetensors.numpy")
    import ml_dtypes

    tensors = {"b": np.array([True, False]), "f": np.arange(6, dtype=np.float32).reshape(2, 3),
               "h": np.array([1.5], ml_dtypes.bfloat16), "i": np.arange(4, dtype=np.int64),
               "s": np.array(3.0, np.float64), "c": np.array([1 + 2j], np.complex64)}
    ours = tmp_path / "ours.safetensors"
    with open(ours, "wb") as f:
        _safetensors.write(f, tensors, {"format": "np"})
    theirs = sf.load_file(str(ours))
    for name, value in tensors.items():
        assert theirs[name].dtype == value.dtype and np.array_equal(theirs[name], value), name
    package = tmp_path / "package.safetensors"
    sf.save_file(tensors, str(package), metadata={"a": "b"})
    read, metadata = _safetensors.read(package)
    assert metadata == {"a": "b"}
    for name, value in tensors.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape
        assert np.array_equal(read[name], value), name


def safetensors_bytes(header, body=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE = {
    "deep nesting": (safetensors_bytes(b"[" * 100_000), "nests too deeply"),
    "1e400 in a shape": (safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 8]}}',
                                           bytes(8)), "non-negative integers"),
    "1e400 in an offset": (safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e400]}}',
                                             bytes(8)), "data_offsets"),
    "65 dims": (safetensors_bytes({"w": {**ENTRY, "shape": [1] * 65, "data_offsets": [0, 4]}}, bytes(4)),
                "65 dimensions"),
    "shape [0, 2**63]": (safetensors_bytes({"w": {**ENTRY, "shape": [0, 2**63], "data_offsets": [0, 0]}}),
                         "too large"),
    "offsets out of the file": (safetensors_bytes({"w": {**ENTRY, "data_offsets": [0, 8]}}, bytes(4)),
                                "do not fit"),
    "overlapping data": (safetensors_bytes({"a": ENTRY, "b": {**ENTRY, "data_offsets": [4, 12]}}, bytes(12)),
                         "overlaps"),
    "a gap": (safetensors_bytes({"a": {**ENTRY, "data_offsets": [4, 12]}}, bytes(12)), "gap"),
    "trailing bytes": (safetensors_bytes({"a": ENTRY}, bytes(12)), "4 bytes after"),
    "a key twice": (safetensors_bytes(b'{"w": {}, "w": {}}'), "'w' appears twice"),
    "unknown dtype": (safetensors_bytes({"w": {**ENTRY, "dtype": "Q9"}}, bytes(8)), "dtype 'Q9'"),
    "packed dtype": (safetensors_bytes({"w": {**ENTRY, "dtype": "F4"}}, bytes(8)), "packed dtype F4"),
    "a header longer than the file": (struct.pack("<Q", 2**40) + b"{}", "does not fit"),
    "truncated": (safetensors_bytes({"w": ENTRY}, bytes(8))[:-3], "do not fit"),
    "too short": (b"\x01\x00", "too short"),
    "bad metadata": (safetensors_bytes({"__metadata__": {"a": 1}}), "__metadata__"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_broken_and_hostile_files_are_one_clear_error_naming_the_file(name, tmp_path):
    """Before: SafetensorError text, RecursionError, OverflowError or NumPy's ValueError."""
    data, reason = HOSTILE[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a valid safetensors file") as info:
        jp.load_tree(path, like={"w": jnp.ones(2)})
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_only_regular_files_are_read(tmp_path):
    """A FIFO blocked forever; a symlink to /dev/zero read until memory ran out."""
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(OSError, match="not a regular file"):
            _safetensors.read(path)
    with pytest.raises(IsADirectoryError):
        _safetensors.read(tmp_path)
