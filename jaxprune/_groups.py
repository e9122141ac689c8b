"""Channel groups read from a jaxpr: which parameter axes index the same channels.

The function is traced once to a jaxpr (shapes only). Every axis of every value
in it is described by *atoms*: an axis of size 12 that a reshape splits into
(3, 4) is the product of a 3-atom and a 4-atom, in row-major order; an axis made
by concatenating a 5-axis and a 7-axis is the sum of a 5-atom and a 7-atom.
Atoms are classes of a union-find: each primitive says which atoms of its
operands and results are the same channels (a matmul's contracted axes, the
two sides of a residual add, a bias broadcast onto a feature axis), and unifying
two axes that are cut differently refines both to their common cut.

At the end, every atom class that indexes an axis of at least one parameter is a
candidate group. It is *fixed* (dropped, with the reason) when its channels
reach the function's inputs or outputs, a constant array, or an operation the
analysis does not know. It is *inexact* when removing its channels computes
something else than masking them: a reduction over the channels (LayerNorm's
mean, softmax), a contraction with values that masking does not zero, or a
scale equal to 1/sqrt(size) (attention's head dimension). The answer is
conservative: an unknown case never yields an exact group.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import tree_util
from jax.extend.core import Literal

from ._group_types import ChannelGroup, ChannelGroups, DroppedGroup, Member, signature_of
from ._trees import path_str

# ---------------------------------------------------------------------------
# Atoms: a union-find whose classes can be refined into products or sums.


@dataclasses.dataclass
class _Split:
    kind: str  # "prod" (row-major factors) or "sum" (concatenated ranges)
    children: list[int]


class _Atoms:
    """Union-find over atoms; a class root may carry a refinement into sub-atoms."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.split: dict[int, _Split] = {}
        self.fixed: list[tuple[int, str]] = []  # (atom, reason), read at the end
        self.inexact: list[tuple[int, str]] = []

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def leaves(self, a: int) -> list[int]:
        """The product factors of ``a``, outermost first (a sum-refined atom is one factor)."""
        a = self.find(a)
        split = self.split.get(a)
        if split is None or split.kind == "sum":
            return [a]
        return [leaf for child in split.children for leaf in self.leaves(child)]

    def roots(self, a: int) -> list[int]:
        """Every unrefined class inside ``a`` (through products and sums)."""
        a = self.find(a)
        split = self.split.get(a)
        if split is None:
            return [a]
        return [root for child in split.children for root in self.roots(child)]

    def refine(self, a: int, kind: str, sizes: Sequence[int]) -> list[int]:
        a = self.find(a)
        children = [self.new(s) for s in sizes]
        self.split[a] = _Split(kind, children)
        return children

    def _adopt(self, a: int, b: int) -> None:
        """Make ``b`` (unrefined) part of ``a``'s class."""
        self.parent[b] = a

    def unify(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] != self.size[b]:  # a bug in a rule, never the user's input
            raise AssertionError(f"unify atoms of sizes {self.size[a]} and {self.size[b]}")
        sa, sb = self.split.get(a), self.split.get(b)
        if sb is None:
            self._adopt(a, b)
        elif sa is None:
            self._adopt(b, a)
        elif sa.kind == sb.kind == "prod":
            self.unify_product(self.leaves(a), self.leaves(b))
            self._adopt(a, b)
        elif sa.kind == sb.kind == "sum":
            self.unify_sum(sa.children, sb.children)
            self._adopt(a, b)
        else:
            reason = "an axis is both concatenated and reshaped in ways the analysis cannot align"
            self.fixed += [(a, reason), (b, reason)]
            self._adopt(a, b)

    def unify_product(self, left: Sequence[int], right: Sequence[int]) -> None:
        """Unify two row-major factor sequences of equal product, cutting factors as needed."""
        self._unify_sequences(list(left), list(right), "prod")

    def unify_sum(self, left: Sequence[int], right: Sequence[int]) -> None:
        """Unify two sequences of concatenated ranges of equal total length."""
        self._unify_sequences(list(left), list(right), "sum")

    def _unify_sequences(self, left: list[int], right: list[int], kind: str) -> None:
        left, right = left[::-1], right[::-1]  # stacks: pop() takes the outermost / first
        while left and right:
            a, b = self._pop(left, kind), self._pop(right, kind)
            sa, sb = self.size[a], self.size[b]
            if sa == sb:
                self.unify(a, b)
                continue
            big, small, rest = (a, b, left) if sa > sb else (b, a, right)
            cut = self._cut(big, min(sa, sb), max(sa, sb), kind)
            if cut is None:
                reason = f"an axis of {max(sa, sb)} is cut at {min(sa, sb)} across another cut"
                for atom in [a, b, *left, *right]:
                    self.fixed.append((atom, reason))
                return
            self.unify(cut[0], small)
            rest.append(cut[1])
        if left or right:  # sizes of 1 are left out on both sides, so this is a rule's bug
            raise AssertionError("sequences of unequal size")

    def _pop(self, stack: list[int], kind: str) -> int:
        """The next unrefined (for this kind) atom of a stack, expanding refined ones in place."""
        while True:
            a = self.find(stack.pop())
            split = self.split.get(a)
            if split is None or split.kind != kind:
                return a
            stack.extend(reversed(split.children))

    def _cut(self, a: int, first: int, total: int, kind: str) -> tuple[int, int] | None:
        """Split atom ``a`` (size ``total``) into (first, rest) of the given kind; None if refined otherwise."""
        if a in self.split:
            return None
        if kind == "prod":
            if total % first:
                return None
            children = self.refine(a, "prod", [first, total // first])
        else:
            children = self.refine(a, "sum", [first, total - first])
        return children[0], children[1]


# ---------------------------------------------------------------------------
# Reading a jaxpr: every value gets atoms per axis; primitives unify them.

Axes = tuple[tuple[int, ...], ...]  # per axis, its row-major factors (empty for a size-1 axis)


@dataclasses.dataclass
class _Instr:
    """One primitive application, with values numbered (sub-jaxprs are inlined)."""

    name: str
    params: dict[str, Any]
    ins: list[int | None]  # value ids; None for a literal
    literals: list[Any]  # the literal's value where ins is None
    outs: list[int]


_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj complex convert_element_type
    copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma imag integer_pow
    is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or population_count pow
    real reduce_precision rem round rsqrt select_n shift_left shift_right_arithmetic shift_right_logical
    sign sin sinh sqrt square stop_gradient sub tan tanh xor clz optimization_barrier""".split()
)
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor".split())
_ARG_REDUCTIONS = frozenset(("argmax", "argmin"))
_REDUCTION_REASON = " over the channels (a mean, a norm's statistics, a softmax)"
_CONTRACTION_REASON = "contracted with values that masking does not zero"
_SCALE_REASON = "scaled by a constant that matches its size"
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_WINDOWED = frozenset(("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"))


class _Reader:
    def __init__(self) -> None:
        self.atoms = _Atoms()
        self.axes: list[Axes] = []
        self.shapes: list[tuple[int, ...]] = []
        self.program: list[_Instr] = []
        self.opaque: set[int] = set()  # values whose zeros are unknown (loop carries)

    # -- values --------------------------------------------------------------

    def value(self, shape: Sequence[int], axes: Axes | None = None) -> int:
        shape = tuple(int(d) for d in shape)
        if axes is None:
            axes = tuple((self.atoms.new(d),) if d > 1 else () for d in shape)
        self.shapes.append(shape)
        self.axes.append(axes)
        return len(self.axes) - 1

    def fix(self, value: int, reason: str, dims: Sequence[int] | None = None) -> None:
        for d, factors in enumerate(self.axes[value]):
            if dims is None or d in dims:
                self.atoms.fixed += [(a, reason) for a in factors]

    def unify_axis(self, x: tuple[int, ...], y: tuple[int, ...]) -> None:
        if len(x) == 1 and len(y) == 1:
            self.atoms.unify(x[0], y[0])
        elif x or y:
            self.atoms.unify_product(x, y)

    # -- jaxprs --------------------------------------------------------------

    def run(self, jaxpr: Any, ins: Sequence[int | None], consts: Sequence[Any] = ()) -> list[int | None]:
        """Read ``jaxpr`` (open) with its invars bound to value ids; returns its outvars' ids."""
        env: dict[Any, int] = {}
        for var in jaxpr.constvars:
            env[var] = self.value(var.aval.shape)
            self.fix(env[var], "a constant array closed over by the function")
        for var, vid in zip(jaxpr.invars, ins, strict=True):
            env[var] = vid if vid is not None else self.value(var.aval.shape)
        for eqn in jaxpr.eqns:
            in_ids = [None if isinstance(v, Literal) else env[v] for v in eqn.invars]
            out_ids = self.equation(eqn, in_ids)
            for var, vid in zip(eqn.outvars, out_ids, strict=True):
                env[var] = vid
        return [None if isinstance(v, Literal) else env[v] for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[int | None]) -> list[int]:
        name = eqn.primitive.name
        shapes = [tuple(v.aval.shape) if hasattr(v.aval, "shape") else () for v in eqn.outvars]
        rule = _RULES.get(name)
        if rule is None and name in _ELEMENTWISE:
            rule = _elementwise
        if rule is None and name in _REDUCTIONS | _ARG_REDUCTIONS:
            rule = _reduction
        if rule is None and name in _CUMULATIVE:
            rule = _cumulative
        if rule is None and name in _WINDOWED:
            rule = _windowed
        if rule is None:
            rule = _call if inner_jaxpr(eqn) is not None else _unknown
        outs = rule(self, eqn, ins, shapes)
        if rule not in (_call, _scan, _while, _cond):  # their inner equations are in the program
            literals = [v.val if isinstance(v, Literal) else None for v in eqn.invars]
            self.program.append(_Instr(name, dict(eqn.params), ins, literals, outs))
        return outs


def inner_jaxpr(eqn: Any) -> Any:
    """The sub-jaxpr of a call-like primitive (jit, remat, custom_jvp/vjp, closed_call), or None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if inner is None:
            continue
        jaxpr = getattr(inner, "jaxpr", inner)
        if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
            return inner
    return None


def _call(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    inner = inner_jaxpr(eqn)
    jaxpr = getattr(inner, "jaxpr", inner)
    outs = r.run(jaxpr, ins)
    return [vid if vid is not None else r.value(s) for vid, s in zip(outs, shapes, strict=True)]


def _unknown(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    reason = f"the primitive `{eqn.primitive.name}` is not known to the analysis"
    outs = [r.value(s) for s in shapes]
    for vid in [*ins, *outs]:
        if vid is not None:
            r.fix(vid, reason)
    return outs


def _elementwise(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    if eqn.primitive.name == "optimization_barrier":
        return [vid if vid is not None else r.value(s) for vid, s in zip(ins, shapes, strict=True)]
    (shape,) = shapes
    out = r.value(shape)
    for vid in ins:
        if vid is None or r.shapes[vid] == ():
            continue
        if len(r.shapes[vid]) != len(shape):
            return _unknown(r, eqn, ins, shapes)
        for n, x, y in zip(r.shapes[vid], r.axes[vid], r.axes[out], strict=True):
            if n > 1:  # a size-1 axis broadcasts
                r.unify_axis(x, y)
    return [out]


def _reduction(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    (vid,) = ins
    axes = tuple(int(a) for a in eqn.params["axes"])
    if vid is None:
        return [r.value(shapes[0])]
    kept = tuple(f for d, f in enumerate(r.axes[vid]) if d not in axes)
    reason = f"`{eqn.primitive.name}`{_REDUCTION_REASON}"
    r.atoms.inexact += [(a, reason) for d in axes for a in r.axes[vid][d]]
    return [r.value(shapes[0], kept)]


def _cumulative(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    (vid,) = ins
    if vid is None:
        return [r.value(shapes[0])]
    axis = int(eqn.params["axis"])
    reason = f"`{eqn.primitive.name}` along the channels"
    r.atoms.inexact += [(a, reason) for a in r.axes[vid][axis]]
    return [r.value(shapes[0], r.axes[vid])]


def _windowed(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    """Pooling: an axis with a window of 1, stride 1 and no padding passes through; others are fixed."""
    n = len(shapes)
    operands, outs = ins[:n], [r.value(s) for s in shapes]
    p = eqn.params
    dims = p["window_dimensions"]
    strides = p.get("window_strides", (1,) * len(dims))
    padding = p.get("padding", ((0, 0),) * len(dims))
    dilation = p.get("base_dilation", (1,) * len(dims))
    wdil = p.get("window_dilation", (1,) * len(dims))
    for d in range(len(dims)):
        passes = dims[d] == 1 and strides[d] == 1 and tuple(padding[d]) == (0, 0) and dilation[d] == wdil[d] == 1
        for vid, out in zip(operands, outs, strict=True):
            if vid is None:
                continue
            if passes:
                r.unify_axis(r.axes[vid][d], r.axes[out][d])
            else:
                r.fix(vid, "a pooling window along the axis", [d])
                r.fix(out, "a pooling window along the axis", [d])
    for vid in ins[n:]:  # init values are scalars
        if vid is not None:
            r.fix(vid, "a pooling window's initial value")
    return outs


def _broadcast_in_dim(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    out = r.value(shapes[0])
    if vid is not None:
        for i, d in enumerate(eqn.params["broadcast_dimensions"]):
            if r.shapes[vid][i] == shapes[0][d]:
                r.unify_axis(r.axes[vid][i], r.axes[out][int(d)])
    return [out]


def _blocks(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Consecutive dims of ``a`` and ``b`` with equal products (dims of size 1 left out)."""
    a_dims = [i for i, d in enumerate(a) if d != 1]
    b_dims = [i for i, d in enumerate(b) if d != 1]
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a_dims) or j < len(b_dims):
        left, right, pa, pb = [], [], 1, 1
        while True:
            if pa <= pb and i < len(a_dims):
                left.append(a_dims[i])
                pa *= a[a_dims[i]]
                i += 1
            elif j < len(b_dims):
                right.append(b_dims[j])
                pb *= b[b_dims[j]]
                j += 1
            else:
                return None
            if pa == pb:
                break
        blocks.append((left, right))
    return blocks


def _reshape(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    out = r.value(shapes[0])
    if vid is None:
        return [out]
    if eqn.params.get("dimensions") is not None:
        return _unknown(r, eqn, ins, shapes)
    blocks = _blocks(r.shapes[vid], shapes[0])
    if blocks is None:  # cannot happen for a valid reshape; be safe
        return _unknown(r, eqn, ins, shapes)
    for left, right in blocks:
        x = tuple(a for d in left for a in r.axes[vid][d])
        y = tuple(a for d in right for a in r.axes[out][d])
        r.unify_axis(x, y)
    return [out]


def _transpose(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    if vid is None:
        return [r.value(shapes[0])]
    return [r.value(shapes[0], tuple(r.axes[vid][int(p)] for p in eqn.params["permutation"]))]


def _squeeze(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    if vid is None:
        return [r.value(shapes[0])]
    dims = {int(d) % len(r.shapes[vid]) for d in eqn.params["dimensions"]}
    return [r.value(shapes[0], tuple(f for d, f in enumerate(r.axes[vid]) if d not in dims))]


def _rev(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    if vid is None:
        return [r.value(shapes[0])]
    dims = [int(d) for d in eqn.params["dimensions"]]
    r.fix(vid, "an axis reversed (`rev`)", dims)
    return [r.value(shapes[0], r.axes[vid])]


def _dot_general(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    if lhs is None or rhs is None:
        return _unknown(r, eqn, ins, shapes)
    la, ra = r.axes[lhs], r.axes[rhs]
    for i, j in zip(lc, rc, strict=True):
        r.unify_axis(la[int(i)], ra[int(j)])
    for i, j in zip(lb, rb, strict=True):
        r.unify_axis(la[int(i)], ra[int(j)])
    lhs_free = [f for d, f in enumerate(la) if d not in {int(x) for x in (*lc, *lb)}]
    rhs_free = [f for d, f in enumerate(ra) if d not in {int(x) for x in (*rc, *rb)}]
    batch = [la[int(i)] for i in lb]
    return [r.value(shapes[0], tuple(batch + lhs_free + rhs_free))]


def _conv(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    p = eqn.params
    lhs, rhs = ins[:2]
    out = r.value(shapes[0])
    if lhs is None or rhs is None or p["batch_group_count"] != 1:
        return _unknown(r, eqn, ins, shapes)
    dn = p["dimension_numbers"]
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    la, ra, oa = r.axes[lhs], r.axes[rhs], r.axes[out]
    reason = "a convolution's spatial axis"
    r.fix(lhs, reason, list(lspec[2:]))
    r.fix(rhs, reason, list(rspec[2:]))
    r.fix(out, reason, list(ospec[2:]))
    r.unify_axis(la[lspec[0]], oa[ospec[0]])  # batch
    groups = int(p["feature_group_count"])
    in_per_group = r.shapes[rhs][rspec[1]]
    out_features = r.shapes[rhs][rspec[0]]
    if groups == 1:
        r.unify_axis(la[lspec[1]], ra[rspec[1]])
    else:
        # lhs features = (groups, in_per_group); rhs out features = (groups, out_per_group):
        # a grouped (depthwise) convolution ties each group's inputs to its outputs.
        g = r.atoms.new(groups)
        cg = tuple(r.atoms.new(in_per_group) for _ in [0] if in_per_group > 1)
        og = tuple(r.atoms.new(out_features // groups) for _ in [0] if out_features // groups > 1)
        r.unify_axis(la[lspec[1]], (g, *cg))
        r.unify_axis(ra[rspec[1]], cg)
        r.unify_axis(ra[rspec[0]], (g, *og))
    r.unify_axis(ra[rspec[0]], oa[ospec[1]])
    return [out]


def _concatenate(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    dim = int(eqn.params["dimension"])
    out = r.value(shapes[0])
    parts = []
    for vid in ins:
        if vid is None:
            return _unknown(r, eqn, ins, shapes)
        for d, (x, y) in enumerate(zip(r.axes[vid], r.axes[out], strict=True)):
            if d != dim:
                r.unify_axis(x, y)
        parts.append((r.shapes[vid][dim], r.axes[vid][dim]))
    parts = [(n, f) for n, f in parts if n > 0]
    _concat_axis(r, r.axes[out][dim], parts)
    return [out]


def _concat_axis(r: _Reader, axis: tuple[int, ...], parts: list[tuple[int, tuple[int, ...]]]) -> None:
    """Tie ``axis`` to the concatenation of ``parts`` (size, factors)."""
    if len(parts) == 1:
        r.unify_axis(axis, parts[0][1])
        return
    total = sum(n for n, _ in parts)
    whole = r.atoms.new(total)
    segments = r.atoms.refine(whole, "sum", [n for n, _ in parts])
    for seg, (n, factors) in zip(segments, parts, strict=True):
        if n > 1:
            r.unify_axis((seg,), factors)
    r.unify_axis(axis, (whole,))


def _slice_axis(r: _Reader, axis: tuple[int, ...], length: int, start: int, size: int) -> tuple[int, ...] | None:
    """The factors of ``axis[start:start + size]``, or None when the cut is not a range of channels."""
    if size == length:
        return axis
    if len(axis) != 1 or len(r.atoms.leaves(axis[0])) != 1:
        return None  # a range of a reshaped axis is not a range of channels
    pieces = [n for n in (start, size, length - start - size) if n > 0]
    whole = r.atoms.new(length)
    segments = r.atoms.refine(whole, "sum", pieces)
    r.unify_axis(axis, (whole,))
    mid = segments[1] if start > 0 else segments[0]
    return (mid,) if size > 1 else ()


def _slice(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    p = eqn.params
    if vid is None:
        return [r.value(shapes[0])]
    strides = p.get("strides") or (1,) * len(shapes[0])
    axes = []
    for d, (lo, hi, st) in enumerate(zip(p["start_indices"], p["limit_indices"], strides, strict=True)):
        length = r.shapes[vid][d]
        if st != 1 and hi - lo > 1:
            r.fix(vid, "a strided slice", [d])
            axes.append(tuple(r.atoms.new(n) for n in [shapes[0][d]] if n > 1))
            continue
        cut = _slice_axis(r, r.axes[vid][d], length, int(lo), int(hi - lo)) if length > 1 else ()
        if cut is None:
            r.fix(vid, "a slice that cuts across a reshaped axis", [d])
            cut = tuple(r.atoms.new(n) for n in [shapes[0][d]] if n > 1)
        axes.append(cut)
    return [r.value(shapes[0], tuple(axes))]


def _split(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    if vid is None:
        return [r.value(s) for s in shapes]
    axis = int(eqn.params["axis"])
    sizes = [int(s) for s in eqn.params["sizes"]]
    outs = [r.value(s) for s in shapes]
    for d, x in enumerate(r.axes[vid]):
        if d != axis:
            for out in outs:
                r.unify_axis(x, r.axes[out][d])
    _concat_axis(r, r.axes[vid][axis], [(n, r.axes[o][axis]) for n, o in zip(sizes, outs, strict=True) if n > 0])
    return outs


def _pad(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    vid = ins[0]
    out = r.value(shapes[0])
    if vid is None:
        return [out]
    for d, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        if (lo, hi, interior) == (0, 0, 0):
            r.unify_axis(r.axes[vid][d], r.axes[out][d])
        else:
            r.fix(vid, "a padded axis", [d])
            r.fix(out, "a padded axis", [d])
    return [out]


def _iota(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    out = r.value(shapes[0])
    r.fix(out, "positions computed with `iota` (an index along the axis)")
    return [out]


def _gather(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    """Embedding lookups: operand axes taken whole pass to the output; indexed axes are fixed."""
    operand, indices = ins
    out = r.value(shapes[0])
    dn = eqn.params["dimension_numbers"]
    if operand is None or indices is None or dn.operand_batching_dims:
        return _unknown(r, eqn, ins, shapes)
    slice_sizes = eqn.params["slice_sizes"]
    indexed = set(dn.start_index_map) | set(dn.collapsed_slice_dims)
    offset = iter(dn.offset_dims)
    for d, factors in enumerate(r.axes[operand]):
        whole = slice_sizes[d] == r.shapes[operand][d] and d not in indexed
        if d not in dn.collapsed_slice_dims:
            o = next(offset)
            if whole:
                r.unify_axis(factors, r.axes[out][o])
            else:
                r.fix(out, "an axis indexed by a gather", [o])
        if not whole:
            r.fix(operand, "an axis indexed by a gather (embedding rows, a lookup)", [d])
    batch_out = [d for d in range(len(shapes[0])) if d not in dn.offset_dims]
    index_axes = list(r.axes[indices][:-1])  # the last axis holds the index vector
    if len(index_axes) == len(batch_out):
        for d, factors in zip(batch_out, index_axes, strict=True):
            r.unify_axis(factors, r.axes[out][d])
    else:
        r.fix(out, "a gather's batch axes", batch_out)
        r.fix(indices, "a gather's indices")
    return [out]


def _dynamic_slice(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    operand = ins[0]
    out = r.value(shapes[0])
    if operand is None:
        return [out]
    for d, n in enumerate(shapes[0]):
        if n == r.shapes[operand][d]:
            r.unify_axis(r.axes[operand][d], r.axes[out][d])
        else:
            r.fix(operand, "a dynamic slice along the axis", [d])
            r.fix(out, "a dynamic slice along the axis", [d])
    return [out]


def _dynamic_update_slice(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    operand, update = ins[:2]
    out = r.value(shapes[0])
    for d, n in enumerate(shapes[0]):
        same = update is not None and r.shapes[update][d] == n
        for vid in (operand, update):
            if vid is None:
                continue
            if same:
                r.unify_axis(r.axes[vid][d], r.axes[out][d])
            else:
                r.fix(vid, "a dynamic update along the axis", [d])
        if not same:
            r.fix(out, "a dynamic update along the axis", [d])
    return [out]


def _sort(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    dim = int(eqn.params["dimension"])
    outs = [r.value(s) for s in shapes]
    for vid, out in zip(ins, outs, strict=True):
        if vid is None:
            continue
        for d, (x, y) in enumerate(zip(r.axes[vid], r.axes[out], strict=True)):
            if d == dim:
                r.fix(vid, "a sort along the axis", [d])
                r.fix(out, "a sort along the axis", [d])
            else:
                r.unify_axis(x, y)
    return outs


def _bind_loop(r: _Reader, outer: Sequence[int | None], shapes: Sequence[tuple[int, ...]]) -> list[int]:
    """Loop-carried values: the same atoms as outside, zeros unknown (they change per iteration)."""
    ids = []
    for vid, shape in zip(outer, shapes, strict=True):
        new = r.value(shape, r.axes[vid] if vid is not None else None)
        r.opaque.add(new)
        ids.append(new)
    return ids


def _tie_outputs(r: _Reader, inner: Sequence[int | None], ids: Sequence[int]) -> None:
    for vid, target in zip(inner, ids, strict=True):
        if vid is not None:
            for x, y in zip(r.axes[vid], r.axes[target], strict=True):
                r.unify_axis(x, y)


def _scan(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    p = eqn.params
    body = p["jaxpr"]
    nc, ncarry = int(p["num_consts"]), int(p["num_carry"])
    consts, init, xs = ins[:nc], ins[nc : nc + ncarry], ins[nc + ncarry :]
    body_in = body.jaxpr.invars
    carry = _bind_loop(r, init, [tuple(v.aval.shape) for v in body_in[nc : nc + ncarry]])
    slices = []
    for vid, var in zip(xs, body_in[nc + ncarry :], strict=True):
        if vid is None:
            slices.append(None)
            continue
        r.fix(vid, "the axis a scan iterates over (stacked layers)", [0])
        slices.append(r.value(var.aval.shape, r.axes[vid][1:]))
        r.program.append(_Instr("scan_slice", {}, [vid], [None], [slices[-1]]))
    outs = r.run(body.jaxpr, [*consts, *carry, *slices])
    _tie_outputs(r, outs[:ncarry], carry)
    results = _bind_loop(r, carry, shapes[:ncarry])
    for vid, shape in zip(outs[ncarry:], shapes[ncarry:], strict=True):
        lead = (r.atoms.new(shape[0]),) if shape[0] > 1 else ()
        stacked = r.value(shape, (lead, *r.axes[vid])) if vid is not None else r.value(shape)
        r.opaque.add(stacked)
        results.append(stacked)
        r.fix(stacked, "the axis a scan stacks its outputs on", [0])
    return results


def _while(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    p = eqn.params
    cn, bn = int(p["cond_nconsts"]), int(p["body_nconsts"])
    cond_consts, body_consts, init = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
    carry = _bind_loop(r, init, shapes)
    r.run(p["cond_jaxpr"].jaxpr, [*cond_consts, *carry])
    outs = r.run(p["body_jaxpr"].jaxpr, [*body_consts, *carry])
    _tie_outputs(r, outs, carry)
    return _bind_loop(r, carry, shapes)


def _cond(r: _Reader, eqn: Any, ins: list[int | None], shapes: list[tuple[int, ...]]) -> list[int]:
    results = [r.value(s) for s in shapes]
    for branch in eqn.params["branches"]:
        outs = r.run(branch.jaxpr, ins[1:])
        _tie_outputs(r, outs, results)
        for vid in outs:  # a branch's result may not be zero where another's is
            if vid is not None:
                r.opaque.add(vid)
    r.opaque.update(results)
    return results


_RULES: dict[str, Callable[[_Reader, Any, list[int | None], list[tuple[int, ...]]], list[int]]] = {
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "expand_dims": _reshape,
    "rev": _rev,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "concatenate": _concatenate,
    "slice": _slice,
    "split": _split,
    "pad": _pad,
    "iota": _iota,
    "gather": _gather,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "sort": _sort,
    "scan": _scan,
    "while": _while,
    "cond": _cond,
}


# ---------------------------------------------------------------------------
# Exactness: where masking leaves zeros, and what is contracted against what.

_KEEPS_ZEROS = frozenset(
    """abs asin asinh atan atanh cbrt ceil conj convert_element_type copy copy_p erf erf_inv expm1 floor
    imag integer_pow log1p neg real reduce_precision round sign sin sinh sqrt square stop_gradient tan
    tanh broadcast_in_dim reshape transpose squeeze expand_dims rev slice dynamic_slice gather
    reduce_sum reduce_max reduce_min cumsum cummax cummin scan_slice pad split""".split()
)
_PARAM_VIEWS = frozenset(
    "convert_element_type copy copy_p reduce_precision broadcast_in_dim reshape transpose squeeze "
    "expand_dims slice dynamic_slice gather scan_slice".split()
)
_ALL = None  # "zero at every channel": a literal 0


class _Exactness:
    def __init__(self, r: _Reader, params: Sequence[int]) -> None:
        self.r = r
        self.params = set(params)
        self._roots: dict[int, frozenset[int]] = {}
        self.zero: dict[int, frozenset[int]] = {}
        self.param_view: set[int] = set(params)
        self.inexact: list[tuple[int, str]] = []
        self.pair_contracted: set[int] = set()  # roots contracted between two activations
        self.literals: set[float] = set()
        for vid in params:
            self.zero[vid] = self.roots(vid)
        for instr in r.program:
            self.step(instr)
        self.scale_check()

    def roots(self, vid: int) -> frozenset[int]:
        if vid not in self._roots:
            atoms = self.r.atoms
            self._roots[vid] = frozenset(x for f in self.r.axes[vid] for a in f for x in atoms.roots(a))
        return self._roots[vid]

    def zeros(self, vid: int | None, literal: Any) -> frozenset[int] | None:
        if vid is None:
            return _ALL if np.ndim(literal) == 0 and literal == 0 else frozenset()
        if vid in self.r.opaque:
            return frozenset()
        return self.zero.get(vid, frozenset())

    def step(self, instr: _Instr) -> None:
        for lit in instr.literals:
            if lit is not None and np.ndim(lit) == 0 and np.issubdtype(np.asarray(lit).dtype, np.floating):
                self.literals.add(abs(float(lit)))
        zs = [self.zeros(v, lit) for v, lit in zip(instr.ins, instr.literals, strict=True)]
        name = instr.name
        if name in ("mul", "and", "dot_general", "conv_general_dilated"):
            if name in ("dot_general", "conv_general_dilated"):
                self.contraction(instr, zs)
            z = _union(zs[:2])
        elif name in ("add", "sub", "max", "min", "concatenate", "or"):
            z = _intersection(zs)
        elif name == "select_n":
            z = _intersection(zs[1:])
        elif name == "div":
            z = zs[0]
        elif name in _KEEPS_ZEROS:
            z = zs[0] if name != "pad" else _intersection(zs[:2])
        else:
            z = frozenset()
        for out in instr.outs:
            self.zero[out] = self.roots(out) if z is None else z & self.roots(out)  # None: _ALL
        if name in _PARAM_VIEWS and instr.ins and instr.ins[0] in self.param_view:
            self.param_view.update(instr.outs)

    def contraction(self, instr: _Instr, zs: list[frozenset[int] | None]) -> None:
        lhs, rhs = instr.ins[:2]
        if lhs is None or rhs is None:
            return
        if instr.name == "dot_general":
            (lc, _), _ = instr.params["dimension_numbers"]
            axes = [self.r.axes[lhs][int(d)] for d in lc]
        else:
            axes = [self.r.axes[rhs][instr.params["dimension_numbers"].rhs_spec[1]]]
        atoms = self.r.atoms
        contracted = {x for f in axes for a in f for x in atoms.roots(a)}
        zero = _union(zs[:2])
        for root in contracted:
            if zero is not None and root not in zero:  # None: _ALL
                self.inexact.append((root, _CONTRACTION_REASON))
        if lhs not in self.param_view and rhs not in self.param_view:
            self.pair_contracted |= contracted

    def scale_check(self) -> None:
        """A contraction between two activations, scaled by 1/sqrt(size): attention's scaling."""
        for root in self.pair_contracted:
            n = self.r.atoms.size[root]
            for value in (n, math.sqrt(n), 1 / n, 1 / math.sqrt(n)):
                if any(math.isclose(v, value, rel_tol=1e-6) for v in self.literals):
                    reason = f"{_SCALE_REASON} ({n}): removal would change it"
                    self.inexact.append((root, reason))
                    break


def _union(zs: Sequence[frozenset[int] | None]) -> frozenset[int] | None:
    if any(z is _ALL for z in zs):
        return _ALL
    return frozenset().union(*[z for z in zs if z is not None])


def _intersection(zs: Sequence[frozenset[int] | None]) -> frozenset[int] | None:
    known = [z for z in zs if z is not _ALL]
    if not known:
        return _ALL
    return frozenset.intersection(*[z for z in known if z is not None])


# ---------------------------------------------------------------------------
# Members: where each channel of a group sits along each parameter axis.


def _labels(atoms: _Atoms, factors: Sequence[int]) -> dict[int, np.ndarray]:
    """For each unrefined class in an axis made of ``factors``: its channel at every position (-1: none)."""
    grids = [_atom_labels(atoms, a) for a in factors]
    sizes = [atoms.size[atoms.find(a)] for a in factors]
    out: dict[int, np.ndarray] = {}
    for i, grid in enumerate(grids):
        for root, coords in grid.items():
            shape = [1] * len(sizes)
            shape[i] = sizes[i]
            full = np.broadcast_to(coords.reshape(shape), sizes).reshape(-1)
            if root in out:  # the same channels twice along one axis: not a channel axis
                out[root] = np.full_like(full, -2)
            else:
                out[root] = full
    return out


def _atom_labels(atoms: _Atoms, a: int) -> dict[int, np.ndarray]:
    a = atoms.find(a)
    split = atoms.split.get(a)
    if split is None:
        return {a: np.arange(atoms.size[a])}
    if split.kind == "prod":
        return _labels(atoms, split.children)
    out: dict[int, np.ndarray] = {}
    offset, total = 0, atoms.size[a]
    for child in split.children:
        n = atoms.size[atoms.find(child)]
        for root, coords in _atom_labels(atoms, child).items():
            # The same channels in two ranges (a split whose halves are multiplied): both ranges.
            full = out.setdefault(root, np.full(total, -1, dtype=np.int64))
            full[offset : offset + n] = coords
        offset += n
    return out


def _positions(coords: np.ndarray, size: int) -> np.ndarray | None:
    if np.any(coords == -2):
        return None
    where = np.nonzero(coords >= 0)[0]
    order = np.argsort(coords[where], kind="stable")
    if len(where) % size:
        return None
    return where[order].reshape(size, -1)


# ---------------------------------------------------------------------------
# The public entry point.


def split_model(fn: Any, args: tuple[Any, ...], what: str = "channel_groups"
                ) -> tuple[Callable[..., Any], Any, tuple[Any, ...]]:
    """``(call, params, args)`` for a plain function (``call`` is ``fn``) or an NNX module
    (``call`` runs the module on a state); errors name the public function ``what``."""
    try:
        from flax import nnx
    except ImportError:  # flax is optional
        nnx = None
    if nnx is not None and isinstance(fn, nnx.Module):
        graphdef, state = nnx.split(fn)

        def call(state: Any, *args: Any, **kwargs: Any) -> Any:
            return nnx.merge(graphdef, state)(*args, **kwargs)

        return call, state, args
    if not callable(fn):
        raise TypeError(
            f"{what} expects a function fn(params, *args) or an nnx.Module, got {type(fn).__name__}"
        )
    if not args:
        raise TypeError(f"{what}(fn, params, *args): the params tree is missing")
    return fn, args[0], args[1:]


def permutation_safe(reason: str) -> bool:
    """Whether a group that is inexact for ``reason`` may still have its channels permuted.

    Removing channels changes a sum, a mean or a norm's statistics over them, and the
    constant ``1/sqrt(size)`` that attention scales by; permuting them (in every member
    at once) changes none of these. Arg-reductions (an index) and cumulative operations
    along the channels depend on the order.

    >>> permutation_safe("`reduce_sum` over the channels (a mean, a norm's statistics, a softmax)")
    True
    >>> permutation_safe("`cumsum` along the channels")
    False
    """
    return (reason.startswith("`reduce_") and reason.endswith(_REDUCTION_REASON)
            or reason == _CONTRACTION_REASON or reason.startswith(_SCALE_REASON))


def channel_groups(fn: Any, *args: Any, exact_only: bool = True, **kwargs: Any) -> ChannelGroups:
    """The channel groups of a model, read from its jaxpr (shapes only: nothing runs).

    ``channel_groups(fn, params, *args, **kwargs)`` traces ``fn(params, *args,
    **kwargs)``; ``channel_groups(nnx_module, *args, **kwargs)`` traces the module's
    call, with paths those of ``nnx.state(module)``. Arguments may be
    ``jax.ShapeDtypeStruct``: no memory is taken for activations.

    A group is a set of channels (hidden units, filters, heads, ...) that index
    axes of several parameters at once (see `ChannelGroup`); removing them from
    every member at once gives a smaller model. Channels that reach the function's
    inputs or outputs, a constant array or an operation the analysis does not know
    form no group: they are in ``.dropped``, each with a reason. A group is
    ``exact`` when removing its channels computes the same function as masking
    them; by default only exact groups are returned (``exact_only=False``
    returns all, the inexact with ``reasons``).

    Args:
      fn: ``fn(params, *args, **kwargs)``, or an ``nnx.Module``.
      *args: ``params`` then the function's arguments (for a module, its arguments).
      exact_only: return only exact groups (the inexact ones go to ``.dropped``).
      **kwargs: keyword arguments of the call.

    Returns:
      A tuple of `ChannelGroup` (in the order of their first member in the tree),
      with ``.dropped``.

    >>> import jax, jax.numpy as jnp, jaxprune as jp
    >>> def mlp(p, x):
    ...     return jax.nn.relu(x @ p["w1"]) @ p["w2"]
    >>> params = {"w1": jnp.ones((3, 8)), "w2": jnp.ones((8, 2))}
    >>> (group,) = jp.channel_groups(mlp, params, jax.ShapeDtypeStruct((5, 3), jnp.float32))
    >>> group.size, [(m.path, m.axis) for m in group.members]
    (8, [('w1', 1), ('w2', 0)])
    """
    call, params, call_args = split_model(fn, args)
    # Array keyword arguments are traced like the arguments; others (flags, sizes) stay Python values.
    arrays = {k: v for k, v in kwargs.items() if _is_array(v)}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    closed = jax.make_jaxpr(lambda p, a, k: call(p, *a, **k, **static))(params, call_args, arrays)
    leaves = tree_util.tree_leaves_with_path(params)
    paths = [path_str(p) for p, _ in leaves]
    r = _Reader()
    ins = [r.value(var.aval.shape) for var in closed.jaxpr.invars]
    for vid in ins[len(paths) :]:
        r.fix(vid, "the channels reach the function's inputs")
    outs = r.run(closed.jaxpr, ins)
    for vid in outs:
        if vid is not None:
            r.fix(vid, "the channels reach the function's outputs")
    exactness = _Exactness(r, ins[: len(paths)])
    return _collect(r, exactness, paths, ins[: len(paths)], signature_of(params), exact_only)


def _is_array(x: Any) -> bool:
    leaves = jax.tree.leaves(x)
    return bool(leaves) and all(isinstance(v, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) for v in leaves)


def _collect(
    r: _Reader, exactness: _Exactness, paths: list[str], ids: list[int], signature: str, exact_only: bool
) -> ChannelGroups:
    atoms = r.atoms
    fixed: dict[int, str] = {}
    for atom, reason in atoms.fixed:
        for root in atoms.roots(atom):
            fixed.setdefault(root, reason)
    inexact: dict[int, list[str]] = {}
    for atom, reason in [*atoms.inexact, *exactness.inexact]:
        for root in atoms.roots(atom):
            reasons = inexact.setdefault(root, [])
            if reason not in reasons:
                reasons.append(reason)
    members: dict[int, list[Member]] = {}
    for path, vid in zip(paths, ids, strict=True):
        for axis, factors in enumerate(r.axes[vid]):
            for root, coords in _labels(atoms, factors).items():
                size = atoms.size[root]
                positions = _positions(coords, size)
                if positions is None:
                    fixed.setdefault(root, "the same channels index one axis twice")
                    continue
                members.setdefault(root, []).append(Member(path, axis, r.shapes[vid][axis], positions))
    groups, dropped = [], []
    for root, group_members in members.items():
        size = atoms.size[root]
        if size < 2:
            continue
        if root in fixed:
            dropped.append(DroppedGroup(size, tuple(group_members), fixed[root]))
            continue
        reasons = tuple(inexact.get(root, ()))
        group = ChannelGroup(size, tuple(group_members), not reasons, reasons, signature)
        if exact_only and reasons:
            dropped.append(DroppedGroup(size, group.members, "not exact: " + "; ".join(reasons)))
        else:
            groups.append(group)
    return ChannelGroups(groups, dropped)
