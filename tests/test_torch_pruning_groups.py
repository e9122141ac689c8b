"""channel_groups against Torch-Pruning's DependencyGraph on a torch CNN with residual blocks.

The torch model (conv-BN-relu stem, a basic block with an identity shortcut, one with a
projection shortcut, flatten -> linear) is converted by `jaxprune.interop.torch_to_flax`
into a Flax NNX twin with the same layer names. Torch-Pruning's groups, written in Flax
paths and axes, must be the groups `jp.channel_groups` finds in the twin; with the same
importance (the sum of squared weights over the group) both keep the same channels, and
Torch-Pruning's physically pruned model converts to the twin shrunk by `jp.shrink_model`.

Torch-Pruning is optional (``pip install torch-pruning``): the file is skipped without it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tp = pytest.importorskip("torch_pruning")

from _group_models import (  # noqa: E402
    G,
    blocks,
    group_key,
    one_to_one,
    reference_masked,
    reference_shrunk,
    shapes,
    with_state,
)
from flax import nnx  # noqa: E402
from torch import nn  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import interop  # noqa: E402

# ---------------------------------------------------------------- the torch model and its twin


class TorchBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(mid)
        self.conv_b = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.proj: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.proj = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
            self.proj_bn = nn.BatchNorm2d(cout)

    def forward(self, x: Any) -> Any:
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        return torch.relu(y + shortcut)


class TorchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem_conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.b1 = TorchBlock(8, 4, 8, 1)
        self.b2 = TorchBlock(8, 6, 12, 2)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x: Any) -> Any:
        x = torch.relu(self.stem_bn(self.stem_conv(x)))
        return self.fc(torch.flatten(self.b2(self.b1(x)), 1))


def torch_net(seed: int = 0) -> TorchNet:
    """Random weights, random BN affine parameters; running statistics left at (0, 1), so that
    jaxprune's l2 (which also sums BN mean and var) ranks channels as Torch-Pruning does."""
    torch.manual_seed(seed)
    net = TorchNet()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.2)
    return net.eval()


PAD = ((1, 1), (1, 1))  # torch's padding=1 (SAME would pad 0/1 at stride 2)


class TwinBlock(nnx.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, *, rngs: nnx.Rngs) -> None:
        self.conv_a = nnx.Conv(cin, mid, (3, 3), strides=stride, padding=PAD, use_bias=False, rngs=rngs)
        self.bn_a = nnx.BatchNorm(mid, use_running_average=True, rngs=rngs)
        self.conv_b = nnx.Conv(mid, cout, (3, 3), padding=PAD, use_bias=False, rngs=rngs)
        self.bn_b = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        if stride != 1 or cin != cout:
            self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, padding="VALID", use_bias=False, rngs=rngs)
            self.proj_bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        else:
            self.proj = nnx.data(None)
            self.proj_bn = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        return nnx.relu(y + shortcut)


