"""One-shot pruning of a whole model from calibration data (Wanda, SparseGPT, magnitude).

``one_shot`` reads the model's jaxpr once to find, for every parameter a rule
names, the matmul (``dot_general``) or convolution that uses it as a weight
and the operand that is its input (for a convolution: that operand's image
patches). It then runs the model on the calibration batches,
accumulating each kernel's input statistics (``InputStats``: the sum of
squares per input feature and ``X^T X``) inside a jitted function that
computes nothing past the kernels it needs (XLA drops the rest), and prunes
the kernels with their rule's method.

Stages: a kernel's *stage* is the number of pruned kernels on the longest
data-flow path into its input (0: its input does not depend on any pruned
kernel). q/k/v projections of one attention share a stage; the output
projection is one later; the MLP's first kernels one more. With
``sequential=True`` the stages are pruned in order and each stage's inputs
come from the model whose earlier stages are already pruned (what the official
Wanda and SparseGPT code do block by block); ``sequential=False`` takes every
input from the dense model, in one pass.

Cost: one pass over the batches per stage, each pass running the model only up
to that stage's kernels: at most (stages x batches) forward passes, and one
compilation per stage and distinct batch shape. The official code caches each
decoder block's inputs instead, so it runs the model about once; a generic
function gives no block boundary to cache at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, tree_util
from jax.extend.core import Literal

from ._calibration import InputStats, SparseGPT, Wanda, input_stats, relative_error
from ._groups import inner_jaxpr
from ._one_shot_types import LayerReport, OneShotResult, pruned_fraction, reporter
from ._plan import as_method, match_patterns
from ._rules import prune_tree
from ._specs import PruningMethod
from ._trees import path_str
from ._typing import Array, PRNGKey

_CALIBRATED = (Wanda, SparseGPT)
#: Primitives that pass a weight through unchanged (up to an axis permutation).
_PASS = {"convert_element_type", "copy", "copy_p", "transpose"}
_LOOPS = {"scan", "while", "cond"}


# --------------------------------------------------------------------------
# Reading the jaxpr: which matmul uses which kernel, and in which stage
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Site:
    """A matmul whose weight is a pruned parameter."""

    leaf: int  # the parameter's index among the leaves
    where: tuple[int, ...]  # equation indices from the top jaxpr down through calls
    act: int  # which operand of the dot_general is the input (0 or 1)
    act_axes: tuple[int, ...]  # the input's contracted axes, in the weight's pairing order
    in_axes: tuple[int, ...]  # the parameter axes they contract with
    out_axes: tuple[int, ...]  # the parameter's other axes (increasing)
    stage: int = 0
    conv: dict[str, Any] | None = None  # a convolution's geometry: its inputs are image patches


def _site_rows(x: Array, site: _Site) -> Array:
    """A site's inputs as ``(rows, in_features)``, rows matching ``_as_matrix``'s kernel rows.

    For a matmul, the contracted axes last in pairing order; for a convolution,
    the image patches (im2col) that each output position multiplies with the
    kernel, features ordered (input channel, window position).
    """
    if site.conv is None:
        return _rows(x, site.act_axes)
    c = site.conv
    dn = c["dimension_numbers"]
    patches = lax.conv_general_dilated_patches(
        x, c["window"], c["window_strides"], c["padding"], c["lhs_dilation"], c["rhs_dilation"], dn)
    patches = jnp.moveaxis(patches, dn.out_spec[1], -1)
    return patches.reshape(-1, patches.shape[-1])


@dataclasses.dataclass
class _Origin:
    leaf: int
    perm: tuple[int, ...]  # value axis i is parameter axis perm[i]


class _Reader:
    """One walk over the jaxpr: every use of a tracked parameter, and the stages."""

    def __init__(self, tracked: set[int]) -> None:
        self.tracked = tracked
        self.uses: dict[int, list[_Site | str]] = {i: [] for i in tracked}
        self.sites: list[_Site] = []

    def run(self, jaxpr: Any, origins: list[_Origin | None], levels: list[int], where: tuple[int, ...]
            ) -> tuple[list[_Origin | None], list[int]]:
        origin: dict[Any, _Origin | None] = {}
        level: dict[Any, int] = {}
        for v, o, lv in zip(jaxpr.invars, origins, levels, strict=True):
            origin[v], level[v] = o, lv

        def read(v: Any) -> tuple[_Origin | None, int]:
            if isinstance(v, Literal):
                return None, 0
            return origin.get(v), level.get(v, 0)

        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            outs = self._eqn(eqn, [o for o, _ in ins], [lv for _, lv in ins], (*where, i))
            for v, (o, lv) in zip(eqn.outvars, zip(*outs, strict=True), strict=True):
                origin[v], level[v] = o, lv
        results = [read(v) for v in jaxpr.outvars]
        return [o for o, _ in results], [lv for _, lv in results]

    def _eqn(self, eqn: Any, origins: list[_Origin | None], levels: list[int], here: tuple[int, ...]
             ) -> tuple[list[_Origin | None], list[int]]:
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        top = max(levels, default=0)
        if name in _PASS and origins[0] is not None:
            o = origins[0]
            if name == "transpose":
                o = _Origin(o.leaf, tuple(o.perm[a] for a in eqn.params["permutation"]))
            return [o], [top]
        inner = _call_jaxpr(eqn)
        if inner is not None:
            return self.run(getattr(inner, "jaxpr", inner), origins, levels, here)
        if name == "dot_general":
            site = self._dot(eqn, origins, levels, here)
            if site is not None:
                return [None], [max(top, site.stage + 1)]
            return [None] * n_out, [top] * n_out
        if name == "conv_general_dilated" and origins[1] is not None:
            site = self._conv(eqn, origins, levels, here)
            if site is not None:
                return [None], [max(top, site.stage + 1)]
            return [None], [top]
        for o in origins:
            if o is not None:
                what = {"conv_general_dilated": "a convolution as its input",
                        "scan": "lax.scan (stacked layers: unstack or unroll them)",
                        "while": "a while loop", "cond": "lax.cond"}.get(name, f"`{name}`")
                self.uses[o.leaf].append(f"used by {what}")
        return [None] * n_out, [top] * n_out

    def _dot(self, eqn: Any, origins: list[_Origin | None], levels: list[int], here: tuple[int, ...]
             ) -> _Site | None:
        (contract, batch) = eqn.params["dimension_numbers"]
        weights = [k for k in (0, 1) if origins[k] is not None]
        if not weights:
            return None
        if len(weights) == 2:
            for k in weights:
                self.uses[origins[k].leaf].append("multiplied with another pruned parameter")  # type: ignore[union-attr]
            return None
        (w,) = weights
        o = origins[w]
        assert o is not None
        if batch[w]:
            self.uses[o.leaf].append("a batched dot_general (its batch axes are not input features)")
            return None
        act = 1 - w
        in_axes = tuple(o.perm[a] for a in contract[w])
        out_axes = tuple(a for a in range(len(o.perm)) if a not in in_axes)
        site = _Site(o.leaf, here, act, tuple(contract[act]), in_axes, out_axes, levels[act])
        self.uses[o.leaf].append(site)
        self.sites.append(site)
        return site


    def _conv(self, eqn: Any, origins: list[_Origin | None], levels: list[int], here: tuple[int, ...]
              ) -> _Site | None:
        o = origins[1]
        assert o is not None
        p = eqn.params
        if origins[0] is not None:
            self.uses[origins[0].leaf].append("convolved with another pruned parameter")
            self.uses[o.leaf].append("convolved with another pruned parameter")
            return None
        if p["feature_group_count"] != 1 or p["batch_group_count"] != 1:
            groups = max(p["feature_group_count"], p["batch_group_count"])
            self.uses[o.leaf].append(f"a grouped convolution ({groups} groups): its patches are not one matmul")
            return None
        dn = p["dimension_numbers"]
        out_axis, in_axis, *spatial = (o.perm[a] for a in dn.rhs_spec)
        shape = eqn.invars[1].aval.shape
        conv = {"dimension_numbers": dn, "window": tuple(shape[a] for a in dn.rhs_spec[2:]),
                **{k: p[k] for k in ("window_strides", "padding", "lhs_dilation", "rhs_dilation")}}
        site = _Site(o.leaf, here, 0, (), (in_axis, *spatial), (out_axis,), levels[0], conv)
        self.uses[o.leaf].append(site)
        self.sites.append(site)
        return site


def _call_jaxpr(eqn: Any) -> Any:
    """The sub-jaxpr of a call (``inner_jaxpr``), never a loop's body: those run several times."""
    return None if eqn.primitive.name in _LOOPS else inner_jaxpr(eqn)


