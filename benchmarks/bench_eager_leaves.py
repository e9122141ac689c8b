"""Eager pruning of trees of many leaves of distinct shapes (issue 11, "Many leaves").

Each leaf count runs in a fresh process with jax's compilation cache off
(``JAXPRUNE_CACHE_DIR=""``): the first call of ``jp.global_unstructured``
(``"l1"`` and ``"random"``) and of ``jp.prune_tree`` with ``L1Unstructured``
and ``RandomStructured(dim=0)`` rules, each timed on its own, and the
process's peak RSS growth over them. Leaf ``i`` has shape
``(8 + i % 97, 3 + i // 97)``: all distinct. Concrete CPU arrays take the
NumPy path (jaxprune/_host.py), so nothing is compiled per shape; it used to
be about 4 compiles and 7.6 MB kept per shape (300 leaves: 156 s).

Run: python benchmarks/bench_eager_leaves.py [--leaves 100,300,1000,2000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from _machine import describe

_CHILD = """
import json, resource, sys, time
import numpy as np, jax, jaxprune as jp
n = int(sys.argv[1])
rng = np.random.default_rng(0)
tree = {f"l{i}": jax.device_put(rng.standard_normal((8 + i % 97, 3 + i // 97)).astype(np.float32))
        for i in range(n)}
key = jax.random.key(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"values": sum(v.size for v in tree.values())}
calls = {
    "global l1": lambda: jp.global_unstructured(tree, 0.5),
    "global random": lambda: jp.global_unstructured(tree, 0.5, method="random", key=key),
    "prune_tree l1": lambda: jp.prune_tree(None, tree, {"*": jp.L1Unstructured(0.5)}),
    "prune_tree random-structured": lambda: jp.prune_tree(key, tree, {"*": jp.RandomStructured(0.5, 0)}),
}
for name, call in calls.items():
    start = time.perf_counter()
    jax.block_until_ready(call())
    out[name] = time.perf_counter() - start
out["peak"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", default="100,300,1000,2000")
    args = parser.parse_args()
    env = {**os.environ, "JAXPRUNE_CACHE_DIR": ""}
    print(f"{datetime.date.today()}, {describe()}\n")
    print("| leaves | values | global l1 | global random | prune_tree l1 | prune_tree random-structured | peak RSS growth |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in map(int, args.leaves.split(",")):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(n)], capture_output=True, text=True, env=env,
                              check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {n} | {r['values']:,} | {r['global l1']:.2f} s | {r['global random']:.2f} s "
              f"| {r['prune_tree l1']:.2f} s | {r['prune_tree random-structured']:.2f} s "
              f"| {r['peak'] / 2**20:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
