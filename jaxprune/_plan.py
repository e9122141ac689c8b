"""The planner: rules -> which method prunes which leaf -> masks.

This is the internal home of what ``prune_tree``, ``jp.pruning``, the torch
bridge and the command line share; names without an underscore here may be
imported by those modules.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _host
from ._errors import KeyRequiredError
from ._methods import check_key as check_key  # shared with the bridge and the CLI
from ._specs import Group, PruningMethod, RandomStructured, RandomUnstructured
from ._trees import leaf_key as leaf_key
from ._trees import leaves_like as leaves_like  # shared tree helpers, here for the consumers
from ._trees import named_leaves as named_leaves
from ._trees import path_hash
from ._typing import PyTree


def match_patterns(
    names: Sequence[str],
    rules: Mapping[str, Any],
    *,
    eligible: Callable[[int, str], bool] | None = None,
) -> list[tuple[int, str, Any]]:
    """``(index, pattern, value)`` for each name that a pattern matches (the
    first matching pattern in ``rules``' order wins).

    ``eligible(index, pattern)``, when given, must also hold for a pattern to
    match the name at ``index`` (the command line's ``ndim`` qualifiers).

    Raises ``ValueError`` for a pattern that matches no name, or whose every
    match an earlier pattern already took (it could never apply).

    >>> match_patterns(["a.kernel", "a.bias", "b.kernel"], {"a.*": 1, "*.kernel": 2})
    [(0, 'a.*', 1), (1, 'a.*', 1), (2, '*.kernel', 2)]
    >>> match_patterns(["a.b", "a.c", "x.c", "a.d"], {"a.c": 3, "*.c": 1, "a.b": 2, "a.*": 4})
    [(0, 'a.b', 2), (1, 'a.c', 3), (2, '*.c', 1), (3, 'a.*', 4)]
    """
    for pattern in rules:
        if not isinstance(pattern, str):
            raise TypeError(f"rule patterns must be strings, got {pattern!r}")
    chosen, won, matched = [], set(), set()
    # A pattern without wildcards matches its own text only: a dict lookup,
    # not a regex per name (a rule per parameter, as the torch bridge writes,
    # is common: comparing every name with every rule grows as their product).
    # (Patterns may be str subclasses that compare by more than their text:
    # literals are looked up by text, and several may share one.)
    order = {p: i for i, p in enumerate(rules)}
    literals: dict[str, list[Any]] = {}
    wildcards = []
    for p in rules:
        if any(c in p for c in "*?["):
            wildcards.append(p)
        else:
            literals.setdefault(str(p), []).append(p)
    for index, name in enumerate(names):
        found = [p for p in wildcards if fnmatch.fnmatchcase(name, p)]
        if name in literals:
            found = sorted([*literals[name], *found], key=order.__getitem__)
        hits = [p for p in found if eligible is None or eligible(index, p)]
        matched.update(hits)
        if hits:
            won.add(hits[0])
            chosen.append((index, hits[0], rules[hits[0]]))
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    for pattern in rules:
        if pattern not in matched:
            raise ValueError(f"rule pattern {pattern!r} matches no parameter; the paths are: {shown or '(none)'}")
        if pattern not in won:
            raise ValueError(f"rule pattern {pattern!r} never applies: every parameter it matches is taken by "
                             "an earlier pattern (the first matching pattern wins); reorder the rules")
    return chosen


# --------------------------------------------------------------------------
# Rule values and the plan
# --------------------------------------------------------------------------


def is_factory(value: Any) -> bool:
    """A rule value that makes a method from an amount: a method class or a
    callable such as ``functools.partial(jp.LnStructured, n=2, dim=0)``."""
    return not isinstance(value, PruningMethod) and callable(value)


def as_method(value: Any, where: str, *, factory_amount: Any = None) -> PruningMethod:
    """The method a rule value stands for.

    A :class:`PruningMethod` is itself. A factory is called with
    ``factory_amount`` when one is given (``jp.pruning``, whose schedule sets
    the amount); without one (``prune_tree``) it is refused.
    """
    if isinstance(value, PruningMethod):
        return value
    if not is_factory(value):
        raise TypeError(f"{where}: expected a pruning method (e.g. jp.L1Unstructured(0.3)), got {value!r}")
    if factory_amount is None:
        raise TypeError(
            f"{where}: {_name(value)} makes a method from an amount, but none is given here; write the method "
            f"with its amount (e.g. jp.L1Unstructured(0.3)). Method classes and partials are rule values of "
            "jp.pruning, whose schedule sets the amount."
        )
    try:
        method = value(factory_amount)
    except TypeError as err:
        raise TypeError(f"{where}: {_name(value)}({factory_amount!r}) failed: {err}; expected a method class or a "
                        "callable amount -> method") from err
    if not isinstance(method, PruningMethod):
        raise TypeError(f"{where}: {_name(value)}({factory_amount!r}) returned {method!r}, not a pruning method")
    return method


def _name(value: Any) -> str:
    return getattr(value, "__qualname__", None) or repr(value)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One leaf that a rule prunes: its position among the leaves, its path,
    the rule value as written, the method it stands for, and the pattern."""

    index: int
    path: str
    value: Any
    method: PruningMethod
    pattern: str | None

    @property
    def where(self) -> str:
        return f"rule {self.pattern!r} for {self.path!r}" if self.pattern else f"rule for {self.path!r}"

    @property
    def key_name(self) -> str:
        """The name this leaf's random key is derived from."""
        return self.method.key_name or self.path


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which method prunes which leaf: leaves pruned alone, then groups of
    leaves ranked together (in the leaves' order within each group)."""

    singles: tuple[Assignment, ...]
    groups: tuple[tuple[Assignment, ...], ...]

    @property
    def assignments(self) -> tuple[Assignment, ...]:
        return tuple(sorted(self.singles + tuple(a for g in self.groups for a in g), key=lambda a: a.index))

    @property
    def is_random(self) -> bool:
        return any(a.method.is_random for a in self.assignments)


def plan(
    named: Sequence[tuple[str, Any]],
    rules: Mapping[str, Any] | Callable[[str, Any], Any],
    *,
    factory_amount: Any = None,
) -> Plan:
    """Resolve ``rules`` over the ``(path, leaf)`` pairs and validate the result.

    ``rules`` is ``{pattern: value}`` (first match wins; see
    :func:`match_patterns`) or a callable ``(path, leaf) -> value | None``.
    Raises at once, before any tracing: two leaves with one path
    (``ValueError``), a pattern that matches nothing or never applies
    (``ValueError``), a value that is not a method (``TypeError``), a rule for
    a leaf that is not a floating array (``TypeError``), a leaf the method
    cannot prune (``IndexError``/``ValueError``, as the methods), a group whose
    leaves carry different rules (``ValueError``).
    """
    paths = [path for path, _ in named]
    _check_unique(paths)
    if isinstance(rules, Mapping):
        hits = [(i, p, v) for i, p, v in match_patterns(paths, rules) if v is not None]
    elif callable(rules):
        hits = [(i, None, v) for i, (path, leaf) in enumerate(named) if (v := rules(path, leaf)) is not None]
    else:
        raise TypeError(
            f"rules must be a dict of pattern -> method or a callable (path, leaf) -> method, got {rules!r}"
        )

    singles: list[Assignment] = []
    groups: dict[Hashable, list[Assignment]] = {}
    for index, pattern, value in hits:
        path, leaf = named[index]
        where = f"rule {pattern!r} for {path!r}" if pattern else f"rule for {path!r}"
        method = as_method(value, where, factory_amount=factory_amount)
        _check_leaf(method, leaf, where)
        a = Assignment(index, path, value, method, pattern)
        group = method.group_of(pattern)
        if group is None:
            singles.append(a)
        else:
            groups.setdefault(group, []).append(a)
    for members in groups.values():
        first = members[0]
        for other in members[1:]:
            if other.method != first.method:
                raise ValueError(f"{other.where} joins the group of {first.where} with another rule "
                                 f"({other.method!r} vs {first.method!r}); one group takes one rule")
    return Plan(tuple(singles), tuple(tuple(g) for g in groups.values()))


def _check_unique(paths: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for index, path in enumerate(paths):
        if path in seen:
            raise ValueError(f"two leaves have the path {path!r} (leaves {seen[path]} and {index}): paths are "
                             "dotted keys, so {'a.b': x} and {'a': {'b': y}} collide; rename one")
        seen[path] = index


def _check_leaf(method: PruningMethod, leaf: Any, where: str) -> None:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{where}: only floating parameters can be pruned, got dtype {dtype}")
    try:
        method.check_leaf(tuple(leaf.shape))
    except (IndexError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None


def check_key_for(p: Plan, key: Any) -> None:
    """Refuse a missing key when a rule of ``p`` is random."""
    if key is None:
        for a in p.assignments:
            if a.method.is_random:
                raise KeyRequiredError(f"{a.where} is random ({a.method!r}): pass a PRNG key "
                                       "(jax.random.key(seed))")


# --------------------------------------------------------------------------
# The one mask loop
# --------------------------------------------------------------------------

#: ``amount(method, default_masks) -> amount``: what a schedule sets for one
#: leaf (a list of one mask) or one group (its masks, in order).
AmountFn = Callable[[PruningMethod, Sequence[Any]], Any]


def compute_masks(
    p: Plan,
    key: Any,
    leaves: Sequence[Any],
    *,
    default_masks: Sequence[Any],
    scores: Sequence[Any] | None = None,
    extra: Mapping[str, Sequence[Any]] | None = None,
    amount: AmountFn | None = None,
) -> list[Any]:
    """The masks of ``p`` over ``leaves`` (None where no rule applies).

    ``default_masks``, ``scores`` and each ``extra[name]`` hold one entry per
    leaf (None = none). Each leaf pruned alone draws from
    ``leaf_key(key, its key name)``; a group's method derives its leaves' keys.
    With ``amount``, each method first gets the amount it returns.
    """
    scores = scores if scores is not None else [None] * len(leaves)
    extra = extra or {}
    masks: list[Any] = [None] * len(leaves)
    words = _plain_words(key)
    rngs, draw_keys, draw_sizes = _host_draws(words, p.singles, leaves, scores)
    with _host.precomputed_bits(draw_keys, draw_sizes):
        for a in p.singles:
            method = _with_amount(a.method, amount, [default_masks[a.index]])
            target: Any = leaves[a.index] if scores[a.index] is None else scores[a.index]
            # Only a method that draws (is_random) gets a key: deriving one per leaf
            # costs more than a small deterministic mask.
            rng: Any = None if key is None or not method.is_random else rngs.get(a.index)
            if rng is None and key is not None and method.is_random:
                rng = _leaf_rng(key, words, a, method, target)
            kwargs = {name: _extra_for(extra, name, a) for name in method.extra_args}
            masks[a.index] = method.compute_mask(rng, target, default_masks[a.index], **kwargs)
    for members in p.groups:
        method = _with_amount(members[0].method, amount, [default_masks[a.index] for a in members])
        out = method.group_masks(key, Group(
            [a.path for a in members],
            [leaves[a.index] for a in members],
            [scores[a.index] for a in members],
            [default_masks[a.index] for a in members],
        ))
        for a, mask in zip(members, out):
            masks[a.index] = mask
    return masks


def _plain_words(key: Any) -> tuple[int, int] | None:
    """The words of ``key`` when a plain ``uint32[2]`` array of them is the
    same key to jax (a threefry key while jax's default PRNG is threefry),
    else None."""
    if key is None or "threefry" not in str(jax.config.jax_default_prng_impl):  # pyright: ignore
        return None
    return _host.threefry_key(key)


def _leaf_rng(key: Any, words: tuple[int, int] | None, a: Assignment, method: PruningMethod, target: Any) -> Any:
    """``leaf_key(key, a.key_name)``; for jaxprune's own random methods on a
    NumPy array, as the plain ``uint32[2]`` array of its words: the same draws
    (see :func:`_plain_words`) without a typed key made per leaf, which is a
    jax dispatch each (the method reads the words back in NumPy)."""
    if words is None or type(method) not in (RandomStructured, RandomUnstructured) or not isinstance(target,
                                                                                                    np.ndarray):
        return leaf_key(key, a.key_name)
    return np.array(_host.fold_in(words, path_hash(a.key_name)), np.uint32)


# A leaf with at most this many draws has them made with the others' (NumPy's
# ~110 calls of a pass cost about as much as 4K draws); a bigger one makes its own.
_BATCH_DRAWS_MAX = 1 << 12


def _host_draws(
    words: tuple[int, int] | None, singles: Sequence[Assignment], leaves: Sequence[Any], scores: Sequence[Any]
) -> tuple[dict[int, np.ndarray], list[tuple[int, int]], list[int]]:
    """For jaxprune's own random methods on NumPy leaves (those :func:`_leaf_rng`
    gives the plain words of their leaf key): ``{leaf index: its key as
    uint32[2]}``, derived in one pass for all, and the ``(key words, count)``
    of the draws each will ask :func:`_host.random_bits` for, when few
    (:func:`_host.precomputed_bits` makes them all in one pass). A leaf the
    method then prunes another way just leaves its draws unused."""
    found = [] if words is None else [
        (a, target) for a in singles if type(a.method) in (RandomStructured, RandomUnstructured)
        and isinstance(target := leaves[a.index] if scores[a.index] is None else scores[a.index], np.ndarray)]
    if not found:
        return {}, [], []
    assert words is not None
    leaf_words = _host.fold_in_many(words, [path_hash(a.key_name) for a, _ in found])
    rngs = {a.index: np.array(w, np.uint32) for (a, _), w in zip(found, leaf_words)}
    draw_keys, draw_sizes = [], []
    for (a, target), w in zip(found, leaf_words):
        n = _draw_count(a.method, target.shape)
        if n is not None and n <= _BATCH_DRAWS_MAX:
            draw_keys.append(w)
            draw_sizes.append(n)
    return rngs, draw_keys, draw_sizes


def _draw_count(method: PruningMethod, shape: tuple[int, ...]) -> int | None:
    """How many draws ``method`` (RandomStructured or RandomUnstructured) makes for a leaf of ``shape``."""
    if isinstance(method, RandomUnstructured):
        return math.prod(shape)
    dim = method.dim  # type: ignore[attr-defined] - a RandomStructured
    if len(shape) < 2 or not isinstance(dim, int) or not -len(shape) <= dim < len(shape):
        return None  # (the method refuses the leaf)
    return shape[dim]


def _with_amount(method: PruningMethod, amount: AmountFn | None, masks: Sequence[Any]) -> PruningMethod:
    if amount is None or not method.has_amount:
        return method
    return method.with_amount(amount(method, masks))


def _extra_for(extra: Mapping[str, Sequence[Any]], name: str, a: Assignment) -> Any:
    values = extra.get(name)
    value = None if values is None else values[a.index]
    if value is None:
        raise ValueError(f"{a.where}: {a.method!r} needs the extra input {name!r} for {a.path!r}, and none was given")
    return value


def extra_leaves(tree: PyTree, paths: Sequence[str], extra: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """Per-leaf extra inputs. Each value is a tree like ``tree`` (None where
    absent) or a dict ``{path: array}`` over some of its paths."""
    out: dict[str, list[Any]] = {}
    structure = jax.tree.structure(tree, is_leaf=_is_none)
    for name, value in (extra or {}).items():
        if jax.tree.structure(value, is_leaf=_is_none) == structure:
            out[name] = leaves_like(tree, value, f"extra input {name!r}")
        elif isinstance(value, Mapping) and set(value) <= set(paths):
            out[name] = [value.get(path) for path in paths]
        else:
            raise ValueError(f"extra input {name!r} must be a tree like the parameters (None where absent) or a "
                             f"dict {{path: array}} over their paths, got {jax.tree.structure(value)}")
    return out


def _is_none(x: Any) -> bool:
    return x is None
