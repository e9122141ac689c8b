"""group_keep, group_masks, shrink, shrink_model and shrunk_sizes on hand-built channel groups.

The groups are written by hand (the analysis that finds them is tested on its
own): an MLP's hidden units, a conv + BatchNorm's filters, attention heads, a
flatten (positions spread across an axis), a sub-range after a concatenation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune._group_types import ChannelGroup, Member, signature_of

TOL = {"rtol": 1e-5, "atol": 1e-5}


def one(n: int) -> np.ndarray:
    """One-to-one positions: channel c owns position c."""
    return np.arange(n)[:, None]


def group(tree, size: int, *members: tuple[str, int, np.ndarray]) -> ChannelGroup:
    """A group of ``size`` channels over ``(path, axis, positions)`` members of ``tree``."""
    leaves = {jp.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    built = tuple(Member(path, axis, np.shape(leaves[path])[axis], pos) for path, axis, pos in members)
    return ChannelGroup(size, built, True, (), signature_of(tree))


def vec(*bits: int) -> np.ndarray:
    return np.array(bits, bool)


# --------------------------------------------------------------------------
# group_keep
# --------------------------------------------------------------------------


def mlp_params(rng: np.random.Generator, hidden: int = 8) -> dict:
    return {
        "l1": {"b": jnp.asarray(rng.normal(size=hidden), jnp.float32),
               "w": jnp.asarray(rng.normal(size=(5, hidden)), jnp.float32)},
        "l2": {"b": jnp.asarray(rng.normal(size=3), jnp.float32),
               "w": jnp.asarray(rng.normal(size=(hidden, 3)), jnp.float32)},
    }


def mlp_group(params: dict) -> ChannelGroup:
    n = params["l1"]["b"].shape[0]
    return group(params, n, ("l1.b", 0, one(n)), ("l1.w", 1, one(n)), ("l2.w", 0, one(n)))


def mlp(params: dict, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["l1"]["w"] + params["l1"]["b"][None])
    return h @ params["l2"]["w"] + params["l2"]["b"][None]


@pytest.mark.parametrize("method", ["l2", "l1"])
def test_keep_prunes_the_lowest_scores_summed_over_members(rng, method):
    params = mlp_params(rng)
    g = mlp_group(params)
    f = np.square if method == "l2" else np.abs
    scores = (f(np.asarray(params["l1"]["b"])) + f(np.asarray(params["l1"]["w"])).sum(0)
              + f(np.asarray(params["l2"]["w"])).sum(1))
    (keep,) = jp.group_keep([g], params, 0.25, method=method)
    expected = np.ones(8, bool)
    expected[np.argsort(scores, kind="stable")[:2]] = False
    assert keep.dtype == jnp.bool_ and keep.tolist() == expected.tolist()


def test_keep_counts_as_torch_and_ties_go_to_the_lower_index():
    params = {"w": jnp.ones((2, 5))}
    g = group(params, 5, ("w", 1, one(5)))
    assert jp.group_keep([g], params, 0.5)[0].tolist() == [False, False, True, True, True]  # round(2.5) = 2
    assert jp.group_keep([g], params, 3)[0].tolist() == [False, False, False, True, True]
    assert jp.group_keep([g], params, 0.0)[0].tolist() == [True] * 5


def test_nan_scores_are_pruned_last():
    params = {"w": jnp.array([[np.nan, 1.0, 3.0, 2.0]])}
    g = group(params, 4, ("w", 1, one(4)))
    assert jp.group_keep([g], params, 3)[0].tolist() == [True, False, False, False]
    assert jp.group_keep([g], params, 2)[0].tolist() == [True, False, True, False]


def test_spread_positions_are_summed_per_channel():
    # Two channels over an axis of 4: channel 0 owns positions 0 and 2, channel 1 owns 1 and 3.
    params = {"w": jnp.array([[3.0, 2.0, 0.0, 2.0]])}
    g = group(params, 2, ("w", 1, np.array([[0, 2], [1, 3]])))
    assert jp.group_keep([g], params, 1)[0].tolist() == [True, False]  # 9 + 0 > 4 + 4
    params = {"w": jnp.array([[2.0, 2.0, 0.0, 2.5]])}
    g = group(params, 2, ("w", 1, np.array([[0, 2], [1, 3]])))
    assert jp.group_keep([g], params, 1)[0].tolist() == [False, True]  # 4 < 4 + 6.25


def test_per_group_amounts(rng):
    params = {"a": jnp.arange(1.0, 7.0)[None], "b": jnp.arange(4.0, 0.0, -1.0)[None]}
    ga = group(params, 6, ("a", 1, one(6)))
    gb = group(params, 4, ("b", 1, one(4)))
    keep_a, keep_b = jp.group_keep([ga, gb], params, [0.5, 1])
    assert keep_a.tolist() == [False, False, False, True, True, True]
    assert keep_b.tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="amount has 3 entries for 2 groups"):
        jp.group_keep([ga, gb], params, [0.5, 1, 2])


def test_round_to_rounds_the_number_kept_up():
    params = {"w": jnp.arange(1.0, 11.0)[None]}
    g = group(params, 10, ("w", 1, one(10)))
    # round(0.75 * 10) = 8 pruned, 2 kept, rounded up to 4 kept: channels with the 4 largest scores.
    assert jp.group_keep([g], params, 0.75, round_to=4)[0].tolist() == [False] * 6 + [True] * 4
    # 9 kept rounds up to 12, at most the size: all kept.
    assert jp.group_keep([g], params, 1, round_to=4)[0].tolist() == [True] * 10
    small = {"w": jnp.arange(1.0, 4.0)[None]}
    g3 = group(small, 3, ("w", 1, one(3)))
    assert jp.group_keep([g3], small, 0.5, round_to=4)[0].tolist() == [True] * 3  # a group below round_to
    # Emptied stays empty (0 is a multiple), only with allow_empty.
    assert jp.group_keep([g], params, 1.0, round_to=4, allow_empty=True)[0].tolist() == [False] * 10
    with pytest.raises(ValueError, match=r"amount=1.0 prunes every channel of groups\[0\].*allow_empty=True"):
        jp.group_keep([g], params, 1.0, round_to=4)
    for bad, err in ((0, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(err, match="round_to must be an int >= 1"):
            jp.group_keep([g], params, 0.5, round_to=bad)


def test_random_is_deterministic_and_depends_on_the_key():
    params = {"w": jnp.ones((2, 64)), "v": jnp.ones((64, 1))}
    g = group(params, 64, ("w", 1, one(64)), ("v", 0, one(64)))
    a = jp.group_keep([g], params, 0.5, method="random", key=jax.random.key(0))[0]
    b = jp.group_keep([g], params, 0.5, method="random", key=jax.random.key(0))[0]
    c = jp.group_keep([g], params, 0.5, method="random", key=jax.random.key(1))[0]
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert int(np.sum(~np.asarray(a))) == 32
    # The draws: uniform bits from leaf_key(key, first member's path), the lowest pruned.
    draws = np.asarray(jax.random.bits(jp.leaf_key(jax.random.key(0), "w"), (64,), jnp.uint32))
    expected = np.ones(64, bool)
    expected[np.argsort(draws, kind="stable")[:32]] = False
    assert np.asarray(a).tolist() == expected.tolist()
    with pytest.raises(jp.KeyRequiredError, match="method='random'.*pass a PRNG key"):
        jp.group_keep([g], params, 0.5, method="random")


def test_keep_under_jit_with_a_traced_amount(rng):
    params = mlp_params(rng, hidden=10)
    g = mlp_group(params)
    f = jax.jit(lambda p, a: jp.group_keep([g], p, a, round_to=3))
    for amount in (0.0, 0.25, 0.5, 0.75, 1.0):
        eager = jp.group_keep([g], params, amount, round_to=3, allow_empty=True)[0]
        assert f(params, jnp.float32(amount))[0].tolist() == eager.tolist(), amount
    counts = jax.jit(lambda p, a: jp.group_keep([g], p, a))
    assert int(np.sum(~np.asarray(counts(params, jnp.int32(7))[0]))) == 7
    assert int(np.sum(~np.asarray(counts(params, jnp.int32(70))[0]))) == 10  # clamped, as elsewhere


def test_scores_are_floats_even_for_narrow_and_integer_leaves():
    # Squares overflow float16 (400**2 > 65504) and int32 (50000**2 > 2**31): the scores must not.
    half = {"w": jnp.array([[400.0, 300.0]], jnp.float16)}
    assert jp.group_keep([group(half, 2, ("w", 1, one(2)))], half, 1)[0].tolist() == [True, False]
    ints = {"w": jnp.array([[50000, 40000]] * 1000, jnp.int32)}
    assert jp.group_keep([group(ints, 2, ("w", 1, one(2)))], ints, 1)[0].tolist() == [True, False]


def test_scores_in_float64_with_x64():
    with jax.enable_x64(True):
        w = jnp.asarray([[1.0 + 2e-12, 1.0 + 1e-12]], jnp.float64)  # one float32 value
        params = {"w": w}
        assert jp.group_keep([group(params, 2, ("w", 1, one(2)))], params, 1)[0].tolist() == [True, False]


# --------------------------------------------------------------------------
# group_masks and shrink on each kind of member
# --------------------------------------------------------------------------


def test_masks_zero_every_member_and_leave_the_rest_none(rng):
    params = mlp_params(rng, hidden=4)
    g = mlp_group(params)
    masks = jp.group_masks([g], params, [vec(1, 0, 1, 0)])
    assert masks["l2"]["b"] is None
    assert masks["l1"]["b"].tolist() == [True, False, True, False]
    assert masks["l1"]["w"].tolist() == [[True, False, True, False]] * 5
    assert masks["l2"]["w"].tolist() == [[True] * 3, [False] * 3, [True] * 3, [False] * 3]
    masked = jp.apply_masks(params, masks)
    np.testing.assert_array_equal(masked["l2"]["w"][1], 0.0)


def heads_params(rng: np.random.Generator, heads: int = 3, head_dim: int = 2) -> dict:
    return {"w": jnp.asarray(rng.normal(size=(4, heads * head_dim)), jnp.float32)}


def heads_groups(params: dict, heads: int = 3, head_dim: int = 2) -> tuple[ChannelGroup, ChannelGroup]:
    # Columns laid out (heads, head_dim): head h owns a block, head_dim index d one column per head.
    blocks = np.arange(heads * head_dim).reshape(heads, head_dim)
    return group(params, heads, ("w", 1, blocks)), group(params, head_dim, ("w", 1, blocks.T))


def test_masks_of_two_groups_on_one_axis_are_combined(rng):
    params = heads_params(rng)
    by_head, by_dim = heads_groups(params)
    masks = jp.group_masks([by_head, by_dim], params, [vec(1, 0, 1), vec(0, 1)])
    assert masks["w"][0].tolist() == [False, True, False, False, False, True]


def test_masks_under_jit_with_traced_keep(rng):
    params = heads_params(rng)
    groups = heads_groups(params)
    keep = [vec(1, 0, 1), vec(0, 1)]
    f = jax.jit(lambda p, k: jp.group_masks(groups, p, k))
    assert f(params, [jnp.asarray(k) for k in keep])["w"].tolist() == jp.group_masks(groups, params, keep)["w"].tolist()


def test_shrink_one_to_one_matches_np_delete(rng):
    params = mlp_params(rng)
    small = jp.shrink(params, [mlp_group(params)], [vec(1, 0, 1, 1, 0, 0, 1, 1)])
    gone = [1, 4, 5]
    np.testing.assert_array_equal(small["l1"]["w"], np.delete(np.asarray(params["l1"]["w"]), gone, axis=1))
    np.testing.assert_array_equal(small["l1"]["b"], np.delete(np.asarray(params["l1"]["b"]), gone))
    np.testing.assert_array_equal(small["l2"]["w"], np.delete(np.asarray(params["l2"]["w"]), gone, axis=0))
    assert small["l2"]["b"] is params["l2"]["b"]  # not a member: the same array
    assert isinstance(small["l1"]["w"], jax.Array)


def test_shrink_a_range_after_concatenation(rng):
    # The last 3 of 7 positions of "cat" belong to a group whose other member is "w" (3 channels).
    params = [np.asarray(rng.normal(size=(2, 7)), np.float32), np.asarray(rng.normal(size=(3, 2)), np.float32)]
    g = group(params, 3, ("0", 1, np.arange(4, 7)[:, None]), ("1", 0, one(3)))
    assert g.members[0].kind == "range"
    small = jp.shrink(params, [g], [vec(0, 1, 0)])
    assert isinstance(small, list) and isinstance(small[0], np.ndarray)  # NumPy stays NumPy
    np.testing.assert_array_equal(small[0], np.delete(params[0], [4, 6], axis=1))
    np.testing.assert_array_equal(small[1], np.delete(params[1], [0, 2], axis=0))


def test_shrink_spread_heads_and_head_dim_union(rng):
    params = heads_params(rng)
    by_head, by_dim = heads_groups(params)
    assert by_head.members[0].kind == "spread" and by_dim.members[0].kind == "spread"
    small = jp.shrink(params, [by_head, by_dim], [vec(1, 0, 1), vec(0, 1)])
    # Head 1 (columns 2, 3) and head_dim 0 of every head (columns 0, 2, 4).
    np.testing.assert_array_equal(small["w"], np.delete(np.asarray(params["w"]), [0, 2, 3, 4], axis=1))


def test_shrink_keeps_dtypes(rng):
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16), "i": np.arange(8, dtype=np.int8).reshape(4, 2)}
    g = group(params, 4, ("w", 1, one(4)), ("i", 0, one(4)))
    small = jp.shrink(params, [g], [vec(1, 1, 0, 1)])
    assert small["w"].dtype.name == "bfloat16" and small["w"].shape == (3, 3)
    assert small["i"].dtype.name == "int8" and small["i"].tolist() == [[0, 1], [2, 3], [6, 7]]


def test_allow_empty_removes_every_channel(rng):
    params = mlp_params(rng, hidden=2)
    g = mlp_group(params)
    with pytest.raises(ValueError, match=r"keep\[0\] keeps no channel.*allow_empty=True"):
        jp.shrink(params, [g], [vec(0, 0)])
    with pytest.raises(ValueError, match=r"keep\[0\] keeps no channel"):
        jp.group_masks([g], params, [vec(0, 0)])
    small = jp.shrink(params, [g], [vec(0, 0)], allow_empty=True)
    assert small["l1"]["w"].shape == (5, 0) and small["l2"]["w"].shape == (0, 3)


# --------------------------------------------------------------------------
# The shrunk function equals the masked function
# --------------------------------------------------------------------------


def assert_shrunk_equals_masked(fn, params, groups, keep, x):
    small = jp.shrink(params, groups, keep)
    masked = jp.apply_masks(params, jp.group_masks(groups, params, keep))
    np.testing.assert_allclose(fn(small, x), fn(masked, x), **TOL)
    return small


def test_mlp_function(rng):
    params = mlp_params(rng, hidden=16)
    g = mlp_group(params)
    keep = jp.group_keep([g], params, 0.5)
    small = assert_shrunk_equals_masked(mlp, params, [g], keep, jnp.asarray(rng.normal(size=(7, 5)), jnp.float32))
    assert sum(x.size for x in jax.tree.leaves(small)) == 3 + 8 * (1 + 5 + 3)


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cnn(params, x):
    bn = {name: v.reshape(1, 1, 1, -1) for name, v in params["bn"].items()}
    h = conv(x, params["c1"]["w"]) + params["c1"]["b"].reshape(1, 1, 1, -1)
    h = (h - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5) * bn["scale"] + bn["bias"]
    h = conv(jax.nn.relu(h), params["c2"]["w"])
    return h.reshape(h.shape[0], -1) @ params["fc"]  # a flatten: fc's rows spread over c2's filters


def cnn_params(rng):
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {"bn": {"bias": f32(6), "mean": f32(6), "scale": f32(6), "var": jnp.asarray(rng.uniform(0.5, 2, 6),
                                                                                        jnp.float32)},
            "c1": {"b": f32(6), "w": f32(3, 3, 2, 6)}, "c2": {"w": f32(3, 3, 6, 4)}, "fc": f32(5 * 5 * 4, 3)}


def test_conv_bn_and_flatten_functions(rng):
    params = cnn_params(rng)
    filters = group(params, 6, ("bn.bias", 0, one(6)), ("bn.mean", 0, one(6)), ("bn.scale", 0, one(6)),
                    ("bn.var", 0, one(6)), ("c1.b", 0, one(6)), ("c1.w", 3, one(6)), ("c2.w", 2, one(6)))
    # Flattened (H, W, C) -> H*W*C: channel c of c2 owns rows c, c + 4, c + 8, ... of fc.
    flat = group(params, 4, ("c2.w", 3, one(4)), ("fc", 0, np.arange(100).reshape(25, 4).T))
    keep = jp.group_keep([filters, flat], params, [0.5, 0.25])
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 2)), jnp.float32)
    small = assert_shrunk_equals_masked(cnn, params, [filters, flat], keep, x)
    assert small["c2"]["w"].shape == (3, 3, 3, 3) and small["fc"].shape == (75, 3)


def attention(params, x):
    q = jnp.einsum("btd,dhk->bthk", x, params["q"])
    k = jnp.einsum("btd,dhk->bthk", x, params["k"])
    v = jnp.einsum("btd,dhk->bthk", x, params["v"])
    weights = jax.nn.softmax(jnp.einsum("bqhk,bthk->bhqt", q, k), axis=-1)
    return jnp.einsum("bhqt,bthk,hko->bqo", weights, v, params["o"])


def test_heads_function(rng):
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    params = {"k": f32(6, 4, 3), "o": f32(4, 3, 6), "q": f32(6, 4, 3), "v": f32(6, 4, 3)}
    heads = group(params, 4, ("k", 1, one(4)), ("o", 0, one(4)), ("q", 1, one(4)), ("v", 1, one(4)))
    qk_dim = group(params, 3, ("k", 2, one(3)), ("q", 2, one(3)))
    v_dim = group(params, 3, ("o", 1, one(3)), ("v", 2, one(3)))
    keep = [vec(0, 1, 1, 0), vec(1, 0, 1), vec(1, 1, 0)]
    small = assert_shrunk_equals_masked(attention, params, [heads, qk_dim, v_dim], keep,
                                        jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32))
    assert small["q"].shape == (6, 2, 2) and small["o"].shape == (2, 2, 6)


# --------------------------------------------------------------------------
# shrink_model (NNX)
# --------------------------------------------------------------------------


def nnx_groups(model, *spec):
    return group(nnx.state(model), *spec)


def masked_copy(model, groups, keep):
    copy = nnx.clone(model)
    nnx.update(copy, jp.apply_masks(nnx.state(copy), jp.group_masks(groups, copy, keep)))
    return copy


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def test_shrink_model_linear(rng):
    model = MLP(nnx.Rngs(0))
    g = nnx_groups(model, 8, ("l1.bias", 0, one(8)), ("l1.kernel", 1, one(8)), ("l2.kernel", 0, one(8)))
    keep = jp.group_keep([g], model, 0.5)
    masked = masked_copy(model, [g], keep)
    small = jp.shrink(nnx.state(model), [g], keep)  # the functional form: a smaller State
    assert type(small).__name__ == "State" and small["l1"]["kernel"].shape == (4, 4)
    jp.shrink_model(model, [g], keep)
    assert (model.l1.out_features, model.l2.in_features, model.l1.kernel.shape) == (4, 4, (4, 4))
    for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(nnx.state(model))):
        np.testing.assert_array_equal(a, b)
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    np.testing.assert_allclose(model(x), masked(x), **TOL)
    with pytest.raises(ValueError, match=r"groups\[0\].*another tree than nnx.state\(model\).*channel_groups"):
        jp.shrink_model(model, [g], keep)  # shrink after the model changed


class ConvBN(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
        self.dw = nnx.Conv(6, 6, (3, 3), feature_group_count=6, rngs=rngs)
        self.c2 = nnx.Conv(6, 4, (1, 1), rngs=rngs)

    def __call__(self, x):
        return self.c2(nnx.relu(self.dw(nnx.relu(self.bn(self.c1(x))))))


def test_shrink_model_conv_batchnorm_depthwise(rng):
    model = ConvBN(nnx.Rngs(0))
    model.bn.mean[...] = jnp.asarray(rng.normal(size=6), jnp.float32)
    model.bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, 6), jnp.float32)
    o = one(6)
    g = nnx_groups(model, 6, ("bn.bias", 0, o), ("bn.mean", 0, o), ("bn.scale", 0, o), ("bn.var", 0, o),
                   ("c1.bias", 0, o), ("c1.kernel", 3, o), ("c2.kernel", 2, o), ("dw.bias", 0, o),
                   ("dw.kernel", 3, o))
    keep = [vec(1, 0, 1, 1, 0, 1)]
    masked = masked_copy(model, [g], keep)
    jp.shrink_model(model, [g], keep)
    assert (model.c1.out_features, model.bn.num_features, model.c2.in_features) == (4, 4, 4)
    assert (model.dw.in_features, model.dw.out_features, model.dw.feature_group_count) == (4, 4, 4)
    assert model.dw.kernel_shape == (3, 3, 1, 4) == model.dw.kernel.shape
    assert model.bn.mean.shape == (4,) and isinstance(model.bn.mean, nnx.BatchStat)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32)
    np.testing.assert_allclose(model(x), masked(x), **TOL)


def test_shrink_model_multi_head_attention(rng):
    model = nnx.MultiHeadAttention(num_heads=4, in_features=6, qkv_features=12, decode=False, rngs=nnx.Rngs(0))
    # Whole heads (head_dim is not exact: the logits are divided by sqrt(head_dim)).
    o4 = one(4)
    heads = nnx_groups(model, 4, *[(f"{n}.{leaf}", ax, o4) for n in ("key", "query", "value")
                                   for leaf, ax in (("bias", 0), ("kernel", 1))], ("out.kernel", 0, o4))
    keep = [vec(1, 0, 0, 1)]
    masked = masked_copy(model, [heads], keep)
    jp.shrink_model(model, [heads], keep)
    assert (model.num_heads, model.num_kv_heads, model.head_dim, model.qkv_features) == (2, 2, 3, 6)
    assert (model.in_features, model.out_features) == (6, 6)
    assert model.query.out_features == (2, 3) and model.out.in_features == (2, 3)
    x = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
    np.testing.assert_allclose(model(x), masked(x), **TOL)


def test_shrink_model_embed_and_tied_features(rng):
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(10, 6, rngs=rngs)
            self.norm = nnx.RMSNorm(6, rngs=rngs)
            self.proj = nnx.LinearGeneral(6, (2, 3), rngs=rngs)

        def __call__(self, ids):
            return self.proj(self.embed(ids) * self.norm.scale[...].reshape(1, 1, -1))

    model = Tiny(nnx.Rngs(0))
    g = nnx_groups(model, 6, ("embed.embedding", 1, one(6)), ("norm.scale", 0, one(6)), ("proj.kernel", 0, one(6)))
    out = nnx_groups(model, 2, ("proj.bias", 0, one(2)), ("proj.kernel", 1, one(2)))
    keep = [vec(1, 1, 0, 1, 0, 1), vec(0, 1)]
    masked = masked_copy(model, [g, out], keep)
    jp.shrink_model(model, [g, out], keep)
    assert (model.embed.features, model.norm.num_features) == (4, 4)
    assert (model.proj.in_features, model.proj.out_features) == ((4,), (1, 3))
    ids = jnp.array([[1, 2, 9]])
    # The output axis reaches the function's output: the masked model has a zero slice there.
    np.testing.assert_allclose(model(ids), np.delete(np.asarray(masked(ids)), 0, axis=2), **TOL)


def test_shrink_model_conv_mask_and_conv_transpose(rng):
    class Up(nnx.Module):
        def __init__(self, rngs):
            mask = jnp.asarray(rng.uniform(size=(3, 3, 2, 4)) > 0.3, jnp.float32)
            self.conv = nnx.Conv(2, 4, (3, 3), mask=mask, rngs=rngs)
            self.up = nnx.ConvTranspose(4, 3, (2, 2), strides=(2, 2), rngs=rngs)

        def __call__(self, x):
            return self.up(nnx.relu(self.conv(x)))

    model = Up(nnx.Rngs(0))
    mask = np.asarray(model.conv.mask)
    # The group leaves the conv's fixed mask out: shrink_model shrinks it with the kernel.
    g = nnx_groups(model, 4, ("conv.bias", 0, one(4)), ("conv.kernel", 3, one(4)), ("up.kernel", 2, one(4)))
    keep = [vec(1, 0, 1, 1)]
    masked = masked_copy(model, [g], keep)
    jp.shrink_model(model, [g], keep)
    np.testing.assert_array_equal(model.conv.mask, np.delete(mask, 1, axis=3))
    assert model.conv.kernel_shape == (3, 3, 2, 3) and (model.up.in_features, model.up.out_features) == (3, 3)
    assert model.up.kernel_shape == (2, 2, 3, 3)
    x = jnp.asarray(rng.normal(size=(1, 4, 4, 2)), jnp.float32)
    np.testing.assert_allclose(model(x), masked(x), **TOL)


class Block(nnx.Module):
    def __init__(self, rngs):
        self.up = nnx.Linear(4, 8, rngs=rngs)
        self.down = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return x + self.down(nnx.relu(self.up(x)))


class Stack(nnx.Module):
    """Three blocks made by nnx.vmap (Variables with a leading layer axis), run by nnx.scan."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return Block(rngs)

        self.blocks = create(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def step(block, x):
            return block(x)

        return step(self.blocks, x)


def test_shrink_model_stacked_layers(rng):
    model = Stack(nnx.Rngs(0))
    assert model.blocks.up.kernel.shape == (3, 4, 8)
    hidden = nnx_groups(model, 8, ("blocks.down.kernel", 1, one(8)), ("blocks.up.bias", 1, one(8)),
                        ("blocks.up.kernel", 2, one(8)))
    keep = jp.group_keep([hidden], model, 0.25)
    masked = masked_copy(model, [hidden], keep)
    jp.shrink_model(model, [hidden], keep)
    assert model.blocks.up.kernel.shape == (3, 4, 6) and model.blocks.down.kernel.shape == (3, 6, 4)
    assert (model.blocks.up.in_features, model.blocks.up.out_features, model.blocks.down.in_features) == (4, 6, 6)
    x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    np.testing.assert_allclose(model(x), masked(x), **TOL)


def test_shrink_model_lora_and_einsum(rng):
    class Adapted(nnx.Module):
        def __init__(self, rngs):
            self.lora = nnx.LoRALinear(3, 5, lora_rank=2, rngs=rngs)
            self.mix = nnx.Einsum("bi,io->bo", (5, 2), (2,), rngs=rngs)

        def __call__(self, x):
            return self.mix(nnx.relu(self.lora(x)))

    model = Adapted(nnx.Rngs(0))
    model.lora.lora.lora_b[...] = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)  # (initialized to 0)
    o = one(5)
    g = nnx_groups(model, 5, ("lora.bias", 0, o), ("lora.kernel", 1, o), ("lora.lora.lora_b", 1, o),
                   ("mix.kernel", 0, o))
    keep = [vec(1, 1, 0, 1, 0)]
    masked = masked_copy(model, [g], keep)
    jp.shrink_model(model, [g], keep)
    assert (model.lora.out_features, model.lora.lora.out_features, model.mix.kernel_shape) == (3, 3, (3, 2))
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    np.testing.assert_allclose(model(x), masked(x), **TOL)


