"""The method protocol and the one planner: every consumer (prune_tree,
jp.pruning, the torch bridge) reads methods only through PruningMethod."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp
from helpers import n_pruned

KEY = jax.random.key(0)


def params():
    w = jnp.arange(1.0, 13.0).reshape(3, 4) * jnp.array([[1.0, -1.0, 1.0, -1.0]])
    return {"dense": {"kernel": w, "bias": jnp.ones(4)}, "out": {"kernel": jnp.arange(8.0).reshape(4, 2) - 3.5}}


# --------------------------------------------------------------------------
# The protocol of the built-ins
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, unit, units, random",
    [
        (jp.L1Unstructured(0.5), "entries", 24, False),
        (jp.RandomUnstructured(0.5), "entries", 24, True),
        (jp.LnStructured(0.5, n=2, dim=1), "slices", 3, False),
        (jp.RandomStructured(0.5, dim=0), "slices", 2, True),
        (jp.TaylorUnstructured(0.5), "entries", 24, False),
        (jp.ActivationUnstructured(0.5, in_axis=1), "entries", 24, False),
        (jp.GlobalUnstructured(0.5, method="random"), "entries", 24, True),
    ],
)
def test_built_ins_declare_their_units_amount_and_randomness(method, unit, units, random):
    assert method.unit == unit and method.units((2, 3, 4)) == units and method.is_random is random
    assert method.has_amount and method.with_amount(3).amount == 3 and method.amount == 0.5
    mask = jnp.ones((2, 3, 4), bool).at[:, 1].set(False)  # slice 1 of dim 1 pruned: 8 entries
    assert int(method.pruned_units(mask)) == (1 if unit == "slices" and method.dim == 1 else
                                              0 if unit == "slices" else 8)


def test_methods_without_an_amount_say_so():
    for method in (jp.Identity(), jp.CustomFromMask(jnp.ones(3, bool))):
        assert not method.has_amount
        with pytest.raises(TypeError, match="no amount"):
            method.with_amount(1)


def test_with_amount_validates_as_construction_does():
    with pytest.raises(ValueError, match="1.5"):
        jp.L1Unstructured(0.5).with_amount(1.5)


def test_extra_args_are_declared_and_required():
    w = jnp.array([1.0, 2.0, 3.0, 4.0])
    assert jp.TaylorUnstructured(1).extra_args == ("grads",)
    assert jp.ActivationUnstructured(1).extra_args == ("input_norms",)
    with pytest.raises(ValueError, match="'grads'"):
        jp.prune_tree(None, {"w": w}, {"w": jp.TaylorUnstructured(1)})
    with pytest.raises(jp.PruningShapeError, match=r"\(3,\)"):
        jp.ActivationUnstructured(1).compute_mask(None, w.reshape(2, 2), input_norms=jnp.ones(3))


def test_taylor_and_activation_scores_through_prune_tree():
    w = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    g = jnp.array([[9.0, 0.1], [0.1, 0.1], [0.1, 9.0]])
    masks = jp.prune_tree(None, {"a": w, "b": w}, {"a": jp.TaylorUnstructured(3), "b": jp.ActivationUnstructured(2)},
                          extra_args={"grads": {"a": g, "b": None}, "input_norms": {"b": jnp.array([10.0, 0.1, 1.0])}})
    # |w g| = 9, .2, .3, .4, .5, 54: the three lowest go.
    np.testing.assert_array_equal(masks["a"], [[True, False], [False, False], [True, True]])
    # |w| * norm = 10, 20 | .3, .4 | 5, 6: the middle row goes.
    np.testing.assert_array_equal(masks["b"], [[True, True], [False, False], [True, True]])


# --------------------------------------------------------------------------
# One notion of a rule value; one planner's checks
# --------------------------------------------------------------------------


def test_prune_tree_refuses_a_method_class_with_the_fix():
    with pytest.raises(TypeError, match=r"L1Unstructured.*amount.*jp\.L1Unstructured\(0\.3\)"):
        jp.prune_tree(None, params(), {"*.kernel": jp.L1Unstructured})


def test_pruning_refuses_an_explicit_amount_with_the_fix():
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": jp.L1Unstructured(0.5)}, jp.one_shot_schedule(0.5, 0))
    with pytest.raises(ValueError, match=r"amount=0\.5.*schedule sets the amount.*L1Unstructured\(0\)"):
        tx.init(params())


def test_a_factory_that_fails_for_its_own_reasons_is_not_hidden():
    def broken(amount):
        raise RuntimeError("bug inside the user's factory")

    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": broken}, jp.one_shot_schedule(0.5, 0))
    with pytest.raises(RuntimeError, match="bug inside"):
        tx.init(params())


def test_colliding_paths_are_refused():
    tree = {"a.b": jnp.ones(2), "a": {"b": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"two leaves have the path 'a\.b'"):
        jp.prune_tree(None, tree, {"*": jp.L1Unstructured(1)})


def test_one_group_takes_one_rule():
    rules = {"dense.kernel": jp.GlobalUnstructured(2, group="g"), "out.kernel": jp.GlobalUnstructured(3, group="g")}
    with pytest.raises(ValueError, match="one group takes one rule"):
        jp.prune_tree(None, params(), rules)


def test_a_random_rule_without_a_key_names_the_rule():
    with pytest.raises(jp.KeyRequiredError, match=r"'out\.kernel'.*PRNG key"):
        jp.prune_tree(None, params(), {"out.kernel": jp.RandomUnstructured(1)})


# --------------------------------------------------------------------------
# A new kind of method plugs in without touching any consumer
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairsMethod(jp.PruningMethod):
    """Prunes pairs of neighbouring entries along the last axis (the lowest |a| + |b|)."""

    unit: ClassVar[str] = "pairs"
    amount: float

    def units(self, shape):
        return int(np.prod(shape)) // 2

    def pruned_units(self, mask):
        return jnp.sum(~mask.reshape(-1, 2).any(axis=1), dtype=jnp.int32)

    def compute_mask(self, key, t, default_mask=None):
        pairs = jnp.abs(t).reshape(-1, 2).sum(axis=1)
        alive = None if default_mask is None else jnp.asarray(default_mask).reshape(-1, 2).any(axis=1)
        keep = jp.unstructured_mask(pairs, self.amount, default_mask=alive)
        return jnp.repeat(keep, 2).reshape(t.shape)


def test_a_custom_unit_is_counted_by_the_schedule():
    w = {"w": jnp.arange(1.0, 17.0)}  # 8 pairs
    sched = jp.polynomial_schedule(0.0, 0.75, start=0, end=2, every=1)  # 0, ~0.56, 0.75 of the pairs
    tx = jp.pruning(optax.sgd(0.0), {"w": PairsMethod}, sched)
    state = tx.init(w)
    step = jax.jit(tx.update)
    pruned = []
    for _ in range(3):
        _, state = step({"w": jnp.zeros(16)}, state, w)
        pruned.append(int(PairsMethod(0).pruned_units(state.masks["w"])))
    targets = [float(sched.target(s)) for s in range(3)]
    assert pruned == [round(t * 8) for t in targets] and pruned[-1] == 6
    # The lowest pairs go first and stay gone.
    np.testing.assert_array_equal(state.masks["w"], [False] * 12 + [True] * 4)


# --------------------------------------------------------------------------
# jp.pruning as an optax citizen
# --------------------------------------------------------------------------


def test_pruning_is_an_extra_args_transform_and_forwards_them():
    seen = {}

    def update(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    tx = jp.pruning(inner, {"*.kernel": jp.L1Unstructured}, jp.one_shot_schedule(0.5, 0))
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    p = params()
    state = tx.init(p)
    tx.update(jax.tree.map(jnp.ones_like, p), state, p, loss=jnp.float32(3.0))
    assert float(seen["loss"]) == 3.0


def test_a_plain_inner_transform_still_works_with_extra_args():
    p = params()
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": jp.L1Unstructured}, jp.one_shot_schedule(0.5, 0))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p, unused=1)
    assert jax.tree.structure(updates) == jax.tree.structure(p)


def test_taylor_scores_take_the_gradients_in_training():
    p = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    g = {"w": jnp.array([4.0, 0.1, 1.0, 1.0])}
    tx = jp.pruning(optax.sgd(0.0), {"w": jp.TaylorUnstructured}, jp.one_shot_schedule(0.5, 0))
    _, state = jax.jit(tx.update)(g, tx.init(p), p)
    np.testing.assert_array_equal(state.masks["w"], [True, False, False, True])  # |w g| = 4, .2, 3, 4


@pytest.mark.parametrize("as_paths", [True, False], ids=["path-dict", "tree"])
def test_activation_norms_reach_the_method_in_training(as_paths):
    p = params()
    norms = jnp.array([10.0, 0.1, 1.0])
    input_norms = {"dense.kernel": norms} if as_paths else {"dense": {"kernel": norms, "bias": None},
                                                             "out": {"kernel": None}}
    tx = jp.pruning(optax.sgd(0.0), {"dense.kernel": jp.ActivationUnstructured}, jp.one_shot_schedule(0.25, 0))
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, p), tx.init(p), p, input_norms=input_norms)
    expected = jp.ActivationUnstructured(3).compute_mask(None, p["dense"]["kernel"], input_norms=norms)
    np.testing.assert_array_equal(state.masks["dense"]["kernel"], expected)
    assert not np.asarray(state.masks["dense"]["kernel"])[1, :3].any()  # the quiet input's row goes first


def test_optax_schedule_callables_update_when_the_target_rises():
    p = {"w": jnp.arange(1.0, 11.0)}
    sched = optax.linear_schedule(0.0, 0.5, transition_steps=5)
    tx = jp.pruning(optax.sgd(0.0), {"w": jp.L1Unstructured}, sched)
    state = tx.init(p)
    step = jax.jit(tx.update)
    pruned = []
    for _ in range(8):
        _, state = step({"w": jnp.zeros(10)}, state, p)
        pruned.append(int(10 - state.masks["w"].sum()))
    assert pruned == [0, 1, 2, 3, 4, 5, 5, 5]


def test_rules_are_resolved_once_per_structure():
    calls = []

    def rules(path, leaf):
        calls.append(path)
        return jp.L1Unstructured if path.endswith("kernel") else None

    p = params()
    tx = jp.pruning(optax.sgd(0.1), rules, jp.one_shot_schedule(0.5, 0))
    state = tx.init(p)
    g = jax.tree.map(jnp.ones_like, p)
    for _ in range(3):
        _, state = tx.update(g, state, p)
    _, state = jax.jit(tx.update)(g, state, p)
    assert sorted(calls) == ["dense.bias", "dense.kernel", "out.kernel"]


def test_a_custom_random_method_without_a_key_is_refused_at_init():
    @dataclasses.dataclass(frozen=True)
    class Noisy(jp.UnstructuredMethod):
        is_random: ClassVar[bool] = True
        amount: float

        def scores(self, key, t):
            return jnp.abs(t) + jax.random.uniform(key, t.shape)

    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": Noisy}, jp.one_shot_schedule(0.5, 0))
    with pytest.raises(jp.KeyRequiredError, match="Noisy"):
        tx.init(params())
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": Noisy}, jp.one_shot_schedule(0.5, 0), key=KEY)
    p = params()
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
    assert n_pruned(state.masks["dense"]["kernel"]) == 6


def test_a_fixed_mask_rule_is_applied_at_update_steps():
    p = {"w": jnp.arange(1.0, 5.0)}
    fixed = jp.CustomFromMask(jnp.array([1, 0, 1, 0]))
    tx = jp.pruning(optax.sgd(0.1), {"w": fixed}, jp.one_shot_schedule(0.9, 1))
    state = tx.init(p)
    u, state = tx.update({"w": jnp.ones(4)}, state, p)
    np.testing.assert_array_equal(state.masks["w"], [True] * 4)  # not an update step yet
    u, state = tx.update({"w": jnp.ones(4)}, state, p)
    np.testing.assert_allclose(optax.apply_updates(p, u)["w"], [0.9, 0.0, 2.9, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(state.masks["w"], [True, False, True, False])


# --------------------------------------------------------------------------
# The torch bridge's rules in a Flax training loop
# --------------------------------------------------------------------------


def test_flax_rules_train_with_jp_pruning_and_match_torch():
    torch = pytest.importorskip("torch")
    from jaxprune import interop

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    variables = interop.torch_to_flax(net)
    rules = {"0.weight": jp.LnStructured(0, n=2, dim=0), "2.weight": functools.partial(jp.RandomUnstructured)}
    tx = jp.pruning(optax.sgd(0.0), interop.flax_rules(rules, net), jp.one_shot_schedule(0.4, 0), key=KEY)
    p = variables["params"]
    state = tx.init(p)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, p), state, p)
    # The first update step folds the step (0) into the key: torch side with the same key.
    torch_masks = interop.compute_module_masks(
        jax.random.fold_in(KEY, 0), net, {"0.weight": jp.LnStructured(0.4, n=2, dim=0),
                                           "2.weight": jp.RandomUnstructured(0.4)})
    expected = interop.masks_to_flax(torch_masks, net)
    for layer in ("0", "2"):
        np.testing.assert_array_equal(state.masks[layer]["kernel"], expected[layer]["kernel"])


# --------------------------------------------------------------------------
# NNX: the optimizer's masks pair with the model's parameters
# --------------------------------------------------------------------------


def test_nnx_optimizer_masks_work_with_report_and_apply_masks():
    nnx = pytest.importorskip("flax.nnx")

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, jp.pruning(optax.sgd(0.1), {"kernel": jp.L1Unstructured},
                                          jp.one_shot_schedule(0.5, 0)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        grads = nnx.grad(lambda m: (m(x) ** 2).sum())(model)
        opt.update(model, grads)

    step(model, opt, jnp.ones((2, 4)))
    masks = opt.opt_state.masks
    report = jp.sparsity_report(nnx.state(model, nnx.Param), masks)
    assert (report.pruned, report.size) == (6, 15)
    masked = jp.apply_masks(nnx.state(model, nnx.Param), masks)
    assert int((masked["kernel"][...] == 0).sum()) == 6


def test_pruning_without_optax_names_the_extra():
    import subprocess
    import sys

    code = ("import sys; sys.modules['optax'] = None\n"
            "import jaxprune as jp\n"
            "try:\n    jp.pruning(None, {}, jp.one_shot_schedule(0.5, 0))\n"
            "except ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'jaxprune[optax]'" in out
