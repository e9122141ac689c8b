"""On a CUDA machine: interop.to_semi_structured's CUDA path checked and timed.

For float16 and bfloat16 weights with a 2:4 mask (the 2 largest |w| of every
4 along the input axis), on each of torch's backends (cuSPARSELt, torch's
default, and CUTLASS, forced with ``SparseSemiStructuredTensor._FORCE_CUTLASS``):

* ``torch.mm(sparse, x)`` equals ``torch.mm(masked dense, x)`` (to float
  tolerance: the sums run in another order), and ``F.linear`` likewise;
* on CUTLASS, the packed values and metadata the GPU stores equal, byte for
  byte, those ``to_semi_structured`` computes on the CPU, and
  ``from_semi_structured`` of the GPU tensor gives the masked weight back;
* the median time of the sparse and the dense matmul, and their ratio.

The CPU part (the CPU packer against torch's pure-torch reference, the round
trip, and their times) runs everywhere; without CUDA the script stops after it
and says so. It exits with status 1 if any check fails.

Run from the repository root: python benchmarks/gpu_check_semi_structured.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from torch.sparse import _semi_structured_conversions as conversions

from jaxprune import interop

SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (4096, 4096, 64)]  # (out, in, columns of x)
DTYPES = [torch.float16, torch.bfloat16]
UNSUPPORTED: list[str] = []  # cases torch's backend refused on this machine (not our failures, but not checked)


def two_of_four(w: torch.Tensor) -> torch.Tensor:
    """The 2 largest |w| of every 4 consecutive entries along the last axis (ties: torch's topk)."""
    rows, cols = w.shape
    groups = w.abs().float().reshape(rows, cols // 4, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return mask.reshape(rows, cols)


def median_ms(fn: Callable[[], object], reps: int = 7) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()


def check_cpu(failures: list[str]) -> None:
    """The CPU packer against torch's reference, byte for byte, and the round trip; times both."""
    for dtype in DTYPES:
        w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0)).to(dtype)
        check_cpu_one(w, two_of_four(w), failures)


def check_cpu_one(w: torch.Tensor, mask: torch.Tensor, failures: list[str]) -> None:
    dense = torch.where(mask, w, torch.zeros((), dtype=w.dtype))
    ours = interop.to_semi_structured(w, mask)
    packed, meta = conversions.sparse_semi_structured_from_dense_cutlass(dense)
    same = raw(ours.packed) == raw(packed) and raw(ours.meta) == raw(meta)
    back = raw(interop.from_semi_structured(ours)) == raw(dense)
    ours_ms = median_ms(lambda: interop.to_semi_structured(w, mask), reps=3)
    ref_ms = median_ms(lambda: conversions.sparse_semi_structured_from_dense_cutlass(dense), reps=3)
    print(f"cpu {str(w.dtype):15s} {w.shape[0]}x{w.shape[1]} bytes equal torch's: {same}  round trip: {back}  "
          f"pack {ours_ms:7.1f} ms (torch's reference {ref_ms:7.1f} ms)")
    if not (same and back):
        failures.append(f"cpu {w.dtype}")


def check_cuda(failures: list[str]) -> None:
    cls = torch.sparse.SparseSemiStructuredTensor
    default = cls._FORCE_CUTLASS
    for force_cutlass in (False, True):
        cls._FORCE_CUTLASS = force_cutlass
        backend = "CUTLASS" if force_cutlass else "cuSPARSELt"
        try:
            for dtype in DTYPES:
                for shape in SHAPES:
                    check_one(backend, dtype, shape, failures)
        finally:
            cls._FORCE_CUTLASS = default


def check_one(backend: str, dtype: torch.dtype, shape: tuple[int, int, int], failures: list[str]) -> None:
    out, inp, cols = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(out, inp, generator=g, device="cuda").to(dtype)
    x = torch.randn(inp, cols, generator=g, device="cuda").to(dtype)
    mask = two_of_four(w)
    dense = torch.where(mask, w, torch.zeros((), dtype=dtype, device="cuda"))
    name = f"cuda {backend:10s} {str(dtype):15s} {out}x{inp} @ {inp}x{cols}"
    try:
        sparse = interop.to_semi_structured(w, mask)
        got, want = torch.mm(sparse, x), torch.mm(dense, x)
        rows = x.T.contiguous()  # a batch of inputs, as a Linear layer sees them
        got_linear = torch.nn.functional.linear(rows, sparse)
        want_linear = torch.nn.functional.linear(rows, dense)
    except (RuntimeError, NotImplementedError) as err:  # a backend this GPU or build lacks: report, go on
        print(f"{name}: unsupported here: {str(err).splitlines()[0][:160]}")
        UNSUPPORTED.append(name)
        return
    tol = {"atol": 2e-2 * inp**0.5, "rtol": 2e-2}
    ok = torch.allclose(got.float(), want.float(), **tol) and torch.allclose(
        got_linear.float(), want_linear.float(), **tol)
    error = (got.float() - want.float()).abs().max().item()
    if backend == "CUTLASS":
        ours = interop.to_semi_structured(w.cpu(), mask.cpu())
        bytes_ok = raw(sparse.packed) == raw(ours.packed) and raw(sparse.meta) == raw(ours.meta)
        back_ok = raw(interop.from_semi_structured(sparse)) == raw(dense)
        ok = ok and bytes_ok and back_ok
        extra = f"  GPU bytes == CPU packer: {bytes_ok}  from_semi_structured: {back_ok}"
    else:
        extra = ""
    sparse_ms = median_ms(lambda: torch.mm(sparse, x))
    dense_ms = median_ms(lambda: torch.mm(dense, x))
    print(f"{name}: mm equal: {ok} (max |diff| {error:.3g}){extra}  sparse {sparse_ms:7.3f} ms  "
          f"dense {dense_ms:7.3f} ms  dense/sparse {dense_ms / sparse_ms:5.2f}x")
    if not ok:
        failures.append(name)


def main() -> int:
    print(f"torch {torch.__version__}, CUDA: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    failures: list[str] = []
    check_cpu(failures)
    if torch.cuda.is_available():
        check_cuda(failures)
    else:
        print("no CUDA device: the CPU part only")
    if UNSUPPORTED:
        print(f"not checked ({len(UNSUPPORTED)} cases torch's backend refused here):", "; ".join(UNSUPPORTED))
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
