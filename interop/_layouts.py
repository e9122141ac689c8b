"""torch <-> Flax weights, with layouts (and pruning dims) mapped.

=========================  ===========================  ==================================
torch layer                torch tensor                 Flax leaf (collection.name)
=========================  ===========================  ==================================
Conv1d/2d/3d (groups too)  weight (O, I/groups, *k)     params.kernel (*k, I/groups, O)
                           bias (O,)                    params.bias
ConvTranspose1d/2d/3d      weight (I, O, *k)            params.kernel (*k, O, I), for
                           bias (O,)                    ``ConvTranspose(transpose_kernel=True)``
Linear                     weight (out, in)             params.kernel (in, out)
                           bias                         params.bias
transformers Conv1D        weight (in, out)             params.kernel (in, out), as it is
                           bias                         params.bias
MultiheadAttention         in_proj_weight (3E, E)       params.query/key/value.kernel
                           (or q/k/v_proj_weight)       (E_in, heads, head_dim) each
                           in_proj_bias (3E,)           params.query/key/value.bias (heads, head_dim)
                           out_proj.weight (E, E)       params.out.kernel (heads, head_dim, E)
                           out_proj.bias                params.out.bias
BatchNorm1d/2d/3d          weight, bias                 params.scale, params.bias
                           running_mean, running_var    batch_stats.mean, batch_stats.var
LayerNorm, GroupNorm       weight, bias                 params.scale, params.bias
RMSNorm, LlamaRMSNorm      weight                       params.scale
Embedding                  weight (num, dim)            params.embedding (num, dim)
=========================  ===========================  ==================================

MultiheadAttention's leaves are those of ``flax.linen.MultiHeadDotProductAttention``
(its ``in_proj_weight`` is split over three Flax leaves: its :class:`Placement`
is a tuple of three); ``add_bias_kv`` (``bias_k``/``bias_v``) has no Flax
counterpart and is refused. ConvTranspose with ``groups > 1`` is refused (Flax's
ConvTranspose has no feature groups).

Buffers are converted only where the table names them (BatchNorm's running
statistics); other buffers (index buffers such as BERT's ``position_ids``,
rotary ``inv_freq``, attention masks) are not weights: they are skipped, and
``flax_to_torch`` leaves them as they are. A parameter of a layer type the
table lacks raises naming the layer path and type.

Other layer types: :func:`register_layout`. A module path ``features.0``
becomes the nested keys ``features -> 0`` unless ``names`` renames it
(``{"features.0": "conv1"}``; two tensors on one Flax path raise). The result is Linen's
variables dict (``{"params": ..., "batch_stats": ...}``); for NNX, update the
model with each collection (``nnx.update(model, variables["params"])``).

Masks travel with their weights (same permutation), and :func:`flax_rules`
turns pruning rules written for the torch model into rules for the converted
tree that compute in torch's layout and draw from the torch parameter's key,
so pruning either side with the same key gives the same masks.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxprune as jp

from ._modules import Rules, plan_module, prunable_parameters
from ._tensors import check_module, import_torch, to_jax, to_torch

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a torch tensor (or a block of its rows) lives in the Flax tree, and how its axes map.

    The Flax leaf is ``torch[rows[0]:rows[1]]`` (the whole tensor when ``rows``
    is None), permuted by ``perm``, reshaped to ``flax_shape`` when that is set
    (MultiheadAttention's heads: ``(E_in, E)`` -> ``(E_in, heads, head_dim)``;
    ``torch_shape`` is then the torch block's shape, for the way back).
    """

    collection: str  # "params" or "batch_stats"
    path: tuple[str, ...]  # nested keys inside the collection
    perm: tuple[int, ...]  # flax = torch.permute(perm)
    rows: tuple[int, int] | None = None  # the block of torch's axis 0 this leaf holds
    flax_shape: tuple[int, ...] | None = None  # reshape after the permutation
    torch_shape: tuple[int, ...] | None = None  # the torch block's shape, when flax_shape is set

    def to_flax(self, x: Any) -> Any:
        """The torch tensor ``x`` (a JAX or NumPy array) in this leaf's layout, of the same kind."""
        xp = np if isinstance(x, np.ndarray) else jnp  # NumPy on the host: nothing to compile per shape
        if self.rows is not None:
            x = x[self.rows[0]:self.rows[1]]
        x = xp.transpose(x, self.perm) if self.perm else x
        return xp.reshape(x, self.flax_shape) if self.flax_shape is not None else x

    def to_torch_layout(self, x: Any) -> Any:
        """The Flax leaf in torch's layout (the torch block of ``rows``, when set)."""
        xp = np if isinstance(x, np.ndarray) else jnp
        if self.torch_shape is not None:
            x = xp.reshape(x, tuple(self.torch_shape[i] for i in self.perm) if self.perm else self.torch_shape)
        return xp.transpose(x, tuple(int(i) for i in np.argsort(self.perm))) if self.perm else x

    def flax_axis(self, torch_dim: int, ndim: int) -> int:
        """The Flax axis holding torch's ``dim`` (e.g. Conv2d dim=0, the filters -> axis 3).

        Raises ``ValueError`` when the reshape spreads that dim over several
        Flax axes (MultiheadAttention's output features: heads x head_dim)."""
        dim = torch_dim % ndim
        axis = self.perm.index(dim) if self.perm else dim
        if self.flax_shape is None:
            return axis
        assert self.torch_shape is not None  # set together with flax_shape
        permuted = [self.torch_shape[i] for i in self.perm] if self.perm else list(self.torch_shape)
        start, stop = int(np.prod(permuted[:axis])), int(np.prod(permuted[:axis + 1]))
        sizes = np.cumprod((1,) + tuple(self.flax_shape))
        if start in sizes and stop in sizes:
            first, last = int(np.searchsorted(sizes, start)), int(np.searchsorted(sizes, stop))
            if last - first == 1:
                return first
        raise ValueError(f"torch dim {torch_dim} (size {permuted[axis]}) is spread over several axes of the Flax "
                         f"leaf {'.'.join(self.path)} {self.flax_shape}; it has no single Flax axis")


