"""jaxprune.interop.one_shot: Wanda/SparseGPT/magnitude on torch modules from calibration batches.

The reference for every mask and weight is jaxprune's layer functions
(``jp.wanda_mask``, ``jp.sparsegpt``) on inputs captured here independently
(plain forward hooks, or the hand-computed activations of a small MLP).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.utils.prune as prune  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import interop  # noqa: E402
from jaxprune.interop import _one_shot  # noqa: E402

nn = torch.nn

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def mlp(seed: int = 0, widths: tuple[int, ...] = (16, 32, 8)) -> nn.Sequential:
    """Linear-ReLU-Linear (-ReLU-Linear...) with random biases."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.ReLU()] if i else []
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def batches(n: int = 3, rows: int = 24, features: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, features, generator=g) for _ in range(n)]


def stats_of(inputs: list[torch.Tensor]) -> jp.InputStats:
    """The statistics one_shot should accumulate: batch by batch, as it captures them."""
    stats = None
    for x in inputs:
        stats = jp.input_stats(jnp.asarray(x.detach().numpy()), stats, hessian=True)
    return stats


def captured(module: nn.Module, layer: nn.Module, data: list[Any]) -> list[torch.Tensor]:
    """The inputs ``layer`` reads when ``module`` runs on ``data`` (eval mode, no grad)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _, args, out: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for b in data:
                module(b)
    finally:
        handle.remove()
    return seen


def jax_of(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().numpy())


def np_of(t: Any) -> np.ndarray:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def snapshot(module: nn.Module) -> dict[str, Any]:
    """Everything one_shot may touch: values, parameter objects and their storage,
    buffers, hooks, attribute names, training flags."""
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "params": [(n, p, p.data_ptr(), p.requires_grad) for n, p in module.named_parameters()],
        "buffers": [n for n, _ in module.named_buffers()],
        "hooks": [(n, list(m._forward_pre_hooks.items()), list(m._forward_pre_hooks_with_kwargs),
                   list(m._forward_hooks.values())) for n, m in module.named_modules()],
        "plain": [(n, sorted(k for k in vars(m) if not k.startswith("_"))) for n, m in module.named_modules()],
        "training": [m.training for m in module.modules()],
    }


def assert_unchanged(module: nn.Module, before: dict[str, Any], *, pruned: bool = False) -> None:
    after = snapshot(module)
    assert list(after["state"]) == list(before["state"])
    for name, value in before["state"].items():
        assert torch.equal(after["state"][name], value), name
    assert len(after["params"]) == len(before["params"])
    for (n0, p0, ptr0, g0), (n1, p1, ptr1, g1) in zip(before["params"], after["params"]):
        assert (n0, ptr0, g0) == (n1, ptr1, g1) and p0 is p1
    for key in ("buffers", "hooks", "plain", "training"):
        assert after[key] == before[key], key
    assert prune.is_pruned(module) == pruned


# --------------------------------------------------------------------------
# Masks and weights equal the layer functions on the captured inputs
# --------------------------------------------------------------------------


def test_wanda_masks_equal_wanda_mask_on_the_captured_inputs():
    net, data = mlp(), batches()
    reference = copy.deepcopy(net)
    inputs1 = data
    net_out, masks = interop.one_shot(net, data, {"0.weight": jp.Wanda(0.5), "2.weight": jp.Wanda(nm=(2, 4))})
    assert net_out is net
    expected1 = jp.wanda_mask(jax_of(reference[0].weight), stats_of(inputs1), 0.5, in_axis=1)
    np.testing.assert_array_equal(np_of(masks["0.weight"]), np.asarray(expected1))
    # The second layer calibrates on the first one pruned (sequential).
    with torch.no_grad():
        reference[0].weight.mul_(masks["0.weight"])
    inputs2 = captured(reference, reference[2], data)
    expected2 = jp.wanda_mask(jax_of(reference[2].weight), stats_of(inputs2), nm=(2, 4), in_axis=1)
    np.testing.assert_array_equal(np_of(masks["2.weight"]), np.asarray(expected2))
    assert masks["0.weight"].dtype == torch.bool and masks["0.weight"].shape == (32, 16)
    assert int(masks["0.weight"].sum()) == 32 * 8  # exactly half of each row's 16 inputs kept
    assert int(masks["2.weight"].reshape(8, 8, 4).sum(-1).max()) == 2


def test_sparsegpt_weights_and_masks_equal_sparsegpt_on_the_captured_inputs():
    net, data = mlp(), batches()
    dense = net[0].weight.detach().clone()
    result = interop.one_shot(net, data, {"0.weight": jp.SparseGPT(0.5)})
    new, mask = jp.sparsegpt(jax_of(dense), stats_of(data), 0.5, in_axis=1)
    np.testing.assert_array_equal(np_of(result.masks["0.weight"]), np.asarray(mask))
    # torch's reparametrization: weight = weight_orig * weight_mask = SparseGPT's new weights.
    np.testing.assert_allclose(np_of(net[0].weight), np.asarray(new), rtol=1e-6, atol=1e-7)
    # weight_orig: the kept entries updated, the pruned ones as they were (torch's rule for _orig).
    orig = np_of(net[0].weight_orig)
    keep = np.asarray(mask)
    np.testing.assert_allclose(orig[keep], np.asarray(new)[keep], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(orig[~keep], dense.numpy()[~keep])
    assert not np.allclose(orig[keep], dense.numpy()[keep])  # SparseGPT did update the kept weights
    np.testing.assert_array_equal(np_of(net[0].weight_mask), keep.astype(np.float32))
    [layer] = result.layers
    assert (layer.path, layer.method, layer.stage) == ("0.weight", jp.SparseGPT(0.5), 0)
    assert layer.sparsity == 0.5
    expected_error = jp.relative_error(jax_of(dense), new, stats_of(data), in_axis=1)
    assert layer.error == pytest.approx(float(expected_error), rel=1e-6)


def test_masks_installed_with_torchs_reparametrization_and_remove_works():
    net, data = mlp(), batches()
    dense_param = net[0].weight
    _, masks = interop.one_shot(net, data, {"*.weight": jp.Wanda(0.5)})
    assert prune.is_pruned(net)
    assert net[0].weight_orig is dense_param  # torch's rule: _orig is the parameter itself
    assert [n for n, _ in net.named_parameters()] == ["0.bias", "0.weight_orig", "2.bias", "2.weight_orig"]
    assert [n for n, _ in net.named_buffers()] == ["0.weight_mask", "2.weight_mask"]
    hooks = list(net[0]._forward_pre_hooks.values())
    assert len(hooks) == 1 and isinstance(hooks[0], prune.CustomFromMask)
    x = batches(1, seed=5)[0]
    before = net(x)
    for i in (0, 2):
        prune.remove(net[i], "weight")
    assert not prune.is_pruned(net)
    np.testing.assert_array_equal(np_of(net[0].weight != 0), np_of(masks["0.weight"]))
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_write_weights_writes_the_pruned_values_without_reparametrization():
    net, data = mlp(), batches()
    twin = copy.deepcopy(net)
    param = net[0].weight
    _, masks = interop.one_shot(net, data, {"0.weight": jp.SparseGPT(0.5), "2.weight": jp.Wanda(0.5)},
                                write="weights")
    _, twin_masks = interop.one_shot(twin, data, {"0.weight": jp.SparseGPT(0.5), "2.weight": jp.Wanda(0.5)})
    assert not prune.is_pruned(net) and net[0].weight is param
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, i in (("0.weight", 0), ("2.weight", 2)):
        np.testing.assert_array_equal(np_of(masks[name]), np_of(twin_masks[name]))
        np.testing.assert_array_equal(np_of(net[i].weight), np_of(twin[i].weight))
        assert not net[i].weight[~masks[name]].any()


# --------------------------------------------------------------------------
# Sequential and parallel calibration
# --------------------------------------------------------------------------


def two_steps(spec: Any, net: nn.Sequential, data: list[torch.Tensor], sequential: bool) -> list[Any]:
    """By hand: prune the first layer on the batches, then the second on the first
    layer's outputs (of the pruned first layer when sequential)."""
    w1, w2 = jax_of(net[0].weight), jax_of(net[2].weight)
    new1, mask1 = spec.prune(w1, stats_of(data), in_axis=1)
    first = torch.from_numpy(np.array(new1)) if sequential else net[0].weight.detach()
    hidden = [torch.relu(torch.nn.functional.linear(x, first, net[0].bias.detach())) for x in data]
    new2, mask2 = spec.prune(w2, stats_of(hidden), in_axis=1)
    return [(new1, mask1), (new2, mask2)]


