"""prune_tree: rules over dotted leaf paths, global groups, per-leaf keys,
sparsity reports, and path handling for NNX State, Linen params and lists."""

import re

import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from helpers import is_none, n_pruned

KEY = jax.random.key(0)


def normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape)


def dense_params(names=("dense_0", "dense_2"), seed=0):
    """A dict of dense layers {name: {"kernel": (6, 5), "bias": (5,)}}."""
    return {name: {"kernel": normal(seed * 100 + i, (6, 5)), "bias": normal(seed * 100 + 50 + i, (5,))}
            for i, name in enumerate(names)}


def paths_of(tree):
    return [jp.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


class MLP(nnx.Module):
    def __init__(self, rngs, extra=False):
        self.encoder = nnx.Linear(4, 6, rngs=rngs)
        if extra:
            self.middle = nnx.Linear(6, 6, rngs=rngs)
        self.decoder = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.encoder(x))
        if hasattr(self, "middle"):
            x = nnx.relu(self.middle(x))
        return self.decoder(x)


class Stack(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)])
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.step = nnx.Variable(jnp.int32(0))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(3)(x)


# --------------------------------------------------------------------------
# Rules: matching, precedence, structure
# --------------------------------------------------------------------------


def test_masks_have_the_params_structure_with_none_where_unpruned():
    params = dense_params()
    masks = jp.prune_tree(KEY, params, {"*.kernel": jp.L1Unstructured(0.4)})
    assert jax.tree.structure(masks, is_leaf=is_none) == jax.tree.structure(params)
    for name in params:
        assert masks[name]["bias"] is None
        mask = masks[name]["kernel"]
        assert mask.dtype == jnp.bool_ and mask.shape == (6, 5)
        assert n_pruned(mask) == round(0.4 * 30)


def test_first_matching_pattern_in_dict_order_wins():
    params = dense_params()
    rules = {"dense_0.*": jp.L1Unstructured(2), "*.kernel": jp.L1Unstructured(7), "*": jp.L1Unstructured(1)}
    masks = jp.prune_tree(None, params, rules)
    assert n_pruned(masks["dense_0"]["kernel"]) == 2
    assert n_pruned(masks["dense_0"]["bias"]) == 2
    assert n_pruned(masks["dense_2"]["kernel"]) == 7
    assert n_pruned(masks["dense_2"]["bias"]) == 1
    # The other order: "*.kernel" now decides dense_0.kernel too.
    reordered = {"*.kernel": jp.L1Unstructured(7), "dense_0.*": jp.L1Unstructured(2), "*": jp.L1Unstructured(1)}
    masks = jp.prune_tree(None, params, reordered)
    assert n_pruned(masks["dense_0"]["kernel"]) == 7
    assert n_pruned(masks["dense_0"]["bias"]) == 2
    assert n_pruned(masks["dense_2"]["bias"]) == 1


def test_glob_star_crosses_dots():
    params = {"encoder": {"layers": [{"kernel": normal(0, (4, 4))}, {"kernel": normal(1, (4, 4))}]},
              "decoder": {"kernel": normal(2, (4, 4))}}
    masks = jp.prune_tree(None, params, {"encoder.layers.0.*": jp.L1Unstructured(3), "encoder.*": jp.L1Unstructured(5)})
    assert n_pruned(masks["encoder"]["layers"][0]["kernel"]) == 3
    assert n_pruned(masks["encoder"]["layers"][1]["kernel"]) == 5
    assert masks["decoder"]["kernel"] is None
    masks = jp.prune_tree(None, params, {"*kernel": jp.L1Unstructured(1)})
    assert all(n_pruned(m) == 1 for m in jax.tree.leaves(masks))
    assert len(jax.tree.leaves(masks)) == 3


@pytest.mark.parametrize(
    "spec,reference",
    [
        (jp.L1Unstructured(0.3), lambda k, w: jp.l1_unstructured(w, 0.3)),
        (jp.RandomUnstructured(0.45), lambda k, w: jp.random_unstructured(k, w, 0.45)),
        (jp.RandomStructured(2, dim=0), lambda k, w: jp.random_structured(k, w, 2, dim=0)),
        (jp.LnStructured(0.4, n=2, dim=-1), lambda k, w: jp.ln_structured(w, 0.4, 2, -1)),
        (jp.LnStructured(1, n=1, dim=0), lambda k, w: jp.ln_structured(w, 1, 1, 0)),
    ],
    ids=["l1", "random_unstructured", "random_structured", "ln_structured_l2", "ln_structured_l1"],
)
def test_each_leaf_uses_the_method_with_its_path_key(spec, reference):
    params = dense_params()
    masks = jp.prune_tree(KEY, params, {"*.kernel": spec})
    for name in params:
        path = f"{name}.kernel"
        expected = reference(jp.leaf_key(KEY, path), params[name]["kernel"])
        np.testing.assert_array_equal(masks[name]["kernel"], expected, err_msg=path)


