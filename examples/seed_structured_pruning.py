"""The seed, done right: random structured pruning of a (32, 64, 56, 56) tensor.

A widely copied blog snippet calls
``mask, indices = RandomStructured.compute_mask(t, amount=0.3, dim=1)`` and says
dim=1 is "channel pruning", dim=2 "filter pruning", dim=3 "connection pruning".
In torch that call fails (``amount`` and ``dim`` belong to the constructor and
``compute_mask`` returns one tensor, no indices), and the dim labels are wrong
for conv weights. Here is what it meant, with jaxprune: an explicit key, a
boolean keep-mask, and the pruned indices read off the mask.

Run: python examples/seed_structured_pruning.py [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp

import jaxprune as jp


def seed_examples(key: jax.Array) -> None:
    """The seed's three calls: 30% of the slices along dims 1, 2 and 3."""
    t = jax.random.normal(jax.random.key(0), (32, 64, 56, 56))
    print(f"t: shape {t.shape} (an activation-shaped tensor: N, C, H, W)")
    for dim in (1, 2, 3):
        mask = jp.compute_mask(jax.random.fold_in(key, dim), t, amount=0.3, dim=dim)
        pruned = jp.pruned_indices(mask, dim)
        units = t.shape[dim]
        print(
            f"  dim={dim}: pruned {pruned.size} of {units} slices "
            f"(round(0.3 * {units}) = {round(0.3 * units)}): {pruned.tolist()}"
        )
        # Every pruned slice is entirely False, every other entirely True.
        assert pruned.size == round(0.3 * units)
        assert int(mask.sum()) == (units - pruned.size) * (t.size // units)


def conv_example(key: jax.Array) -> None:
    """What dim means for a Conv2d weight (out_channels, in_channels, kH, kW)."""
    weight = jax.random.normal(jax.random.key(1), (128, 64, 3, 3))
    print(f"\nConv2d weight: shape {weight.shape} = (out_channels, in_channels, kH, kW)")
    meaning = {
        0: "filters (output channels): whole 64x3x3 filters go",
        1: "input channels: one input channel is cut from every filter",
        2: "kernel rows: one row of every 3x3 kernel",
        3: "kernel columns: one column of every 3x3 kernel",
    }
    for dim, what in meaning.items():
        mask = jp.random_structured(jax.random.fold_in(key, 10 + dim), weight, 0.3, dim=dim)
        pruned = jp.pruned_indices(mask, dim)
        print(f"  dim={dim}: {pruned.size:3d} of {weight.shape[dim]:3d} pruned -> {what}")
    print("  (Pruning single weights, 'connections', is the unstructured methods' job.)")
    mask = jp.ln_structured(weight, 0.25, n=2, dim=0)
    print(f"  ln_structured(n=2, dim=0, 25%): filters with the smallest L2 norm: {jp.pruned_indices(mask, 0).tolist()}")


@dataclasses.dataclass(frozen=True)
class MeanMagnitudeFilters(jp.StructuredMethod):
    """A custom structured method: prune slices with the lowest mean |w|."""

    amount: float
    dim: int = 0

    def slice_scores(self, key: jax.Array | None, t: jax.Array) -> jax.Array:
        per_slice = jnp.moveaxis(jnp.abs(t), self.dim, 0).reshape(t.shape[self.dim], -1)
        return per_slice.mean(axis=1)


@dataclasses.dataclass(frozen=True)
class NoisyMagnitude(jp.UnstructuredMethod):
    """A custom unstructured method: |w| times a random factor in [0.5, 1.5)."""

    amount: float

    def scores(self, key: jax.Array | None, t: jax.Array) -> jax.Array:
        return jnp.abs(t) * jax.random.uniform(key, t.shape, minval=0.5, maxval=1.5)


def custom_example(key: jax.Array) -> None:
    """Your own scores get torch's counting, exact k, ties and iteration for free."""
    weight = jax.random.normal(jax.random.key(2), (16, 8, 3, 3))
    mask = MeanMagnitudeFilters(amount=0.25).compute_mask(None, weight)
    print(f"\nCustom structured method on {weight.shape}: pruned filters {jp.pruned_indices(mask, 0).tolist()}")
    again = MeanMagnitudeFilters(amount=0.25).compute_mask(None, weight, default_mask=mask)
    print(f"  a second round prunes 25% of the 12 remaining: {jp.pruned_indices(again, 0).tolist()}")
    noisy = jax.jit(lambda k, w: NoisyMagnitude(0.5).compute_mask(k, w))(key, weight)
    print(f"  custom unstructured method under jit: {int((~noisy).sum())} of {weight.size} entries pruned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for the random methods")
    args = parser.parse_args()
    key = jax.random.key(args.seed)
    seed_examples(key)
    conv_example(key)
    custom_example(key)


if __name__ == "__main__":
    main()
