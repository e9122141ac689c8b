"""A pruned torch CNN in Flax, and a pruned Flax CNN in torch, with the same masks.

Forward: a torch CNN (Conv2d-BatchNorm-ReLU-Conv2d-ReLU-Linear, eval mode, with
non-trivial BatchNorm running statistics) is pruned with
``interop.prune_module`` (random structured, Ln structured, L1 and random
unstructured rules, one key from ``--seed``). ``torch_to_flax`` exports the
weights it computes with (``orig * mask``): a Linen model and the same model
in NNX give torch's outputs. Its dense weights (``weights="orig"``) and masks
(``masks_to_flax``) move to Flax too, and ``jp.prune_tree`` with
``interop.flax_rules`` on the dense tree reproduces torch's masks, random ones
included.

Reverse: a Flax tree is pruned with native jaxprune rules (the structured axis
picked with ``interop.flax_dim``), written into a fresh torch module as a
torch-pruned state dict (``pruned_state_dict`` over ``masks_to_torch`` and the
weights ``flax_to_torch`` loaded), and loaded into a module prepared with
torch's own ``prune.identity``: equal outputs, ``prune.is_pruned`` True.

Run: python examples/torch_to_flax_pruning.py [--seed N]
"""

from __future__ import annotations

import argparse
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.utils.prune as prune
from flax import nnx

import jaxprune as jp
from jaxprune import interop

TOLERANCE = 1e-5
BATCH, CHANNELS, SIZE, CLASSES = 4, 3, 8, 10

# Rules over the torch parameter names, as named_parameters() gives them.
TORCH_RULES: dict[str, Any] = {
    "conv1.weight": jp.RandomStructured(0.25, dim=0),  # whole filters, at random
    "conv2.weight": jp.LnStructured(0.25, n=2, dim=0),  # the filters of smallest L2 norm
    "fc.weight": jp.L1Unstructured(0.5),  # single weights, smallest |w|
    "*.bias": jp.RandomUnstructured(0.25),  # single biases, at random
}


# --------------------------------------------------------------------------
# The models: torch, Flax Linen, Flax NNX
# --------------------------------------------------------------------------


class TorchCNN(torch.nn.Module):
    """NCHW in; flattens channels-first, as torch does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3)
        self.fc = torch.nn.Linear(16 * (SIZE - 2) ** 2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class LinenCNN(nn.Module):
    """The same network in Linen: NHWC in; flattens channels-first, as torch."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(8, (3, 3), padding=1, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn1")(x)
        x = nn.relu(x)
        x = nn.relu(nn.Conv(16, (3, 3), padding="VALID", name="conv2")(x))
        x = jnp.transpose(x, (0, 3, 1, 2))  # NHWC -> NCHW, so Dense sees torch's order
        return nn.Dense(CLASSES, name="fc")(x.reshape(x.shape[0], -1))


