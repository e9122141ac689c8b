"""global_unstructured at a billion parameters on one machine, next to torch.

The tree has a GPT-like decoder's real layer shapes (d_model 2048: per layer
two LayerNorms, QKV 2048x6144, output 2048x2048, MLP 2048x8192 and 8192x2048,
with biases; 50.4M parameters a layer). The big tree is 18 layers plus a
50304x2048 embedding: 1.009B float32 parameters (4.0 GB).

Each measurement runs in a fresh subprocess (so peaks do not mix):
* jaxprune: ``jp.global_unstructured(tree, 0.9, progress=...)`` called twice
  outside ``jit`` (the first includes compilation); the second call's time,
  the time of each pass, and the peak memory over both calls (VmHWM reset
  after the tree is built: params + everything the calls add, compilation
  included).
* torch: ``prune.global_unstructured(pairs, L1Unstructured, amount=0.9)`` once
  on modules holding the same shapes, with the same memory measure, under a
  20 GiB address-space limit (a failure is reported, not fatal).

The ratio is taken at 2 layers (100.7M parameters), measured in the same run.

Run: python benchmarks/bench_scale.py [--layers 18] [--torch-layers 2,6] [--amount 0.9]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

from _machine import describe, reset_peak_rss, status_bytes

D_MODEL, VOCAB = 2048, 50304


def layer_shapes(layers: int, embedding: bool) -> list[tuple[str, tuple[int, ...]]]:
    d = D_MODEL
    shapes = [("embed", (VOCAB, d))] if embedding else []
    for i in range(layers):
        shapes += [
            (f"h{i}.ln1.scale", (d,)), (f"h{i}.ln1.bias", (d,)),
            (f"h{i}.attn.qkv.kernel", (d, 3 * d)), (f"h{i}.attn.qkv.bias", (3 * d,)),
            (f"h{i}.attn.out.kernel", (d, d)), (f"h{i}.attn.out.bias", (d,)),
            (f"h{i}.ln2.scale", (d,)), (f"h{i}.ln2.bias", (d,)),
            (f"h{i}.mlp.up.kernel", (d, 4 * d)), (f"h{i}.mlp.up.bias", (4 * d,)),
            (f"h{i}.mlp.down.kernel", (4 * d, d)), (f"h{i}.mlp.down.bias", (d,)),
        ]
    return shapes


def make_leaf(i: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(shape, dtype=np.float32)


def jaxprune_child(layers: int, embedding: bool, amount: float) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxprune as jp

    tree = {}
    for i, (name, shape) in enumerate(layer_shapes(layers, embedding)):
        leaf = make_leaf(i, shape)
        tree[name] = jnp.asarray(leaf)
        del leaf
    params = sum(x.size for x in tree.values())
    params_bytes = sum(x.nbytes for x in tree.values())
    stamps: list[float] = []

    def progress(done: int, total: int) -> None:
        stamps.append(time.perf_counter())
        print(f"    jaxprune pass {done}/{total} at {stamps[-1] - start:.2f} s", file=sys.stderr, flush=True)

    # The baseline is taken before any pruning call: memory the allocator keeps
    # after the first call (and reuses in the second) counts as the call's.
    rss_before = status_bytes("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    first = jax.block_until_ready(jp.global_unstructured(tree, amount, progress=progress))
    first_s = time.perf_counter() - start
    del first
    stamps.clear()
    start = time.perf_counter()
    masks = jax.block_until_ready(jp.global_unstructured(tree, amount, progress=progress))
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")  # over both calls, compilation included
    pruned = sum(int(jnp.sum(~m)) for m in masks.values())
    assert pruned == round(amount * params), (pruned, params)
    passes = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    return {"params": params, "params_bytes": params_bytes, "first_call_s": first_s, "seconds": seconds,
            "pass_s": passes, "extra_bytes": max(peak - rss_before, 0),
            "peak_ratio": (params_bytes + max(peak - rss_before, 0)) / params_bytes, "pruned": pruned}


def torch_child(layers: int, embedding: bool, amount: float) -> dict:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (20 << 30, 20 << 30))
    import torch
    import torch.nn.utils.prune as prune

    torch.set_num_threads(os.cpu_count() or 1)
    modules = []
    for i, (_, shape) in enumerate(layer_shapes(layers, embedding)):
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.from_numpy(make_leaf(i, shape)))
        modules.append(module)
    params = sum(m.weight.numel() for m in modules)
    params_bytes = params * 4
    rss_before = status_bytes("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    try:
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    except (RuntimeError, MemoryError) as err:
        return {"params": params, "failed": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")
    pruned = sum(int((m.weight_mask == 0).sum()) for m in modules)
    return {"params": params, "seconds": seconds, "extra_bytes": max(peak - rss_before, 0),
            "peak_ratio": (params_bytes + max(peak - rss_before, 0)) / params_bytes, "pruned": pruned}


def run_child(kind: str, layers: int, embedding: bool, amount: float) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--layers", str(layers), "--amount", str(amount)]
    if embedding:
        cmd.append("--embedding")
    result = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        return {"failed": f"exit status {result.returncode} (killed?)"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=18, help="decoder layers of the big tree (plus the embedding)")
    parser.add_argument("--torch-layers", default="2,6", help="tree sizes (layers, no embedding) torch is run on")
    parser.add_argument("--torch-big", action="store_true", help="also run torch on the big tree")
    parser.add_argument("--amount", type=float, default=0.9)
    parser.add_argument("--child", choices=["jaxprune", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--embedding", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = jaxprune_child if args.child == "jaxprune" else torch_child
        print(json.dumps(child(args.layers, args.embedding, args.amount)))
        return

    import jax
    import torch

    print(f"Measured {datetime.date.today().isoformat()} on "
          f"{describe(torch=torch.__version__, jax=jax.__version__)}; global_unstructured(amount={args.amount}), "
          "one call each (jaxprune: time of the second call, compiled; peak over both, compilation "
          "included), peak = params + what the calls add.\n")
    rows = []
    for layers in [int(x) for x in args.torch_layers.split(",") if x]:
        rows.append((f"{layers} layers", "torch", run_child("torch", layers, False, args.amount)))
        rows.append((f"{layers} layers", "jaxprune", run_child("jaxprune", layers, False, args.amount)))
    if args.torch_big:
        rows.append((f"{args.layers} layers + embedding", "torch", run_child("torch", args.layers, True, args.amount)))
    big = run_child("jaxprune", args.layers, True, args.amount)
    rows.append((f"{args.layers} layers + embedding", "jaxprune", big))

    print("| tree | params | library | time | peak memory |")
    print("|---|---:|---|---:|---:|")
    for tree, library, r in rows:
        if "failed" in r:
            print(f"| {tree} | {r.get('params', 0) / 1e6:.1f}M | {library} | failed: {r['failed']} | |")
            continue
        print(f"| {tree} | {r['params'] / 1e6:.1f}M | {library} | {r['seconds']:.2f} s | "
              f"{r['peak_ratio']:.2f}x params |")
    by_tree: dict[str, dict[str, dict]] = {}
    for tree, library, r in rows:
        by_tree.setdefault(tree, {})[library] = r
    for tree, libs in by_tree.items():
        if "seconds" in libs.get("torch", {}) and "seconds" in libs.get("jaxprune", {}):
            print(f"\n{tree}: jaxprune / torch = {libs['jaxprune']['seconds'] / libs['torch']['seconds']:.3f}x")
    if "pass_s" in big:
        passes = ", ".join(f"{t:.2f} s" for t in big["pass_s"])
        print(f"\nbig tree: first call (with compilation) {big['first_call_s']:.2f} s; second call {big['seconds']:.2f} s "
              f"by pass: {passes}; peak {big['extra_bytes'] / 2**30:.2f} GiB over the parameters' "
              f"{big['params_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
