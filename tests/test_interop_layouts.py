"""jaxprune.interop torch <-> Flax: layouts, masks, flax_dim, flax_rules, errors, and the example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import flax.linen as nn  # noqa: E402
import torch.nn.utils.prune as prune  # noqa: E402
from flax import nnx  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import interop  # noqa: E402

from _torch_models import small_cnn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------
# A small CNN on both sides
# --------------------------------------------------------------------------

NAMES = {"0": "conv", "1": "bn", "4": "fc"}


def cnn(seed: int = 0) -> torch.nn.Sequential:
    """The shared small CNN, in eval mode."""
    return small_cnn(seed).eval()


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # NHWC
        x = nn.Conv(8, (3, 3), padding="VALID", name="conv")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x))
        x = jnp.transpose(x, (0, 3, 1, 2))  # flatten in torch's (C, H, W) order
        return nn.Dense(10, name="fc")(x.reshape(x.shape[0], -1))


class NnxCNN(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, 8, (3, 3), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.conv(x)))
        x = jnp.transpose(x, (0, 3, 1, 2))
        return self.fc(x.reshape(x.shape[0], -1))


def images(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, 6, 6)).astype(np.float32)


def torch_out(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(np.moveaxis(x, 1, -1))


def abstract_nnx_cnn() -> NnxCNN:
    """An NNX model without running its initializers (nnx.update fills it)."""
    return nnx.eval_shape(lambda: NnxCNN(rngs=nnx.Rngs(0)))


def leaf(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


def flat(tree: Any) -> dict[str, Any]:
    """A nested dict as {dotted path: leaf} (None leaves dropped)."""
    return {jp.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree) if v is not None}


def assert_mask_trees_equal(ours: Any, reference: Any) -> None:
    """Every mask of ``reference`` (a masks_to_flax tree) equals ``ours``; ours has no others."""
    a, b = flat(ours), flat(reference)
    assert sorted(a) == sorted(b)
    for path in b:
        assert a[path].dtype == jnp.bool_, path
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]), err_msg=path)


# --------------------------------------------------------------------------
# torch -> Flax: the small CNN, Linen and NNX
# --------------------------------------------------------------------------


def test_cnn_converts_to_linen_and_nnx_with_equal_outputs():
    net = cnn()
    variables = interop.torch_to_flax(net, names=NAMES)
    assert sorted(variables) == ["batch_stats", "params"]
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"conv": {"kernel": (3, 3, 3, 8), "bias": (8,)}, "bn": {"scale": (8,), "bias": (8,)},
                   "fc": {"kernel": (128, 10), "bias": (10,)}},
        "batch_stats": {"bn": {"mean": (8,), "var": (8,)}},
    }
    # Linen's own init has the same tree structure and dtypes.
    init = jax.eval_shape(LinenCNN().init, jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    assert jax.tree.structure(init) == jax.tree.structure(variables)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), init) == jax.tree.map(lambda a: (a.shape, a.dtype), variables)
    x = images()
    expected = torch_out(net, x)
    np.testing.assert_allclose(np.asarray(LinenCNN().apply(variables, nhwc(x))), expected, atol=1e-5)
    model = abstract_nnx_cnn()
    nnx.update(model, variables["params"])
    nnx.update(model, variables["batch_stats"])
    np.testing.assert_allclose(np.asarray(model(nhwc(x))), expected, atol=1e-5)


def test_pruned_cnn_converts_with_its_masks():
    net = cnn()
    interop.prune_module(jax.random.key(0), net, {"0.weight": jp.RandomStructured(0.25, dim=0),
                                                  "4.weight": jp.L1Unstructured(0.5), "1.bias": jp.L1Unstructured(2)})
    variables = interop.torch_to_flax(net, names=NAMES, weights="orig")
    # weights="orig": the dense *_orig values travel; the masks travel separately.
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["kernel"]),
                                  net[4].weight_orig.detach().numpy().T)
    _, masks = interop.read_pruned(net)
    flax_masks = interop.masks_to_flax(masks, net, names=NAMES)
    shapes = jax.tree.map(lambda m: None if m is None else m.shape, flax_masks, is_leaf=lambda x: x is None)
    assert shapes == {"conv": {"kernel": (3, 3, 3, 8), "bias": None}, "bn": {"scale": None, "bias": (8,)},
                      "fc": {"kernel": (128, 10), "bias": None}}
    pruned = jp.apply_masks(variables["params"], flax_masks)
    # A pruned conv filter is the last kernel axis in Flax.
    dead = np.flatnonzero(net[0].weight_mask.sum(dim=(1, 2, 3)).numpy() == 0)
    assert dead.size == 2
    assert np.all(np.asarray(pruned["conv"]["kernel"])[..., dead] == 0)
    x = images()
    out = LinenCNN().apply({"params": pruned, "batch_stats": variables["batch_stats"]}, nhwc(x))
    np.testing.assert_allclose(np.asarray(out), torch_out(net, x), atol=1e-5)


def test_without_names_the_module_path_becomes_nested_keys():
    net = cnn()
    variables = interop.torch_to_flax(net)
    assert sorted(variables["params"]) == ["0", "1", "4"]
    assert variables["params"]["0"]["kernel"].shape == (3, 3, 3, 8)
    deep = torch.nn.Sequential()
    deep.add_module("features", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    tree = interop.torch_to_flax(deep)
    assert tree["params"]["features"]["0"]["kernel"].shape == (3, 3, 3, 4)
    renamed = interop.torch_to_flax(deep, names={"features.0": "conv1"})
    assert renamed["params"]["conv1"]["kernel"].shape == (3, 3, 3, 4)
    assert interop.placements(deep, names={"features.0": "blocks.conv1"})["features.0.weight"].path == (
        "blocks", "conv1", "kernel")


def test_conversion_is_a_snapshot():
    net = cnn()
    variables = interop.torch_to_flax(net, names=NAMES)
    kept = np.asarray(variables["params"]["fc"]["kernel"]).copy()
    with torch.no_grad():
        net[4].weight.mul_(2)
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["kernel"]), kept)


# --------------------------------------------------------------------------
# A pruned torch model exports its effective weights
# --------------------------------------------------------------------------


def pruned_twice_cnn() -> torch.nn.Sequential:
    """The CNN pruned by jaxprune, then by torch on top (PruningContainer hooks)."""
    net = cnn()
    interop.prune_module(jax.random.key(0), net, {"0.weight": jp.RandomStructured(0.25, dim=0),
                                                  "1.weight": jp.L1Unstructured(2), "4.weight": jp.L1Unstructured(0.5)})
    prune.random_unstructured(net[0], "weight", 0.3)
    prune.l1_unstructured(net[4], "weight", 0.2)
    prune.l1_unstructured(net[4], "bias", 3)
    return net


def pruned_once_cnn() -> torch.nn.Sequential:
    net = cnn()
    interop.prune_module(jax.random.key(0), net, {"0.weight": jp.LnStructured(0.5, n=2, dim=0),
                                                  "*.bias": jp.RandomUnstructured(0.5)})
    return net


@pytest.mark.parametrize("make", [pruned_once_cnn, pruned_twice_cnn], ids=["pruned-once", "pruned-twice"])
def test_a_pruned_cnn_converts_to_flax_models_that_compute_the_pruned_outputs(make):
    net = make()
    x = images()
    expected = torch_out(net, x)
    variables = interop.torch_to_flax(net, names=NAMES)
    np.testing.assert_allclose(np.asarray(LinenCNN().apply(variables, nhwc(x))), expected, atol=1e-5)
    model = abstract_nnx_cnn()
    nnx.update(model, variables["params"])
    nnx.update(model, variables["batch_stats"])
    np.testing.assert_allclose(np.asarray(model(nhwc(x))), expected, atol=1e-5)
    # The effective weights are exactly orig * mask; "orig" gives the dense ones, and its outputs differ.
    for name, place in interop.placements(net, NAMES).items():
        layer, attr = name.rsplit(".", 1)
        sub = net.get_submodule(layer)
        dense = getattr(sub, attr + "_orig", getattr(sub, attr)).detach()
        effective = dense * getattr(sub, attr + "_mask") if hasattr(sub, attr + "_mask") else dense
        got = np.asarray(place.to_torch_layout(leaf(variables[place.collection], ".".join(place.path))))
        np.testing.assert_array_equal(got, effective.numpy(), err_msg=name)
    dense = interop.torch_to_flax(net, names=NAMES, weights="orig")
    assert not np.allclose(np.asarray(LinenCNN().apply(dense, nhwc(x))), expected, atol=1e-3)
    _, masks = interop.read_pruned(net)
    masked = jp.apply_masks(dense["params"], interop.masks_to_flax(masks, net, names=NAMES))
    np.testing.assert_array_equal(np.asarray(masked["fc"]["kernel"]), np.asarray(variables["params"]["fc"]["kernel"]))


def test_a_pruned_linear_converts_to_a_dense_layer_with_the_pruned_outputs():
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    interop.prune_module(jax.random.key(0), net, {"weight": jp.L1Unstructured(0.5), "bias": jp.RandomUnstructured(2)})
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    out = nn.Dense(4).apply(interop.torch_to_flax(net), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), torch_out(net, x), atol=1e-6)
    assert int((interop.torch_to_flax(net)["params"]["kernel"] == 0).sum()) == 12


def test_effective_weights_follow_orig_changed_since_the_last_forward():
    """An optimizer step changes weight_orig; torch's stale ``weight`` attribute
    is refreshed only by the next forward. The export computes orig * mask now."""
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 4)
    interop.prune_module(None, net, {"weight": jp.L1Unstructured(0.5)})
    with torch.no_grad():
        net.weight_orig.add_(1.0)
    kernel = np.asarray(interop.torch_to_flax(net)["params"]["kernel"])
    np.testing.assert_array_equal(kernel, (net.weight_orig * net.weight_mask).detach().numpy().T)


@pytest.mark.parametrize("weights", ["dense", "", None, 1, "Orig"])
def test_torch_to_flax_rejects_an_unknown_weights_choice(weights):
    with pytest.raises(ValueError, match=r"weights must be 'effective' or 'orig', got " + re.escape(repr(weights))):
        interop.torch_to_flax(cnn(), weights=weights)


# --------------------------------------------------------------------------
# names: renaming must not merge layers
# --------------------------------------------------------------------------


COLLIDING_NAMES: dict[str, tuple[dict[str, str], str]] = {
    "both-renamed": ({"0": "x", "4": "x"}, r"'0\.weight' and '4\.weight' both map to params\.x\.kernel"),
    "renamed-onto-another": ({"0": "4"}, r"'0\.weight' and '4\.weight' both map to params\.4\.kernel"),
    "dotted-onto-nested": ({"0": "a.b", "4": "a"}, None),
    "leaf-under-a-leaf": ({"0": "fc.kernel", "4": "fc"}, r"'4\.weight'.*params\.fc\.kernel.*'0\.weight'"),
}


@pytest.mark.parametrize("case", list(COLLIDING_NAMES), ids=list(COLLIDING_NAMES))
def test_names_mapping_two_tensors_to_one_flax_path_are_refused(case):
    names, pattern = COLLIDING_NAMES[case]
    net = cnn()
    if pattern is None:  # a.b.kernel beside a.kernel: no collision
        assert interop.torch_to_flax(net, names=names)["params"]["a"]["b"]["kernel"].shape == (3, 3, 3, 8)
        return
    good = interop.torch_to_flax(net)
    calls = [lambda: interop.torch_to_flax(net, names=names), lambda: interop.placements(net, names),
             lambda: interop.flax_to_torch(good, net, names=names),
             lambda: interop.masks_to_flax({}, net, names=names), lambda: interop.masks_to_torch({}, net, names=names),
             lambda: interop.flax_dim(net, "0.weight", 0, names=names),
             lambda: interop.flax_rules({"0.weight": jp.L1Unstructured(0.5)}, net, names=names)]
    for call in calls:
        with pytest.raises(ValueError, match=pattern):
            call()


def test_names_for_a_module_path_the_model_lacks_are_refused():
    with pytest.raises(ValueError, match=r"names: no module '5' in the torch module.*'0', '1', '2', '3', '4'"):
        interop.torch_to_flax(cnn(), names={"0": "conv", "5": "fc"})
    with pytest.raises(TypeError, match=r"names\['0'\] must be a str, got 3"):
        interop.placements(cnn(), {"0": 3})
    # A module without tensors may be named (it changes nothing).
    assert interop.placements(cnn(), {"2": "relu"}) == interop.placements(cnn())


# --------------------------------------------------------------------------
# Every layer type: layout and numerics
# --------------------------------------------------------------------------


def _bn_stats(layer: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
        if getattr(layer, "running_mean", None) is not None:
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    return layer.eval()


# (torch layer, Flax Linen layer, torch input shape, torch->flax input axes, flax->torch output axes)
LAYER_CASES: dict[str, tuple[Callable[[], Any], Callable[[], nn.Module], tuple[int, ...], Any, Any]] = {
    "conv1d": (lambda: torch.nn.Conv1d(3, 5, 3), lambda: nn.Conv(5, (3,), padding="VALID"), (2, 3, 7),
               (0, 2, 1), (0, 2, 1)),
    "conv2d": (lambda: torch.nn.Conv2d(3, 5, (3, 2), stride=(1, 2)), lambda: nn.Conv(5, (3, 2), strides=(1, 2),
               padding="VALID"), (2, 3, 6, 7), (0, 2, 3, 1), (0, 3, 1, 2)),
    "conv2d-groups": (lambda: torch.nn.Conv2d(4, 6, 3, groups=2, padding=1), lambda: nn.Conv(
        6, (3, 3), feature_group_count=2, padding=1), (2, 4, 5, 5), (0, 2, 3, 1), (0, 3, 1, 2)),
    "conv3d": (lambda: torch.nn.Conv3d(2, 4, (2, 3, 2)), lambda: nn.Conv(4, (2, 3, 2), padding="VALID"),
               (2, 2, 4, 5, 3), (0, 2, 3, 4, 1), (0, 4, 1, 2, 3)),
    "linear": (lambda: torch.nn.Linear(6, 4), lambda: nn.Dense(4), (3, 6), None, None),
    "linear-no-bias": (lambda: torch.nn.Linear(6, 4, bias=False), lambda: nn.Dense(4, use_bias=False), (3, 6),
                       None, None),
    "batchnorm1d": (lambda: _bn_stats(torch.nn.BatchNorm1d(5)), lambda: nn.BatchNorm(
        use_running_average=True, epsilon=1e-5), (4, 5), None, None),
    "batchnorm2d": (lambda: _bn_stats(torch.nn.BatchNorm2d(5)), lambda: nn.BatchNorm(
        use_running_average=True, epsilon=1e-5), (2, 5, 3, 3), (0, 2, 3, 1), (0, 3, 1, 2)),
    "batchnorm3d": (lambda: _bn_stats(torch.nn.BatchNorm3d(3)), lambda: nn.BatchNorm(
        use_running_average=True, epsilon=1e-5), (2, 3, 2, 3, 2), (0, 2, 3, 4, 1), (0, 4, 1, 2, 3)),
    "layernorm": (lambda: _bn_stats(torch.nn.LayerNorm(6)), lambda: nn.LayerNorm(epsilon=1e-5), (3, 6), None,
                  None),
    "embedding": (lambda: torch.nn.Embedding(10, 4), lambda: nn.Embed(10, 4), (3, 5), None, None),
}

EXPECTED_LEAVES = {
    "conv1d": {"params.kernel": (3, 3, 5), "params.bias": (5,)},
    "conv2d": {"params.kernel": (3, 2, 3, 5), "params.bias": (5,)},
    "conv2d-groups": {"params.kernel": (3, 3, 2, 6), "params.bias": (6,)},
    "conv3d": {"params.kernel": (2, 3, 2, 2, 4), "params.bias": (4,)},
    "linear": {"params.kernel": (6, 4), "params.bias": (4,)},
    "linear-no-bias": {"params.kernel": (6, 4)},
    "batchnorm1d": {"params.scale": (5,), "params.bias": (5,), "batch_stats.mean": (5,), "batch_stats.var": (5,)},
    "batchnorm2d": {"params.scale": (5,), "params.bias": (5,), "batch_stats.mean": (5,), "batch_stats.var": (5,)},
    "batchnorm3d": {"params.scale": (3,), "params.bias": (3,), "batch_stats.mean": (3,), "batch_stats.var": (3,)},
    "layernorm": {"params.scale": (6,), "params.bias": (6,)},
    "embedding": {"params.embedding": (10, 4)},
}


@pytest.mark.parametrize("kind", list(LAYER_CASES), ids=list(LAYER_CASES))
def test_each_layer_type_converts_with_its_layout_and_computes_the_same(kind):
    make_torch, make_flax, shape, in_axes, out_axes = LAYER_CASES[kind]
    torch.manual_seed(0)
    layer = make_torch().eval()
    variables = interop.torch_to_flax(layer)
    assert {k: tuple(v.shape) for k, v in flat(variables).items()} == EXPECTED_LEAVES[kind]
    # Layout, leaf by leaf: Conv (O, I, *k) -> (*k, I, O), Linear transposed, the rest as is.
    for name, tensor in layer.state_dict().items():
        if name == "num_batches_tracked":
            continue
        place = interop.placements(layer)[name]
        value = np.asarray(leaf(variables[place.collection], ".".join(place.path)))
        t = tensor.numpy()
        expected = np.transpose(t, tuple(range(2, t.ndim)) + (1, 0)) if "conv" in kind and name == "weight" else (
            t.T if "linear" in kind and name == "weight" else t)
        np.testing.assert_array_equal(value, expected, err_msg=name)
    # Numerics: the Flax layer with these variables computes what the torch layer computes.
    if kind == "embedding":
        x_torch = torch.from_numpy(np.random.default_rng(0).integers(0, 10, shape))
        x_flax = jnp.asarray(x_torch.numpy().astype(np.int32))
    else:
        x_np = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        x_torch = torch.from_numpy(x_np)
        x_flax = jnp.asarray(np.transpose(x_np, in_axes) if in_axes else x_np)
    with torch.no_grad():
        expected_out = layer(x_torch).numpy()
    out = np.asarray(make_flax().apply(variables, x_flax))
    out = np.transpose(out, out_axes) if out_axes else out
    np.testing.assert_allclose(out, expected_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(LAYER_CASES), ids=list(LAYER_CASES))
def test_each_layer_type_round_trips_through_flax_to_torch(kind):
    make_torch = LAYER_CASES[kind][0]
    torch.manual_seed(0)
    source = make_torch()
    torch.manual_seed(1)
    target = make_torch()
    variables = interop.torch_to_flax(source)
    assert interop.flax_to_torch(variables, target) is target
    for name, tensor in source.state_dict().items():
        if name != "num_batches_tracked":
            assert torch.equal(target.state_dict()[name], tensor), name


def test_flax_to_torch_loads_linen_and_nnx_trees():
    net = cnn()
    variables = interop.torch_to_flax(net, names=NAMES)
    # From an NNX model's state, as pure dicts.
    model = abstract_nnx_cnn()
    nnx.update(model, variables["params"])
    nnx.update(model, variables["batch_stats"])
    back = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}
    target = cnn(seed=5)
    interop.flax_to_torch(back, target, names=NAMES)
    for name, tensor in net.state_dict().items():
        if name != "1.num_batches_tracked":
            assert torch.equal(target.state_dict()[name], tensor), name
    x = images()
    np.testing.assert_array_equal(torch_out(target, x), torch_out(net, x))


def test_flax_to_torch_into_a_pruned_module_writes_the_dense_orig_and_keeps_the_mask():
    source, target = cnn(seed=0), cnn(seed=1)
    rules = {"4.weight": jp.L1Unstructured(0.5)}
    interop.prune_module(None, target, rules)
    mask = target[4].weight_mask.clone()
    interop.flax_to_torch(interop.torch_to_flax(source), target)
    assert torch.equal(target[4].weight_orig, source[4].weight)
    assert torch.equal(target[4].weight_mask, mask) and prune.is_pruned(target)
    x = images()
    with torch.no_grad():
        expected = torch.nn.functional.linear(
            torch.flatten(torch.relu(source[1](source[0](torch.from_numpy(x)))), 1), source[4].weight * mask,
            source[4].bias)
    np.testing.assert_allclose(torch_out(target, x), expected.numpy(), atol=1e-6)


# --------------------------------------------------------------------------
# Masks travel with their weights
# --------------------------------------------------------------------------


def test_masks_to_flax_and_back_are_inverse_and_follow_the_weights():
    net = cnn()
    interop.prune_module(jax.random.key(0), net, {"0.weight": jp.RandomUnstructured(0.5),
                                                  "4.weight": jp.RandomStructured(0.3, dim=1),
                                                  "1.weight": jp.L1Unstructured(3)})
    weights, masks = interop.read_pruned(net)
    flax_masks = interop.masks_to_flax(masks, net, names=NAMES)
    variables = interop.torch_to_flax(net, names=NAMES)
    # Masking in torch then converting == converting then masking in Flax.
    for name, mask in masks.items():
        place = interop.placements(net, names=NAMES)[name]
        torch_masked = place.to_flax(jp.apply_masks(weights[name], mask))
        flax_masked = jp.apply_masks(leaf(variables["params"], ".".join(place.path[:-1]))[place.path[-1]],
                                     leaf(flax_masks, ".".join(place.path)))
        np.testing.assert_array_equal(np.asarray(torch_masked), np.asarray(flax_masked))
    back = interop.masks_to_torch(flax_masks, net, names=NAMES)
    assert sorted(back) == sorted(masks)
    for name in masks:
        assert back[name].dtype == torch.bool
        np.testing.assert_array_equal(back[name].numpy(), np.asarray(masks[name]))


def test_masks_to_flax_takes_bool_masks_under_strict_dtype_promotion():
    """Suspected bug: ``masks_to_flax`` does ``jnp.asarray(mask) != 0``; for the bool
    masks that ``read_pruned`` and ``compute_module_masks`` return, that is a
    bool/int comparison, which JAX refuses under strict dtype promotion (this
    suite's setting, and one the library promises to support)."""
    net = cnn()
    masks = interop.compute_module_masks(None, net, {"4.weight": jp.L1Unstructured(0.5)})
    flax_masks = interop.masks_to_flax(masks, net)
    np.testing.assert_array_equal(np.asarray(flax_masks["4"]["kernel"]), np.asarray(masks["4.weight"]).T)


def test_masks_to_flax_result_is_a_mask_tree_for_apply_masks_and_default_masks():
    """Suspected bug: ``masks_to_flax`` says it returns a ``params``-shaped tree, but
    it holds only the masked leaves; jaxprune's mask trees have the params'
    structure with None for unpruned leaves, so ``jp.apply_masks`` and
    ``jp.prune_tree(default_masks=...)`` refuse it (ValueError: masks must have
    the structure of params)."""
    net = cnn()
    interop.prune_module(None, net, {"4.weight": jp.L1Unstructured(0.5), "0.weight": jp.LnStructured(0.25, n=2, dim=0)})
    params = interop.torch_to_flax(net, names=NAMES)["params"]
    _, masks = interop.read_pruned(net)
    flax_masks = interop.masks_to_flax(masks, net, names=NAMES)
    pruned = jp.apply_masks(params, flax_masks)
    np.testing.assert_array_equal(np.asarray(pruned["fc"]["kernel"]), net[4].weight.detach().numpy().T)
    again = jp.prune_tree(None, params, {"fc.kernel": jp.L1Unstructured(0.5)}, default_masks=flax_masks)
    assert int((~again["fc"]["kernel"]).sum()) == 640 + 320


def test_masks_to_flax_takes_torch_float_masks():
    net = cnn()
    interop.prune_module(None, net, {"4.weight": jp.L1Unstructured(0.5)})
    flax_masks = interop.masks_to_flax({"4.weight": net[4].weight_mask}, net)
    assert flax_masks["4"]["kernel"].dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(flax_masks["4"]["kernel"]), net[4].weight_mask.numpy().T == 1)