@pytest.mark.parametrize("spec", [jp.Wanda(0.5), jp.SparseGPT(0.5)], ids=["wanda", "sparsegpt"])
def test_sequential_equals_the_hand_computed_two_steps_and_parallel_differs(spec):
    data = batches()
    results = {}
    for sequential in (True, False):
        net = mlp()
        expected = two_steps(spec, mlp(), data, sequential)
        result = interop.one_shot(net, data, {"*.weight": spec}, sequential=sequential, write="weights")
        for (new, mask), (name, i) in zip(expected, (("0.weight", 0), ("2.weight", 2))):
            np.testing.assert_array_equal(np_of(result.masks[name]), np.asarray(mask))
            np.testing.assert_allclose(np_of(net[i].weight), np.asarray(new), rtol=1e-6, atol=1e-7)
        assert [layer.stage for layer in result.layers] == ([0, 1] if sequential else [0, 0])
        results[sequential] = result
    # The second layer's inputs differ, and so does its mask; the first layer's do not.
    np.testing.assert_array_equal(np_of(results[True].masks["0.weight"]), np_of(results[False].masks["0.weight"]))
    assert (results[True].masks["2.weight"] != results[False].masks["2.weight"]).any()


class Attention(nn.Module):
    """q/k/v projections of one input (k through a view made twice), and an output projection."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.side = nn.Linear(width, width)
        self.tail_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x.view(x.shape)), self.v(x)
        attn = torch.softmax(q @ k.transpose(-1, -2) / 4, -1) @ v
        out = self.o(attn) + self.side(x * 2)  # x * 2: another tensor, another stage
        self.tail_calls += 1
        return out


def test_layers_reading_one_tensor_form_one_stage_and_passes_stop_after_the_stage():
    torch.manual_seed(0)
    net, data = Attention(), batches(4, rows=6)
    result = interop.one_shot(net, data, {"[qkvo].weight": jp.Wanda(0.5), "side.weight": jp.SparseGPT(0.25)},
                              write="weights")
    stages = {layer.path: layer.stage for layer in result.layers}
    assert stages == {"q.weight": 0, "k.weight": 0, "v.weight": 0, "o.weight": 1, "side.weight": 2}
    assert [layer.path for layer in result.layers] == ["q.weight", "k.weight", "v.weight", "o.weight", "side.weight"]
    # Only the first pass (finding the stages) runs the whole forward: the others stop
    # once their stage has read its inputs.
    assert net.tail_calls == 1
    # side reads no pruned layer's output: a later stage than jp.one_shot's data-flow
    # stage 0, the same inputs, so the same result as from the dense model.
    torch.manual_seed(0)
    dense = Attention()
    parallel = interop.one_shot(dense, data, {"side.weight": jp.SparseGPT(0.25)}, write="weights")
    assert torch.equal(result.masks["side.weight"], parallel.masks["side.weight"])
    assert torch.equal(net.side.weight, dense.side.weight)


class InPlace(nn.Module):
    """The second layer reads the first one's input after an in-place change that
    depends on the first one's output: the same tensor object, but a later stage."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        h = self.fc1(x)
        x.add_(h)
        return self.fc2(x)


