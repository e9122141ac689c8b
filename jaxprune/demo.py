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

The second demo, :func:`run_channels` (``jaxprune demo --channels``,
``examples/shrink_digits.py``), prunes whole channels: the same CNN with conv
widths 32 and 64, the same data, batches and optimizer, trained

1. dense, for ``steps`` steps;
2. with ``jp.pruning(optax.adam(lr), groups, make_schedule(steps, 0.75))``
   over its channel groups (``jp.channel_groups`` of the forward: each conv's
   output channels, with the next layer's input positions, the flattened ones
   of the linear layer too): whole channels are pruned gradually inside the
   jitted step, to exactly 75% of every group. The channels pruned are read
   from the optimizer's masks and removed with ``jp.shrink_model``; the
   shrunk model's logits are checked equal to the pruned model's;
3. a dense model of the shrunk widths, from scratch, for ``steps`` steps.

It prints params, FLOPs (XLA's cost analysis of the jitted forward on the
test set), median inference time (compile excluded) and test accuracy of
each, with the pruned model before shrinking (as big and as slow as the
dense one) for comparison. The same seed prints the same table, apart from
the times.

>>> make_schedule(2000).start, make_schedule(2000).end, make_schedule(2000).every
(400, 1200, 80)
>>> batch_indices(0, n_train=200, steps=5, batch_size=64).shape
(5, 64)
>>> count_params({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)})
16
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
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
WIDTHS = (16, 32)  # the CNN's conv widths

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
        """conv 1->w1 3x3, relu, conv w1->w2 3x3, relu, avg-pool 2x2, linear 16*w2->10 (``widths=(w1, w2)``)."""

        def __init__(self, *, rngs: nnx.Rngs, widths: tuple[int, int] = WIDTHS) -> None:
            self.conv1 = nnx.Conv(1, widths[0], (3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(widths[0], widths[1], (3, 3), rngs=rngs)
            self.fc = nnx.Linear(4 * 4 * widths[1], 10, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            """Logits (N, 10) for images (N, 8, 8, 1)."""
            x = nnx.relu(self.conv1(x))
            x = nnx.relu(self.conv2(x))
            x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
            return self.fc(x.reshape(x.shape[0], -1))

    return DigitsCNN


def init_model(seed: int, widths: tuple[int, int] = WIDTHS) -> tuple[nnx.GraphDef, Params]:
    """The CNN's graph definition and its parameters (conv widths ``widths``), initialised from ``seed``."""
    from flax import nnx

    return nnx.split(model_class()(rngs=nnx.Rngs(seed), widths=widths), nnx.Param)


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


def make_schedule(steps: int, final: float = FINAL_SPARSITY) -> jp.PolynomialSchedule:
    """Dense for 20% of ``steps``, then MASK_UPDATES updates to ``final`` sparsity by 60%."""
    every = max(1, (2 * steps // 5) // MASK_UPDATES)
    start = steps // 5
    end = start + MASK_UPDATES * every
    if end >= steps:
        raise ValueError(f"--steps {steps} is too few for a schedule of {MASK_UPDATES} updates")
    return jp.polynomial_schedule(0.0, final, start=start, end=end, every=every)


def kernel_sparsity(params: Params, masks: Any) -> float:
    """Fraction of the kernels' entries pruned, from the masks (jp.sparsity_report)."""
    report = jp.sparsity_report(params, masks)
    return jp.SparsityReport(tuple(leaf for leaf in report.leaves if leaf.path.endswith("kernel"))).sparsity


def fit(graphdef: nnx.GraphDef, params: Params, tx: optax.GradientTransformation, seed: int, steps: int,
        data: Digits) -> tuple[Params, Any]:
    """Train ``params`` with ``tx`` for ``steps`` steps (batches drawn from ``seed``); return params and state."""
    opt_state: Any = tx.init(params)
    step = make_train_step(graphdef, tx, data)
    for idx in batch_indices(seed, data.x_train.shape[0], steps):
        params, opt_state, _ = step(params, opt_state, idx)
    return params, opt_state


def train_dense(seed: int, steps: int, data: Digits) -> float:
    """Train the dense baseline for ``steps`` steps; return its test accuracy."""
    import optax

    graphdef, params = init_model(seed)
    params, _ = fit(graphdef, params, optax.adam(LEARNING_RATE), seed, steps, data)
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


# --------------------------------------------------------------------------
# The second demo: whole channels pruned while training, then the model shrunk
# --------------------------------------------------------------------------

CHANNEL_WIDTHS = (32, 64)  # enough channels to prune
CHANNEL_SPARSITY = 0.75  # of every channel group
CHANNEL_STEPS = 1000  # the default: the demo's four trainings and timings in well under a minute
TIMING_REPS = 50


class Cost(NamedTuple):
    """What a model costs on the test set: parameters, FLOPs of the compiled forward, its time."""

    params: int
    flops: float  # from XLA's cost analysis of the jitted forward on the test set
    seconds: float  # median over the reps, compile excluded


class ChannelRow(NamedTuple):
    """One row of the table."""

    model: str
    widths: tuple[int, int]
    cost: Cost
    accuracy: float


class ChannelsResult(NamedTuple):
    """What :func:`run_channels` measured."""

    rows: list[ChannelRow]
    groups: jp.ChannelGroups
    keep: tuple[np.ndarray, ...]  # per group, the channels kept
    max_difference: float  # max |shrunk - pruned| of the logits on the test set


def conv_widths(params: Params) -> tuple[int, int]:
    """The output widths of the two convs, read from their kernels."""
    return int(params["conv1"]["kernel"].shape[-1]), int(params["conv2"]["kernel"].shape[-1])


def count_params(params: Params) -> int:
    """The number of parameters (Python ints: no int32 overflow)."""
    return sum(int(np.prod(np.shape(leaf), dtype=np.int64)) for leaf in jax.tree.leaves(params))


def make_forward(graphdef: nnx.GraphDef) -> Callable[[Params, jax.Array], jax.Array]:
    """``forward(params, x)``: the model's logits (not jitted)."""
    from flax import nnx

    return lambda params, x: nnx.merge(graphdef, params)(x)


def measure(models: Sequence[tuple[nnx.GraphDef, Params]], x: jax.Array, reps: int = TIMING_REPS) -> list[Cost]:
    """Per model: parameters, FLOPs (XLA's cost analysis) and median time of its jitted forward on ``x``.

    All are compiled first (compile excluded from the times), then timed in
    turn, rep after rep: a load that comes and goes on the machine slows all
    of them alike.
    """
    import time

    compiled = [jax.jit(make_forward(graphdef)).lower(params, x).compile() for graphdef, params in models]
    flops = []
    for c in compiled:
        analysis = c.cost_analysis()
        if isinstance(analysis, (list, tuple)):  # one dict per computation in older jax
            analysis = analysis[0]
        flops.append(float(analysis["flops"]) if analysis else float("nan"))  # a backend may give none
    for c, (_, params) in zip(compiled, models):
        jax.block_until_ready(c(params, x))  # the first call may still allocate
    times: list[list[float]] = [[] for _ in models]
    for _ in range(reps):
        for c, (_, params), t in zip(compiled, models, times):
            begin = time.perf_counter()
            jax.block_until_ready(c(params, x))
            t.append(time.perf_counter() - begin)
    return [Cost(count_params(params), f, float(np.median(t))) for (_, params), f, t in zip(models, flops, times)]


def kept_channels(groups: Sequence[jp.ChannelGroup], masks: Any) -> tuple[np.ndarray, ...]:
    """Per group, the channels kept (bool vectors, as jp.group_keep gives), read from ``jp.pruning``'s masks.

    A channel is kept where its positions in the group's first member are kept
    (``jp.pruning`` masks whole channels, in every member at once).

    >>> def mlp(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((2, 3)), "w2": jnp.ones((3, 1))}
    >>> groups = jp.channel_groups(mlp, params, jnp.ones((1, 2)))
    >>> masks = {"w1": jnp.array([[True, False, True]] * 2), "w2": jnp.array([[True], [False], [True]])}
    >>> [k.tolist() for k in kept_channels(groups, masks)]
    [[True, False, True]]
    """
    from jaxprune._shrink import channel_alive

    by_path = {jp.path_str(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(masks)}
    return tuple(channel_alive(g.members[0], np.asarray(by_path[g.members[0].path])) for g in groups)


def train_channel_pruned(seed: int, steps: int, data: Digits) -> tuple[nnx.GraphDef, Params, jp.ChannelGroups,
                                                                       tuple[np.ndarray, ...]]:
    """The wide CNN trained with ``jp.pruning`` over its channel groups; its params, groups and kept channels.

    Every group is exact (removing its channels equals masking them) and ends
    with exactly ``round(CHANNEL_SPARSITY * size)`` channels pruned.
    """
    import optax

    graphdef, params = init_model(seed, CHANNEL_WIDTHS)
    groups = jp.channel_groups(make_forward(graphdef), params, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
    assert [g.size for g in groups] == list(CHANNEL_WIDTHS) and all(g.exact for g in groups), groups
    tx = jp.pruning(optax.adam(LEARNING_RATE), groups, make_schedule(steps, CHANNEL_SPARSITY))
    params, opt_state = fit(graphdef, params, tx, seed, steps, data)
    keep = kept_channels(groups, opt_state.masks)
    for group, kept in zip(groups, keep):
        assert int(np.sum(~kept)) == round(CHANNEL_SPARSITY * group.size), (group, kept)
    check_zeros(params, opt_state.masks)  # the pruned channels are exactly 0 in every member
    return graphdef, params, groups, keep


def shrunk(graphdef: nnx.GraphDef, params: Params, groups: Sequence[jp.ChannelGroup],
           keep: Sequence[np.ndarray]) -> tuple[nnx.GraphDef, Params]:
    """The model with its pruned channels removed (``jp.shrink_model``): graph definition and params.

    ``params`` are left as they are (``nnx.merge`` shares their Variables, so the model is merged from a copy).
    """
    from flax import nnx

    model = nnx.merge(graphdef, jax.tree.map(jnp.array, params))
    jp.shrink_model(model, groups, [jnp.asarray(k) for k in keep])
    return nnx.split(model, nnx.Param)


def run_channels(seed: int = 0, steps: int = CHANNEL_STEPS, reps: int = TIMING_REPS) -> ChannelsResult:
    """Train dense, channel-pruned and small-from-scratch CNNs; shrink; print the table.

    Raises ``ValueError`` when ``steps`` is too few for the schedule (before any work).
    """
    import optax

    schedule = make_schedule(steps, CHANNEL_SPARSITY)
    data = load_data()
    x, y = data.x_test, data.y_test
    print(f"digits: {data.x_train.shape[0]} train / {x.shape[0]} test images (8x8), seed {seed}, {steps} steps "
          f"of batch {BATCH_SIZE}, adam {LEARNING_RATE:g}; CNN conv widths {CHANNEL_WIDTHS[0]}, {CHANNEL_WIDTHS[1]}")
    print(f"schedule: polynomial 0% -> {CHANNEL_SPARSITY:.0%} of the channels of every channel group (L2), "
          f"updates at steps {schedule.start}..{schedule.end} every {schedule.every}, then fine-tuning to "
          f"step {steps}\n")

    progress(f"training the dense baseline ({steps} steps)")
    graphdef, params = init_model(seed, CHANNEL_WIDTHS)
    dense, _ = fit(graphdef, params, optax.adam(LEARNING_RATE), seed, steps, data)
    progress(f"training with jp.pruning over channel groups to {CHANNEL_SPARSITY:.0%} ({steps} steps)")
    graphdef, pruned, groups, keep = train_channel_pruned(seed, steps, data)
    expected = np.asarray(make_forward(graphdef)(pruned, x))
    small_graphdef, small = shrunk(graphdef, pruned, groups, keep)
    got = np.asarray(make_forward(small_graphdef)(small, x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg="the shrunk model differs")
    widths = conv_widths(small)
    progress(f"training a dense model of the shrunk widths {widths} from scratch ({steps} steps)")
    scratch_graphdef, scratch = init_model(seed, widths)
    scratch, _ = fit(scratch_graphdef, scratch, optax.adam(LEARNING_RATE), seed, steps, data)
    progress(f"done; measuring FLOPs and inference time ({reps} reps each)")

    models = [("dense", graphdef, dense), ("pruned, masked (before shrink)", graphdef, pruned),
              ("pruned + shrunk", small_graphdef, small), ("small dense from scratch", scratch_graphdef, scratch)]
    costs = measure([(g, p) for _, g, p in models], x, reps)
    rows = [ChannelRow(name, conv_widths(p), cost, make_accuracy(g)(p, x, y))
            for (name, g, p), cost in zip(models, costs)]
    print_channels_table(rows, x.shape[0])
    difference = float(np.max(np.abs(got - expected)))
    print(f"\nchecked: the shrunk model's logits equal the pruned model's on the {x.shape[0]} test images "
          f"(max |difference| {difference:.1e}; rtol 1e-5, atol 1e-5); pruned channels per group: "
          + ", ".join(f"{int(np.sum(~k))} of {g.size}" for g, k in zip(groups, keep)))
    return ChannelsResult(rows, groups, keep, difference)


def print_channels_table(rows: Sequence[ChannelRow], batch: int) -> None:
    """The table: model | conv widths | params | FLOPs | inference time | test accuracy."""
    base = rows[0].cost
    print(f"| model | conv widths | params | FLOPs (batch {batch}) | inference time (batch {batch}) | test accuracy |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        c = row.cost
        print(f"| {row.model} | {row.widths[0]}, {row.widths[1]} | {c.params:,} | {c.flops / 1e6:,.1f} M "
              f"({c.flops / base.flops:.2f}x) | {1e3 * c.seconds:.2f} ms ({c.seconds / base.seconds:.2f}x) "
              f"| {row.accuracy:.2%} |")


def main_channels(argv: list[str] | None = None, *, prog: str | None = None) -> None:
    """The second example script's command line: ``[--seed 0] [--steps 1000]``."""
    parser = argparse.ArgumentParser(prog=prog, description="Channel pruning of a CNN on scikit-learn's digits "
                                     "while it trains, then shrinking it (jaxprune.demo.run_channels).")
    parser.add_argument("--seed", type=int, default=0, help="model init and batch order (default 0)")
    parser.add_argument("--steps", type=int, default=CHANNEL_STEPS,
                        help=f"training steps of each run (default {CHANNEL_STEPS})")
    args = parser.parse_args(argv)
    try:
        make_schedule(args.steps, CHANNEL_SPARSITY)
    except ValueError as err:
        parser.error(str(err))
    run_channels(seed=args.seed, steps=args.steps)