def test_masks_to_torch_skips_none_leaves_of_a_prune_tree_result():
    net = cnn()
    params = interop.torch_to_flax(net, names=NAMES)["params"]
    masks = jp.prune_tree(None, params, {"fc.kernel": jp.L1Unstructured(0.5)})
    back = interop.masks_to_torch(masks, net, names=NAMES)
    assert sorted(back) == ["4.weight"]
    assert tuple(back["4.weight"].shape) == (10, 128)


# --------------------------------------------------------------------------
# flax_dim
# --------------------------------------------------------------------------

FLAX_DIMS = [
    ("conv1d", "weight", [(0, 2), (1, 1), (2, 0), (-1, 0), (-3, 2)]),
    ("conv2d", "weight", [(0, 3), (1, 2), (2, 0), (3, 1), (-1, 1), (-4, 3)]),
    ("conv3d", "weight", [(0, 4), (1, 3), (2, 0), (3, 1), (4, 2)]),
    ("linear", "weight", [(0, 1), (1, 0), (-1, 0), (-2, 1)]),
    ("embedding", "weight", [(0, 0), (1, 1)]),
    ("conv2d", "bias", [(0, 0), (-1, 0)]),
]


@pytest.mark.parametrize("kind,name,pairs", FLAX_DIMS, ids=[f"{k}-{n}" for k, n, _ in FLAX_DIMS])
def test_flax_dim_maps_a_torch_dim_to_the_flax_axis_of_the_same_units(kind, name, pairs):
    torch.manual_seed(0)
    layer = LAYER_CASES[kind][0]()
    kernel = flat(interop.torch_to_flax(layer))[f"params.{'embedding' if kind == 'embedding' else 'kernel'}"
                                                 if name == "weight" else "params.bias"]
    tensor = getattr(layer, name)
    for i, (dim, axis) in enumerate(pairs):
        assert interop.flax_dim(layer, name, dim) == axis, dim
        assert kernel.shape[axis] == tensor.shape[dim]
        if tensor.ndim > 1 and i in (0, 1):  # (each dim compiles anew: two per layer are enough)
            # The same slices: Ln structured along dim in torch == along the Flax axis in Flax.
            torch_mask = jp.ln_structured(interop.to_jax(tensor), 0.4, n=2, dim=dim)
            flax_mask = jp.ln_structured(kernel, 0.4, n=2, dim=axis)
            place = interop.placements(layer)[name]
            np.testing.assert_array_equal(np.asarray(place.to_flax(torch_mask)), np.asarray(flax_mask))


