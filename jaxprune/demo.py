"""The demo: gradual magnitude pruning of a small CNN on real data, scikit-learn's digits.

``jaxprune demo`` and ``examples/prune_digits.py`` both run :func:`run`; this
module is the one copy of the code. It imports flax, optax, scikit-learn and
matplotlib only when a function needs them (:func:`require` checks them
first), so importing it, ``jaxprune`` or ``jaxprune.cli`` pulls in none of
them; running it needs the ``examples`` extra (``pip install
'jaxprune[examples]'``). Progress goes to stderr, a line per phase.

The digits data set (1,797 grey 8x8 images of handwritten digits, shipped
inside scikit-learn, no download) is split once into train and test (25% test,
stratified, fixed ``random_state``). A small Flax NNX CNN (conv 1->16 3x3,
relu, conv 16->32 3x3, relu, 2x2 average pool, linear 512->10) is trained with
optax adam on minibatches, in a Python loop over one jitted step function
(``nnx.split`` once, ``nnx.merge`` inside the step).

1. A dense baseline: ``steps`` steps of plain ``optax.adam``.
2. The same model, same seed, same batches, same number of steps, trained with
   ``jp.pruning(optax.adam(lr), {"*.kernel": jp.L1Unstructured},
   jp.polynomial_schedule(0.0, 0.9, ...))``: dense for the first 20% of the
   steps, then 10 mask updates (Zhu & Gupta's cubic schedule) up to 90%
   sparsity of every kernel (each kernel is pruned by its own L1 ranking),
   then fine-tuning at 90% for the last 40% of the steps. The masks live in
   the optimizer state and are recomputed inside the jitted step, so the whole
   run compiles once.

:func:`run` prints a table of kernel sparsity (read from the masks with
``jp.sparsity_report``) against test accuracy: the dense baseline first, then
each level the schedule reaches, measured right after the masks were updated
(the damage) and after the steps trained at that level (the recovery), and
the final model after fine-tuning. It prints the final model's sparsity
report, asserts that every pruned weight is exactly 0, saves a plot of test
accuracy against sparsity, and with ``out_dir`` saves the final params and
masks as safetensors files (``jp.save_tree``), checked by loading them back.
The same seed prints the same table (on the same machine and jax version).

>>> make_schedule(2000).start, make_schedule(2000).end, make_schedule(2000).every
(400, 1200, 80)
>>> batch_indices(0, n_train=200, steps=5, batch_size=64).shape
(5, 64)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

if TYPE_CHECKING:
    import optax
    from flax import nnx

BATCH_SIZE = 64
LEARNING_RATE = 5e-3
FINAL_SPARSITY = 0.9
MASK_UPDATES = 10  # nonzero sparsity levels; the schedule's first update (at `start`) is at 0%
RULES = {"*.kernel": jp.L1Unstructured}

Params = Any  # an nnx.State of the model's nnx.Param variables
StepFn = Callable[[Params, Any, jax.Array], tuple[Params, Any, jax.Array]]


def require() -> None:
    """Import what the demo needs now; an ``ImportError`` names the missing package."""
    import flax.nnx  # noqa: F401
    import matplotlib  # noqa: F401
    import optax  # noqa: F401
    import sklearn.datasets  # noqa: F401


def progress(message: str) -> None:
    """A line on stderr: what the demo is doing while it trains (stdout keeps the results)."""
    print(f"[demo] {message}", file=sys.stderr, flush=True)


class Digits(NamedTuple):
    """The digits split: images (N, 8, 8, 1) float32 in [0, 1], labels (N,) int32."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array


