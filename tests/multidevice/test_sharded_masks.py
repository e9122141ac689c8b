"""Masks of sharded parameters on 8 devices: same bits as on one device, same
sharding as the parameter, and no collective bigger than a histogram.

Runs in its own session with 8 CPU devices (see tests/test_multidevice.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune as jp
from jaxprune import _selection

SHAPE = (512, 1024)  # 2**19 values: far above every collective the selection may use
HISTOGRAM = 1 << 16  # bins of one radix pass: the largest collective allowed
# Each mesh with shardings along either axis (both axes where the mesh has two).
LAYOUTS = [
    ((8, 1), P("a", None)), ((8, 1), P(None, "a")),
    ((4, 2), P("a", "b")), ((4, 2), P(None, "b")),
    ((2, 4), P("b", "a")), ((2, 4), P()),
]
# Each layout runs half the methods (a compilation per method and layout is most
# of this file's time): every method runs on three layouts, rows, columns and
# both axes among them, of all three meshes: group 0 on rows (8x1), columns
# (4x2) and both axes transposed (2x4); group 1 on columns (8x1), both axes
# (4x2) and replicated (2x4). A method's group is its place in _methods() mod 2.
LAYOUT_GROUP = [0, 1, 1, 0, 0, 1]
KEY = jax.random.key(7)


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(SHAPE).astype(np.float32)
    tied = np.round(w * 2) / 2  # a few dozen distinct values: the tie cut runs
    return w, tied


def _methods() -> dict[str, Callable[..., object]]:
    """name -> f(w, tied): each returns a mask or a tree of masks."""
    first = lambda w: jp.l1_unstructured(w, 0.3)  # noqa: E731
    return {
        "l1": lambda w, tied: jp.l1_unstructured(w, 0.3),
        "l1-ties": lambda w, tied: jp.l1_unstructured(tied, 0.55),
        "l1-iterative": lambda w, tied: jp.l1_unstructured(w, 0.4, default_mask=first(w)),
        "l1-importance": lambda w, tied: jp.l1_unstructured(w, 1000, importance_scores=tied),
        "random-unstructured": lambda w, tied: jp.random_unstructured(KEY, w, 0.3),
        "random-structured-0": lambda w, tied: jp.random_structured(KEY, w, 0.25, dim=0),
        "random-structured-1": lambda w, tied: jp.random_structured(KEY, w, 0.25, dim=1),
        "ln-structured-2": lambda w, tied: jp.ln_structured(w, 0.25, 2, dim=1),
        "ln-structured-1-ties": lambda w, tied: jp.ln_structured(tied, 100, 1, dim=0),
        "identity": lambda w, tied: jp.identity(w),
        "global-l1": lambda w, tied: jp.global_unstructured({"w": w, "t": tied}, 0.6),
        "global-random": lambda w, tied: jp.global_unstructured({"w": w, "t": tied}, 0.3, method="random", key=KEY),
        "prune-tree": lambda w, tied: jp.prune_tree(
            KEY,
            {"dense": {"kernel": w}, "other": {"kernel": tied}},
            {"dense.*": jp.RandomUnstructured(0.5), "other.*": jp.GlobalUnstructured(0.4)},
        ),
    }


@pytest.fixture(scope="module")
def references() -> dict[str, list[np.ndarray]]:
    """Every method's masks computed the way a one-device process computes
    them (the chunked selection path, unsharded arrays)."""
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    w, tied = _weights()
    with _selection.forced(keep_shapes=False):
        return {name: [np.asarray(m) for m in jax.tree.leaves(f(jnp.asarray(w), jnp.asarray(tied)))]
                for name, f in _methods().items()}


def _collectives(hlo: str) -> list[tuple[str, int]]:
    """(op, element count) of every collective in compiled HLO text."""
    found = []
    pattern = r"= (\w+)\[([\d,]*)\][^=]*? (all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)(?:-start)?\("
    for dtype, dims, op in re.findall(pattern, hlo):
        found.append((op, int(np.prod([int(d) for d in dims.split(",") if d]))))
    return found


def _half(group: int) -> dict[str, Callable[..., object]]:
    """The methods of ``group`` (0 or 1): every other one of _methods()."""
    return {name: f for i, (name, f) in enumerate(_methods().items()) if i % 2 == group}


def test_layout_groups_cover_every_method_on_rows_columns_and_every_mesh():
    assert {*_half(0), *_half(1)} == set(_methods()) and not set(_half(0)) & set(_half(1))
    for group in (0, 1):
        mine = [layout for layout, g in zip(LAYOUTS, LAYOUT_GROUP) if g == group]
        assert {mesh for mesh, _ in mine} == {(8, 1), (4, 2), (2, 4)}
        assert any(spec[0] is not None for _, spec in mine if len(spec)), group  # rows sharded
        assert any(len(spec) > 1 and spec[1] is not None for _, spec in mine), group  # columns sharded


@pytest.mark.parametrize(("mesh_shape", "spec", "group"), [(*layout, g) for layout, g in zip(LAYOUTS, LAYOUT_GROUP)],
                         ids=lambda x: str(x).replace(" ", "") if not isinstance(x, int) else f"group{x}")
def test_sharded_masks_equal_one_device_and_keep_sharding(mesh_shape, spec, group, references):
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), ("a", "b"))
    sharding = NamedSharding(mesh, spec)
    w, tied = (jax.device_put(x, sharding) for x in _weights())
    for name, f in _half(group).items():
        compiled = jax.jit(f).lower(w, tied).compile()
        for got, ref in zip(jax.tree.leaves(compiled(w, tied)), references[name], strict=True):
            np.testing.assert_array_equal(np.asarray(got), ref, err_msg=f"{name} on {mesh_shape} {spec}")
            assert got.sharding.is_equivalent_to(sharding, got.ndim), (name, got.sharding, sharding)
        big = [(op, n) for op, n in _collectives(compiled.as_text()) if n > HISTOGRAM]
        assert not big, f"{name} on {mesh_shape} {spec}: collectives larger than a histogram: {big}"


@pytest.mark.parametrize(("spec", "group"), [(P("a", "b"), 0), (P("b", "a"), 1)], ids=str)
def test_eager_calls_keep_sharding(spec, group, references):
    """Without a user jit: the library's own jitted pieces keep the sharding
    (each method under one of the two 2-D shardings: half the compilations)."""
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    sharding = NamedSharding(mesh, spec)
    w, tied = (jax.device_put(x, sharding) for x in _weights())
    for name, f in _half(group).items():
        for got, ref in zip(jax.tree.leaves(f(w, tied)), references[name], strict=True):
            np.testing.assert_array_equal(np.asarray(got), ref, err_msg=name)
            assert got.sharding.is_equivalent_to(sharding, got.ndim), (name, got.sharding)
    pruned = jp.apply_masks(w, jp.l1_unstructured(w, 0.5))
    assert pruned.sharding.is_equivalent_to(sharding, 2)
    assert int(jnp.sum(pruned == 0)) == w.size // 2


def test_memory_per_device_follows_the_shard():
    """The temporary memory of a sharded call is about 1/8 of the same call on
    one device (plus the fixed-size histograms), not the whole parameter."""
    shape = (2048, 2048)
    w = jnp.zeros(shape, jnp.float32)
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    sharded = jax.device_put(w, NamedSharding(mesh, P("a", "b")))
    single = jax.device_put(w, jax.devices()[0])
    for name, f in [("l1", lambda t: jp.l1_unstructured(t, 0.3)),
                    ("random", lambda t: jp.random_unstructured(KEY, t, 0.3)),
                    ("global", lambda t: jp.global_unstructured({"a": t, "b": t}, 0.3))]:
        one = jax.jit(f).lower(single).compile().memory_analysis().temp_size_in_bytes
        eight = jax.jit(f).lower(sharded).compile().memory_analysis().temp_size_in_bytes
        assert eight <= one / 8 * 1.25 + (2 << 20), f"{name}: {eight} bytes per device vs {one} on one device"


def test_mask_on_other_devices_is_refused_and_other_sharding_is_resharded(references):
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    w, tied = (jax.device_put(x, NamedSharding(mesh, P("a", "b"))) for x in _weights())
    first = jp.l1_unstructured(w, 0.3)
    # Same devices, another sharding: resharded like the parameter (documented).
    other = jax.device_put(first, NamedSharding(mesh, P("b", "a")))
    got = jp.l1_unstructured(w, 0.4, default_mask=other)
    np.testing.assert_array_equal(np.asarray(got), references["l1-iterative"][0])
    assert got.sharding.is_equivalent_to(w.sharding, 2)
    assert jp.apply_masks(w, other).sharding.is_equivalent_to(w.sharding, 2)
    # Other devices: a clear error naming the devices, for every entry point.
    elsewhere = jax.device_put(first, jax.devices()[3])
    with pytest.raises(ValueError, match=r"default_mask is on devices \[3\] but its tensor is on devices \[0, 1"):
        jp.l1_unstructured(w, 0.4, default_mask=elsewhere)
    with pytest.raises(ValueError, match=r"masks\['w'\] is on devices \[3\]"):
        jp.apply_masks({"w": w}, {"w": elsewhere})
    with pytest.raises(ValueError, match=r"default_masks\['w'\] is on devices \[3\]"):
        jp.global_unstructured({"w": w}, 0.2, default_masks={"w": elsewhere})
    with pytest.raises(ValueError, match=r"CustomFromMask.mask is on devices \[3\]"):
        jp.CustomFromMask(elsewhere).compute_mask(None, w)


def test_amount_as_a_replicated_or_sharded_array(references):
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    w, _ = (jax.device_put(x, NamedSharding(mesh, P("a", "b"))) for x in _weights())
    replicated = jax.device_put(jnp.float32(0.3), NamedSharding(mesh, P()))
    np.testing.assert_array_equal(np.asarray(jp.l1_unstructured(w, replicated)), references["l1"][0])
    # Under jit too (a traced amount: float32(0.3) * 2**19 rounds like 0.3 here).
    traced = jax.jit(lambda t, a: jp.l1_unstructured(t, a))(w, replicated)
    np.testing.assert_array_equal(np.asarray(traced), references["l1"][0])
    spread = jax.device_put(jnp.full((8,), 0.3, jnp.float32), NamedSharding(mesh, P(("a", "b"))))
    with pytest.raises(TypeError, match=r"an array of shape \(8,\)\. Must be a scalar"):
        jp.l1_unstructured(w, spread)
