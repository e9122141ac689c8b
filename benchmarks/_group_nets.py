"""Two models the size of real ones, for benchmarks/bench_groups.py (NNX, random init).

`Transformer(24, 1024, 16)`: a pre-norm encoder (LayerNorm, nnx.MultiHeadAttention,
GELU MLP of 4x width) over token ids, with a tied output projection.
`ResNet50`: torchvision's resnet50 layout in NHWC (bottleneck blocks 3-4-6-3,
BatchNorm in inference mode, projection shortcuts where the shape changes).
"""

from __future__ import annotations

import jax
from flax import nnx


class _Block(nnx.Module):
    def __init__(self, d: int, heads: int, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.up = nnx.Linear(d, 4 * d, rngs=rngs)
        self.down = nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.ln1(x))
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, layers: int, d: int, heads: int, *, vocab: int = 1000, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.blocks = nnx.List([_Block(d, heads, rngs) for _ in range(layers)])
        self.ln = nnx.LayerNorm(d, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.ln(x))


class _Bottleneck(nnx.Module):
    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs) -> None:
        cout = 4 * width

        def bn(n: int) -> nnx.BatchNorm:
            return nnx.BatchNorm(n, use_running_average=True, rngs=rngs)

        self.conv1, self.bn1 = nnx.Conv(cin, width, (1, 1), use_bias=False, rngs=rngs), bn(width)
        self.conv2 = nnx.Conv(width, width, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bn2 = bn(width)
        self.conv3, self.bn3 = nnx.Conv(width, cout, (1, 1), use_bias=False, rngs=rngs), bn(cout)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
            self.bn_shortcut = bn(cout)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = self.bn_shortcut(self.shortcut(x)) if self.project else x
        return nnx.relu(y + skip)


class ResNet50(nnx.Module):
    def __init__(self, *, classes: int = 1000, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Conv(3, 64, (7, 7), strides=2, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(64, use_running_average=True, rngs=rngs)
        blocks, cin = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(count):
                blocks.append(_Bottleneck(cin, width, stride if i == 0 else 1, rngs))
                cin = 4 * width
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.stem(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))
