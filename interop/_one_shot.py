"""One-shot pruning of torch modules from calibration batches (Wanda, SparseGPT, magnitude).

``one_shot(module, batches, rules)`` runs the module on the batches in torch,
captures the inputs of every ``nn.Linear`` (and transformers' ``Conv1D``) that
a rule prunes with forward pre-hooks, accumulates their statistics and prunes
in JAX (``jp.input_stats`` and the spec's ``prune``), then installs the masks
with torch's own reparametrization (as :func:`prune_module` does), or writes
the pruned values into the weights.

Stages. With ``sequential=True`` the layers are pruned in the order torch
calls them: a layer starts a new stage unless its input is the very tensor an
earlier layer read (the q/k/v projections of one attention), whose stage it
joins; each stage's inputs come from the model whose earlier stages are
already pruned (so later layers calibrate on what the pruned model really
feeds them). :func:`jaxprune.one_shot` numbers stages by data flow instead
(the pruned kernels on the longest path into a kernel's input): the two agree
on chains of blocks (MLPs, transformer layers); a branch that reads no pruned
layer's output gets a later stage here, with the same inputs and so the same
result, at the cost of one more pass. Stage 0 reads the first batch during
the pass that finds the order; every later stage takes one pass over the
batches, each stopped right after the stage's last layer has read its input.
Cost: at most ``stages x batches`` forward passes (about half of that in
full layer computations). ``sequential=False`` takes one pass over the dense
model. Parameters that are no captured layer's weight (a magnitude rule on a
bias) are pruned before any pass and reported as stage -1.

State. During the passes a pruned layer's ``param.data`` points at its pruned
values; the dense tensor is kept aside and nothing is written in place, so an
error anywhere (a bad batch, a Hessian that is not positive definite, Ctrl-C)
puts every parameter, buffer and hook back as it was. The passes run in eval
mode under ``torch.no_grad()``; the modules' training flags are put back after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

import jaxprune as jp
from jaxprune._one_shot_types import LayerReport, OneShotResult, pruned_fraction, reporter
from jaxprune._plan import match_patterns
from jaxprune._specs import PruningMethod

from ._modules import (
    Rules,
    install_mask,
    module_masks,
    prunable_parameters,
    pruned_names,
    restore_state,
    save_state,
)
from ._tensors import check_module, import_torch, to_jax, to_torch

if TYPE_CHECKING:
    import torch

SUPPORTED_LAYERS = "torch.nn.Linear and transformers' Conv1D"
WRITES = ("reparametrize", "weights")



@dataclasses.dataclass(eq=False)
class _Target:
    """One parameter a rule prunes, and what one_shot learns about it."""

    name: str
    sub: Any                    # the owning torch submodule
    attr: str                   # the parameter's attribute on it
    param: Any                  # its nn.Parameter (the object stays; only .data changes)
    dense: Any                  # the dense tensor (param.data before one_shot)
    spec: Any
    in_axis: int | None         # the weight's input-features axis; None: not a matmul weight
    mask: Any = None            # the keep-mask (a magnitude rule's is computed up front)
    new: Any = None             # the pruned values (a JAX array)
    stats: Any = None           # jp.InputStats of its captured inputs
    stage: int = 0
    called: bool = False        # read an input in the current forward pass

    @property
    def calibrated(self) -> bool:
        return _is_calibrated(self.spec)


class _Stop(BaseException):
    """Raised by a hook to end a forward pass once its stage has read every input
    (a BaseException so that a module's own ``except Exception`` cannot swallow it)."""


class _HookFailure(BaseException):
    """Carries an error raised inside a hook through the module's forward, so it is
    reported as it was raised, not as the module rejecting the batch."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def one_shot(
    module: torch.nn.Module,
    batches: Iterable[Any],
    rules: Rules,
    *,
    sequential: bool = True,
    write: str = "reparametrize",
    progress: bool | Callable[[LayerReport], None] | None = None,
    key: jax.Array | None = None,
) -> OneShotResult:
    """Prune a torch module one-shot from calibration batches (see the module doc).

    Args:
      module: the torch module; changed in place, all or nothing.
      batches: an iterable of calibration batches (read into a list: the
        sequential passes read it several times). A batch is a tensor
        (``module(b)``), a tuple or list (``module(*b)``) or a dict
        (``module(**b)``).
      rules: ``{glob pattern over dotted parameter names: spec}`` (first match
        wins; a pattern matching nothing raises), or ``(name, tensor) -> spec |
        None``. ``jp.Wanda(...)`` and ``jp.SparseGPT(...)`` prune the weight of
        an ``nn.Linear`` or transformers' ``Conv1D``; any pruning method
        (``jp.L1Unstructured(0.5)``, the magnitude baseline) prunes any
        floating parameter.
      sequential: calibrate each stage on the model whose earlier stages are
        already pruned (True) or every layer on the dense model (False).
      write: ``"reparametrize"``: torch's reparametrization (``weight_orig``,
        ``weight_mask``, the forward pre-hook; ``prune.is_pruned`` is true and
        ``prune.remove`` works); ``weight_orig`` keeps the dense values, with
        SparseGPT's updates of the kept entries written in. ``"weights"``: the
        pruned values written into the weights (pruned entries 0), no
        reparametrization.
      progress: True logs one line per layer (logger ``"jaxprune"``, INFO); a
        callable receives each layer's :class:`LayerReport` when it is pruned.
      key: PRNG key for random magnitude rules (``jp.RandomUnstructured``).

    Returns:
      ``OneShotResult(module, {name: bool keep-mask tensor}, layers)``; ``.layers``
      holds a report per pruned parameter in the order they were pruned.

    >>> import torch, jaxprune as jp
    >>> from jaxprune import interop
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> batches = [torch.randn(32, 8) for _ in range(2)]
    >>> net, masks = interop.one_shot(net, batches, {"0.weight": jp.Wanda(0.5), "2.weight": jp.SparseGPT(0.5)})
    >>> torch.nn.utils.prune.is_pruned(net), int(masks["0.weight"].sum()), int((net[2].weight == 0).sum())
    (True, 64, 32)
    """
    check_module(module, "one_shot")
    if write not in WRITES:
        raise ValueError(f"one_shot: write must be one of {WRITES}, got {write!r}")
    if not isinstance(sequential, bool):
        raise TypeError(f"one_shot: sequential must be True or False, got {sequential!r}")
    report = reporter(progress)
    targets = _targets(module, rules, key)
    batch_list = _batch_list(batches)
    undo = _Undo()
    try:
        with _calibration_mode(module):
            layers = _calibrate(module, batch_list, targets, sequential, report, undo)
        masks = _finish(targets, write, undo)
    except BaseException:
        undo.run()
        raise
    return OneShotResult(module, masks, layers)


# --------------------------------------------------------------------------
# Rules -> targets
# --------------------------------------------------------------------------


def _is_calibrated(spec: Any) -> bool:
    """A spec that prunes from calibration inputs (``jp.Wanda``, ``jp.SparseGPT``):
    one with ``prune(kernel, stats, in_axis=)`` and a ``needs_hessian`` flag."""
    return not isinstance(spec, PruningMethod) and callable(getattr(spec, "prune", None)) \
        and hasattr(spec, "needs_hessian")


def _in_axis(sub: Any, attr: str) -> int | None:
    """The input-features axis of ``sub.<attr>`` when it is a matmul weight one_shot
    can capture the inputs of, else None."""
    if attr != "weight":
        return None
    if isinstance(sub, import_torch().nn.Linear):
        return 1  # (out, in)
    # transformers' Conv1D (GPT-2), looked up only once transformers is loaded
    # (a model that uses it imported it): its weight is (in, out).
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    if conv1d is not None and isinstance(sub, conv1d):
        return 0
    return None


def _targets(module: torch.nn.Module, rules: Rules, key: jax.Array | None) -> list[_Target]:
    """The parameters ``rules`` prune, validated, with the magnitude rules' masks."""
    params = prunable_parameters(module)
    chosen = _chosen(params, rules)
    owners: dict[int, list[str]] = {}
    for name, (sub, attr) in params.items():
        tensor = sub._parameters.get(attr + "_orig") if attr in pruned_names(sub) else sub._parameters[attr]
        owners.setdefault(id(tensor), []).append(name)
    targets = []
    for name, (where, spec) in chosen.items():
        sub, attr = params[name]
        if attr in pruned_names(sub):
            raise ValueError(f"one_shot: {where}: {name!r} is already pruned (torch's reparametrization); one_shot "
                             f"prunes dense parameters: call torch.nn.utils.prune.remove on it first")
        param = sub._parameters[attr]
        assert param is not None  # prunable_parameters lists only set parameters
        tied = [other for other in owners[id(param)] if other != name]
        if tied:
            raise ValueError(f"one_shot: {where}: {name!r} is the same tensor as {tied[0]!r} (tied weights); untie "
                             "them or leave this parameter without a rule")
        in_axis = _in_axis(sub, attr)
        if _is_calibrated(spec):
            if in_axis is None:
                raise ValueError(f"one_shot: {where}: {spec!r} needs the inputs of a matmul weight, but {name!r} is "
                                 f"the {attr!r} of a {type(sub).__name__}; supported layers: {SUPPORTED_LAYERS} "
                                 "(their 'weight'). Magnitude specs (e.g. jp.L1Unstructured(0.5)) prune any parameter")
            if not param.is_floating_point():
                raise TypeError(f"one_shot: {where}: only floating parameters can be pruned, {name!r} is {param.dtype}")
        elif not isinstance(spec, PruningMethod):
            raise TypeError(f"one_shot: {where}: expected jp.Wanda(...), jp.SparseGPT(...) or a pruning method "
                            f"(e.g. jp.L1Unstructured(0.5)), got {spec!r}")
        targets.append(_Target(name, sub, attr, param, param.data, spec, in_axis))
    if not targets:
        raise ValueError("one_shot: the rules prune no parameter (every rule value is None)")
    _magnitude_masks(module, params, rules, targets, key)
    return targets