def test_callable_rules_get_dotted_paths_and_leaves():
    params = dense_params()
    seen = []

    def rules(path, leaf):
        seen.append((path, leaf.shape))
        return jp.L1Unstructured(0.5) if leaf.ndim == 2 else None

    masks = jp.prune_tree(None, params, rules)
    assert sorted(seen) == sorted([(f"{n}.{k}", params[n][k].shape) for n in params for k in ("bias", "kernel")])
    expected = jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(0.5)})
    for a, b in zip(jax.tree.leaves(masks, is_leaf=is_none), jax.tree.leaves(expected, is_leaf=is_none)):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)


def test_iterative_pruning_with_default_masks():
    params = dense_params()
    first = jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(0.2)})
    second = jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(0.5)}, default_masks=first)
    for name in params:
        a, b = np.asarray(first[name]["kernel"]), np.asarray(second[name]["kernel"])
        assert not np.any(b & ~a)  # within the earlier mask
        kept = int(a.sum())
        assert n_pruned(b) == n_pruned(a) + round(0.5 * kept)
        expected = jp.l1_unstructured(params[name]["kernel"], 0.5, default_mask=a)
        np.testing.assert_array_equal(b, expected)


def test_importance_scores_tree():
    params = dense_params()
    scores = {name: {"kernel": -jnp.arange(30.0).reshape(6, 5), "bias": None} for name in params}
    masks = jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(4)}, importance_scores=scores)
    for name in params:
        # |scores| lowest are the first four flat entries (0, -1, -2, -3)
        expected = np.ones(30, bool)
        expected[:4] = False
        np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]).ravel(), expected)


def test_prune_tree_under_jit_equals_eager():
    params = dense_params()
    rules = {"dense_0.kernel": jp.RandomUnstructured(0.5), "*.kernel": jp.L1Unstructured(0.3),
             "*.bias": jp.GlobalUnstructured(0.4, method="random")}
    eager = jp.prune_tree(KEY, params, rules)
    jitted = jax.jit(lambda k, p: jp.prune_tree(k, p, rules))(KEY, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# Global groups
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["l1", "random"])
@pytest.mark.parametrize("amount", [0.35, 17], ids=["fraction", "count"])
def test_global_rule_equals_global_unstructured_on_its_leaves(method, amount):
    params = dense_params(("a", "b", "c"))
    rules = {"*.kernel": jp.GlobalUnstructured(amount, method=method)}
    masks = jp.prune_tree(KEY, params, rules)
    sub = {name: {"kernel": params[name]["kernel"]} for name in params}
    expected = jp.global_unstructured(sub, amount, method=method, key=KEY if method == "random" else None)
    for name in params:
        np.testing.assert_array_equal(masks[name]["kernel"], expected[name]["kernel"], err_msg=name)
        assert masks[name]["bias"] is None
    total = sum(n_pruned(masks[n]["kernel"]) for n in params)
    assert total == (round(amount * 90) if isinstance(amount, float) else amount)


def test_global_rule_ranks_leaves_together():
    params = {"a": {"kernel": jnp.array([1.0, -5.0, 0.2])}, "b": {"kernel": jnp.array([0.5, 4.0, 3.0])}}
    masks = jp.prune_tree(None, params, {"*.kernel": jp.GlobalUnstructured(3)})
    np.testing.assert_array_equal(masks["a"]["kernel"], [False, True, False])
    np.testing.assert_array_equal(masks["b"]["kernel"], [False, True, True])


def test_global_rule_and_per_leaf_rules_mix():
    params = dense_params(("a", "b", "c"))
    rules = {"a.kernel": jp.LnStructured(1, n=2, dim=0), "*.kernel": jp.GlobalUnstructured(0.5)}
    masks = jp.prune_tree(KEY, params, rules)
    np.testing.assert_array_equal(masks["a"]["kernel"], jp.ln_structured(params["a"]["kernel"], 1, 2, 0))
    expected = jp.global_unstructured({n: {"kernel": params[n]["kernel"]} for n in ("b", "c")}, 0.5)
    for n in ("b", "c"):
        np.testing.assert_array_equal(masks[n]["kernel"], expected[n]["kernel"])


