"""jp.pruning: the optax transformation that owns the masks while training.

Small dict models (and small NNX / Linen models) trained with jitted steps;
every step is checked: exact zeros, masks only growing, exact counts at the
schedule's targets, one compilation for the whole run.

optax's adam and MultiSteps do not run under strict dtype promotion (an optax
limitation, not jaxprune's), so the tests that use them switch to standard
promotion with the ``standard_promotion`` fixture.
"""

import functools
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(100), (16, 8))
Y = jax.random.normal(jax.random.key(101), (16, 10))



def normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def make_params(extra=False, seed=0):
    """Layers a (8 -> 12) and c (12 -> 10); with extra, b (12 -> 12) between them."""
    params = {"a": {"kernel": normal(seed + 1, (8, 12), 0.5), "bias": normal(seed + 2, (12,), 0.1)},
              "c": {"kernel": normal(seed + 3, (12, 10), 0.5), "bias": normal(seed + 4, (10,), 0.1)}}
    if extra:
        params["b"] = {"kernel": normal(seed + 5, (12, 12), 0.5), "bias": normal(seed + 6, (12,), 0.1)}
    return params


def loss_fn(params):
    h = X
    names = sorted(params)
    for i, name in enumerate(names):
        h = h @ params[name]["kernel"] + params[name]["bias"][None, :]
        if i < len(names) - 1:
            h = jax.nn.relu(h)
    return jnp.mean((h - Y) ** 2)


def train(tx, params, steps, *, loss=loss_fn):
    """Run ``steps`` jitted steps; return the (params, state) after each step and the trace count."""
    traces = [0]

    @jax.jit
    def step(params, state):
        traces[0] += 1
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    history = [(params, state)]
    for _ in range(steps):
        params, state = step(params, state)
        history.append((params, state))
    return history, traces[0]


def np_leaves(tree):
    return [None if x is None else np.asarray(x) for x in jax.tree.leaves(tree, is_leaf=lambda x: x is None)]


def masked_pairs(params, masks):
    """(path, param, mask) for the leaves that have a mask."""
    out = []
    named = jax.tree_util.tree_leaves_with_path(params)
    for (path, p), m in zip(named, jax.tree.leaves(masks, is_leaf=lambda x: x is None)):
        if m is not None:
            out.append((jp.path_str(path), np.asarray(p), np.asarray(m)))
    return out


def check_exact_zeros(params, masks):
    for path, p, m in masked_pairs(params, masks):
        assert np.all(p[~m] == 0), f"{path}: pruned entries not zero: {p[~m][p[~m] != 0]}"


def check_only_grows(old_masks, new_masks):
    for a, b in zip(np_leaves(old_masks), np_leaves(new_masks)):
        if a is not None:
            assert not np.any(b & ~a), "a pruned entry came back"


def pruned_units(mask, dim=None):
    """(pruned units, units) of a mask: entries, or whole slices along dim."""
    if dim is None:
        return int(mask.size - mask.sum()), mask.size
    dim = dim % mask.ndim
    others = tuple(d for d in range(mask.ndim) if d != dim)
    alive = np.any(mask, axis=others)
    # structured masks prune whole slices only
    np.testing.assert_array_equal(mask, np.broadcast_to(np.expand_dims(alive, others), mask.shape))
    return int(alive.size - alive.sum()), alive.size


def schedule_table(sched, n):
    """(targets, is_update) for steps 0..n-1, as Python lists (one jitted call)."""
    steps = jnp.arange(n, dtype=jnp.int32)
    targets, updates = jax.jit(jax.vmap(lambda t: (sched.target(t), sched.is_update(t))))(steps)
    return [float(v) for v in np.asarray(targets)], [bool(u) for u in np.asarray(updates)]


class Recorded(NamedTuple):
    seen: Any