def _chosen(params: Mapping[str, Any], rules: Rules) -> dict[str, tuple[str, Any]]:
    """``{name: (where, spec)}`` for the parameters a rule names, in parameter order."""
    names = list(params)
    if isinstance(rules, Mapping):
        return {names[i]: (f"rule {pattern!r} for {names[i]!r}", value)
                for i, pattern, value in match_patterns(names, rules) if value is not None}
    if callable(rules):
        found = {}
        for name, (sub, attr) in params.items():
            value = rules(name, getattr(sub, attr))
            if value is not None:
                found[name] = (f"rule for {name!r}", value)
        return found
    raise TypeError(f"one_shot: rules must be a dict of pattern -> spec or a callable (name, tensor) -> spec, "
                    f"got {rules!r}")


def _magnitude_masks(module: torch.nn.Module, params: Mapping[str, Any], rules: Rules, targets: Sequence[_Target],
                     key: jax.Array | None) -> None:
    """Each magnitude rule's mask, computed up front by the planner as
    :func:`prune_module` computes it (groups, keys and checks alike): these
    masks do not depend on the calibration inputs."""
    magnitude = {t.name: t for t in targets if not t.calibrated}
    if not magnitude:
        return
    if isinstance(rules, Mapping):
        # The calibrated rules stay, as None, so that every parameter keeps the
        # pattern that won it (a pattern is a GlobalUnstructured group).
        only: Rules = {p: None if _is_calibrated(v) else v for p, v in rules.items()}
    else:
        only = lambda name, _: magnitude[name].spec if name in magnitude else None  # noqa: E731
    masks = module_masks(key, module, only, None, dict(params))
    for name, mask in masks.items():
        magnitude[name].mask = mask


