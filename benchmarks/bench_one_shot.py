"""One-shot pruning of one layer: jaxprune's SparseGPT and Wanda against a torch
port of the official algorithms (IST-DASLab/sparsegpt ``add_batch`` and
``fasterprune``; locuslab/wanda ``prune_wanda``), in one process, on the CPU.

The torch port is the official math in float32 (the same statistics, the
same inverse and Cholesky calls, the same column loop); quantization and
logging left out. Timings: the statistics over every calibration batch (the
calibration batches exist before the clock starts), then the pruning from
those statistics (jaxprune: jitted, one warm-up call first, compile
excluded), the fastest of ``--reps`` calls (the statistics: one). Memory:
for jaxprune, what XLA allocates for one call (temporaries and outputs; per
batch for the statistics); for torch, the growth of the process's peak RSS
over the RSS before the call (the kernel, statistics and batches already
held are not counted).

Wanda: the time of ``jp.wanda_mask`` from the statistics, next to the time
of one elementwise pass over the kernel (a jitted ``|W| * s`` with a sum) in
the same run: the issue asks for at most two such passes beyond the
statistics.

Run: python benchmarks/bench_one_shot.py [--size 4096] [--batches 128] [--tokens 2048] [--reps 3]
(the issue's case is the default: a 4096x4096 layer, 128 x 2048 tokens).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxprune as jp
from jaxprune._calibration import _upper_inverse_factor

from _machine import describe, reset_peak_rss, status_bytes


# --------------------------------------------------------------------------
# The torch port of the official algorithms
# --------------------------------------------------------------------------


class TorchSparseGPT:
    """The official ``SparseGPT`` class for a ``(out, in)`` weight, float32."""

    def __init__(self, n_in: int) -> None:
        self.H = torch.zeros((n_in, n_in))
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        # One batch of `samples` sequences (official: inp.shape[0] counts samples).
        samples = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + samples)
        self.nsamples += samples
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def fasterprune(self, weight: torch.Tensor, sparsity: float, blocksize: int = 128,
                    percdamp: float = 0.01) -> torch.Tensor:
        W = weight.clone().float()
        rows, columns = W.shape
        H = self.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
        for i1 in range(0, columns, blocksize):
            i2 = min(i1 + blocksize, columns)
            count = i2 - i1
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        return W


class TorchWanda:
    """The official ``WrappedGPT`` statistics and ``prune_wanda``'s unstructured mask."""

    def __init__(self, n_in: int) -> None:
        self.scaler_row = torch.zeros(n_in)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        samples = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.scaler_row *= self.nsamples / (self.nsamples + samples)
        self.nsamples += samples
        self.scaler_row += torch.norm(inp.float(), p=2, dim=1) ** 2 / self.nsamples

    def prune_mask(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        metric = torch.abs(weight) * torch.sqrt(self.scaler_row.reshape((1, -1)))
        mask = torch.zeros_like(metric) == 1
        indices = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
        mask.scatter_(1, indices, True)
        return mask


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def timed(fn: Callable[[], object], reps: int, warm_up: bool = True) -> tuple[float, int]:
    """The fastest of ``reps`` calls (the machine is shared: the minimum is the
    least disturbed), after a warm-up call where there is something to compile,
    and the largest growth of the peak RSS over one call."""
    if warm_up:
        fn()
    best, peak = math.inf, 0
    for _ in range(reps):
        before = status_bytes("VmRSS")
        reset_peak_rss()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, status_bytes("VmHWM") - before)
    return best, peak


def xla_bytes(fn: Callable[..., object], *args: object) -> int:
    """What XLA allocates for one call of the jitted ``fn``: its temporaries and
    outputs (RSS hardly moves for jax after a warm-up: its allocator reuses
    the memory it freed)."""
    memory = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(memory.temp_size_in_bytes + memory.output_size_in_bytes)