# A layer's mapper: (layer, torch tensor name, ndim) -> (collection, Flax leaf name,
# perm with flax = torch.permute(perm), () for none), or None: no Flax counterpart.
Mapper = Callable[[Any, str, int], "tuple[str, str, tuple[int, ...]] | None"]

# register_layout's rows, by type; the latest registration of a type replaces the earlier one.
_REGISTERED: dict[type, Mapper] = {}


def register_layout(torch_type: type, mapper: Mapper) -> None:
    """Teach the torch <-> Flax conversion a layer type: ``torch_to_flax``,
    ``flax_to_torch``, ``placements``, ``masks_to_flax`` / ``masks_to_torch``,
    ``flax_dim`` and ``flax_rules`` then map its tensors.

    ``mapper(layer, tensor_name, ndim)`` returns ``(collection, flax_name,
    perm)`` (the Flax leaf is ``collection.<module path>.flax_name`` and equals
    the torch tensor permuted by ``perm``, ``()`` for as it is), or None when
    the tensor has no Flax counterpart (the conversion then raises naming a
    parameter, and skips a buffer).
    Registered types are looked up before the built-in ones, the latest first,
    with ``isinstance`` (subclasses included), so a registration can also
    replace a built-in layout; registering a type again replaces its mapper.

    >>> import torch
    >>> from jaxprune import interop
    >>> class Gain(torch.nn.Module):  # y = x * gain; a Flax "scale" parameter
    ...     def __init__(self, n: int) -> None:
    ...         super().__init__()
    ...         self.gain = torch.nn.Parameter(torch.full((n,), 2.0))
    >>> interop.register_layout(Gain, lambda layer, name, ndim: ("params", "scale", ()) if name == "gain" else None)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), Gain(2))
    >>> interop.torch_to_flax(net)["params"]["1"]["scale"].tolist()
    [2.0, 2.0]
    >>> interop.placements(net, {"1": "gain"})["1.gain"].path
    ('gain', 'scale')
    """
    if not (isinstance(torch_type, type) and issubclass(torch_type, import_torch().nn.Module)):
        raise TypeError(f"register_layout: torch_type must be a torch.nn.Module subclass, got {torch_type!r}")
    if not callable(mapper):
        raise TypeError(f"register_layout: mapper must be a callable (layer, name, ndim) -> "
                        f"(collection, flax_name, perm) | None, got {mapper!r}")
    _REGISTERED.pop(torch_type, None)
    _REGISTERED[torch_type] = mapper


def _layer_table() -> list[tuple[tuple[type, ...], Mapper]]:
    """(types, mapper) rows, first match wins: the registered ones, latest
    first, then the built-in ones (the table in the module doc)."""
    registered = [((torch_type,), mapper) for torch_type, mapper in reversed(_REGISTERED.items())]
    return registered + _builtin_layers()


class _Leaf(NamedTuple):
    """A built-in mapper's richer answer: ``name`` may be a dotted sub-path
    (``"query.kernel"``), with the rows/reshape of :class:`Placement`."""

    collection: str
    name: str
    perm: tuple[int, ...]
    rows: tuple[int, int] | None = None
    flax_shape: tuple[int, ...] | None = None


class _Refused(Exception):
    """A built-in layout cannot express this layer (the reason); placements names the layer."""


# The built-in layer types, by name, for the unsupported-layer error (the
# transformers ones join the table only once transformers is imported).
_BUILTIN_NAMES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
                  "transformers Conv1D", "MultiheadAttention", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm",
                  "GroupNorm", "RMSNorm", "LlamaRMSNorm", "Embedding")