def load_data(split_seed: int = 0) -> Digits:
    """scikit-learn's digits, scaled to [0, 1], split 75/25 (stratified, fixed seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits: Any = load_digits()  # a sklearn Bunch
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=split_seed
    )
    return Digits(jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_test), jnp.asarray(y_test))


@functools.cache
def model_class() -> type:
    """The CNN's class (defined on first use: its base class comes from flax)."""
    from flax import nnx

    class DigitsCNN(nnx.Module):
        """conv 1->16 3x3, relu, conv 16->32 3x3, relu, avg-pool 2x2, linear 512->10."""

        def __init__(self, *, rngs: nnx.Rngs) -> None:
            self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            """Logits (N, 10) for images (N, 8, 8, 1)."""
            x = nnx.relu(self.conv1(x))
            x = nnx.relu(self.conv2(x))
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
            return self.fc(x.reshape(x.shape[0], -1))

    return DigitsCNN


def init_model(seed: int) -> tuple[nnx.GraphDef, Params]:
    """The CNN's graph definition and its parameters, initialised from ``seed``."""
    from flax import nnx

    return nnx.split(model_class()(rngs=nnx.Rngs(seed)), nnx.Param)


def loss_fn(graphdef: nnx.GraphDef, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the model on a batch."""
    import optax
    from flax import nnx

    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, data: Digits,
                    on_trace: Callable[[], None] | None = None) -> StepFn:
    """A jitted ``step(params, opt_state, batch_indices) -> (params, opt_state, loss)``.

    The batch is gathered from the training set inside the step, so only the
    indices travel per step. Nothing in it depends on the step number in
    Python: with ``jp.pruning`` the schedule is read from the optimizer state.
    ``on_trace()`` runs each time jax traces the step (a compile), never per step.
    """
    import optax

    @jax.jit
    def step(params: Params, opt_state: Any, idx: jax.Array) -> tuple[Params, Any, jax.Array]:
        if on_trace is not None:
            on_trace()  # Python inside a jitted function runs only while jax traces it
        x, y = data.x_train[idx], data.y_train[idx]
        loss, grads = jax.value_and_grad(lambda p: loss_fn(graphdef, p, x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def make_accuracy(graphdef: nnx.GraphDef) -> Callable[[Params, jax.Array, jax.Array], float]:
    """``accuracy(params, x, y)``: the fraction of ``x`` classified correctly (jitted)."""
    from flax import nnx

    @jax.jit
    def correct(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(x), axis=-1) == y)

    return lambda params, x, y: float(correct(params, x, y))


def batch_indices(seed: int, n_train: int, steps: int, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(steps, batch_size) training indices: shuffled epochs, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    per_epoch = n_train // batch_size
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n_train)[: per_epoch * batch_size].reshape(per_epoch, batch_size) for _ in range(epochs)]
    return np.concatenate(rows)[:steps].astype(np.int32)


def make_schedule(steps: int) -> jp.PolynomialSchedule:
    """Dense for 20% of ``steps``, then MASK_UPDATES updates to FINAL_SPARSITY by 60%."""
    every = max(1, (2 * steps // 5) // MASK_UPDATES)
    start = steps // 5
    end = start + MASK_UPDATES * every
    if end >= steps:
        raise ValueError(f"--steps {steps} is too few for a schedule of {MASK_UPDATES} updates")
    return jp.polynomial_schedule(0.0, FINAL_SPARSITY, start=start, end=end, every=every)


def kernel_sparsity(params: Params, masks: Any) -> float:
    """Fraction of the kernels' entries pruned, from the masks (jp.sparsity_report)."""
    report = jp.sparsity_report(params, masks)
    return jp.SparsityReport(tuple(leaf for leaf in report.leaves if leaf.path.endswith("kernel"))).sparsity


def train_dense(seed: int, steps: int, data: Digits) -> float:
    """Train the dense baseline for ``steps`` steps; return its test accuracy."""
    import optax

    graphdef, params = init_model(seed)
    tx = optax.adam(LEARNING_RATE)
    opt_state: Any = tx.init(params)  # a jp.PruningState
    step = make_train_step(graphdef, tx, data)
    for idx in batch_indices(seed, data.x_train.shape[0], steps):
        params, opt_state, _ = step(params, opt_state, idx)
    return make_accuracy(graphdef)(params, data.x_test, data.y_test)


class Level(NamedTuple):
    """One sparsity level the schedule reached."""

    step: int  # the step (0-based) whose update produced the masks
    sparsity: float  # kernel sparsity, from the masks
    acc_pruned: float  # test accuracy right after the update
    acc_trained: float  # test accuracy `every - 1` steps later (just before the next update)


class PrunedRun(NamedTuple):
    """What the pruning run produced."""

    levels: list[Level]
    final_sparsity: float
    final_accuracy: float
    params: Params
    masks: Any
    traces: int


def train_pruned(seed: int, steps: int, data: Digits) -> PrunedRun:
    """Train with ``jp.pruning`` by the polynomial schedule; evaluate at every level."""
    import optax

    graphdef, params = init_model(seed)
    schedule = make_schedule(steps)
    tx = jp.pruning(optax.adam(LEARNING_RATE), RULES, schedule, key=jax.random.key(seed))
    opt_state: Any = tx.init(params)  # a jp.PruningState
    traces = 0

    def count_trace() -> None:
        nonlocal traces
        traces += 1

    step = make_train_step(graphdef, tx, data, on_trace=count_trace)
    accuracy = make_accuracy(graphdef)
    update_steps = {t for t in range(steps) if bool(schedule.is_update(t))}
    levels: list[Level] = []
    for t, idx in enumerate(batch_indices(seed, data.x_train.shape[0], steps)):
        params, opt_state, _ = step(params, opt_state, idx)
        if t in update_steps:
            sparsity = kernel_sparsity(params, opt_state.masks)
            if sparsity > 0:  # the first update of a schedule from 0.0 prunes nothing
                levels.append(Level(t, sparsity, accuracy(params, data.x_test, data.y_test), float("nan")))
        if levels and t == levels[-1].step + schedule.every - 1:  # `every` steps trained at this level
            levels[-1] = levels[-1]._replace(acc_trained=accuracy(params, data.x_test, data.y_test))
    final_accuracy = accuracy(params, data.x_test, data.y_test)
    return PrunedRun(levels, kernel_sparsity(params, opt_state.masks), final_accuracy, params,
                     opt_state.masks, traces)


def check_zeros(params: Params, masks: Any) -> int:
    """Assert every pruned weight is exactly 0; return how many pruned weights there are."""
    pruned = 0

    def check(mask: jax.Array | None, param: jax.Array) -> None:
        nonlocal pruned
        if mask is None:
            return
        keep, value = np.asarray(mask), np.asarray(param)
        assert keep.shape == value.shape and keep.dtype == bool
        assert np.all(value[~keep] == 0.0), "a pruned weight is not exactly 0"
        pruned += int((~keep).sum())

    jax.tree.map(check, masks, params, is_leaf=lambda x: x is None)
    return pruned


def plot(path: str, dense_acc: float, pruned: PrunedRun) -> None:
    """Test accuracy vs kernel sparsity, the dense baseline as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparsity = [100 * lv.sparsity for lv in pruned.levels]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.axhline(100 * dense_acc, color="grey", linestyle="--", label=f"dense baseline ({100 * dense_acc:.2f}%)")
    ax.plot(sparsity, [100 * lv.acc_pruned for lv in pruned.levels], "o-", color="tab:red",
            label="right after the mask update")
    ax.plot(sparsity, [100 * lv.acc_trained for lv in pruned.levels], "s-", color="tab:blue",
            label="after training at that sparsity")
    ax.set_xlim(0, 100)
    ax.plot([100 * pruned.final_sparsity], [100 * pruned.final_accuracy], "*", markersize=14, color="tab:green",
            label=f"final, after fine-tuning ({100 * pruned.final_accuracy:.2f}%)")
    ax.set_xlabel("kernel sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Gradual L1 pruning of a small CNN on sklearn digits")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(out_dir: str, pruned: PrunedRun) -> None:
    """Save the final params and masks with jp.save_tree, and check they load back."""
    os.makedirs(out_dir, exist_ok=True)
    for name, tree in (("params", pruned.params), ("masks", pruned.masks)):
        path = os.path.join(out_dir, f"{name}.safetensors")
        jp.save_tree(path, tree)
        loaded = jp.load_tree(path, like=tree)
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), tree, loaded)
        assert all(jax.tree.leaves(same)), f"{path} did not load back equal"
        print(f"saved {name} to {path}")


class DemoResult(NamedTuple):
    """What :func:`run` measured and wrote."""

    dense_accuracy: float
    pruned: PrunedRun
    plot_path: str


def run(seed: int = 0, steps: int = 2000, plot_path: str = "prune_digits.png",
        out_dir: str | None = None) -> DemoResult:
    """Train both models, print the table and the final report, write the plot (and ``out_dir``).

    Raises ``ValueError`` when ``steps`` is too few for the schedule (before any work).
    """
    schedule = make_schedule(steps)
    data = load_data()
    print(f"digits: {data.x_train.shape[0]} train / {data.x_test.shape[0]} test images (8x8), "
          f"seed {seed}, {steps} steps of batch {BATCH_SIZE}, adam {LEARNING_RATE:g}")
    print(f"schedule: polynomial 0% -> {FINAL_SPARSITY:.0%} of every kernel (L1), updates at steps "
          f"{schedule.start}..{schedule.end} every {schedule.every}, then fine-tuning to step {steps}\n")

    progress(f"training the dense baseline ({steps} steps)")
    dense_acc = train_dense(seed, steps, data)
    progress(f"training with jp.pruning to {FINAL_SPARSITY:.0%} sparsity ({steps} steps)")
    pruned = train_pruned(seed, steps, data)
    progress("done; writing the table and the plot")

    print("| model | step | kernel sparsity | test acc after update | test acc after training |")
    print("|---|---:|---:|---:|---:|")
    print(f"| dense baseline | {steps} | {0.0:.2%} | | {dense_acc:.2%} |")
    for lv in pruned.levels:
        print(f"| pruned | {lv.step} | {lv.sparsity:.2%} | {lv.acc_pruned:.2%} | {lv.acc_trained:.2%} |")
    print(f"| pruned, fine-tuned | {steps} | {pruned.final_sparsity:.2%} | | {pruned.final_accuracy:.2%} |")
    print(f"\n(\"after update\": right after the step that updated the masks; \"after training\": "
          f"{schedule.every - 1} steps later, just before the next update. The pruning run's step compiled "
          f"{pruned.traces} time(s).)\n")

    print("final model:")
    print(jp.sparsity_report(pruned.params, pruned.masks))
    n_zero = check_zeros(pruned.params, pruned.masks)
    print(f"\nchecked: all {n_zero:,} pruned weights are exactly 0.0")
    print(f"accuracy: dense {dense_acc:.2%}, {pruned.final_sparsity:.0%}-sparse kernels {pruned.final_accuracy:.2%} "
          f"({100 * (pruned.final_accuracy - dense_acc):+.2f} points)")

    plot(plot_path, dense_acc, pruned)
    plot_abs = os.path.abspath(plot_path)
    print(f"plot written to {plot_abs}")
    if out_dir:
        save(out_dir, pruned)
    return DemoResult(dense_acc, pruned, plot_abs)


def main(argv: list[str] | None = None, *, prog: str | None = None, default_plot: str = "prune_digits.png") -> None:
    """The example script's command line: ``[--seed 0] [--steps 2000] [--plot PATH] [--out-dir DIR]``."""
    parser = argparse.ArgumentParser(prog=prog, description="Gradual magnitude pruning of a small CNN on "
                                     "scikit-learn's digits (jaxprune.demo).")
    parser.add_argument("--seed", type=int, default=0, help="model init, batch order and pruning key (default 0)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each run (default 2000)")
    parser.add_argument("--plot", default=default_plot, help="where to write the PNG plot")
    parser.add_argument("--out-dir", default=None, help="save the final params and masks there (safetensors)")
    args = parser.parse_args(argv)
    try:
        make_schedule(args.steps)
    except ValueError as err:
        parser.error(str(err))
    run(seed=args.seed, steps=args.steps, plot_path=args.plot, out_dir=args.out_dir)
