"""N:M and block masks: jaxprune vs one elementwise pass and vs torch, in one process.

For each size: the median wall time of

* one elementwise pass with a mask's output (``jnp.abs(w) > 1`` jitted: reads the tensor once and
  writes a bool array, as a mask does), the yardstick;
* ``jp.n_m_mask(w, 2, 4, axis=1)`` (jitted, compile excluded);
* a torch 2:4 mask as ASP and torch.ao compute it: ``topk`` per group of 4
  (``w.abs().view(-1, 4).topk(2)`` and a scatter into a zero mask);
* ``jp.block_mask(w, 0.5, (4, 4))`` and torch's block mask (4x4 L1 scores by
  ``avg_pool2d``, ``kthvalue`` threshold, as torch.ao's ``WeightNormSparsifier``
  ranks blocks), on 4096x4096 only;
* ``jp.n_m_mask(w, 2, 4, axis=1, transposable=True)`` on 4096x4096 (torch has no exact
  transposable mask to compare with: its tile pruner is greedy).

Ratios: jaxprune / pass, jaxprune / torch (below 1 = faster). Tensors are
float32 ``(out, in)`` with groups along the input axis 1.

Run: python benchmarks/bench_patterns.py [--reps 5] [--sizes 4096,8192]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _machine import describe, median_time

import jaxprune as jp



def torch_n_m(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """2:4 along the last axis as ASP's ``m4n2_1d`` / torch.ao do it: top-n per group."""
    groups = w.abs().reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, groups.topk(n, dim=1).indices, True)
    return mask.reshape(w.shape)


def torch_block(w: torch.Tensor, amount: float, block: tuple[int, int]) -> torch.Tensor:
    """Block mask: L1 block scores by average pooling, the k lowest blocks pruned."""
    scores = torch.nn.functional.avg_pool2d(w.abs()[None, None], block, block)[0, 0]
    k = round(amount * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[scores.reshape(-1).topk(k, largest=False).indices] = False
    keep = keep.reshape(scores.shape)
    return keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="4096,8192")
    args = parser.parse_args()
    print(describe(torch=torch.__version__, jax=jax.__version__, backend=jax.default_backend()))
    print()
    print("| tensor | what | pass ms | jaxprune ms | torch ms | jaxprune / pass | jaxprune / torch |")
    print("|---|---|---|---|---|---|---|")
    one_pass = jax.jit(lambda x: jnp.abs(x) > 1)
    n_m = jax.jit(lambda x: jp.n_m_mask(x, 2, 4, axis=1))
    blocks = jax.jit(lambda x: jp.block_mask(x, 0.5, (4, 4)))
    transposable = jax.jit(lambda x: jp.n_m_mask(x, 2, 4, axis=1, transposable=True))
    for size in (int(s) for s in args.sizes.split(",")):
        host = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
        w = jax.device_put(host)
        tw = torch.from_numpy(host)
        np.testing.assert_array_equal(np.asarray(n_m(w)), torch_n_m(tw, 2, 4).numpy())  # the same mask
        pass_s = median_time(lambda w=w: one_pass(w).block_until_ready(), args.reps)
        rows = [("2:4 along axis 1", lambda w=w: n_m(w).block_until_ready(), lambda tw=tw: torch_n_m(tw, 2, 4))]
        if size <= 4096:
            rows.append(("block 4x4 at 50%", lambda w=w: blocks(w).block_until_ready(),
                         lambda tw=tw: torch_block(tw, 0.5, (4, 4))))
            rows.append(("transposable 2:4", lambda w=w: transposable(w).block_until_ready(), None))
        for what, jax_fn, torch_fn in rows:
            jax_s = median_time(jax_fn, args.reps)
            torch_s = None if torch_fn is None else median_time(torch_fn, args.reps)
            vs_torch = ("-", "-") if torch_s is None else (f"{torch_s * 1e3:.1f}", f"{jax_s / torch_s:.2f}")
            print(f"| {size}x{size} | {what} | {pass_s * 1e3:.1f} | {jax_s * 1e3:.1f} | {vs_torch[0]} | "
                  f"{jax_s / pass_s:.2f} | {vs_torch[1]} |", flush=True)


if __name__ == "__main__":
    main()