def test_shrink_model_error_leaves_the_model_untouched():
    class Grouped(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(4, 8, (3, 3), feature_group_count=4, rngs=rngs)  # 2 outputs per group

    model = Grouped(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model))
    g = nnx_groups(model, 8, ("conv.bias", 0, one(8)), ("conv.kernel", 3, one(8)))
    with pytest.raises(ValueError, match=r"grouped conv at 'conv'.*feature_group_count=4.*to 7 outputs"):
        jp.shrink_model(model, [g], [vec(1, 1, 1, 1, 1, 1, 1, 0)])
    assert (model.conv.out_features, model.conv.feature_group_count, model.conv.kernel.shape) == (8, 4, (3, 3, 1, 8))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(nnx.state(model))):
        np.testing.assert_array_equal(a, b)
    jp.shrink_model(model, [g], [vec(1, 1, 0, 0, 1, 1, 1, 1)])  # a whole group of 2: allowed
    assert (model.conv.in_features, model.conv.out_features, model.conv.feature_group_count) == (3, 6, 3)


def test_shrink_model_group_norm_keeps_its_number_of_groups():
    model = nnx.GroupNorm(6, num_groups=3, rngs=nnx.Rngs(0))
    g = nnx_groups(model, 6, ("bias", 0, one(6)), ("scale", 0, one(6)))
    with pytest.raises(ValueError, match=r"GroupNorm at 'the model' to 4 features: not a multiple of its num_groups=3"):
        jp.shrink_model(model, [g], [vec(1, 1, 0, 1, 0, 1)])
    assert model.scale.shape == (6,) and model.group_size == 2
    jp.shrink_model(model, [g], [vec(1, 0, 0, 1, 1, 0)])
    assert (model.num_groups, model.group_size, model.bias.shape) == (3, 1, (3,))
    assert not hasattr(model, "num_features")


