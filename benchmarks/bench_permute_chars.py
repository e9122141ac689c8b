"""Channel permutation on a trained model: does it lower N:M's perplexity cost?

Trains (or loads) the character-level transformer of examples/one_shot_chars.py,
then prunes its blocks' kernels 2:4 and 4:8 (the N:M axes from ``jp.n_m_rules``)
with magnitude and with SparseGPT (``jp.one_shot``, sequential), each on the
trained model as it is and on the same model after ``jp.permute_for_n_m``.
Prints validation perplexities, the magnitude N:M keeps, and checks that the
permuted dense model has the dense model's perplexity.

Run: python benchmarks/bench_permute_chars.py [--steps 400] [--load FILE] [--max-rounds N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _machine import describe

import jaxprune as jp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import one_shot_chars as chars  # noqa: E402


def kept(params: chars.Params, rules: dict[str, jp.NMSparse]) -> float:
    flat = {jp.path_str(p): np.abs(np.asarray(x, np.float64)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    total = 0.0
    for path, rule in rules.items():
        groups = np.sort(np.moveaxis(flat[path], rule.axis, -1).reshape(-1, rule.m), axis=-1)
        total += float(groups[:, rule.m - rule.n:].sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=chars.STEPS)
    parser.add_argument("--load", help="parameters saved by one_shot_chars.py --out-dir")
    parser.add_argument("--max-rounds", type=int, default=None)
    parser.add_argument("--patterns", default="2:4,4:8", help="comma-separated n:m (default %(default)s)")
    args = parser.parse_args()
    text = chars.load_text()
    calib, val = chars.sequences(text.calib, 256), chars.sequences(text.val, chars.VAL_SEQUENCES)
    graphdef, params = chars.init_model(0)
    if args.load:
        params = jp.load_tree(args.load, like=params)
    else:
        params = chars.train(graphdef, params, text.train, args.steps, 0)
    forward = chars.make_forward(graphdef)
    tokens = jax.ShapeDtypeStruct((chars.CALIB_BATCH, chars.SEQ_LEN), jnp.int32)
    batches = [jnp.asarray(b[:, :-1]) for b in chars.chunks(calib, chars.CALIB_BATCH)]
    dense = chars.perplexity(graphdef, params, val)

    start = time.perf_counter()
    patterns = [tuple(int(v) for v in p.split(":")) for p in args.patterns.split(",")]
    n0, m0 = patterns[0]
    result = jp.permute_for_n_m(forward, params, n0, m0, tokens, weights=[chars.PRUNED], max_rounds=args.max_rounds)
    permuted, perms = result
    seconds = time.perf_counter() - start
    dense_permuted = chars.perplexity(graphdef, permuted, val)
    print(f"# {describe(jax=jax.__version__)}, {datetime.date.today()}")
    print(f"dense perplexity {dense:.4f}; permuted ({n0}:{m0}) dense {dense_permuted:.4f}; "
          f"{len(perms)} groups searched ({sum(p.changed for p in perms)} changed) in {seconds:.1f} s; "
          f"{len(result.skipped)} skipped")
    print()
    print("| pattern | method | kept, as is | kept, permuted | perplexity, as is | perplexity, permuted |")
    print("|---|---|---|---|---|---|")
    for n, m in patterns:
        rules = {p: r for p, r in jp.n_m_rules(forward, params, n, m, tokens).items() if chars.is_pruned(p)}
        if (n, m) != (n0, m0):
            start = time.perf_counter()
            permuted_nm = jp.permute_for_n_m(forward, params, n, m, tokens, weights=[chars.PRUNED],
                                             max_rounds=args.max_rounds).params
            print(f"({n}:{m} search: {time.perf_counter() - start:.1f} s)", flush=True)
        else:
            permuted_nm = permuted
        for method in ("magnitude", "SparseGPT"):
            ppl = []
            for p in (params, permuted_nm):
                if method == "magnitude":
                    pruned = jp.apply_masks(p, jp.prune_tree(None, p, rules))
                else:
                    pruned, _ = jp.one_shot(forward, p, batches, {k: jp.SparseGPT(nm=(n, m)) for k in rules})
                ppl.append(chars.perplexity(graphdef, pruned, val))
            print(f"| {n}:{m} | {method} | {kept(params, rules):,.1f} | {kept(permuted_nm, rules):,.1f} | "
                  f"{ppl[0]:.4f} | {ppl[1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
