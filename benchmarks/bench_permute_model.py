"""Channel permutation for 2:4 on whole models: time, kept magnitude, and the function unchanged.

For ResNet-50 (torchvision's layout, NHWC, random init) and a 4-layer pre-norm
transformer (d_model 512, 8 heads, MLP 2048; nnx.MultiHeadAttention), both NNX:

* ``jp.n_m_rules`` (the N:M axes read from the jaxpr) and ``jp.permute_for_n_m``:
  wall time, channel groups searched and skipped;
* the magnitude 2:4 keeps over every ruled weight, before and after, against
  apex's "50% rows" bound (every row, along the N:M axis, keeps its largest
  half): efficacy = (after - before) / (bound - before), as apex reports it;
* the permuted model's output against the original's on one batch (max abs
  difference, relative to the output's scale).

Random init weights are like the random matrices of apex's table; trained
weights, with their outlier channels, usually gain more.

Run: python benchmarks/bench_permute_model.py [--max-rounds N] [--only resnet|transformer]
Prints a Markdown table (the README quotes it).
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np
from _group_nets import ResNet50, Transformer
from _machine import describe
from flax import nnx

import jaxprune as jp


def _kept(state: nnx.State, rules: dict[str, jp.NMSparse]) -> tuple[float, float]:
    """(magnitude N:M keeps, the "50% rows" bound: every row of each weight keeps its largest n/m), float64."""
    leaves = {jp.path_str(p): np.abs(np.asarray(x, np.float64)) for p, x in jax.tree_util.tree_leaves_with_path(state)}
    kept = bound = 0.0
    for path, rule in rules.items():
        w = np.moveaxis(leaves[path], rule.axis, -1)
        groups = np.sort(w.reshape(-1, rule.m), axis=-1)
        kept += float(groups[:, rule.m - rule.n:].sum())
        rows = np.sort(w.reshape(-1, w.shape[-1]), axis=-1)
        bound += float(rows[:, rows.shape[1] - rows.shape[1] * rule.n // rule.m:].sum())
    return kept, bound


def row(name: str, model: nnx.Module, x: jax.Array, max_rounds: int | None) -> str:
    before_out = np.asarray(model(x))
    start = time.perf_counter()
    rules = jp.n_m_rules(model, 2, 4, x)
    rules_s = time.perf_counter() - start
    before, bound = _kept(nnx.state(model), rules)
    start = time.perf_counter()
    result = jp.permute_for_n_m(model, 2, 4, x, max_rounds=max_rounds)
    permute_s = time.perf_counter() - start
    after, _ = _kept(nnx.state(model), rules)
    out = np.asarray(model(x))
    diff = float(np.max(np.abs(out - before_out)) / np.max(np.abs(before_out)))
    searched = len(result.permutations)
    changed = sum(p.changed for p in result.permutations)
    efficacy = (after - before) / (bound - before)
    params = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return (f"| {name} | {params / 1e6:.1f}M | {len(rules)} | {rules_s:.1f} s | {permute_s:.1f} s | "
            f"{searched} ({changed} changed), {len(result.skipped)} skipped | {before:,.0f} | {after:,.0f} | "
            f"{(after / before - 1) * 100:+.2f}% | {efficacy * 100:.1f}% | {diff:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-rounds", type=int, default=None, help="bound each group's search")
    parser.add_argument("--only", choices=("resnet", "transformer"))
    args = parser.parse_args()
    print(f"# {describe(jax=jax.__version__)}, {datetime.date.today()}")
    print("| model | params | 2:4 weights | n_m_rules | permute_for_n_m | groups | kept before | kept after | "
          "gain | efficacy | output diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    if args.only in (None, "transformer"):
        ids = jax.random.randint(jax.random.key(1), (2, 64), 0, 1000)
        print(row("transformer 4 x 512", Transformer(4, 512, 8, rngs=nnx.Rngs(0)), ids, args.max_rounds), flush=True)
    if args.only in (None, "resnet"):
        images = jax.random.normal(jax.random.key(2), (1, 64, 64, 3), jnp.float32)
        print(row("ResNet-50", ResNet50(rngs=nnx.Rngs(0)), images, args.max_rounds), flush=True)


if __name__ == "__main__":
    main()