class Twin(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.stem_conv = nnx.Conv(3, 8, (3, 3), padding=PAD, use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.b1 = TwinBlock(8, 4, 8, 1, rngs=rngs)
        self.b2 = TwinBlock(8, 6, 12, 2, rngs=rngs)
        self.fc = nnx.Linear(12 * 4 * 4, 5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # NHWC
        x = self.b2(self.b1(nnx.relu(self.stem_bn(self.stem_conv(x)))))
        x = jnp.transpose(x, (0, 3, 1, 2))  # flatten in torch's (C, H, W) order
        return self.fc(x.reshape(x.shape[0], -1))


def flax_values(net: nn.Module) -> dict[str, Any]:
    """torch_to_flax's params and batch_stats in one tree: NNX keeps a BatchNorm's four leaves together."""
    variables = interop.torch_to_flax(net)

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if k in out else v
        return out

    return merge(variables["params"], variables.get("batch_stats", {}))


def twin_of(net: nn.Module) -> Twin:
    return with_state(nnx.eval_shape(lambda: Twin(rngs=nnx.Rngs(0))), flax_values(net))


def images(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32)


def nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(np.moveaxis(x, 1, -1))


def torch_out(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def bn(prefix: str) -> list[tuple[str, int]]:
    return [(f"{prefix}.{leaf}", 0) for leaf in ("scale", "bias", "mean", "var")]


# The groups by hand (as tests/_group_models.py writes them): flatten after the transpose to
# NCHW gives channel c the 16 positions c*16 .. c*16+15 of fc's input axis.
EXPECTED = (
    G(
        8,
        True,
        one_to_one(
            8,
            ("stem_conv.kernel", 3),
            *bn("stem_bn"),
            ("b1.conv_a.kernel", 2),
            ("b1.conv_b.kernel", 3),
            *bn("b1.bn_b"),
            ("b2.conv_a.kernel", 2),
            ("b2.proj.kernel", 2),
        ),
        name="residual",
    ),
    G(4, True, one_to_one(4, ("b1.conv_a.kernel", 3), *bn("b1.bn_a"), ("b1.conv_b.kernel", 2)), name="b1"),
    G(6, True, one_to_one(6, ("b2.conv_a.kernel", 3), *bn("b2.bn_a"), ("b2.conv_b.kernel", 2)), name="b2"),
    G(
        12,
        True,
        one_to_one(12, ("b2.conv_b.kernel", 3), *bn("b2.bn_b"), ("b2.proj.kernel", 3), *bn("b2.proj_bn"))
        | {("fc.kernel", 0, 16)},
        positions={("fc.kernel", 0): blocks(12, 16)},
        name="out",
    ),
)

# ---------------------------------------------------------------- Torch-Pruning's groups in Flax terms


def _flax_axes(name: str, module: nn.Module, handler: str) -> list[tuple[str, int]]:
    """The Flax (path, axis) pairs a Torch-Pruning dependency prunes (none for parameter-free ops)."""
    out = handler == "prune_out_channels"
    if isinstance(module, nn.Conv2d):  # OIHW -> HWIO
        return [(f"{name}.kernel", 3 if out else 2)] + (
            [(f"{name}.bias", 0)] if out and module.bias is not None else []
        )
    if isinstance(module, nn.Linear):  # (out, in) -> (in, out)
        return [(f"{name}.kernel", 1), (f"{name}.bias", 0)] if out else [(f"{name}.kernel", 0)]
    if isinstance(module, nn.BatchNorm2d):
        return bn(name)
    return []


def tp_groups(net: nn.Module) -> list[dict[str, Any]]:
    """Torch-Pruning's groups (the output layer ignored: its channels are the logits), each as
    ``{"root": module, "size": n, "positions": {(path, axis): ((positions of channel c), ...)}}``."""
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.from_numpy(images()))
    names = {module: name for name, module in net.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=[net.fc]):
        root = group[0].dep.target.module
        pruner = graph.get_pruner_of_module(root)
        size = pruner.get_out_channels(root)
        positions: dict[tuple[str, int], list[tuple[int, ...]]] = {}
        for c in range(size):  # one channel at a time: the positions it owns in every member
            for dep, idxs in graph.get_pruning_group(root, pruner.prune_out_channels, [c]):
                module = dep.target.module
                for member in _flax_axes(names.get(module, ""), module, dep.handler.__name__):
                    positions.setdefault(member, []).append(tuple(sorted(int(i) for i in idxs)))
        groups.append({"root": root, "size": size, "positions": {k: tuple(v) for k, v in positions.items()}})
    return groups


def tp_key(group: dict[str, Any]) -> tuple[int, bool, frozenset[tuple[str, int, int]]]:
    members = frozenset((path, axis, len(rows[0])) for (path, axis), rows in group["positions"].items())
    return (group["size"], True, members)


def tp_plans(net: nn.Module, x: np.ndarray) -> dict[str, list[int]]:
    """Torch-Pruning's choice, ``{root module name: pruned output channels}``: the lowest half of each
    group by the same importance as jaxprune's l2 (squared weights summed over the group, biases and
    BN affine parameters included; BN running statistics at (0, 1) add the same to every channel)."""
    importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None, bias=True)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.from_numpy(x))
    names = {module: name for name, module in net.named_modules()}
    plans = {}
    for group in graph.get_all_groups(ignored_layers=[net.fc]):
        scores = importance(group).numpy()
        pruned = np.argsort(scores, kind="stable")[: round(0.5 * len(scores))]
        plans[names[group[0].dep.target.module]] = sorted(int(i) for i in pruned)
    return plans


def tp_prune(net: nn.Module, x: np.ndarray, plans: dict[str, list[int]]) -> None:
    """Prune ``net`` physically, in place, as Torch-Pruning does."""
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.from_numpy(x))
    for name, pruned in plans.items():
        root = net.get_submodule(name)
        graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, pruned).prune()


