"""Pruning torch modules with jaxprune masks and torch's own reparametrization.

``prune_module(key, module, rules)`` computes every mask first (from snapshots
of the parameters, in JAX), and only then installs them with torch's own
``torch.nn.utils.prune.custom_from_mask``: the module gets ``<name>_orig``, the
``<name>_mask`` buffer and the forward pre-hook, so ``prune.is_pruned``,
``prune.remove``, ``state_dict()``, ``deepcopy`` and training behave exactly as
after torch's own ``prune.*`` calls; a second call builds torch's
``PruningContainer``. All or nothing: if any rule fails, the module is left
exactly as it was.

The scores are those torch would use: the current (pruned) tensor
``module.<name>`` (= ``orig * mask``), or ``importance_scores``. Deterministic
methods therefore give torch's masks (L1, Ln; up to ties, which jaxprune
defines). Random methods draw from ``leaf_key(key, name)`` with the dotted
parameter name, so the same key and rules give the same masks, and adding or
removing a rule never changes another parameter's mask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp
from jaxprune._methods import numpy_results
from jaxprune._plan import Plan, check_key, check_key_for, compute_masks, plan
from jaxprune._state_dicts import join_pairs, kept, split_pairs

from ._tensors import check_module, import_torch, to_jax, to_torch

if TYPE_CHECKING:
    import torch

Rules = Mapping[str, Any] | Callable[[str, "torch.Tensor"], Any]


def pruned_names(sub: torch.nn.Module) -> set[str]:
    if not sub._forward_pre_hooks:  # (most submodules: no hook at all)
        return set()
    prune = import_torch().nn.utils.prune
    names = set()
    for hook in sub._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            names.add(hook._tensor_name)
    return names


def prunable_parameters(module: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """Dotted parameter names (as before any pruning: ``"fc.weight"``, never
    ``"fc.weight_orig"``) -> (owning submodule, attribute name)."""
    check_module(module, "prunable_parameters")
    found: dict[str, tuple[Any, str]] = {}
    for prefix, sub in module.named_modules():
        pruned = pruned_names(sub)
        for pname in list(sub._parameters):
            if sub._parameters[pname] is None:
                continue
            name = pname[: -len("_orig")] if pname.endswith("_orig") and pname[: -len("_orig")] in pruned else pname
            found[f"{prefix}.{name}" if prefix else name] = (sub, name)
    return found


def _current(sub: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the tensor torch would rank now, the current mask or None)."""
    if name in pruned_names(sub):
        return getattr(sub, name), getattr(sub, name + "_mask")
    param = sub._parameters[name]
    assert param is not None  # prunable_parameters lists only set parameters
    return param, None


def plan_module(module: torch.nn.Module, rules: Rules, *, factory_amount: Any = None,
                _params: dict[str, tuple[torch.nn.Module, str]] | None = None) -> Plan:
    """The planner's plan of ``rules`` over ``prunable_parameters(module)``
    (paths are the torch names; a callable rule gets ``(name, tensor)``)."""
    check_module(module, "plan_module")
    params = prunable_parameters(module) if _params is None else _params
    tensors = {name: _current(sub, attr)[0] for name, (sub, attr) in params.items()}
    named = [(name, _Leaf(tuple(t.shape), _jax_dtype(t.dtype))) for name, t in tensors.items()]
    if callable(rules) and not isinstance(rules, Mapping):
        torch_rules = rules
        return plan(named, lambda name, _: torch_rules(name, tensors[name]), factory_amount=factory_amount)
    return plan(named, rules, factory_amount=factory_amount)


class _Leaf(NamedTuple):
    """What the planner reads of a parameter: its shape and dtype (lighter
    than a ``jax.ShapeDtypeStruct``, made for every parameter of the module)."""

    shape: tuple[int, ...]
    dtype: np.dtype


