"""Channel pruning while training, then a smaller, faster model: a CNN on scikit-learn's digits.

A thin script over :mod:`jaxprune.demo` (``run_channels``), where the code
lives (``jaxprune demo --channels`` runs the same): a Flax NNX CNN (conv
widths 32 and 64) is trained dense, and trained with ``jp.pruning(optax.adam(lr),
groups, jp.polynomial_schedule(0.0, 0.75, ...))`` over its channel groups
(``groups = jp.channel_groups(forward, params, x)``), which prunes whole
channels gradually inside the jitted step. The pruned channels, read from
the optimizer's masks, are then removed with ``jp.shrink_model``; the demo
checks that the shrunk model's logits equal the pruned model's, trains a
dense model of the shrunk widths from scratch, and prints params, FLOPs
(XLA's cost analysis), inference time and test accuracy of each.

Run (from the repository root; needs the ``examples`` extra: flax, optax,
scikit-learn)::

    python examples/shrink_digits.py [--seed 0] [--steps 1000]

The same seed prints the same table, apart from the times (on the same
machine and jax version).
"""

from jaxprune.demo import main_channels

if __name__ == "__main__":
    main_channels(prog="shrink_digits.py")