def recorder():
    """An inner transformation that remembers the updates it receives."""

    def init(params):
        return Recorded(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        return updates, Recorded(updates)

    return optax.GradientTransformation(init, update)


GRAD = jax.jit(jax.grad(loss_fn))
POLY = jp.polynomial_schedule(0.0, 0.9, start=0, end=90, every=10)  # 10 updates over 100 steps
MAIN_RULES = {"a.kernel": jp.L1Unstructured,
              "c.kernel": functools.partial(jp.LnStructured, n=2, dim=-1),
              "*.bias": jp.RandomUnstructured}
MAIN_DIMS = {"a.kernel": None, "c.kernel": -1, "a.bias": None, "c.bias": None}


# --------------------------------------------------------------------------
# The state
# --------------------------------------------------------------------------


def test_init_state():
    params = make_params()
    inner = optax.sgd(0.1, momentum=0.9)
    tx = jp.pruning(inner, {"*.kernel": jp.L1Unstructured}, POLY)
    state = tx.init(params)
    assert isinstance(state, jp.PruningState) and isinstance(state, tuple)
    assert state._fields == ("count", "masks", "inner_state")
    assert int(state.count) == 0
    assert state.masks["a"]["bias"] is None and state.masks["c"]["bias"] is None
    for name in ("a", "c"):
        m = state.masks[name]["kernel"]
        assert m.dtype == jnp.bool_ and m.shape == params[name]["kernel"].shape and bool(m.all())
    chex.assert_trees_all_equal(state.inner_state, inner.init(params))


# --------------------------------------------------------------------------
# One compilation, exact zeros every step, masks only grow, exact counts
# --------------------------------------------------------------------------

INNERS = {
    "sgd-momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "chain-clip-sgd-momentum": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05, momentum=0.9)),
    "adamw-cosine": lambda: optax.adamw(optax.cosine_decay_schedule(1e-2, 100), weight_decay=0.1),
}
NEEDS_STANDARD = {"adamw-cosine"}


@pytest.mark.parametrize("name", list(INNERS), ids=list(INNERS))
def test_run_compiles_once_keeps_zeros_and_hits_exact_counts(name, request):
    if name in NEEDS_STANDARD:
        request.getfixturevalue("standard_promotion")
    chex.clear_trace_counter()
    params = make_params()
    tx = jp.pruning(INNERS[name](), MAIN_RULES, POLY, key=KEY)
    traces = [0]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        traces[0] += 1
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    targets, is_updates = schedule_table(POLY, 100)
    n_updates = 0
    pruned_this_step_nonzero = 0
    for t in range(100):
        old_params, old_masks = params, state.masks
        params, state = step(params, state)
        assert int(state.count) == t + 1
        check_exact_zeros(params, state.masks)
        check_only_grows(old_masks, state.masks)
        changed = any(not np.array_equal(a, b) for a, b in zip(np_leaves(old_masks), np_leaves(state.masks))
                      if a is not None)
        is_update = is_updates[t]
        n_updates += is_update
        if changed:
            assert is_update, f"masks changed at step {t}, not an update step"
        target = targets[t]
        for (path, p, m), (_, old_p, old_m) in zip(masked_pairs(params, state.masks),
                                                   masked_pairs(old_params, old_masks)):
            pruned, units = pruned_units(m, MAIN_DIMS[path])
            assert pruned == round(target * units), (t, path, pruned, units, target)
            newly = old_m & ~m
            pruned_this_step_nonzero += int(np.count_nonzero(old_p[newly]))
    assert traces[0] == 1
    assert n_updates == 10
    # entries pruned in an update step were nonzero just before it, and are exactly 0 now
    assert pruned_this_step_nonzero > 0
    report = jp.sparsity_report(params, state.masks).as_dict()
    assert report["a.kernel"]["pruned"] == round(0.9 * 96)
    assert report["c.kernel"]["pruned"] == 12 * round(0.9 * 10)
    assert np.all(np.isfinite(np.asarray(loss_fn(params))))


RULE_KINDS = {
    # id: (rule for "*.kernel", dim for counting or None, global?)
    "l1-spec": (jp.L1Unstructured(0.0), None, False),
    "random-unstructured": (jp.RandomUnstructured, None, False),
    "ln-structured-partial": (functools.partial(jp.LnStructured, n=2, dim=-1), -1, False),
    "random-structured-spec-dim0": (jp.RandomStructured(0.0, dim=0), 0, False),
    "global-l1-class": (jp.GlobalUnstructured, None, True),
    "global-random": (jp.GlobalUnstructured(0.0, method="random"), None, True),
}
SHORT = jp.polynomial_schedule(0.05, 0.8, start=3, end=27, every=4)  # updates 3, 7, ..., 27


@pytest.mark.parametrize("kind", list(RULE_KINDS), ids=list(RULE_KINDS))
def test_exact_counts_for_each_rule_kind(kind):
    rule, dim, is_global = RULE_KINDS[kind]
    params = make_params()
    tx = jp.pruning(optax.sgd(0.05, momentum=0.9), {"*.kernel": rule}, SHORT, key=KEY)
    history, traces = train(tx, params, 32)
    assert traces == 1
    targets, _ = schedule_table(SHORT, 32)
    for t in range(32):
        (_, s0), (p1, s1) = history[t], history[t + 1]
        check_exact_zeros(p1, s1.masks)
        check_only_grows(s0.masks, s1.masks)
        target = targets[t]
        counts = [pruned_units(m, dim) for _, _, m in masked_pairs(p1, s1.masks)]
        assert len(counts) == 2
        if is_global:
            pruned = sum(c[0] for c in counts)
            units = sum(c[1] for c in counts)
            assert pruned == round(target * units), (t, pruned, units, target)
        else:
            for pruned, units in counts:
                assert pruned == round(target * units), (t, pruned, units, target)
    p_end, s_end = history[-1]
    final = [pruned_units(m, dim) for _, _, m in masked_pairs(p_end, s_end.masks)]
    assert sum(c[0] for c in final) > 0


def test_one_shot_masks_equal_prune_tree_on_the_step_params():
    params = make_params()
    rules = {"a.kernel": jp.L1Unstructured, "c.kernel": functools.partial(jp.LnStructured, n=2, dim=0)}
    tx = jp.pruning(optax.sgd(0.1), rules, jp.one_shot_schedule(0.5, 4))
    history, _ = train(tx, params, 6)
    before = history[4][0]  # the params the step with count 4 saw
    expected = jp.prune_tree(None, before, {"a.kernel": jp.L1Unstructured(0.5), "c.kernel": jp.LnStructured(0.5, 2, 0)})
    for a, b in zip(np_leaves(history[5][1].masks), np_leaves(expected)):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np_leaves(history[4][1].masks)[1], np.ones((8, 12), bool))