# --------------------------------------------------------------------------
# Linen sizes
# --------------------------------------------------------------------------


def test_shrunk_sizes_for_linen_conv_and_dense():
    import flax.linen as nn

    class CNN(nn.Module):
        filters: int = 6

        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(self.filters, (3, 3), name="conv")(x))
            return nn.Dense(2, name="head")(h.reshape(h.shape[0], -1))

    variables = CNN().init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
    g = group(variables, 6, ("params.conv.bias", 0, one(6)), ("params.conv.kernel", 3, one(6)),
              ("params.head.kernel", 0, np.arange(96).reshape(16, 6).T))
    keep = [vec(1, 0, 1, 1, 0, 1)]
    assert jp.shrunk_sizes([g], variables, keep) == {("conv", "features"): 4}
    small = jp.shrink(variables, [g], keep)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 1)), jnp.float32)
    masked = jp.apply_masks(variables, jp.group_masks([g], variables, keep))
    np.testing.assert_allclose(CNN(filters=4).apply(small, x), CNN().apply(masked, x), **TOL)


# --------------------------------------------------------------------------
# Bad input: a clear error, nothing computed or changed
# --------------------------------------------------------------------------


def test_keep_of_the_wrong_shape_dtype_or_count(rng):
    params = mlp_params(rng, hidden=4)
    g = mlp_group(params)
    with pytest.raises(ValueError, match="keep has 2 vectors for 1 groups"):
        jp.shrink(params, [g], [vec(1, 1, 1, 1), vec(1)])
    with pytest.raises(ValueError, match=r"keep\[0\] must have shape \(4,\).*got \(3,\)"):
        jp.shrink(params, [g], [vec(1, 1, 1)])
    with pytest.raises(TypeError, match=r"keep\[0\] must be a bool vector.*int64"):
        jp.shrink(params, [g], [np.array([1, 0, 1, 1])])
    with pytest.raises(TypeError, match="keep must be a sequence of bool vectors"):
        jp.shrink(params, [g], vec(1, 1, 1, 1))
    with pytest.raises(TypeError, match=r"keep\[0\] is traced.*outside jit"):
        jax.jit(lambda k: jp.shrink(params, [g], [k]))(jnp.ones(4, bool))