def _builtin_layers() -> list[tuple[tuple[type, ...], Mapper]]:
    nn = import_torch().nn

    def conv(layer: Any, name: str, ndim: int):
        if name == "weight":
            return "params", "kernel", tuple(range(2, ndim)) + (1, 0)
        return {"bias": ("params", "bias", ())}.get(name)

    def conv_transpose(layer: Any, name: str, ndim: int):
        # torch (I, O/groups, *k) -> Flax ConvTranspose(transpose_kernel=True)'s (*k, O, I): the same
        # permutation as Conv, no spatial flip (transpose_kernel flips it, as torch's transposed conv does).
        if layer.groups != 1:
            raise _Refused(f"groups={layer.groups}: Flax's ConvTranspose has no feature groups")
        return conv(layer, name, ndim)

    def linear(layer: Any, name: str, ndim: int):
        return {"weight": ("params", "kernel", (1, 0)), "bias": ("params", "bias", ())}.get(name)

    def conv1d_transformers(layer: Any, name: str, ndim: int):
        # transformers' Conv1D (GPT-2) stores weight as (in, out): Flax Dense's kernel as it is.
        return {"weight": ("params", "kernel", ()), "bias": ("params", "bias", ())}.get(name)

    def norm(layer: Any, name: str, ndim: int):
        return {"weight": ("params", "scale", ()), "bias": ("params", "bias", ()),
                "running_mean": ("batch_stats", "mean", ()), "running_var": ("batch_stats", "var", ())}.get(name)

    def embedding(layer: Any, name: str, ndim: int):
        return {"weight": ("params", "embedding", ())}.get(name)

    rows = [
        ((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv),
        ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), conv_transpose),
        ((nn.Linear,), linear),
        ((nn.MultiheadAttention,), _attention),
        ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm), norm),
        ((nn.Embedding,), embedding),
    ]
    # transformers' layers, looked up only when transformers is loaded (a model using them imported it).
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    if pytorch_utils is not None and hasattr(pytorch_utils, "Conv1D"):
        rows.insert(3, ((pytorch_utils.Conv1D,), conv1d_transformers))
    llama = sys.modules.get("transformers.models.llama.modeling_llama")
    if llama is not None and hasattr(llama, "LlamaRMSNorm"):
        rows.append(((llama.LlamaRMSNorm,), norm))
    return rows


