"""On a GPU: the chunked selection path (tuned for XLA:CPU) vs the
shape-keeping one (one scatter per pass), for the methods that rank entries.

Run on a GPU machine from the repository root: python benchmarks/gpu_paths.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import jaxprune as jp
from jaxprune import _selection


def median_ms(fn, reps: int = 7) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    key = jax.random.key(0)
    for n in (4096, 8192):
        w = jax.random.normal(key, (n, n))
        tree = {"a": w, "b": w[: n // 2]}
        cases = {
            "l1_unstructured": jax.jit(lambda t: jp.l1_unstructured(t, 0.5)),
            "random_unstructured": jax.jit(lambda t: jp.random_unstructured(key, t, 0.5)),
            "l1 ties (rounded)": jax.jit(lambda t: jp.l1_unstructured(jnp.round(t), 0.5)),
        }
        for name, f in cases.items():
            row = []
            for keep in (False, True):
                with _selection.forced(keep_shapes=keep):
                    row.append(median_ms(lambda: f(w)))
            print(f"{n}x{n} {name:22s} chunked {row[0]:8.2f} ms  shape-keeping {row[1]:8.2f} ms")
        row = []
        for keep in (False, True):
            with _selection.forced(keep_shapes=keep):
                row.append(median_ms(lambda: jp.global_unstructured(tree, 0.5)))
        print(f"{n}x{n} global (eager, 2 leaves) chunked {row[0]:8.2f} ms  shape-keeping {row[1]:8.2f} ms")


if __name__ == "__main__":
    main()
