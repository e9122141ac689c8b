"""The models `channel_groups` must handle, and the groups a correct analysis finds in them.

Each builder returns a `Case`: a Flax NNX version and a plain-function version of one
architecture, example inputs, and, written by hand from the architecture (not from the
analysis), every group of coupled channels: its size, whether removing its channels is
exactly masking them, and its members ``(path, axis, per_channel)`` with paths as
``jp.path_str`` writes them. Where the plain version uses the same names, both versions
share one list.

Conventions the expectations follow (issue 12):
  - channels that reach the function's inputs or outputs (data features, logits) form no
    group (``fixed``: they are in ``.dropped``); spatial axes of conv kernels, the vocab
    axis of an embedding and the layer axis of a scan form none either (``structural``);
  - a group is inexact when its channels feed a computation that reads their number
    (LayerNorm/RMSNorm statistics, a mean over them, q/k scaled by 1/sqrt(head_dim));
  - a stacked (scanned) kernel ``(L, in, out)`` has one group for all layers.

``count_half`` is the number of parameters (every array leaf; for NNX every Variable of
``nnx.state(model)``, batch statistics included) once 50% of every group in
``pruned(version)`` is removed: computed by hand, and checked against ``half_*`` (the same
architecture built at those widths).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

# ---------------------------------------------------------------- expectations


@dataclasses.dataclass(frozen=True)
class G:
    """An expected group.

    members: ``{(path, axis, per_channel), ...}``.
    positions: for members whose channels do not own one position each at their own
      index: ``{(path, axis): [[positions of channel 0], [of channel 1], ...]}`` (compared
      as a partition of the axis, channel order free).
    name: how the tests refer to it (``"heads"``, ``"hidden"``, ...).
    """

    size: int
    exact: bool
    members: frozenset[tuple[str, int, int]]
    positions: Mapping[tuple[str, int], tuple[tuple[int, ...], ...]] = dataclasses.field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", frozenset(self.members))
        positions = {k: tuple(tuple(int(i) for i in row) for row in v) for k, v in dict(self.positions).items()}
        object.__setattr__(self, "positions", positions)

    @property
    def key(self) -> tuple[int, bool, frozenset[tuple[str, int, int]]]:
        return (self.size, self.exact, self.members)


def group_key(group: Any) -> tuple[int, bool, frozenset[tuple[str, int, int]]]:
    """A found `jp.ChannelGroup` in the form of `G.key`."""
    members = frozenset((m.path, m.axis, int(np.shape(m.positions)[1])) for m in group.members)
    return (group.size, bool(group.exact), members)


def one_to_one(size: int, *members: tuple[str, int]) -> set[tuple[str, int, int]]:
    return {(path, axis, 1) for path, axis in members}


def blocks(channels: int, width: int) -> tuple[tuple[int, ...], ...]:
    """Channel c owns ``c*width .. c*width+width-1`` (heads after a (H*hd) -> (H, hd) reshape)."""
    return tuple(tuple(range(c * width, (c + 1) * width)) for c in range(channels))


def strided(channels: int, count: int) -> tuple[tuple[int, ...], ...]:
    """Channel c owns ``c, c+channels, c+2*channels, ...`` (``count`` of them): NHWC flatten, head_dim."""
    return tuple(tuple(c + channels * i for i in range(count)) for c in range(channels))


@dataclasses.dataclass(frozen=True)
class Version:
    """One way of writing the model: its groups, fixed axes and counts."""

    groups: tuple[G, ...]
    fixed: tuple[tuple[str, int], ...]
    structural: tuple[tuple[str, int], ...]
    count_half: int
    keep_whole: frozenset[str] = frozenset()  # groups the shrink tests leave whole (see the case)

    def group(self, name: str) -> G:
        (found,) = [g for g in self.groups if g.name == name]
        return found

    @property
    def exact(self) -> tuple[G, ...]:
        return tuple(g for g in self.groups if g.exact)

    @property
    def inexact(self) -> tuple[G, ...]:
        return tuple(g for g in self.groups if not g.exact)

    @property
    def pruned(self) -> tuple[G, ...]:
        """The groups the shrink tests prune by 50%: the exact ones not kept whole."""
        return tuple(g for g in self.exact if g.name not in self.keep_whole)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    nnx_model: Callable[[], nnx.Module]  # a fresh model each call, same values
    fn: Callable[..., jax.Array]  # fn(params, *args), sizes read from the arrays
    params: dict[str, Any]
    args: tuple[jax.Array, ...]
    nnx: Version
    plain: Version
    half_nnx: Callable[[], nnx.Module]  # the architecture at the pruned widths
    half_params: dict[str, Any]


def count(tree: Any) -> int:
    """Elements of every array leaf (an NNX state or a dict)."""
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of every leaf, paths as ``jp.path_str`` writes them."""
    from jaxprune import path_str

    return {path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# ---------------------------------------------------------------- values

_CONSTANT_INITS = {  # leaves whose Flax init is a constant get random values, so a shrink that
    # takes the wrong positions of a bias or a batch statistic changes the output
    "bias": lambda rng, s: 0.1 * rng.standard_normal(s),
    "scale": lambda rng, s: 1.0 + 0.1 * rng.standard_normal(s),
    "mean": lambda rng, s: 0.1 * rng.standard_normal(s),
    "var": lambda rng, s: rng.uniform(0.5, 1.5, s),
    "head_gate": lambda rng, s: 1.0 + 0.1 * rng.standard_normal(s),
}


def _leaf_value(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> jax.Array:
    # NumPy draws: no XLA compilation per leaf shape (the tests build many small models)
    if name in _CONSTANT_INITS:
        value = _CONSTANT_INITS[name](rng, shape)
    else:
        value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[:-1]) if len(shape) > 1 else 1)
    return jnp.asarray(value, dtype=jnp.float32)