def test_a_tensor_changed_in_place_between_two_layers_starts_a_new_stage():
    net, data = InPlace(), batches(2)
    reference = copy.deepcopy(net)
    result = interop.one_shot(net, data, {"*.weight": jp.Wanda(0.5)})
    assert [layer.stage for layer in result.layers] == [0, 1]
    with torch.no_grad():
        reference.fc1.weight.mul_(result.masks["fc1.weight"])
    expected = jp.wanda_mask(jax_of(reference.fc2.weight), stats_of(captured(reference, reference.fc2, data)), 0.5,
                             in_axis=1)
    np.testing.assert_array_equal(np_of(result.masks["fc2.weight"]), np.asarray(expected))


def test_stage_zero_reads_the_dense_model_and_later_stages_the_pruned_one():
    torch.manual_seed(0)
    net, data = Attention(), batches(2, rows=6)
    reference = copy.deepcopy(net)
    _, masks = interop.one_shot(net, data, {"q.weight": jp.Wanda(0.5), "o.weight": jp.Wanda(0.5)})
    with torch.no_grad():
        reference.q.weight.mul_(masks["q.weight"])
    expected = jp.wanda_mask(jax_of(reference.o.weight), stats_of(captured(reference, reference.o, data)), 0.5,
                             in_axis=1)
    np.testing.assert_array_equal(np_of(masks["o.weight"]), np.asarray(expected))


