"""channel_groups on the models of issue 12, against groups written by hand (tests/_group_models.py).

The first section checks the reference itself (shapes, forward passes, hand counts): it
needs nothing but the models. The rest runs `jp.channel_groups`, `jp.group_keep`,
`jp.group_masks`, `jp.shrink` and `jp.shrink_model`: the groups found equal the expected
ones, and removing 50% of every exact group computes what masking it computes, with the
parameter count written by hand.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _group_models import (
    BUILDERS,
    Case,
    Version,
    count,
    dense,
    group_key,
    mlp_fn,
    odd_channels,
    owned_positions,
    reference_masked,
    reference_shrunk,
    shapes,
    with_state,
)
from flax import nnx

import jaxprune as jp

NAMES = sorted(BUILDERS)
VERSIONS = ("nnx", "plain")


@functools.cache
def case(name: str) -> Case:
    return BUILDERS[name]()


def version(c: Case, which: str) -> Version:
    return c.nnx if which == "nnx" else c.plain


@functools.cache
def _tree_shapes(name: str, which: str) -> dict[str, tuple[int, ...]]:
    c = case(name)
    return shapes(nnx.state(c.nnx_model())) if which == "nnx" else shapes(c.params)


def tree_shapes(c: Case, which: str) -> dict[str, tuple[int, ...]]:
    return _tree_shapes(c.name, which)


# ---------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("which", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_expected_groups_fit_the_parameter_shapes(name: str, which: str) -> None:
    c = case(name)
    v = version(c, which)
    tree = tree_shapes(c, which)
    covered = set()
    for g in v.groups:
        assert g.name and g.size > 0
        for path, axis, per_channel in g.members:
            assert path in tree, f"{name}/{which}: no leaf {path!r}"
            assert 0 <= axis < len(tree[path])
            length = tree[path][axis]
            rows = owned_positions(g, path, axis, per_channel)
            assert len(rows) == g.size and all(len(r) == per_channel for r in rows)
            flat = [i for r in rows for i in r]
            assert len(set(flat)) == len(flat), f"{path}[{axis}]: channels overlap"
            assert all(0 <= i < length for i in flat)
            if (path, axis) not in g.positions:
                assert length == g.size, f"{path}[{axis}]: one-to-one member of length {length}, group of {g.size}"
            covered.add((path, axis))
    for path, axis in v.fixed + v.structural:
        assert path in tree and 0 <= axis < len(tree[path])
        assert (path, axis) not in covered
    # every axis of every leaf is accounted for: a channel group, fixed, or structural
    every = {(path, axis) for path, shape in tree.items() for axis in range(len(shape))}
    assert every == covered | set(v.fixed) | set(v.structural)
    assert len({g.name for g in v.groups}) == len(v.groups)
    assert len({g.key for g in v.groups}) == len(v.groups)


def _half_shapes(c: Case, which: str) -> dict[str, tuple[int, ...]]:
    """Shapes once the first half of the channels of every pruned group are removed."""
    v = version(c, which)
    removed: dict[tuple[str, int], set[int]] = {}
    for g in v.pruned:
        for path, axis, per_channel in g.members:
            rows = owned_positions(g, path, axis, per_channel)[: g.size // 2]
            removed.setdefault((path, axis), set()).update(i for r in rows for i in r)
    out = {}
    for path, shape in tree_shapes(c, which).items():
        out[path] = tuple(n - len(removed.get((path, a), ())) for a, n in enumerate(shape))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_half_models_have_the_pruned_shapes_and_hand_counts(name: str) -> None:
    c = case(name)
    half_nnx = shapes(nnx.state(c.half_nnx()))
    assert half_nnx == _half_shapes(c, "nnx")
    assert count(nnx.state(c.half_nnx())) == c.nnx.count_half
    assert shapes(c.half_params) == _half_shapes(c, "plain")
    assert count(c.half_params) == c.plain.count_half
    # every case prunes something, and its shapes shrink
    assert c.nnx.pruned and c.plain.pruned
    assert c.nnx.count_half < count(nnx.state(c.nnx_model()))
    assert c.plain.count_half < count(c.params)


@pytest.mark.parametrize("name", NAMES)
def test_models_run_and_are_deterministic(name: str) -> None:
    c = case(name)
    y_nnx = c.nnx_model()(*c.args)
    y_plain = c.fn(c.params, *c.args)
    assert y_nnx.shape == y_plain.shape and y_nnx.dtype == y_plain.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y_nnx))) and bool(jnp.all(jnp.isfinite(y_plain)))
    np.testing.assert_array_equal(np.asarray(c.nnx_model()(*c.args)), np.asarray(y_nnx))
    fresh = BUILDERS[name]()  # the same values from a second build
    np.testing.assert_array_equal(np.asarray(fresh.fn(fresh.params, *fresh.args)), np.asarray(y_plain))
    # the pruned architectures run with the same code (sizes are read from the arrays/attributes)
    assert c.half_nnx()(*c.args).shape == y_nnx.shape
    assert c.fn(c.half_params, *c.args).shape == y_plain.shape


def test_randomized_values_are_not_the_constant_inits() -> None:
    state = nnx.to_pure_dict(nnx.state(case("cnn").nnx_model()))
    for leaf in ("scale", "bias", "mean", "var"):
        values = np.asarray(state["bn1"][leaf])
        assert len(set(values.tolist())) == values.size
    assert bool(np.all(np.asarray(state["bn1"]["var"]) > 0))


def close(a: jax.Array, b: jax.Array) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("name", NAMES)
def test_reference_exact_groups_shrink_like_masks_plain(name: str) -> None:
    """The expectations, checked by a reference shrink: each exact group alone and all pruned ones
    together compute, once removed, what zeroing them computes; each inexact group does not."""
    c = case(name)
    dense = c.fn(c.params, *c.args)
    for groups in [(g,) for g in c.plain.groups] + [c.plain.pruned]:
        removed = odd_channels(groups)
        masked = c.fn(reference_masked(c.params, removed), *c.args)
        small = c.fn(reference_shrunk(c.params, removed), *c.args)
        assert not close(masked, dense), [g.name for g in groups]
        exact = all(g.exact for g in groups)
        assert close(small, masked) == exact, ([g.name for g in groups], exact)
    assert shapes(reference_shrunk(c.params, odd_channels(c.plain.pruned))) == shapes(c.half_params)


@pytest.mark.parametrize("name", NAMES)
def test_reference_exact_groups_shrink_like_masks_nnx(name: str) -> None:
    c = case(name)
    model = c.nnx_model()
    pure = nnx.to_pure_dict(nnx.state(model))
    removed = odd_channels(c.nnx.pruned)
    masked = with_state(c.nnx_model(), reference_masked(pure, removed))(*c.args)
    small = with_state(c.half_nnx(), reference_shrunk(pure, removed))(*c.args)
    assert not close(masked, model(*c.args))
    np.testing.assert_allclose(np.asarray(small), np.asarray(masked), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the analysis (needs jp.channel_groups)


def found_groups(c: Case, which: str, exact_only: bool = True, args: tuple[Any, ...] | None = None) -> Any:
    args = c.args if args is None else args
    if which == "nnx":
        return jp.channel_groups(c.nnx_model(), *args, exact_only=exact_only)
    return jp.channel_groups(c.fn, c.params, *args, exact_only=exact_only)


def keys(groups: Any) -> set[tuple[int, bool, frozenset[tuple[str, int, int]]]]:
    return {group_key(g) for g in groups}


def describe(found: set[Any], expected: set[Any]) -> str:
    missing = "\n  ".join(map(str, expected - found))
    extra = "\n  ".join(map(str, found - expected))
    return f"missing:\n  {missing}\nunexpected:\n  {extra}"


@pytest.mark.parametrize("which", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_all_groups_found(name: str, which: str) -> None:
    c = case(name)
    v = version(c, which)
    groups = found_groups(c, which, exact_only=False)
    found, expected = keys(groups), {g.key for g in v.groups}
    assert found == expected, describe(found, expected)
    assert len(groups) == len(v.groups)  # no group found twice
    tree = tree_shapes(c, which)
    for g in groups:
        assert g.exact == (not g.reasons), g
        assert all(m.length == tree[m.path][m.axis] for m in g.members)


@pytest.mark.parametrize("which", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_exact_only_by_default(name: str, which: str) -> None:
    c = case(name)
    v = version(c, which)
    found = keys(found_groups(c, which))
    assert found == {g.key for g in v.exact}, describe(found, {g.key for g in v.exact})
    assert keys(found_groups(c, which, exact_only=True)) == found


@pytest.mark.parametrize("which", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_positions_of_each_channel(name: str, which: str) -> None:
    """Channel c owns the right positions in every member (several after a flatten or a head
    reshape), and it is the same channel in every member."""
    c = case(name)
    by_key = {g.key: g for g in version(c, which).groups}
    for group in found_groups(c, which, exact_only=False):
        g = by_key[group_key(group)]
        orders = set()
        for m in group.members:
            rows = [frozenset(r) for r in owned_positions(g, m.path, m.axis, int(m.positions.shape[1]))]
            got = [frozenset(r) for r in m.positions.tolist()]
            assert set(got) == set(rows), (g.name, m)
            orders.add(tuple(rows.index(r) for r in got))
        assert len(orders) == 1, f"{g.name}: channel c is not the same channel in every member"


@pytest.mark.parametrize("which", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_fixed_channels_are_dropped_with_a_reason(name: str, which: str) -> None:
    c = case(name)
    v = version(c, which)
    groups = found_groups(c, which, exact_only=False)
    dropped = {(m.path, m.axis) for d in groups.dropped for m in d.members}
    assert all(d.reason for d in groups.dropped)
    assert set(v.fixed) <= dropped, set(v.fixed) - dropped
    in_groups = {(m.path, m.axis) for g in groups for m in g.members}
    assert not in_groups & (set(v.fixed) | set(v.structural))


@pytest.mark.parametrize("which", VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_shape_only_trace_gives_the_same_groups(name: str, which: str) -> None:
    c = case(name)
    abstract = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in c.args)
    assert keys(found_groups(c, which, exact_only=False, args=abstract)) == keys(
        found_groups(c, which, exact_only=False)
    )


@pytest.mark.parametrize("which", VERSIONS)
def test_batch_size_does_not_change_the_groups(which: str) -> None:
    c = case("resnet")
    bigger = (jax.ShapeDtypeStruct((64, 8, 8, 3), jnp.float32),)
    assert keys(found_groups(c, which, exact_only=False, args=bigger)) == {g.key for g in version(c, which).groups}


# ---------------------------------------------------------------- shrink equals mask


def pruned_groups(groups: Any, v: Version) -> Any:
    """The found groups the shrink tests prune (`Version.pruned`), as a ChannelGroups."""
    names = {g.key: g.name for g in v.groups}
    wanted = {g.name for g in v.pruned}
    chosen = [g for g in groups if names[group_key(g)] in wanted]
    assert len(chosen) == len(wanted)
    return type(groups)(chosen, groups.dropped)


def check_keep(groups: Any, keep: Any) -> None:
    keep = list(keep)
    assert len(keep) == len(groups)
    for g, k in zip(groups, keep):
        k = np.asarray(k)
        assert k.dtype == np.bool_ and k.shape == (g.size,)
        assert int(k.sum()) == g.size - round(0.5 * g.size)


@pytest.mark.parametrize("name", NAMES)
def test_shrink_equals_masked_plain(name: str) -> None:
    c = case(name)
    groups = pruned_groups(found_groups(c, "plain"), c.plain)
    keep = jp.group_keep(groups, c.params, 0.5, method="l2")
    check_keep(groups, keep)
    masks = jp.group_masks(groups, c.params, keep)
    masked = c.fn(jp.apply_masks(c.params, masks), *c.args)
    small = jp.shrink(c.params, groups, keep)
    assert jax.tree.structure(small) == jax.tree.structure(c.params)
    assert shapes(small) == shapes(c.half_params)
    assert count(small) == c.plain.count_half
    np.testing.assert_allclose(np.asarray(c.fn(small, *c.args)), np.asarray(masked), rtol=1e-5, atol=1e-5)
    # the pruning changed the function (the test would see a shrink that keeps the wrong channels)
    assert not np.allclose(np.asarray(masked), np.asarray(c.fn(c.params, *c.args)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_shrink_model_equals_masked_nnx(name: str) -> None:
    c = case(name)
    model = c.nnx_model()
    groups = pruned_groups(jp.channel_groups(model, *c.args), c.nnx)
    state = nnx.state(model)
    keep = jp.group_keep(groups, state, 0.5, method="l2")
    check_keep(groups, keep)
    masked_model = c.nnx_model()
    nnx.update(masked_model, jp.apply_masks(state, jp.group_masks(groups, state, keep)))
    masked = masked_model(*c.args)
    jp.shrink_model(model, groups, keep)
    assert shapes(nnx.state(model)) == shapes(nnx.state(c.half_nnx()))
    assert count(nnx.state(model)) == c.nnx.count_half
    np.testing.assert_allclose(np.asarray(model(*c.args)), np.asarray(masked), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(masked), np.asarray(c.nnx_model()(*c.args)), rtol=1e-5, atol=1e-5)


def test_plain_and_nnx_keep_the_same_channels() -> None:
    """Same values, same paths: the l2 choice of the plain function and of the NNX module agree."""
    c = case("cnn")
    model = c.nnx_model()
    params = nnx.to_pure_dict(nnx.state(model))
    plain = jp.channel_groups(c.fn, params, *c.args)
    modular = jp.channel_groups(model, *c.args)
    assert keys(plain) == keys(modular)
    by_key = {group_key(g): g for g in modular}
    plain_keep = jp.group_keep(plain, params, 0.5, method="l2")
    nnx_keep = jp.group_keep(type(modular)([by_key[group_key(g)] for g in plain]), nnx.state(model), 0.5, method="l2")
    for a, b in zip(plain_keep, nnx_keep):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- sub-jaxprs and unknown primitives


@jax.custom_jvp
def _soft_relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0.0)


@_soft_relu.defjvp
def _soft_relu_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return _soft_relu(x), jnp.where(x > 0, t, jnp.zeros_like(t))


def _mlp_wrapped(params: dict[str, Any], x: jax.Array) -> jax.Array:
    """The MLP of the cases through pjit, remat and custom_jvp: the analysis recurses into each."""
    layers = params["layers"]

    @jax.jit
    def first(layer: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return _soft_relu(x @ layer["kernel"] + layer["bias"].reshape(1, -1))

    x = first(layers[0], x)
    x = jax.checkpoint(lambda layer, x: jax.nn.relu(x @ layer["kernel"] + layer["bias"].reshape(1, -1)))(layers[1], x)
    return x @ layers[2]["kernel"] + layers[2]["bias"].reshape(1, -1)


def test_sub_jaxprs_are_followed() -> None:
    c = case("mlp")
    np.testing.assert_allclose(
        np.asarray(_mlp_wrapped(c.params, *c.args)), np.asarray(c.fn(c.params, *c.args)), rtol=1e-6
    )
    assert keys(jp.channel_groups(_mlp_wrapped, c.params, *c.args, exact_only=False)) == {g.key for g in c.plain.groups}


def _mlp_with_callback(params: dict[str, Any], x: jax.Array) -> jax.Array:
    """The MLP with its first activation computed by a host callback (opaque to the analysis)."""
    layers = params["layers"]
    h = x @ layers[0]["kernel"] + layers[0]["bias"].reshape(1, -1)
    h = jax.pure_callback(lambda a: np.tanh(a).astype(a.dtype), jax.ShapeDtypeStruct(h.shape, h.dtype), h)
    h = jax.nn.relu(h @ layers[1]["kernel"] + layers[1]["bias"].reshape(1, -1))
    return h @ layers[2]["kernel"] + layers[2]["bias"].reshape(1, -1)


def test_unknown_primitive_drops_the_group_with_a_reason() -> None:
    c = case("mlp")
    groups = jp.channel_groups(_mlp_with_callback, c.params, *c.args, exact_only=False)
    # the second hidden layer does not touch the callback: still found; the first is gone
    assert keys(groups) == {c.plain.group("h2").key}
    near = [d for d in groups.dropped if ("layers.0.kernel", 1) in {(m.path, m.axis) for m in d.members}]
    assert near, groups.dropped
    assert all(re.search(r"callback", d.reason, re.IGNORECASE) for d in near), [d.reason for d in near]


def test_a_function_that_does_not_trace_shows_the_trace_error() -> None:
    c = case("mlp")
    with pytest.raises(TypeError, match=r"dot_general requires contracting dimensions.*\(5,\) and \(4,\)"):
        jp.channel_groups(c.fn, c.params, jnp.zeros((2, 5), jnp.float32))


def test_keyword_arguments_reach_the_function() -> None:
    c = case("mlp")

    def fn(params: dict[str, Any], x: jax.Array, *, center: bool = False) -> jax.Array:
        first, *rest = params["layers"]
        h = jax.nn.relu(dense(first, x))
        if center:  # a mean over the first hidden layer: its group is no longer exact
            h = h - jnp.mean(h, axis=-1, keepdims=True)
        return mlp_fn({"layers": rest}, h)

    h1, h2 = c.plain.group("h1"), c.plain.group("h2")
    assert keys(jp.channel_groups(fn, c.params, *c.args, exact_only=False)) == {h1.key, h2.key}
    found = keys(jp.channel_groups(fn, c.params, *c.args, exact_only=False, center=True))
    assert found == {(h1.size, False, h1.members), h2.key}