def test_flax_dim_names_nested_and_renamed_modules():
    net = cnn()
    assert interop.flax_dim(net, "0.weight", 0) == 3
    assert interop.flax_dim(net, "0.weight", 0, names=NAMES) == 3
    assert interop.flax_dim(net, "4.weight", 1, names=NAMES) == 0


@pytest.mark.parametrize("dim", [4, 7, -5], ids=["dim4", "dim7", "dim-5"])
def test_flax_dim_rejects_a_dim_the_tensor_lacks(dim):
    """A Conv2d weight has dims -4..3; torch raises IndexError for any other (as jp's methods do)."""
    with pytest.raises(IndexError):
        interop.flax_dim(cnn(), "0.weight", dim)


def test_flax_dim_rejects_an_unknown_tensor():
    with pytest.raises(ValueError, match="0.kernel"):
        interop.flax_dim(cnn(), "0.kernel", 0)


# --------------------------------------------------------------------------
# flax_rules: the same masks on the Flax tree, every method
# --------------------------------------------------------------------------

SPECS = {
    "random-unstructured": jp.RandomUnstructured(0.4),
    "random-structured-dim0": jp.RandomStructured(0.25, dim=0),
    "random-structured-dim1": jp.RandomStructured(0.34, dim=1),
    "random-structured-dim-1": jp.RandomStructured(0.5, dim=-1),
    "l1-unstructured": jp.L1Unstructured(0.3),
    "l1-count": jp.L1Unstructured(7),
    "ln-structured-dim0": jp.LnStructured(0.25, n=2, dim=0),
    "ln-structured-dim1-n1": jp.LnStructured(0.34, n=1, dim=1),
    "ln-structured-inf-dim-1": jp.LnStructured(0.5, n=float("inf"), dim=-1),
}


