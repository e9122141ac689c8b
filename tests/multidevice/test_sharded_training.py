"""The pruning optimizer inside a training step under data + model parallel
sharding on 8 devices: one compilation, masks sharded like their parameters,
exact counts, pruned weights exactly 0, the first masks equal one device's.

Runs in its own session with 8 CPU devices (see tests/test_multidevice.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune as jp
from jaxprune import _selection

STEPS = 8
SCHEDULE = jp.polynomial_schedule(0.2, 0.8, start=0, end=6, every=2)
RULES = {
    "hidden.kernel": jp.L1Unstructured,
    "out.*": jp.GlobalUnstructured(0.0),  # kernel and bias ranked together
    "embed": jp.RandomUnstructured,
}
SHAPES = {"embed": (128, 256), "hidden": {"kernel": (256, 512), "bias": (512,)},
          "out": {"kernel": (512, 64), "bias": (64,)}}


def _init() -> dict:
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: (rng.standard_normal(s) * 0.1).astype(np.float32), SHAPES,
                        is_leaf=lambda s: isinstance(s, tuple))


def _batch(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    return rng.standard_normal((32, 128)).astype(np.float32), rng.standard_normal((32, 64)).astype(np.float32)


def _loss(params, x, y):
    h = jnp.tanh(x @ params["embed"])
    h = jax.nn.relu(h @ params["hidden"]["kernel"] + params["hidden"]["bias"][None, :])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"][None, :] - y) ** 2)


def _train(params, place, batch_sharding):
    tx = jp.pruning(optax.sgd(0.05), RULES, SCHEDULE, key=jax.random.key(3))
    params = place(params)
    state = jax.jit(tx.init)(params)  # placed as the step's outputs will be: no second compilation
    traces = []

    @jax.jit
    def step(params, state, x, y):
        traces.append(1)
        grads = jax.grad(_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    for i in range(STEPS):
        x, y = (jax.device_put(a, batch_sharding) for a in _batch(i))
        params, state = step(params, state, x, y)
        history.append((params, state.masks))
    return history, len(traces)


@pytest.fixture(scope="module")
def one_device():
    with _selection.forced(keep_shapes=False):
        dev = jax.devices()[0]
        history, _ = _train(_init(), lambda p: jax.device_put(p, dev), dev)
        return [jax.tree.map(np.asarray, h) for h in history]


@pytest.mark.parametrize("mesh_shape", [(4, 2), (2, 4), (8, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_training_step_under_data_and_model_parallel(mesh_shape, one_device):
    mesh = Mesh(np.array(jax.devices()).reshape(mesh_shape), ("data", "model"))
    # Megatron-style: the hidden kernel split by columns, the output kernel by
    # rows, the embedding by rows; the batch split over "data".
    specs = {"embed": P("model", None), "hidden": {"kernel": P(None, "model"), "bias": P("model")},
             "out": {"kernel": P("model", None), "bias": P()}}
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))
    history, traces = _train(_init(), lambda p: jax.device_put(p, shardings),
                             NamedSharding(mesh, P("data", None)))
    assert traces == 1, "the step compiled more than once"

    for step, (params, masks) in enumerate(history):
        target = float(SCHEDULE.target(min(step - step % 2, 6)))
        for path in ("embed", "hidden.kernel"):
            mask = masks["embed"] if path == "embed" else masks["hidden"]["kernel"]
            param = params["embed"] if path == "embed" else params["hidden"]["kernel"]
            sharding = shardings["embed"] if path == "embed" else shardings["hidden"]["kernel"]
            assert mask.sharding.is_equivalent_to(sharding, 2), (step, path, mask.sharding)
            assert param.sharding.is_equivalent_to(sharding, 2), (step, path, param.sharding)
            assert int(jnp.sum(~mask)) == round(target * mask.size), (step, path)
            assert not np.any(np.asarray(param)[~np.asarray(mask)]), (step, path, "pruned weight not 0")
        out = [masks["out"]["kernel"], masks["out"]["bias"]]
        assert sum(int(jnp.sum(~m)) for m in out) == round(target * (512 * 64 + 64)), step
        assert masks["out"]["kernel"].sharding.is_equivalent_to(shardings["out"]["kernel"], 2)
        assert masks["hidden"]["bias"] is None

    # The first update sees the initial parameters on every layout: same masks
    # as one device, bit for bit (later steps' gradients are summed in another
    # order across devices, so their float values may differ in the last bits).
    np.testing.assert_equal(jax.tree.map(np.asarray, history[0][1]), one_device[0][1])
    # Random masks depend on the key and the step only: equal at every step.
    for (_, masks), (_, ref) in zip(history, one_device):
        np.testing.assert_array_equal(np.asarray(masks["embed"]), ref["embed"])
