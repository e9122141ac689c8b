"""One-shot pruning from calibration data: a character-level transformer, pruned without retraining.

A small decoder-only transformer (Flax NNX) is trained on the source code of
a fixed list of Python standard-library modules (text that ships with every
Python, no download), read as bytes (a vocabulary of 256 symbols). The text
is cut into blocks of 4 KiB and dealt out to train, calibration and
validation (8:1:1, by block index), so the split is the same on every run.

Then every ``nnx.Linear`` kernel of the decoder blocks (query, key, value,
output, MLP up and down; not the embeddings nor the output head, as the
papers do) is pruned once, without retraining, to 50% unstructured, 4:8 and
2:4 sparsity by

* magnitude, per layer: ``jp.L1Unstructured(0.5)``, and for N:M the
  :class:`MagnitudeNM` method written below (the smallest ``|w|`` of every
  ``m`` consecutive inputs of an output pruned);
* Wanda (``jp.Wanda``: ``|w| * ||x||`` per output unit) and SparseGPT
  (``jp.SparseGPT``: optimal-brain-surgeon updates from the inputs'
  Hessian), from ``--calib`` calibration sequences, each with
  ``sequential=True`` (each layer calibrated on the outputs of the
  already-pruned layers before it) and ``sequential=False`` (all layers from
  the dense model in one pass).

It prints a Markdown table of validation perplexity (rows: method and
calibration; columns: sparsity pattern; the dense model as the first row),
the mean reconstruction error of each run (from ``jp.one_shot``'s per-kernel
report), and ``checked:`` lines for what it asserts at any size: every mask
exactly 50% or exactly ``n`` kept of every ``m`` inputs, every pruned weight
exactly 0.0, every other parameter unchanged, each report covering every
kernel with the first kernel's error equal to the one recomputed from inputs
captured by hand, and SparseGPT < Wanda < magnitude in mean reconstruction
error on the same (dense) inputs. Then the published shape (Wanda and
SparseGPT papers), claim by claim, each line ``checked:`` or ``not
reproduced:`` with the cells that break it: magnitude clearly worst,
SparseGPT and Wanda close, 2:4 worse than 4:8 worse than 50%, sequential at
least as good as parallel. ``--check-shape`` makes a claim that does not hold
an error (exit status 1).

Run (from the repository root; needs flax and optax)::

    python examples/one_shot_chars.py [--steps 400] [--calib 256] [--val 256] [--depth 4]
                                      [--out-dir DIR] [--load FILE] [--check-shape]

``--out-dir DIR`` saves the trained parameters to ``DIR/chars_dense.safetensors``
(``jp.save_tree``); ``--load FILE`` reads such a file and skips training. The
same flags print the same table (on the same machine, Python and jax
versions: the text is the installed standard library). Progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxprune as jp

# The text: standard-library modules present in every CPython 3.10+.
MODULES = (
    "argparse", "calendar", "configparser", "contextlib", "csv", "dataclasses", "difflib", "enum",
    "fractions", "functools", "heapq", "inspect", "pprint", "random", "shlex", "statistics",
    "tarfile", "textwrap", "typing",
)
BLOCK = 4096  # bytes per block of the split
SPLIT = 10  # block i goes to validation if i % 10 == 9, to calibration if 8, else to training

# The model and its training.
SEQ_LEN = 128
WIDTH = 128
HEADS = 4
DEPTH = 4
BATCH = 32
STEPS = 400
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.1
VAL_SEQUENCES = 256
CALIB_BATCH = 32

Params = Any  # an nnx.State of the model's nnx.Param variables


def progress(message: str) -> None:
    """A line on stderr (stdout keeps the results)."""
    print(f"[one_shot_chars] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


class Text(NamedTuple):
    """The three splits, as uint8 arrays of bytes."""

    train: np.ndarray
    calib: np.ndarray
    val: np.ndarray


def load_text() -> Text:
    """The modules' sources as bytes, dealt out in blocks to train / calibration / validation."""
    sources = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"standard-library module {name!r} has no source file here")
        with open(spec.origin, "rb") as f:
            sources.append(f.read())
    data = np.frombuffer(b"\n".join(sources), dtype=np.uint8)
    blocks = [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    return Text(
        train=np.concatenate([b for i, b in enumerate(blocks) if i % SPLIT < SPLIT - 2]),
        calib=np.concatenate([b for i, b in enumerate(blocks) if i % SPLIT == SPLIT - 2]),
        val=np.concatenate([b for i, b in enumerate(blocks) if i % SPLIT == SPLIT - 1]),
    )


def sequences(data: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` consecutive, non-overlapping windows of ``SEQ_LEN + 1`` bytes, (count, SEQ_LEN + 1) int32."""
    available = len(data) // (SEQ_LEN + 1)
    if count > available:
        raise ValueError(f"{count} sequences asked for, but the split holds only {available} of {SEQ_LEN + 1} bytes")
    return data[: count * (SEQ_LEN + 1)].reshape(count, SEQ_LEN + 1).astype(np.int32)


def chunks(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """``rows`` in consecutive batches of ``size`` (the last one shorter)."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def train_batches(data: np.ndarray, steps: int, seed: int) -> Iterator[np.ndarray]:
    """``steps`` batches of (BATCH, SEQ_LEN + 1) windows at random offsets, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    offsets = np.arange(SEQ_LEN + 1)
    for _ in range(steps):
        starts = rng.integers(0, len(data) - SEQ_LEN - 1, size=BATCH)
        yield data[starts[:, None] + offsets].astype(np.int32)


# ---------------------------------------------------------------- model


class Block(nnx.Module):
    """A pre-norm decoder block: causal multi-head attention (separate q/k/v/o projections), then a GELU MLP."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs) -> None:
        self.heads = heads
        self.attn_norm = nnx.LayerNorm(width, rngs=rngs)
        self.query = nnx.Linear(width, width, rngs=rngs)
        self.key = nnx.Linear(width, width, rngs=rngs)
        self.value = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (f(h).reshape(b, t, self.heads, d // self.heads) for f in (self.query, self.key, self.value))
        logits = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(jnp.float32(d // self.heads))
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        weights = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
        x = x + self.out(jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, d))
        return x + self.down(nnx.gelu(self.up(self.mlp_norm(x))))


class CharTransformer(nnx.Module):
    """Bytes in, next-byte logits out: token and position embeddings, ``depth`` blocks, a final norm and head."""

    def __init__(self, *, rngs: nnx.Rngs, width: int = WIDTH, heads: int = HEADS, depth: int = DEPTH) -> None:
        self.embed = nnx.Embed(256, width, rngs=rngs)
        self.position = nnx.Embed(SEQ_LEN, width, rngs=rngs)
        self.blocks = nnx.List([Block(width, heads, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 256, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.position(jnp.arange(tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def init_model(seed: int, depth: int = DEPTH) -> tuple[nnx.GraphDef, Params]:
    """The model's graph definition and its parameters (``depth`` blocks), initialised from ``seed``."""
    return nnx.split(CharTransformer(rngs=nnx.Rngs(seed), depth=depth), nnx.Param)


@functools.cache  # one function per model: jitted callers keyed on it compile once
def make_forward(graphdef: nnx.GraphDef) -> Callable[[Params, jax.Array], jax.Array]:
    """The model as a pure function ``forward(params, tokens) -> logits`` (what ``jp.one_shot`` traces)."""
    return lambda params, tokens: nnx.merge(graphdef, params)(tokens)


def nll(forward: Callable[[Params, jax.Array], jax.Array], params: Params, batch: jax.Array) -> jax.Array:
    """Mean next-byte negative log-likelihood (nats) of a batch of (n, SEQ_LEN + 1) windows."""
    logits = forward(params, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def train(graphdef: nnx.GraphDef, params: Params, data: np.ndarray, steps: int, seed: int) -> Params:
    """``steps`` steps of AdamW (warmup, cosine decay, gradient clipping) on random windows of ``data``."""
    forward = make_forward(graphdef)
    schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, max(1, steps // 20), max(steps, 2))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=WEIGHT_DECAY, mask=decayed))

    @jax.jit
    def step(params: Params, opt_state: Any, batch: jax.Array) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: nll(forward, p, batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    for i, batch in enumerate(train_batches(data, steps, seed)):
        params, opt_state, loss = step(params, opt_state, batch)
        if (i + 1) % max(1, steps // 10) == 0:
            progress(f"step {i + 1}/{steps}: training loss {float(loss):.3f}")
    return params


def decayed(params: Params) -> Any:
    """Weight decay's mask: the ``nnx.Linear`` kernels only (not norms, biases, embeddings)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: jp.path_str(path).endswith("kernel"), params)


_nll_jit = jax.jit(nll, static_argnums=0)  # the forward function is static: one compilation per model


def perplexity(graphdef: nnx.GraphDef, params: Params, val: np.ndarray) -> float:
    """Validation perplexity: exp of the mean next-byte NLL over the validation windows."""
    forward = make_forward(graphdef)
    total = sum(len(b) * float(_nll_jit(forward, params, jnp.asarray(b))) for b in chunks(val, 64))
    return math.exp(total / len(val))


def unigram_perplexity(train: np.ndarray, val: np.ndarray) -> float:
    """The perplexity on the validation windows' targets of the training bytes' frequencies (add-one smoothed)."""
    counts = np.bincount(train, minlength=256) + 1.0
    logp = np.log(counts / counts.sum())
    targets = val[:, 1:]
    return math.exp(-logp[targets].mean())


# ---------------------------------------------------------------- magnitude N:M


@dataclasses.dataclass(frozen=True)
class MagnitudeNM(jp.PruningMethod):
    """Magnitude N:M: of every ``m`` consecutive inputs of each output, keep the ``n`` largest ``|w|``.

    For a Flax kernel ``(in, out)`` (the inputs along axis 0). Ties: the lower
    input index is pruned first, as everywhere in jaxprune.

    >>> w = jnp.array([[4.0], [-1.0], [3.0], [2.0]])
    >>> MagnitudeNM(2, 4).compute_mask(None, w)[:, 0].tolist()
    [True, False, True, False]
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 0 <= self.n < self.m:
            raise ValueError(f"N:M needs 0 <= n < m, got {self.n}:{self.m}")

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[0] % self.m:
            raise ValueError(f"{self.n}:{self.m} needs a 2-D kernel whose input axis (0) divides by {self.m}, "
                             f"got shape {shape}")

    def compute_mask(self, key: Any, t: Any, default_mask: Any = None) -> jax.Array:
        del key  # deterministic
        t = jnp.asarray(t)
        groups = jnp.abs(t).reshape(t.shape[0] // self.m, self.m, t.shape[1])
        rank = jnp.argsort(jnp.argsort(groups, axis=1, stable=True), axis=1)  # 0 = smallest
        keep = (rank >= self.m - self.n).reshape(t.shape)
        return keep if default_mask is None else keep & jnp.asarray(default_mask, dtype=bool)


# ---------------------------------------------------------------- pruning

PRUNED = "blocks.*.kernel"  # the blocks' nnx.Linear kernels; embeddings, norms and the head stay dense
PATTERNS = {"50%": None, "4:8": (4, 8), "2:4": (2, 4)}  # column -> nm (None: 50% unstructured)
METHODS = ("magnitude", "Wanda", "SparseGPT")


def spec(method: str, nm: tuple[int, int] | None) -> Any:
    """The rule's method for a table cell: magnitude per layer, or a calibrated spec."""
    if method == "magnitude":
        return jp.L1Unstructured(0.5) if nm is None else MagnitudeNM(*nm)
    make = {"Wanda": jp.Wanda, "SparseGPT": jp.SparseGPT}[method]
    return make(0.5) if nm is None else make(nm=nm)


class Run(NamedTuple):
    """One pruned model: a cell of the table."""

    method: str
    pattern: str
    sequential: bool | None  # None: magnitude (no calibration)
    params: Params
    masks: Any
    layers: tuple[jp.LayerReport, ...]
    perplexity: float


def prune_all(graphdef: nnx.GraphDef, params: Params, calib: np.ndarray, val: np.ndarray) -> list[Run]:
    """Every cell of the table: each method x pattern (x sequential or parallel calibration).

    Magnitude goes through ``jp.one_shot`` too: its masks come from the weights alone, but the
    report then gives its reconstruction error on the same (dense) calibration inputs.
    """
    forward = make_forward(graphdef)
    batches = [jnp.asarray(b[:, :-1]) for b in chunks(calib, CALIB_BATCH)]
    runs = []
    for pattern, nm in PATTERNS.items():
        for method in METHODS:
            for sequential in (None,) if method == "magnitude" else (True, False):
                start = time.perf_counter()
                rules = {PRUNED: spec(method, nm)}
                result = jp.one_shot(forward, params, batches, rules, sequential=bool(sequential))
                pruned, masks = result
                ppl = perplexity(graphdef, pruned, val)
                runs.append(Run(method, pattern, sequential, pruned, masks, result.layers, ppl))
                progress(f"{row_name(method, sequential)} {pattern}: perplexity {ppl:.3f} "
                         f"({time.perf_counter() - start:.1f} s)")
    return runs


def row_name(method: str, sequential: bool | None) -> str:
    return method if sequential is None else f"{method}, {'sequential' if sequential else 'parallel'}"


def table(dense: float, runs: list[Run]) -> str:
    """The Markdown table: rows methods (and calibration), columns sparsity patterns, cells validation perplexity."""
    lines = ["| method | " + " | ".join(PATTERNS) + " |", "|---|" + "---:|" * len(PATTERNS)]
    lines.append("| dense | " + " | ".join(f"{dense:.3f}" for _ in PATTERNS) + " |")
    cells: dict[str, dict[str, float]] = {}
    for r in runs:
        cells.setdefault(row_name(r.method, r.sequential), {})[r.pattern] = r.perplexity
    lines += [f"| {name} | " + " | ".join(f"{row[p]:.3f}" for p in PATTERNS) + " |" for name, row in cells.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------- checks


def named(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` of a params or mask tree (None leaves kept)."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {jp.path_str(path): leaf for path, leaf in flat}


def is_pruned(path: str) -> bool:
    return path.startswith("blocks.") and path.endswith(".kernel")


def check_run(dense: Params, run: Run) -> int:
    """Assert the run's masks are exactly 50% or a valid N:M pattern, pruned weights exactly 0 and every
    other parameter untouched; return how many weights were pruned."""
    nm = PATTERNS[run.pattern]
    dense_leaves, masks = named(dense), named(run.masks)
    pruned = 0
    for path, new in named(run.params).items():
        old, keep, new = np.asarray(dense_leaves[path]), masks[path], np.asarray(new)
        where = f"{row_name(run.method, run.sequential)} {run.pattern} {path}"
        if not is_pruned(path):
            assert keep is None and np.array_equal(new, old), f"{where}: changed, but no rule prunes it"
            continue
        keep = np.asarray(keep)
        assert keep.dtype == bool and keep.shape == old.shape, where
        if nm is None:
            assert 2 * int(keep.sum()) == keep.size, f"{where}: {keep.sum()} of {keep.size} kept, not half"
        else:
            kept = keep.reshape(keep.shape[0] // nm[1], nm[1], keep.shape[1]).sum(axis=1)
            assert np.all(kept == nm[0]), f"{where}: not {nm[0]} kept of every {nm[1]} inputs"
        assert np.all(new[~keep] == 0.0), f"{where}: a pruned weight is not exactly 0"
        if run.method != "SparseGPT":  # SparseGPT updates the weights it keeps
            assert np.array_equal(new[keep], old[keep]), f"{where}: a kept weight changed"
        pruned += int(keep.size - keep.sum())
    return pruned


def first_layer_stats(graphdef: nnx.GraphDef, params: Params, calib: np.ndarray) -> jp.InputStats:
    """The statistics of ``blocks.0.query``'s calibration inputs, captured by hand (the first norm of the
    embeddings), to recompute the report's reconstruction error independently of ``jp.one_shot``."""
    model = nnx.merge(graphdef, params)
    tokens = jnp.asarray(calib[:, :-1])
    inputs = model.blocks[0].attn_norm(model.embed(tokens) + model.position(jnp.arange(tokens.shape[-1])))
    return jp.input_stats(inputs)


def check_reports(dense: Params, run: Run, stats: jp.InputStats) -> None:
    """Assert the run reports every pruned kernel, at 50% sparsity, and that the first layer's
    reported reconstruction error is the one recomputed from its inputs captured by hand."""
    paths = [p for p in named(dense) if is_pruned(p)]
    reports = {r.path: r for r in run.layers}
    assert sorted(reports) == sorted(paths), f"reported {sorted(reports)}, pruned {paths}"
    assert all(r.sparsity == 0.5 for r in run.layers), [r.sparsity for r in run.layers]
    path = "blocks.0.query.kernel"
    expected = float(jp.relative_error(named(dense)[path], named(run.params)[path], stats))
    assert math.isclose(reports[path].error, expected, rel_tol=1e-3), (reports[path].error, expected)


def mean_error(run: Run) -> float:
    return float(np.mean([r.error for r in run.layers]))


class Claim(NamedTuple):
    """A part of the published shape, and where it fails here (empty: it holds)."""

    text: str
    failures: list[str]


def shape(dense: float, runs: list[Run], tolerance: float = 0.01) -> list[Claim]:
    """The published shape, claim by claim, checked on the table's perplexities."""
    ppl = {(r.method, r.pattern, r.sequential): r.perplexity for r in runs}
    rows = [("magnitude", None)] + [(m, s) for m in METHODS[1:] for s in (True, False)]
    worst, close, order, sequential = [], [], [], []
    for p in PATTERNS:
        mag = ppl["magnitude", p, None]
        best = min(ppl[m, p, s] for m, s in rows[1:])
        calibrated = max(ppl[m, p, s] for m, s in rows[1:])
        if not mag > 1.05 * calibrated:
            worst.append(f"{p}: magnitude {mag:.3f}, calibrated up to {calibrated:.3f}")
        wanda, sgpt = ppl["Wanda", p, True], ppl["SparseGPT", p, True]
        if not abs(wanda - sgpt) < mag - best:
            close.append(f"{p}: Wanda {wanda:.3f}, SparseGPT {sgpt:.3f}, magnitude {mag:.3f}")
        for m in METHODS[1:]:
            if not ppl[m, p, True] <= (1 + tolerance) * ppl[m, p, False]:
                sequential.append(f"{m} {p}: {ppl[m, p, True]:.3f} sequential, {ppl[m, p, False]:.3f} parallel")
    for m, s in rows:
        values = [ppl[m, p, s] for p in ("50%", "4:8", "2:4")]
        if not dense < values[0] < values[1] < values[2]:
            order.append(f"{row_name(m, s)}: " + ", ".join(f"{v:.3f}" for v in values))
    return [
        Claim("magnitude clearly worst (5% above every calibrated run of its pattern)", worst),
        Claim("SparseGPT and Wanda close (closer to each other than the best run is to magnitude)", close),
        Claim("2:4 worse than 4:8 worse than 50% unstructured, in every row", order),
        Claim(f"sequential calibration at least as good as parallel (within {tolerance:.0%})", sequential),
    ]


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="one_shot_chars.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (default %(default)s)")
    parser.add_argument("--calib", type=int, default=256, help="calibration sequences (default %(default)s)")
    parser.add_argument("--val", type=int, default=VAL_SEQUENCES, help="validation sequences (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the model's initialisation and batches")
    parser.add_argument("--depth", type=int, default=DEPTH, help="decoder blocks (default %(default)s)")
    parser.add_argument("--out-dir", help="save the trained parameters to OUT_DIR/chars_dense.safetensors")
    parser.add_argument("--load", help="trained parameters saved by --out-dir: skip training")
    parser.add_argument("--check-shape", action="store_true",
                        help="exit with status 1 when a part of the published shape does not hold")
    args = parser.parse_args(argv)
    for flag in ("steps", "calib", "val", "depth"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")

    begin = time.perf_counter()
    text = load_text()
    for flag, split in (("calib", text.calib), ("val", text.val)):
        if getattr(args, flag) > len(split) // (SEQ_LEN + 1):
            parser.error(f"--{flag} {getattr(args, flag)}: the split holds {len(split) // (SEQ_LEN + 1)} sequences")
    calib, val = sequences(text.calib, args.calib), sequences(text.val, args.val)
    graphdef, params = init_model(args.seed, args.depth)
    if args.load:
        params = jp.load_tree(args.load, like=params)
        progress(f"loaded the trained parameters from {args.load}")
        trained = "loaded from " + args.load
    else:
        progress(f"training {args.steps} steps")
        params = train(graphdef, params, text.train, args.steps, args.seed)
        trained = f"trained {args.steps} steps in {time.perf_counter() - begin:.0f} s"
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        jp.save_tree(os.path.join(args.out_dir, "chars_dense.safetensors"), params)
    dense = perplexity(graphdef, params, val)
    unigram = unigram_perplexity(text.train, val)
    print(f"text: {len(MODULES)} standard-library modules, {len(text.train):,} / {len(text.calib):,} / "
          f"{len(text.val):,} bytes (train / calibration / validation); {args.calib} calibration and "
          f"{args.val} validation sequences of {SEQ_LEN} bytes")
    print(f"model: {args.depth} blocks of width {WIDTH} ({HEADS} heads), {count(params):,} parameters, "
          f"{sum(v.size for p, v in named(params).items() if is_pruned(p)):,} in the pruned kernels; {trained}")
    print(f"validation perplexity: dense {dense:.3f}, unigram {unigram:.3f}")

    start = time.perf_counter()
    runs = prune_all(graphdef, params, calib, val)
    pruning = time.perf_counter() - start
    print()
    print(table(dense, runs))
    print()
    stats = first_layer_stats(graphdef, params, calib)
    pruned = [check_run(params, r) for r in runs]
    for r in runs:
        check_reports(params, r, stats)
    errors = {(r.method, r.pattern, r.sequential): mean_error(r) for r in runs}
    for p in PATTERNS:
        print(f"mean reconstruction error {p}: " + ", ".join(
            f"{row_name(m, s)} {e:.4f}" for (m, q, s), e in errors.items() if q == p))
    print(f"checked: {len(runs)} pruned models, {sum(pruned):,} weights pruned: every mask exactly 50% or exactly "
          f"n of every m inputs, every pruned weight exactly 0.0, the other parameters unchanged; each report "
          f"covers the {len(runs[0].layers)} kernels and its first layer's error equals the one recomputed from "
          f"inputs captured by hand")
    for p in PATTERNS:  # parallel calibration: every method's error is measured on the same dense inputs
        order = [errors["SparseGPT", p, False], errors["Wanda", p, False], errors["magnitude", p, None]]
        assert order == sorted(order), f"{p}: mean reconstruction errors SparseGPT, Wanda, magnitude {order}"
    print("checked: mean reconstruction error over the kernels, on the same dense inputs (parallel): "
          "SparseGPT < Wanda < magnitude at " + ", ".join(PATTERNS))
    claims = shape(dense, runs)
    for claim in claims:
        if claim.failures:
            print(f"not reproduced: {claim.text}: " + "; ".join(claim.failures))
        else:
            print(f"checked: the published shape: {claim.text}")
    print(f"wall time: {time.perf_counter() - begin:.0f} s ({pruning:.0f} s pruning and evaluating); "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.check_shape and any(claim.failures for claim in claims):
        sys.exit("the published shape does not hold here (see the lines above)")


def count(params: Params) -> int:
    return sum(int(np.size(v)) for v in jax.tree.leaves(params))


if __name__ == "__main__":
    main()