# --------------------------------------------------------------------------
# Magnitude rules, batches of several forms, progress
# --------------------------------------------------------------------------


def test_magnitude_rules_prune_any_parameter_with_errors_where_inputs_exist():
    net, data = mlp(), batches()
    twin = copy.deepcopy(net)
    rules = {"0.weight": jp.L1Unstructured(0.5), "*.bias": jp.L1Unstructured(0.25)}
    result = interop.one_shot(net, data, rules)
    interop.prune_module(None, twin, rules)
    for name in ("0.weight", "0.bias", "2.bias"):
        module, attr = name.split(".")
        np.testing.assert_array_equal(np_of(result.masks[name]), np_of(getattr(twin[int(module)], attr + "_mask") > 0))
    layers = {layer.path: layer for layer in result.layers}
    assert math.isnan(layers["0.bias"].error) and math.isnan(layers["2.bias"].error)
    w = jax_of(twin[0].weight_orig)
    expected = jp.relative_error(w, jnp.where(jax_of(twin[0].weight_mask) > 0, w, 0), stats_of(data), in_axis=1)
    assert layers["0.weight"].error == pytest.approx(float(expected), rel=1e-6)
    assert layers["0.bias"].sparsity == 0.25 and layers["0.weight"].sparsity == 0.5
    # Parameters without a place in the data flow are pruned before any pass (sequential),
    # reported as stage -1 (as jp.one_shot does).
    assert [(layer.path, layer.stage) for layer in result.layers] == [("0.bias", -1), ("2.bias", -1), ("0.weight", 0)]


def test_report_sparsity_is_the_exact_fraction_as_in_jp_one_shot():
    """2 of 3 pruned is reported as the float nearest 2/3 (``1.0 - 1/3`` rounds
    twice: 0.6666666666666667), as jp.one_shot reports it."""
    net = mlp(widths=(16, 3))
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([3.0, 1.0, 2.0]))
    result = interop.one_shot(net, batches(), {"0.bias": jp.L1Unstructured(2)})
    np.testing.assert_array_equal(np_of(result.masks["0.bias"]), [True, False, False])
    (layer,) = result.layers
    assert layer.sparsity == 2 / 3 and type(layer.sparsity) is float
    params = {"w": jnp.ones((16, 3)), "b": jnp.array([3.0, 1.0, 2.0])}
    flax = jp.one_shot(lambda p, x: x @ p["w"] + p["b"][None], params, [jnp.ones((2, 16))],
                       {"b": jp.L1Unstructured(2)})
    assert flax.layers[0].sparsity == layer.sparsity


def test_global_magnitude_rules_group_by_pattern_as_prune_module():
    net, data = mlp(widths=(16, 32, 8, 4)), batches()
    twin = copy.deepcopy(net)
    magnitude = {"0.weight": jp.GlobalUnstructured(0.5), "2.weight": jp.GlobalUnstructured(0.5)}
    _, masks = interop.one_shot(net, data, {**magnitude, "4.weight": jp.Wanda(0.5)})
    interop.prune_module(None, twin, magnitude)
    for name, i in (("0.weight", 0), ("2.weight", 2)):  # two patterns: two groups, half of each pruned
        np.testing.assert_array_equal(np_of(masks[name]), np_of(twin[i].weight_mask > 0))
        assert int(masks[name].sum()) * 2 == masks[name].numel()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.a(x) * scale + self.b(y)