def test_constant_schedule_with_every_keeps_the_sparsity():
    params = make_params()
    sched = jp.constant_schedule(0.5, start=2, every=5)
    tx = jp.pruning(optax.sgd(0.05), {"*.kernel": jp.L1Unstructured}, sched)
    history, traces = train(tx, params, 20)
    assert traces == 1
    for t in range(20):
        (_, s0), (p1, s1) = history[t], history[t + 1]
        check_exact_zeros(p1, s1.masks)
        check_only_grows(s0.masks, s1.masks)
        for _, _, m in masked_pairs(p1, s1.masks):
            assert pruned_units(m)[0] == (0 if t < 2 else round(0.5 * m.size))


def test_callable_rules():
    params = make_params()
    seen = set()

    def rules(path, leaf):
        seen.add(path)
        return jp.L1Unstructured if leaf.ndim == 2 else None

    tx = jp.pruning(optax.sgd(0.05), rules, jp.one_shot_schedule(0.25, 1))
    history, _ = train(tx, params, 3)
    assert seen == {"a.kernel", "a.bias", "c.kernel", "c.bias"}
    p, s = history[-1]
    assert s.masks["a"]["bias"] is None
    assert pruned_units(np.asarray(s.masks["a"]["kernel"]))[0] == round(0.25 * 96)
    check_exact_zeros(p, s.masks)


def test_polynomial_fractional_power_reaches_final_sparsity_in_training():
    params = make_params()
    sched = jp.polynomial_schedule(0.0, 0.75, start=5, end=29, every=3, power=1.5)
    tx = jp.pruning(optax.sgd(0.05), {"*.kernel": jp.L1Unstructured}, sched)
    history, _ = train(tx, params, 32)
    p, s = history[-1]
    for path, _, m in masked_pairs(p, s.masks):
        assert pruned_units(m)[0] == round(0.75 * m.size), path


def test_two_global_rules_are_two_groups_in_training():
    """{"a.*": global, "c.*": global}: each pattern's leaves form their own group."""
    params = make_params()
    params["c"]["kernel"] = params["c"]["kernel"] * 100.0  # c's weights all outrank a's
    rules = {"a.kernel": jp.GlobalUnstructured, "c.kernel": jp.GlobalUnstructured}
    tx = jp.pruning(optax.sgd(0.0), rules, jp.one_shot_schedule(0.5, 0))
    history, _ = train(tx, params, 1)
    masks = history[-1][1].masks
    assert pruned_units(np.asarray(masks["a"]["kernel"]))[0] == 48
    assert pruned_units(np.asarray(masks["c"]["kernel"]))[0] == 60