@pytest.mark.parametrize(
    "first,second",
    [(jp.GlobalUnstructured(0.5), jp.GlobalUnstructured(0.25)),
     (jp.GlobalUnstructured(0.5), jp.GlobalUnstructured(0.5)),
     (jp.GlobalUnstructured(0.5, method="random"), jp.GlobalUnstructured(0.5, method="random"))],
    ids=["different-amounts", "equal-values-l1", "equal-values-random"],
)
def test_two_global_rules_are_two_groups(first, second):
    """Each GlobalUnstructured rule (pattern) ranks the leaves *it* matches,
    even when two rules carry equal values."""
    params = {"enc": {"kernel": jnp.arange(1.0, 9.0)}, "dec": {"kernel": jnp.arange(101.0, 109.0)}}
    masks = jp.prune_tree(KEY, params, {"enc.*": first, "dec.*": second})
    for name, rule in (("enc", first), ("dec", second)):
        sub = {name: {"kernel": params[name]["kernel"]}}
        expected = jp.global_unstructured(sub, rule.amount, method=rule.method,
                                          key=KEY if rule.method == "random" else None)
        np.testing.assert_array_equal(masks[name]["kernel"], expected[name]["kernel"], err_msg=name)
        assert n_pruned(masks[name]["kernel"]) == round(rule.amount * 8), name


# --------------------------------------------------------------------------
# Keys: per leaf, from the path
# --------------------------------------------------------------------------

RANDOM_SPECS = [jp.RandomUnstructured(0.5), jp.RandomStructured(0.4, dim=0), jp.RandomStructured(2, dim=-1)]
RANDOM_IDS = ["random_unstructured", "random_structured_dim0", "random_structured_dim-1"]


@pytest.mark.parametrize("spec", RANDOM_SPECS, ids=RANDOM_IDS)
def test_inserting_a_layer_does_not_change_other_masks_dict(spec):
    old = dense_params(("dense_0", "dense_2"))
    new = {"dense_0": old["dense_0"], "dense_1": dense_params(("dense_1",), seed=7)["dense_1"],
           "dense_2": old["dense_2"]}
    m_old = jp.prune_tree(KEY, old, {"*.kernel": spec})
    m_new = jp.prune_tree(KEY, new, {"*.kernel": spec})
    for name in ("dense_0", "dense_2"):
        np.testing.assert_array_equal(m_old[name]["kernel"], m_new[name]["kernel"], err_msg=name)
    assert m_new["dense_1"]["kernel"] is not None


@pytest.mark.parametrize("spec", RANDOM_SPECS, ids=RANDOM_IDS)
def test_inserting_a_layer_does_not_change_other_masks_nnx(spec):
    small = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    big = nnx.state(MLP(nnx.Rngs(1), extra=True), nnx.Param)
    rules = {"*.kernel": spec}
    m_small = jp.prune_tree(KEY, small, rules)
    m_big = jp.prune_tree(KEY, big, rules)
    for name in ("encoder", "decoder"):
        np.testing.assert_array_equal(m_small[name]["kernel"][...], m_big[name]["kernel"][...], err_msg=name)
    assert n_pruned(m_big["middle"]["kernel"][...]) > 0


def test_appending_to_a_list_does_not_change_other_masks():
    short = [{"w": normal(0, (5, 4))}, {"w": normal(1, (5, 4))}]
    longer = short + [{"w": normal(2, (5, 4))}]
    rules = {"*.w": jp.RandomUnstructured(0.5)}
    a, b = jp.prune_tree(KEY, short, rules), jp.prune_tree(KEY, longer, rules)
    for i in range(2):
        np.testing.assert_array_equal(a[i]["w"], b[i]["w"])


def test_same_key_same_masks_different_key_different():
    params = dense_params(("a", "b", "c"))
    rules = {"a.kernel": jp.RandomStructured(0.5, dim=0), "b.*": jp.RandomUnstructured(0.5),
             "*": jp.GlobalUnstructured(0.5, method="random")}
    m1 = jp.prune_tree(jax.random.key(3), params, rules)
    m2 = jp.prune_tree(jax.random.key(3), params, rules)
    m3 = jp.prune_tree(jax.random.key(4), params, rules)
    leaves1, leaves2, leaves3 = (jax.tree.leaves(m) for m in (m1, m2, m3))
    for a, b in zip(leaves1, leaves2):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(leaves1, leaves3))
    # and different leaves with the same shape draw differently (per-path keys)
    assert not np.array_equal(m1["b"]["kernel"], jp.prune_tree(
        jax.random.key(3), {"x": {"kernel": params["b"]["kernel"]}}, {"*": jp.RandomUnstructured(0.5)})["x"]["kernel"])


