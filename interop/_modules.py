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

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

import jaxprune as jp
from jaxprune._amounts import check_amount
from jaxprune._plan import match_patterns
from jaxprune._rules import GlobalUnstructured, global_group
from jaxprune._state_dicts import join_pairs, kept, split_pairs
from jaxprune._trees import global_masks, leaf_key

from ._tensors import _torch, to_jax, to_torch

if TYPE_CHECKING:
    import torch

Rules = Mapping[str, Any] | Callable[[str, "torch.Tensor"], Any]


def _pruned_names(sub: torch.nn.Module) -> set[str]:
    prune = _torch().nn.utils.prune
    names = set()
    for hook in sub._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            names.add(hook._tensor_name)
    return names


def prunable_parameters(module: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """Dotted parameter names (as before any pruning: ``"fc.weight"``, never
    ``"fc.weight_orig"``) -> (owning submodule, attribute name)."""
    found: dict[str, tuple[Any, str]] = {}
    for prefix, sub in module.named_modules():
        pruned = _pruned_names(sub)
        for pname in list(sub._parameters):
            if sub._parameters[pname] is None:
                continue
            name = pname[: -len("_orig")] if pname.endswith("_orig") and pname[: -len("_orig")] in pruned else pname
            found[f"{prefix}.{name}" if prefix else name] = (sub, name)
    return found


def _current(sub: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the tensor torch would rank now, the current mask or None)."""
    if name in _pruned_names(sub):
        return getattr(sub, name), getattr(sub, name + "_mask")
    return sub._parameters[name], None


def _resolve(module: torch.nn.Module, rules: Rules) -> list[tuple[str, Any, str | None]]:
    params = prunable_parameters(module)
    chosen: list[tuple[str, Any, str | None]] = []
    if isinstance(rules, Mapping):
        names = list(params)
        for index, pattern, spec in match_patterns(names, rules):
            if spec is not None:
                chosen.append((names[index], spec, pattern))
    elif callable(rules):
        for name, (sub, attr) in params.items():
            spec = rules(name, _current(sub, attr)[0])
            if spec is not None:
                chosen.append((name, spec, None))
    else:
        raise TypeError(f"rules must be a dict of pattern -> spec or a callable (name, tensor) -> spec, got {rules!r}")
    out = []
    for name, spec, pattern in chosen:
        where = f"rule {pattern!r} for {name!r}" if pattern else f"rule for {name!r}"
        if not isinstance(spec, (jp.PruningMethod, GlobalUnstructured)):
            raise TypeError(f"{where}: expected a jaxprune method spec (e.g. jp.L1Unstructured(0.3)), got {spec!r}")
        tensor = _current(*params[name])[0]
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"{where}: only floating parameters can be pruned, got {tensor.dtype}")
        out.append((name, spec, pattern))
    return out


def compute_module_masks(
    key: jax.Array | None,
    module: torch.nn.Module,
    rules: Rules,
    *,
    importance_scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, jax.Array]:
    """The masks ``prune_module`` would install, as ``{name: bool jax array}``; the module is not touched."""
    params = prunable_parameters(module)
    chosen = _resolve(module, rules)
    importance_scores = dict(importance_scores or {})
    unknown = set(importance_scores) - {name for name, _, _ in chosen}
    if unknown:
        raise ValueError(f"importance_scores for parameters no rule prunes: {sorted(unknown)}")
    masks: dict[str, jax.Array] = {}
    groups: dict[tuple[str | None, GlobalUnstructured], list[str]] = {}
    inputs: dict[str, tuple[jax.Array, jax.Array | None]] = {}
    for name, spec, pattern in chosen:
        sub, attr = params[name]
        tensor, mask = _current(sub, attr)
        scores = importance_scores.get(name, tensor)
        if tuple(scores.shape) != tuple(tensor.shape):
            raise jp.PruningShapeError(f"importance_scores[{name!r}] has shape {tuple(scores.shape)}, "
                                       f"expected {tuple(tensor.shape)}")
        # Snapshots: later changes to the module never reach these arrays.
        inputs[name] = (to_jax(scores, copy=True), None if mask is None else to_jax(mask == 1, copy=True))
        if isinstance(spec, GlobalUnstructured):
            groups.setdefault(global_group(spec, pattern), []).append(name)
            continue
        rng = None if key is None else leaf_key(jp._methods.check_key(key), name)
        masks[name] = spec.compute_mask(rng, *inputs[name])
    for (_, spec), names in groups.items():
        out = global_masks(names, [inputs[n][0] for n in names], check_amount(spec.amount), method=spec.method,
                           key=key, importance_scores=[None] * len(names),
                           default_masks=[inputs[n][1] for n in names])
        masks.update(zip(names, out))
    return jax.block_until_ready(masks)


def prune_module(
    key: jax.Array | None,
    module: torch.nn.Module,
    rules: Rules,
    *,
    importance_scores: Mapping[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Prune a torch module's parameters with jaxprune specs, installing torch's
    reparametrization (see the module doc). Returns the module.

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
    masks = compute_module_masks(key, module, rules, importance_scores=importance_scores)
    params = prunable_parameters(module)
    installed: list[tuple[Any, str, dict[str, Any]]] = []
    prune = _torch().nn.utils.prune
    try:
        for name, mask in masks.items():
            sub, attr = params[name]
            before = _save_state(sub, attr)
            current = _current(sub, attr)[0]
            # The mask goes where the parameter is (jax may have computed it on
            # another device, e.g. its default GPU for a CPU module).
            mask_tensor = to_torch(mask, copy=True).to(device=current.device, dtype=current.dtype)
            prune.custom_from_mask(sub, attr, mask=mask_tensor)
            installed.append((sub, attr, before))
    except BaseException:
        for sub, attr, before in reversed(installed):
            _restore_state(sub, attr, before)
        raise
    return module


_MISSING = object()


def _save_state(sub: torch.nn.Module, name: str) -> dict[str, Any]:
    """Everything torch's reparametrization touches on ``sub``, in order."""
    return {
        "parameters": dict(sub._parameters),
        "buffers": dict(sub._buffers),
        "hooks": dict(sub._forward_pre_hooks),
        "plain": sub.__dict__.get(name, _MISSING),
    }


def _restore_state(sub: torch.nn.Module, name: str, state: dict[str, Any]) -> None:
    """Put back what :func:`_save_state` saw, with the same objects and order."""
    for live, saved in ((sub._parameters, state["parameters"]), (sub._buffers, state["buffers"]),
                        (sub._forward_pre_hooks, state["hooks"])):
        live.clear()
        live.update(saved)
    sub.__dict__.pop(name, None)
    if state["plain"] is not _MISSING:
        sub.__dict__[name] = state["plain"]


# --------------------------------------------------------------------------
# Reading masks back, and writing torch-style state dicts
# --------------------------------------------------------------------------


def read_pruned(source: torch.nn.Module | Mapping[str, torch.Tensor]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
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
    torch = _torch()
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
