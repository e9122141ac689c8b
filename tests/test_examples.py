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


def test_digits_example_prunes_to_90_percent_and_writes_the_plot(tmp_path):
    plot = tmp_path / "digits.png"
    out = run_example("prune_digits.py", "--steps", "500", "--plot", str(plot), "--out-dir", str(tmp_path))
    assert re.search(r"\| pruned, fine-tuned \| 500 \| 90\.00% \|", out)
    assert "compiled 1 time(s)" in out
    assert re.search(r"checked: all [\d,]+ pruned weights are exactly 0\.0", out)
    dense = float(re.search(r"accuracy: dense ([\d.]+)%", out).group(1))
    assert dense > 90.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "masks.safetensors").exists()