def check_flax_rules(key: jax.Array, net: torch.nn.Module, rules: Any, names: dict[str, str] | None = None) -> None:
    params = interop.torch_to_flax(net, names=names)["params"]
    tree_masks = jp.prune_tree(key, params, interop.flax_rules(rules, net, names=names))
    torch_masks = interop.compute_module_masks(key, net, rules)
    assert_mask_trees_equal(tree_masks, interop.masks_to_flax(torch_masks, net, names=names))
    # prune_module installs exactly those masks.
    interop.prune_module(key, net, rules)
    _, installed = interop.read_pruned(net)
    assert_mask_trees_equal(tree_masks, interop.masks_to_flax(installed, net, names=names))


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_flax_rules_give_torch_masks_on_the_cnn(spec):
    unstructured_for_1d = spec if spec.PRUNING_TYPE == "unstructured" else jp.RandomUnstructured(0.25)
    rules = {"0.weight": spec, "4.weight": spec, "*.bias": unstructured_for_1d}
    check_flax_rules(jax.random.key(3), cnn(), rules, names=NAMES)


class Mixed(torch.nn.Module):
    """Every supported layer type in one module (the Flax side only needs the tree)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(10, 6)
        self.norm = _bn_stats(torch.nn.LayerNorm(6))
        self.c1 = torch.nn.Conv1d(6, 5, 3)
        self.b1 = _bn_stats(torch.nn.BatchNorm1d(5))
        self.c3 = torch.nn.Conv3d(2, 4, (2, 3, 2))
        self.b3 = _bn_stats(torch.nn.BatchNorm3d(4))
        self.blocks = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), _bn_stats(torch.nn.BatchNorm2d(6)),
                                          torch.nn.Linear(6, 3))
        self.t1, self.t2, self.t3 = (torch.nn.ConvTranspose1d(3, 4, 2), torch.nn.ConvTranspose2d(2, 3, (2, 3)),
                                     torch.nn.ConvTranspose3d(2, 2, 2))
        self.attn = torch.nn.MultiheadAttention(6, 2)
        with torch.no_grad():
            self.attn.in_proj_bias.uniform_(-1, 1)  # torch's zeros would tie every entry
        self.gn, self.rms = _bn_stats(torch.nn.GroupNorm(2, 4)), torch.nn.RMSNorm(5)


MIXED_RULES = {
    "emb.weight": jp.RandomStructured(0.3, dim=0),
    "norm.weight": jp.RandomUnstructured(0.5),
    "c1.weight": jp.LnStructured(0.4, n=2, dim=1),
    "c1.bias": jp.L1Unstructured(2),
    "b1.*": jp.RandomUnstructured(0.4),
    "c3.weight": jp.RandomStructured(0.5, dim=2),
    "b3.weight": jp.L1Unstructured(1),
    "blocks.0.weight": jp.RandomStructured(0.5, dim=1),
    "blocks.1.bias": jp.RandomUnstructured(0.5),
    "blocks.2.weight": jp.LnStructured(0.34, n=1, dim=0),
    "t2.weight": jp.LnStructured(0.34, n=2, dim=1),
    "attn.in_proj_weight": jp.L1Unstructured(0.4),
    "attn.out_proj.weight": jp.RandomStructured(0.5, dim=0),
    "gn.weight": jp.L1Unstructured(2),
}


def test_flax_rules_give_torch_masks_on_every_layer_type():
    check_flax_rules(jax.random.key(8), Mixed(), MIXED_RULES)


def test_flax_rules_with_renamed_modules_and_a_callable_rule():
    def rule(name: str, tensor: torch.Tensor) -> Any:
        if ".in_proj_" in name:  # split over three Flax leaves: L1 only
            return jp.L1Unstructured(0.3)
        if name.endswith("weight") and tensor.ndim > 1:
            return jp.RandomStructured(0.25, dim=0)
        return jp.RandomUnstructured(0.2) if name.endswith("bias") else None

    names = {"emb": "embed", "blocks.0": "conv", "blocks.2": "head", "c1": "stem.conv"}
    check_flax_rules(jax.random.key(1), Mixed(), rule, names=names)


def test_flax_rules_global_l1_gives_torch_global_masks():
    net = cnn()
    rules = {"*.weight": jp.GlobalUnstructured(0.5), "0.bias": jp.L1Unstructured(3)}
    check_flax_rules(None, net, rules, names=NAMES)
    twin = cnn()
    prune.global_unstructured([(twin[i], "weight") for i in (0, 1, 4)], prune.L1Unstructured, amount=0.5)
    for i in (0, 1, 4):
        assert torch.equal(twin[i].weight_mask, net[i].weight_mask)


def test_flax_rules_random_global_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="random GlobalUnstructured"):
        interop.flax_rules({"*.weight": jp.GlobalUnstructured(0.5, method="random")}, cnn())


def test_flax_rules_second_round_with_default_masks():
    """Iterating on the Flax side: rank the masked params (torch ranks orig * mask), pass the old masks."""
    net = cnn()
    params = interop.torch_to_flax(net, names=NAMES)["params"]
    first = {"0.weight": jp.L1Unstructured(0.3), "4.weight": jp.RandomUnstructured(0.4),
             "*.bias": jp.RandomUnstructured(2)}
    second = {"0.weight": jp.LnStructured(0.25, n=2, dim=0), "4.weight": jp.RandomStructured(0.3, dim=1),
              "1.weight": jp.L1Unstructured(2)}
    k1, k2 = jax.random.key(1), jax.random.key(2)
    m1 = jp.prune_tree(k1, params, interop.flax_rules(first, net, names=NAMES))
    interop.prune_module(k1, net, first)
    m2 = jp.prune_tree(k2, jp.apply_masks(params, m1), interop.flax_rules(second, net, names=NAMES), default_masks=m1)
    interop.prune_module(k2, net, second)
    _, installed = interop.read_pruned(net)
    merged = jax.tree.map(lambda new, old: old if new is None else new, m2, m1, is_leaf=lambda x: x is None)
    assert_mask_trees_equal(merged, interop.masks_to_flax(installed, net, names=NAMES))


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------


class WithScale(torch.nn.Module):
    """A custom nn.Parameter on a plain Module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.temperature = torch.nn.Parameter(torch.ones(1))


