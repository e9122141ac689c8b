"""Each way a mask takes its parameter's sharding (jaxprune/_sharding.py),
forced one at a time on this jax: the same bits as the default path, the
parameter's sharding, eager and under jit, in auto and explicit sharding mode
(the references: the NumPy path on unsharded inputs, bit for bit the kernels').

``forced(sharding=("derive",))`` is what runs in auto mode on a jax without
``shard_alike`` (>= 0.11); ``("reshard", "device_put", "derive")`` is the
whole chain there. Small arrays: the whole file takes seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune as jp
from jaxprune import _selection, _sharding

SPEC = P("a", "b")
KEY = jax.random.key(3)
NEWER_JAX = ("reshard", "device_put", "derive")  # the chain where jax has no shard_alike


def _inputs() -> dict[str, np.ndarray]:
    """``w`` is above the sort threshold (the radix passes and, on ``tied``,
    whose values are few, the tie cut run); ``small`` pairs stay below it
    (the sort path: quick to compile)."""
    w = np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32)
    tied = np.round(w * 2) / 2
    return {"w": w, "tied": tied, "small": w[:32, :64].copy(), "small_tied": tied[:32, :64].copy()}


Inputs = dict[str, jax.Array]
# Each method under jit and eagerly; the traced call sites of like() are all on
# these paths (radix, tie cut, draws, slices, global), each compiled once.
METHODS: dict[str, Callable[[Inputs], object]] = {
    "l1-ties": lambda a: jp.l1_unstructured(a["tied"], 0.55),
    "random-unstructured": lambda a: jp.random_unstructured(KEY, a["small"], 0.3),
    "random-structured": lambda a: jp.random_structured(KEY, a["w"], 0.25, dim=0),
    "ln-structured": lambda a: jp.ln_structured(a["w"], 0.25, 2, dim=1),
    "identity": lambda a: jp.identity(a["w"]),
    "global-random": lambda a: jp.global_unstructured({"w": a["small"], "t": a["small_tied"]}, 0.3, method="random",
                                                      key=KEY),
}
# Eagerly only: big leaves take the leaf-by-leaf kernels (select_lowest_by_leaf).
EAGER: dict[str, Callable[[Inputs], object]] = {
    "global-l1-by-leaf": lambda a: jp.global_unstructured({"w": a["w"], "t": a["tied"]}, 0.6),
    "global-random-by-leaf": lambda a: jp.global_unstructured({"w": a["w"], "t": a["tied"]}, 0.3, method="random",
                                                              key=KEY),
}


def _mesh(axis_type: AxisType) -> jax.sharding.Mesh:
    return jax.make_mesh((4, 2), ("a", "b"), axis_types=(axis_type, axis_type))


@contextlib.contextmanager
def _mode(explicit: bool, chain: tuple[str, ...]) -> Iterator[NamedSharding]:
    """The block runs in auto or explicit mode (the mesh set) with only
    ``chain``'s ways; yields the parameters' sharding."""
    mesh = _mesh(AxisType.Explicit if explicit else AxisType.Auto)
    with (jax.set_mesh(mesh) if explicit else contextlib.nullcontext()), _selection.forced(sharding=chain):
        yield NamedSharding(mesh, SPEC)


@pytest.fixture(scope="module")
def references() -> dict[str, list[np.ndarray]]:
    """Every method's masks on unsharded NumPy inputs: the NumPy path, bit for
    bit the kernels' (tests/test_host.py), and nothing to compile."""
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return {name: [np.asarray(m) for m in jax.tree.leaves(f(_inputs()))] for name, f in {**METHODS, **EAGER}.items()}


def _placed(sharding: NamedSharding) -> Inputs:
    return {name: jax.device_put(x, sharding) for name, x in _inputs().items()}


def _check(results: object, expected: list[np.ndarray], sharding: NamedSharding, what: str) -> None:
    got = jax.tree.leaves(results)
    assert len(got) == len(expected), what
    for mask, ref in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(mask), ref, err_msg=what)
        assert mask.sharding.is_equivalent_to(sharding, mask.ndim), (what, mask.sharding)


# In auto mode the default chain takes shard_alike where jax ships it (as
# tests/multidevice/test_sharded_masks.py does), derive elsewhere. Not skipped
# where it is missing: tests/test_multidevice.py wants no skips.
WAYS = [(False, ("derive",)), (True, _sharding.CHAIN), (True, NEWER_JAX)]
WAYS += [(False, ("shard_alike",))] if _sharding._shard_alike is not None else []


