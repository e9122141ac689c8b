"""Channel groups and physical shrinking: analysis time, and inference after shrinking.

* ``channel_groups`` on a 24-layer transformer (d_model 1024, 16 heads, MLP 4096;
  302M parameters) and on ResNet-50 (torchvision's layout, 25.6M parameters),
  both built with ``nnx.eval_shape`` and traced with ``jax.ShapeDtypeStruct``
  inputs: no parameter or activation memory. Time and peak RSS growth.
* Inference after shrinking, jitted, compile excluded (median of ``--reps``),
  with XLA's cost analysis FLOPs: ResNet-50 (batch 4, 224x224) with 50% of
  every exact group removed, and a transformer (8 layers, d_model 768, 12 heads,
  batch 4 x 128 tokens) with 50% of its heads and of its MLP width removed
  (its residual width feeds LayerNorm: not exact, kept). Each shrunk model is
  checked against the masked model (same output to float32 tolerance) before
  it is timed.

Run: python benchmarks/bench_groups.py [--reps 5] [--skip-inference]
Prints Markdown tables (the README quotes them).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _group_nets import ResNet50, Transformer
from _machine import describe, status_bytes
from flax import nnx

import jaxprune as jp


def analysis_rows() -> list[str]:
    rows = []
    cases = [
        ("transformer 24 x 1024", lambda: Transformer(24, 1024, 16, rngs=nnx.Rngs(0)), (8, 512), jnp.int32),
        ("ResNet-50", lambda: ResNet50(rngs=nnx.Rngs(0)), (8, 224, 224, 3), jnp.float32),
    ]
    for name, build, shape, dtype in cases:
        model = nnx.eval_shape(build)
        params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        rss = status_bytes("VmRSS")
        start = time.perf_counter()
        groups = jp.channel_groups(model, jax.ShapeDtypeStruct(shape, dtype), exact_only=False)
        seconds = time.perf_counter() - start
        grown = (status_bytes("VmHWM") - rss) / 2**20
        exact = sum(g.exact for g in groups)
        rows.append(
            f"| {name} | {params / 1e6:.1f}M | {shape} | {len(groups)} ({exact} exact) | {seconds:.2f} s "
            f"| {max(grown, 0):.0f} MiB |"
        )
    return rows


def _timed(fn, *args, reps: int) -> tuple[float, float]:
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(cost.get("flops", float("nan")))


def _forward(graphdef):
    def run(state, x):
        return nnx.merge(graphdef, state)(x)

    return run


def inference_row(name: str, model: nnx.Module, x: jax.Array, keep_groups, reps: int) -> str:
    groups = jp.channel_groups(model, x)
    groups = jp.ChannelGroups([g for g in groups if keep_groups(g)])
    state = nnx.state(model)
    keep = jp.group_keep(groups, state, 0.5)
    masked = jp.apply_masks(state, jp.group_masks(groups, state, keep))
    graphdef = nnx.graphdef(model)
    dense_time, dense_flops = _timed(_forward(graphdef), state, x, reps=reps)
    expected = _forward(graphdef)(masked, x)
    params_before = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    jp.shrink_model(model, groups, keep)
    small = nnx.state(model)
    got = _forward(nnx.graphdef(model))(small, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-4, atol=2e-4)
    small_time, small_flops = _timed(_forward(nnx.graphdef(model)), small, x, reps=reps)
    params_after = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return (
        f"| {name} | {len(groups)} | {params_before / 1e6:.1f}M -> {params_after / 1e6:.1f}M "
        f"| {dense_flops / 1e9:.1f} -> {small_flops / 1e9:.1f} GFLOP | {dense_time * 1e3:.0f} ms "
        f"| {small_time * 1e3:.0f} ms | {small_time / dense_time:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args()
    print(f"{datetime.date.today()}, {describe(jax=jax.__version__)}\n")
    print("| model | params | input | groups | channel_groups | memory growth |")
    print("|---|---|---|---|---|---|")
    for row in analysis_rows():
        print(row, flush=True)
    if args.skip_inference:
        return
    print("\n| model | groups pruned 50% | params | FLOPs | dense | shrunk | ratio |")
    print("|---|---|---|---|---|---|---|")
    resnet = ResNet50(rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 224, 224, 3))
    print(inference_row("ResNet-50, batch 4", resnet, x, lambda g: True, args.reps), flush=True)
    del resnet
    transformer = Transformer(8, 768, 12, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(2), (4, 128), 0, 1000)

    def heads_and_mlp(group: jp.ChannelGroup) -> bool:
        # whole heads (the axis of size 12) and the MLP width (3072)
        return group.size in (12, 3072)

    print(inference_row("transformer 8 x 768, 4 x 128 tokens", transformer, ids, heads_and_mlp, args.reps))


if __name__ == "__main__":
    main()