UNSUPPORTED = {
    "gru": (lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GRU(4, 3)), r"'1'.*GRU"),
    "custom-parameter": (WithScale, r"\(root\).*WithScale.*temperature"),
    "conv-transpose-groups": (lambda: torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 4, 3, groups=2)),
                              r"'0'.*ConvTranspose2d.*groups=2: Flax's ConvTranspose has no feature groups"),
    "attention-bias-kv": (lambda: torch.nn.Sequential(torch.nn.MultiheadAttention(4, 2, add_bias_kv=True)),
                          r"'0'.*MultiheadAttention.*add_bias_kv=True.*no bias_k/bias_v"),
    "nested-custom": (lambda: torch.nn.Sequential(torch.nn.Linear(2, 2), WithScale()), r"'1'.*WithScale"),
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED), ids=list(UNSUPPORTED))
def test_unsupported_layers_raise_naming_the_layer(kind):
    make, pattern = UNSUPPORTED[kind]
    module = make()
    with pytest.raises(ValueError, match=pattern):
        interop.torch_to_flax(module)
    with pytest.raises(ValueError, match=pattern):
        interop.flax_to_torch({"params": {}, "batch_stats": {}}, module)
    with pytest.raises(ValueError, match=pattern):
        interop.masks_to_flax({}, module)
    with pytest.raises(ValueError, match=pattern):
        interop.flax_rules({"*.weight": jp.L1Unstructured(0.5)}, module)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k


