"""What the benchmark tables print about the machine they were measured on, and the timer they share."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def describe(**versions: str) -> str:
    """``"2 cores (CPU model), Python 3.11.7, torch 2.13.0, jax 0.10.2"``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"{os.cpu_count()} cores ({cpu})", f"Python {platform.python_version()}"]
    parts += [f"{name} {version}" for name, version in versions.items()]
    return ", ".join(parts)


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset this process's peak-RSS counter (VmHWM), so that it measures what
    follows only (``ru_maxrss`` in a child would count the parent's memory at
    fork time)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def median_time(fn: Callable[[], object], reps: int) -> float:
    """The median of ``reps`` timed calls of ``fn``, after one untimed call (the compile, for jax)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