# --------------------------------------------------------------------------
# What the inner optimizer sees
# --------------------------------------------------------------------------


def test_inner_optimizer_receives_zero_gradients_at_pruned_entries():
    params = make_params()
    inner = optax.chain(recorder(), optax.sgd(0.05, momentum=0.9))
    tx = jp.pruning(inner, MAIN_RULES, SHORT, key=KEY)
    history, _ = train(tx, params, 32)
    for t in range(32):
        p0, _ = history[t]
        p1, s1 = history[t + 1]
        seen = s1.inner_state[0].seen
        grads = GRAD(p0)
        for (path, g, m), (_, got, _) in zip(masked_pairs(grads, s1.masks), masked_pairs(seen, s1.masks)):
            assert np.all(got[~m] == 0), (t, path)  # including entries pruned at this very step
            np.testing.assert_allclose(got[m], g[m], rtol=1e-5, atol=1e-6, err_msg=f"{t} {path}")


def test_adam_moments_stay_zero_for_entries_pruned_from_step_zero(standard_promotion):
    params = make_params()
    tx = jp.pruning(optax.adam(1e-2), {"*.kernel": jp.RandomUnstructured}, jp.one_shot_schedule(0.5, 0), key=KEY)
    history, _ = train(tx, params, 12)
    p, s = history[-1]
    adam_state = s.inner_state[0]
    for moments in (adam_state.mu, adam_state.nu):
        for path, mo, m in masked_pairs(moments, s.masks):
            assert np.all(mo[~m] == 0), path
            assert np.count_nonzero(mo[m]) > 0, path
    check_exact_zeros(p, s.masks)


INNERS_REF = {
    "sgd-linear-schedule": lambda: optax.sgd(optax.linear_schedule(0.1, 0.0, 30)),
    "adam-cosine": lambda: optax.adam(optax.cosine_decay_schedule(2e-2, 30)),
}


@pytest.mark.parametrize("name", list(INNERS_REF), ids=list(INNERS_REF))
def test_updates_equal_the_inner_optimizer_on_masked_gradients(name, standard_promotion):
    """At kept entries the update is the inner optimizer's (its lr schedule
    counting its own steps) on the masked gradients; at pruned entries it is
    -param."""
    params = make_params()
    inner = INNERS_REF[name]()
    tx = jp.pruning(INNERS_REF[name](), {"*.kernel": jp.L1Unstructured}, SHORT)
    ref_update = jax.jit(inner.update)
    tx_update = jax.jit(tx.update)
    grad = GRAD
    state, ref_state = tx.init(params), inner.init(params)
    for t in range(20):
        g = grad(params)
        updates, state = tx_update(g, state, params)
        ref, ref_state = ref_update(jp.apply_masks(g, state.masks), ref_state, params)
        for (path, u, m), (_, r, _), (_, p, _) in zip(masked_pairs(updates, state.masks),
                                                      masked_pairs(ref, state.masks),
                                                      masked_pairs(params, state.masks)):
            np.testing.assert_allclose(u[m], r[m], rtol=2e-6, atol=1e-8, err_msg=f"{t} {path}")
            np.testing.assert_array_equal(u[~m], -p[~m])
        np.testing.assert_allclose(updates["a"]["bias"], ref["a"]["bias"], rtol=2e-6, atol=1e-8)
        params = optax.apply_updates(params, updates)
        check_exact_zeros(params, state.masks)


# --------------------------------------------------------------------------
# Randomness: keys folded with the step and the path
# --------------------------------------------------------------------------

RANDOM_RULES_PER_LEAF = {"*.kernel": jp.RandomUnstructured}


def mask_history(history):
    return [np_leaves(s.masks) for _, s in history]