BAD_TREES: dict[str, tuple[Callable[[dict], None], type, str]] = {
    "kernel-shape": (lambda v: v["params"]["fc"].__setitem__("kernel", jnp.zeros((129, 10))), ValueError,
                     r"params\.fc\.kernel.*\(129, 10\).*'4\.weight'.*\(10, 128\)"),
    "kernel-transposed": (lambda v: v["params"]["fc"].__setitem__("kernel", jnp.zeros((10, 128))), ValueError,
                          r"params\.fc\.kernel"),
    "last-leaf-shape": (lambda v: v["batch_stats"]["bn"].__setitem__("var", jnp.ones(9)), ValueError,
                        r"batch_stats\.bn\.var"),
    "missing-leaf": (lambda v: v["params"]["conv"].pop("bias"), ValueError, r"params\.conv\.bias.*'0\.bias'"),
    "missing-layer": (lambda v: v["params"].pop("fc"), ValueError, r"params\.fc\.(kernel|bias)"),
    "missing-collection": (lambda v: v.pop("batch_stats"), ValueError, r"batch_stats\.bn\.mean"),
}


@pytest.mark.parametrize("case", list(BAD_TREES), ids=list(BAD_TREES))
def test_flax_to_torch_bad_trees_raise_and_write_nothing(case):
    corrupt, error, pattern = BAD_TREES[case]
    variables = jax.tree.map(lambda a: a * 2, interop.torch_to_flax(cnn(), names=NAMES))
    corrupt(variables)
    target = cnn(seed=3)
    interop.prune_module(None, target, {"4.weight": jp.L1Unstructured(0.5)})  # a pruned target too
    before = snapshot(target)
    with pytest.raises(error, match=pattern):
        interop.flax_to_torch(variables, target, names=NAMES)
    assert_unchanged(target, before)