def calibration(size: int, batches: int, tokens: int, distinct: int = 4) -> list[np.ndarray]:
    """``batches`` batches of ``(1, tokens, size)`` activations, cycling through
    ``distinct`` random ones (memory), with a few outlier features as in LLMs."""
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(distinct):
        x = rng.standard_normal((1, tokens, size), dtype=np.float32)
        x[..., :: max(1, size // 8)] *= 10
        pool.append(x)
    return [pool[i % distinct] for i in range(batches)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="the layer is size x size")
    parser.add_argument("--batches", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
    parser.add_argument("--reps", type=int, default=3, help="timed calls of each pruning step (the fastest counts)")
    args = parser.parse_args()
    size = args.size
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((size, size), dtype=np.float32)  # torch layout (out, in)
    batches = calibration(size, args.batches, args.tokens)
    jax_batches = [jnp.asarray(b) for b in batches[:4]]
    jax_batches = [jax_batches[i % 4] for i in range(len(batches))]
    torch_batches = [torch.from_numpy(b) for b in batches]
    rows = []

    # (a) statistics
    def jax_stats() -> jp.InputStats:
        s = None
        for b in jax_batches:
            s = jp.input_stats(b, s)
        assert s is not None
        return jax.block_until_ready(s)

    def torch_stats() -> TorchSparseGPT:
        g = TorchSparseGPT(size)
        for b in torch_batches:
            g.add_batch(b)
        return g

    t_jax, _ = timed(jax_stats, 1)
    m_jax = xla_bytes(lambda b, s: jp.input_stats(b, s), jax_batches[0], jp.input_stats(jax_batches[0]))
    t_torch, m_torch = timed(torch_stats, 1, warm_up=False)
    rows.append(("statistics (X^T X and sum of squares)", t_jax, m_jax, t_torch, m_torch))
    stats = jax_stats()
    gpt = torch_stats()

    # (b) SparseGPT from the statistics
    kernel = jnp.asarray(weight)
    prune = jax.jit(lambda w, s: jp.sparsegpt(w, s, 0.5, in_axis=1))
    t_jax, _ = timed(lambda: jax.block_until_ready(prune(kernel, stats)), args.reps)
    m_jax = xla_bytes(prune, kernel, stats)
    t_weight = torch.from_numpy(weight)
    t_torch, m_torch = timed(lambda: gpt.fasterprune(t_weight, 0.5), args.reps, warm_up=False)
    rows.append(("SparseGPT 50% (from the statistics)", t_jax, m_jax, t_torch, m_torch))
    # Where the time goes: the factorization alone (H^-1's upper Cholesky factor).
    damped = stats.hessian + 0.01 * jnp.mean(jnp.diagonal(stats.hessian)) * jnp.eye(size)
    factor = jax.jit(_upper_inverse_factor)
    t_jax, _ = timed(lambda: jax.block_until_ready(factor(damped)), args.reps)
    m_jax = xla_bytes(factor, damped)
    t_damped = torch.from_numpy(np.array(damped))
    t_torch, m_torch = timed(
        lambda: torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(t_damped)), upper=True), args.reps,
        warm_up=False,
    )
    rows.append(("  of which the factor of H^-1", t_jax, m_jax, t_torch, m_torch))

    # Wanda from the statistics, and one elementwise pass over the kernel
    wanda = jax.jit(lambda w, s: jp.wanda_mask(w, s, 0.5, in_axis=1))
    t_jax, _ = timed(lambda: jax.block_until_ready(wanda(kernel, stats)), args.reps)
    m_jax = xla_bytes(wanda, kernel, stats)
    wrapped = TorchWanda(size)
    for b in torch_batches:
        wrapped.add_batch(b)
    t_torch, m_torch = timed(lambda: wrapped.prune_mask(t_weight, 0.5), args.reps, warm_up=False)
    rows.append(("Wanda 50% mask (from the statistics)", t_jax, m_jax, t_torch, m_torch))
    t_wanda = t_jax
    one_pass = jax.jit(lambda w, s: jnp.sum(jnp.abs(w) * s[None, :]))
    t_pass, _ = timed(lambda: jax.block_until_ready(one_pass(kernel, stats.sum_sq)), args.reps)

    print(f"\n{datetime.date.today()}, {describe(torch=torch.__version__, jax=jax.__version__)}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"layer {size}x{size}, calibration {args.batches} x {args.tokens} tokens\n")
    print("| step | jaxprune (s) | XLA temp + out MiB | torch port (s) | peak RSS + MiB | jaxprune / torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, tj, mj, tt, mt in rows:
        print(f"| {name} | {tj:.3f} | {mj / 2**20:.0f} | {tt:.3f} | {mt / 2**20:.0f} | {tj / tt:.2f} |")
    print(f"\nOne elementwise pass over the kernel: {t_pass:.4f} s; "
          f"Wanda's mask = {t_wanda / t_pass:.1f} passes")


if __name__ == "__main__":
    main()
