"""Every check a GPU machine is lent for, as one script: run it once, read the summary.

Sections (each in its own process with its own time limit, so one hang or crash
does not cost the others; the whole run is planned for under 5 minutes):

1. ``digests``: the reproducibility matrix on CPU and GPU in one process,
   against the digests recorded on the development machine
   (``gpu_reproducibility.py``).
2. ``cuda-interop``: the torch bridge's CUDA tests (DLPack without a host
   round trip; the 2:4 export's CUDA path), from ``tests/``.
3. ``sharding``: the 8-device sharding tests (``tests/multidevice``) on this
   machine's jax, with 8 virtual CPU devices: masks keep their parameter's
   bits and sharding on jax versions the development machine cannot install.
4. ``speed``: each method at 4096x4096 and 8192x8192 against
   ``torch.nn.utils.prune`` on CUDA, and global L1 over a GPT-like tree of
   about 1B parameters against torch's concatenate + ``kthvalue``, in one
   process (``--section speed`` runs it alone).
5. ``semi-structured``: ``gpu_check_semi_structured.py`` (``torch.mm`` with
   the sparse weight against the dense masked one, and times).

It installs nothing. Without a GPU, the sections that need one say so and the
rest still run (``--sizes 256 --global-params 2e6`` makes a quick dry run on a
CPU). Exit status 1 when any section fails.

Run from the repository root: ``python benchmarks/gpu_check.py``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def _run(name: str, cmd: list[str], limit: float, env: dict[str, str] | None = None) -> tuple[str, float]:
    print(f"\n=== {name}: {' '.join(cmd)} (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit)
        status = "passed" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        status = f"FAILED (over {limit:.0f} s)"
    return status, time.perf_counter() - start


def _sections(args: argparse.Namespace) -> dict[str, tuple[list[str], float, dict[str, str] | None]]:
    py = sys.executable
    sharded = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
    speed = [py, str(HERE / "gpu_check.py"), "--section", "speed-inline", "--sizes", *map(str, args.sizes),
             "--global-params", str(args.global_params)]
    return {
        "digests": ([py, str(HERE / "gpu_reproducibility.py")], 60, None),
        "cuda-interop": ([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                          "tests/test_interop_tensors.py", "tests/test_semi_structured.py"], 60, None),
        "sharding": ([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                      "tests/multidevice/test_sharding_ways.py", "tests/multidevice/test_sharded_masks.py"], 100,
                     sharded),
        "speed": (speed, 90, None),
        "semi-structured": ([py, str(HERE / "gpu_check_semi_structured.py")], 40, None),
    }


# --------------------------------------------------------------------------
# The speed section (runs in its own process)
# --------------------------------------------------------------------------


def _speed(sizes: list[int], global_params: float) -> int:
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.utils.prune as prune

    import jaxprune as jp

    cuda = torch.cuda.is_available()
    tdev = "cuda" if cuda else "cpu"
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} on "
          f"{torch.cuda.get_device_name() if cuda else 'CPU (no CUDA: a dry run)'}")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def median_ms(fn, ready, reps: int = 5) -> float:
        ready(fn())  # warm-up (compile for jax)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            ready(fn())
            times.append(time.perf_counter() - start)
        return sorted(times)[reps // 2] * 1e3

    def torch_ready(x) -> None:
        sync()

    rows = []
    key = jax.random.key(0)
    for n in sizes:
        wj = jax.random.normal(key, (n, n), jnp.float32)
        wt = torch.randn(n, n, device=tdev)
        ones = torch.ones_like(wt)
        cases = {
            "l1_unstructured": (lambda: jp.l1_unstructured(wj, 0.5),
                                lambda: prune.L1Unstructured(0.5).compute_mask(wt, ones)),
            "random_unstructured": (lambda: jp.random_unstructured(key, wj, 0.5),
                                    lambda: prune.RandomUnstructured(0.5).compute_mask(wt, ones)),
            "random_structured": (lambda: jp.random_structured(key, wj, 0.5, dim=0),
                                  lambda: prune.RandomStructured(0.5, dim=0).compute_mask(wt, ones)),
            "ln_structured": (lambda: jp.ln_structured(wj, 0.5, 2, dim=0),
                              lambda: prune.LnStructured(0.5, n=2, dim=0).compute_mask(wt, ones)),
        }
        for name, (ours, theirs) in cases.items():
            j = median_ms(ours, jax.block_until_ready)
            t = median_ms(theirs, torch_ready)
            rows.append((f"{n}x{n}", name, j, t))
    # Global L1 over a GPT-like tree: 12 d^2 per layer (attention 4 d^2, MLP 8 d^2).
    d = 2048 if global_params >= 1e8 else 128
    layers = max(1, round(global_params / (12 * d * d)))
    shapes = [s for _ in range(layers) for s in [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]]
    keys = jax.random.split(key, len(shapes))
    tree = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes)]
    flat_t = [torch.randn(*s, device=tdev) for s in shapes]
    total = sum(a * b for a, b in shapes)

    def torch_global():
        scores = torch.cat([t.abs().flatten() for t in flat_t])
        k = round(0.5 * scores.numel())
        threshold = torch.kthvalue(scores.cpu() if not cuda else scores, k).values
        return [t.abs() > threshold for t in flat_t]

    j = median_ms(lambda: jp.global_unstructured(tree, 0.5), jax.block_until_ready, reps=3)
    t = median_ms(torch_global, torch_ready, reps=3)
    rows.append((f"{total / 1e9:.2f}B in {len(shapes)} leaves", "global_unstructured (l1)", j, t))
    print("\n| tensor | method | jaxprune ms | torch ms | jaxprune / torch |")
    print("|---|---|---|---|---|")
    for size, name, j, t in rows:
        print(f"| {size} | {name} | {j:.2f} | {t:.2f} | {j / t:.2f}x |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", action="append", help="run only these sections (repeatable)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--global-params", type=float, default=1e9)
    args = parser.parse_args()
    if args.section == ["speed-inline"]:
        return _speed(args.sizes, args.global_params)
    sections = _sections(args)
    chosen = args.section or list(sections)
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {list(sections)}")
    results = {name: _run(name, *sections[name]) for name in chosen}
    print("\n| section | result | seconds |\n|---|---|---|")
    for name, (status, seconds) in results.items():
        print(f"| {name} | {status} | {seconds:.0f} |")
    return int(any(not status.startswith("passed") for status, _ in results.values()))


if __name__ == "__main__":
    sys.exit(main())
