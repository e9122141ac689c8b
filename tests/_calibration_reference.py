"""NumPy float64 ports of the official per-layer algorithms, for tests/test_calibration.py.

Written from the papers and the official repositories' algorithms
(locuslab/wanda ``lib/prune.py`` with ``lib/layerwrapper.py``;
IST-DASLab/sparsegpt ``sparsegpt.py``, ``add_batch`` and ``fasterprune``),
in the plainest form: Python loops over columns, NumPy's inverse and
Cholesky, every array ``(out, in)`` (torch's layout). Two rules follow
jaxprune's contract instead of the official code, and say so:

* the count: ``round(amount * units)`` (torch's counting), not the official
  ``int()`` truncation (Wanda) or ``<=`` threshold (SparseGPT);
* ties: a stable order (Wanda: by input index; SparseGPT: by the kernel's
  flat order inside the slab, which ``flat_ties`` gives for a ``(in, out)``
  kernel).
"""

from __future__ import annotations

import numpy as np


def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official statistics, as running means over batches of one row
    each: Wanda's ``scaler_row`` (mean of x_j**2) and SparseGPT's
    ``H = 2/N X^T X``."""
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    n_in = x.shape[1]
    scaler, hessian, seen = np.zeros(n_in), np.zeros((n_in, n_in)), 0
    for row in x:  # add_batch with batches of one sample
        scaler *= seen / (seen + 1)
        hessian *= seen / (seen + 1)
        seen += 1
        scaler += row**2 / seen
        scaled = np.sqrt(2 / seen) * row
        hessian += np.outer(scaled, scaled)
    return scaler, hessian


def count(amount: float | int, units: int) -> int:
    return int(amount) if isinstance(amount, (int, np.integer)) else round(amount * units)


def wanda_prune(
    w: np.ndarray, scaler: np.ndarray, amount: float | int | None, nm: tuple[int, int] | None
) -> np.ndarray:
    """The prune-mask (True = pruned) of ``prune_wanda`` for one ``(out, in)`` weight."""
    metric = np.abs(w) * np.sqrt(scaler)[None, :]
    prune = np.zeros(w.shape, bool)
    if nm is not None:
        n, m = nm
        for start in range(0, w.shape[1], m):
            order = np.argsort(metric[:, start : start + m], axis=1, kind="stable")[:, : m - n]
            np.put_along_axis(prune[:, start : start + m], order, True, axis=1)
        return prune
    k = count(amount, w.shape[1])  # type: ignore[arg-type]
    order = np.argsort(metric, axis=1, kind="stable")[:, :k]
    np.put_along_axis(prune, order, True, axis=1)
    return prune


def sparsegpt(
    w: np.ndarray,
    hessian: np.ndarray,
    amount: float | int | None = None,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    flat_ties: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``fasterprune`` in float64 for one ``(out, in)`` weight: ``(new weight, prune-mask)``."""
    w = np.array(w, np.float64)
    h = np.array(hessian, np.float64)
    n_out, n_in = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[np.arange(n_in), np.arange(n_in)] += damp * np.mean(np.diag(h))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: hinv.T @ hinv = h^-1
    prune = np.zeros(w.shape, bool)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        mask1 = np.zeros(w1.shape, bool)
        if nm is None:
            scores = w1**2 / np.diag(h1)[None, :] ** 2
            flat = (scores.T if flat_ties else scores).ravel()
            k = count(amount, flat.size)  # type: ignore[arg-type]
            chosen = np.zeros(flat.size, bool)
            chosen[np.argsort(flat, kind="stable")[:k]] = True
            mask1 = chosen.reshape(scores.T.shape).T if flat_ties else chosen.reshape(scores.shape)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                scores = w1[:, i : i + m] ** 2 / np.diag(h1)[i : i + m][None, :] ** 2
                order = np.argsort(scores, axis=1, kind="stable")[:, : m - n]
                np.put_along_axis(mask1[:, i : i + m], order, True, axis=1)
            col = w1[:, i]
            d = h1[i, i]
            q = np.where(mask1[:, i], 0.0, col)
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= np.outer(e, h1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = q1
        prune[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w, prune