# --------------------------------------------------------------------------
# Paths: NNX State, Linen params, lists and tuples
# --------------------------------------------------------------------------


def test_nnx_state_paths_drop_value_and_match_the_pure_dict():
    state = nnx.state(Stack(nnx.Rngs(0)), nnx.Param)
    assert sorted(paths_of(state)) == sorted([
        "layers.0.kernel", "layers.0.bias", "layers.1.kernel", "layers.1.bias", "head.kernel", "head.bias"])
    pure = nnx.to_pure_dict(state)
    assert sorted(paths_of(pure)) == sorted(paths_of(state))
    rules = {"layers.0.*": jp.RandomUnstructured(0.5), "*.kernel": jp.RandomStructured(0.5, dim=-1)}
    m_state = jp.prune_tree(KEY, state, rules)
    m_pure = jp.prune_tree(KEY, pure, rules)
    assert isinstance(m_state, nnx.State)
    for (pa, a), (pb, b) in zip(
        sorted((jp.path_str(p), x) for p, x in jax.tree_util.tree_leaves_with_path(m_state)),
        sorted((jp.path_str(p), x) for p, x in jax.tree_util.tree_leaves_with_path(m_pure)),
    ):
        assert pa == pb
        np.testing.assert_array_equal(a, b, err_msg=pa)
    assert m_state["head"]["bias"].get_value() is None


