"""The rule grammar, ``PATTERN[QUALIFIER]=SPEC``, written once.

:data:`METHODS` is the one table of the methods a SPEC can name: parsing,
building the library's method, the ``--help`` text and the README's
grammar (:func:`grammar`) all come from it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

import jaxprune as jp

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclasses.dataclass(frozen=True)
class Method:
    """A method a SPEC can name: its grammar, and how it builds the library's method."""

    name: str
    usage: str  # the SPEC form shown in the help
    summary: str
    build: Callable[[Any, Mapping[str, Any]], jp.PruningMethod | None]
    amount: bool = True  # takes an amount (required unless --global)
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    structured: bool = False  # counts slices along dim, not entries
    random: bool = False  # draws from the seed's key
    global_ok: bool = False  # --global can rank it
    positionals: tuple[str, ...] = ()  # integers right after the name (nm:N:M), instead of an amount


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("l1", "l1:AMOUNT", "L1 unstructured: the entries of smallest |w|", lambda a, o: jp.L1Unstructured(a),
           aliases=("l1-unstructured",), global_ok=True),
    Method("random", "random:AMOUNT", "random entries", lambda a, o: jp.RandomUnstructured(a),
           aliases=("random-unstructured",), random=True, global_ok=True),
    Method("random-structured", "random-structured:AMOUNT[:dim=D]", "random slices along dim (default -1, as torch)",
           lambda a, o: jp.RandomStructured(a, dim=o.get("dim", -1)), options=("dim",), structured=True,
           random=True),
    Method("ln-structured", "ln-structured:AMOUNT:n=N[:dim=D]",
           "the slices of lowest n-norm; N is a number, inf, -inf, fro or nuc",
           lambda a, o: jp.LnStructured(a, n=o["n"], dim=o.get("dim", -1)), options=("n", "dim"),
           required=("n",), structured=True),
    Method("nm", "nm:N:M[:axis=A]",
           "the N largest |w| of every M along axis A (an int, torch or flax; default 1)",
           lambda a, o: jp.NMSparse(o["n"], o["m"], axis=o.get("axis", 1)), amount=False, options=("axis",),
           positionals=("n", "m")),
    Method("block", "block:AMOUNT:block=BxB[:reduce=R]",
           "whole blocks (one extent per dim) of lowest l1 (default), l2 or max",
           lambda a, o: jp.BlockSparse(a, o["block"], reduce=o.get("reduce", "l1")), options=("block", "reduce"),
           required=("block",)),
    Method("identity", "identity", "prunes nothing (an all-True mask, as torch's)", lambda a, o: jp.Identity(),
           amount=False),
    Method("skip", "skip", "leave the tensors this pattern matches alone", lambda a, o: None, amount=False),
)}
_ALIASES = {alias: m.name for m in METHODS.values() for alias in m.aliases}