@pytest.mark.parametrize(("explicit", "chain"), WAYS,
                         ids=lambda v: ("explicit" if v else "auto") if isinstance(v, bool) else "-".join(v))
def test_each_way_keeps_bits_and_sharding(explicit, chain, references):
    with _mode(explicit, chain) as sharding:
        a = _placed(sharding)
        if explicit:
            assert jax.typeof(a["w"]).sharding.spec == SPEC  # the type carries the sharding
        jitted = jax.jit(lambda a: {name: f(a) for name, f in METHODS.items()})(a)  # one compilation
        for name, f in METHODS.items():
            _check(jitted[name], references[name], sharding, f"{name} under jit")
            _check(f(a), references[name], sharding, f"{name} eager")
        for name, f in EAGER.items():
            _check(f(a), references[name], sharding, f"{name} eager")


def test_traced_amount_in_explicit_mode(references):
    with _mode(True, NEWER_JAX) as sharding:
        a = _placed(sharding)
        got = jax.jit(lambda t, amount: jp.l1_unstructured(t, amount))(a["tied"], jnp.float32(0.55))
        _check(got, references["l1-ties"], sharding, "traced amount")
        assert jax.typeof(got).sharding.spec == SPEC


def test_without_any_way_jit_loses_the_sharding_and_eager_calls_are_placed(references):
    """The control: with no way at all, a jitted random mask does not come
    back sharded like its parameter (so the test above can fail), while an
    eager call still does (the API's boundary puts it there)."""
    with _mode(False, ()) as sharding:
        a = _placed(sharding)
        lost = jax.jit(METHODS["random-structured"])(a)
        np.testing.assert_array_equal(np.asarray(lost), references["random-structured"][0])
        assert not lost.sharding.is_equivalent_to(sharding, 2), lost.sharding
        for name in ("random-unstructured", "random-structured", "identity", "global-random"):
            _check(METHODS[name](a), references[name], sharding, f"{name} eager, no way")


def test_derive_keeps_the_bits_of_every_dtype():
    mesh = _mesh(AxisType.Auto)
    t = jax.device_put(np.linspace(-3, 3, 64 * 8, dtype=np.float32).reshape(64, 8), NamedSharding(mesh, SPEC))
    xs = {
        "bool": np.arange(512).reshape(64, 8) % 3 == 0,
        "uint32": np.arange(512, dtype=np.uint32).reshape(64, 8) * np.uint32(2654435761),
        "int8": (np.arange(512) % 256 - 128).astype(np.int8).reshape(64, 8),
        "float32": np.array([np.nan, -0.0, np.inf, -1e-40] * 128, np.float32).reshape(64, 8),
        "bfloat16": np.array([np.nan, -0.0, -np.inf, 1.5] * 128, jnp.bfloat16).reshape(64, 8),
    }
    for dtype, x in xs.items():
        for ts in (t, t.astype(jnp.bfloat16), t > 0, t.astype(jnp.int8)):
            got = jax.jit(lambda x, ts: _sharding.constrain(x, ts, ("derive",)))(x, ts)
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(np.asarray(got).view(np.uint8), x.view(np.uint8), err_msg=dtype)
            assert got.sharding.is_equivalent_to(ts.sharding, 2), (dtype, ts.dtype, got.sharding)


def test_forced_checks_the_ways():
    with pytest.raises(ValueError, match=r"unknown sharding ways \['shard_like'\]; expected some of \['reshard'"):
        with _selection.forced(sharding=("shard_like",)):
            pass
    with pytest.raises(TypeError, match=r"sharding must be a sequence of ways, got the string 'derive'"):
        with _selection.forced(sharding="derive"):
            pass


def test_explicit_type_is_kept_on_one_device(references):
    """With one device the selection does not keep shapes (the chunked path),
    yet an explicit-sharding type is part of the mask's type: kept."""
    mesh = jax.make_mesh((1,), ("a",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:1])
    with jax.set_mesh(mesh), _selection.forced(keep_shapes=False):
        a = {name: jax.device_put(x, NamedSharding(mesh, P("a"))) for name, x in _inputs().items()}
        for name in ("identity", "random-structured", "l1-ties"):
            for how, f in (("eager", METHODS[name]), ("under jit", jax.jit(METHODS[name]))):
                got = f(a)
                np.testing.assert_array_equal(np.asarray(got), references[name][0], err_msg=f"{name} {how}")
                assert jax.typeof(got).sharding.spec == jax.typeof(a["w"]).sharding.spec, (name, how, jax.typeof(got))
