"""Channel permutation for 2:4: efficacy and time of ``n_m_permutation`` against a NumPy greedy channel swap.

Efficacy is apex permutation_tests' measure: the share of the gap between the
default 2:4 mask and the "50% rows" bound (every row keeps its largest half,
which no permutation can beat) that the permutation closes:
``(kept_permuted - kept_default) / (kept_50%_rows - kept_default)``. apex's
README reports 32.1-36.6% for its strategies on ``np.random.seed(1);
np.random.rand(128, 64)`` (64 input channels, 128 filters).

The reference is ASP's ``channel_swap`` idea written here in NumPy: repeatedly
apply the single swap of two columns in different stripes that gains the most,
until no swap gains (apex ``channel_swap,0``). Both sides run in this process
on the same matrices. The jax side's first call includes its compile
(reported apart); "warm" is a second call on the same shape.

    python benchmarks/bench_permute.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import describe  # noqa: E402

import jaxprune._permute_search as search  # noqa: E402
from jaxprune._permute_search import n_m_permutation  # noqa: E402

N, M = 2, 4


def kept(x: np.ndarray) -> float:
    rows, cols = x.shape
    return float(np.sort(x.reshape(rows, cols // M, M), axis=-1)[..., M - N:].sum())


def efficacy(x: np.ndarray, perm: np.ndarray) -> float:
    default = kept(x)
    bound = float(np.sort(x, axis=1)[:, x.shape[1] - x.shape[1] * N // M:].sum())
    return 100.0 * (kept(x[:, perm]) - default) / (bound - default)


def channel_swap(x: np.ndarray) -> np.ndarray:
    """Greedy best single swap until none gains (NumPy reference).

    ``value[s, p, c]``: stripe ``s``'s kept total with its slot ``p`` holding
    column ``c``; only the two stripes a swap touches are recomputed."""
    rows, cols = x.shape
    stripes = cols // M
    perm = np.arange(cols)

    def stripe_values(s: int) -> np.ndarray:  # (M, cols)
        members = x[:, perm[s * M:(s + 1) * M]]  # (rows, M)
        out = np.empty((M, cols))
        for p in range(M):
            trial = np.repeat(members[:, None, :], cols, axis=1)  # (rows, cols, M)
            trial[:, :, p] = x
            out[p] = np.sort(trial, axis=-1)[..., M - N:].sum(axis=(0, 2))
        return out

    value = np.stack([stripe_values(s) for s in range(stripes)])  # (stripes, M, cols)
    current = np.array([kept(x[:, perm[s * M:(s + 1) * M]]) for s in range(stripes)])
    tol = 1e-9 * max(current.sum(), 1.0)
    slot = np.arange(cols)
    while True:
        stripe_of, pos_of = slot // M, slot % M
        a = value[stripe_of, pos_of][:, perm]  # a[i, j]: slot i's stripe with slot j's column in slot i
        gain = a + a.T - current[stripe_of][:, None] - current[stripe_of][None, :]
        gain[stripe_of[:, None] == stripe_of[None, :]] = -np.inf
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[i, j] <= tol:
            return perm
        perm[i], perm[j] = perm[j], perm[i]
        for s in (stripe_of[i], stripe_of[j]):
            value[s] = stripe_values(s)
            current[s] = kept(x[:, perm[s * M:(s + 1) * M]])


def pairs_only(x: np.ndarray) -> np.ndarray:
    """The search without its triple phase (to show what the triples add)."""
    saved = search._TRIPLE_MAX_M
    search._TRIPLE_MAX_M = 0
    try:
        return n_m_permutation(x, N, M)
    finally:
        search._TRIPLE_MAX_M = saved


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="128x64 and 256x256 only")
    args = parser.parse_args()
    print(describe(jax=jax.__version__, numpy=np.__version__, backend=jax.default_backend()))
    print(f"\n{'matrix (rows x cols)':<26}{'method':<34}{'efficacy %':>11}{'time s':>10}")

    def row(name: str, method: str, eff: float, seconds: float) -> None:
        print(f"{name:<26}{method:<34}{eff:>11.1f}{seconds:>10.3f}", flush=True)

    # apex's setting: 64 channels (columns) x 128 filters (rows), uniform [0, 1)
    for seed in (1, 2, 3, 4, 5):
        np.random.seed(seed)
        x = np.random.rand(128, 64)
        name = f"128 x 64, apex seed {seed}"
        perm, first = timed(n_m_permutation, x, N, M)
        _, warm = timed(n_m_permutation, x, N, M)
        row(name, "n_m_permutation (first call)", efficacy(x, perm), first)
        row(name, "n_m_permutation (warm)", efficacy(x, perm), warm)
        perm, t = timed(pairs_only, x)
        row(name, "  pairs only (first call)", efficacy(x, perm), t)
        perm, t = timed(channel_swap, x)
        row(name, "NumPy channel_swap", efficacy(x, perm), t)

    x = np.random.default_rng(0).random((256, 256))
    perm, first = timed(n_m_permutation, x, N, M)
    row("256 x 256", "n_m_permutation (first call)", efficacy(x, perm), first)
    perm, t = timed(pairs_only, x)
    row("256 x 256", "  pairs only (first call)", efficacy(x, perm), t)
    perm, t = timed(channel_swap, x)
    row("256 x 256", "NumPy channel_swap", efficacy(x, perm), t)
    if args.quick:
        return

    x = np.random.default_rng(0).random((1024, 1024))
    for rounds in (255, 1000, 2000):
        perm, t = timed(n_m_permutation, x, N, M, max_rounds=rounds)
        row("1024 x 1024", f"n_m_permutation max_rounds={rounds}", efficacy(x, perm), t)

    x = np.random.default_rng(0).random((4096, 4096)).astype(np.float32)
    for rounds in (1, 16, 64):
        perm, t = timed(n_m_permutation, x, N, M, max_rounds=rounds)
        row("4096 x 4096", f"n_m_permutation max_rounds={rounds}", efficacy(x, perm), t)


if __name__ == "__main__":
    main()
