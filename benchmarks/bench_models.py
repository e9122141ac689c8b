"""Pruning real models once: jaxprune vs torch.nn.utils.prune, start-up and compilation included.

For each model of tests/_torch_models.py (torchvision's resnet18 and
mobilenet_v3_small, timm's vit_tiny_patch16_224 and convnext_atto, rebuilt in
plain torch.nn with their parameter shapes; GPT-2, BERT and Llama from
transformers with small configs, random init) and each method, every tensor
with at least 2 dims (conv, linear, embedding, attention weights) is pruned by
50%, and three times are taken:

* cold: the first call in a fresh process (a subprocess each), torch's
  ``prune.<method>`` calls against ``interop.prune_module``. Imports and model
  construction are not timed; everything else is: for jaxprune, creating the
  PRNG key (random methods only: ``np.array([0, 0], np.uint32)``, the words of
  ``jax.random.key(0)``, which give its masks without compiling jax's seeding
  kernel or starting jax's backend; the others pass None), jax's backend start,
  any compilation. jax's persistent compilation cache is turned off
  (``JAXPRUNE_CACHE_DIR=""``): a fresh machine.
* warm: the median over fresh copies of the model in one process, after one
  call on another copy.
* cli: the wall time of ``jaxprune prune`` on the model's safetensors
  checkpoint, against a Python script that loads the same checkpoint,
  applies torch's method to each tensor (``compute_mask``, or
  ``global_unstructured``) and writes the result; both in fresh processes,
  imports included.

Ratios are jaxprune / torch: below 1 is faster.

Run: python benchmarks/bench_models.py [--models resnet18,gpt2] [--methods l1,ln] [--reps 5] [--no-cli]
     [--runs 3 --warm-stat min]  (a shared machine: the fastest of several fresh processes)
Prints a Markdown table (the README quotes it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _machine import describe

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    # name: (torch call on (module, name), jaxprune spec source, CLI rule spec, random?)
    "l1": ("prune.l1_unstructured(m, n, 0.5)", "jp.L1Unstructured(0.5)", "l1:0.5", False),
    "random": ("prune.random_unstructured(m, n, 0.5)", "jp.RandomUnstructured(0.5)", "random:0.5", True),
    "ln": ("prune.ln_structured(m, n, 0.5, n=2, dim=0)", "jp.LnStructured(0.5, 2, 0)",
           "ln-structured:0.5:n=2:dim=0", False),
    "random-structured": ("prune.random_structured(m, n, 0.5, dim=0)", "jp.RandomStructured(0.5, 0)",
                          "random-structured:0.5:dim=0", True),
    "global": (None, "jp.GlobalUnstructured(0.5)", "l1", False),
}

_SETUP = """
import sys, time
sys.path.insert(0, {tests!r})
import torch
import torch.nn.utils.prune as prune
from _torch_models import ALL_MODELS

def targets(model):
    return [(name, model.get_submodule(name.rpartition(".")[0]) if "." in name else model,
             name.rpartition(".")[2]) for name, p in model.named_parameters() if p.dim() >= 2]
"""

_TORCH_RUN = """
def run(model):
    found = targets(model)
    if {method!r} == "global":
        prune.global_unstructured([(m, n) for _, m, n in found], prune.L1Unstructured, amount=0.5)
    else:
        for _, m, n in found:
            {call}
"""

_JAX_RUN = """
import numpy as np
import jaxprune as jp
from jaxprune import interop

def run(model):
    rules = {{name: {spec} for name, _, _ in targets(model)}}
    # jax.random.key(0)'s two words as a NumPy key: the same masks, and nothing started in jax (README)
    key = np.array([0, 0], np.uint32) if {random} else None
    interop.prune_module(key, model, rules)
"""

_TIMING = """
models = [ALL_MODELS[{model!r}](seed=i) for i in range({copies})]
times = []
for model in models:
    start = time.perf_counter()
    run(model)
    times.append(time.perf_counter() - start)