_NDIM_OPS: dict[str, Callable[[int, int], bool]] = {
    "=": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
_QUALIFIED = re.compile(r"(?P<glob>[^=]*?)\[ndim(?P<op>!=|>=|<=|=|>|<)(?P<n>[0-9]+)\]")


def grammar() -> str:
    """The rule grammar as the help and the README print it (from :data:`METHODS`)."""
    width = max(len(m.usage) for m in METHODS.values()) + 2
    lines = ["--rule PATTERN[ndim=N]=SPEC, SPEC is METHOD[:AMOUNT][:key=value...], one of:", ""]
    for m in METHODS.values():
        alias = f" (alias {', '.join(m.aliases)})" if m.aliases else ""
        lines.append(f"  {m.usage.ljust(width)}{m.summary}{alias}")
    lines += [
        "",
        "AMOUNT is an integer count of units (l1:3, three entries) or, with a '.' or an",
        "exponent, a fraction (l1:0.5, half). PATTERN is a glob over tensor names ('*'",
        "crosses dots); the first matching rule wins, and a rule that matches nothing,",
        "or never wins, is an error. [ndim=N] (also !=, >=, <=, >, <) restricts a rule",
        "to tensors of that many dimensions: '*.weight[ndim=4]=ln-structured:0.3:n=2:dim=0'",
        "prunes conv kernels and leaves BatchNorm weights to a later rule.",
    ]
    return "\n".join(lines)


def parse_amount(text: str) -> int | float:
    """An AMOUNT: an integer literal is a count, a decimal or exponent literal a fraction.

    >>> parse_amount("3"), parse_amount("0.5"), parse_amount("1e-1")
    (3, 0.5, 0.1)
    """
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    raise ValueError(f"amount {text!r} is not a number (an integer count like 3, or a fraction like 0.3)")


def _parse_norm(text: str) -> int | float | str:
    low = text.strip().lower()
    if low in ("inf", "+inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low in ("fro", "nuc"):
        return low
    try:
        return parse_amount(low)
    except ValueError:
        raise ValueError(f"n={text!r} is not a norm order (a number, inf, -inf, fro or nuc)") from None


def _parse_dim(text: str) -> int:
    if not _INT.fullmatch(text.strip()):
        raise ValueError(f"dim={text!r} is not an integer")
    return int(text)


def _parse_axis(text: str) -> int | str:
    low = text.strip().lower()
    if low in ("torch", "flax"):
        return low
    if not _INT.fullmatch(low):
        raise ValueError(f"axis={text!r} is not an integer, torch or flax")
    return int(low)


def parse_block(text: str) -> tuple[int, ...]:
    parts = text.strip().lower().split("x")
    if not all(_INT.fullmatch(p.strip()) for p in parts):
        raise ValueError(f"block={text!r} is not a block shape such as 4x4 (one extent per dim, 1 = not blocked)")
    return tuple(int(p) for p in parts)


def _parse_reduce(text: str) -> str:
    return text.strip().lower()


_OPTION_PARSERS: dict[str, Callable[[str], Any]] = {
    "n": _parse_norm, "dim": _parse_dim, "axis": _parse_axis, "block": parse_block, "reduce": _parse_reduce,
}


def _split_positionals(where: str, method: Method, rest: list[str]) -> tuple[dict[str, int], list[str]]:
    """``nm:2:4``'s integers, in :attr:`Method.positionals` order."""
    count = len(method.positionals)
    given = [p.strip() for p in rest[:count]]
    if len(given) < count or any("=" in p for p in given):
        names = ":".join(p.upper() for p in method.positionals)
        raise ValueError(f"{where}: {method.name} needs {names}, e.g. {method.name}:2:4")
    for name, text in zip(method.positionals, given):
        if not _INT.fullmatch(text):
            raise ValueError(f"{where}: {name.upper()}={text!r} is not an integer")
    return {name: int(text) for name, text in zip(method.positionals, given)}, rest[count:]


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed SPEC: its text, method, amount (None when absent) and options."""

    text: str
    method: Method
    amount: int | float | None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def dim(self) -> int:
        return int(dict(self.options).get("dim", -1))

    def build(self) -> jp.PruningMethod | None:
        """The library's method (None for ``skip``); it validates the amount and options."""
        return self.method.build(self.amount, dict(self.options))


def _split_amount(where: str, method: Method, rest: list[str], needs_amount: bool) -> tuple[Any, list[str]]:
    if rest and "=" not in rest[0]:
        if not method.amount:
            raise ValueError(f"{where}: {method.name} takes no amount, got {rest[0]!r}")
        try:
            return parse_amount(rest[0]), rest[1:]
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    if method.amount and needs_amount:
        raise ValueError(f"{where}: {method.name} needs an amount, e.g. {method.name}:0.3 (a fraction) or "
                         f"{method.name}:10 (a count)")
    return None, rest


def _parse_options(where: str, method: Method, parts: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise ValueError(f"{where}: expected key=value after the amount, got {part!r}")
        if key not in method.options:
            takes = f"takes {', '.join(method.options)}" if method.options else "takes no options"
            raise ValueError(f"{where}: unknown option {key!r} ({method.name} {takes})")
        if key in options:
            raise ValueError(f"{where}: option {key!r} given twice")
        try:
            options[key] = _OPTION_PARSERS[key](value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    for key in method.required:
        if key not in options:
            raise ValueError(f"{where}: {method.name} needs {key}=..., e.g. {method.name}:0.3:n=2:dim=0")
    return options


def parse_spec(text: str, *, needs_amount: bool = True) -> Spec:
    """Parse ``METHOD[:AMOUNT][:key=value...]``; raise ``ValueError`` naming the SPEC.

    ``needs_amount=False`` (under ``--global``) accepts a method without an amount.

    >>> spec = parse_spec("ln-structured:0.3:n=2:dim=0")
    >>> spec.method.name, spec.amount, dict(spec.options)
    ('ln-structured', 0.3, {'n': 2, 'dim': 0})
    >>> spec.build()
    LnStructured(amount=0.3, n=2, dim=0)
    >>> parse_spec("l1:0.5:dim=0")
    Traceback (most recent call last):
    ...
    ValueError: SPEC 'l1:0.5:dim=0': unknown option 'dim' (l1 takes no options)
    """
    where = f"SPEC {text!r}"
    parts = text.strip().split(":")
    name = parts[0].strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    if name not in METHODS:
        known = ", ".join([*METHODS, *_ALIASES])
        raise ValueError(f"{where}: unknown method {parts[0].strip()!r} (known: {known})")
    method = METHODS[name]
    positional, rest = _split_positionals(where, method, parts[1:])
    amount, rest = _split_amount(where, method, rest, needs_amount)
    options = {**positional, **_parse_options(where, method, rest)}
    spec = Spec(text.strip(), method, amount, tuple(options.items()))
    if amount is not None or not method.amount:
        try:
            spec.build()  # the library validates amount, dim type and n
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None
    return spec


class Pattern(str):
    """A rule's glob (what the matcher sees), with an optional ``ndim`` qualifier.

    Equal globs with other qualifiers are distinct rules, so the qualifier is
    part of equality, hashing and the repr that error messages show.
    """

    text: str
    ndim: tuple[str, int] | None

    def __new__(cls, glob: str, ndim: tuple[str, int] | None = None) -> Pattern:
        self = super().__new__(cls, glob)
        self.ndim = ndim
        self.text = glob if ndim is None else f"{glob}[ndim{ndim[0]}{ndim[1]}]"
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and (str(self), self.ndim) == (str(other), other.ndim)

    def __hash__(self) -> int:
        return hash((str(self), self.ndim))

    def __repr__(self) -> str:
        return repr(self.text)

    def admits(self, ndim: int) -> bool:
        """Whether a tensor of ``ndim`` dimensions passes the qualifier."""
        return self.ndim is None or _NDIM_OPS[self.ndim[0]](ndim, self.ndim[1])


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ``--rule PATTERN[ndim=N]=SPEC``."""

    pattern: Pattern
    spec: Spec

    @property
    def text(self) -> str:
        return f"{self.pattern.text}={self.spec.text}"


def parse_rule(text: str, *, needs_amount: bool = True) -> Rule:
    """``PATTERN[ndim=N]=SPEC`` (the qualifier is optional).

    >>> rule = parse_rule("*.weight[ndim=4]=random-structured:0.25:dim=0")
    >>> rule.pattern.text, rule.pattern.admits(4), rule.pattern.admits(1), rule.spec.build()
    ('*.weight[ndim=4]', True, False, RandomStructured(amount=0.25, dim=0))
    """
    head = _QUALIFIED.match(text)
    if head is not None and text[head.end():].startswith("="):
        pattern = Pattern(head["glob"].strip(), (head["op"], int(head["n"])))
        spec = text[head.end() + 1:]
    else:
        glob, eq, spec = text.partition("=")
        if not eq:
            spec = ""
        if "[ndim" in glob:
            raise ValueError(f"--rule {text!r}: a qualifier is [ndim=N] (or !=, >=, <=, >, <) right before "
                             "'=SPEC', e.g. '*.weight[ndim=4]=l1:0.5'")
        pattern = Pattern(glob.strip())
    if not str(pattern) or not spec.strip():
        raise ValueError(f"--rule {text!r}: expected PATTERN=SPEC, e.g. '*.weight=l1:0.5'")
    return Rule(pattern, parse_spec(spec, needs_amount=needs_amount))
