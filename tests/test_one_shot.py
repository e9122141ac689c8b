"""jp.one_shot: kernels and their inputs read from the jaxpr, stages, and the result of each method.

The reference for every kernel is the layer-level function (jp.wanda_mask,
jp.sparsegpt, jp.l1_unstructured) applied to inputs that the test computes by
hand from the batches, with the earlier kernels already pruned (sequential) or
dense (parallel).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxprune as jp


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def mlp(p, x):
    return jax.nn.relu(x @ p["w1"]) @ p["w2"]


@pytest.fixture(scope="module")
def mlp_case():
    params = {"w1": _normal(1, (12, 24)), "w2": _normal(2, (24, 8))}
    batches = [_normal(10 + i, (16, 12)) for i in range(3)] + [_normal(20, (5, 12))]  # a smaller last batch
    return params, batches


def _all(batches):
    return jnp.concatenate(batches)


@pytest.mark.parametrize("sequential", [True, False])
def test_wanda_masks_equal_the_layer_function_on_hand_computed_inputs(mlp_case, sequential):
    params, batches = mlp_case
    new, masks = jp.one_shot(mlp, params, batches, {"w*": jp.Wanda(0.5)}, sequential=sequential)
    x = _all(batches)
    m1 = jp.wanda_mask(params["w1"], x, 0.5)
    np.testing.assert_array_equal(masks["w1"], m1)
    w1_seen = jnp.where(m1, params["w1"], 0.0) if sequential else params["w1"]
    m2 = jp.wanda_mask(params["w2"], jax.nn.relu(x @ w1_seen), 0.5)
    np.testing.assert_array_equal(masks["w2"], m2)
    np.testing.assert_array_equal(new["w2"], jnp.where(m2, params["w2"], 0.0))


def test_sequential_and_parallel_differ_where_the_second_layers_inputs_change(mlp_case):
    params, batches = mlp_case
    seq = jp.one_shot(mlp, params, batches, {"w*": jp.SparseGPT(0.5)})
    par = jp.one_shot(mlp, params, batches, {"w*": jp.SparseGPT(0.5)}, sequential=False)
    np.testing.assert_array_equal(seq.masks["w1"], par.masks["w1"])
    assert not np.array_equal(seq.params["w2"], par.params["w2"])
    assert [(r.path, r.stage) for r in seq.layers] == [("w1", 0), ("w2", 1)]
    assert [(r.path, r.stage) for r in par.layers] == [("w1", 0), ("w2", 0)]


@pytest.mark.parametrize("sequential", [True, False])
def test_sparsegpt_kernels_equal_the_layer_function(mlp_case, sequential):
    params, batches = mlp_case
    new, masks = jp.one_shot(mlp, params, batches, {"w*": jp.SparseGPT(0.5, block_size=8)}, sequential=sequential)
    x = _all(batches)
    w1, m1 = jp.sparsegpt(params["w1"], x, 0.5, block_size=8)
    np.testing.assert_array_equal(masks["w1"], m1)
    np.testing.assert_allclose(new["w1"], w1, rtol=1e-5, atol=1e-6)
    h = jax.nn.relu(x @ (w1 if sequential else params["w1"]))
    w2, m2 = jp.sparsegpt(params["w2"], h, 0.5, block_size=8)
    np.testing.assert_array_equal(masks["w2"], m2)
    np.testing.assert_allclose(new["w2"], w2, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(new["w2"])[~np.asarray(masks["w2"])] == 0.0)


def test_report_error_is_the_reconstruction_error_on_the_inputs(mlp_case):
    params, batches = mlp_case
    result = jp.one_shot(mlp, params, batches, {"w1": jp.Wanda(0.25)})
    x = np.asarray(_all(batches), np.float64)
    w = np.asarray(params["w1"], np.float64)
    w_new = np.asarray(result.params["w1"], np.float64)
    expected = np.linalg.norm(x @ w - x @ w_new) / np.linalg.norm(x @ w)
    (layer,) = result.layers
    assert layer.path == "w1" and layer.stage == 0 and layer.sparsity == 0.25
    assert layer.error == pytest.approx(expected, rel=1e-4)
    assert result.params["w2"] is params["w2"] and result.masks["w2"] is None


def test_magnitude_rules_prune_by_value_and_still_report_matmul_errors(mlp_case):
    params, batches = mlp_case
    result = jp.one_shot(mlp, {**params, "b": jnp.arange(4.0)}, batches,
                         {"w1": jp.L1Unstructured(0.5), "w2": jp.Wanda(0.5), "b": jp.L1Unstructured(1)})
    np.testing.assert_array_equal(result.masks["w1"], jp.l1_unstructured(params["w1"], 0.5))
    np.testing.assert_array_equal(result.masks["b"], [False, True, True, True])
    by_path = {r.path: r for r in result.layers}
    assert by_path["b"].stage == -1 and np.isnan(by_path["b"].error)  # not a matmul weight: no inputs
    assert by_path["w1"].stage == 0 and 0.0 < by_path["w1"].error < 1.0
    # w2's inputs come from the magnitude-pruned w1.
    x = _all(batches)
    h = jax.nn.relu(x @ jnp.where(result.masks["w1"], params["w1"], 0.0))
    np.testing.assert_array_equal(result.masks["w2"], jp.wanda_mask(params["w2"], h, 0.5))


def attention_block(p, x):
    """q/k/v, an output projection written as an einsum on a torch-layout weight, and an MLP in a jit."""
    q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
    a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / 4.0) @ v
    x = x + jnp.einsum("bsd,ed->bse", a, p["o"])  # p["o"] is (out, in)
    h = jax.jit(lambda h: jax.nn.gelu(h @ p["up"]))(x)
    return x + h @ p["down"]


def test_stages_of_an_attention_block_and_a_torch_layout_kernel():
    names = ["q", "k", "v", "o", "up", "down"]
    params = {n: _normal(30 + i, (16, 16)) for i, n in enumerate(names)}
    batches = [_normal(40 + i, (2, 5, 16)) for i in range(2)]
    result = jp.one_shot(attention_block, params, batches, {"*": jp.Wanda(0.25)})
    assert {r.path: r.stage for r in result.layers} == {"q": 0, "k": 0, "v": 0, "o": 1, "up": 2, "down": 3}
    # The output projection contracts its axis 1: masks as the layer function with in_axis=1.
    x = _all(batches)
    seen = {n: jnp.where(result.masks[n], params[n], 0.0) for n in ["q", "k", "v"]}
    q, k, v = x @ seen["q"], x @ seen["k"], x @ seen["v"]
    a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / 4.0) @ v
    np.testing.assert_array_equal(result.masks["o"], jp.wanda_mask(params["o"], a, 0.25, in_axis=1))
    assert int(result.masks["o"].sum(axis=1).min()) == 12  # per output unit: 4 of its 16 inputs pruned


def heads(p, x):
    """Multi-axis kernels: (d, heads, head_dim) in and (heads, head_dim, d) out."""
    h = jnp.einsum("bd,dhk->bhk", x, p["wq"])
    return jnp.einsum("bhk,hkd->bd", jnp.tanh(h), p["wo"])


def test_kernels_with_several_contracted_axes_are_pruned_as_matrices():
    params = {"wq": _normal(50, (8, 2, 4)), "wo": _normal(51, (2, 4, 8))}
    batches = [_normal(52, (32, 8))]
    result = jp.one_shot(heads, params, batches, {"w*": jp.Wanda(0.5)})
    x = batches[0]
    mq = jp.wanda_mask(params["wq"].reshape(8, 8), x, 0.5).reshape(8, 2, 4)
    np.testing.assert_array_equal(result.masks["wq"], mq)
    h = jnp.tanh(jnp.einsum("bd,dhk->bhk", x, jnp.where(mq, params["wq"], 0.0)))
    mo = jp.wanda_mask(params["wo"].reshape(8, 8), h.reshape(32, 8), 0.5).reshape(2, 4, 8)
    np.testing.assert_array_equal(result.masks["wo"], mo)


def conv_net(p, x):
    h = jax.nn.relu(conv(p, x))
    return h.reshape(h.shape[0], -1) @ p["fc"]


def _patches(x: np.ndarray) -> np.ndarray:
    """3x3 SAME im2col by hand: one row per output position, features (channel, kh, kw)."""
    n, hgt, wid, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [xp[b, i:i + 3, j:j + 3, :].transpose(2, 0, 1).ravel() for b in range(n) for i in range(hgt)
            for j in range(wid)]
    return np.stack(rows)


def test_conv_kernels_are_calibrated_on_their_image_patches():
    params = {"k": _normal(60, (3, 3, 3, 4)), "fc": _normal(61, (5 * 5 * 4, 2))}
    batches = [_normal(62 + i, (2, 5, 5, 3)) for i in range(2)]
    result = jp.one_shot(conv_net, params, batches, {"k": jp.Wanda(0.5), "fc": jp.SparseGPT(0.5, block_size=20)})
    x = np.asarray(_all(batches), np.float64)
    patches = _patches(x)
    kmat = np.asarray(params["k"]).transpose(2, 0, 1, 3).reshape(27, 4)  # rows (channel, kh, kw)
    np.testing.assert_allclose(patches @ kmat, np.asarray(conv(params, _all(batches))).reshape(-1, 4),
                               rtol=1e-4, atol=1e-4)  # the hand im2col is the convolution's
    expected = np.asarray(jp.wanda_mask(kmat.astype(np.float32), patches.astype(np.float32), 0.5))
    np.testing.assert_array_equal(result.masks["k"], expected.reshape(3, 3, 3, 4).transpose(1, 2, 0, 3))
    assert [(r.path, r.stage) for r in result.layers] == [("k", 0), ("fc", 1)]


class TinyLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
        self.fc = nnx.Linear(8, 16, rngs=rngs)
        self.out = nnx.Linear(16, 11, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(x)
        return self.out(nnx.relu(self.fc(x)))


def test_an_nnx_module_is_pruned_in_place_with_multi_head_kernels():
    model = TinyLM(nnx.Rngs(0))
    before = nnx.state(model, nnx.Param)
    batches = [jax.random.randint(jax.random.key(i), (4, 6), 0, 11) for i in range(2)]
    rules = {"attn.*.kernel": jp.Wanda(0.5), "fc.kernel": jp.SparseGPT(0.5), "out.kernel": jp.L1Unstructured(0.5)}
    new, masks = result = jp.one_shot(model, batches, rules)
    stages = {r.path: r.stage for r in result.layers}
    assert stages == {"attn.query.kernel": 0, "attn.key.kernel": 0, "attn.value.kernel": 0, "attn.out.kernel": 1,
                      "fc.kernel": 2, "out.kernel": 3}
    q = masks["attn"]["query"]["kernel"]
    assert q.shape == (8, 2, 4) and int(q.sum()) == 32
    # Per output unit (head, dim) of the query kernel, exactly half of the 8 inputs kept.
    assert np.all(np.asarray(q).sum(axis=0) == 4)
    np.testing.assert_array_equal(model.attn.query.kernel[...], jnp.where(q, before["attn"]["query"]["kernel"][...], 0))
    np.testing.assert_array_equal(model.fc.kernel[...], new["fc"]["kernel"][...])
    assert jax.tree.leaves(masks["embed"]) == []  # no rule: None, as prune_tree gives on an NNX state


def test_nnx_module_is_untouched_when_pruning_fails():
    model = TinyLM(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    batches = [jax.random.randint(jax.random.key(0), (4, 6), 0, 11)]
    with pytest.raises(ValueError, match="not a matmul weight"):
        jp.one_shot(model, batches, {"fc.kernel": jp.Wanda(0.5), "embed.embedding": jp.Wanda(0.5)})
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_progress_reports_each_layer_in_order(mlp_case, caplog):
    params, batches = mlp_case
    seen = []
    result = jp.one_shot(mlp, params, batches, {"w*": jp.Wanda(0.5)}, progress=seen.append)
    assert seen == list(result.layers)
    with caplog.at_level("INFO", logger="jaxprune"):
        jp.one_shot(mlp, params, batches, {"w*": jp.Wanda(0.5)}, progress=True)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" ")[1] for line in lines] == ["w1", "w2"]
    assert "stage 1): 50.00% pruned, relative error 0." in lines[1]


def test_results_are_reproducible_and_random_methods_draw_from_the_key(mlp_case):
    params, batches = mlp_case
    rules = {"w1": jp.RandomUnstructured(0.5), "w2": jp.SparseGPT(0.5)}
    a = jp.one_shot(mlp, params, batches, rules, key=jax.random.key(3))
    b = jp.one_shot(mlp, params, batches, rules, key=jax.random.key(3))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    np.testing.assert_array_equal(
        a.masks["w1"], jp.random_unstructured(jp.leaf_key(jax.random.key(3), "w1"), params["w1"], 0.5))
    with pytest.raises(ValueError, match="draws random numbers: pass key="):
        jp.one_shot(mlp, params, batches, rules)


def test_report_sparsity_is_the_exact_fraction_of_pruned_entries(mlp_case):
    """2 of 3 pruned is reported as the float nearest 2/3 (a float32 mean gives
    0.6666666865...), and 48 of 192 as exactly 0.25."""
    params, batches = mlp_case
    result = jp.one_shot(mlp, {**params, "b": jnp.array([3.0, 1.0, 2.0])}, batches,
                         {"b": jp.L1Unstructured(2), "w2": jp.L1Unstructured(48)})
    np.testing.assert_array_equal(result.masks["b"], [True, False, False])
    by_path = {r.path: r.sparsity for r in result.layers}
    assert by_path == {"b": 2 / 3, "w2": 0.25}
    assert all(type(s) is float for s in by_path.values())


def test_pruned_fraction_counts_exactly_beyond_float32(monkeypatch):
    from jaxprune import _amounts, _one_shot_types

    # One pruned entry of 2**24 + 1: a float32 mean of the mask rounds the kept
    # fraction to 1.0 (sparsity 0.0).
    mask = jnp.ones(2**24 + 1, bool).at[12345].set(False)
    assert _one_shot_types.pruned_fraction(mask) == 1 / (2**24 + 1)
    assert float(1.0 - jnp.mean(mask)) == 0.0  # the float32 mean this replaces
    assert _one_shot_types.pruned_fraction(jnp.zeros((0, 3), bool)) == 0.0  # nothing to prune
    # Beyond 2**32 entries (too big to build here): the counts stay exact Python ints.
    seen = []

    def big_count(m):
        seen.append(m.shape)
        return _amounts.host_count(2**32 + 7)

    class Shape:
        shape = (2**17, 2**17)

    monkeypatch.setattr(_one_shot_types, "count_true", big_count)
    assert _one_shot_types.pruned_fraction(Shape()) == (2**34 - 2**32 - 7) / 2**34
    assert seen == [(2**17, 2**17)]


def test_reports_are_in_leaf_order_within_a_stage_even_when_paths_print_alike():
    """Leaves 0 ({"a": {"b"}}) and 1 ({"a.b"}) both print as "a.b"; their
    matmuls run in the other order. Reports follow the leaves."""

    def model(p, x):
        return jnp.concatenate([x @ p["a.b"], x @ p["a"]["b"]], axis=-1)

    params = {"a": {"b": _normal(1, (8, 4))}, "a.b": _normal(2, (8, 6))}
    assert [jp.path_str(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)] == ["a.b", "a.b"]

    def rules(path, leaf):
        return jp.Wanda(0.25) if leaf.shape == (8, 4) else jp.Wanda(0.5)

    result = jp.one_shot(model, params, [_normal(3, (16, 8))], rules)
    assert [(r.path, r.method, r.stage) for r in result.layers] == [("a.b", jp.Wanda(0.25), 0),
                                                                    ("a.b", jp.Wanda(0.5), 0)]
    assert [r.sparsity for r in result.layers] == [0.25, 0.5]


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def tied(p, x):
    return (x @ p["w"]) @ p["w"].T


def conv(p, x):
    return jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depthwise(p, x):
    return jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=4)


def stacked(p, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, p["layers"])[0]


@pytest.mark.parametrize(
    ("fn", "params", "rules", "match"),
    [
        (tied, {"w": jnp.ones((4, 4))}, {"w": jp.Wanda(0.5)}, r"'w' .*is used 2 times .*tied weight"),
        (mlp, {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 4)), "b": jnp.ones(4)}, {"b": jp.Wanda(0.5)},
         r"'b' .*is not used by the model"),
        (lambda p, x: x @ p["w"] + p["b"][None], {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}, {"b": jp.SparseGPT(0.5)},
         r"'b' .*is not a matmul weight: it is used by `broadcast_in_dim`"),
        (depthwise, {"k": jnp.ones((3, 3, 1, 4))}, {"k": jp.Wanda(0.5)}, r"a grouped convolution \(4 groups\)"),
        (stacked, {"layers": jnp.ones((2, 4, 4))}, {"layers": jp.Wanda(0.5)}, r"lax.scan .*unroll"),
        (mlp, {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 4))}, {"nothing*": jp.Wanda(0.5)}, r"matches no parameter"),
        (mlp, {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 4))}, {"w*": jp.L1Unstructured},
         r"makes a method from an amount"),
        (mlp, {"w1": jnp.ones((4, 4)), "w2": jnp.ones((4, 4))}, {}, r"no rules given"),
        (mlp, {"w1": jnp.ones((4, 4), jnp.int32), "w2": jnp.ones((4, 4))}, {"w1": jp.Wanda(0.5)},
         r"'w1' has dtype int32"),
    ],
)
def test_bad_models_and_rules_raise_naming_the_parameter(fn, params, rules, match):
    batch = jnp.ones((1, 5, 5, 4)) if fn is depthwise else jnp.ones((3, 4))
    with pytest.raises((ValueError, TypeError), match=match):
        jp.one_shot(fn, params, [batch], rules)


def test_bad_batches_raise():
    params = {"w1": _normal(1, (4, 4)), "w2": _normal(2, (4, 4))}
    rules = {"w*": jp.Wanda(0.5)}
    with pytest.raises(ValueError, match="calibration batches are empty"):
        jp.one_shot(mlp, params, iter(()), rules)
    with pytest.raises(TypeError, match="not one array; wrap a single batch"):
        jp.one_shot(mlp, params, jnp.ones((3, 4)), rules)
    with pytest.raises(ValueError, match="inputs of 'w1' are not finite"):
        jp.one_shot(mlp, params, [jnp.ones((3, 4)), jnp.full((3, 4), jnp.nan)], rules)
    with pytest.raises(TypeError, match=r"expected 3 arguments after fn, got 2"):
        jp.one_shot(mlp, params, rules)
    with pytest.raises(TypeError, match="progress must be None, a bool or a callable"):
        jp.one_shot(mlp, params, [jnp.ones((3, 4))], rules, progress="yes")


def test_global_magnitude_rules_rank_their_leaves_together_as_prune_tree() -> None:
    """As interop.one_shot and prune_module: a GlobalUnstructured rule's leaves share one ranking."""
    def mlp(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return jax.nn.relu(jax.nn.relu(x @ p["w1"]) @ p["w2"]) @ p["w3"]

    k1, k2, k3, k4 = jax.random.split(jax.random.key(5), 4)
    params = {"w1": jax.random.normal(k1, (8, 16)), "w2": 3.0 * jax.random.normal(k2, (16, 16)),
              "w3": jax.random.normal(k3, (16, 4))}
    batches = [jax.random.normal(k4, (32, 8))]
    rules = {"w3": jp.Wanda(0.5), "w*": jp.GlobalUnstructured(0.5)}
    result = jp.one_shot(mlp, params, batches, rules)
    new, masks = result
    expected = jp.prune_tree(None, {"w1": params["w1"], "w2": params["w2"]}, {"w*": jp.GlobalUnstructured(0.5)})
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(masks[name], expected[name])
        np.testing.assert_array_equal(new[name], jnp.where(masks[name], params[name], 0.0))
    pruned = int((~masks["w1"]).sum()) + int((~masks["w2"]).sum())
    assert pruned == round(0.5 * (8 * 16 + 16 * 16))
    # w2's entries are 3x larger: one ranking prunes less than half of it and more than half of w1
    assert int((~masks["w2"]).sum()) < 16 * 16 // 2 and int((~masks["w1"]).sum()) > 8 * 16 // 2
    assert int(masks["w3"].sum()) == 32
    assert [r.path for r in result.layers] == ["w1", "w2", "w3"]
