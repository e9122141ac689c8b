"""Gradual magnitude pruning of a small CNN on real data: scikit-learn's digits.

A thin script over :mod:`jaxprune.demo`, where the code lives (``jaxprune
demo`` runs the same): a small Flax NNX CNN trained dense and with
``jp.pruning(optax.adam(lr), {"*.kernel": jp.L1Unstructured},
jp.polynomial_schedule(0.0, 0.9, ...))``; it prints test accuracy against
kernel sparsity, checks that every pruned weight is exactly 0, writes a plot,
and with ``--out-dir`` saves the final params and masks as safetensors.

Run (from the repository root; needs the ``examples`` extra: flax, optax,
scikit-learn, matplotlib)::

    python examples/prune_digits.py [--seed 0] [--steps 2000] [--plot prune_digits.png] [--out-dir DIR]

The same seed prints the same table (on the same machine and jax version).
"""

from jaxprune.demo import main

if __name__ == "__main__":
    main(prog="prune_digits.py", default_plot="prune_digits.png")