def test_tuple_and_dict_batches_are_unpacked():
    data = batches(2, rows=5, features=8)
    ys = batches(2, rows=5, features=8, seed=9)
    rules = {"*.weight": jp.Wanda(0.5)}
    _, as_tuples = interop.one_shot(TwoInputs(), [(x, y) for x, y in zip(data, ys)], rules)
    _, as_dicts = interop.one_shot(TwoInputs(), [{"x": x, "y": y, "scale": 2.0} for x, y in zip(data, ys)], rules)
    net = TwoInputs()
    for name, inputs in (("a.weight", data), ("b.weight", ys)):
        layer = getattr(net, name[0])
        expected = np.asarray(jp.wanda_mask(jax_of(layer.weight), stats_of(inputs), 0.5, in_axis=1))
        np.testing.assert_array_equal(np_of(as_tuples[name]), expected)
        np.testing.assert_array_equal(np_of(as_dicts[name]), expected)


def test_progress_logs_a_line_per_layer_or_calls_back(caplog):
    heard = []
    result = interop.one_shot(mlp(), batches(), {"*.weight": jp.Wanda(0.5)}, progress=heard.append)
    assert heard == list(result.layers)
    with caplog.at_level(logging.INFO, logger="jaxprune"):
        interop.one_shot(mlp(), batches(), {"*.weight": jp.Wanda(0.5)}, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "jaxprune"]
    assert len(lines) == 2 and lines[0].startswith("one_shot: 0.weight (Wanda(") and "50.00% pruned" in lines[0]


def test_training_flags_are_put_back_and_dropout_is_off_during_calibration():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 8)).train()
    twin = copy.deepcopy(net)
    data = batches()
    interop.one_shot(net, data, {"*.weight": jp.Wanda(0.5)})
    interop.one_shot(twin, data, {"*.weight": jp.Wanda(0.5)})
    assert all(m.training for m in net.modules())
    torch.testing.assert_close(net[3].weight_mask, twin[3].weight_mask, rtol=0, atol=0)


# --------------------------------------------------------------------------
# transformers' Conv1D (GPT-2)
# --------------------------------------------------------------------------


def flax_name(name: str) -> str:
    """The Flax path of a Linear / Conv1D weight or bias (``torch_to_flax``'s layout)."""
    return name.removesuffix(".weight") + ".kernel" if name.endswith(".weight") else name


def flax_leaf(tree: dict, name: str) -> Any:
    for part in flax_name(name).split("."):
        tree = tree[part]
    return tree


def assert_same_as_flax(torch_net: nn.Module, torch_result: Any, flax_result: Any, names: list[str]) -> None:
    """Masks equal and weights close (the ports compute the activations in another
    order: last-bit differences), the same stages, the same order of reports."""
    new_params, flax_masks = flax_result
    ported = interop.torch_to_flax(torch_net)["params"]  # what the pruned torch module computes with
    carried = interop.masks_to_flax(torch_result.masks, torch_net)
    for name in names:
        np.testing.assert_array_equal(np.asarray(flax_leaf(carried, name)), np.asarray(flax_leaf(flax_masks, name)),
                                      err_msg=name)
        np.testing.assert_allclose(np.asarray(flax_leaf(ported, name)), np.asarray(flax_leaf(new_params, name)),
                                   rtol=2e-4, atol=2e-5, err_msg=name)
    assert [(flax_name(r.path), r.method, r.stage) for r in torch_result.layers] == \
        [(r.path, r.method, r.stage) for r in flax_result.layers]
    for ours, theirs in zip(torch_result.layers, flax_result.layers):
        assert ours.sparsity == theirs.sparsity  # both exact counts of equal masks
        assert ours.error == pytest.approx(theirs.error, rel=1e-3, abs=1e-6) or math.isnan(ours.error)


@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "parallel"])
def test_an_mlp_gives_what_jp_one_shot_gives_on_its_flax_port(sequential):
    net, data = mlp(), batches()
    params = interop.torch_to_flax(net)["params"]

    def port(p: dict, x: jnp.ndarray) -> jnp.ndarray:
        h = jnp.maximum(x @ p["0"]["kernel"] + p["0"]["bias"][None], 0)
        return h @ p["2"]["kernel"] + p["2"]["bias"][None]

    rules = {"0.weight": jp.SparseGPT(0.5), "2.weight": jp.Wanda(0.5), "0.bias": jp.L1Unstructured(0.5)}
    ours = interop.one_shot(net, data, rules, sequential=sequential)
    theirs = jp.one_shot(port, params, [jax_of(x) for x in data], {flax_name(k): v for k, v in rules.items()},
                         sequential=sequential)
    assert_same_as_flax(net, ours, theirs, list(rules))