def test_masks_to_flax_rejects_an_unknown_tensor():
    net = cnn()
    with pytest.raises(ValueError, match="'9.weight'"):
        interop.masks_to_flax({"9.weight": jnp.ones((2, 2), bool)}, net)


@pytest.mark.parametrize(
    "rules,error,pattern",
    [
        ({"9.weight": jp.L1Unstructured(0.5)}, ValueError, r"'9\.weight' matches no parameter"),
        ({"fc.weight": jp.L1Unstructured(0.5)}, ValueError, r"'fc\.weight'"),  # a Flax name, not the torch one
        ({"4.weight": "random"}, TypeError, r"'4\.weight'.*'random'"),
        ({"4.weight": prune.RandomUnstructured(0.5)}, TypeError, r"'4\.weight'"),
    ],
    ids=["unknown-pattern", "flax-name", "spec-a-string", "spec-a-torch-method"],
)
def test_flax_rules_bad_rules(rules, error, pattern):
    with pytest.raises(error, match=pattern):
        interop.flax_rules(rules, cnn())


def test_flax_rules_rule_for_a_non_floating_parameter():
    module = torch.nn.Sequential(torch.nn.Linear(4, 2))
    module[0].weight = torch.nn.Parameter(torch.ones(2, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match=r"'0\.weight'.*int32"):
        interop.flax_rules({"0.weight": jp.L1Unstructured(1)}, module)


def test_tensor_order_follows_the_module_not_string_hashing():
    """Suspected bug (minor): ``placements`` (and so ``torch_to_flax``, ``masks_to_torch``
    and which bad leaf ``flax_to_torch`` reports first) orders a layer's tensors by
    iterating a set of names, so the order changes with PYTHONHASHSEED; with seed 1
    a Linear gives ['bias', 'weight'] instead of the module's ['weight', 'bias']."""
    code = "import torch; from jaxprune import interop; print(list(interop.placements(torch.nn.Linear(2, 2))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONHASHSEED": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['weight', 'bias']"


# --------------------------------------------------------------------------
# The example
# --------------------------------------------------------------------------


def test_torch_to_flax_example_runs_and_reports_equal_masks_and_outputs():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "torch_to_flax_pruning.py"), "--seed", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # torch -> Flax: the seven pruned tensors, every mask equal, sparsities as the rules say.
    rows = re.findall(r"^\s+(\S+)\s+-> params\.(\S+)\s+\(.*?\)\s+sparsity\s+([\d.]+)%\s+masks equal: (\w+)$", out, re.M)
    assert [(r[0], r[1]) for r in rows] == [
        ("conv1.weight", "conv1.kernel"), ("conv1.bias", "conv1.bias"), ("bn1.bias", "bn1.bias"),
        ("conv2.weight", "conv2.kernel"), ("conv2.bias", "conv2.bias"), ("fc.weight", "fc.kernel"),
        ("fc.bias", "fc.bias")]
    assert all(r[3] == "True" for r in rows)
    assert {r[0]: float(r[2]) for r in rows}["fc.weight"] == 50.0
    diffs = re.findall(r"(torch vs Flax Linen|torch vs Flax NNX|Flax Linen vs torch)\s*: "
                       r"max abs diff (\S+) \((\w+)", out)
    assert [d[0] for d in diffs] == ["torch vs Flax Linen", "torch vs Flax NNX", "Flax Linen vs torch"]
    assert all(float(d[1]) <= 1e-5 and d[2] == "OK" for d in diffs)
    assert out.count("prune.is_pruned: True") == 2
    assert "conv1 filters -> kernel axis 3" in out
    installed = re.findall(r"^\s+(\S+_mask)\s+\(.*?\)\s+sparsity\s+[\d.]+%\s+equals the Flax mask: (\w+)$", out, re.M)
    assert len(installed) == 7 and all(eq == "True" for _, eq in installed)
    assert re.search(r"all-zero mask: \[\d+, \d+\] \(same as Flax: True\)", out)
    assert out.rstrip().endswith("all checks passed")


# --------------------------------------------------------------------------
# register_layout: other layer types, and the table it extends
# --------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """An empty registry for the test; the one before comes back afterwards."""
    from jaxprune.interop import _layouts

    monkeypatch.setattr(_layouts, "_REGISTERED", {})
    return _layouts


def group_norm(layer: torch.nn.Module, name: str, ndim: int) -> Any:
    return {"weight": ("params", "scale", ()), "bias": ("params", "bias", ())}.get(name)