# ---------------------------------------------------------------- tests that need only the models


def test_twin_computes_what_the_torch_model_computes() -> None:
    net = torch_net()
    x = images()
    np.testing.assert_allclose(np.asarray(twin_of(net)(nhwc(x))), torch_out(net, x), rtol=1e-5, atol=1e-5)


def test_torch_pruning_finds_the_groups_written_by_hand() -> None:
    groups = tp_groups(torch_net())
    assert {tp_key(g) for g in groups} == {g.key for g in EXPECTED}
    for g in groups:
        for member, rows in g["positions"].items():
            assert len(rows) == g["size"]
            assert rows == EXPECTED_POSITIONS[member], member


def test_torch_pruning_prunes_what_the_reference_shrink_removes() -> None:
    """Torch-Pruning's physically pruned model, converted, equals the hand-written groups' reference
    shrink of the dense twin with the same channels removed (the comparison below relies on it)."""
    net, x = torch_net(), images()
    dense = flax_values(net)
    plans = tp_plans(net, x)
    removal = []
    for name, pruned in plans.items():
        (g,) = [g for g in EXPECTED if (f"{name}.kernel", 3, 1) in g.members]
        removal.append((g, pruned))
    assert len(removal) == len(EXPECTED)
    tp_prune(net, x, plans)
    small = flax_values(net)
    reference = reference_shrunk(dense, removal)
    assert shapes(small) == shapes(reference)
    for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the dense twin with those channels zeroed computes what the pruned torch model computes
    masked = with_state(nnx.eval_shape(lambda: Twin(rngs=nnx.Rngs(0))), reference_masked(dense, removal))
    np.testing.assert_allclose(np.asarray(masked(nhwc(x))), torch_out(net, x), rtol=1e-5, atol=1e-5)


def _expected_positions() -> dict[tuple[str, int], tuple[tuple[int, ...], ...]]:
    out = {}
    for g in EXPECTED:
        for path, axis, _ in g.members:
            out[(path, axis)] = g.positions.get((path, axis), tuple((c,) for c in range(g.size)))
    return out


EXPECTED_POSITIONS = _expected_positions()


# ---------------------------------------------------------------- against jp.channel_groups


def test_same_partition_as_torch_pruning() -> None:
    net = torch_net()
    groups = jp.channel_groups(twin_of(net), nhwc(images()))
    assert {group_key(g) for g in groups} == {tp_key(g) for g in tp_groups(net)}
    # channel by channel: the same positions in every member, in the same channel order
    # (Torch-Pruning's channel c is the root conv's output channel c)
    by_key = {tp_key(g): g for g in tp_groups(net)}
    for group in groups:
        reference = by_key[group_key(group)]["positions"]
        for m in group.members:
            assert tuple(tuple(sorted(r)) for r in m.positions.tolist()) == reference[(m.path, m.axis)], m


def test_same_kept_channels_and_same_pruned_model_as_torch_pruning() -> None:
    net = torch_net()
    x = images()
    twin = twin_of(net)
    groups = jp.channel_groups(twin, nhwc(x))
    keep = jp.group_keep(groups, nnx.state(twin), 0.5, method="l2")
    plans = tp_plans(net, x)
    assert len(plans) == len(groups)
    for root, theirs in plans.items():
        # our channels of the group that holds the root's output axis, numbered as its output channels
        ((k, member),) = [
            (k, m) for g, k in zip(groups, keep) for m in g.members if (m.path, m.axis) == (f"{root}.kernel", 3)
        ]
        ours = sorted(int(p) for p in member.positions[~np.asarray(k), 0])
        assert ours == theirs, root
    # prune both: Torch-Pruning physically, jaxprune by shrink_model; the weights are the same
    tp_prune(net, x, plans)
    jp.shrink_model(twin, groups, keep)
    small = nnx.to_pure_dict(nnx.state(twin))
    reference = flax_values(net)
    assert jax.tree.structure(small) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(twin(nhwc(x))), torch_out(net, x), rtol=1e-5, atol=1e-5)