class NnxCNN(nnx.Module):
    """The same network in NNX (attribute names = the torch names)."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(CHANNELS, 8, (3, 3), padding=1, rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, use_running_average=True, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), padding="VALID", rngs=rngs)
        self.fc = nnx.Linear(16 * (SIZE - 2) ** 2, CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        x = jnp.transpose(x, (0, 3, 1, 2))
        return self.fc(x.reshape(x.shape[0], -1))


def make_torch_model(seed: int) -> TorchCNN:
    """A torch CNN in eval mode whose BatchNorm has non-trivial running statistics."""
    torch.manual_seed(seed)
    model = TorchCNN().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.2, 0.2)
    return model


def make_flax_variables(seed: int, x_nchw: np.ndarray) -> tuple[dict, dict]:
    """Linen params and batch_stats standing in for a trained Flax model.

    The shapes come from ``jax.eval_shape`` of Linen's init; the values are
    drawn with NumPy (running Flax's initializers eagerly would compile each
    one, seconds on a small CPU).
    """
    shapes = jax.eval_shape(LinenCNN().init, jax.random.key(0), to_nhwc(x_nchw))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, spec: jax.ShapeDtypeStruct) -> jax.Array:
        name = jp.path_str(path)
        if name.endswith("var"):
            values = rng.uniform(0.5, 2.0, spec.shape)
        elif name.endswith("scale"):
            values = rng.uniform(0.5, 1.5, spec.shape)
        else:
            values = rng.normal(0.0, 0.2, spec.shape)
        return jnp.asarray(values, spec.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return variables["params"], variables["batch_stats"]


def make_input(seed: int) -> np.ndarray:
    """A batch of NCHW images."""
    return np.random.default_rng(seed).standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)


def torch_forward(model: torch.nn.Module, x_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nchw)).numpy()


def to_nhwc(x_nchw: np.ndarray) -> jax.Array:
    return jnp.asarray(x_nchw.transpose(0, 2, 3, 1))


def max_abs_diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def report_diff(label: str, diff: float) -> None:
    verdict = "OK" if diff <= TOLERANCE else "MISMATCH"
    print(f"  {label}: max abs diff {diff:.3g} ({verdict}, tolerance {TOLERANCE:g})")
    if diff > TOLERANCE:
        raise SystemExit(f"{label}: outputs differ by {diff}")


def leaf(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def sparsity(mask: Any) -> float:
    mask = np.asarray(mask)
    return 1.0 - float(mask.sum()) / mask.size


# --------------------------------------------------------------------------
# torch -> Flax
# --------------------------------------------------------------------------


def torch_to_flax_direction(key: jax.Array, seed: int) -> None:
    """Prune in torch, convert to Flax, check outputs and masks."""
    print("== torch -> Flax ==")
    model = make_torch_model(seed)
    interop.prune_module(key, model, TORCH_RULES)
    print(f"pruned the torch model with interop.prune_module; prune.is_pruned: {prune.is_pruned(model)}")
    x = make_input(seed)
    y_torch = torch_forward(model, x)

    variables = interop.torch_to_flax(model)  # what the pruned model computes with (orig * mask), Flax layouts
    dense = interop.torch_to_flax(model, weights="orig")  # the dense *_orig values, as torch ranked them
    _, torch_masks = interop.read_pruned(model)
    flax_masks = interop.masks_to_flax(torch_masks, model)  # torch's masks, Flax layouts

    # The same rules on the dense Flax tree, with the same key: the same masks.
    tree_masks = jp.prune_tree(key, dense["params"], interop.flax_rules(TORCH_RULES, model))
    places = interop.placements(model)
    print("masks: torch (converted with masks_to_flax) vs jp.prune_tree with interop.flax_rules")
    for name in torch_masks:
        path = places[name].path
        ours, theirs = leaf(tree_masks, path), leaf(flax_masks, path)
        equal = bool(np.array_equal(np.asarray(ours), np.asarray(theirs)))
        print(f"  {name:<13} -> params.{'.'.join(path):<13} {str(tuple(ours.shape)):<14} "
              f"sparsity {sparsity(ours):6.2%}  masks equal: {equal}")
        if not equal:
            raise SystemExit(f"{name}: the Flax masks differ from torch's")
    # The dense weights with those masks are the exported effective weights.
    if not jax.tree.all(jax.tree.map(jnp.array_equal, jp.apply_masks(dense["params"], tree_masks),
                                     variables["params"])):
        raise SystemExit("the dense weights with their masks differ from the effective weights")

    y_linen = LinenCNN().apply(variables, to_nhwc(x))
    print("outputs on the same batch:")
    report_diff("torch vs Flax Linen", max_abs_diff(y_torch, y_linen))

    # An abstract NNX model (no initializers run), filled with the converted weights.
    nnx_model = nnx.eval_shape(lambda: NnxCNN(rngs=nnx.Rngs(0)))
    nnx.update(nnx_model, variables["params"])
    nnx.update(nnx_model, variables["batch_stats"])
    report_diff("torch vs Flax NNX  ", max_abs_diff(y_torch, nnx_model(to_nhwc(x))))


# --------------------------------------------------------------------------
# Flax -> torch
# --------------------------------------------------------------------------


def flax_to_torch_direction(key: jax.Array, seed: int) -> None:
    """Prune a Flax tree natively, write it into torch as a torch-pruned module."""
    print("\n== Flax -> torch ==")
    x = make_input(seed + 1)
    params, batch_stats = make_flax_variables(seed, x)

    layout = TorchCNN()  # a torch module only tells flax_dim which Flax axis holds torch's dim
    filters1 = interop.flax_dim(layout, "conv1.weight", 0)
    inputs2 = interop.flax_dim(layout, "conv2.weight", 1)
    inputs_fc = interop.flax_dim(layout, "fc.weight", 1)
    print(f"interop.flax_dim: conv1 filters -> kernel axis {filters1}, conv2 input channels -> axis {inputs2}, "
          f"fc inputs -> axis {inputs_fc}")
    flax_native_rules = {
        "conv1.kernel": jp.RandomStructured(0.25, dim=filters1),
        "conv2.kernel": jp.LnStructured(0.5, n=1, dim=inputs2),
        "fc.kernel": jp.L1Unstructured(0.6),
        "*.bias": jp.RandomUnstructured(0.25),
    }
    masks = jp.prune_tree(key, params, flax_native_rules)
    pruned_filters = jp.pruned_indices(masks["conv1"]["kernel"], filters1)
    print(f"pruned the Flax tree with jp.prune_tree; conv1 filters pruned: {pruned_filters.tolist()}")
    y_flax = LinenCNN().apply({"params": jp.apply_masks(params, masks), "batch_stats": batch_stats}, to_nhwc(x))

    # Dense weights into a fresh torch module, then a torch-style pruned state dict.
    dense = interop.flax_to_torch({"params": params, "batch_stats": batch_stats}, TorchCNN())
    torch_masks = interop.masks_to_torch(masks, dense)
    state = interop.pruned_state_dict(dense.state_dict(), torch_masks)

    target = TorchCNN().eval()
    for name in torch_masks:  # torch's own reparametrization, ready to receive *_orig / *_mask
        layer, attr = name.rsplit(".", 1)
        prune.identity(target.get_submodule(layer), attr)
    target.load_state_dict(state)
    print(f"loaded into a module prepared with prune.identity; prune.is_pruned: {prune.is_pruned(target)}")
    zero_filters = torch.nonzero(target.conv1.weight_mask.sum(dim=(1, 2, 3)) == 0).flatten().tolist()
    print(f"  torch conv1 filters with an all-zero mask: {zero_filters} "
          f"(same as Flax: {zero_filters == pruned_filters.tolist()})")
    for name, mask in sorted(torch_masks.items()):
        installed = target.get_buffer(name + "_mask")
        equal = torch.equal(installed.bool(), mask)
        print(f"  {name + '_mask':<18} {str(tuple(installed.shape)):<16} sparsity {sparsity(mask.numpy()):6.2%}  "
              f"equals the Flax mask: {equal}")
        if not equal:
            raise SystemExit(f"{name}: the installed mask differs from the Flax mask")
    print("outputs on the same batch:")
    report_diff("Flax Linen vs torch", max_abs_diff(y_flax, torch_forward(target, x)))


def main() -> None:
    """Parse --seed and run both directions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed for the models, the data and the pruning key")
    args = parser.parse_args()
    key = jax.random.key(args.seed)
    torch_to_flax_direction(key, args.seed)
    flax_to_torch_direction(key, args.seed)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