def test_groups_from_another_tree(rng):
    params = mlp_params(rng, hidden=4)
    g = mlp_group(params)
    other = mlp_params(rng, hidden=5)
    for call in (lambda: jp.shrink(other, [g], [vec(1, 0, 1, 1)]),
                 lambda: jp.group_masks([g], other, [vec(1, 0, 1, 1)]),
                 lambda: jp.group_keep([g], other, 0.5)):
        with pytest.raises(ValueError, match=r"groups\[0\].*was read from another tree than params"):
            call()


def test_member_path_missing_or_wrong(rng):
    params = mlp_params(rng, hidden=4)
    gone = ChannelGroup(4, (Member("l3.w", 0, 4, one(4)),), True, (), signature_of(params))
    with pytest.raises(ValueError, match=r"groups\[0\] has a member at 'l3.w', which is not a leaf"):
        jp.shrink(params, [gone], [vec(1, 0, 1, 1)])
    short = ChannelGroup(4, (Member("l1.b", 0, 4, one(3)),), True, (), signature_of(params))
    with pytest.raises(ValueError, match=r"groups\[0\] has 4 channels but its member .* has positions for 3"):
        jp.group_masks([short], params, [vec(1, 0, 1, 1)])
    outside = ChannelGroup(2, (Member("l1.b", 0, 4, np.array([[0], [4]])),), True, (), signature_of(params))
    with pytest.raises(ValueError, match=r"positions outside \[0, 4\)"):
        jp.shrink(params, [outside], [vec(1, 0)])
    wrong_axis = ChannelGroup(4, (Member("l1.w", 0, 4, one(4)),), True, (), signature_of(params))
    with pytest.raises(ValueError, match=r"axis 0 of length 4, but the leaf has shape \(5, 4\)"):
        jp.group_keep([wrong_axis], params, 0.5)


