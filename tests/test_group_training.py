"""Gradual channel pruning in training (`jp.pruning` over channel groups), then `jp.shrink`."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxprune as jp

X = jax.random.normal(jax.random.key(1), (16, 6))
Y = jax.random.normal(jax.random.key(2), (16, 3))


def mlp(p, x):
    h = jax.nn.relu(x @ p["a"]["kernel"] + p["a"]["bias"][None])
    h = jax.nn.relu(h @ p["b"]["kernel"] + p["b"]["bias"][None])
    return h @ p["c"]["kernel"]


def make_params():
    keys = jax.random.split(jax.random.key(0), 5)
    return {
        "a": {"kernel": jax.random.normal(keys[0], (6, 10)), "bias": 0.1 * jax.random.normal(keys[1], (10,))},
        "b": {"kernel": jax.random.normal(keys[2], (10, 8)), "bias": 0.1 * jax.random.normal(keys[3], (8,))},
        "c": {"kernel": jax.random.normal(keys[4], (8, 3))},
    }


def loss(p):
    return jnp.mean((mlp(p, X) - Y) ** 2)


def leaf_at(params, member):
    """The member's leaf with its channel axis first."""
    first, second = member.path.split(".")
    return np.moveaxis(np.asarray(params[first][second]), member.axis, 0)


def channel_keep(group, params):
    """Kept channels read back from the weights: a channel is pruned when all its positions are 0."""
    kept = []
    for c in range(group.size):
        alive = False
        for m in group.members:
            alive |= bool(np.any(leaf_at(params, m)[m.positions[c]] != 0))
        kept.append(alive)
    return np.array(kept)


def test_gradual_channel_pruning_prunes_whole_channels_with_exact_counts_and_compiles_once():
    params = make_params()
    groups = jp.channel_groups(mlp, params, X)
    assert [g.size for g in groups] == [10, 8]
    schedule = jp.polynomial_schedule(0.0, 0.5, start=0, end=6, every=2)
    tx = jp.pruning(optax.sgd(0.05), groups, schedule)
    state = tx.init(params)
    traces = [0]

    @jax.jit
    def step(params, state):
        traces[0] += 1
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    previous = [np.ones(g.size, bool) for g in groups]
    for i in range(8):
        params, state = step(params, state)
        target = float(schedule.target(min(i, 6) // 2 * 2))
        for g, old in zip(groups, previous):
            keep = channel_keep(g, params)
            assert np.sum(~keep) == round(target * g.size), (i, g.size)
            assert not np.any(keep & ~old)  # pruned channels stay pruned
            for m in g.members:  # every member zeroed at the pruned channels' positions
                assert np.all(leaf_at(params, m)[m.positions[~keep].ravel()] == 0)
        previous = [channel_keep(g, params) for g in groups]
    assert traces[0] == 1
    keep = tuple(jnp.asarray(k) for k in previous)
    small = jp.shrink(params, groups, keep)
    assert small["a"]["kernel"].shape == (6, 5) and small["b"]["kernel"].shape == (5, 4)
    np.testing.assert_allclose(mlp(small, X), mlp(params, X), rtol=1e-5, atol=1e-5)


def test_channel_pruning_method_and_key():
    params = make_params()
    groups = jp.channel_groups(mlp, params, X)
    with pytest.raises(jp.KeyRequiredError, match="key="):
        jp.pruning(optax.sgd(0.1), jp.ChannelPruning(groups, "random"), jp.one_shot_schedule(0.5, step=0))
    tx = jp.pruning(optax.sgd(0.0), jp.ChannelPruning(groups, "random"), jp.one_shot_schedule(0.5, step=0),
                    key=jax.random.key(3))
    updates, _ = tx.update(params, tx.init(params), params)
    pruned = optax.apply_updates(params, updates)
    again, _ = tx.update(params, tx.init(params), params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(again)))
    assert [int(np.sum(~channel_keep(g, pruned))) for g in groups] == [5, 4]
    with pytest.raises(ValueError, match="method must be 'l1', 'l2' or 'random', got 'l3'"):
        jp.ChannelPruning(groups, "l3")
    with pytest.raises(TypeError, match="channel groups"):
        jp.ChannelPruning(({"a": 1},))  # type: ignore[arg-type]


def test_groups_of_another_model_are_refused():
    groups = jp.channel_groups(mlp, make_params(), X)
    other = make_params()
    other["a"]["kernel"] = jnp.ones((6, 12))
    tx = jp.pruning(optax.sgd(0.1), groups, jp.one_shot_schedule(0.5, step=0))
    with pytest.raises(ValueError, match="groups\\[0\\] has a member Member\\('a.kernel'.* axis 1 of length 10, but the leaf has shape \\(6, 12\\)"):
        tx.init(other)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(6, 10, rngs=rngs)
        self.bn = nnx.BatchNorm(10, use_running_average=True, rngs=rngs)
        self.c = nnx.Linear(10, 3, rngs=rngs)

    def __call__(self, x):
        return self.c(nnx.relu(self.bn(self.a(x))))


def test_nnx_optimizer_prunes_channels_then_shrink_model_equals_the_pruned_model():
    model = Net(nnx.Rngs(0))
    groups = jp.channel_groups(model, X)
    (hidden,) = groups
    assert {m.path for m in hidden.members} >= {"bn.mean", "bn.var", "a.kernel"}
    tx = jp.pruning(optax.sgd(0.05), groups, jp.one_shot_schedule(0.3, step=0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(3):
        step(model, optimizer)
    kernel = np.asarray(model.a.kernel[...])
    pruned = np.all(kernel == 0, axis=0)
    assert pruned.sum() == 3
    expected = model(X)
    keep = (jnp.asarray(~pruned),)
    jp.shrink_model(model, groups, keep)
    assert model.a.kernel.shape == (6, 7) and model.bn.mean.shape == (7,)
    np.testing.assert_allclose(model(X), expected, rtol=1e-5, atol=1e-5)