def _attention(layer: Any, name: str, ndim: int) -> _Leaf | list[_Leaf] | None:
    """nn.MultiheadAttention -> flax.linen.MultiHeadDotProductAttention's query/key/value
    kernels (E_in, heads, head_dim) and biases (heads, head_dim); ``out_proj`` is mapped
    by :func:`_attention_out` (a child module)."""
    e, heads = layer.embed_dim, layer.num_heads
    per_head = (heads, e // heads)
    if name == "in_proj_weight":  # (3E, E): the query, key and value rows
        return [_Leaf("params", f"{part}.kernel", (1, 0), (i * e, (i + 1) * e), (e,) + per_head)
                for i, part in enumerate(("query", "key", "value"))]
    if name == "in_proj_bias":
        return [_Leaf("params", f"{part}.bias", (), (i * e, (i + 1) * e), per_head)
                for i, part in enumerate(("query", "key", "value"))]
    projections = {"q_proj_weight": ("query", layer.embed_dim), "k_proj_weight": ("key", layer.kdim),
                   "v_proj_weight": ("value", layer.vdim)}
    if name in projections:  # (E, E_in) each, when kdim or vdim differ from embed_dim
        part, e_in = projections[name]
        return _Leaf("params", f"{part}.kernel", (1, 0), None, (e_in,) + per_head)
    if name in ("bias_k", "bias_v"):
        raise _Refused("add_bias_kv=True: flax.linen.MultiHeadDotProductAttention has no bias_k/bias_v")
    return None


def _attention_out(attention: Any) -> Callable[[Any, str, int], _Leaf | None]:
    """The mapper of a MultiheadAttention's ``out_proj``: MultiHeadDotProductAttention's
    ``out`` (kernel (heads, head_dim, E), bias (E,))."""
    def mapper(layer: Any, name: str, ndim: int) -> _Leaf | None:
        per_head = (attention.num_heads, attention.embed_dim // attention.num_heads)
        return {"weight": _Leaf("params", "kernel", (1, 0), None, per_head + (layer.out_features,)),
                "bias": _Leaf("params", "bias", ())}.get(name)
    return mapper


def _tensors_of(layer: Any, *, effective: bool = False) -> dict[str, Any]:
    """A layer's own tensors by torch name (pruned ones by their logical name):
    a pruned tensor's dense ``*_orig``, or with ``effective`` what torch's
    forward uses (its pruning hook's ``apply_mask``, ``orig * mask``, computed
    now: the ``weight`` attribute is stale after an optimizer step until the
    next forward)."""
    own = [name for name in prunable_parameters(layer) if "." not in name]  # module order
    hooks = {hook._tensor_name: hook for hook in layer._forward_pre_hooks.values()
             if isinstance(hook, import_torch().nn.utils.prune.BasePruningMethod)}
    out: dict[str, Any] = {}
    for name in own:
        if effective and name in hooks:
            with import_torch().no_grad():
                out[name] = hooks[name].apply_mask(layer)
        else:
            out[name] = getattr(layer, name + "_orig") if hasattr(layer, name + "_orig") else layer._parameters[name]
    for name, buf in layer._buffers.items():
        if buf is not None and not name.endswith("_mask") and name != "num_batches_tracked":
            out[name] = buf
    return out


def placements(module: torch.nn.Module,
               names: Mapping[str, str] | None = None) -> dict[str, Placement | tuple[Placement, ...]]:
    """``{torch tensor name: Placement}`` for every tensor ``torch_to_flax`` converts;
    a tensor split over several Flax leaves (MultiheadAttention's
    ``in_proj_weight`` / ``in_proj_bias``: query, key, value) has a tuple of
    Placements, one per leaf, each with its ``rows``.

    Raises ``ValueError`` naming the first layer with parameters of a type it
    cannot map (:func:`register_layout` adds types), a ``names`` key that is no
    module path, or two tensors that ``names`` puts on one Flax path.

    >>> import torch
    >>> from jaxprune import interop
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> place = interop.placements(net, {"0": "conv"})
    >>> list(place), place["0.weight"].path, place["0.weight"].perm
    (['0.weight', '0.bias', '2.weight', '2.bias'], ('conv', 'kernel'), (2, 3, 1, 0))
    >>> attention = interop.placements(torch.nn.MultiheadAttention(8, 2))
    >>> [(p.path, p.rows, p.flax_shape) for p in attention["in_proj_weight"]]  # doctest: +NORMALIZE_WHITESPACE
    [(('query', 'kernel'), (0, 8), (8, 2, 4)), (('key', 'kernel'), (8, 16), (8, 2, 4)),
     (('value', 'kernel'), (16, 24), (8, 2, 4))]
    >>> interop.placements(net, {"0": "x", "2": "x"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: torch tensors '0.weight' and '2.weight' both map to params.x.kernel; ...
    """
    check_module(module, "placements")
    return {name: parts[0] if len(parts) == 1 else parts for name, parts in _placements(module, names).items()}


def _placements(module: torch.nn.Module, names: Mapping[str, str] | None) -> dict[str, tuple[Placement, ...]]:
    """:func:`placements` with a tuple for every tensor (one Placement for most)."""
    table = _layer_table()
    names = _checked_names(module, names)
    out: dict[str, tuple[Placement, ...]] = {}
    # MultiheadAttention's out_proj: child module path -> (its Flax prefix, its mapper)
    owned: dict[str, tuple[str, Callable[[Any, str, int], Any]]] = {}
    for prefix, layer in module.named_modules():
        tensors = _tensors_of(layer)
        if isinstance(layer, import_torch().nn.MultiheadAttention) and layer.out_proj is not None:
            child = f"{prefix}.out_proj" if prefix else "out_proj"
            owned[child] = (names.get(child, f"{names.get(prefix, prefix)}.out".lstrip(".")), _attention_out(layer))
        if not tensors:
            continue
        buffers = {name for name in tensors if name in layer._buffers}
        if prefix in owned:
            flax_prefix, mapper = owned[prefix]
        else:
            flax_prefix = names.get(prefix, prefix)
            mapper = next((m for types, m in table if isinstance(layer, types)), None)
        if mapper is None:
            if set(tensors) <= buffers:
                continue  # buffers of a layer without a layout (index buffers): not weights
            supported = ", ".join(dict.fromkeys([t.__name__ for types, _ in table[:len(_REGISTERED)] for t in types]
                                                + list(_BUILTIN_NAMES)))
            raise ValueError(f"torch_to_flax: layer {prefix or '(root)'!r} of type {type(layer).__name__} has "
                             f"parameters {sorted(set(tensors) - buffers)} and no known Flax layout (supported: "
                             f"{supported}; interop.register_layout adds one)")
        for name, tensor in tensors.items():
            try:
                placed = mapper(layer, name, tensor.ndim)
            except _Refused as reason:
                raise ValueError(f"torch_to_flax: layer {prefix or '(root)'!r} of type {type(layer).__name__}: "
                                 f"{reason}") from None
            if placed is None:
                if name in buffers:
                    continue  # a buffer the layout does not convert: not a weight
                raise ValueError(f"torch_to_flax: tensor {name!r} of layer {prefix!r} ({type(layer).__name__}) "
                                 "has no Flax counterpart")
            leaves = placed if isinstance(placed, list) else [placed]
            out[f"{prefix}.{name}" if prefix else name] = tuple(
                _placement(leaf, layer, name, tuple(tensor.shape), flax_prefix) for leaf in leaves)
    _check_distinct(out)
    return out


def _placement(placed: Any, layer: Any, name: str, shape: tuple[int, ...], flax_prefix: str) -> Placement:
    """A mapper's answer as a Placement (a registered mapper's 3-tuple checked first)."""
    if isinstance(placed, _Leaf):
        collection, flax_name, perm, rows, flax_shape = placed
        torch_shape = None
        if flax_shape is not None:
            torch_shape = ((rows[1] - rows[0],) + shape[1:]) if rows is not None else shape
    else:
        collection, flax_name, perm = _checked_placement(placed, layer, name, len(shape))
        rows = flax_shape = torch_shape = None
    path = tuple(p for p in f"{flax_prefix}.{flax_name}".split(".") if p)
    return Placement(collection, path, perm, rows, flax_shape, torch_shape)


def _checked_placement(placed: Any, layer: Any, name: str, ndim: int) -> tuple[str, str, tuple[int, ...]]:
    """A mapper's answer, checked: (collection, flax_name, perm) with perm ()
    or a permutation of the tensor's axes (a registered mapper may get it wrong)."""
    ok = isinstance(placed, tuple) and len(placed) == 3
    if ok:
        collection, flax_name, perm = placed
        ok = (isinstance(collection, str) and bool(collection) and isinstance(flax_name, str) and bool(flax_name)
              and isinstance(perm, tuple) and all(isinstance(a, int) and not isinstance(a, bool) for a in perm)
              and (perm == () or sorted(perm) == list(range(ndim))))
    if not ok:
        raise ValueError(f"the Flax layout of {type(layer).__name__} maps tensor {name!r} ({ndim} dims) to "
                         f"{placed!r}; expected (collection, flax_name, perm) with non-empty names and perm () or "
                         f"a permutation of range({ndim})")
    return placed


def _checked_names(module: torch.nn.Module, names: Mapping[str, str] | None) -> dict[str, str]:
    """``names`` as a dict, refusing keys that are no module path of ``module``
    (a typo would silently keep the torch path) and values that are not str."""
    names = dict(names or {})
    paths = [prefix for prefix, _ in module.named_modules(remove_duplicate=False)]
    for path, new in names.items():
        if path not in paths:
            shown = ", ".join(map(repr, paths[1:21])) + (", ..." if len(paths) > 21 else "")
            raise ValueError(f"names: no module {path!r} in the torch module (its module paths: {shown})")
        if not isinstance(new, str):
            raise TypeError(f"names[{path!r}] must be a str, got {new!r}")
    return names


def _check_distinct(out: Mapping[str, tuple[Placement, ...]]) -> None:
    """Refuse two torch tensors at one Flax path, or one inside another's leaf
    (``names={"0": "x", "1": "x"}``): the tree would silently keep only one."""
    leaves: dict[tuple[str, ...], str] = {}
    inner: dict[tuple[str, ...], str] = {}  # every proper prefix of a leaf -> that leaf's tensor
    for name, parts in out.items():
        for place in parts:
            _check_leaf_distinct(name, (place.collection,) + place.path, leaves, inner)


def _check_leaf_distinct(name: str, full: tuple[str, ...], leaves: dict[tuple[str, ...], str],
                         inner: dict[tuple[str, ...], str]) -> None:
    """Record one Flax leaf of torch tensor ``name``, refusing a clash."""
    if full in leaves:
        raise ValueError(f"torch tensors {leaves[full]!r} and {name!r} both map to {'.'.join(full)}; "
                         "give their layers different names (names=)")
    clash = inner.get(full) or next((leaves[full[:i]] for i in range(1, len(full)) if full[:i] in leaves), None)
    if clash is not None:
        raise ValueError(f"torch tensor {name!r} maps to {'.'.join(full)}, a path that also holds torch tensor "
                         f"{clash!r}; give their layers different names (names=)")
    leaves[full] = name
    for i in range(1, len(full)):
        inner.setdefault(full[:i], name)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            raise KeyError(".".join(path))
        tree = tree[key]
    return tree


def torch_to_flax(module: torch.nn.Module, *, names: Mapping[str, str] | None = None,
                  weights: str = "effective") -> dict[str, dict]:
    """A torch module's weights as Flax variables ``{"params": ..., "batch_stats": ...}``.

    Args:
      module: the torch module (pruned by torch or :func:`prune_module`, or not).
      names: ``{torch module path: Flax path}`` renames (``{"0": "conv"}``);
        two tensors landing on one Flax path raise ``ValueError``.
      weights: for pruned tensors, ``"effective"`` (default) converts what the
        torch model computes with (``orig * mask``), so the Flax model gives
        the pruned model's outputs; ``"orig"`` the dense ``*_orig`` values
        (pair them with their masks, e.g. for a next pruning round or to keep
        training the dense weights).

    The masks of a pruned module, in the same Flax layout, come from
    :func:`masks_to_flax` over :func:`read_pruned`:

    >>> import torch, jax, jaxprune as jp
    >>> from jaxprune import interop
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2))
    >>> variables = interop.torch_to_flax(net, names={"0": "conv", "1": "fc"})
    >>> variables["params"]["conv"]["kernel"].shape, variables["params"]["fc"]["kernel"].shape
    ((3, 3, 3, 8), (8, 2))
    >>> _ = interop.prune_module(None, net, {"1.weight": jp.L1Unstructured(0.5)})
    >>> pruned = interop.torch_to_flax(net)                   # what the pruned model computes with
    >>> dense = interop.torch_to_flax(net, weights="orig")    # the dense *_orig values
    >>> masks = interop.masks_to_flax(interop.read_pruned(net)[1], net)
    >>> int((pruned["params"]["1"]["kernel"] == 0).sum()), int((~masks["1"]["kernel"]).sum())
    (8, 8)
    >>> bool((jp.apply_masks(dense["params"], masks)["1"]["kernel"] == pruned["params"]["1"]["kernel"]).all())
    True
    """
    check_module(module, "torch_to_flax")
    if not isinstance(weights, str) or weights not in ("effective", "orig"):
        raise ValueError(f"torch_to_flax: weights must be 'effective' or 'orig', got {weights!r}")
    tensors = dict(_named_tensors(module, effective=weights == "effective"))
    out: dict[str, dict] = {}
    for name, parts in _placements(module, names).items():
        # The layout moves on the host, in NumPy: jnp.transpose, like to_jax(copy=True), compiles once
        # per shape, which dominates converting a model of many shapes. Each leaf is a private copy.
        value = to_jax(tensors[name])
        host = np.asarray(value)
        for place in parts:
            leaf = jax.device_put(np.array(place.to_flax(host), copy=True, order="C"), value.sharding)
            _set(out.setdefault(place.collection, {}), place.path, leaf)
    return out


def _named_tensors(module: torch.nn.Module, *, effective: bool = False) -> list[tuple[str, Any]]:
    items = []
    for prefix, layer in module.named_modules():
        for name, tensor in _tensors_of(layer, effective=effective).items():
            items.append((f"{prefix}.{name}" if prefix else name, tensor))
    return items


def flax_to_torch(variables: Mapping[str, Mapping], module: torch.nn.Module, *,
                  names: Mapping[str, str] | None = None) -> torch.nn.Module:
    """Load Flax variables (as :func:`torch_to_flax` returns them) into ``module``.

    Every tensor is checked first (a missing leaf or a shape mismatch raises
    ``ValueError`` naming it, and nothing is written); then all are copied in.
    For a pruned tensor, the value goes to ``<name>_orig`` and its mask stays:
    variables exported with the default ``weights="effective"`` give the
    same outputs, with the pruned entries of ``*_orig`` now zero.

    >>> import torch
    >>> from jaxprune import interop
    >>> source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> _ = interop.flax_to_torch(interop.torch_to_flax(source), target)
    >>> torch.equal(target.weight, source.weight)
    True
    """
    torch = import_torch()
    check_module(module, "flax_to_torch")
    tensors = dict(_named_tensors(module))
    staged = []
    for name, parts in _placements(module, names).items():
        target = tensors[name]
        blocks = [_torch_block(variables, place, name, target) for place in parts]
        value = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        staged.append((target, _host_to_torch(value)))
    with torch.no_grad():
        for target, value in staged:
            target.copy_(value.to(target.dtype))
    return module


def _host_to_torch(value: np.ndarray) -> torch.Tensor:
    """A private torch copy of a NumPy array: ``torch.from_numpy`` where torch reads the dtype
    (``jnp.asarray`` would compile once per shape), else through DLPack (bfloat16, float8)."""
    if type(value.dtype).__module__.startswith("numpy"):
        return import_torch().from_numpy(np.array(value, copy=True, order="C"))
    return to_torch(np.asarray(value), copy=True)


def _torch_block(variables: Mapping[str, Mapping], place: Placement, name: str, target: Any) -> np.ndarray:
    """The Flax leaf at ``place`` in torch's layout, checked against the torch tensor (its rows)."""
    where = f"{place.collection}.{'.'.join(place.path)}"
    try:
        leaf = _get(variables[place.collection], place.path)
    except KeyError:
        raise ValueError(f"flax_to_torch: no {where} for torch tensor {name!r}") from None
    expected = tuple(target.shape)
    if place.rows is not None:
        expected = (place.rows[1] - place.rows[0],) + expected[1:]
    flax_shape = tuple(jnp.shape(leaf))
    expected_flax = _flax_shape(place, expected)
    if flax_shape != expected_flax:
        raise ValueError(f"flax_to_torch: {where} has shape {flax_shape}, expected {expected_flax} for torch tensor "
                         f"{name!r} {tuple(target.shape)}")
    value = place.to_torch_layout(np.asarray(leaf))
    assert value.shape == expected
    return value


def _flax_shape(place: Placement, block: tuple[int, ...]) -> tuple[int, ...]:
    """The Flax leaf's shape for a torch block (the tensor, or its ``rows``) of shape ``block``."""
    if place.flax_shape is not None:
        return place.flax_shape
    return tuple(block[i] for i in place.perm) if place.perm else block


def masks_to_flax(masks: Mapping[str, Any], module: torch.nn.Module, *,
                  names: Mapping[str, str] | None = None) -> dict:
    """Torch-named masks (``{"conv.weight": mask}``, torch layout) as a mask
    tree shaped like ``torch_to_flax(module)["params"]``: bool masks in the Flax
    layout, None for the parameters without a mask (``jp.apply_masks`` and
    ``default_masks=`` take it as it is)."""
    check_module(module, "masks_to_flax")
    place = _placements(module, names)
    for name in masks:
        if name not in place or place[name][0].collection != "params":
            raise ValueError(f"masks_to_flax: {name!r} is not a parameter torch_to_flax converts")
    out: dict = {}
    for name, parts in place.items():
        if parts[0].collection == "params":
            mask = masks.get(name)
            mask = None if mask is None else np.asarray(_as_bool(mask))
            for where in parts:
                _set(out, where.path, None if mask is None else jnp.asarray(np.ascontiguousarray(where.to_flax(mask))))
    return out


def _as_bool(mask: Any) -> jax.Array:
    arr = jnp.asarray(np.asarray(mask)) if not isinstance(mask, jax.Array) else mask
    return arr if arr.dtype == jnp.bool_ else arr != 0


def masks_to_torch(flax_masks: Mapping, module: torch.nn.Module, *,
                   names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Flax mask tree (params layout; None = not pruned) as torch-named masks in torch's layout.

    A tensor split over several Flax leaves (MultiheadAttention's
    ``in_proj_weight``) gets one mask from its leaves' masks, all True for a
    leaf that is None or absent; none when all of them are."""
    check_module(module, "masks_to_torch")
    tensors = dict(_named_tensors(module))
    out = {}
    for name, parts in _placements(module, names).items():
        if parts[0].collection != "params":
            continue
        blocks = [_mask_block(flax_masks, place, tuple(tensors[name].shape)) for place in parts]
        if all(block is None for block in blocks):
            continue
        shapes = [(p.rows[1] - p.rows[0],) + tuple(tensors[name].shape)[1:] if p.rows else tuple(tensors[name].shape)
                  for p in parts]
        full = [np.ones(shape, bool) if block is None else block for block, shape in zip(blocks, shapes)]
        out[name] = to_torch(full[0] if len(full) == 1 else np.concatenate(full), copy=True)
    return out


def _mask_block(flax_masks: Mapping, place: Placement, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        mask = _get(flax_masks, place.path)
    except KeyError:
        return None
    return None if mask is None else place.to_torch_layout(np.asarray(mask))


def flax_dim(module: torch.nn.Module, name: str, dim: int, *, names: Mapping[str, str] | None = None) -> int:
    """The Flax axis of torch tensor ``name``'s ``dim``: Conv2d ``weight`` dim=0
    (filters) is axis 3 (``-1``) of the Flax kernel, Linear dim=0 is axis 1.

    >>> import torch
    >>> from jaxprune import interop
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    >>> interop.flax_dim(net, "0.weight", 0), interop.flax_dim(net, "0.weight", 1)
    (3, 2)
    """
    check_module(module, "flax_dim")
    place = _placements(module, names)
    if name not in place:
        raise ValueError(f"flax_dim: {name!r} is not a tensor of the module")
    ndim = dict(_named_tensors(module))[name].ndim
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"flax_dim: dim must be an int, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"flax_dim: dim {dim} is out of range for {name!r} with {ndim} dims")
    if len(place[name]) > 1:
        raise ValueError(f"flax_dim: {name!r} is split over the Flax leaves "
                         f"{', '.join('.'.join(p.path) for p in place[name])}; it has no single Flax axis")
    try:
        return place[name][0].flax_axis(dim, ndim)
    except ValueError as error:
        raise ValueError(f"flax_dim: {name!r}: {error}") from None


@dataclasses.dataclass(frozen=True)
class TorchLayout(jp.PruningMethod):
    """Prune a Flax leaf exactly as its torch parameter: move it to torch's
    layout, apply ``method`` there (drawing from ``key_path``'s key, the torch
    name), move the mask back. Made by :func:`flax_rules`.

    A method in its own right: its units, amount, randomness and extra inputs
    are ``method``'s (an extra input of the leaf's shape, such as gradients,
    is moved to torch's layout too), so ``jp.prune_tree`` and ``jp.pruning``
    take it like any other.

    >>> import jax.numpy as jnp, jaxprune as jp
    >>> from jaxprune import interop
    >>> rule = interop.TorchLayout(jp.LnStructured(1, n=2, dim=0), perm=(1, 0), key_path="fc.weight")
    >>> kernel = jnp.array([[1.0, 5.0, 0.1], [1.0, 5.0, 0.1]])  # Flax (in, out); torch dim 0 = outputs
    >>> rule.compute_mask(None, kernel)
    Array([[ True,  True, False],
           [ True,  True, False]], dtype=bool)
    >>> rule.unit, rule.units(kernel.shape), rule.with_amount(2).method
    ('slices', 3, LnStructured(amount=2, n=2, dim=0))
    """

    method: jp.PruningMethod
    perm: tuple[int, ...]
    key_path: str
    torch_shape: tuple[int, ...] | None = None  # when the Flax leaf is reshaped (attention heads split out)

    def __post_init__(self) -> None:
        if not isinstance(self.method, jp.PruningMethod):
            raise TypeError(f"TorchLayout.method must be a jaxprune method, got {self.method!r}")
        if self.method.group_of(None) is not None:
            raise ValueError(f"TorchLayout cannot wrap {self.method!r}, which ranks several leaves together")

    @property
    def unit(self) -> str:  # type: ignore[override]
        return self.method.unit

    @property
    def is_random(self) -> bool:  # type: ignore[override]
        return self.method.is_random

    @property
    def extra_args(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.method.extra_args

    @property
    def key_name(self) -> str:
        return self.key_path

    @property
    def has_amount(self) -> bool:
        return self.method.has_amount

    @property
    def amount(self) -> Any:
        """``method``'s amount."""
        return self.method.amount  # type: ignore[attr-defined]

    def with_amount(self, amount: Any) -> TorchLayout:
        return dataclasses.replace(self, method=self.method.with_amount(amount))

    def _torch_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.torch_shape is not None:
            return self.torch_shape
        return tuple(shape[i] for i in np.argsort(self.perm)) if self.perm else tuple(shape)

    def units(self, shape: tuple[int, ...]) -> int:
        return self.method.units(self._torch_shape(shape))

    def pruned_units(self, mask: jax.Array) -> jax.Array:
        return self.method.pruned_units(self._place.to_torch_layout(mask))

    def check_leaf(self, shape: tuple[int, ...]) -> None:
        if self.torch_shape is not None:
            if int(np.prod(shape)) != int(np.prod(self.torch_shape)):
                raise ValueError(f"the leaf has shape {tuple(shape)}, its torch layout {self.torch_shape}")
        elif len(shape) != len(self.perm) and self.perm:
            raise ValueError(f"the leaf has {len(shape)} dims, its torch layout {len(self.perm)}")
        self.method.check_leaf(self._torch_shape(shape))

    @property
    def _place(self) -> Placement:
        return Placement("params", (), self.perm, torch_shape=self.torch_shape)

    def compute_mask(self, key: jax.Array | None, t: Any, default_mask: Any = None, **extra: Any) -> jax.Array:
        place = self._place if self.torch_shape is None else dataclasses.replace(
            self._place, flax_shape=tuple(jnp.shape(t)))
        t = jnp.asarray(t)
        t_torch = place.to_torch_layout(t)
        dm = None if default_mask is None else place.to_torch_layout(jnp.asarray(default_mask))
        moved = {name: place.to_torch_layout(jnp.asarray(v)) if jnp.shape(v) == t.shape else v
                 for name, v in extra.items()}
        return place.to_flax(self.method.compute_mask(key, t_torch, dm, **moved))


def flax_rules(rules: Rules, module: torch.nn.Module, *, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Rules for ``torch_to_flax(module)["params"]`` equivalent to ``rules`` for
    ``prune_module(key, module, rules)``: ``jp.prune_tree(key, params, flax_rules(...))``
    then gives the same masks (in Flax layout) for every method, random ones
    included. The result also serves ``jp.pruning`` (write the torch rules
    with method classes or amount 0: the schedule sets the amount).
    ``jp.GlobalUnstructured(amount)`` rules ranked by L1 carry over as they are
    (same masks unless magnitudes tie across tensors); a random global rule
    cannot (its draws follow the tree order) and raises ``ValueError``.

    A tensor split over several Flax leaves (MultiheadAttention's
    ``in_proj_weight``) takes L1 rules only: ``jp.L1Unstructured`` becomes a
    ``jp.GlobalUnstructured`` group of its leaves (the same ranking); other
    methods on it raise ``ValueError`` (prune the torch module and carry the
    masks over with :func:`masks_to_flax`).
    """
    check_module(module, "flax_rules")
    place = _placements(module, names)
    out: dict[str, Any] = {}
    for a in plan_module(module, rules, factory_amount=0).assignments:
        name, spec, pattern = a.path, a.method, a.pattern
        if name not in place:
            raise ValueError(f"flax_rules: {name!r} has no Flax counterpart")
        parts = place[name]
        first = parts[0]
        if isinstance(spec, jp.GlobalUnstructured):
            if spec.is_random:
                raise ValueError("flax_rules: a random GlobalUnstructured rule cannot be reproduced across layouts")
            # Keep torch's grouping: the torch pattern names the group.
            group = spec.group or (f"torch:{pattern}" if pattern else f"torch:{spec!r}")
            out.update({".".join(p.path): dataclasses.replace(spec, group=group) for p in parts})
        elif len(parts) > 1:
            if type(spec) is not jp.L1Unstructured:
                raise ValueError(f"flax_rules: {name!r} is split over the Flax leaves "
                                 f"{', '.join('.'.join(p.path) for p in parts)}; only L1 rules carry over to it, "
                                 f"not {spec!r} (prune the torch module, then masks_to_flax)")
            out.update({".".join(p.path): jp.GlobalUnstructured(spec.amount, group=f"torch:{name}") for p in parts})
        else:
            out[".".join(first.path)] = TorchLayout(spec, first.perm, name, first.torch_shape)
    return out
