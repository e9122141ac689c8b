"""The examples run as a user runs them, and print what the README quotes."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_example_prunes_torch_counts_and_is_reproducible():
    out = run_example("seed_structured_pruning.py", "--seed", "3")
    counts = re.findall(r"dim=(\d): pruned (\d+) of (\d+) slices", out)
    assert counts == [("1", "19", "64"), ("2", "17", "56"), ("3", "17", "56")]
    assert re.search(r"dim=0:\s+38 of 128 pruned -> filters", out)
    assert "a second round prunes 25% of the 12 remaining" in out
    # Same seed, same indices; another seed, other indices.
    assert run_example("seed_structured_pruning.py", "--seed", "3") == out
    assert run_example("seed_structured_pruning.py", "--seed", "4") != out