# --------------------------------------------------------------------------
# Batches and forward passes
# --------------------------------------------------------------------------


def _batch_list(batches: Iterable[Any]) -> list[Any]:
    torch = import_torch()
    if isinstance(batches, (torch.Tensor, Mapping, str, bytes)):
        shape = getattr(batches, "shape", None)
        what = f"a {type(batches).__name__}" if shape is None else f"a tensor of shape {tuple(shape)}"
        raise TypeError(f"one_shot: batches must be an iterable of batches (a list of tensors, a DataLoader...), "
                        f"got {what}; for one batch pass [batch]")
    try:
        found = list(batches)
    except TypeError as err:
        raise TypeError(f"one_shot: batches must be an iterable of batches, got {type(batches).__name__}") from err
    if not found:
        raise ValueError("one_shot: batches is empty; the calibration needs at least one batch")
    return found


def _forward(module: torch.nn.Module, batch: Any, index: int) -> None:
    """``module`` on one batch; a hook's error is raised as it was, the module's
    own as a ValueError naming the batch."""
    try:
        if isinstance(batch, Mapping):
            module(**batch)
        elif isinstance(batch, (tuple, list)):
            module(*batch)
        else:
            module(batch)
    except _Stop:
        pass
    except _HookFailure as failure:
        raise failure.error from None
    except Exception as err:
        raise ValueError(f"one_shot: the module rejected batch {index} ({_describe(batch)}): "
                         f"{type(err).__name__}: {err}") from err