def test_other_bad_arguments(rng):
    params = mlp_params(rng, hidden=4)
    g = mlp_group(params)
    with pytest.raises(ValueError, match="method must be one of 'l1', 'l2', 'random', got 'l3'"):
        jp.group_keep([g], params, 0.5, method="l3")
    with pytest.raises(ValueError, match="amount=1.5 should either be a float in the range"):
        jp.group_keep([g], params, 1.5)
    with pytest.raises(ValueError, match="amount=5 should be smaller than the number of parameters to prune=4"):
        jp.group_keep([g], params, 5)
    with pytest.raises(TypeError, match="single ChannelGroup: pass \\(group,\\)"):
        jp.group_keep(g, params, 0.5)
    with pytest.raises(TypeError, match=r"groups\[1\] must be a ChannelGroup, got str"):
        jp.group_keep([g, "x"], params, 0.5)
    with pytest.raises(TypeError, match="shrink_model takes a Flax NNX module, got dict"):
        jp.shrink_model(params, [g], [vec(1, 1, 1, 1)])
    model = MLP(nnx.Rngs(0))
    with pytest.raises(TypeError, match="to shrink an NNX module in place, use jp.shrink_model"):
        jp.shrink(model, [g], [vec(1, 1, 1, 1)])


def test_shrink_model_refuses_a_value_head_dim_that_nnx_attention_cannot_hold():
    # nnx.MultiHeadAttention has one head_dim for query, key and value: the
    # value/out head dimension (an exact group of the jaxpr) cannot shrink alone.
    model = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 3, 8))
    (value_dim,) = [g for g in jp.channel_groups(model, x) if g.size == 4]
    assert set(value_dim.paths) == {"value.kernel", "value.bias", "out.kernel"}
    before = jax.tree.map(np.asarray, nnx.state(model))
    with pytest.raises(ValueError, match="cannot shrink the MultiHeadAttention at 'the model'.*head_dim"):
        jp.shrink_model(model, [value_dim], [jnp.array([True, False, True, True])])
    assert model.head_dim == 4
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(nnx.state(model))))
