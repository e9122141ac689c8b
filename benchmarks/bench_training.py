"""What ``jp.pruning`` costs in a jitted training step, and how often the step compiles.

(a) Step time. For two models, the digits CNN of ``jaxprune.demo`` (``jaxprune demo``)
(batch 64 of real digits) and an MLP 784-2048-2048-10 (batch 256, random
data), one jitted training step (``value_and_grad`` + ``tx.update`` +
``optax.apply_updates``, params and optimizer state donated) with three
optimizers:

* plain ``optax.adam``;
* ``jp.pruning(optax.adam, {"*.kernel": jp.L1Unstructured}, schedule)`` on a
  non-update step (a schedule whose first update lies 10**6 steps away: the
  same program as any schedule's non-update steps, the ``lax.cond`` not taken);
* the same on an update step (a schedule that updates at every step, so every
  timed step recomputes the L1 masks of all kernels).

The variants run interleaved (one step of each per round, each threading its
own state), so a change in machine load hits them alike. Reported: the median
step time of each (compile and warm-up excluded, ``block_until_ready`` on
every result), the ratio of the medians, the paired ratio (the median over
rounds of pruning / plain in the same round), the minor page faults per step
(``ru_minflt``) and the compiled step's temporary buffer (XLA's memory
analysis). The table is measured twice: in this process (default glibc
malloc), and in a fresh one with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` raised. XLA:CPU allocates a step's temporary buffer
at every execution; glibc serves a request above its mmap threshold (at most
32 MiB by default) with a fresh mmap, whose pages the kernel zero-fills on
first touch at every step. The untaken mask-update branch enlarges the
temporary buffer (the L1 selection's scratch), so on the MLP it pushes the
buffer over that line: the difference between the two tables is that cost.

(b) Compilations. A 100-step run with ``jp.polynomial_schedule(0.0, 0.9,
start=0, end=90, every=10)`` (10 mask updates) counts the traces of the
jitted step with a Python counter inside it, and reads ``step._cache_size()``.

``--breakdown`` also times, for the MLP, the step with each piece of what the
wrapper adds (masked gradients, ``where`` on the updates, the ``lax.cond``)
written out by hand, to see which piece costs what (default environment).

Run: python benchmarks/bench_training.py [--reps-cnn 400] [--reps-mlp 40] [--no-tuned] [--breakdown]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax
from jax import lax

import jaxprune as jp
from jaxprune import demo as prune_digits  # the demo's model, loss and data

from _machine import describe

RULES = {"*.kernel": jp.L1Unstructured}
LR = 1e-3
# glibc settings under which a large per-execution buffer is reused instead of
# being mmap'd (and page-faulted in) afresh at every step.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)}
Batch = tuple[jax.Array, jax.Array]
LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


class MLP(nnx.Module):
    """784-2048-2048-10 with relu."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(784, 2048, rngs=rngs)
        self.l2 = nnx.Linear(2048, 2048, rngs=rngs)
        self.l3 = nnx.Linear(2048, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def cnn_setup() -> tuple[str, LossFn, Any, Batch]:
    """The digits CNN, its loss, params and a batch of 64 training images."""
    data = prune_digits.load_data()
    graphdef, params = prune_digits.init_model(0)
    batch = (data.x_train[:64], data.y_train[:64])
    return "digits CNN", lambda p, x, y: prune_digits.loss_fn(graphdef, p, x, y), params, batch


def mlp_setup() -> tuple[str, LossFn, Any, Batch]:
    """The MLP, its loss, params and a random batch of 256."""
    graphdef, params = nnx.split(MLP(rngs=nnx.Rngs(0)), nnx.Param)
    x = jax.random.normal(jax.random.key(1), (256, 784))
    y = jax.random.randint(jax.random.key(2), (256,), 0, 10)

    def loss(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()

    return "MLP 784-2048-2048-10", loss, params, (x, y)


def make_step(loss: LossFn, tx: optax.GradientTransformation, counter: list[int] | None = None) -> Callable:
    """A jitted training step ``(params, opt_state, x, y) -> (params, opt_state, loss)``, state donated."""

    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        if counter is not None:
            counter[0] += 1  # runs once per trace
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def copy_tree(tree: Any) -> Any:
    """A fresh copy (donation invalidates the buffers a step consumes)."""
    return jax.tree.map(jnp.copy, tree)


class Timing(NamedTuple):
    """Per-round step times (s) of each variant and its minor page faults per step."""

    times: dict[str, list[float]]
    faults: dict[str, float]


def time_interleaved(steps: dict[str, Callable], params: Any, txs: dict[str, Any], batch: Batch, reps: int,
                     warmup: int = 3) -> Timing:
    """Time ``reps`` rounds, one step of each variant per round, each threading its own state.

    Also counts each variant's minor page faults (``ru_minflt``) per step: a
    step whose buffers are mmap'd afresh pays for zeroing their pages.
    """
    states = {}
    for name, tx in txs.items():
        p = copy_tree(params)
        states[name] = (p, tx.init(p))
    for name, step in steps.items():
        for _ in range(warmup):  # compile, then settle
            p, s, value = step(*states[name], *batch)
            states[name] = (p, s)
            jax.block_until_ready((p, s, value))
    times: dict[str, list[float]] = {name: [] for name in steps}
    faults: dict[str, int] = {name: 0 for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            out = jax.block_until_ready(step(*states[name], *batch))
            times[name].append(time.perf_counter() - start)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
            states[name] = out[:2]
    return Timing(times, {name: n / reps for name, n in faults.items()})


def temp_mib(step: Callable, params: Any, tx: Any, batch: Batch) -> float:
    """Size of the compiled step's temporary buffer in MiB (XLA's memory analysis)."""
    return step.lower(params, tx.init(params), *batch).compile().memory_analysis().temp_size_in_bytes / 2**20


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of time / base time in the same round."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def never_updates() -> jp.PolynomialSchedule:
    """A schedule whose first update is 10**6 steps away: every timed step is a non-update step."""
    return jp.polynomial_schedule(0.0, 0.9, start=10**6, end=10**6 + 10, every=1)


def always_updates() -> jp.PolynomialSchedule:
    """A schedule that updates the masks at every step."""
    return jp.polynomial_schedule(0.0, 0.9, start=0, end=10**6, every=1)


def bench_step(setup: Callable[[], tuple[str, LossFn, Any, Batch]], reps: int) -> dict:
    """Median step times of plain adam and of jp.pruning on non-update and update steps."""
    name, loss, params, batch = setup()
    txs = {
        "plain": optax.adam(LR),
        "non-update": jp.pruning(optax.adam(LR), RULES, never_updates()),
        "update": jp.pruning(optax.adam(LR), RULES, always_updates()),
    }
    steps = {k: make_step(loss, tx) for k, tx in txs.items()}
    timing = time_interleaved(steps, params, txs, batch, reps)
    med = {k: statistics.median(v) for k, v in timing.times.items()}
    paired = {k: paired_ratio(timing.times[k], timing.times["plain"]) for k in ("non-update", "update")}
    temp = {k: temp_mib(steps[k], params, txs[k], batch) for k in txs}
    print(f"  {name}: plain {med['plain'] * 1e3:.2f} ms, non-update {med['non-update'] * 1e3:.2f} ms "
          f"(paired {paired['non-update']:.3f}x), update {med['update'] * 1e3:.2f} ms "
          f"(paired {paired['update']:.3f}x)", file=sys.stderr, flush=True)
    return {"model": name, "params": sum(leaf.size for leaf in jax.tree.leaves(params)),
            "batch": int(batch[0].shape[0]), "median": med, "paired": paired, "faults": timing.faults,
            "temp": temp}


def count_compiles(setup: Callable[[], tuple[str, LossFn, Any, Batch]], n_steps: int = 100) -> dict:
    """Traces and jit cache entries of the pruning step over a run with 10 mask updates."""
    name, loss, params, batch = setup()
    schedule = jp.polynomial_schedule(0.0, 0.9, start=0, end=90, every=10)
    tx = jp.pruning(optax.adam(LR), RULES, schedule, key=jax.random.key(0))
    counter = [0]
    step = make_step(loss, tx, counter)
    params = copy_tree(params)
    state = tx.init(params)
    for _ in range(n_steps):
        params, state, _ = step(params, state, *batch)
    jax.block_until_ready(params)
    report = jp.sparsity_report(params, state.masks)
    kernels = jp.SparsityReport(tuple(leaf for leaf in report.leaves if leaf.path.endswith("kernel")))
    return {
        "model": name,
        "steps": n_steps,
        "updates": sum(bool(schedule.is_update(t)) for t in range(n_steps)),
        "traces": counter[0],
        "cache_size": step._cache_size(),
        "sparsity": kernels.sparsity,
    }


# --------------------------------------------------------------------------
# --breakdown: the wrapper's pieces, written out by hand, for the MLP
# --------------------------------------------------------------------------


def _finish(mask: jax.Array | None, update: jax.Array, param: jax.Array) -> jax.Array:
    return update if mask is None else jnp.where(mask, update, -param.astype(update.dtype))


def breakdown(reps: int) -> list[dict]:
    """The MLP step with each piece of jp.pruning added to plain adam by hand.

    Each variant carries ``(adam state, masks, count)``; the ``lax.cond``
    predicate is never true, as on a non-update step. "cheap branch" is a cond
    whose update branch only inverts the masks: the same control flow, without
    the L1 selection's buffers.
    """
    _, loss, params, batch = mlp_setup()
    adam = optax.adam(LR)
    masks0 = jp.pruning(adam, RULES, never_updates()).init(params).masks
    is_none = lambda x: x is None  # noqa: E731

    def l1_masks(p: Any, m: Any) -> Any:
        return jp.prune_tree(None, p, {"*.kernel": jp.L1Unstructured(0.5)}, default_masks=m)

    def cheap_masks(p: Any, m: Any) -> Any:
        return jax.tree.map(lambda x: ~x, m)

    def variant(mask_grads: bool, where_updates: bool, branch: Callable | None, late: bool = False) -> Callable:
        def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
            inner, masks, count = state
            value, grads = jax.value_and_grad(loss)(params, x, y)
            if branch is not None and not late:
                masks = lax.cond(count >= 10**6, lambda m: branch(params, m), lambda m: m, masks)
            if mask_grads:
                grads = jp.apply_masks(grads, masks)
            updates, inner = adam.update(grads, inner, params)
            if where_updates:
                updates = jax.tree.map(_finish, masks, updates, params, is_leaf=is_none)
            new = optax.apply_updates(params, updates)
            if branch is not None and late:
                masks = lax.cond(count >= 10**6, lambda m: branch(new, m), lambda m: m, masks)
            return new, (inner, masks, count + 1), value

        return jax.jit(step, donate_argnums=(0, 1))

    class _State:  # the init that time_interleaved calls
        def init(self, p: Any) -> Any:
            return (adam.init(p), copy_tree(masks0), jnp.int32(0))

    steps = {
        "plain adam": variant(False, False, None),
        "+ masked grads": variant(True, False, None),
        "+ where on updates": variant(False, True, None),
        "+ masked grads + where": variant(True, True, None),
        "+ lax.cond, cheap branch": variant(False, False, cheap_masks),
        "+ lax.cond, L1 branch (not taken)": variant(False, False, l1_masks),
        "+ all three (jp.pruning by hand)": variant(True, True, l1_masks),
        "+ all three, cond after the update": variant(True, True, l1_masks, late=True),
    }
    txs: dict[str, Any] = {k: _State() for k in steps}
    txs["jp.pruning"] = jp.pruning(adam, RULES, never_updates())
    steps["jp.pruning"] = make_step(loss, txs["jp.pruning"])
    timing = time_interleaved(steps, params, txs, batch, reps)
    base = timing.times["plain adam"]
    return [{"variant": k, "median": statistics.median(v), "paired": paired_ratio(v, base),
             "faults": timing.faults[k], "temp": temp_mib(steps[k], params, txs[k], batch)}
            for k, v in timing.times.items()]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def print_step_table(rows: list[dict]) -> None:
    print("| model | step | plain adam | jp.pruning | ratio | paired ratio | page faults/step | temp buffer |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = f"{r['model']} ({r['params']:,} params, batch {r['batch']})"
        plain = r["median"]["plain"]
        for kind in ("non-update", "update"):
            t = r["median"][kind]
            print(f"| {label} | {kind} | {_ms(plain)} | {_ms(t)} | {t / plain:.3f}x | {r['paired'][kind]:.3f}x "
                  f"| {r['faults']['plain']:,.0f} / {r['faults'][kind]:,.0f} "
                  f"| {r['temp']['plain']:.1f} / {r['temp'][kind]:.1f} MiB |")
    print()
    for r in rows:
        extra = r["median"]["update"] - r["median"]["non-update"]
        ok = "within" if r["paired"]["non-update"] <= 1.05 else "ABOVE"
        print(f"- {r['model']}: a non-update step takes {r['paired']['non-update']:.3f}x plain adam's time "
              f"({ok} the 1.05x target); an update step {_ms(extra)} more than a non-update step")


def timing_child(reps_cnn: int, reps_mlp: int) -> list[dict]:
    """The step table's rows measured in a fresh process with TUNED_MALLOC in its environment."""
    out = subprocess.run(
        [sys.executable, __file__, "--timing-child", "--reps-cnn", str(reps_cnn), "--reps-mlp", str(reps_mlp)],
        check=True, capture_output=True, text=True, env={**os.environ, **TUNED_MALLOC},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps-cnn", type=int, default=400, help="timed rounds for the digits CNN")
    parser.add_argument("--reps-mlp", type=int, default=40, help="timed rounds for the MLP")
    parser.add_argument("--no-tuned", action="store_true", help="skip the run with glibc's malloc thresholds raised")
    parser.add_argument("--breakdown", action="store_true", help="also time the wrapper's pieces (MLP)")
    parser.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timing_child:
        print(json.dumps([bench_step(cnn_setup, args.reps_cnn), bench_step(mlp_setup, args.reps_mlp)]))
        return

    machine = describe(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__)
    print(f"Measured {datetime.date.today().isoformat()} on {machine}; median of {args.reps_cnn} (CNN) / "
          f"{args.reps_mlp} (MLP) interleaved rounds, compile excluded, params and optimizer state donated; "
          f"1-min load average at start {os.getloadavg()[0]:.2f}.\n")
    print("(a) One training step; page faults and temp buffer: plain / jp.pruning. Default environment:\n")
    print_step_table([bench_step(cnn_setup, args.reps_cnn), bench_step(mlp_setup, args.reps_mlp)])
    if not args.no_tuned:
        print("\nThe same in a fresh process with " + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
              + " (glibc reuses large buffers instead of mmap'ing them afresh every step):\n")
        print_step_table(timing_child(args.reps_cnn, args.reps_mlp))

    compiles = [count_compiles(cnn_setup), count_compiles(mlp_setup)]
    print("\n(b) Compilations of the jitted pruning step:\n")
    print("| model | steps | mask updates | traces (Python counter) | step._cache_size() | final kernel sparsity |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in compiles:
        print(f"| {c['model']} | {c['steps']} | {c['updates']} | {c['traces']} | {c['cache_size']} "
              f"| {c['sparsity']:.2%} |")

    if args.breakdown:
        print(f"\nBreakdown, MLP 784-2048-2048-10, batch 256, default environment (median of {args.reps_mlp} "
              "interleaved rounds):\n")
        print("| step | time | paired ratio to plain adam | page faults/step | temp buffer |")
        print("|---|---:|---:|---:|---:|")
        for b in breakdown(args.reps_mlp):
            print(f"| {b['variant']} | {_ms(b['median'])} | {b['paired']:.3f}x | {b['faults']:,.0f} "
                  f"| {b['temp']:.1f} MiB |")
    print(f"\n1-min load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