def _describe(use: _Site | str) -> str:
    return "a matmul weight" if isinstance(use, _Site) else use


# --------------------------------------------------------------------------
# Running the model up to a stage's kernels
# --------------------------------------------------------------------------


class _Done(Exception):
    """Raised by the evaluator once every wanted input has been seen."""


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], where: tuple[int, ...],
              want: Mapping[tuple[int, ...], _Site], inside: set[tuple[int, ...]], found: dict[int, Any],
              ids: Mapping[int, int]) -> list[Any]:
    """Evaluate ``jaxpr`` (traced), recording the inputs of the ``want`` sites in ``found``."""
    env: dict[Any, Any] = {}
    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x

    def read(v: Any) -> Any:
        return v.val if isinstance(v, Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
        here = (*where, i)
        invals = [read(v) for v in eqn.invars]
        if here in want:
            site = want[here]
            found[ids[id(site)]] = invals[site.act]
            if len(found) == len(want):
                raise _Done
        if here in inside:
            inner = _call_jaxpr(eqn)
            outs = _evaluate(getattr(inner, "jaxpr", inner), getattr(inner, "consts", ()), invals, here, want,
                             inside, found, ids)
        else:
            # jax >= 0.7 returns the parameters; earlier versions (subfuns, parameters).
            bound = eqn.primitive.get_bind_params(eqn.params)
            subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
            ctx = getattr(eqn, "ctx", None)
            with ctx.manager if ctx is not None else contextlib.nullcontext():
                outs = eqn.primitive.bind(*subfuns, *invals, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, x in zip(eqn.outvars, outs, strict=True):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _rows(x: Array, axes: tuple[int, ...]) -> Array:
    """The input as ``(rows, in_features)``: contracted axes last, in pairing order."""
    others = [d for d in range(x.ndim) if d not in axes]
    x = jnp.transpose(x, (*others, *axes))
    return x.reshape(-1, math.prod(x.shape[len(others):]))


# --------------------------------------------------------------------------
# The traced model
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Traced:
    """The model traced for one batch signature, with its sites."""

    closed: Any
    sites: list[_Site]
    batch_def: Any
    steps: dict[tuple[int, ...], Callable[..., Any]] = dataclasses.field(default_factory=dict)

    def capture(self, stage: Sequence[int]) -> Callable[..., Any]:
        """``step(leaves, batch_leaves, stats) -> stats`` adding one batch's inputs of ``stage``'s sites."""
        key = tuple(stage)
        if key not in self.steps:
            wanted = [self.sites[i] for i in stage]
            want = {s.where: s for s in wanted}
            inside = {s.where[:d] for s in wanted for d in range(1, len(s.where))}
            ids = {id(s): i for s, i in zip(wanted, stage)}
            closed = self.closed

            def step(leaves: list[Array], batch: list[Array], stats: list[InputStats]) -> list[InputStats]:
                found: dict[int, Array] = {}
                try:
                    _evaluate(closed.jaxpr, closed.consts, [*leaves, *batch], (), want, inside, found, ids)
                except _Done:
                    pass
                return [input_stats(_site_rows(found[i], self.sites[i]).astype(jnp.float32), st)
                        for i, st in zip(stage, stats)]

            self.steps[key] = jax.jit(step, donate_argnums=2)
        return self.steps[key]


def _trace(call: Callable[[Any, Any], Any], treedef: Any, leaves: list[Any], batch: Any,
           tracked: set[int]) -> tuple[_Traced, _Reader]:
    batch_leaves, batch_def = tree_util.tree_flatten(batch)

    def flat(leaves: list[Any], batch_leaves: list[Any]) -> Any:
        return call(tree_util.tree_unflatten(treedef, leaves), tree_util.tree_unflatten(batch_def, batch_leaves))

    closed = jax.make_jaxpr(flat)(leaves, batch_leaves)
    reader = _Reader(tracked)
    n = len(leaves)
    origins: list[_Origin | None] = [
        _Origin(i, tuple(range(np.ndim(leaves[i])))) if i in tracked else None for i in range(n)]
    origins += [None] * len(batch_leaves)
    reader.run(closed.jaxpr, origins, [0] * len(origins), ())
    return _Traced(closed, reader.sites, batch_def), reader


# --------------------------------------------------------------------------
# Rules, kernels and the public function
# --------------------------------------------------------------------------


def _resolve(rules: Any, paths: list[str], leaves: list[Any]) -> dict[int, Any]:
    if callable(rules) and not isinstance(rules, Mapping):
        chosen = {}
        for i, (path, leaf) in enumerate(zip(paths, leaves)):
            value = rules(path, leaf)
            if value is not None:
                chosen[i] = _as_spec(value, f"rules({path!r})")
        if not chosen:
            raise ValueError("one_shot: the rules function returned None for every parameter")
        return chosen
    if not isinstance(rules, Mapping):
        raise TypeError(f"one_shot: rules must be a mapping {{pattern: method}} or a callable, got {rules!r}")
    if not rules:
        raise ValueError("one_shot: no rules given (expected {pattern: method}, e.g. {'*.kernel': jp.Wanda(0.5)})")
    return {i: _as_spec(value, f"rule {pattern!r}") for i, pattern, value in match_patterns(paths, rules)}


def _as_spec(value: Any, where: str) -> Any:
    if isinstance(value, _CALIBRATED):
        return value
    method = as_method(value, where)
    if method.extra_args:
        raise ValueError(f"{where}: {method!r} needs per-parameter inputs {method.extra_args}; one_shot cannot "
                         "supply them")
    return method


def _as_matrix(leaf: Array, site: _Site) -> Array:
    """The kernel as ``(in_features, out_features)`` in the site's pairing order."""
    shape = np.shape(leaf)
    n_in = math.prod(shape[a] for a in site.in_axes)
    return jnp.transpose(leaf, (*site.in_axes, *site.out_axes)).reshape(n_in, -1)


def _from_matrix(matrix: Array, leaf: Array, site: _Site) -> Array:
    order = (*site.in_axes, *site.out_axes)
    shape = np.shape(leaf)
    return jnp.transpose(matrix.reshape([shape[a] for a in order]), tuple(int(a) for a in np.argsort(order)))


def _split_call(fn: Any, args: tuple[Any, ...]) -> tuple[Callable[[Any, Any], Any], Any, Any, Any, Any]:
    """``(call, params, batches, rules, module)``: the arguments ``(fn, params, batches, rules)``
    or ``(module, batches, rules)``, with a call ``(params, batch) -> output`` either way."""
    try:
        from flax import nnx
    except ImportError:  # flax is optional
        nnx = None
    if nnx is not None and isinstance(fn, nnx.Module):
        if len(args) != 2:
            raise TypeError(f"one_shot(module, batches, rules): expected 2 arguments after the module, got {len(args)}")
        graphdef, state = nnx.split(fn)

        def call(state: Any, batch: Any) -> Any:
            return nnx.merge(graphdef, state)(batch)

        return call, state, args[0], args[1], fn
    if not callable(fn):
        raise TypeError(f"one_shot expects a function fn(params, batch) or an nnx.Module, got {type(fn).__name__}")
    if len(args) != 3:
        raise TypeError(f"one_shot(fn, params, batches, rules): expected 3 arguments after fn, got {len(args)}")
    return fn, args[0], args[1], args[2], None


def _signature(batch: Any) -> tuple[Any, ...]:
    leaves, treedef = tree_util.tree_flatten(batch)
    return (treedef, *((np.shape(x), _dtype(x)) for x in leaves))


def one_shot(
    fn: Any,
    *args: Any,
    sequential: bool = True,
    progress: bool | Callable[[LayerReport], None] | None = None,
    key: PRNGKey | None = None,
) -> OneShotResult:
    """Prune a model once from calibration data: Wanda, SparseGPT or magnitude per kernel.

    ``one_shot(fn, params, batches, rules)`` with ``fn(params, batch)`` the model,
    or ``one_shot(nnx_module, batches, rules)`` with ``module(batch)`` the model
    (then the module's parameters are replaced in place, all at once when
    everything has succeeded).

    Each parameter a rule names with :class:`Wanda` or :class:`SparseGPT` must be
    the weight of exactly one matmul (``dot_general``) or convolution of the
    model; its calibration inputs are that matmul's other operand, found in the
    jaxpr (any contracted axes: a ``Dense`` kernel, a ``LinearGeneral`` or an
    einsum weight), or the convolution's image patches (the kernel is then the
    matrix ``(in_channels * window, out_channels)``; grouped convolutions are
    refused). Any other method (``jp.L1Unstructured(0.5)``: the magnitude
    baseline) prunes its parameter from its values alone, as :func:`prune_tree`
    does (the leaves of one ``jp.GlobalUnstructured`` rule ranked together); on
    a matmul weight it is still given a stage and a reconstruction error.

    Args:
      fn: the model ``fn(params, batch)``, or an ``nnx.Module``.
      *args: ``params, batches, rules`` (for a module: ``batches, rules``).
        ``batches`` is an iterable of calibration batches (read once and kept);
        each is passed whole as ``batch``. ``rules`` maps path patterns (as
        :func:`prune_tree`) to methods, or is a callable ``(path, leaf) -> method | None``.
      sequential: prune stage by stage, each from the already-pruned model's
        inputs (see the module docstring); False: every input from the dense model.
      progress: True logs one line per kernel (logger ``"jaxprune"``, INFO); a
        callable receives each :class:`LayerReport` as it is made.
      key: a PRNG key for random methods (each leaf draws from ``leaf_key(key, path)``).

    Returns:
      ``(new_params, masks)``: the pruned parameters (pruned entries exactly 0,
      SparseGPT's kernels updated) and a tree of keep-masks (None where no rule
      applies); ``.layers`` holds a :class:`LayerReport` per pruned parameter.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> def mlp(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> params = {"w1": jax.random.normal(k1, (8, 16)), "w2": jax.random.normal(k2, (16, 4))}
    >>> batches = [jax.random.normal(k, (32, 8)) for k in jax.random.split(k3, 4)]
    >>> new, masks = jp.one_shot(mlp, params, batches, {"w1": jp.SparseGPT(0.5), "w2": jp.Wanda(0.5)})
    >>> int(masks["w1"].sum()), int(masks["w2"].sum()), bool(jnp.all(new["w2"][~masks["w2"]] == 0))
    (64, 32, True)
    >>> [(r.path, r.stage) for r in jp.one_shot(mlp, params, batches, {"w*": jp.Wanda(0.5)}).layers]
    [('w1', 0), ('w2', 1)]
    """
    call, params, batches, rules, module = _split_call(fn, args)
    report_to = reporter(progress)
    named, treedef = tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in named]
    leaves = [x for _, x in named]
    specs = _resolve(rules, paths, leaves)
    for i, spec in specs.items():
        if not jnp.issubdtype(_dtype(leaves[i]), jnp.floating):
            raise TypeError(f"one_shot: {paths[i]!r} has dtype {_dtype(leaves[i])}; {spec!r} prunes "
                            "floating-point parameters")
    if key is not None:
        from ._methods import check_key

        key = check_key(key)
    for i, spec in specs.items():
        if isinstance(spec, PruningMethod) and spec.is_random and key is None:
            raise ValueError(f"one_shot: {spec!r} (rule for {paths[i]!r}) draws random numbers: pass key=")
    if isinstance(batches, (jax.Array, np.ndarray)):
        raise TypeError("one_shot: batches must be an iterable of batches (a list of arrays), not one array; "
                        "wrap a single batch as [batch]")
    batches = list(batches)
    if not batches:
        raise ValueError("one_shot: the calibration batches are empty (expected at least one batch)")

    traced: dict[Any, _Traced] = {}
    first: _Traced | None = None
    for batch in batches:
        sig = _signature(batch)
        if sig in traced:
            continue
        t, reader = _trace(call, treedef, leaves, batch, set(specs))
        if first is None:
            first = t
            sites = _check_uses(reader, specs, paths)
        elif [(s.leaf, s.in_axes) for s in t.sites] != [(s.leaf, s.in_axes) for s in first.sites]:
            raise ValueError("one_shot: batches of different shapes trace to different matmuls; give batches "
                             "of one shape (or shapes that run the same code)")
        traced[sig] = t
    assert first is not None
    site_of = {s.leaf: n for n, s in enumerate(sites)}  # kernel leaf -> its site's index in first.sites
    stages = sorted({s.stage for s in sites}) if sequential else [0]

    current = list(leaves)
    new_masks: dict[int, Array] = {}
    reports: list[tuple[int, int, LayerReport]] = []  # (stage, leaf index, report): sorted by the first two

    def report(i: int, stage: int, mask: Array, error: float) -> None:
        r = LayerReport(paths[i], specs[i], stage, pruned_fraction(mask), error)
        reports.append((stage, i, r))
        report_to(r)

    magnitude = _magnitude_masks(key, params, rules, specs, paths)
    # Parameters that are no matmul's weight need no inputs: pruned first, so
    # that (sequentially) every stage sees them pruned.
    for i in specs:
        if i not in site_of:
            mask = magnitude[i]
            new_masks[i] = mask
            if sequential:
                current[i] = jnp.where(mask, current[i], jnp.zeros((), _dtype(current[i])))
            report(i, -1, mask, float("nan"))

    for stage in stages:
        members = [n for n, s in enumerate(sites) if not sequential or s.stage == stage]
        stats = _collect(traced, batches, current if sequential else leaves, members, paths, sites)
        for n, st in zip(members, stats):
            site = sites[n]
            i = site.leaf
            kernel = _as_matrix(leaves[i], site)
            spec = specs[i]
            if isinstance(spec, _CALIBRATED):
                try:
                    new_matrix, mask_matrix = spec.prune(kernel, st, in_axis=0)
                except ValueError as err:
                    raise ValueError(f"one_shot: {paths[i]!r}: {err}") from err
                mask = _from_matrix(mask_matrix, leaves[i], site)
                new_leaf = _from_matrix(new_matrix, leaves[i], site)
            else:
                mask = magnitude[i]
                new_leaf = jnp.where(mask, leaves[i], jnp.zeros((), _dtype(leaves[i])))
                new_matrix = _as_matrix(new_leaf, site)
            new_masks[i] = mask
            current[i] = new_leaf
            report(i, site.stage if sequential else 0, mask, float(relative_error(kernel, new_matrix, st, in_axis=0)))
    if not sequential:
        for i in specs:
            if i not in site_of:
                current[i] = jnp.where(new_masks[i], current[i], jnp.zeros((), _dtype(current[i])))

    new_params = tree_util.tree_unflatten(treedef, current)
    masks = tree_util.tree_unflatten(treedef, [new_masks.get(i) for i in range(len(leaves))])
    if module is not None:
        from flax import nnx

        nnx.update(module, new_params)
    return OneShotResult(new_params, masks, [r for _, _, r in sorted(reports, key=lambda e: e[:2])])


def _dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)