class Affine(torch.nn.Module):
    """A custom layer: y = x @ w.T + b, Flax-side ``kernel`` (in, out) and ``bias``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n_out, n_in))
        self.b = torch.nn.Parameter(torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T + self.b


def affine(layer: torch.nn.Module, name: str, ndim: int) -> Any:
    return {"w": ("params", "kernel", (1, 0)), "b": ("params", "bias", ())}.get(name)


def test_a_registered_layer_converts_both_ways_and_computes_the_same(registry):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), _bn_stats(torch.nn.GroupNorm(2, 4)))
    built_in = interop.torch_to_flax(net, names={"0": "conv", "1": "norm"})
    interop.register_layout(torch.nn.GroupNorm, group_norm)  # replaces the built-in layout, the same one
    variables = interop.torch_to_flax(net, names={"0": "conv", "1": "norm"})
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"conv": {"kernel": (3, 3, 3, 4), "bias": (4,)}, "norm": {"scale": (4,), "bias": (4,)}}}
    assert jax.tree.all(jax.tree.map(jnp.array_equal, variables, built_in))

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
            return nn.GroupNorm(num_groups=2, epsilon=1e-5, name="norm")(x)

    x = images()
    np.testing.assert_allclose(np.moveaxis(np.asarray(Linen().apply(variables, nhwc(x))), -1, 1), torch_out(net, x),
                               atol=1e-5)
    torch.manual_seed(1)
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    interop.flax_to_torch(variables, target, names={"0": "conv", "1": "norm"})
    for name, tensor in net.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_a_registered_layer_carries_masks_flax_dims_and_flax_rules(registry):
    interop.register_layout(Affine, affine)
    torch.manual_seed(0)
    net = torch.nn.Sequential(Affine(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    assert interop.flax_dim(net, "0.w", 0) == 1
    rules = {"0.w": jp.RandomStructured(0.4, dim=0), "0.b": jp.RandomUnstructured(2), "2.weight": jp.LnStructured(
        0.5, n=1, dim=1)}
    check_flax_rules(jax.random.key(4), net, rules, names={"0": "affine"})
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    params = interop.torch_to_flax(net, names={"0": "affine"})["params"]
    out = jnp.maximum(jnp.asarray(x) @ params["affine"]["kernel"] + params["affine"]["bias"][None], 0)
    out = out @ params["2"]["kernel"] + params["2"]["bias"][None]
    np.testing.assert_allclose(np.asarray(out), torch_out(net, x), atol=1e-5)  # the pruned outputs


def test_register_layout_replaces_a_builtin_and_its_own_earlier_registration(registry):
    net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    interop.register_layout(torch.nn.Linear, lambda layer, name, ndim: ("params", name[0], (1, 0) if ndim == 2 else ()))
    assert jax.tree.map(jnp.shape, interop.torch_to_flax(net)["params"]) == {"0": {"w": (4, 2), "b": (2,)}}
    interop.register_layout(torch.nn.Linear, lambda layer, name, ndim: ("params", name.upper(), ()))
    assert jax.tree.map(jnp.shape, interop.torch_to_flax(net)["params"]) == {"0": {"WEIGHT": (2, 4), "BIAS": (2,)}}
    assert list(registry._REGISTERED) == [torch.nn.Linear]
    # A base type covers its subclasses, and the latest registration is looked up first.
    interop.register_layout(torch.nn.Module, lambda layer, name, ndim: ("params", "any", ()))
    with pytest.raises(ValueError, match=r"'0\.weight' and '0\.bias' both map to params\.0\.any"):
        interop.torch_to_flax(net)
@pytest.mark.parametrize("torch_type,mapper,pattern", [
    (3, affine, r"torch_type must be a torch\.nn\.Module subclass, got 3"),
    (torch.Tensor, affine, r"torch\.nn\.Module subclass, got <class 'torch\.Tensor'>"),
    (torch.nn.Linear(2, 2), affine, r"torch_type must be .*got Linear"),
    (Affine, "kernel", r"mapper must be a callable .*got 'kernel'"),
], ids=["int", "tensor-type", "instance", "mapper-a-string"])
def test_register_layout_refuses_bad_arguments(registry, torch_type, mapper, pattern):
    with pytest.raises(TypeError, match=pattern):
        interop.register_layout(torch_type, mapper)
    assert registry._REGISTERED == {}


@pytest.mark.parametrize("answer", [("params", "kernel"), ("params", "kernel", (0, 0)), ("params", "kernel", (0,)),
                                    ("", "kernel", ()), ("params", "", ()), ("params", "kernel", [1, 0]),
                                    ("params", 3, ()), ["params", "kernel", ()], ("params", "kernel", (True, False))],
                         ids=["two", "repeated-axis", "too-few-axes", "no-collection", "no-name", "list-perm",
                              "int-name", "a-list", "bool-perm"])
def test_a_registered_mapper_giving_a_bad_answer_raises_naming_it(registry, answer):
    interop.register_layout(Affine, lambda layer, name, ndim: answer)
    with pytest.raises(ValueError, match=r"Flax layout of Affine maps tensor 'w' \(2 dims\) to .*"
                                         r"expected \(collection, flax_name, perm\)"):
        interop.torch_to_flax(torch.nn.Sequential(Affine(3, 2)))


def test_the_unsupported_layer_error_lists_the_table(registry):
    gru = torch.nn.Sequential(torch.nn.GRU(2, 2))
    builtins = (r"Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, Linear, transformers "
                r"Conv1D, MultiheadAttention, BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm, GroupNorm, RMSNorm, "
                r"LlamaRMSNorm, Embedding")
    with pytest.raises(ValueError, match=rf"supported: {builtins}; interop\.register_layout adds one\)"):
        interop.torch_to_flax(gru)
    interop.register_layout(Affine, affine)
    interop.register_layout(torch.nn.GroupNorm, group_norm)
    interop.register_layout(torch.nn.Linear, affine)  # listed once, where it is looked up first
    with pytest.raises(ValueError, match=r"supported: Linear, GroupNorm, Affine, Conv1d, Conv2d, Conv3d, "
                                         r"ConvTranspose1d, .*, Embedding;"):
        interop.torch_to_flax(gru)


def test_mixed_holds_every_built_in_layer_type():
    """So a row added to the table is tested by the every-layer-type tests."""
    from jaxprune.interop import _layouts

    built_in = {t for types, _ in _layouts._builtin_layers() for t in types
                if not t.__module__.startswith("transformers")}  # those: tests/test_interop_architectures.py
    assert built_in <= {type(m) for m in Mixed().modules()}
