"""`jp.sparsity_report` with channel groups: removable channels, values and FLOPs saved by shrinking."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

X = jnp.ones((4, 3))


def mlp(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"][None]) @ p["w2"]


def params():
    return {
        "w1": jnp.arange(1.0, 25.0).reshape(3, 8),
        "b1": jnp.ones(8),
        "w2": jnp.arange(1.0, 17.0).reshape(8, 2),
    }


def test_removable_channels_from_zeros_and_from_masks():
    p = params()
    groups = jp.channel_groups(mlp, p, X)
    keep = (jnp.array([True, False, True, False, True, True, True, False]),)
    masks = jp.group_masks(groups, p, keep)
    report = jp.sparsity_report(p, masks, groups=groups)
    (row,) = report.groups
    assert (row.size, row.members, row.removable) == (8, 3, 3)
    assert row.params_saved == 3 * (3 + 1 + 2)
    assert report.params_after == report.size - 18 == 24 + 8 + 16 - 18
    # Without masks, zeros tell: a channel zero in w1 only is not removable (b1, w2 still use it).
    zeroed = dict(p, w1=p["w1"].at[:, 0].set(0.0))
    assert jp.sparsity_report(zeroed, groups=groups).groups[0].removable == 0
    pruned = jp.apply_masks(p, masks)
    assert jp.sparsity_report(pruned, groups=groups).groups[0].removable == 3
    text = str(jp.sparsity_report(pruned, groups=groups, fn=mlp, args=(X,)))
    assert "shrinking: 48 -> 30 values" in text and "FLOPs:" in text


def test_flops_after_shrinking_match_the_shrunk_function():
    p = params()
    groups = jp.channel_groups(mlp, p, X)
    keep = (jnp.array([True, False] * 4),)
    pruned = jp.apply_masks(p, jp.group_masks(groups, p, keep))
    report = jp.sparsity_report(pruned, groups=groups, fn=mlp, args=(X,))
    small = jp.shrink(p, groups, keep)
    cost = jax.jit(mlp).lower(small, X).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert report.flops_after == cost["flops"] < report.flops


class Net(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 8, rngs=rngs)
        self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(nnx.relu(self.a(x)))


def test_an_nnx_module_is_reported_on_a_clone_and_left_untouched():
    model = Net(nnx.Rngs(0))
    groups = jp.channel_groups(model, X)
    model.a.kernel[...] = model.a.kernel[...].at[:, :4].set(0.0)
    model.a.bias[...] = model.a.bias[...].at[:4].set(0.0)
    model.b.kernel[...] = model.b.kernel[...].at[:4].set(0.0)
    report = jp.sparsity_report(model, groups=groups, args=(X,))
    assert report.groups[0].removable == 4
    assert report.params_after == 3 * 4 + 4 + 4 * 2 + 2
    assert report.flops_after < report.flops
    assert model.a.kernel.shape == (3, 8) and np.count_nonzero(np.asarray(model.a.kernel[...])) == 12
