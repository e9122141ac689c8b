"""The jaxpr analysis behind `jp.channel_groups`: couplings, positions, exactness, refusals.

Whole models (NNX and plain functions, shrunk against masked) are in
tests/test_channel_groups.py; these tests pin the analysis's rules one by one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

F32 = jnp.float32


def spec(*shape: int, dtype=F32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def members(group: jp.ChannelGroup) -> set[tuple[str, int, int]]:
    return {(m.path, m.axis, m.positions.shape[1]) for m in group.members}


def by_paths(groups, *paths: str) -> jp.ChannelGroup:
    (found,) = [g for g in groups if set(paths) <= set(g.paths)]
    return found


def mlp(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"][None]) @ p["w2"]


MLP = {"w1": jnp.ones((3, 8)), "b1": jnp.zeros(8), "w2": jnp.ones((8, 2))}


def test_mlp_hidden_units_form_one_exact_group_and_the_data_axes_none():
    groups = jp.channel_groups(mlp, MLP, spec(5, 3))
    (g,) = groups
    assert g.size == 8 and g.exact and g.reasons == ()
    assert members(g) == {("w1", 1, 1), ("b1", 0, 1), ("w2", 0, 1)}
    assert all(m.kind == "one-to-one" for m in g.members)
    dropped = {(d.size, d.reason) for d in groups.dropped}
    assert (3, "the channels reach the function's inputs") in dropped
    assert (2, "the channels reach the function's outputs") in dropped


def test_shape_only_trace_and_real_arrays_agree():
    a = jp.channel_groups(mlp, MLP, spec(5, 3))
    b = jp.channel_groups(mlp, MLP, jnp.ones((5, 3)))
    assert [members(g) for g in a] == [members(g) for g in b]
    assert a[0].signature == b[0].signature


def test_residual_add_ties_both_sides():
    def fn(p, x):
        h = x @ p["inp"]
        h = h + jax.nn.relu(h @ p["a"]) @ p["b"]
        return h @ p["out"]

    p = {"inp": jnp.ones((3, 6)), "a": jnp.ones((6, 10)), "b": jnp.ones((10, 6)), "out": jnp.ones((6, 2))}
    groups = jp.channel_groups(fn, p, spec(4, 3))
    assert {frozenset(members(g)) for g in groups} == {
        frozenset({("inp", 1, 1), ("a", 0, 1), ("b", 1, 1), ("out", 0, 1)}),
        frozenset({("a", 1, 1), ("b", 0, 1)}),
    }


def test_head_reshape_gives_a_heads_group_and_a_head_dim_group_with_their_positions():
    def fn(p, x):
        b, t, _ = x.shape
        v = (x @ p["wv"]).reshape(b, t, 2, -1)  # 2 heads of 3
        w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", v, v), axis=-1)
        return jnp.einsum("bhts,bshd->bthd", w, v).reshape(b, t, -1) @ p["wo"]

    p = {"wv": jnp.ones((4, 6)), "wo": jnp.ones((6, 4))}
    groups = jp.channel_groups(fn, p, spec(2, 5, 4), exact_only=False)
    heads = [g for g in groups if g.size == 2]
    head_dim = [g for g in groups if g.size == 3]
    assert len(heads) == 1 and len(head_dim) == 1
    wv = {m.path: m for m in heads[0].members}["wv"]
    assert wv.kind == "spread" and wv.positions.tolist() == [[0, 1, 2], [3, 4, 5]]
    wv = {m.path: m for m in head_dim[0].members}["wv"]
    assert wv.positions.tolist() == [[0, 3], [1, 4], [2, 5]]
    assert heads[0].exact
    # v.v contracts head_dim between two activations that masking zeroes: exact
    assert head_dim[0].exact


def test_attention_scale_from_the_head_dim_makes_that_group_inexact():
    def fn(p, x):
        b, t, _ = x.shape
        q = (x @ p["wq"]).reshape(b, t, 2, -1)
        k = (x @ p["wk"]).reshape(b, t, 2, -1)
        s = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(q.shape[-1])
        return s.sum()

    p = {"wq": jnp.ones((4, 6)), "wk": jnp.ones((4, 6))}
    groups = jp.channel_groups(fn, p, spec(2, 5, 4), exact_only=False)
    (head_dim,) = [g for g in groups if g.size == 3]
    assert not head_dim.exact and "matches its size (3)" in head_dim.reasons[0]
    assert all(g.size != 3 for g in jp.channel_groups(fn, p, spec(2, 5, 4)))
    assert any("not exact" in d.reason and d.size == 3 for d in jp.channel_groups(fn, p, spec(2, 5, 4)).dropped)


def test_a_norm_over_the_channels_is_inexact():
    def fn(p, x):
        h = x @ p["w1"]
        h = h / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)  # RMSNorm
        return h @ p["w2"]

    p = {"w1": jnp.ones((3, 8)), "w2": jnp.ones((8, 2))}
    (g,) = jp.channel_groups(fn, p, spec(4, 3), exact_only=False)
    assert not g.exact and "reduce_sum" in g.reasons[0]
    assert jp.channel_groups(fn, p, spec(4, 3)) == ()


def test_contraction_between_values_masking_does_not_zero_is_inexact():
    def fn(p, x):
        a = jax.nn.sigmoid(x @ p["w1"])  # 0.5 where masked
        b = jax.nn.sigmoid(x @ p["w2"])
        return jnp.einsum("bi,bi->b", a, b)

    p = {"w1": jnp.ones((3, 8)), "w2": jnp.ones((3, 8))}
    (g,) = jp.channel_groups(fn, p, spec(4, 3), exact_only=False)
    assert not g.exact and "does not zero" in g.reasons[0]


def test_concatenate_and_split_give_ranges():
    def fn(p, x):
        gate, up = jnp.split(x @ p["w_in"], [5], axis=-1)  # a fused gate/up projection
        return (jax.nn.silu(gate) * up) @ p["w_out"]

    p = {"w_in": jnp.ones((3, 10)), "w_out": jnp.ones((5, 2))}
    (g,) = jp.channel_groups(fn, p, spec(4, 3))
    w_in = {m.path: m for m in g.members}["w_in"]
    assert w_in.kind == "spread" and w_in.positions.tolist() == [[i, i + 5] for i in range(5)]

    def dense(p, x):
        a, b = x @ p["a"], x @ p["b"]
        return jnp.concatenate([a, b], axis=-1) @ p["out"]

    p = {"a": jnp.ones((3, 4)), "b": jnp.ones((3, 6)), "out": jnp.ones((10, 2))}
    groups = jp.channel_groups(dense, p, spec(4, 3))
    ga, gb = by_paths(groups, "a"), by_paths(groups, "b")
    out_a = {m.path: m for m in ga.members}["out"]
    out_b = {m.path: m for m in gb.members}["out"]
    assert out_a.kind == out_b.kind == "range"
    assert out_a.positions[:, 0].tolist() == [0, 1, 2, 3]
    assert out_b.positions[:, 0].tolist() == [4, 5, 6, 7, 8, 9]


def test_flatten_of_a_convolution_spreads_each_filter_over_the_dense_input():
    def fn(p, x):
        y = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(y.shape[0], -1) @ p["d"]

    p = {"k": jnp.ones((3, 3, 2, 4)), "d": jnp.ones((5 * 5 * 4, 3))}
    (g,) = jp.channel_groups(fn, p, spec(1, 5, 5, 2))
    d = {m.path: m for m in g.members}["d"]
    assert d.positions.shape == (4, 25)
    assert d.positions[1].tolist() == list(range(1, 100, 4))


def test_a_depthwise_convolution_ties_its_inputs_to_its_outputs():
    def fn(p, x):
        dn = ("NHWC", "HWIO", "NHWC")
        conv = jax.lax.conv_general_dilated
        y = conv(x, p["pw1"], (1, 1), "SAME", dimension_numbers=dn)
        y = conv(y, p["dw"], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=6)
        return conv(y, p["pw2"], (1, 1), "SAME", dimension_numbers=dn).sum()

    p = {"pw1": jnp.ones((1, 1, 2, 6)), "dw": jnp.ones((3, 3, 1, 12)), "pw2": jnp.ones((1, 1, 12, 3))}
    groups = jp.channel_groups(fn, p, spec(1, 5, 5, 2), exact_only=False)
    six = by_paths(groups, "pw1")
    assert six.size == 6 and {("pw1", 3, 1), ("dw", 3, 2), ("pw2", 2, 2)} <= members(six)
    dw = {m.path: m for m in six.members}["dw"]
    assert dw.positions.tolist() == [[2 * c, 2 * c + 1] for c in range(6)]  # multiplier 2 per input channel


def test_an_unknown_primitive_drops_the_groups_it_touches_with_the_reason():
    def fn(p, x):
        h = x @ p["w1"]
        h = jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct(h.shape, h.dtype), h)
        return h @ p["w2"]

    p = {"w1": jnp.ones((3, 8)), "w2": jnp.ones((8, 2))}
    groups = jp.channel_groups(fn, p, spec(4, 3), exact_only=False)
    assert groups == ()
    assert any("pure_callback" in d.reason and d.size == 8 for d in groups.dropped)


def test_a_closed_over_array_fixes_the_channels():
    bias = np.arange(8.0, dtype=np.float32)

    def fn(p, x):
        return jax.nn.relu(x @ p["w1"] + jnp.asarray(bias)[None]) @ p["w2"]

    p = {"w1": jnp.ones((3, 8)), "w2": jnp.ones((8, 2))}
    groups = jp.channel_groups(fn, p, spec(4, 3))
    assert groups == ()
    assert any("constant" in d.reason and d.size == 8 for d in groups.dropped)


def test_scan_over_stacked_layers_gives_one_group_for_all_layers():
    def fn(p, x):
        def body(h, layer):
            return h + jax.nn.relu(h @ layer["a"]) @ layer["b"], None

        h, _ = jax.lax.scan(body, x @ p["inp"], p["layers"])
        return h @ p["out"]

    p = {
        "inp": jnp.ones((3, 4)),
        "layers": {"a": jnp.ones((5, 4, 16)), "b": jnp.ones((5, 16, 4))},
        "out": jnp.ones((4, 2)),
    }
    groups = jp.channel_groups(fn, p, spec(2, 3))
    (hidden,) = [g for g in groups if g.size == 16]
    assert members(hidden) == {("layers.a", 2, 1), ("layers.b", 1, 1)}
    resid = by_paths(groups, "inp")
    assert resid.size == 4
    assert members(resid) == {("inp", 1, 1), ("layers.a", 1, 1), ("layers.b", 2, 1), ("out", 0, 1)}
    assert any("scan iterates" in d.reason for d in groups.dropped)


def test_nnx_module_paths_are_those_of_its_state():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(3, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
            self.b = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.bn(self.a(x))))

    model = Net(nnx.Rngs(0))
    (g,) = jp.channel_groups(model, spec(4, 3))
    assert {m.path for m in g.members} == {"a.kernel", "a.bias", "bn.scale", "bn.bias", "bn.mean", "bn.var", "b.kernel"}
    assert g.exact


def test_bad_input_is_refused_and_trace_errors_are_shown():
    with pytest.raises(TypeError, match="fn\\(params, \\*args\\) or an nnx.Module, got int"):
        jp.channel_groups(3, MLP)
    with pytest.raises(TypeError, match="params tree is missing"):
        jp.channel_groups(mlp)
    with pytest.raises(TypeError, match="dot_general requires contracting dimensions to have the same shape"):
        jp.channel_groups(mlp, MLP, spec(5, 4))


def test_positions_are_int64():
    (g,) = jp.channel_groups(mlp, MLP, spec(5, 3))
    assert all(m.positions.dtype == np.int64 for m in g.members)


def test_custom_vjp_and_remat_bodies_are_followed():
    @jax.custom_vjp
    def act(x):
        return jnp.tanh(x)

    act.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: (g,))

    def fn(p, x):
        h = jax.checkpoint(lambda h: act(h @ p["a"]))(x)
        return h @ p["b"]

    p = {"a": jnp.ones((3, 8)), "b": jnp.ones((8, 2))}
    (g,) = jp.channel_groups(fn, p, spec(2, 3))
    assert members(g) == {("a", 1, 1), ("b", 0, 1)} and g.exact