def test_nnx_apply_masks_and_update_the_model():
    model = Stack(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    masks = jp.prune_tree(KEY, state, {"*.kernel": jp.L1Unstructured(0.5)})
    pruned = jp.apply_masks(state, masks)
    assert isinstance(pruned, nnx.State)
    nnx.update(model, pruned)
    for i in range(2):
        w = np.asarray(model.layers[i].kernel[...])
        m = np.asarray(masks["layers"][i]["kernel"][...])
        assert np.all(w[~m] == 0)
        np.testing.assert_array_equal(w[m], np.asarray(state["layers"][i]["kernel"][...])[m])
        np.testing.assert_array_equal(model.layers[i].bias[...], state["layers"][i]["bias"][...])
    assert int(model.step[...]) == 0
    report = jp.sparsity_report(nnx.state(model, nnx.Param), masks)
    assert report.pruned == 8 + 8 + 4
    assert {leaf.path for leaf in report.leaves} == set(paths_of(state))


def test_nnx_default_masks_round():
    state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    first = jp.prune_tree(None, state, {"*.kernel": jp.L1Unstructured(0.25)})
    second = jp.prune_tree(None, state, {"*.kernel": jp.L1Unstructured(0.5)}, default_masks=first)
    for name in ("encoder", "decoder"):
        a, b = np.asarray(first[name]["kernel"][...]), np.asarray(second[name]["kernel"][...])
        assert not np.any(b & ~a)
        assert n_pruned(b) == n_pruned(a) + round(0.5 * a.sum())


def test_linen_params():
    model = LinenMLP()
    variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    assert sorted(paths_of(variables)) == ["params.Dense_0.bias", "params.Dense_0.kernel",
                                           "params.Dense_1.bias", "params.Dense_1.kernel"]
    rules = {"params.Dense_0.kernel": jp.LnStructured(0.5, n=2, dim=-1), "*.kernel": jp.RandomUnstructured(0.5)}
    masks = jp.prune_tree(KEY, variables, rules)
    k0 = variables["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(masks["params"]["Dense_0"]["kernel"], jp.ln_structured(k0, 0.5, 2, -1))
    np.testing.assert_array_equal(
        masks["params"]["Dense_1"]["kernel"],
        jp.random_unstructured(jp.leaf_key(KEY, "params.Dense_1.kernel"), variables["params"]["Dense_1"]["kernel"],
                               0.5))
    pruned = jp.apply_masks(variables, masks)
    out = model.apply(pruned, jnp.ones((2, 4)))
    assert out.shape == (2, 3)
    assert np.all(np.asarray(pruned["params"]["Dense_0"]["kernel"])[:, jp.pruned_indices(
        masks["params"]["Dense_0"]["kernel"], -1)] == 0)
    # Params without the "params" collection level: paths without the prefix.
    masks2 = jp.prune_tree(KEY, variables["params"], {"Dense_1.kernel": jp.RandomUnstructured(0.5)})
    np.testing.assert_array_equal(
        masks2["Dense_1"]["kernel"],
        jp.random_unstructured(jp.leaf_key(KEY, "Dense_1.kernel"), variables["params"]["Dense_1"]["kernel"], 0.5))


def test_lists_and_tuples_in_paths():
    params = [{"w": normal(0, (4, 4))}, ({"w": normal(1, (4, 4))}, normal(2, (3, 3)))]
    assert paths_of(params) == ["0.w", "1.0.w", "1.1"]
    masks = jp.prune_tree(None, params, {"1.*": jp.L1Unstructured(2)})
    assert masks[0]["w"] is None
    assert n_pruned(masks[1][0]["w"]) == 2 and n_pruned(masks[1][1]) == 2
    assert isinstance(masks, list) and isinstance(masks[1], tuple)
    pruned = jp.apply_masks(params, masks)
    assert isinstance(pruned, list) and isinstance(pruned[1], tuple)
    np.testing.assert_array_equal(pruned[0]["w"], params[0]["w"])
    assert int(jnp.sum(pruned[1][1] == 0)) == 2


def test_path_str():
    tree = {"a": [{"b": 1}, (2, 3)], "c": {"value": 4}}
    assert paths_of(tree) == ["a.0.b", "a.1.0", "a.1.1", "c.value"]
    v = nnx.Param(jnp.ones(2))
    assert paths_of({"x": v}) == ["x"]


# --------------------------------------------------------------------------
# Sparsity report
# --------------------------------------------------------------------------


def test_sparsity_report_with_masks():
    params = dense_params(("a", "b"))
    masks = jp.prune_tree(None, params, {"a.kernel": jp.L1Unstructured(9), "b.*": jp.L1Unstructured(0.4)})
    report = jp.sparsity_report(params, masks)
    rows = {leaf.path: leaf for leaf in report.leaves}
    assert set(rows) == {"a.kernel", "a.bias", "b.kernel", "b.bias"}
    assert (rows["a.kernel"].pruned, rows["a.kernel"].size, rows["a.kernel"].shape) == (9, 30, (6, 5))
    assert rows["a.bias"].pruned == 0 and rows["a.bias"].size == 5
    assert rows["b.kernel"].pruned == 12 and rows["b.bias"].pruned == 2
    assert rows["a.kernel"].sparsity == pytest.approx(9 / 30)
    assert report.size == 70 and report.pruned == 23
    assert report.sparsity == pytest.approx(23 / 70)
    d = report.as_dict()
    assert d["total"] == {"size": 70, "pruned": 23, "sparsity": pytest.approx(23 / 70)}
    assert d["a.kernel"]["pruned"] == 9 and d["a.kernel"]["size"] == 30
    assert d["a.kernel"]["shape"] == [6, 5]
    text = str(report)
    lines = text.splitlines()
    assert len(lines) == 1 + 4 + 1
    assert "sparsity" in lines[0]
    for path in rows:
        assert any(line.startswith(path) for line in lines[1:-1]), path
    assert lines[-1].startswith("total")
    assert "23" in lines[-1] and "70" in lines[-1] and "32.86%" in lines[-1]
    a_kernel = next(line for line in lines if line.startswith("a.kernel"))
    assert re.search(r"\b9\b", a_kernel) and "30.00%" in a_kernel


def test_sparsity_report_without_masks_counts_zeros():
    params = {"w": jnp.array([0.0, 1.0, 0.0, 2.0]), "b": jnp.zeros(3), "m": jnp.array([True, False])}
    report = jp.sparsity_report(params)
    rows = {leaf.path: leaf.pruned for leaf in report.leaves}
    assert rows == {"w": 2, "b": 3, "m": 1}
    assert report.size == 9 and report.pruned == 6


def test_sparsity_report_after_apply_masks_agrees_with_masks():
    params = dense_params(("a", "b"))
    masks = jp.prune_tree(KEY, params, {"*": jp.RandomUnstructured(0.3)})
    assert jp.sparsity_report(jp.apply_masks(params, masks)).as_dict() == jp.sparsity_report(params, masks).as_dict()


# --------------------------------------------------------------------------
# Bad input: errors at the call, with clear types
# --------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["*.weight", "dense_9.*", "dense_0.kernel.x"])
def test_pattern_matching_nothing_raises_value_error_naming_it(pattern):
    params = dense_params()
    with pytest.raises(ValueError, match=re.escape(repr(pattern))):
        jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(0.5), pattern: jp.L1Unstructured(0.5)})