print(times)
"""


def _script(side: str, model: str, method: str, copies: int) -> str:
    torch_call, spec, _, random = METHODS[method]
    run = (_TORCH_RUN.format(method=method, call=torch_call) if side == "torch"
           else _JAX_RUN.format(spec=spec, random=random))
    return _SETUP.format(tests=str(ROOT / "tests")) + run + _TIMING.format(model=model, copies=copies)


def _python(source: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"benchmark subprocess failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAXPRUNE_CACHE_DIR"] = ""  # a fresh machine: no compiled kernels on disk
    env["TRANSFORMERS_VERBOSITY"] = "error"
    return env


def measure(model: str, method: str, reps: int, runs: int = 1, stat: str = "median") -> dict[str, float]:
    """Cold (first call of a fresh process) and warm (after one call) times for
    both sides. With ``runs`` > 1, each side runs in that many fresh processes,
    alternating, and cold is the fastest first call; warm is the ``stat``
    ("median" or "min") of all warm calls. On a shared machine, the minimum
    is the time least inflated by other work."""
    cold: dict[str, list[float]] = {"torch": [], "jaxprune": []}
    warm: dict[str, list[float]] = {"torch": [], "jaxprune": []}
    for _ in range(runs):
        for side in ("torch", "jaxprune"):
            times = json.loads(_python(_script(side, model, method, reps + 1), _env()))
            cold[side].append(times[0])
            warm[side].extend(times[1:])
    pick = min if stat == "min" else statistics.median
    out: dict[str, float] = {}
    for side in ("torch", "jaxprune"):
        out[f"{side}_cold"] = min(cold[side])
        out[f"{side}_warm"] = pick(warm[side])
    return out


_TORCH_CLI = """
import sys, torch, torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1])
names = [k for k, v in state.items() if v.dim() >= 2]
method = sys.argv[3]
if method == "global":
    holders = []
    for k in names:
        holder = torch.nn.Module()
        holder.w = torch.nn.Parameter(state[k], requires_grad=False)
        holders.append(holder)
    prune.global_unstructured([(h, "w") for h in holders], prune.L1Unstructured, amount=0.5)
    for k, h in zip(names, holders):
        state[k] = h.w.detach()
else:
    make = {"l1": lambda: prune.L1Unstructured(0.5), "random": lambda: prune.RandomUnstructured(0.5),
            "ln": lambda: prune.LnStructured(0.5, n=2, dim=0),
            "random-structured": lambda: prune.RandomStructured(0.5, dim=0)}[method]
    for k in names:
        t = state[k]
        state[k] = t * make().compute_mask(t, torch.ones_like(t))
save_file(state, sys.argv[2])
"""


def measure_cli(model: str, method: str, folder: Path) -> dict[str, float]:
    ckpt = folder / f"{model}.safetensors"
    if not ckpt.exists():
        _python(textwrap.dedent(f"""
            import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})
            from safetensors.torch import save_file
            from _torch_models import ALL_MODELS
            model = ALL_MODELS[{model!r}]()
            # tied weights (GPT-2's lm_head = wte) are stored once, as transformers does
            seen, state = set(), {{}}
            for k, v in model.state_dict().items():
                if v.data_ptr() not in seen:
                    seen.add(v.data_ptr())
                    state[k] = v.contiguous()
            save_file(state, {str(ckpt)!r})
            print("ok")
        """), _env())
    _, _, rule, random = METHODS[method]
    cmd = [sys.executable, "-m", "jaxprune", "prune", str(ckpt), "-o", str(folder / "out.safetensors")]
    cmd += ["--global", "0.5", "--rule", f"*[ndim>=2]={rule}"] if method == "global" else [
        "--rule", f"*[ndim>=2]={rule}"]
    cmd += ["--rule", "*=skip"] + (["--seed", "0"] if random else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    jax_wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"jaxprune prune failed: {done.stderr[-2000:]}")
    script = folder / "torch_prune.py"
    script.write_text(_TORCH_CLI)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script), str(ckpt), str(folder / "out_torch.safetensors"), method],
                   check=True, capture_output=True, env=_env())
    torch_wall = time.perf_counter() - start
    return {"torch_cli": torch_wall, "jaxprune_cli": jax_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v3_small,vit_tiny,convnext_atto,gpt2_tiny,bert_tiny,llama_tiny")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-cli", action="store_true")
    parser.add_argument("--runs", type=int, default=1, help="fresh processes per side (cold: the fastest)")
    parser.add_argument("--warm-stat", choices=("median", "min"), default="median")
    args = parser.parse_args()
    print(f"{datetime.date.today()}, {describe()}; warm: {args.warm_stat} of {args.runs} x {args.reps} calls, "
          f"cold: fastest of {args.runs}\n")
    print("| model | method | cold torch | cold jaxprune | cold ratio | warm torch | warm jaxprune | warm ratio "
          "| CLI torch | CLI jaxprune | CLI ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for method in args.methods.split(","):
                r = measure(model, method, args.reps, args.runs, args.warm_stat)
                if not args.no_cli:
                    r.update(measure_cli(model, method, Path(tmp)))
                cli = ("| | | " if args.no_cli else
                       f"| {r['torch_cli']:.2f} s | {r['jaxprune_cli']:.2f} s | {r['jaxprune_cli'] / r['torch_cli']:.2f}x ")
                print(f"| {model} | {method} | {r['torch_cold'] * 1e3:.0f} ms | {r['jaxprune_cold'] * 1e3:.0f} ms "
                      f"| {r['jaxprune_cold'] / r['torch_cold']:.2f}x | {r['torch_warm'] * 1e3:.1f} ms "
                      f"| {r['jaxprune_warm'] * 1e3:.1f} ms | {r['jaxprune_warm'] / r['torch_warm']:.2f}x {cli}|",
                      flush=True)


if __name__ == "__main__":
    main()
