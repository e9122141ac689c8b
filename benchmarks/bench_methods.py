"""jaxprune vs torch.nn.utils.prune, side by side in one process.

For each tensor size and method: the median wall time of torch's
``Method(...).compute_mask(t, ones_like(t))`` and of the jitted jaxprune call
(compile excluded: one warm-up call first; ``block_until_ready`` on every
result), and their ratio (jaxprune / torch; below 1 = faster). Then
``global_unstructured`` over a ~100M-parameter tree of conv/linear shapes,
with jaxprune's peak memory measured in a fresh subprocess.

Run: python benchmarks/bench_methods.py [--reps 5] [--sizes conv,linear,big] [--no-global]
Prints a Markdown table (the README quotes it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.utils.prune as prune

import jaxprune as jp

from _machine import describe, median_time, reset_peak_rss, status_bytes

SIZES = {
    "conv": (512, 512, 3, 3),  # 2.36M
    "linear": (4096, 4096),  # 16.8M
    "big": (8192, 8192),  # 67.1M
}

# A VGG-16-like tree (narrower first classifier layer): 102.6M parameters.
GLOBAL_TREE = [
    (64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3),
    (256, 128, 3, 3), (256, 256, 3, 3), (256, 256, 3, 3),
    (512, 256, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3),
    (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3),
    (4096, 16384), (4096, 4096), (1000, 4096),
]



def bench_methods(sizes: list[str], reps: int) -> list[dict]:
    rows = []
    key = jax.random.key(0)
    for name in sizes:
        shape = SIZES[name]
        data = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        t_torch, ones = torch.from_numpy(data), torch.ones(shape)
        t_jax = jnp.asarray(data)
        methods = {
            "l1_unstructured(0.3)": (
                lambda: prune.L1Unstructured(0.3).compute_mask(t_torch, ones),
                jax.jit(lambda t: jp.l1_unstructured(t, 0.3)),
                (t_jax,),
            ),
            "random_unstructured(0.3)": (
                lambda: prune.RandomUnstructured(0.3).compute_mask(t_torch, ones),
                jax.jit(lambda k, t: jp.random_unstructured(k, t, 0.3)),
                (key, t_jax),
            ),
            "random_structured(0.3, dim=0)": (
                lambda: prune.RandomStructured(0.3, dim=0).compute_mask(t_torch, ones),
                jax.jit(lambda k, t: jp.random_structured(k, t, 0.3, dim=0)),
                (key, t_jax),
            ),
            "ln_structured(0.3, n=2, dim=0)": (
                lambda: prune.LnStructured(0.3, n=2, dim=0).compute_mask(t_torch, ones),
                jax.jit(lambda t: jp.ln_structured(t, 0.3, n=2, dim=0)),
                (t_jax,),
            ),
        }
        for method, (torch_fn, jax_fn, args) in methods.items():
            t_ref = median_time(torch_fn, reps)
            t_ours = median_time(lambda: jax.block_until_ready(jax_fn(*args)), reps)
            rows.append({"size": f"{name} {shape}", "method": method, "torch_s": t_ref, "jaxprune_s": t_ours})
            print(f"  {name:7s} {method:32s} torch {t_ref * 1e3:9.1f} ms  jaxprune {t_ours * 1e3:8.1f} ms  "
                  f"ratio {t_ours / t_ref:.3f}", file=sys.stderr, flush=True)
    return rows


def make_global_tree() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(shape, dtype=np.float32) for shape in GLOBAL_TREE]


def bench_global(reps: int) -> dict:
    arrays = make_global_tree()
    n_params = sum(a.size for a in arrays)
    modules = []
    for a in arrays:
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.from_numpy(a))
        modules.append(module)
    pairs = [(m, "weight") for m in modules]

    def torch_global() -> None:
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=0.3)
        for m in modules:
            prune.remove(m, "weight")  # back to plain parameters for the next rep

    def torch_only() -> None:
        start = time.perf_counter()
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=0.3)
        elapsed = time.perf_counter() - start
        for m in modules:
            prune.remove(m, "weight")
        timings.append(elapsed)

    timings: list[float] = []
    torch_global()  # warm-up
    for _ in range(reps):
        torch_only()
    t_ref = statistics.median(timings)

    tree = [jnp.asarray(a) for a in arrays]
    fn = jax.jit(lambda tr: jp.global_unstructured(tr, 0.3))
    t_ours = median_time(lambda: jax.block_until_ready(fn(tree)), reps)
    memory = measure_global_memory()
    print(f"  global {n_params / 1e6:.1f}M torch {t_ref:.2f} s jaxprune {t_ours:.3f} s ratio {t_ours / t_ref:.3f}; "
          f"peak {memory['peak_ratio']:.2f}x params", file=sys.stderr, flush=True)
    return {"params": n_params, "torch_s": t_ref, "jaxprune_s": t_ours, **memory}


def _memory_child() -> None:
    """In a fresh process: peak RSS of one jitted global_unstructured call."""
    arrays = make_global_tree()
    tree = [jnp.asarray(a) for a in arrays]
    del arrays
    params_bytes = sum(a.nbytes for a in tree)
    fn = jax.jit(lambda tr: jp.global_unstructured(tr, 0.3))
    compiled = fn.lower(tree).compile()
    rss_before = status_bytes("VmRSS")
    reset_peak_rss()
    masks = jax.block_until_ready(compiled(tree))
    peak = status_bytes("VmHWM")
    pruned = sum(int((~m).sum()) for m in masks)
    extra = max(peak - rss_before, 0)
    print(json.dumps({
        "params_bytes": params_bytes,
        "extra_bytes": extra,
        "peak_ratio": (params_bytes + extra) / params_bytes,
        "pruned": pruned,
    }))


def measure_global_memory() -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child"], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="conv,linear,big")
    parser.add_argument("--no-global", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child()
        return
    torch.set_num_threads(os.cpu_count() or 1)
    machine = describe(torch=torch.__version__, jax=jax.__version__)
    print(f"Measured {datetime.date.today().isoformat()} on {machine}; median of {args.reps} runs, "
          "compile excluded.\n")
    rows = bench_methods([s for s in args.sizes.split(",") if s], args.reps)
    print("| size | method | torch | jaxprune | ratio |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['method']} | {r['torch_s'] * 1e3:.1f} ms | {r['jaxprune_s'] * 1e3:.1f} ms "
              f"| {r['jaxprune_s'] / r['torch_s']:.2f}x |")
    if not args.no_global:
        g = bench_global(max(3, args.reps // 2))
        print(f"| VGG-16-like tree, {g['params'] / 1e6:.1f}M params | global_unstructured(0.3) "
              f"| {g['torch_s']:.2f} s | {g['jaxprune_s']:.3f} s | {g['jaxprune_s'] / g['torch_s']:.2f}x |")
        print(f"\nglobal_unstructured peak memory: params {g['params_bytes'] / 2**20:.0f} MiB + "
              f"{g['extra_bytes'] / 2**20:.0f} MiB during the call = {g['peak_ratio']:.2f}x the parameters' bytes")


if __name__ == "__main__":
    main()