def gpt2_port(config: Any) -> Any:
    """transformers' GPT-2 forward in JAX over ``torch_to_flax``'s parameters."""
    heads, eps = config.n_head, config.layer_norm_epsilon

    def norm(x: jnp.ndarray, p: dict) -> jnp.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps) * p["scale"][None, None] + p["bias"][None, None]

    def dense(x: jnp.ndarray, p: dict) -> jnp.ndarray:
        return x @ p["kernel"] + p["bias"][None, None]

    def split(x: jnp.ndarray) -> jnp.ndarray:  # (b, t, e) -> (b, heads, t, e / heads)
        return x.reshape(*x.shape[:2], heads, -1).transpose(0, 2, 1, 3)

    def forward(p: dict, ids: jnp.ndarray) -> jnp.ndarray:
        t = p["transformer"]
        length = ids.shape[1]
        h = t["wte"]["embedding"][ids] + t["wpe"]["embedding"][jnp.arange(length)][None]
        causal = jnp.tril(jnp.ones((length, length), bool))
        for i in range(config.n_layer):
            block = t["h"][str(i)]
            q, k, v = (split(z) for z in jnp.split(dense(norm(h, block["ln_1"]), block["attn"]["c_attn"]), 3, -1))
            scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(jnp.float32(q.shape[-1]))
            weights = jax.nn.softmax(jnp.where(causal[None, None], scores, jnp.finfo(jnp.float32).min), -1)
            attended = (weights @ v).transpose(0, 2, 1, 3).reshape(h.shape)
            h = h + dense(attended, block["attn"]["c_proj"])
            m = jax.nn.gelu(dense(norm(h, block["ln_2"]), block["mlp"]["c_fc"]), approximate=True)
            h = h + dense(m, block["mlp"]["c_proj"])
        return norm(h, t["ln_f"]) @ p["lm_head"]["kernel"]

    return forward


def test_gpt2_conv1d_layers_in_their_stages_and_as_jp_one_shot_on_the_flax_port():
    pytest.importorskip("transformers")
    from _torch_models import gpt2_tiny

    net = gpt2_tiny()
    reference = copy.deepcopy(net)
    params = interop.torch_to_flax(net)["params"]
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 1000, (2, 12), generator=g) for _ in range(2)]
    port = gpt2_port(net.config)
    with torch.no_grad():  # the port is the model: logits agree
        np.testing.assert_allclose(np.asarray(port(params, jax_of(data[0]))), np_of(net(data[0]).logits),
                                   rtol=1e-4, atol=1e-4)
    # One SparseGPT layer (in_axis 0: its own compilation), Wanda elsewhere.
    rules = {"transformer.h.0.attn.c_attn.weight": jp.SparseGPT(0.5), "*.attn.c_attn.weight": jp.Wanda(0.5),
             "*.mlp.c_fc.weight": jp.Wanda(0.5)}
    result = interop.one_shot(net, data, rules)
    names = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight",
             "transformer.h.1.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"]
    assert [(layer.path, layer.stage) for layer in result.layers] == list(zip(names, range(4)))
    assert prune.is_pruned(net.transformer.h[0].mlp.c_fc)
    # Stage 0 calibrates on the dense model: Conv1D's weight is (in, out), in_axis 0.
    layer = reference.transformer.h[0].attn.c_attn
    new, mask = jp.sparsegpt(jax_of(layer.weight), stats_of(captured(reference, layer, data)), 0.5, in_axis=0)
    np.testing.assert_array_equal(np_of(result.masks[names[0]]), np.asarray(mask))
    np.testing.assert_allclose(np_of(net.transformer.h[0].attn.c_attn.weight), np.asarray(new), rtol=1e-5,
                               atol=1e-6)
    assert result.masks[names[1]].shape == (64, 256)
    assert int(result.masks[names[1]].sum(0).max()) == 32  # per output: half of its 64 inputs
    # The whole model as jp.one_shot prunes the Flax port with the same batches.
    theirs = jp.one_shot(port, params, [jax_of(x) for x in data], {flax_name(k): v for k, v in rules.items()})
    assert_same_as_flax(net, result, theirs, names)


# --------------------------------------------------------------------------
# All or nothing
# --------------------------------------------------------------------------