@pytest.mark.parametrize(
    "leaf",
    [jnp.arange(6, dtype=jnp.int32), jnp.array([True, False, True]), jnp.arange(4, dtype=jnp.uint8)],
    ids=["int32", "bool", "uint8"],
)
def test_spec_for_non_floating_leaf_raises_type_error(leaf):
    params = {"w": jnp.ones((3, 3)), "steps": leaf}
    with pytest.raises(TypeError):
        jp.prune_tree(KEY, params, {"*": jp.RandomUnstructured(0.5)})
    with pytest.raises(TypeError):
        jp.prune_tree(KEY, params, {"steps": jp.GlobalUnstructured(0.5)})
    # a rule that leaves it alone is fine
    masks = jp.prune_tree(KEY, params, {"w": jp.RandomUnstructured(0.5)})
    assert masks["steps"] is None


@pytest.mark.parametrize(
    "spec",
    [jp.LnStructured(0.5, n=2, dim=2), jp.RandomStructured(0.5, dim=-3), jp.LnStructured(1, n=1, dim=5)],
    ids=["ln-dim2", "random-dim-3", "ln-dim5"],
)
def test_structured_rule_whose_dim_the_leaf_lacks_raises_index_error(spec):
    params = dense_params()
    with pytest.raises(IndexError):
        jp.prune_tree(KEY, params, {"*.kernel": spec})


def test_rule_value_that_is_not_a_spec_raises_type_error():
    with pytest.raises(TypeError):
        jp.prune_tree(None, dense_params(), {"*.kernel": 0.5})
    with pytest.raises(TypeError):
        jp.prune_tree(None, dense_params(), ["*.kernel"])


MISMATCHED = {
    "missing-key": lambda p: {"dense_0": {"kernel": None}, "dense_2": {"kernel": None, "bias": None}},
    "extra-key": lambda p: {**jax.tree.map(lambda _: None, p), "dense_9": {"kernel": None}},
    "list-for-dict": lambda p: [None, None],
    "mask-for-subtree": lambda p: {"dense_0": jnp.ones((6, 5), bool), "dense_2": {"kernel": None, "bias": None}},
    "none-for-subtree": lambda p: {"dense_0": None,
                                   "dense_2": {"kernel": jnp.ones((6, 5), bool), "bias": None}},
    "subtree-for-leaf": lambda p: {"dense_0": {"kernel": {"x": jnp.ones((6, 5), bool)}, "bias": None},
                                   "dense_2": {"kernel": None, "bias": None}},
}


@pytest.mark.parametrize("make", list(MISMATCHED.values()), ids=list(MISMATCHED))
def test_apply_masks_with_mismatched_structure_raises_value_error(make):
    params = dense_params()
    with pytest.raises(ValueError):
        jp.apply_masks(params, make(params))


@pytest.mark.parametrize("make", list(MISMATCHED.values()), ids=list(MISMATCHED))
def test_prune_tree_with_mismatched_default_masks_raises_value_error(make):
    params = dense_params()
    with pytest.raises(ValueError):
        jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(0.5)}, default_masks=make(params))


def test_apply_masks_nnx_state_mismatch_raises_value_error():
    state = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
    other = jp.prune_tree(None, nnx.state(MLP(nnx.Rngs(0), extra=True), nnx.Param),
                          {"*.kernel": jp.L1Unstructured(0.5)})
    with pytest.raises(ValueError):
        jp.apply_masks(state, other)
    with pytest.raises(ValueError):
        jp.prune_tree(None, state, {"*.kernel": jp.L1Unstructured(0.5)}, default_masks=other)


def test_mask_of_wrong_shape_raises_value_error():
    params = dense_params()
    masks = jax.tree.map(lambda _: None, params)
    masks["dense_0"]["kernel"] = jnp.ones((5, 6), bool)
    with pytest.raises(ValueError):
        jp.apply_masks(params, masks)
    with pytest.raises(ValueError):
        jp.prune_tree(None, params, {"*.kernel": jp.L1Unstructured(0.5)}, default_masks=masks)
