"""CPU vs GPU: the reproducibility matrix's cases on both backends of one
process, against the digests recorded on the CPU development machine, plus one
timing of L1 on the GPU next to torch's on CUDA.

Run on a machine with a GPU (from the repository root)::

    python benchmarks/gpu_reproducibility.py

Prints one line per case (CPU digest == GPU digest == recorded digest) and
exits non-zero on any difference.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_reproducibility as matrix  # noqa: E402

import jaxprune as jp  # noqa: E402


def digests_on(device: jax.Device) -> dict[str, str]:
    with jax.default_device(device):
        x = {k: jax.device_put(v, device) for k, v in matrix._inputs().items()}
        out = {}
        for name, case in matrix.CASES.items():
            masks = case(x)
            leaves = jax.tree.leaves(masks)
            assert all(leaf.devices() == {device} for leaf in leaves), name
            out[name] = matrix.digest(masks)
        return out


def time_l1(n: int = 4096, reps: int = 5) -> None:
    import torch
    import torch.nn.utils.prune as prune

    w = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda t: jp.l1_unstructured(t, 0.5))
    f(w).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(w).block_until_ready()
        times.append(time.perf_counter() - t0)
    ours = sorted(times)[reps // 2]
    tw = torch.randn(n, n, device="cuda")
    method = prune.L1Unstructured(0.5)
    method.compute_mask(tw, torch.ones_like(tw))
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        method.compute_mask(tw, torch.ones_like(tw))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    theirs = sorted(times)[reps // 2]
    print(f"l1_unstructured {n}x{n} on {jax.devices()[0].device_kind}: jaxprune {ours * 1e3:.2f} ms, "
          f"torch {torch.__version__} CUDA {theirs * 1e3:.2f} ms, ratio {ours / theirs:.2f}x")


def main() -> int:
    gpu = jax.devices("gpu")[0]
    cpu = jax.devices("cpu")[0]
    print(f"jax {jax.__version__}, GPU {gpu.device_kind}, CPU backend {cpu.platform}")
    on_cpu, on_gpu = digests_on(cpu), digests_on(gpu)
    bad = 0
    for name in matrix.CASES:
        same = on_cpu[name] == on_gpu[name] == matrix.GOLDEN[name]
        bad += not same
        print(f"{'ok ' if same else 'DIFF'} {name:<22} cpu {on_cpu[name][:16]} gpu {on_gpu[name][:16]} "
              f"recorded {matrix.GOLDEN[name][:16]}")
    print(f"{len(matrix.CASES) - bad}/{len(matrix.CASES)} cases bitwise identical on CPU, GPU and the record")
    try:
        time_l1()
    except Exception as err:  # noqa: BLE001 - the timing is a bonus; report and go on
        print(f"timing skipped: {type(err).__name__}: {err}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