def test_an_error_after_a_stage_was_pruned_leaves_the_module_as_it_was():
    net, data = mlp(), batches()
    before = snapshot(net)
    heard = []

    def fail_on_second(layer: Any) -> None:
        heard.append(layer)
        if len(heard) == 3:  # 0.bias, then 0.weight (its pruned values in place for stage 1), then 2.weight
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        interop.one_shot(net, data, {"*.weight": jp.SparseGPT(0.5), "0.bias": jp.L1Unstructured(0.5)},
                         progress=fail_on_second)
    assert_unchanged(net, before)


class Guard(nn.Module):
    """Refuses activations above a bound (a batch that only a later stage reaches)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > 1e3:
            raise OverflowError(f"activation {float(x.abs().max()):.3g} too large")
        return x


def test_a_batch_rejected_in_a_later_stage_leaves_the_module_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), Guard(), nn.Linear(32, 8))
    data = batches()
    data[2] = data[2] * 1e5
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"rejected batch 2 .*OverflowError: activation .* too large"):
        interop.one_shot(net, data, {"*.weight": jp.Wanda(0.5)})
    assert_unchanged(net, before)


def test_a_failure_while_installing_masks_leaves_the_module_as_it_was(monkeypatch):
    net, data = mlp(), batches()
    before = snapshot(net)
    installs = []
    real = _one_shot.install_mask

    def flaky(sub: nn.Module, name: str, mask: torch.Tensor) -> None:
        installs.append(name)
        if len(installs) == 2:
            raise MemoryError("no room")
        real(sub, name, mask)

    monkeypatch.setattr(_one_shot, "install_mask", flaky)
    with pytest.raises(MemoryError, match="no room"):
        interop.one_shot(net, data, {"*.weight": jp.SparseGPT(0.5)})
    assert len(installs) == 2
    assert_unchanged(net, before)


def test_a_hessian_not_positive_definite_in_a_later_stage_leaves_the_module_as_it_was():
    net = mlp()
    before = snapshot(net)
    # 3 rows for 32 input features: a singular Hessian, and no damping.
    with pytest.raises(ValueError, match=r"'2.weight' \(SparseGPT.*\): the Hessian of the inputs is not positive "
                                         r"definite after damping with damp=0.0: raise damp"):
        interop.one_shot(net, batches(1, rows=3),
                         {"0.weight": jp.SparseGPT(0.5), "2.weight": jp.SparseGPT(0.5, damp=0.0)})
    assert_unchanged(net, before)


# --------------------------------------------------------------------------
# Bad input: clear errors, nothing changed
# --------------------------------------------------------------------------


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used, self.spare = nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


def tied() -> nn.Module:
    net = mlp(widths=(16, 16, 16))
    net[2].weight = net[0].weight
    return net


def pruned_first() -> nn.Module:
    net = mlp()
    prune.l1_unstructured(net[0], "weight", 0.5)
    return net


def conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(16, 8, 1), nn.Flatten(), nn.Linear(8, 4))


BAD = [
    ("pattern", mlp, batches(), {"fc9.*": jp.Wanda(0.5)}, {}, ValueError, "rule pattern 'fc9.*' matches no parameter"),
    ("bias", mlp, batches(), {"0.bias": jp.Wanda(0.5)}, {}, ValueError,
     r"'0.bias' is the 'bias' of a Linear; supported layers: torch.nn.Linear and transformers' Conv1D"),
    ("conv", conv, [torch.randn(2, 16, 1)], {"0.weight": jp.SparseGPT(0.5)}, {}, ValueError,
     r"SparseGPT.* needs the inputs of a matmul weight, but '0.weight' is the 'weight' of a Conv1d; supported"),
    ("value", mlp, batches(), {"0.weight": "wanda"}, {}, TypeError, r"expected jp.Wanda\(...\), jp.SparseGPT"),
    ("factory", mlp, batches(), {"0.weight": jp.L1Unstructured}, {}, TypeError, "expected jp.Wanda"),
    ("none", mlp, batches(), {"0.weight": None}, {}, ValueError, "the rules prune no parameter"),
    ("rules", mlp, batches(), ["0.weight"], {}, TypeError, "rules must be a dict of pattern -> spec or a callable"),
    ("pruned", pruned_first, batches(), {"0.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"'0.weight' is already pruned .* call torch.nn.utils.prune.remove"),
    ("tied", tied, batches(), {"2.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"'2.weight' is the same tensor as '0.weight' \(tied weights\)"),
    ("empty", mlp, [], {"0.weight": jp.Wanda(0.5)}, {}, ValueError, "batches is empty"),
    ("generator", mlp, (b for b in []), {"0.weight": jp.Wanda(0.5)}, {}, ValueError, "batches is empty"),
    ("tensor", mlp, torch.randn(4, 16), {"0.weight": jp.Wanda(0.5)}, {}, TypeError,
     r"got a tensor of shape \(4, 16\); for one batch pass \[batch\]"),
    ("iterable", mlp, 3, {"0.weight": jp.Wanda(0.5)}, {}, TypeError,
     "batches must be an iterable of batches, got int"),
    ("rejected", mlp, [torch.randn(4, 16), torch.randn(4, 15)], {"0.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"the module rejected batch 1 \(a float32 tensor of shape \(4, 15\)\): RuntimeError"),
    ("rejected0", mlp, [torch.randn(4, 15)], {"2.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"the module rejected batch 0"),
    ("nan", mlp, batches(2) + [torch.full((4, 16), math.nan)], {"0.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"the inputs of '0.weight' on batch 2: .*NaN"),
    ("inf", mlp, [torch.full((4, 16), math.inf)], {"0.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"the inputs of '0.weight' on batch 0 are not finite"),
    ("write", mlp, batches(), {"0.weight": jp.Wanda(0.5)}, {"write": "inplace"}, ValueError,
     r"write must be one of \('reparametrize', 'weights'\), got 'inplace'"),
    ("sequential", mlp, batches(), {"0.weight": jp.Wanda(0.5)}, {"sequential": "no"}, TypeError,
     "sequential must be True or False, got 'no'"),
    ("progress", mlp, batches(), {"0.weight": jp.Wanda(0.5)}, {"progress": "yes"}, TypeError,
     "progress must be None, a bool or a callable"),
    ("unused", Unused, batches(), {"*.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"'spare.weight': its layer \(Linear\) was not called during the forward pass on batch 0"),
    ("twice", Twice, batches(), {"fc.weight": jp.Wanda(0.5)}, {}, ValueError,
     r"'fc.weight': its layer \(Linear\) is called more than once in one forward pass"),
    ("key", mlp, batches(), {"0.weight": jp.RandomUnstructured(0.5)}, {}, jp.KeyRequiredError,
     r"is random .* pass a PRNG key"),
]


@pytest.mark.parametrize(("make", "data", "rules", "kwargs", "error", "match"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_raises_a_clear_error_and_changes_nothing(make, data, rules, kwargs, error, match):
    net = make()
    before = snapshot(net)
    pruned = prune.is_pruned(net)
    with pytest.raises(error, match=match):
        interop.one_shot(net, data, rules, **kwargs)
    assert_unchanged(net, before, pruned=pruned)


def test_not_a_module_is_refused():
    with pytest.raises(TypeError, match="one_shot: expected a torch.nn.Module, got a dict"):
        interop.one_shot({"weight": torch.ones(2, 2)}, batches(), {"weight": jp.Wanda(0.5)})


def test_unused_layer_with_a_magnitude_rule_is_pruned_without_an_error_figure():
    net = Unused()
    result = interop.one_shot(net, batches(), {"*.weight": jp.L1Unstructured(0.5)})
    assert [(layer.path, layer.stage) for layer in result.layers] == [("spare.weight", -1), ("used.weight", 0)]
    layers = {layer.path: layer for layer in result.layers}
    assert math.isnan(layers["spare.weight"].error) and not math.isnan(layers["used.weight"].error)
    assert int(net.spare.weight_mask.sum()) == 64


def test_the_random_magnitude_baseline_draws_from_the_key():
    masks = [interop.one_shot(mlp(), batches(), {"0.weight": jp.RandomUnstructured(0.5)}, key=jax.random.key(s))[1]
             for s in (0, 0, 1)]
    assert torch.equal(masks[0]["0.weight"], masks[1]["0.weight"])
    assert not torch.equal(masks[0]["0.weight"], masks[2]["0.weight"])