def _magnitude_masks(key: PRNGKey | None, params: Any, rules: Any, specs: Mapping[int, Any], paths: list[str]
                     ) -> dict[int, Array]:
    """Every magnitude rule's mask, from the weights alone, as :func:`prune_tree` computes it (the same
    keys; leaves of one ``GlobalUnstructured`` rule ranked together), as ``interop.one_shot`` does."""
    wanted = {i for i, spec in specs.items() if not isinstance(spec, _CALIBRATED)}
    if not wanted:
        return {}
    if isinstance(rules, Mapping):  # the calibrated rules stay, as None: each leaf keeps the pattern that won it
        only: Any = {p: None if isinstance(v, _CALIBRATED) else v for p, v in rules.items()}
    else:
        index = {p: i for i, p in enumerate(paths)}
        only = lambda path, _: specs[index[path]] if index.get(path) in wanted else None  # noqa: E731
    masks = tree_util.tree_leaves(prune_tree(key, params, only), is_leaf=lambda x: x is None)
    return {i: masks[i] for i in wanted}


def _check_uses(reader: _Reader, specs: Mapping[int, Any], paths: list[str]) -> list[_Site]:
    """The sites to calibrate; raises for a Wanda/SparseGPT kernel that is not one matmul's weight."""
    sites = []
    for i, spec in specs.items():
        uses = reader.uses[i]
        if len(uses) == 1 and isinstance(uses[0], _Site):
            sites.append(uses[0])
            continue
        if not isinstance(spec, _CALIBRATED):
            continue
        if not uses:
            raise ValueError(f"one_shot: {paths[i]!r} (rule {spec!r}) is not used by the model")
        if len(uses) > 1:
            listed = "; ".join(_describe(u) for u in uses)
            raise ValueError(f"one_shot: {paths[i]!r} (rule {spec!r}) is used {len(uses)} times ({listed}); "
                             f"{type(spec).__name__} needs a kernel used by one matmul (a tied weight is not "
                             "supported: prune it with a magnitude rule, or untie it)")
        raise ValueError(f"one_shot: {paths[i]!r} (rule {spec!r}) is not a matmul weight: it is {uses[0]}")
    return sorted(sites, key=lambda s: (s.stage, s.where))


