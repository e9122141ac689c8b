"""N:M over whole models: axes read from the jaxpr (`n_m_axes`, `n_m_rules`) and the channel
permutation (`permute_for_n_m`) that must leave the model's function unchanged."""

from __future__ import annotations

import math
from typing import Any

import _group_models as gm
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp

CASES = [gm.mlp, gm.cnn, gm.resnet, gm.separable, gm.flatten, gm.transformer]


def _kept(params: Any, rules: dict[str, jp.NMSparse]) -> float:
    """The magnitude N:M keeps of every ruled weight (float64, on the host)."""
    masks = jp.prune_tree(None, params, rules)
    flat = {jp.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    flat_masks = {jp.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(masks)}
    return sum(float(np.sum(np.abs(np.asarray(flat[p], np.float64)) * np.asarray(flat_masks[p]))) for p in rules)


# ------------------------------------------------------------------ n_m_axes


def test_axes_follow_the_contraction_whatever_the_layout() -> None:
    def net(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = jax.lax.conv_general_dilated(x, p["conv_hwio"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.lax.conv_general_dilated(h, p["conv_oihw"], (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))
        h = h.reshape(h.shape[0], h.shape[1] * h.shape[2], 8)  # (B, T, 8)
        h = h @ p["dense"]  # Flax layout (in, out)
        h = h @ p["linear"].T  # torch layout (out, in)
        h = h.reshape(h.shape[0], h.shape[1], 2, 4)
        h = jnp.einsum("bthd,hdo->bto", h, p["general"])  # LinearGeneral over (heads, head_dim)
        return jnp.einsum("bto,ok->btk", h, p["einsum_t"].T) + p["bias"][None, None, :]

    params = {"conv_hwio": jnp.ones((3, 3, 4, 8)), "conv_oihw": jnp.ones((8, 8, 3, 3)), "dense": jnp.ones((8, 16)),
              "linear": jnp.ones((8, 16)), "general": jnp.ones((2, 4, 12)), "einsum_t": jnp.ones((4, 12)),
              "bias": jnp.ones(4)}
    axes = jp.n_m_axes(net, params, jax.ShapeDtypeStruct((2, 4, 4, 4), jnp.float32))
    assert axes == {"conv_hwio": 2, "conv_oihw": 1, "dense": 0, "linear": 1, "general": 1, "einsum_t": 1}


def test_axes_of_nnx_layers_and_rules_that_prune_along_them() -> None:
    class Net(nnx.Module):
        def __init__(self) -> None:
            self.conv = nnx.Conv(3, 8, (3, 3), rngs=nnx.Rngs(0))
            self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=nnx.Rngs(1))
            self.dense = nnx.Linear(8, 4, rngs=nnx.Rngs(2))

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.dense(jnp.mean(self.conv2(nnx.relu(self.conv(x))), axis=(1, 2)))

    model = Net()
    x = jnp.ones((2, 6, 6, 3))
    assert jp.n_m_axes(model, x) == {"conv.kernel": 2, "conv2.kernel": 2, "dense.kernel": 0}
    rules = jp.n_m_rules(model, 2, 4, x)  # conv's 3 input channels are no multiple of 4: left out
    assert rules == {"conv2.kernel": jp.NMSparse(2, 4, axis=2), "dense.kernel": jp.NMSparse(2, 4, axis=0)}
    masks = jp.prune_tree(None, nnx.state(model), rules)
    assert jp.n_m_valid(masks["conv2"]["kernel"], 2, 4, axis=2)
    assert jp.n_m_valid(masks["dense"]["kernel"], 2, 4, axis=0)
    assert not jp.n_m_valid(masks["dense"]["kernel"], 2, 4, axis=1)  # the output axis was not grouped


def test_a_weight_contracted_along_two_axes_is_refused() -> None:
    def tied(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return (x @ p["w"]) @ p["w"].T

    with pytest.raises(ValueError, match=r"'w' is the weight of 2 matmuls that contract different axes \(\[0, 1\]\)"):
        jp.n_m_axes(tied, {"w": jnp.ones((4, 4))}, jnp.ones((2, 4)))


# ------------------------------------------------------------------ permute_for_n_m on the group models


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_permuted_plain_model_computes_the_same_and_keeps_more(make: Any) -> None:
    case = make()
    rules = jp.n_m_rules(case.fn, case.params, 2, 4, *case.args)
    new, perms = jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args)
    assert jax.tree.structure(new) == jax.tree.structure(case.params)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(case.params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        # a permutation moves values: the multiset of each leaf is unchanged
        np.testing.assert_array_equal(np.sort(np.asarray(a).ravel()), np.sort(np.asarray(b).ravel()))
    np.testing.assert_allclose(case.fn(new, *case.args), case.fn(case.params, *case.args), rtol=2e-5, atol=2e-6)
    assert perms, "every model has a group feeding an N:M weight"
    assert any(p.changed for p in perms)
    for p in perms:
        assert p.kept_after >= p.kept_before
        assert sorted(p.permutation.tolist()) == list(range(p.group.size))
        assert set(p.consumers) <= set(rules)
    # the gain measured independently: N:M masks over every ruled weight
    before, after = _kept(case.params, rules), _kept(new, rules)
    gain = sum(p.kept_after - p.kept_before for p in perms)
    assert after >= before
    assert math.isclose(after - before, gain, rel_tol=1e-3, abs_tol=1e-3)


@pytest.mark.parametrize("make", [gm.cnn, gm.transformer], ids=lambda f: f.__name__)
def test_nnx_module_is_permuted_in_place_like_its_state(make: Any) -> None:
    case = make()
    model = case.nnx_model()
    before = model(*case.args)
    new, perms = jp.permute_for_n_m(model, 2, 4, *case.args)
    np.testing.assert_allclose(model(*case.args), before, rtol=2e-5, atol=2e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(p.changed for p in perms)


def test_the_permutation_moves_every_member_alike() -> None:
    """An MLP whose hidden group is searched: every member is gathered with the returned permutation."""
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    params = {"w1": jax.random.normal(k1, (4, 16)), "b1": jax.random.normal(k2, (16,)),
              "w2": jax.random.normal(k3, (16, 8))}

    def mlp(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return jax.nn.relu(x @ p["w1"] + p["b1"][None, :]) @ p["w2"]

    new, (perm,) = jp.permute_for_n_m(mlp, params, 2, 4, jnp.ones((3, 4)))
    assert perm.consumers == ("w2",) and perm.changed
    order = perm.permutation
    np.testing.assert_array_equal(new["w1"], params["w1"][:, order])
    np.testing.assert_array_equal(new["b1"], params["b1"][order])
    np.testing.assert_array_equal(new["w2"], params["w2"][order, :])
    kept = lambda w: float(jp.n_m_kept(jnp.abs(w).T, 2, 4))  # noqa: E731 (groups along w2's input axis)
    assert perm.kept_before == pytest.approx(kept(params["w2"]), rel=1e-6)
    assert perm.kept_after == pytest.approx(kept(new["w2"]), rel=1e-6)
    assert perm.kept_after > perm.kept_before


def _attention(p: dict[str, Any], x: jax.Array) -> jax.Array:
    """One attention block with LayerNorm and per-head weights (LinearGeneral-like)."""
    b, t, _ = x.shape
    mu = jnp.mean(x, -1, keepdims=True)
    a = (x - mu) / jnp.sqrt(jnp.var(x, -1, keepdims=True) + 1e-6) * p["ln"][None, None, :]
    q, k, v = (jnp.einsum("btd,dhe->bthe", a, p[w]) for w in ("q", "k", "v"))
    w = jax.nn.softmax(jnp.einsum("bqhe,bkhe->bhqk", q / math.sqrt(q.shape[-1]), k), axis=-1)
    o = jnp.einsum("bhqk,bkhe->bqhe", w, v)
    return x + jnp.einsum("bqhe,hed->bqd", o, p["o"])


def test_attention_value_head_dim_is_permuted_and_the_residual_input_reported() -> None:
    keys = jax.random.split(jax.random.key(1), 5)
    d, h, e = 8, 2, 8
    params = {"ln": 1.0 + 0.1 * jax.random.normal(keys[0], (d,)),
              **{n: jax.random.normal(k, (d, h, e)) for n, k in zip("qkv", keys[1:4], strict=True)},
              "o": jax.random.normal(keys[4], (h, e, d))}
    x = jax.random.normal(jax.random.key(9), (2, 5, d))
    new, perms = jp.permute_for_n_m(_attention, params, 2, 4, x)
    np.testing.assert_allclose(_attention(new, x), _attention(params, x), rtol=2e-5, atol=2e-5)
    by_consumers = {p.consumers: p for p in perms}
    # q/k/v contract the residual stream, which is the input x: reported, not permuted; q/k's
    # head_dim feeds no weight; v/o's head_dim (o's input axis, innermost) is searched
    assert set(by_consumers) == {("o",)}
    assert by_consumers[("o",)].group.size == e and by_consumers[("o",)].changed
    skipped = jp.permute_for_n_m(_attention, params, 2, 4, x).skipped
    assert skipped == (("k[0], ln[0], o[2], q[0], v[0]", "the channels reach the function's inputs"),)


def test_order_dependent_channels_are_skipped_with_the_reason() -> None:
    def net(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return jnp.cumsum(x @ p["w1"], axis=-1) @ p["w2"]

    params = {"w1": jnp.arange(32.0).reshape(4, 8), "w2": jnp.arange(16.0).reshape(8, 2)}
    new, perms = r = jp.permute_for_n_m(net, params, 2, 4, jnp.ones((1, 4)))
    assert perms == ()
    assert any("`cumsum` along the channels" in why for _, why in r.skipped)
    np.testing.assert_array_equal(new["w1"], params["w1"])


def test_interleaved_channels_are_skipped() -> None:
    """NCHW flatten: channel c owns positions c*HW .. c*HW+HW-1, so a permutation moves whole N:M groups."""
    def net(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = jax.nn.relu(jnp.einsum("bhwi,io->bohw", x, p["w1"]))  # (B, C=8, 2, 2)
        return h.reshape(h.shape[0], -1) @ p["w2"]

    params = {"w1": jax.random.normal(jax.random.key(0), (3, 8)), "w2": jax.random.normal(jax.random.key(1), (32, 2))}
    new, perms = r = jp.permute_for_n_m(net, params, 2, 4, jnp.ones((1, 2, 2, 3)))
    assert perms == ()
    assert any("do not fill whole groups of 4 along the N:M axis of 'w2'" in why for _, why in r.skipped)


def test_progress_reports_each_searched_group(caplog: pytest.LogCaptureFixture) -> None:
    case = gm.transformer()
    seen: list[jp.GroupPermutation] = []
    _, perms = jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, progress=seen.append)
    assert seen == list(perms)
    with caplog.at_level("INFO", logger="jaxprune"):
        jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxprune"]
    assert len(lines) == len(perms) and "consumers mlp2.kernel: kept" in lines[-1]
    with pytest.raises(TypeError, match="progress must be None, a bool or a callable"):
        jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, progress="yes")


def test_weights_selects_the_consumers() -> None:
    case = gm.transformer()
    _, perms = jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, weights=["mlp2.kernel"])
    assert [p.consumers for p in perms] == [("mlp2.kernel",)]


def test_bad_arguments() -> None:
    case = gm.mlp()
    with pytest.raises(ValueError, match=r"n must be in \[0, m\)"):
        jp.permute_for_n_m(case.fn, case.params, 4, 4, *case.args)
    with pytest.raises(TypeError, match="n must be an int"):
        jp.permute_for_n_m(case.fn, case.params, 2.0, 4, *case.args)
    with pytest.raises(TypeError, match="expected n, m after the params"):
        jp.permute_for_n_m(case.fn, case.params)
    with pytest.raises(ValueError, match=r"rule pattern 'nothing\*' matches no parameter"):
        jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, weights=["nothing*"])
    with pytest.raises(ValueError, match="'layers.0.bias' .* is no matmul's weight"):
        jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, weights="layers.0.bias")
    with pytest.raises(ValueError, match="max_rounds must be None or an int >= 0, got -1"):
        jp.permute_for_n_m(case.fn, case.params, 2, 4, *case.args, max_rounds=-1)
    with pytest.raises(TypeError, match="expects a function fn"):
        jp.permute_for_n_m(3, case.params, 2, 4)


def test_a_tied_embedding_has_an_axis_but_no_rule() -> None:
    """Its lookups would be pruned too: n_m_rules (and permute_for_n_m's default) leave it to the user."""
    def lm(p: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
        h = jax.nn.relu(p["embed"][ids] @ p["w"])
        return h @ p["embed"].T

    k1, k2 = jax.random.split(jax.random.key(4))
    params = {"embed": jax.random.normal(k1, (10, 8)), "w": jax.random.normal(k2, (8, 8))}
    ids = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
    assert jp.n_m_axes(lm, params, ids) == {"w": 0, "embed": 1}
    assert jp.n_m_rules(lm, params, 2, 4, ids) == {"w": jp.NMSparse(2, 4, axis=0)}
    _, perms = jp.permute_for_n_m(lm, params, 2, 4, ids)
    assert [p.consumers for p in perms] == [("w",)]
    new, perms = jp.permute_for_n_m(lm, params, 2, 4, ids, weights=["w", "embed"])
    assert sorted(c for p in perms for c in p.consumers) == ["embed", "w"]
    np.testing.assert_allclose(lm(new, ids), lm(params, ids), rtol=2e-5, atol=2e-5)