def test_random_masks_reproducible_key_dependent_and_independent_of_other_layers():
    """Same key: identical masks over the whole run, also for a fresh
    transformation on params with an extra layer inserted (b between a and c:
    the other layers' masks do not change). Another key: other masks."""
    small = train(jp.pruning(optax.sgd(0.05), RANDOM_RULES_PER_LEAF, SHORT, key=jax.random.key(5)),
                  make_params(), 28)[0]
    big = train(jp.pruning(optax.sgd(0.05), RANDOM_RULES_PER_LEAF, SHORT, key=jax.random.key(5)),
                make_params(extra=True), 28)[0]
    other = train(jp.pruning(optax.sgd(0.05), RANDOM_RULES_PER_LEAF, SHORT, key=jax.random.key(6)),
                  make_params(), 28)[0]
    for t, ((_, s_small), (_, s_big)) in enumerate(zip(small, big)):
        for name in ("a", "c"):
            np.testing.assert_array_equal(s_small.masks[name]["kernel"], s_big.masks[name]["kernel"],
                                          err_msg=f"step {t} {name}.kernel")
    assert pruned_units(np.asarray(big[-1][1].masks["b"]["kernel"]))[0] == round(0.8 * 144)
    differs = [not np.array_equal(a, c) for a, c in zip(np_leaves(small[-1][1].masks), np_leaves(other[-1][1].masks))
               if a is not None]
    assert all(differs)
    for (_, sa), (_, sc) in zip(small, other):  # same counts, other entries
        for a, c in zip(np_leaves(sa.masks), np_leaves(sc.masks)):
            if a is not None:
                assert a.sum() == c.sum()


def test_random_draws_differ_between_update_steps():
    """Each update folds the step into the key: pruning 25% at step 1 and 25%
    more at step 2 is not the 50% one-shot mask of step 2 (which it would be
    if every update ranked by the same draws)."""
    params = {"w": jnp.ones((40, 40))}
    sched = jp.polynomial_schedule(0.0, 0.5, start=0, end=2, every=1, power=1)
    tx = jp.pruning(optax.sgd(0.0), {"w": jp.RandomUnstructured}, sched, key=KEY)
    history, _ = train(tx, params, 3, loss=lambda p: jnp.sum(p["w"]))
    m1 = np.asarray(history[2][1].masks["w"])
    m2 = np.asarray(history[3][1].masks["w"])
    assert int((~m1).sum()) == 400 and int((~m2).sum()) == 800
    # the one-shot mask of the same key at 50% differs from the two-step run
    once = jp.pruning(optax.sgd(0.0), {"w": jp.RandomUnstructured}, jp.one_shot_schedule(0.5, 2), key=KEY)
    m_once = np.asarray(train(once, params, 3, loss=lambda p: jnp.sum(p["w"]))[0][3][1].masks["w"])
    assert int((~m_once).sum()) == 800
    assert not np.array_equal(m_once, m2)


# --------------------------------------------------------------------------
# Composition: MultiSteps
# --------------------------------------------------------------------------


def test_multisteps_keeps_zeros_and_counts_optimizer_steps(standard_promotion):
    k = 3
    params = make_params()
    sched = jp.polynomial_schedule(0.1, 0.7, start=1, end=5, every=2)  # optimizer steps 1, 3, 5
    tx = optax.MultiSteps(jp.pruning(optax.sgd(0.05, momentum=0.9), {"*.kernel": jp.L1Unstructured}, sched), k)
    history, traces = train(tx, params, 24)
    assert traces == 1
    targets, is_updates = schedule_table(sched, 10)
    for micro in range(24):
        (_, s0), (p1, s1) = history[micro], history[micro + 1]
        inner0, inner1 = s0.inner_opt_state, s1.inner_opt_state
        assert isinstance(inner1, jp.PruningState)
        assert int(inner1.count) == (micro + 1) // k
        check_exact_zeros(p1, inner1.masks)
        check_only_grows(inner0.masks, inner1.masks)
        opt_step = micro // k
        final_micro = (micro + 1) % k == 0
        changed = any(not np.array_equal(a, b)
                      for a, b in zip(np_leaves(inner0.masks), np_leaves(inner1.masks)) if a is not None)
        if changed:
            assert final_micro and is_updates[opt_step], micro
        if final_micro:
            target = targets[opt_step]
            for _, _, m in masked_pairs(p1, inner1.masks):
                assert pruned_units(m)[0] == round(target * m.size), micro
    p_end, s_end = history[-1]
    for _, _, m in masked_pairs(p_end, s_end.inner_opt_state.masks):
        assert pruned_units(m)[0] == round(0.7 * m.size)