def _collect(traced: Mapping[Any, _Traced], batches: list[Any], leaves: list[Any], members: list[int],
             paths: list[str], sites: list[_Site]) -> list[InputStats]:
    """The input statistics of ``members`` (indices into ``sites``) over every batch."""
    result = [_zero_stats(math.prod(np.shape(leaves[sites[n].leaf])[a] for a in sites[n].in_axes))
              for n in members]
    for batch in batches:
        t = traced[_signature(batch)]
        # The same kernels' sites in this batch shape's trace (each is its kernel's only matmul).
        order = [next(j for j, s in enumerate(t.sites) if s.leaf == sites[n].leaf) for n in members]
        result = t.capture(order)(leaves, tree_util.tree_leaves(batch), result)
    for n, st in zip(members, result):
        if not bool(jnp.all(jnp.isfinite(st.sum_sq))):
            raise ValueError(f"one_shot: the calibration inputs of {paths[sites[n].leaf]!r} are not finite "
                             "(NaN or inf): check the batches (or the model's earlier layers)")
    return result


def _zero_stats(n_in: int) -> InputStats:
    shapes = jax.eval_shape(lambda: input_stats(jnp.zeros((1, n_in), jnp.float32)))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)



# --------------------------------------------------------------------------
# Matmul weights and their contracted axes (shared with the N:M helpers)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MatmulUse:
    """One use of a parameter as the weight of a matmul or a convolution.

    Attributes:
      in_axes: the parameter's contracted axes (for a convolution: its input
        channel axis, then its spatial axes).
      k_axis: the axis N:M groups run along: for a matmul, the contracted axis
        paired with the input's innermost contracted axis (a ``Dense``
        kernel's input axis; for ``LinearGeneral`` over ``(heads, head_dim)``,
        ``head_dim``); for a convolution, the input channel axis.
      conv: whether the use is a convolution.
    """

    in_axes: tuple[int, ...]
    k_axis: int
    conv: bool


