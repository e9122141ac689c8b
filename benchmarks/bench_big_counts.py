"""Counts beyond 2**31 entries, for real: exact masks at 2.3B entries.

The case of issue 10: ``jp.global_unstructured`` over 3 leaves of 768M float32
zeros (2.3B entries). With amount 0.5 it used to prune all 2.3B entries (an
int32 histogram bin wrapped), with amount 1.0 it raised ``OverflowError``.
Every score ties, so the result is fixed by the tie rule (lower position in
leaf order first): amount 0.5 prunes leaf 0 entirely and the first half of
leaf 1. The three leaves are one array (jax arrays are immutable, so sharing
it is safe): 3.1 GB of scores for 2.3B entries, plus 2.3 GB of bool masks.

Then one tensor of more than 2**31 entries (int8 zeros, 2.15 GB) through
``jp.l1_unstructured`` (one jitted kernel: histograms and tie cut over a
single tensor beyond int32).

Asserts the exact counts and positions; prints the times.

Run: python benchmarks/bench_big_counts.py [--leaf-size 768000000] [--single-size 2148532224] [--no-global]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

from _machine import describe


def _pruned(mask: jax.Array) -> int:
    return int(mask.size - np.count_nonzero(np.asarray(mask)))


def check_global(leaf_size: int, amount: float) -> float:
    zeros = jnp.zeros(leaf_size, jnp.float32)
    tree = [zeros, zeros, zeros]
    total = 3 * leaf_size
    start = time.perf_counter()
    masks = jax.block_until_ready(jp.global_unstructured(tree, amount))
    seconds = time.perf_counter() - start
    k = round(amount * total)
    counts = [_pruned(m) for m in masks]
    assert sum(counts) == k, (amount, counts, k)
    # Ties go to the lower position in leaf order: the pruned entries are the first k.
    left = k
    for mask in masks:
        here = min(left, leaf_size)
        host = np.asarray(mask)
        assert not host[:here].any() and host[here:].all(), (amount, here)
        left -= here
    print(f"global_unstructured, 3 x {leaf_size:,} float32 zeros, amount {amount}: "
          f"pruned {sum(counts):,} (= round(amount * {total:,})) per leaf {counts}, {seconds:.1f} s")
    return seconds


def check_single(size: int, k: int) -> float:
    t = jnp.zeros(size, jnp.int8)
    start = time.perf_counter()
    mask = jax.block_until_ready(jp.l1_unstructured(t, k))
    seconds = time.perf_counter() - start
    host = np.asarray(mask)
    pruned = int(host.size - np.count_nonzero(host))
    assert pruned == k and not host[:k].any() and host[k:].all(), (k, pruned)
    print(f"l1_unstructured, one tensor of {size:,} int8 zeros, k={k:,}: exact, {seconds:.1f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaf-size", type=int, default=768_000_000)
    parser.add_argument("--single-size", type=int, default=2**31 + 2**20)
    parser.add_argument("--no-global", action="store_true", help="only the single tensor")
    args = parser.parse_args()
    print(describe())
    if not args.no_global:
        for amount in (0.5, 1.0):
            check_global(args.leaf_size, amount)
    for k in (args.single_size // 2 + 12345, args.single_size - 12345):  # below and above 2**31
        check_single(args.single_size, k)
    print("all counts exact")


if __name__ == "__main__":
    main()