@functools.cache
def _jax_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy/JAX dtype of a torch dtype (``object`` for one JAX lacks, which
    the planner then refuses as not floating)."""
    try:
        return jnp.dtype(str(dtype).removeprefix("torch."))
    except TypeError:
        return np.dtype(object)


def compute_module_masks(
    key: jax.Array | None,
    module: torch.nn.Module,
    rules: Rules,
    *,
    importance_scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, jax.Array]:
    """The masks ``prune_module`` would install, as ``{name: bool jax array}``; the module is not touched."""
    check_module(module, "compute_module_masks")
    masks = module_masks(key, module, rules, importance_scores)
    return {name: mask if isinstance(mask, jax.Array) else jax.device_put(mask) for name, mask in masks.items()}


def module_masks(
    key: jax.Array | None,
    module: torch.nn.Module,
    rules: Rules,
    importance_scores: Mapping[str, torch.Tensor] | None,
    params: dict[str, tuple[torch.nn.Module, str]] | None = None,
) -> dict[str, jax.Array | np.ndarray]:
    """:func:`compute_module_masks`, with masks from jaxprune's NumPy path left
    as NumPy arrays (the usual case for a module on the CPU)."""
    params = prunable_parameters(module) if params is None else params
    p = plan_module(module, rules, _params=params)
    if key is not None:
        key = check_key(key)
    check_key_for(p, key)
    importance_scores = dict(importance_scores or {})
    unknown = set(importance_scores) - {a.path for a in p.assignments}
    if unknown:
        raise ValueError(f"importance_scores for parameters no rule prunes: {sorted(unknown)}")
    names = list(params)
    leaves: list[jax.Array | np.ndarray | None] = [None] * len(names)
    scores: list[jax.Array | np.ndarray | None] = [None] * len(names)
    default_masks: list[jax.Array | np.ndarray | None] = [None] * len(names)
    for a in p.assignments:
        tensor, mask = _current(*params[a.path])
        given = importance_scores.get(a.path)
        if given is not None and tuple(given.shape) != tuple(tensor.shape):
            raise jp.PruningShapeError(f"importance_scores[{a.path!r}] has shape {tuple(given.shape)}, "
                                       f"expected {tuple(tensor.shape)}")
        # Views, not copies: every mask is finished (block_until_ready below) before
        # this function returns, so no later change to the module can reach them.
        leaves[a.index] = _view(tensor)
        scores[a.index] = None if given is None else _view(given)
        default_masks[a.index] = None if mask is None else _view(kept(mask))
    with numpy_results():
        masks = compute_masks(p, key, leaves, default_masks=default_masks, scores=scores)
    return jax.block_until_ready({names[a.index]: masks[a.index] for a in p.assignments})


_NUMPY_VIEWS = {"float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "bool"}


def _view(tensor: torch.Tensor) -> jax.Array | np.ndarray:
    """A CPU tensor as a NumPy view (jaxprune's NumPy path reads it as it is), any other as a jax array."""
    t = tensor.detach()
    if t.device.type == "cpu" and str(t.dtype).removeprefix("torch.") in _NUMPY_VIEWS and not t.is_conj():
        return t.numpy()
    return to_jax(t)


def prune_module(
    key: jax.Array | None,
    module: torch.nn.Module,
    rules: Rules,
    *,
    importance_scores: Mapping[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Prune a torch module's parameters with jaxprune specs, installing torch's
    reparametrization (see the module doc). Returns the module.

    All or nothing: when a rule is refused, or torch's own install step fails
    (any exception, a MemoryError, Ctrl-C), every submodule touched is put
    back as it was (parameters, buffers, hooks in their order, state_dict key
    order) and the failure is re-raised as it was raised.

    Args:
      key: PRNG key for random specs (None is fine when none is random).
      module: the torch module.
      rules: ``{glob pattern over dotted names: spec}`` (first match wins; a
        pattern matching nothing raises), or ``(name, tensor) -> spec | None``.
        ``jp.GlobalUnstructured(amount)`` ranks all its parameters together.
      importance_scores: ``{name: tensor}`` to rank instead of the parameter.

    >>> import jax, torch, jaxprune as jp
    >>> from jaxprune import interop
    >>> net = torch.nn.Linear(4, 2)
    >>> _ = interop.prune_module(jax.random.key(0), net, {"weight": jp.L1Unstructured(0.5)})
    >>> torch.nn.utils.prune.is_pruned(net), int((net.weight == 0).sum())
    (True, 4)
    """
    check_module(module, "prune_module")
    params = prunable_parameters(module)
    masks = module_masks(key, module, rules, importance_scores, params)
    touched: list[tuple[Any, str, dict[str, Any]]] = []
    torch = import_torch()
    prune = torch.nn.utils.prune
    try:
        for name, mask in masks.items():
            sub, attr = params[name]
            current = _current(sub, attr)[0]
            # The mask goes where the parameter is (jax may have computed it on
            # another device, e.g. its default GPU for a CPU module), in its
            # dtype and memory format, as torch's own masks.
            mask_tensor = _mask_tensor(mask, current)
            # Saved before torch starts: its own rollback covers only some of its
            # steps and no BaseException, so the failing submodule needs ours too.
            touched.append((sub, attr, save_state(sub, attr)))
            install_mask(sub, attr, mask_tensor)
    except BaseException as error:
        for sub, attr, before in reversed(touched):
            restore_state(sub, attr, before)
        failure = _first_failure(error, prune)
        if failure is error:
            raise
    else:
        return module
    raise failure  # outside the handler, so the original failure gets no torch error as its context


def _mask_tensor(mask: jax.Array | np.ndarray, current: torch.Tensor) -> torch.Tensor:
    """The mask as torch's: ``current``'s dtype, device and memory format.

    A NumPy mask for a contiguous CPU tensor of a NumPy dtype is converted in
    NumPy: torch's copy kernel wakes its thread pool for a tensor of some
    size, which on a busy machine can cost milliseconds per tensor.
    """
    torch = import_torch()
    dtype = str(current.dtype).removeprefix("torch.")
    if (isinstance(mask, np.ndarray) and current.device.type == "cpu" and dtype in _NUMPY_FLOATS
            and current.is_contiguous()):
        return torch.from_numpy(mask.astype(dtype))
    source = torch.from_numpy(mask) if isinstance(mask, np.ndarray) else to_torch(mask)
    return torch.empty_like(current, requires_grad=False).copy_(source)


_NUMPY_FLOATS = {"float32", "float64", "float16"}


def install_mask(sub: torch.nn.Module, name: str, mask: torch.Tensor) -> None:
    """Prune ``sub.<name>`` by ``mask`` as ``prune.custom_from_mask`` does.

    A tensor pruned before goes through torch's own call (it combines the
    masks in a ``PruningContainer``). A first pruning is done here, leaving
    torch's state in torch's order (``<name>_orig`` parameter, ``<name>_mask``
    buffer, the pruned tensor as a plain attribute, a ``CustomFromMask``
    forward pre-hook) without torch's ``ones_like`` default mask and the
    product with it (half its time on a small tensor). The hook's ``mask`` is
    the buffer (torch's holds a copy that nothing reads again).
    """
    torch = import_torch()
    prune = torch.nn.utils.prune
    if name in pruned_names(sub):
        prune.custom_from_mask(sub, name, mask=mask)
        return
    method = prune.CustomFromMask(mask)
    method._tensor_name = name
    if _plain_install(sub, name):
        # What the calls below leave, written directly: their checks (each a
        # failed attribute lookup, an exception) cost more than the rest of a
        # small tensor's pruning, and _plain_install has made them already.
        orig = sub._parameters.pop(name)
        assert orig is not None  # prunable_parameters lists only set parameters
        sub._parameters[name + "_orig"] = orig
        sub._buffers[name + "_mask"] = mask
        sub._non_persistent_buffers_set.discard(name + "_mask")
        object.__setattr__(sub, name, mask.to(dtype=orig.dtype) * orig)  # apply_mask's product, as torch's
        handle = torch.utils.hooks.RemovableHandle(sub._forward_pre_hooks,
                                                   extra_dict=sub._forward_pre_hooks_with_kwargs)
        sub._forward_pre_hooks[handle.id] = method
        return
    orig = sub._parameters[name]
    sub.register_parameter(name + "_orig", orig)
    del sub._parameters[name]
    sub.register_buffer(name + "_mask", mask)
    setattr(sub, name, method.apply_mask(sub))
    sub.register_forward_pre_hook(method)


def _plain_install(sub: torch.nn.Module, name: str) -> bool:
    """Whether the registrations of a first pruning of ``sub.<name>`` may be
    written straight into ``sub``'s dicts with torch's exact result: ``sub``'s
    class keeps ``torch.nn.Module``'s registration and attribute methods, no
    global registration hook is set, and none of the names is taken (where
    torch's checks would raise, or an attribute would go elsewhere, torch's
    own calls run)."""
    if not _plain_module_type(type(sub)):
        return False
    module_globals = import_torch().nn.modules.module
    for hooks in ("_global_parameter_registration_hooks", "_global_buffer_registration_hooks"):
        if getattr(module_globals, hooks, None) != {}:
            return False
    if name in sub._buffers or name in sub._modules or name in sub.__dict__ or _class_has(type(sub), name):
        return False
    for new in (name + "_orig", name + "_mask"):
        if (new in sub.__dict__ or new in sub._parameters or new in sub._buffers or new in sub._modules
                or _class_has(type(sub), new)):
            return False
    return True


@functools.cache
def _class_has(cls: type, name: str) -> bool:
    return hasattr(cls, name)


def _plain_module_type(cls: type) -> bool:
    """``cls`` uses torch's own registration and attribute methods (not
    overridden, nor patched on ``torch.nn.Module``), and ``CustomFromMask``
    torch's own ``apply_mask``."""
    prune = import_torch().nn.utils.prune
    return (all(_torch_own(getattr(cls, attr, None), f"Module.{attr}") for attr in _MODULE_METHODS)
            and getattr(cls, "__getattribute__", None) is object.__getattribute__
            and _torch_own(prune.CustomFromMask.apply_mask, "BasePruningMethod.apply_mask"))


_MODULE_METHODS = ("register_parameter", "register_buffer", "register_forward_pre_hook", "__setattr__",
                   "__getattr__", "__delattr__")


@functools.cache
def _torch_own(function: object, qualname: str) -> bool:
    return (getattr(function, "__qualname__", None) == qualname
            and getattr(function, "__module__", "").startswith("torch.nn."))


_MISSING = object()


def save_state(sub: torch.nn.Module, name: str) -> dict[str, Any]:
    """Everything torch's reparametrization touches on ``sub``, in order: the
    parameter, buffer and hook dicts (their key order is the state_dict's and
    the hooks' order), the plain ``name`` attribute, and the methods of each
    ``PruningContainer`` hook (``add_pruning_method`` grows them in place)."""
    containers = import_torch().nn.utils.prune.PruningContainer
    return {
        "parameters": dict(sub._parameters),
        "buffers": dict(sub._buffers),
        "non_persistent": set(sub._non_persistent_buffers_set),
        "hooks": dict(sub._forward_pre_hooks),
        "hooks_with_kwargs": dict(sub._forward_pre_hooks_with_kwargs),
        "containers": [(hook, hook._pruning_methods) for hook in sub._forward_pre_hooks.values()
                       if isinstance(hook, containers)],
        "plain": sub.__dict__.get(name, _MISSING),
    }


def restore_state(sub: torch.nn.Module, name: str, state: dict[str, Any]) -> None:
    """Put back what :func:`save_state` saw, with the same objects and order."""
    for live, saved in ((sub._parameters, state["parameters"]), (sub._buffers, state["buffers"]),
                        (sub._forward_pre_hooks, state["hooks"]),
                        (sub._forward_pre_hooks_with_kwargs, state["hooks_with_kwargs"])):
        live.clear()
        live.update(saved)
    sub._non_persistent_buffers_set.clear()
    sub._non_persistent_buffers_set.update(state["non_persistent"])
    for container, methods in state["containers"]:
        container._pruning_methods = methods
    sub.__dict__.pop(name, None)
    if state["plain"] is not _MISSING:
        sub.__dict__[name] = state["plain"]


def _first_failure(error: BaseException, prune: Any) -> BaseException:
    """The failure to report for ``error`` raised by ``custom_from_mask``.

    On a first pruning, torch's own rollback (``except Exception`` in
    ``BasePruningMethod.apply``) re-registers the parameter while the plain
    attribute it has just set is still there, and raises ``KeyError: "attribute
    'weight' already exists"`` over the real failure (a MemoryError, say).
    That KeyError is recognised by its context: raised while handling an
    exception that passed through the same ``apply`` call (the one handler in
    it is the rollback). Then the real failure is reported, as it was raised.
    """
    cause = error.__context__
    if cause is None:
        return error
    apply_code = prune.BasePruningMethod.apply.__func__.__code__
    frames = [{id(frame) for frame in _frames(e) if frame.f_code is apply_code} for e in (error, cause)]
    return cause if frames[0] & frames[1] else error


def _frames(error: BaseException) -> list[Any]:
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


# --------------------------------------------------------------------------
# Reading masks back, and writing torch-style state dicts
# --------------------------------------------------------------------------


def read_pruned(
    source: torch.nn.Module | Mapping[str, torch.Tensor],
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Dense weights and masks of a pruned module or of a state_dict with
    ``*_orig``/``*_mask`` pairs: ``({name: weight}, {name: bool mask})``.

    Weights are the dense ``*_orig`` values for pruned tensors (every other
    parameter and buffer as is); masks are present for pruned tensors only.

    >>> import torch, jax, jaxprune as jp
    >>> from jaxprune import interop
    >>> net = torch.nn.Linear(3, 1)
    >>> _ = torch.nn.utils.prune.l1_unstructured(net, "weight", 1)
    >>> weights, masks = interop.read_pruned(net.state_dict())
    >>> sorted(weights), sorted(masks), int((~masks["weight"]).sum())
    (['bias', 'weight'], ['weight'], 1)
    """
    torch = import_torch()
    state = source.state_dict() if isinstance(source, torch.nn.Module) else dict(source)
    dense, stored = split_pairs({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    weights = {name: to_jax(value, copy=True) for name, value in dense.items()}
    masks = {name: to_jax(kept(mask), copy=True) for name, mask in stored.items()}
    return weights, masks


def pruned_state_dict(
    weights: Mapping[str, Any], masks: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A torch state_dict with ``<name>_orig``/``<name>_mask`` pairs for every
    masked tensor: it loads into a module pruned with torch's API.

    >>> import jax.numpy as jnp
    >>> from jaxprune import interop
    >>> sd = interop.pruned_state_dict({"weight": jnp.ones((1, 2)), "bias": jnp.zeros(1)},
    ...                                {"weight": jnp.array([[True, False]])})
    >>> sorted(sd), sd["weight_mask"]
    (['bias', 'weight_mask', 'weight_orig'], tensor([[1., 0.]]))
    """
    def as_mask(name: str, mask: Any, tensor: torch.Tensor) -> torch.Tensor:
        mask = np.asarray(mask)
        if mask.shape != tuple(tensor.shape):
            raise jp.PruningShapeError(f"mask for {name!r} has shape {mask.shape}, weight {tuple(tensor.shape)}")
        return to_torch(kept(mask), copy=True).to(tensor.dtype)

    tensors = {name: to_torch(np.asarray(weight), copy=True) for name, weight in weights.items()}
    return join_pairs(tensors, masks, as_mask=as_mask)