def _describe(batch: Any) -> str:
    torch = import_torch()
    if isinstance(batch, torch.Tensor):
        return f"a {str(batch.dtype).removeprefix('torch.')} tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return f"a dict with keys {sorted(map(str, batch))}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}"
    return f"a {type(batch).__name__}"


@contextlib.contextmanager
def _calibration_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: the same batches give the same statistics) under
    ``torch.no_grad()``; every submodule's training flag is put back after."""
    flags = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        with import_torch().no_grad():
            yield
    finally:
        for sub, training in flags:
            sub.training = training


def _input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    return next(iter(kwargs.values()), None)


@contextlib.contextmanager
def _hooks(targets: Sequence[_Target], on_input: Callable[[_Target, Any], None]) -> Iterator[None]:
    """Forward pre-hooks on the targets' layers (one per layer: only a layer's
    ``weight`` is captured), each calling ``on_input(target, x)``; removed on exit."""
    handles = []

    def hook(target: _Target) -> Callable[..., None]:
        def read(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            try:
                on_input(target, _input_of(args, kwargs))
            except (_Stop, _HookFailure):
                raise
            except BaseException as error:  # noqa: BLE001 - carried out of the forward, raised as it was
                raise _HookFailure(error) from None
        return read

    try:
        for t in targets:
            handles.append(t.sub.register_forward_pre_hook(hook(t), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _reads(t: _Target, x: Any) -> bool:
    """Whether ``x`` is an input of ``t``'s layer to capture (anything else is
    left to the layer's own forward, which refuses it: the module rejects the
    batch). A second input in one forward pass is an error."""
    if not isinstance(x, import_torch().Tensor) or x.ndim == 0 or x.shape[-1] != t.dense.shape[t.in_axis]:
        return False
    if t.called:
        raise ValueError(f"one_shot: {t.name!r}: its layer ({type(t.sub).__name__}) is called more than once in one "
                         "forward pass; its inputs would mix calibration stages (shared layers are not supported)")
    t.called = True
    return True


def _accumulate(t: _Target, x: Any, index: int) -> None:
    """Add one input of ``t``'s layer, from batch ``index``, to its statistics."""
    # A zero-copy view of the activation, finished before the hook returns:
    # torch may free or change the tensor afterwards.
    try:
        t.stats = jax.block_until_ready(jp.input_stats(to_jax(x), t.stats, hessian=True))
    except ValueError as err:  # NaN in the inputs
        raise ValueError(f"one_shot: the inputs of {t.name!r} on batch {index}: {err}") from err
    if not bool(jnp.all(jnp.isfinite(t.stats.sum_sq))):
        raise ValueError(f"one_shot: the inputs of {t.name!r} on batch {index} are not finite (inf): check the "
                         "batches (or the module's earlier layers)")


def _run(module: torch.nn.Module, batches: Sequence[Any], start: int, targets: Sequence[_Target]) -> None:
    """Pass ``batches[start:]`` through the module, accumulating the targets' inputs;
    each forward stops once every target has read its input."""
    waiting: set[int] = set()
    index = start

    def on_input(t: _Target, x: Any) -> None:
        if not _reads(t, x):
            return
        _accumulate(t, x, index)
        waiting.discard(id(t))
        if not waiting:
            raise _Stop

    with _hooks(targets, on_input):
        for index in range(start, len(batches)):
            for t in targets:
                t.called = False
            waiting.update(id(t) for t in targets)
            _forward(module, batches[index], index)


def _discover(module: torch.nn.Module, batch: Any, targets: Sequence[_Target], sequential: bool) -> None:
    """The pass over the first batch that finds each layer's stage (a new stage for
    each input not read by an earlier layer) and reads the inputs of the layers
    whose statistics that pass already gives (stage 0; every layer when not
    ``sequential``). A layer it does not see keeps ``called`` False."""
    seen: list[tuple[weakref.ref, tuple[Any, ...] | None]] = []

    def stage_of(x: Any) -> int:
        # The same tensor: a live one with the same memory, layout and version (the
        # same object, or a view made twice). Only live tensors are compared (weak
        # references): a freed one's memory may hold a new tensor at its address.
        signature = _signature(x)
        for stage, (ref, sig) in enumerate(seen):
            if ref() is not None and signature is not None and sig == signature:
                return stage
        seen.append((weakref.ref(x), signature))
        return len(seen) - 1

    def on_input(t: _Target, x: Any) -> None:
        if not _reads(t, x):
            return
        t.stage = stage_of(x) if sequential else 0
        if t.stage == 0:
            _accumulate(t, x, 0)

    for t in targets:
        t.called = False
    with _hooks(targets, on_input):
        _forward(module, batch, 0)


def _signature(x: Any) -> tuple[Any, ...] | None:
    """Memory, layout and version of a tensor (the version counter changes with
    every in-place change: a tensor changed between two layers is not their
    common input)."""
    if x.numel() == 0:
        return None
    return (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version)


# --------------------------------------------------------------------------
# Calibration, pruning, and writing the results
# --------------------------------------------------------------------------


def _calibrate(module: torch.nn.Module, batches: Sequence[Any], targets: Sequence[_Target], sequential: bool,
               report: Callable[[LayerReport], None], undo: _Undo) -> list[LayerReport]:
    """Capture, prune stage by stage (each stage's pruned values in ``param.data``
    for the next stage's passes), and report. Returns the reports."""
    layers: list[LayerReport] = []
    others = [t for t in targets if t.in_axis is None]
    matmuls = [t for t in targets if t.in_axis is not None]
    for t in others:
        t.stage = -1  # no inputs, no pass (as jp.one_shot reports them)
    if sequential:
        # Parameters whose place in the data flow is unknown are pruned before
        # any pass: every layer calibrates on them pruned.
        for t in others:
            layers.append(_prune(t, report, undo))
    if matmuls:
        _discover(module, batches[0], matmuls, sequential)
    for t in matmuls:
        if t.calibrated and not t.called:
            raise ValueError(f"one_shot: {t.name!r}: its layer ({type(t.sub).__name__}) was not called during the "
                             f"forward pass on batch 0, so its inputs cannot be captured for {t.spec!r} (a weight "
                             "used directly, as nn.MultiheadAttention's out_proj, is not seen by forward hooks)")
    called = [t for t in matmuls if t.called]
    for t in matmuls:
        if not t.called:  # magnitude rules only: no inputs, no error figure, and no pass reads it
            t.stage = -1
            layers.append(_prune(t, report, undo))
    for stage in sorted({t.stage for t in called}):
        members = [t for t in called if t.stage == stage]
        _run(module, batches, 1 if stage == 0 else 0, members)
        for t in members:
            layers.append(_prune(t, report, undo))
    if not sequential:
        for t in others:
            layers.append(_prune(t, report, undo))
    order = {t.name: i for i, t in enumerate(targets)}
    return sorted(layers, key=lambda layer: (layer.stage, order[layer.path]))


def _prune(t: _Target, report: Callable[[LayerReport], None], undo: _Undo) -> LayerReport:
    """Prune ``t``, point its ``param.data`` at the pruned values (the passes
    that follow read them), and report."""
    kernel = to_jax(t.dense)  # a view: the dense tensor is never written
    if t.calibrated:
        if t.stats is None:
            raise ValueError(f"one_shot: {t.name!r}: its layer read no input in the passes of stage {t.stage} (the "
                             "module's control flow changed after the first batch?)")
        try:
            new, mask = t.spec.prune(kernel, t.stats, in_axis=t.in_axis)
        except (ValueError, TypeError) as err:
            raise type(err)(f"one_shot: {t.name!r} ({t.spec!r}): {err}") from err
    else:
        mask = jnp.asarray(t.mask)
        new = jnp.where(mask, kernel, jnp.zeros((), kernel.dtype))
    t.mask, t.new = mask, new
    error = math.nan
    if t.stats is not None and t.in_axis is not None:
        error = float(jp.relative_error(kernel, new, t.stats, in_axis=t.in_axis))
    t.stats = None  # an (in, in) Hessian per layer adds up: kept no longer than needed
    undo.set_data(t.param, _view_like(t.dense, new))
    layer = LayerReport(t.name, t.spec, t.stage, pruned_fraction(mask), error)
    report(layer)
    return layer


def _finish(targets: Sequence[_Target], write: str, undo: _Undo) -> dict[str, torch.Tensor]:
    """Write the results: the pruned values (``"weights"``), or the dense values
    with the kept entries' updates and torch's reparametrization."""
    masks = {}
    for t in targets:
        masks[t.name] = _like(t.dense, t.mask, dtype=import_torch().bool)
        if write == "weights":
            undo.set_data(t.param, _like(t.dense, t.new))  # a copy: the result shares no memory with JAX
        elif _updates_kept(t.spec):
            undo.set_data(t.param, _like(t.dense, jnp.where(t.mask, t.new, to_jax(t.dense))))
        else:
            undo.set_data(t.param, t.dense)
    if write == "reparametrize":
        for t in targets:
            undo.install(t.sub, t.attr, _like(t.dense, t.mask))
    return masks


def _updates_kept(spec: Any) -> bool:
    """Whether the spec changes the entries it keeps (SparseGPT's update); a
    mask-only spec leaves ``weight_orig`` the dense tensor itself."""
    return _is_calibrated(spec) and spec.needs_hessian


def _view_like(dense: torch.Tensor, values: jax.Array) -> torch.Tensor:
    """``values`` as torch data for ``dense``'s parameter during the passes: a
    zero-copy view (only the forward passes read it) where dtype, device and
    layout allow, else a copy."""
    view = to_torch(values)
    if (view.dtype, view.device, view.shape) == (dense.dtype, dense.device, dense.shape) and dense.is_contiguous():
        return view
    return _like(dense, values)


def _like(dense: torch.Tensor, values: Any, dtype: Any = None) -> torch.Tensor:
    """``values`` (a JAX or NumPy array) as a new tensor like ``dense``: its
    device, memory format and dtype (or ``dtype``)."""
    out = import_torch().empty_like(dense, dtype=dtype, requires_grad=False)
    return out.copy_(to_torch(values))


class _Undo:
    """What one_shot changed, to put back on failure (in reverse order)."""

    def __init__(self) -> None:
        self._data: dict[int, tuple[Any, Any]] = {}
        self._installed: list[tuple[Any, str, dict[str, Any]]] = []

    def set_data(self, param: Any, data: Any) -> None:
        self._data.setdefault(id(param), (param, param.data))
        param.data = data

    def install(self, sub: Any, attr: str, mask: Any) -> None:
        self._installed.append((sub, attr, save_state(sub, attr)))
        install_mask(sub, attr, mask)

    def run(self) -> None:
        for sub, attr, state in reversed(self._installed):
            restore_state(sub, attr, state)
        for param, data in self._data.values():
            param.data = data


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