# --------------------------------------------------------------------------
# Bad input: clear errors at construction / init, never inside a trace
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [jp.RandomUnstructured, jp.RandomUnstructured(0.0), jp.RandomStructured(0.0, dim=0),
     functools.partial(jp.RandomStructured, dim=-1), jp.GlobalUnstructured(0.0, method="random")],
    ids=["random-unstructured-class", "random-unstructured-spec", "random-structured-spec",
         "random-structured-partial", "global-random"],
)
def test_random_rule_without_key_raises_at_init(rule):
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": rule}, POLY)
    with pytest.raises(ValueError, match="key"):
        tx.init(make_params())


def test_update_without_params_raises_value_error():
    params = make_params()
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": jp.L1Unstructured}, POLY)
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state)
    with pytest.raises(ValueError):
        tx.update(params, state, None)


@pytest.mark.parametrize("pattern", ["*.weight", "b.kernel"])
def test_unmatched_pattern_raises_at_init_naming_it(pattern):
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": jp.L1Unstructured, pattern: jp.L1Unstructured}, POLY)
    with pytest.raises(ValueError, match=repr(pattern).replace("*", r"\*").replace(".", r"\.")):
        tx.init(make_params())


def test_rule_for_non_floating_leaf_raises_type_error_at_init():
    params = {**make_params(), "steps": jnp.arange(4, dtype=jnp.int32)}
    tx = jp.pruning(optax.sgd(0.1), {"*": jp.L1Unstructured}, POLY)
    with pytest.raises(TypeError):
        tx.init(params)


@pytest.mark.parametrize(
    "rule",
    [jp.RandomStructured(0.0, dim=2), jp.LnStructured(0.0, n=2, dim=-3),
     functools.partial(jp.LnStructured, n=2, dim=2), functools.partial(jp.RandomStructured, dim=-3)],
    ids=["random-structured-spec", "ln-structured-spec", "ln-structured-partial", "random-structured-partial"],
)
def test_structured_rule_whose_dim_the_leaf_lacks_raises_index_error_at_init(rule):
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": rule}, POLY, key=KEY)
    with pytest.raises(IndexError):
        tx.init(make_params())


@pytest.mark.parametrize("rule", [0.5, "l1"], ids=["float", "string"])
def test_rule_that_is_not_a_method_raises_type_error_at_init(rule):
    tx = jp.pruning(optax.sgd(0.1), {"*.kernel": rule}, POLY)
    with pytest.raises(TypeError):
        tx.init(make_params())


@pytest.mark.parametrize("schedule", [0.5, "poly", None])
def test_schedule_must_be_a_schedule_or_a_callable(schedule):
    with pytest.raises(TypeError, match="schedule must be"):
        jp.pruning(optax.sgd(0.1), {"*.kernel": jp.L1Unstructured}, schedule)


# --------------------------------------------------------------------------
# Flax NNX and Linen, end to end
# --------------------------------------------------------------------------


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(6 * 6 * 4, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        return self.fc(x.reshape(x.shape[0], -1))


IMAGES = jax.random.normal(jax.random.key(7), (8, 6, 6, 1))
LABELS = jax.random.randint(jax.random.key(8), (8,), 0, 5)
NNX_SCHED = jp.polynomial_schedule(0.0, 0.8, start=0, end=40, every=5)
NNX_RULES = {"conv.kernel": functools.partial(jp.LnStructured, n=2, dim=-1),
             "fc.kernel": jp.L1Unstructured, "fc.bias": jp.RandomUnstructured}


def check_nnx_final(model, masks):
    state = nnx.state(model, nnx.Param)
    # nnx.Optimizer wraps the state's leaves in OptVariable: re-wrap the masks like the params
    masks = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(masks, is_leaf=lambda x: x is None))
    check_exact_zeros(state, masks)
    conv = np.asarray(masks["conv"]["kernel"][...])
    assert pruned_units(conv, -1)[0] == round(0.8 * 4)
    assert np.all(np.asarray(model.conv.kernel[...])[..., jp.pruned_indices(conv, -1)] == 0)
    assert pruned_units(np.asarray(masks["fc"]["kernel"][...]))[0] == round(0.8 * 144 * 5)
    assert pruned_units(np.asarray(masks["fc"]["bias"][...]))[0] == round(0.8 * 5)
    report = jp.sparsity_report(state, masks).as_dict()
    assert report["fc.kernel"]["sparsity"] == pytest.approx(0.8)
    assert report["conv.bias"]["pruned"] == 0


