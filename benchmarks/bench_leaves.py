"""A jitted global rule over many leaves: compile time by leaf count.

The case of issue 11 ("Many leaves"): ``jp.global_unstructured`` inside
``jit`` over a tree of many leaves of distinct small shapes (as in a real
model: every layer its own shape). The selection used to hold the radix
passes and the tie cut once per leaf, and XLA:CPU's compile time grew faster
than linearly with the leaves (31 s for 100, 236 s for 300 as filed). With
one device the keys are now laid end to end and selected as one array.

Each leaf count runs in a fresh subprocess (no shared caches, separate
peaks): trace and lower (``jax.jit(f).lower``), XLA compile (``.compile()``),
the first call and the median of warm calls, the jaxpr's equations (nested
ones included), and the process's peak RSS over lowering, compiling and
calling (VmHWM reset once the tree exists). ``--per-array`` adds the
per-array selection (what several devices run, and what one device ran
before) up to ``--per-array-max`` leaves. ``--floor`` adds the floor of any
jitted function with one output per leaf: ``x * a > 0`` leaf by leaf (one
XLA:CPU kernel per leaf, each compiled on its own).

Leaf ``i`` has shape ``(16 + i % 32, 24 + i // 32)``: distinct, 384 to a few
thousand float32 values. ``--big`` makes leaf ``i`` ``(2000 + i, 1000)``
instead (2M values each), where the peak memory of the two paths differs
visibly (the concatenated path copies the scores and their keys).

Run: python benchmarks/bench_leaves.py [--leaves 10,30,100,300,1000] [--per-array] [--per-array-max 100]
[--floor] [--big]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from _machine import describe, reset_peak_rss, status_bytes


def shapes(n: int, big: bool = False) -> list[tuple[int, int]]:
    if big:
        return [(2000 + i, 1000) for i in range(n)]
    return [(16 + i % 32, 24 + i // 32) for i in range(n)]


def _equations(jaxpr) -> int:
    import jax.extend.core

    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _equations(sub)
    return count


def child(n: int, path: str, repeats: int, big: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxprune as jp
    from jaxprune import _selection

    rng = np.random.default_rng(0)
    tree = {f"layer{i:04d}": jnp.asarray(rng.standard_normal(s, dtype=np.float32))
            for i, s in enumerate(shapes(n, big))}
    amount = jnp.float32(0.5)

    def step(t, a):
        if path == "floor":
            return jax.tree.map(lambda x: x * a > 0, t)
        return jp.global_unstructured(t, a)

    with _selection.forced(concatenate=False if path == "per array" else None):
        equations = _equations(jax.make_jaxpr(step)(tree, amount).jaxpr)
        reset_peak_rss()
        start = time.perf_counter()
        lowered = jax.jit(step).lower(tree, amount)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        masks = jax.block_until_ready(compiled(tree, amount))
        first_s = time.perf_counter() - start
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(tree, amount))
            warm.append(time.perf_counter() - start)
    total = sum(x.size for x in tree.values())
    pruned = sum(int(m.size - np.count_nonzero(np.asarray(m))) for m in jax.tree.leaves(masks))
    assert path == "floor" or pruned == round(0.5 * total), (pruned, total)
    return {
        "leaves": n, "values": total, "path": path,
        "equations": equations, "lower_s": lower_s, "compile_s": compile_s, "first_s": first_s,
        "warm_s": float(np.median(warm)), "peak_rss": status_bytes("VmHWM"),
    }


def measure(n: int, path: str, repeats: int, big: bool) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--path", path, "--repeats", str(repeats)]
    if big:
        cmd.append("--big")
    out = subprocess.run(cmd, cwd=here, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", default="10,30,100,300,1000", help="comma-separated leaf counts")
    parser.add_argument("--per-array", action="store_true", help="also the per-array selection (the old path)")
    parser.add_argument("--per-array-max", type=int, default=100, help="largest leaf count for --per-array")
    parser.add_argument("--floor", action="store_true", help="also x * a > 0 leaf by leaf (the floor)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--path", default="concatenated", help=argparse.SUPPRESS)
    parser.add_argument("--big", action="store_true", help="leaves of 2M values (memory)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.path, args.repeats, args.big)))
        return
    import jax

    print(f"{datetime.date.today()}, {describe(jax=jax.__version__)}")
    print("| leaves | values | path | jaxpr eqns | trace+lower s | compile s | first call s | warm ms | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    counts = [int(n) for n in args.leaves.split(",")]
    runs = [(n, "concatenated") for n in counts]
    if args.per_array:
        runs += [(n, "per array") for n in counts if n <= args.per_array_max]
    if args.floor:
        runs += [(n, "floor") for n in counts]
    for n, path in runs:
        r = measure(n, path, args.repeats, args.big)
        print(f"| {r['leaves']} | {r['values']:,} | {r['path']} | {r['equations']:,} | {r['lower_s']:.1f} | "
              f"{r['compile_s']:.1f} | {r['first_s']:.2f} | {r['warm_s'] * 1e3:.1f} | {r['peak_rss'] / 2**20:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