def matmul_uses(call: Callable[[Any, Any], Any], params: Any, batch: Any
                ) -> dict[str, tuple[list[MatmulUse], list[str]]]:
    """For every parameter used as a matmul or convolution weight by ``call(params, batch)``:
    its uses as a weight, in the order of the jaxpr, and its other uses (described: an
    embedding lookup of a tied weight, ...). Traced with shapes only: nothing runs.

    >>> import jax, jax.numpy as jnp
    >>> uses, other = matmul_uses(lambda p, x: x @ p["w"].T, {"w": jnp.ones((3, 5))}, jnp.ones((2, 5)))["w"]
    >>> uses[0].k_axis, other
    (1, [])
    """
    named, treedef = tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in named]
    leaves = [x for _, x in named]
    tracked = {i for i, x in enumerate(leaves) if np.ndim(x) >= 1}
    _, reader = _trace(call, treedef, leaves, batch, tracked)
    out: dict[str, tuple[list[MatmulUse], list[str]]] = {}
    for site in reader.sites:
        if site.conv is not None:
            k_axis = site.in_axes[0]
        else:
            k_axis = site.in_axes[int(np.argmax(site.act_axes))]
        out.setdefault(paths[site.leaf], ([], []))[0].append(MatmulUse(site.in_axes, k_axis, site.conv is not None))
    for i, uses in reader.uses.items():
        if paths[i] in out:
            out[paths[i]][1].extend(u for u in uses if isinstance(u, str))
    return out