def nnx_loss(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(IMAGES), LABELS).mean()


def test_nnx_optimizer_with_nnx_jit(standard_promotion):
    model = NNXNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, jp.pruning(optax.adam(1e-2), NNX_RULES, NNX_SCHED, key=KEY), wrt=nnx.Param)
    traces = [0]

    @nnx.jit
    def step(model, optimizer):
        traces[0] += 1
        loss, grads = nnx.value_and_grad(nnx_loss)(model)
        optimizer.update(model, grads)
        return loss

    first = float(step(model, optimizer))
    for t in range(1, 45):
        loss = float(step(model, optimizer))
        check_exact_zeros(nnx.state(model, nnx.Param), optimizer.opt_state.masks)
    assert traces[0] == 1
    assert np.isfinite(loss) and loss < first
    check_nnx_final(model, optimizer.opt_state.masks)


def test_nnx_split_merge_with_jax_jit():
    model = NNXNet(nnx.Rngs(1))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = jp.pruning(optax.sgd(0.05, momentum=0.9), NNX_RULES, NNX_SCHED, key=KEY)
    state = tx.init(params)
    traces = [0]

    @jax.jit
    def step(params, state):
        traces[0] += 1

        def loss(p):
            return nnx_loss(nnx.merge(graphdef, p))

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    for t in range(45):
        old = state.masks
        params, state, _ = step(params, state)
        check_exact_zeros(params, state.masks)
        check_only_grows(old, state.masks)
    assert traces[0] == 1
    assert isinstance(params, nnx.State) and isinstance(state.masks, nnx.State)
    model = nnx.merge(graphdef, params)
    check_nnx_final(model, state.masks)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(12)(x))
        return nn.Dense(10)(x)


def test_linen_model_init_apply():
    model = LinenNet()
    variables = model.init(jax.random.key(0), X)
    rules = {"params.Dense_0.kernel": jp.L1Unstructured,
             "params.Dense_1.kernel": functools.partial(jp.LnStructured, n=1, dim=0),
             "*.bias": jp.GlobalUnstructured(0.0, method="random")}
    tx = jp.pruning(optax.sgd(0.05, momentum=0.9), rules, SHORT, key=KEY)
    state = tx.init(variables)
    traces = [0]

    @jax.jit
    def step(variables, state):
        traces[0] += 1

        def loss(v):
            return jnp.mean((model.apply(v, X) - Y) ** 2)

        value, grads = jax.value_and_grad(loss)(variables)
        updates, state = tx.update(grads, state, variables)
        return optax.apply_updates(variables, updates), state, value

    losses = []
    for t in range(30):
        old = state.masks
        variables, state, value = step(variables, state)
        losses.append(float(value))
        check_exact_zeros(variables, state.masks)
        check_only_grows(old, state.masks)
    assert traces[0] == 1
    masks = state.masks["params"]
    assert pruned_units(np.asarray(masks["Dense_0"]["kernel"]))[0] == round(0.8 * 96)
    assert pruned_units(np.asarray(masks["Dense_1"]["kernel"]), 0)[0] == round(0.8 * 12)
    bias_pruned = sum(pruned_units(np.asarray(masks[n]["bias"]))[0] for n in ("Dense_0", "Dense_1"))
    assert bias_pruned == round(0.8 * 22)
    assert np.all(np.isfinite(losses))
    out = model.apply(variables, X)
    assert out.shape == (16, 10)


def test_low_precision_updates_still_land_pruned_weights_on_zero():
    """bf16 gradients on f32 params: the zeroing update is built in the
    parameter's dtype, so -param is not rounded."""
    params = {"w": jnp.array([1.2345678, 2.0, -3.0, 4.0], jnp.float32)}
    tx = jp.pruning(optax.sgd(0.1), {"w": jp.L1Unstructured}, jp.one_shot_schedule(0.25, step=0))
    state = tx.init(params)
    grads = {"w": jnp.ones(4, jnp.bfloat16)}
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert new["w"].dtype == jnp.float32
    assert float(new["w"][0]) == 0.0 and bool(jnp.all(new["w"][1:] != 0))