def _filled(tree: Any, seed: int, is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Every leaf replaced by float32 values drawn by its name (leaves give ``.shape`` or are shapes)."""
    from jaxprune import path_str

    named = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
    rng = np.random.default_rng(seed)
    values = [_leaf_value(rng, path_str(p).split(".")[-1], tuple(getattr(x, "shape", x))) for p, x in named]
    return jax.tree.unflatten(jax.tree.structure(tree, is_leaf=is_leaf), values)


def init_params(shape_tree: dict[str, Any], seed: int) -> dict[str, Any]:
    """Random float32 arrays for a tree of shapes, each leaf drawn by its name."""
    return _filled(shape_tree, seed, is_leaf=lambda x: isinstance(x, tuple))


def built(make: Callable[[], nnx.Module], seed: int) -> nnx.Module:
    """``make()`` without running its initializers, filled with values drawn by leaf name."""
    model = nnx.eval_shape(make)
    nnx.update(model, _filled(nnx.state(model), seed))
    return model


# ---------------------------------------------------------------- plain layers
# Bias and statistics are broadcast explicitly: the tests run with rank promotion off.


def _vec(v: jax.Array, ndim: int) -> jax.Array:
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def dense(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    y = x @ p["kernel"]
    return y + _vec(p["bias"], y.ndim) if "bias" in p else y


def conv(p: dict[str, jax.Array], x: jax.Array, stride: int = 1, depthwise: bool = False) -> jax.Array:
    y = lax.conv_general_dilated(
        x,
        p["kernel"],
        (stride, stride),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1] if depthwise else 1,
    )
    return y + _vec(p["bias"], y.ndim) if "bias" in p else y


def batch_norm(p: dict[str, jax.Array], x: jax.Array, eps: float = 1e-5) -> jax.Array:
    n = x.ndim
    return (x - _vec(p["mean"], n)) * lax.rsqrt(_vec(p["var"], n) + eps) * _vec(p["scale"], n) + _vec(p["bias"], n)


def layer_norm(p: dict[str, jax.Array], x: jax.Array, eps: float = 1e-6) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * _vec(p["scale"], x.ndim) + _vec(p["bias"], x.ndim)


def rms_norm(p: dict[str, jax.Array], x: jax.Array, eps: float = 1e-6) -> jax.Array:
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * lax.rsqrt(ms + eps) * _vec(p["scale"], x.ndim)


def _images(seed: int, channels: int = 3) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (2, 8, 8, channels), jnp.float32)


def _features(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _bn_members(prefix: str) -> list[tuple[str, int]]:
    return [(f"{prefix}.{name}", 0) for name in ("scale", "bias", "mean", "var")]


# ---------------------------------------------------------------- MLP
# x (B, 4) -> 8 -> relu -> 6 -> relu -> 3


class MLP(nnx.Module):
    def __init__(self, widths: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def mlp_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    layers = params["layers"]
    for layer in layers[:-1]:
        x = jax.nn.relu(dense(layer, x))
    return dense(layers[-1], x)


def _mlp_shapes(widths: tuple[int, ...]) -> dict[str, Any]:
    return {"layers": [{"kernel": (a, b), "bias": (b,)} for a, b in zip(widths[:-1], widths[1:])]}


def mlp() -> Case:
    widths, half = (4, 8, 6, 3), (4, 4, 3, 3)
    groups = (
        G(8, True, one_to_one(8, ("layers.0.kernel", 1), ("layers.0.bias", 0), ("layers.1.kernel", 0)), name="h1"),
        G(6, True, one_to_one(6, ("layers.1.kernel", 1), ("layers.1.bias", 0), ("layers.2.kernel", 0)), name="h2"),
    )
    fixed = (("layers.0.kernel", 0), ("layers.2.kernel", 1), ("layers.2.bias", 0))
    # 4*4+4 + 4*3+3 + 3*3+3
    version = Version(groups, fixed, (), count_half=47)
    return Case(
        "mlp",
        lambda: built(lambda: MLP(widths, rngs=nnx.Rngs(0)), 1),
        mlp_fn,
        init_params(_mlp_shapes(widths), 2),
        (_features(3, (2, 4)),),
        version,
        version,
        lambda: built(lambda: MLP(half, rngs=nnx.Rngs(0)), 4),
        init_params(_mlp_shapes(half), 2),
    )


# ---------------------------------------------------------------- CNN: conv-BN-relu x2, mean pool, dense
# x (B, 8, 8, 3) -> conv 3x3 (bias) 8 -> BN -> relu -> conv 3x3 (no bias) 6 -> BN -> relu -> mean -> 4


class CNN(nnx.Module):
    def __init__(self, c1: int, c2: int, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(3, c1, (3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(c1, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c2, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(c2, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return self.head(jnp.mean(x, axis=(1, 2)))


def cnn_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    x = jax.nn.relu(batch_norm(params["bn1"], conv(params["conv1"], x)))
    x = jax.nn.relu(batch_norm(params["bn2"], conv(params["conv2"], x)))
    return dense(params["head"], jnp.mean(x, axis=(1, 2)))


def _bn_shapes(c: int) -> dict[str, tuple[int, ...]]:
    return {"scale": (c,), "bias": (c,), "mean": (c,), "var": (c,)}


def _cnn_shapes(c1: int, c2: int) -> dict[str, Any]:
    return {
        "conv1": {"kernel": (3, 3, 3, c1), "bias": (c1,)},
        "bn1": _bn_shapes(c1),
        "conv2": {"kernel": (3, 3, c1, c2)},
        "bn2": _bn_shapes(c2),
        "head": {"kernel": (c2, 4), "bias": (4,)},
    }


def cnn() -> Case:
    groups = (
        G(
            8,
            True,
            one_to_one(8, ("conv1.kernel", 3), ("conv1.bias", 0), *_bn_members("bn1"), ("conv2.kernel", 2)),
            name="c1",
        ),
        G(6, True, one_to_one(6, ("conv2.kernel", 3), *_bn_members("bn2"), ("head.kernel", 0)), name="c2"),
    )
    fixed = (("conv1.kernel", 2), ("head.kernel", 1), ("head.bias", 0))
    structural = (("conv1.kernel", 0), ("conv1.kernel", 1), ("conv2.kernel", 0), ("conv2.kernel", 1))
    # conv1 3*3*3*4+4, bn1 4*4, conv2 3*3*4*3, bn2 3*4, head 3*4+4
    version = Version(groups, fixed, structural, count_half=112 + 16 + 108 + 12 + 16)
    return Case(
        "cnn",
        lambda: built(lambda: CNN(8, 6, rngs=nnx.Rngs(0)), 1),
        cnn_fn,
        init_params(_cnn_shapes(8, 6), 2),
        (_images(3),),
        version,
        version,
        lambda: built(lambda: CNN(4, 3, rngs=nnx.Rngs(0)), 4),
        init_params(_cnn_shapes(4, 3), 2),
    )


# ---------------------------------------------------------------- ResNet: stem, identity block, projection block
# stem conv 3->8 + BN + relu; b1: conv 8->4, BN, relu, conv 4->8, BN, + x, relu;
# b2 (stride 2): conv 8->6, BN, relu, conv 6->12, BN, + BN(conv1x1 8->12)(x), relu; mean; dense 12->5.
# The residual width 8 couples the stem, b1's output and both of b2's inputs.


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, *, rngs: nnx.Rngs) -> None:
        self.stride = stride
        self.conv_a = nnx.Conv(cin, mid, (3, 3), strides=stride, padding="SAME", use_bias=False, rngs=rngs)
        self.bn_a = nnx.BatchNorm(mid, use_running_average=True, rngs=rngs)
        self.conv_b = nnx.Conv(mid, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn_b = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        if stride != 1 or cin != cout:
            self.proj = nnx.Conv(cin, cout, (1, 1), strides=stride, padding="SAME", use_bias=False, rngs=rngs)
            self.proj_bn = nnx.BatchNorm(cout, use_running_average=True, rngs=rngs)
        else:
            self.proj = nnx.data(None)
            self.proj_bn = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
    def __init__(self, w: int, m1: int, m2: int, w2: int, *, rngs: nnx.Rngs) -> None:
        self.stem_conv = nnx.Conv(3, w, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(w, use_running_average=True, rngs=rngs)
        self.b1 = BasicBlock(w, m1, w, 1, rngs=rngs)
        self.b2 = BasicBlock(w, m2, w2, 2, rngs=rngs)
        self.head = nnx.Linear(w2, 5, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        x = self.b2(self.b1(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


def _block_fn(p: dict[str, Any], x: jax.Array, stride: int) -> jax.Array:
    y = jax.nn.relu(batch_norm(p["bn_a"], conv(p["conv_a"], x, stride)))
    y = batch_norm(p["bn_b"], conv(p["conv_b"], y))
    shortcut = batch_norm(p["proj_bn"], conv(p["proj"], x, stride)) if "proj" in p else x
    return jax.nn.relu(y + shortcut)


def resnet_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    x = jax.nn.relu(batch_norm(params["stem_bn"], conv(params["stem_conv"], x)))
    x = _block_fn(params["b2"], _block_fn(params["b1"], x, 1), 2)
    return dense(params["head"], jnp.mean(x, axis=(1, 2)))


def _resnet_shapes(w: int, m1: int, m2: int, w2: int) -> dict[str, Any]:
    def block(cin: int, mid: int, cout: int, proj: bool) -> dict[str, Any]:
        p = {
            "conv_a": {"kernel": (3, 3, cin, mid)},
            "bn_a": _bn_shapes(mid),
            "conv_b": {"kernel": (3, 3, mid, cout)},
            "bn_b": _bn_shapes(cout),
        }
        if proj:
            p["proj"] = {"kernel": (1, 1, cin, cout)}
            p["proj_bn"] = _bn_shapes(cout)
        return p

    return {
        "stem_conv": {"kernel": (3, 3, 3, w)},
        "stem_bn": _bn_shapes(w),
        "b1": block(w, m1, w, False),
        "b2": block(w, m2, w2, True),
        "head": {"kernel": (w2, 5), "bias": (5,)},
    }


def resnet() -> Case:
    groups = (
        G(
            8,
            True,
            one_to_one(
                8,
                ("stem_conv.kernel", 3),
                *_bn_members("stem_bn"),
                ("b1.conv_a.kernel", 2),
                ("b1.conv_b.kernel", 3),
                *_bn_members("b1.bn_b"),
                ("b2.conv_a.kernel", 2),
                ("b2.proj.kernel", 2),
            ),
            name="residual",
        ),
        G(4, True, one_to_one(4, ("b1.conv_a.kernel", 3), *_bn_members("b1.bn_a"), ("b1.conv_b.kernel", 2)), name="b1"),
        G(6, True, one_to_one(6, ("b2.conv_a.kernel", 3), *_bn_members("b2.bn_a"), ("b2.conv_b.kernel", 2)), name="b2"),
        G(
            12,
            True,
            one_to_one(
                12,
                ("b2.conv_b.kernel", 3),
                *_bn_members("b2.bn_b"),
                ("b2.proj.kernel", 3),
                *_bn_members("b2.proj_bn"),
                ("head.kernel", 0),
            ),
            name="out",
        ),
    )
    fixed = (("stem_conv.kernel", 2), ("head.kernel", 1), ("head.bias", 0))
    structural = tuple(
        (f"{p}.kernel", a)
        for p in ("stem_conv", "b1.conv_a", "b1.conv_b", "b2.conv_a", "b2.conv_b", "b2.proj")
        for a in (0, 1)
    )
    # stem 3*3*3*4 + 4*4; b1: 3*3*4*2 + 2*4 + 3*3*2*4 + 4*4;
    # b2: 3*3*4*3 + 3*4 + 3*3*3*6 + 6*4 + 1*1*4*6 + 6*4; head 6*5+5
    half = (108 + 16) + (72 + 8 + 72 + 16) + (108 + 12 + 162 + 24 + 24 + 24) + 35
    version = Version(groups, fixed, structural, count_half=half)
    return Case(
        "resnet",
        lambda: built(lambda: ResNet(8, 4, 6, 12, rngs=nnx.Rngs(0)), 1),
        resnet_fn,
        init_params(_resnet_shapes(8, 4, 6, 12), 2),
        (_images(3),),
        version,
        version,
        lambda: built(lambda: ResNet(4, 2, 3, 6, rngs=nnx.Rngs(0)), 4),
        init_params(_resnet_shapes(4, 2, 3, 6), 2),
    )


# ---------------------------------------------------------------- depthwise-separable (MobileNet) block
# x (B, 8, 8, 3) -> 1x1 conv 8, BN, relu -> 3x3 depthwise (feature_group_count=8), BN, relu
# -> 1x1 conv 6, BN, relu -> mean -> dense 4. The depthwise conv ties its in and out channels:
# one group from the expansion through the depthwise conv to the projection's input.


class Separable(nnx.Module):
    def __init__(self, e: int, c: int, *, rngs: nnx.Rngs) -> None:
        self.expand = nnx.Conv(3, e, (1, 1), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(e, use_running_average=True, rngs=rngs)
        self.depthwise = nnx.Conv(e, e, (3, 3), padding="SAME", feature_group_count=e, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(e, use_running_average=True, rngs=rngs)
        self.project = nnx.Conv(e, c, (1, 1), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(c, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.expand(x)))
        x = nnx.relu(self.bn2(self.depthwise(x)))
        x = nnx.relu(self.bn3(self.project(x)))
        return self.head(jnp.mean(x, axis=(1, 2)))


def separable_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    x = jax.nn.relu(batch_norm(params["bn1"], conv(params["expand"], x)))
    x = jax.nn.relu(batch_norm(params["bn2"], conv(params["depthwise"], x, depthwise=True)))
    x = jax.nn.relu(batch_norm(params["bn3"], conv(params["project"], x)))
    return dense(params["head"], jnp.mean(x, axis=(1, 2)))


def _separable_shapes(e: int, c: int) -> dict[str, Any]:
    return {
        "expand": {"kernel": (1, 1, 3, e)},
        "bn1": _bn_shapes(e),
        "depthwise": {"kernel": (3, 3, 1, e)},
        "bn2": _bn_shapes(e),
        "project": {"kernel": (1, 1, e, c)},
        "bn3": _bn_shapes(c),
        "head": {"kernel": (c, 4), "bias": (4,)},
    }


def separable() -> Case:
    groups = (
        G(
            8,
            True,
            one_to_one(
                8,
                ("expand.kernel", 3),
                *_bn_members("bn1"),
                ("depthwise.kernel", 3),
                *_bn_members("bn2"),
                ("project.kernel", 2),
            ),
            name="expanded",
        ),
        G(6, True, one_to_one(6, ("project.kernel", 3), *_bn_members("bn3"), ("head.kernel", 0)), name="projected"),
    )
    fixed = (("expand.kernel", 2), ("head.kernel", 1), ("head.bias", 0))
    # the depthwise kernel's axis 2 has length 1 (one input channel per group): no channel axis
    structural = tuple((f"{p}.kernel", a) for p in ("expand", "depthwise", "project") for a in (0, 1)) + (
        ("depthwise.kernel", 2),
    )
    # expand 3*4, bn1 4*4, depthwise 3*3*1*4, bn2 4*4, project 4*3, bn3 3*4, head 3*4+4
    version = Version(groups, fixed, structural, count_half=12 + 16 + 36 + 16 + 12 + 12 + 16)
    return Case(
        "separable",
        lambda: built(lambda: Separable(8, 6, rngs=nnx.Rngs(0)), 1),
        separable_fn,
        init_params(_separable_shapes(8, 6), 2),
        (_images(3),),
        version,
        version,
        lambda: built(lambda: Separable(4, 3, rngs=nnx.Rngs(0)), 4),
        init_params(_separable_shapes(4, 3), 2),
    )


# ---------------------------------------------------------------- conv -> flatten -> dense
# x (B, 8, 8, 3) -> conv 3x3 stride 2 -> (B, 4, 4, 8), relu -> flatten (NHWC: index s*8 + c)
# -> dense 128->6, relu -> dense 4. Conv channel c owns the 16 positions c, c+8, ..., c+120
# of fc1's input axis.


class FlattenNet(nnx.Module):
    def __init__(self, c: int, h: int, *, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, c, (3, 3), strides=2, padding="SAME", rngs=rngs)
        self.fc1 = nnx.Linear(16 * c, h, rngs=rngs)
        self.fc2 = nnx.Linear(h, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv(x))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.fc1(x)))


def flatten_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    x = jax.nn.relu(conv(params["conv"], x, 2))
    x = x.reshape(x.shape[0], -1)
    return dense(params["fc2"], jax.nn.relu(dense(params["fc1"], x)))


def _flatten_shapes(c: int, h: int) -> dict[str, Any]:
    return {
        "conv": {"kernel": (3, 3, 3, c), "bias": (c,)},
        "fc1": {"kernel": (16 * c, h), "bias": (h,)},
        "fc2": {"kernel": (h, 4), "bias": (4,)},
    }


def flatten() -> Case:
    groups = (
        G(
            8,
            True,
            one_to_one(8, ("conv.kernel", 3), ("conv.bias", 0)) | {("fc1.kernel", 0, 16)},
            positions={("fc1.kernel", 0): strided(8, 16)},
            name="conv",
        ),
        G(6, True, one_to_one(6, ("fc1.kernel", 1), ("fc1.bias", 0), ("fc2.kernel", 0)), name="hidden"),
    )
    fixed = (("conv.kernel", 2), ("fc2.kernel", 1), ("fc2.bias", 0))
    structural = (("conv.kernel", 0), ("conv.kernel", 1))
    # conv 3*3*3*4+4, fc1 64*3+3, fc2 3*4+4
    version = Version(groups, fixed, structural, count_half=112 + 195 + 16)
    return Case(
        "flatten",
        lambda: built(lambda: FlattenNet(8, 6, rngs=nnx.Rngs(0)), 1),
        flatten_fn,
        init_params(_flatten_shapes(8, 6), 2),
        (_images(3),),
        version,
        version,
        lambda: built(lambda: FlattenNet(4, 3, rngs=nnx.Rngs(0)), 4),
        init_params(_flatten_shapes(4, 3), 2),
    )


# ---------------------------------------------------------------- transformer block
# x (B, T=5, 6) -> dense 6->8 (residual width D=8) -> x + attn(LN(x)) -> x + mlp(LN(x)) -> LN -> dense 5.
# Attention: 4 heads of head_dim 2. Groups: D (inexact: LayerNorm statistics), heads (exact),
# q/k head_dim (inexact: q is scaled by 1/sqrt(head_dim)), v/out head_dim (exact), MLP hidden 16.
F_IN, D, HEADS, HEAD_DIM, HIDDEN, OUT = 6, 8, 4, 2, 16, 5


class Transformer(nnx.Module):
    def __init__(self, heads: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.embed_in = nnx.Linear(F_IN, D, rngs=rngs)
        self.ln1 = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, D, heads * HEAD_DIM, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(D, rngs=rngs)
        self.mlp1 = nnx.Linear(D, hidden, rngs=rngs)
        self.mlp2 = nnx.Linear(hidden, D, rngs=rngs)
        self.ln_f = nnx.LayerNorm(D, rngs=rngs)
        self.head = nnx.Linear(D, OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.embed_in(x)
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp2(nnx.relu(self.mlp1(self.ln2(x))))
        return self.head(self.ln_f(x))


def transformer_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    """The plain block: (B, T, H*hd) is reshaped to (B, T, H, hd); H is read from the per-head gate."""
    x = dense(params["embed_in"], x)
    attn = params["attn"]
    a = layer_norm(params["ln1"], x)
    heads = attn["head_gate"].shape[0]
    batch, length, _ = a.shape
    q, k, v = (dense(attn[w], a).reshape(batch, length, heads, -1) for w in ("wq", "wk", "wv"))
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", weights, v) * attn["head_gate"].reshape(1, 1, heads, 1)
    x = x + dense(attn["wo"], o.reshape(batch, length, -1))
    x = x + dense(params["mlp2"], jax.nn.relu(dense(params["mlp1"], layer_norm(params["ln2"], x))))
    return dense(params["head"], layer_norm(params["ln_f"], x))


def _transformer_shapes(heads: int, v_dim: int, hidden: int) -> dict[str, Any]:
    ln = {"scale": (D,), "bias": (D,)}
    return {
        "embed_in": {"kernel": (F_IN, D), "bias": (D,)},
        "ln1": dict(ln),
        "attn": {
            "wq": {"kernel": (D, heads * HEAD_DIM), "bias": (heads * HEAD_DIM,)},
            "wk": {"kernel": (D, heads * HEAD_DIM), "bias": (heads * HEAD_DIM,)},
            "wv": {"kernel": (D, heads * v_dim), "bias": (heads * v_dim,)},
            "wo": {"kernel": (heads * v_dim, D), "bias": (D,)},
            "head_gate": (heads,),
        },
        "ln2": dict(ln),
        "mlp1": {"kernel": (D, hidden), "bias": (hidden,)},
        "mlp2": {"kernel": (hidden, D), "bias": (D,)},
        "ln_f": dict(ln),
        "head": {"kernel": (D, OUT), "bias": (OUT,)},
    }


def _residual_members(attn: list[tuple[str, int]]) -> set[tuple[str, int, int]]:
    norms = [(f"{n}.{w}", 0) for n in ("ln1", "ln2", "ln_f") for w in ("scale", "bias")]
    return one_to_one(
        D,
        ("embed_in.kernel", 1),
        ("embed_in.bias", 0),
        *norms,
        *attn,
        ("mlp1.kernel", 0),
        ("mlp2.kernel", 1),
        ("mlp2.bias", 0),
        ("head.kernel", 0),
    )


def _mlp_hidden() -> G:
    return G(HIDDEN, True, one_to_one(HIDDEN, ("mlp1.kernel", 1), ("mlp1.bias", 0), ("mlp2.kernel", 0)), name="hidden")


def _transformer_nnx_version() -> Version:
    # nnx.MultiHeadAttention: query/key/value kernels (D, H, hd), biases (H, hd), out kernel (H, hd, D)
    q, k, v, o = (f"attn.{n}" for n in ("query", "key", "value", "out"))
    groups = (
        G(
            D,
            False,
            _residual_members(
                [(f"{q}.kernel", 0), (f"{k}.kernel", 0), (f"{v}.kernel", 0), (f"{o}.kernel", 2), (f"{o}.bias", 0)]
            ),
            name="residual",
        ),
        G(
            HEADS,
            True,
            one_to_one(
                HEADS,
                *[(f"{p}.kernel", 1) for p in (q, k, v)],
                *[(f"{p}.bias", 0) for p in (q, k, v)],
                (f"{o}.kernel", 0),
            ),
            name="heads",
        ),
        G(
            HEAD_DIM,
            False,
            one_to_one(HEAD_DIM, (f"{q}.kernel", 2), (f"{q}.bias", 1), (f"{k}.kernel", 2), (f"{k}.bias", 1)),
            name="qk_dim",
        ),
        G(HEAD_DIM, True, one_to_one(HEAD_DIM, (f"{v}.kernel", 2), (f"{v}.bias", 1), (f"{o}.kernel", 1)), name="v_dim"),
        _mlp_hidden(),
    )
    fixed = (("embed_in.kernel", 0), ("head.kernel", 1), ("head.bias", 0))
    # embed_in 6*8+8; 3 LayerNorms 3*16; attention with 2 heads: q, k, v 8*2*2+2*2 each, out 2*2*8+8;
    # mlp 8*8+8 + 8*8+8; head 8*5+5
    half = 56 + 48 + 3 * 36 + 40 + 72 + 72 + 45
    # flax's MultiHeadAttention keeps one head_dim for q, k and v (jax.nn.dot_product_attention
    # checks it): a v/out head_dim group, exact in the jaxpr, cannot be shrunk alone in this module.
    return Version(groups, fixed, (), count_half=half, keep_whole=frozenset({"v_dim"}))


def _transformer_plain_version() -> Version:
    a = "attn"
    wq, wk, wv, wo = (f"{a}.{n}" for n in ("wq", "wk", "wv", "wo"))
    groups = (
        G(
            D,
            False,
            _residual_members(
                [(f"{wq}.kernel", 0), (f"{wk}.kernel", 0), (f"{wv}.kernel", 0), (f"{wo}.kernel", 1), (f"{wo}.bias", 0)]
            ),
            name="residual",
        ),
        G(
            HEADS,
            True,
            {(f"{p}.{leaf}", ax, HEAD_DIM) for p in (wq, wk, wv) for leaf, ax in (("kernel", 1), ("bias", 0))}
            | {(f"{wo}.kernel", 0, HEAD_DIM), (f"{a}.head_gate", 0, 1)},
            positions={
                **{
                    (f"{p}.{leaf}", ax): blocks(HEADS, HEAD_DIM)
                    for p in (wq, wk, wv)
                    for leaf, ax in (("kernel", 1), ("bias", 0))
                },
                (f"{wo}.kernel", 0): blocks(HEADS, HEAD_DIM),
            },
            name="heads",
        ),
        G(
            HEAD_DIM,
            False,
            {(f"{p}.{leaf}", ax, HEADS) for p in (wq, wk) for leaf, ax in (("kernel", 1), ("bias", 0))},
            positions={
                (f"{p}.{leaf}", ax): strided(HEAD_DIM, HEADS)
                for p in (wq, wk)
                for leaf, ax in (("kernel", 1), ("bias", 0))
            },
            name="qk_dim",
        ),
        G(
            HEAD_DIM,
            True,
            {(f"{wv}.kernel", 1, HEADS), (f"{wv}.bias", 0, HEADS), (f"{wo}.kernel", 0, HEADS)},
            positions={
                (p, ax): strided(HEAD_DIM, HEADS)
                for p, ax in ((f"{wv}.kernel", 1), (f"{wv}.bias", 0), (f"{wo}.kernel", 0))
            },
            name="v_dim",
        ),
        _mlp_hidden(),
    )
    fixed = (("embed_in.kernel", 0), ("head.kernel", 1), ("head.bias", 0))
    # embed_in 56, 3 LayerNorms 48; 2 heads: wq, wk 8*4+4 each, wv 8*2+2 (head_dim 1), wo 2*8+8,
    # gate 2; mlp 72 + 72; head 45
    half = 56 + 48 + 2 * 36 + 18 + 24 + 2 + 72 + 72 + 45
    return Version(groups, fixed, (), count_half=half)


def transformer() -> Case:
    return Case(
        "transformer",
        lambda: built(lambda: Transformer(HEADS, HIDDEN, rngs=nnx.Rngs(0)), 1),
        transformer_fn,
        init_params(_transformer_shapes(HEADS, HEAD_DIM, HIDDEN), 2),
        (_features(3, (2, 5, F_IN)),),
        _transformer_nnx_version(),
        _transformer_plain_version(),
        lambda: built(lambda: Transformer(HEADS // 2, HIDDEN // 2, rngs=nnx.Rngs(0)), 4),
        init_params(_transformer_shapes(HEADS // 2, HEAD_DIM // 2, HIDDEN // 2), 2),
    )


# ---------------------------------------------------------------- SwiGLU MLP in a residual block
# x (B, 6) -> dense 8 -> x + down(silu(gate(RMSNorm(x))) * up(RMSNorm(x))) -> dense 4.
# gate and up are coupled with down's input (hidden 16, exact); the width 8 is inexact (RMSNorm).


class SwiGLU(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.embed_in = nnx.Linear(6, 8, rngs=rngs)
        self.norm = nnx.RMSNorm(8, rngs=rngs)
        self.gate = nnx.Linear(8, hidden, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(8, hidden, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(hidden, 8, use_bias=False, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.embed_in(x)
        h = self.norm(x)
        x = x + self.down(nnx.silu(self.gate(h)) * self.up(h))
        return self.head(x)


def swiglu_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    x = dense(params["embed_in"], x)
    h = rms_norm(params["norm"], x)
    x = x + dense(params["down"], jax.nn.silu(dense(params["gate"], h)) * dense(params["up"], h))
    return dense(params["head"], x)


def _swiglu_shapes(hidden: int) -> dict[str, Any]:
    return {
        "embed_in": {"kernel": (6, 8), "bias": (8,)},
        "norm": {"scale": (8,)},
        "gate": {"kernel": (8, hidden)},
        "up": {"kernel": (8, hidden)},
        "down": {"kernel": (hidden, 8)},
        "head": {"kernel": (8, 4), "bias": (4,)},
    }


def swiglu() -> Case:
    groups = (
        G(
            8,
            False,
            one_to_one(
                8,
                ("embed_in.kernel", 1),
                ("embed_in.bias", 0),
                ("norm.scale", 0),
                ("gate.kernel", 0),
                ("up.kernel", 0),
                ("down.kernel", 1),
                ("head.kernel", 0),
            ),
            name="residual",
        ),
        G(16, True, one_to_one(16, ("gate.kernel", 1), ("up.kernel", 1), ("down.kernel", 0)), name="hidden"),
    )
    fixed = (("embed_in.kernel", 0), ("head.kernel", 1), ("head.bias", 0))
    # embed_in 6*8+8, norm 8, gate/up/down 8*8 each, head 8*4+4
    version = Version(groups, fixed, (), count_half=56 + 8 + 3 * 64 + 36)
    return Case(
        "swiglu",
        lambda: built(lambda: SwiGLU(16, rngs=nnx.Rngs(0)), 1),
        swiglu_fn,
        init_params(_swiglu_shapes(16), 2),
        (_features(3, (2, 6)),),
        version,
        version,
        lambda: built(lambda: SwiGLU(8, rngs=nnx.Rngs(0)), 4),
        init_params(_swiglu_shapes(8), 2),
    )


# ---------------------------------------------------------------- nnx.Embed + tied output projection
# tokens (B, 5) -> embed (11, 8) -> x + fc2(relu(fc1(x))) -> embed.attend (logits over the vocabulary).
# The width 8 couples the embedding's feature axis (read twice: gather and attend) with the MLP.


class TiedEmbed(nnx.Module):
    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(11, d, rngs=rngs)
        self.fc1 = nnx.Linear(d, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        x = x + self.fc2(nnx.relu(self.fc1(x)))
        return self.embed.attend(x)


def tied_embed_fn(params: dict[str, Any], tokens: jax.Array) -> jax.Array:
    table = params["embed"]["embedding"]
    x = jnp.take(table, tokens, axis=0)
    x = x + dense(params["fc2"], jax.nn.relu(dense(params["fc1"], x)))
    return x @ table.T


def _tied_shapes(d: int, hidden: int) -> dict[str, Any]:
    return {
        "embed": {"embedding": (11, d)},
        "fc1": {"kernel": (d, hidden), "bias": (hidden,)},
        "fc2": {"kernel": (hidden, d), "bias": (d,)},
    }


def tied_embed() -> Case:
    groups = (
        G(
            8,
            True,
            one_to_one(8, ("embed.embedding", 1), ("fc1.kernel", 0), ("fc2.kernel", 1), ("fc2.bias", 0)),
            name="width",
        ),
        G(16, True, one_to_one(16, ("fc1.kernel", 1), ("fc1.bias", 0), ("fc2.kernel", 0)), name="hidden"),
    )
    structural = (("embed.embedding", 0),)  # the vocabulary: token ids in, logits out
    # embed 11*4, fc1 4*8+8, fc2 8*4+4
    version = Version(groups, (), structural, count_half=44 + 40 + 36)
    tokens = jax.random.randint(jax.random.key(3), (2, 5), 0, 11, jnp.int32)
    return Case(
        "tied_embed",
        lambda: built(lambda: TiedEmbed(8, 16, rngs=nnx.Rngs(0)), 1),
        tied_embed_fn,
        init_params(_tied_shapes(8, 16), 2),
        (tokens,),
        version,
        version,
        lambda: built(lambda: TiedEmbed(4, 8, rngs=nnx.Rngs(0)), 4),
        init_params(_tied_shapes(4, 8), 2),
    )


# ---------------------------------------------------------------- stacked layers (scan)
# x (B, 6) -> dense 8 -> 3 x [x + fc2(relu(fc1(x)))] scanned over stacked weights -> dense 4.
# Stacked kernels: fc1 (3, 8, 16), fc2 (3, 16, 8). One hidden group for all layers (axis 2 of
# fc1's stacked kernel), one width group through the carry; the layer axis is in no group.
LAYERS = 3


class Block(nnx.Module):
    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.Linear(d, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.fc2(nnx.relu(self.fc1(x)))


class Stacked(nnx.Module):
    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.embed_in = nnx.Linear(6, d, rngs=rngs)

        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create_block(rngs: nnx.Rngs) -> Block:
            return Block(d, hidden, rngs=rngs)

        self.blocks = create_block(rngs)
        self.head = nnx.Linear(d, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def forward(x: jax.Array, block: Block) -> jax.Array:
            return block(x)

        return self.head(forward(self.embed_in(x), self.blocks))


def stacked_fn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    def body(x: jax.Array, layer: dict[str, Any]) -> tuple[jax.Array, None]:
        return x + dense(layer["fc2"], jax.nn.relu(dense(layer["fc1"], x))), None

    x, _ = lax.scan(body, dense(params["embed_in"], x), params["blocks"])
    return dense(params["head"], x)


def _stacked_shapes(d: int, hidden: int) -> dict[str, Any]:
    return {
        "embed_in": {"kernel": (6, d), "bias": (d,)},
        "blocks": {
            "fc1": {"kernel": (LAYERS, d, hidden), "bias": (LAYERS, hidden)},
            "fc2": {"kernel": (LAYERS, hidden, d), "bias": (LAYERS, d)},
        },
        "head": {"kernel": (d, 4), "bias": (4,)},
    }


def stacked() -> Case:
    groups = (
        G(
            8,
            True,
            one_to_one(
                8,
                ("embed_in.kernel", 1),
                ("embed_in.bias", 0),
                ("blocks.fc1.kernel", 1),
                ("blocks.fc2.kernel", 2),
                ("blocks.fc2.bias", 1),
                ("head.kernel", 0),
            ),
            name="width",
        ),
        G(
            16,
            True,
            one_to_one(16, ("blocks.fc1.kernel", 2), ("blocks.fc1.bias", 1), ("blocks.fc2.kernel", 1)),
            name="hidden",
        ),
    )
    fixed = (("embed_in.kernel", 0), ("head.kernel", 1), ("head.bias", 0))
    structural = tuple((f"blocks.{p}", 0) for p in ("fc1.kernel", "fc1.bias", "fc2.kernel", "fc2.bias"))
    # embed_in 6*4+4, fc1 3*(4*8+8), fc2 3*(8*4+4), head 4*4+4
    version = Version(groups, fixed, structural, count_half=28 + 120 + 108 + 20)
    return Case(
        "stacked",
        lambda: built(lambda: Stacked(8, 16, rngs=nnx.Rngs(0)), 1),
        stacked_fn,
        init_params(_stacked_shapes(8, 16), 2),
        (_features(3, (2, 6)),),
        version,
        version,
        lambda: built(lambda: Stacked(4, 8, rngs=nnx.Rngs(0)), 4),
        init_params(_stacked_shapes(4, 8), 2),
    )


BUILDERS: dict[str, Callable[[], Case]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
    "separable": separable,
    "flatten": flatten,
    "transformer": transformer,
    "swiglu": swiglu,
    "tied_embed": tied_embed,
    "stacked": stacked,
}


# ---------------------------------------------------------------- a reference mask and shrink
# Written from the expectations alone, so the expectations can be checked before (and
# independently of) jp.group_masks / jp.shrink: removing an exact group's channels must compute
# what zeroing them computes, and removing an inexact group's must not.


def owned_positions(g: G, path: str, axis: int, per_channel: int) -> tuple[tuple[int, ...], ...]:
    """The positions each channel of ``g`` owns on a member (one-to-one unless written down)."""
    if (path, axis) in g.positions:
        return g.positions[(path, axis)]
    assert per_channel == 1, f"{path}[{axis}]: a spread member needs its positions written down"
    return tuple((c,) for c in range(g.size))


Removal = Sequence[tuple[G, Sequence[int]]]  # (group, the channels removed from it)


def removed_positions(removed: Removal) -> dict[tuple[str, int], set[int]]:
    """``{(path, axis): positions}`` once the given channels of each group are gone."""
    out: dict[tuple[str, int], set[int]] = {}
    for g, channels in removed:
        for path, axis, per_channel in g.members:
            rows = owned_positions(g, path, axis, per_channel)
            out.setdefault((path, axis), set()).update(i for c in channels for i in rows[c])
    return out


def _each_leaf(tree: Any, removed: Removal, edit: Callable[[np.ndarray, int, list[int]], np.ndarray]) -> Any:
    from jaxprune import path_str

    positions = removed_positions(removed)

    def one(path: Any, x: Any) -> Any:
        name, value = path_str(path), np.asarray(x)
        for axis in range(value.ndim):
            if (name, axis) in positions:
                value = edit(value, axis, sorted(positions[(name, axis)]))
        return jnp.asarray(value)

    return jax.tree_util.tree_map_with_path(one, tree)


def _zeroed(value: np.ndarray, axis: int, positions: list[int]) -> np.ndarray:
    value = value.copy()
    index = [slice(None)] * value.ndim
    index[axis] = positions
    value[tuple(index)] = 0
    return value


def reference_masked(tree: Any, removed: Removal) -> Any:
    """``tree`` with the positions of the removed channels zeroed in every member."""
    return _each_leaf(tree, removed, _zeroed)


def reference_shrunk(tree: Any, removed: Removal) -> Any:
    """``tree`` with the positions of the removed channels deleted from every member."""
    return _each_leaf(tree, removed, lambda value, axis, positions: np.delete(value, positions, axis=axis))


def odd_channels(groups: Sequence[G]) -> Removal:
    """Half the channels of each group, not a prefix: 1, 3, 5, ..."""
    return [(g, range(1, g.size, 2)) for g in groups]


def with_state(model: nnx.Module, pure: Any) -> nnx.Module:
    """``model`` with its state replaced by a pure dict (`nnx.to_pure_dict` form)."""
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model
