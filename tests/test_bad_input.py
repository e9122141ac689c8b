"""Every bad input raises the documented exception type, at the call, with a
message that names the bad value (DESIGN.md, "Semantics", and the experiment
table of TORCH_PRUNE_SEMANTICS.md section 2).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

KEY = jax.random.key(0)
T24 = jnp.arange(1.0, 9.0).reshape(2, 4)  # 8 entries; 4 slices along dim 1
T13 = jnp.array([[0.0, 0.1, -2.0]])  # 3 entries: a tree {"a": T24, "b": T13} has 11
T3D = jnp.ones((2, 5, 6))
T4D = jnp.ones((2, 3, 2, 2))
TREE = {"a": T24, "b": T13}


def value(text: str) -> str:
    """A regex for ``text`` standing alone (not part of a longer number or name)."""
    return rf"(?<![\w.]){re.escape(text)}(?!\w|\.\d)"


# --------------------------------------------------------------------------
# amount
# --------------------------------------------------------------------------

AMOUNT_CALLS = {
    "l1_unstructured": lambda a: jp.l1_unstructured(T24, a),
    "random_unstructured": lambda a: jp.random_unstructured(KEY, T24, a),
    "random_structured": lambda a: jp.random_structured(KEY, T24, a, dim=1),
    "ln_structured": lambda a: jp.ln_structured(T24, a, n=2, dim=1),
    "compute_mask": lambda a: jp.compute_mask(KEY, T24, a, 1),
    "unstructured_mask": lambda a: jp.unstructured_mask(T24, a),
    "structured_mask": lambda a: jp.structured_mask(jnp.ones(4), (2, 4), a, dim=1),
    "global_l1": lambda a: jp.global_unstructured(TREE, a),
    "global_random": lambda a: jp.global_unstructured(TREE, a, method="random", key=KEY),
    "L1Unstructured": lambda a: jp.L1Unstructured(a),
    "RandomUnstructured": lambda a: jp.RandomUnstructured(a),
    "RandomStructured": lambda a: jp.RandomStructured(a, dim=1),
    "LnStructured": lambda a: jp.LnStructured(a, n=2, dim=1),
}

BAD_AMOUNTS = [
    pytest.param("0.5", TypeError, "'0.5'", id="str"),
    pytest.param(None, TypeError, value("None"), id="None"),
    pytest.param(0.5 + 0.5j, TypeError, re.escape("(0.5+0.5j)"), id="complex"),
    pytest.param(np.complex64(0.5), TypeError, re.escape("0.5+0j"), id="numpy-complex"),
    pytest.param(Decimal("0.5"), TypeError, re.escape("Decimal('0.5')"), id="Decimal"),
    pytest.param(True, TypeError, "True", id="True"),
    pytest.param(False, TypeError, "False", id="False"),
    pytest.param(np.True_, TypeError, "True", id="numpy-True"),
    pytest.param(np.False_, TypeError, "False", id="numpy-False"),
    pytest.param(jnp.array(True), TypeError, "bool", id="jax-bool-array"),
    pytest.param(float("nan"), ValueError, value("nan"), id="nan"),
    pytest.param(np.float64("nan"), ValueError, value("nan"), id="numpy-nan"),
    pytest.param(jnp.array(float("nan")), ValueError, value("nan"), id="jax-nan"),
    pytest.param(float("inf"), ValueError, r"(?<![\w.-])inf", id="inf"),
    pytest.param(float("-inf"), ValueError, value("-inf"), id="-inf"),
    pytest.param(-10, ValueError, value("-10"), id="negative-int"),
    pytest.param(np.int64(-3), ValueError, value("-3"), id="numpy-negative-int"),
    pytest.param(jnp.array(-1), ValueError, value("-1"), id="jax-negative-int"),
    pytest.param(-0.1, ValueError, value("-0.1"), id="negative-float"),
    pytest.param(1.1, ValueError, value("1.1"), id="1.1"),
    pytest.param(20.0, ValueError, value("20.0"), id="20.0"),
    pytest.param(np.float64(1.5), ValueError, value("1.5"), id="numpy-1.5"),
    pytest.param(jnp.array(1.5), ValueError, value("1.5"), id="jax-1.5"),
    pytest.param(np.array([0.5, 0.5]), TypeError, re.escape("[0.5, 0.5]"), id="numpy-vector"),
    pytest.param(jnp.array([0.5, 0.5]), TypeError, re.escape("(2,)"), id="jax-vector"),
    pytest.param([0.5], TypeError, re.escape("[0.5]"), id="list"),
    # NumPy counts timedelta64 as an integer type; it was taken as a count of 3.
    pytest.param(np.timedelta64(3), TypeError, "timedelta64", id="timedelta64"),
    pytest.param(np.array(np.timedelta64(3)), TypeError, "timedelta64", id="timedelta64-array"),
]


@pytest.mark.parametrize("call", list(AMOUNT_CALLS), ids=list(AMOUNT_CALLS))
@pytest.mark.parametrize("amount, error, pattern", BAD_AMOUNTS)
def test_bad_amount(call, amount, error, pattern):
    with pytest.raises(error, match=pattern):
        AMOUNT_CALLS[call](amount)


# Calls that count units, with the number of units they count.
COUNT_CALLS = {
    "l1_unstructured": (lambda a: jp.l1_unstructured(T24, a), 8),
    "random_unstructured": (lambda a: jp.random_unstructured(KEY, T24, a), 8),
    "random_structured": (lambda a: jp.random_structured(KEY, T24, a, dim=1), 4),
    "random_structured-dim0": (lambda a: jp.random_structured(KEY, T24, a, dim=0), 2),
    "ln_structured": (lambda a: jp.ln_structured(T24, a, n=2, dim=1), 4),
    "compute_mask": (lambda a: jp.compute_mask(KEY, T24, a, 1), 4),
    "unstructured_mask": (lambda a: jp.unstructured_mask(T24, a), 8),
    "structured_mask": (lambda a: jp.structured_mask(jnp.ones(4), (2, 4), a, dim=1), 4),
    "global_l1": (lambda a: jp.global_unstructured(TREE, a), 11),
    "global_random": (lambda a: jp.global_unstructured(TREE, a, method="random", key=KEY), 11),
    "L1Unstructured": (lambda a: jp.L1Unstructured(a).compute_mask(None, T24), 8),
    "RandomUnstructured": (lambda a: jp.RandomUnstructured(a).compute_mask(KEY, T24), 8),
    "RandomStructured": (lambda a: jp.RandomStructured(a, dim=1).compute_mask(KEY, T24), 4),
    "LnStructured": (lambda a: jp.LnStructured(a, n=2, dim=1).compute_mask(None, T24), 4),
}


def all_pruned(masks) -> bool:
    return all(not bool(jnp.any(m)) for m in jax.tree.leaves(masks))


@pytest.mark.parametrize("call", list(COUNT_CALLS), ids=list(COUNT_CALLS))
def test_count_above_units(call):
    """An int amount above the number of units raises ValueError naming both;
    an amount equal to it prunes everything."""
    fn, units = COUNT_CALLS[call]
    with pytest.raises(ValueError, match=rf"{value(str(units + 1))}.*{value(str(units))}"):
        fn(units + 1)
    with pytest.raises(ValueError, match=value(str(units + 100))):
        fn(units + 100)
    assert all_pruned(fn(units))


@pytest.mark.parametrize("call", list(COUNT_CALLS), ids=list(COUNT_CALLS))
def test_concrete_array_count_above_units(call):
    """A concrete integer array raises as the Python int does (before: it was
    clamped and pruned everything; an unsigned 2**32 - 1 wrapped and pruned nothing)."""
    fn, units = COUNT_CALLS[call]
    for amount in (jnp.array(100), np.array(100), jnp.array(2**32 - 1, jnp.uint32), jnp.array(units + 1, jnp.uint8)):
        with pytest.raises(ValueError, match=rf"{value(str(int(amount)))}.*{value(str(units))}"):
            fn(amount)
    assert all_pruned(fn(jnp.array(units, jnp.uint32)))


ONE_LEFT = jnp.zeros((2, 4), bool).at[0, 0].set(True)  # 1 entry, 1 column (dim 1) left
NONE_LEFT_13 = jnp.zeros((1, 3), bool)

REDUCED_CALLS = {
    "l1_unstructured": lambda a: jp.l1_unstructured(T24, a, default_mask=ONE_LEFT),
    "l1_unstructured-int-mask": lambda a: jp.l1_unstructured(T24, a, default_mask=ONE_LEFT.astype(jnp.int32)),
    "random_unstructured": lambda a: jp.random_unstructured(KEY, T24, a, default_mask=ONE_LEFT),
    "random_structured": lambda a: jp.random_structured(KEY, T24, a, dim=1, default_mask=ONE_LEFT),
    "ln_structured": lambda a: jp.ln_structured(T24, a, n=2, dim=1, default_mask=ONE_LEFT),
    "unstructured_mask": lambda a: jp.unstructured_mask(T24, a, default_mask=ONE_LEFT),
    "structured_mask": lambda a: jp.structured_mask(jnp.ones(4), (2, 4), a, dim=1, default_mask=ONE_LEFT),
    "global_l1": lambda a: jp.global_unstructured(TREE, a, default_masks={"a": ONE_LEFT, "b": NONE_LEFT_13}),
    "global_random": lambda a: jp.global_unstructured(
        TREE, a, method="random", key=KEY, default_masks={"a": ONE_LEFT, "b": NONE_LEFT_13}),
    "L1Unstructured": lambda a: jp.L1Unstructured(a).compute_mask(None, T24, default_mask=ONE_LEFT),
    "RandomUnstructured": lambda a: jp.RandomUnstructured(a).compute_mask(KEY, T24, default_mask=ONE_LEFT),
    "RandomStructured": lambda a: jp.RandomStructured(a, dim=1).compute_mask(KEY, T24, default_mask=ONE_LEFT),
    "LnStructured": lambda a: jp.LnStructured(a, n=2, dim=1).compute_mask(None, T24, default_mask=ONE_LEFT),
}


@pytest.mark.parametrize("call", list(REDUCED_CALLS), ids=list(REDUCED_CALLS))
def test_count_above_units_left_by_default_mask(call):
    """With one unit left unpruned by ``default_mask`` (container semantics),
    amount=2 raises ValueError ("amount=2 ... to prune=1"); amount=1 prunes it."""
    fn = REDUCED_CALLS[call]
    with pytest.raises(ValueError, match=rf"{value('2')}.*{value('1')}"):
        fn(2)
    assert all_pruned(fn(1))


@pytest.mark.parametrize(
    "call",
    [
        lambda a: jp.l1_unstructured(jnp.ones((0,)), a),
        lambda a: jp.random_unstructured(KEY, jnp.ones((0, 4)), a),
        lambda a: jp.random_structured(KEY, jnp.ones((0, 4)), a, dim=0),
    ],
    ids=["l1-empty", "random_unstructured-empty", "random_structured-empty-dim0"],
)
def test_count_on_an_empty_tensor(call):
    """No units: int 1 raises ("... to prune=0"), while 0.5 prunes nothing (torch)."""
    with pytest.raises(ValueError, match=rf"{value('1')}.*{value('0')}"):
        call(1)
    assert call(0.5).size == 0


PARTIAL_COLUMNS = jnp.array([[True, False, True, False], [False, True, False, True]])


@pytest.mark.parametrize(
    "call",
    [
        lambda a: jp.random_structured(KEY, T24, a, dim=1, default_mask=PARTIAL_COLUMNS),
        lambda a: jp.ln_structured(T24, a, n=2, dim=1, default_mask=PARTIAL_COLUMNS),
    ],
    ids=["random_structured", "ln_structured"],
)
def test_partially_pruned_slices_still_count(call):
    """Structured units are the slices not *entirely* pruned: 4 here, so 5 raises."""
    with pytest.raises(ValueError, match=rf"{value('5')}.*{value('4')}"):
        call(5)
    assert all_pruned(call(4))


# --------------------------------------------------------------------------
# dim
# --------------------------------------------------------------------------

DIM_CALLS = {
    "random_structured": lambda t, d: jp.random_structured(KEY, t, 0.3, dim=d),
    "ln_structured": lambda t, d: jp.ln_structured(t, 0.3, n=2, dim=d),
    "compute_mask": lambda t, d: jp.compute_mask(KEY, t, 0.3, d),
    "slice_norms": lambda t, d: jp.slice_norms(t, 2, d),
    "structured_mask": lambda t, d: jp.structured_mask(jnp.ones(2), t.shape, 0.3, dim=d),
    "RandomStructured": lambda t, d: jp.RandomStructured(0.3, dim=d).compute_mask(KEY, t),
    "LnStructured": lambda t, d: jp.LnStructured(0.3, n=2, dim=d).compute_mask(None, t),
}


@pytest.mark.parametrize("call", list(DIM_CALLS), ids=list(DIM_CALLS))
@pytest.mark.parametrize("dim, pattern", [(3, r"(?<![\w.-])3(?!\d)"), (-4, value("-4")), (10, value("10"))],
                         ids=["3", "-4", "10"])
def test_dim_out_of_range(call, dim, pattern):
    """dim outside [-3, 2] on a (2, 5, 6) tensor: IndexError naming the dim (both sides)."""
    with pytest.raises(IndexError, match=pattern):
        DIM_CALLS[call](T3D, dim)


@pytest.mark.parametrize("dim", [2, -3], ids=["2", "-3"])
def test_dim_at_the_range_ends_is_accepted(dim):
    """The contrast to the out-of-range cases: -3 and 2 are valid on a 3-D tensor."""
    mask = jp.random_structured(KEY, jnp.ones((2, 3, 5)), 1, dim=dim)
    assert jp.pruned_indices(mask, dim).size == 1


@pytest.mark.parametrize("call", list(DIM_CALLS), ids=list(DIM_CALLS))
@pytest.mark.parametrize("dim", [1.5, 1.0], ids=["1.5", "1.0"])
def test_dim_not_an_int(call, dim):
    with pytest.raises(TypeError, match=value(repr(dim))):
        DIM_CALLS[call](T3D, dim)


@pytest.mark.parametrize("call", list(DIM_CALLS), ids=list(DIM_CALLS))
@pytest.mark.parametrize("dim", [0, -1, 5], ids=["dim0", "dim-1", "dim5"])
@pytest.mark.parametrize(
    "t, shape_text",
    [(jnp.ones(5), "(5,)"), (jnp.float32(3.0), "()")],
    ids=["1-d", "0-d"],
)
def test_structured_needs_two_dims(call, dim, t, shape_text):
    """Structured pruning of a 0-d or 1-d tensor: ValueError (even with dim=5),
    naming the shape."""
    t = jnp.asarray(t)
    with pytest.raises(ValueError, match=re.escape(shape_text)):
        DIM_CALLS[call](t, dim)


# --------------------------------------------------------------------------
# Shapes of importance_scores, default_mask, custom masks
# --------------------------------------------------------------------------

WRONG = jnp.ones((4, 2))
WRONG_MASK = jnp.ones((4, 2), bool)

SHAPE_CALLS = {
    "l1-importance_scores": (lambda: jp.l1_unstructured(T24, 1, importance_scores=WRONG), "(4, 2)"),
    "l1-importance_scores-broadcastable": (
        lambda: jp.l1_unstructured(T24, 1, importance_scores=jnp.ones((1, 4))), "(1, 4)"),
    "ln-importance_scores": (
        lambda: jp.ln_structured(T24, 1, n=2, dim=1, importance_scores=jnp.ones((2, 5))), "(2, 5)"),
    "l1-default_mask": (lambda: jp.l1_unstructured(T24, 1, default_mask=WRONG_MASK), "(4, 2)"),
    "l1-default_mask-broadcastable": (
        lambda: jp.l1_unstructured(T24, 1, default_mask=jnp.ones((1, 4), bool)), "(1, 4)"),
    "random_unstructured-default_mask": (
        lambda: jp.random_unstructured(KEY, T24, 1, default_mask=WRONG_MASK), "(4, 2)"),
    "random_structured-default_mask": (
        lambda: jp.random_structured(KEY, T24, 1, dim=1, default_mask=WRONG_MASK), "(4, 2)"),
    "ln_structured-default_mask": (
        lambda: jp.ln_structured(T24, 1, n=2, dim=1, default_mask=WRONG_MASK), "(4, 2)"),
    "unstructured_mask-default_mask": (
        lambda: jp.unstructured_mask(T24, 1, default_mask=WRONG_MASK), "(4, 2)"),
    "structured_mask-slice_scores": (lambda: jp.structured_mask(jnp.ones(3), (2, 4), 1, dim=1), "(3,)"),
    "Identity-default_mask": (lambda: jp.Identity().compute_mask(None, T24, default_mask=WRONG_MASK), "(4, 2)"),
    "L1Unstructured-default_mask": (
        lambda: jp.L1Unstructured(1).compute_mask(None, T24, default_mask=WRONG_MASK), "(4, 2)"),
    "RandomUnstructured-default_mask": (
        lambda: jp.RandomUnstructured(1).compute_mask(KEY, T24, default_mask=WRONG_MASK), "(4, 2)"),
    "RandomStructured-default_mask": (
        lambda: jp.RandomStructured(1, dim=1).compute_mask(KEY, T24, default_mask=WRONG_MASK), "(4, 2)"),
    "LnStructured-default_mask": (
        lambda: jp.LnStructured(1, n=2, dim=1).compute_mask(None, T24, default_mask=WRONG_MASK), "(4, 2)"),
    "CustomFromMask-mask": (lambda: jp.CustomFromMask(WRONG_MASK).compute_mask(None, T24), "(4, 2)"),
    "CustomFromMask-default_mask": (
        lambda: jp.CustomFromMask(jnp.ones((2, 4), bool)).compute_mask(None, T24, default_mask=WRONG_MASK),
        "(4, 2)"),
    "global-importance_scores": (
        lambda: jp.global_unstructured(TREE, 1, importance_scores={"a": WRONG, "b": None}), "(4, 2)"),
    "global-default_masks": (
        lambda: jp.global_unstructured(TREE, 1, default_masks={"a": WRONG_MASK, "b": None}), "(4, 2)"),
    "global_random-default_masks": (
        lambda: jp.global_unstructured(TREE, 1, method="random", key=KEY,
                                       default_masks={"a": WRONG_MASK, "b": None}), "(4, 2)"),
    "apply_masks-leaf": (lambda: jp.apply_masks({"a": T24}, {"a": WRONG_MASK}), "(4, 2)"),
    "apply_masks-array": (lambda: jp.apply_masks(T24, jnp.ones((8,), bool)), "(8,)"),
}


@pytest.mark.parametrize("error", [jp.PruningShapeError, AssertionError, ValueError],
                         ids=["PruningShapeError", "AssertionError", "ValueError"])
@pytest.mark.parametrize("call", list(SHAPE_CALLS), ids=list(SHAPE_CALLS))
def test_shape_mismatch(call, error):
    """A scores/mask of another shape (broadcastable ones too): PruningShapeError,
    catchable as torch's AssertionError and as ValueError; the message names the shape."""
    fn, shape_text = SHAPE_CALLS[call]
    with pytest.raises(error, match=re.escape(shape_text)) as info:
        fn()
    assert isinstance(info.value, jp.PruningShapeError)


# --------------------------------------------------------------------------
# n (norm order)
# --------------------------------------------------------------------------

BAD_NORMS = [
    pytest.param("abc", T24, "'abc'", id="abc"),
    pytest.param("nuc", T24, "'nuc'", id="nuc-2d"),
    pytest.param("nuc", T4D, "'nuc'", id="nuc-4d"),
    pytest.param("fro", T4D, "'fro'", id="fro-4d"),
    pytest.param(float("nan"), T24, value("nan"), id="nan"),
    pytest.param(1 + 2j, T24, re.escape("(1+2j)"), id="complex"),
    pytest.param(True, T24, "True", id="True"),
]

NORM_CALLS = {
    "ln_structured": lambda t, n: jp.ln_structured(t, 1, n=n, dim=1),
    "ln_structured-amount0": lambda t, n: jp.ln_structured(t, 0, n=n, dim=1),
    "slice_norms": lambda t, n: jp.slice_norms(t, n, 1),
    "LnStructured": lambda t, n: jp.LnStructured(1, n=n, dim=1).compute_mask(None, t),
}


@pytest.mark.parametrize("call", list(NORM_CALLS), ids=list(NORM_CALLS))
@pytest.mark.parametrize("n, t, pattern", BAD_NORMS)
def test_bad_norm_order(call, n, t, pattern):
    """An n torch cannot use (for this tensor): NormOrderError naming n, even with amount=0."""
    with pytest.raises(jp.NormOrderError, match=pattern):
        NORM_CALLS[call](t, n)


@pytest.mark.parametrize("error", [jp.NormOrderError, ValueError, RuntimeError],
                         ids=["NormOrderError", "ValueError", "RuntimeError"])
def test_norm_order_error_is_value_and_runtime_error(error):
    with pytest.raises(error, match="'abc'"):
        jp.ln_structured(T24, 1, n="abc", dim=1)
    with pytest.raises(error, match="'fro'"):
        jp.ln_structured(T4D, 1, n="fro", dim=1)


@pytest.mark.parametrize("n, t", [("fro", T24), ("fro", T3D), ("nuc", T3D)], ids=["fro-2d", "fro-3d", "nuc-3d"])
def test_matrix_norms_accepted_where_torch_accepts_them(n, t):
    """The contrast to the bad cases: 'fro' on 2-D/3-D and 'nuc' on 3-D work."""
    assert jp.pruned_indices(jp.ln_structured(t, 1, n=n, dim=1), 1).size == 1


# --------------------------------------------------------------------------
# PRNG keys
# --------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(0, r"\bint\b.*" + value("0"), id="int"),
    pytest.param(jnp.zeros(2), "float32", id="float-array"),
    pytest.param(jnp.zeros(3, jnp.uint32), r"\[0, 0, 0\].*uint32", id="uint32-shape-3"),
    pytest.param(np.zeros(3, np.uint32), r"\[0, 0, 0\].*uint32", id="numpy-uint32-shape-3"),
    pytest.param(None, value("None"), id="None"),
    pytest.param(jax.random.split(KEY, 2), re.escape("(2,)"), id="batch-of-keys"),
]

KEY_CALLS = {
    "random_unstructured": lambda k: jp.random_unstructured(k, T24, 0.5),
    "random_structured": lambda k: jp.random_structured(k, T24, 0.5, dim=1),
    "compute_mask": lambda k: jp.compute_mask(k, T24, 0.5, 1),
    "global_random": lambda k: jp.global_unstructured(TREE, 0.5, method="random", key=k),
    "RandomUnstructured": lambda k: jp.RandomUnstructured(0.5).compute_mask(k, T24),
    "RandomStructured": lambda k: jp.RandomStructured(0.5, dim=1).compute_mask(k, T24),
}


@pytest.mark.parametrize("call", list(KEY_CALLS), ids=list(KEY_CALLS))
@pytest.mark.parametrize("key, pattern", BAD_KEYS)
def test_not_a_prng_key(call, key, pattern):
    with pytest.raises(TypeError, match=pattern):
        KEY_CALLS[call](key)


def test_global_random_without_key():
    with pytest.raises(TypeError, match=value("None")):
        jp.global_unstructured(TREE, 0.5, method="random")


# --------------------------------------------------------------------------
# Non-numeric tensors
# --------------------------------------------------------------------------

NON_NUMERIC = [
    pytest.param(jnp.ones((2, 4), bool), value("bool"), id="bool"),
    pytest.param(np.ones((2, 4), bool), value("bool"), id="numpy-bool"),
    pytest.param(jnp.ones((2, 4), jnp.complex64), "complex64", id="complex"),
    pytest.param([["a", "b", "c", "d"], ["e", "f", "g", "h"]], "'a'", id="strings"),
    pytest.param(np.array([["a", "b", "c", "d"], ["e", "f", "g", "h"]]), "'a'", id="numpy-strings"),
]

TENSOR_CALLS = {
    "l1_unstructured": lambda t: jp.l1_unstructured(t, 1),
    "l1_unstructured-importance_scores": lambda t: jp.l1_unstructured(T24, 1, importance_scores=t),
    "random_unstructured": lambda t: jp.random_unstructured(KEY, t, 1),
    "random_structured": lambda t: jp.random_structured(KEY, t, 1, dim=1),
    "ln_structured": lambda t: jp.ln_structured(t, 1, n=2, dim=1),
    "ln_structured-importance_scores": lambda t: jp.ln_structured(T24, 1, n=2, dim=1, importance_scores=t),
    "compute_mask": lambda t: jp.compute_mask(KEY, t, 1, 1),
    "identity": lambda t: jp.identity(t),
    "slice_norms": lambda t: jp.slice_norms(t, 2, 1),
    "global_l1": lambda t: jp.global_unstructured({"a": t, "b": T13}, 1),
    "global_random": lambda t: jp.global_unstructured({"a": t, "b": T13}, 1, method="random", key=KEY),
    "global-importance_scores": lambda t: jp.global_unstructured(TREE, 1, importance_scores={"a": t, "b": None}),
    "Identity": lambda t: jp.Identity().compute_mask(None, t),
    "L1Unstructured": lambda t: jp.L1Unstructured(1).compute_mask(None, t),
    "RandomUnstructured": lambda t: jp.RandomUnstructured(1).compute_mask(KEY, t),
    "RandomStructured": lambda t: jp.RandomStructured(1, dim=1).compute_mask(KEY, t),
    "LnStructured": lambda t: jp.LnStructured(1, n=2, dim=1).compute_mask(None, t),
    "CustomFromMask": lambda t: jp.CustomFromMask(jnp.ones((2, 4), bool)).compute_mask(None, t),
}


@pytest.mark.parametrize("call", list(TENSOR_CALLS), ids=list(TENSOR_CALLS))
@pytest.mark.parametrize("t, pattern", NON_NUMERIC)
def test_non_numeric_tensor(call, t, pattern):
    if call == "global-importance_scores" and isinstance(t, list):
        # A Python list is a pytree node: importance_scores no longer match the tree.
        with pytest.raises(ValueError, match="structure"):
            TENSOR_CALLS[call](t)
        return
    with pytest.raises(TypeError, match=pattern):
        TENSOR_CALLS[call](t)


# --------------------------------------------------------------------------
# global_unstructured, apply_masks, pruned_indices
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tree", [{}, [], (), None, {"a": []}], ids=["dict", "list", "tuple", "None", "nested"])
@pytest.mark.parametrize("method", ["l1", "random"])
def test_global_empty_tree(tree, method):
    with pytest.raises(ValueError, match="empty"):
        jp.global_unstructured(tree, 0.5, method=method, key=KEY)


@pytest.mark.parametrize("method", ["l2", "L1", "", None], ids=["l2", "L1", "empty", "None"])
def test_global_unknown_method(method):
    with pytest.raises(ValueError, match=re.escape(repr(method))):
        jp.global_unstructured(TREE, 0.5, method=method, key=KEY)


def bad_trees(dtype) -> dict:
    """Trees whose structure is not TREE's ({"a": (2, 4), "b": (1, 3)})."""
    a, b = jnp.ones((2, 4), dtype), jnp.ones((1, 3), dtype)
    return {
        "missing-key": {"a": a},
        "extra-key": {"a": None, "b": None, "c": None},
        "list-for-dict": [a, b],
        "subtree-for-leaf": {"a": {"x": a}, "b": None},
        "subtree-shifts-leaves": {"a": {"x": a, "y": b}, "b": None},
    }


BAD_TREES = bad_trees(bool)
BAD_SCORE_TREES = bad_trees(jnp.float32)


@pytest.mark.parametrize("method", ["l1", "random"])
@pytest.mark.parametrize("masks", list(BAD_TREES.values()), ids=list(BAD_TREES))
def test_global_default_masks_structure(masks, method):
    with pytest.raises(ValueError, match="default_masks"):
        jp.global_unstructured(TREE, 0.5, method=method, key=KEY, default_masks=masks)


@pytest.mark.parametrize("scores", list(BAD_SCORE_TREES.values()), ids=list(BAD_SCORE_TREES))
def test_global_importance_scores_structure(scores):
    with pytest.raises(ValueError, match="importance_scores"):
        jp.global_unstructured(TREE, 0.5, importance_scores=scores)


def test_global_random_rejects_importance_scores():
    with pytest.raises(ValueError, match="importance_scores"):
        jp.global_unstructured(TREE, 0.5, method="random", key=KEY, importance_scores=TREE)


@pytest.mark.parametrize("masks", list(BAD_TREES.values()), ids=list(BAD_TREES))
def test_apply_masks_structure(masks):
    with pytest.raises(ValueError, match="structure"):
        jp.apply_masks(TREE, masks)


def test_pruned_indices_of_a_0d_mask():
    with pytest.raises(ValueError, match="0-d"):
        jp.pruned_indices(jnp.array(True), 0)


@pytest.mark.parametrize("dim, pattern", [(2, r"(?<![\w.-])2(?!\d)"), (-3, value("-3"))], ids=["2", "-3"])
def test_pruned_indices_dim_out_of_range(dim, pattern):
    with pytest.raises(IndexError, match=pattern):
        jp.pruned_indices(jnp.ones((2, 3), bool), dim)


def test_pruned_indices_dim_not_an_int():
    with pytest.raises(TypeError, match=value("1.0")):
        jp.pruned_indices(jnp.ones((2, 3), bool), 1.0)


# --------------------------------------------------------------------------
# Specs validate at construction
# --------------------------------------------------------------------------

SPEC_CONSTRUCTORS = [
    pytest.param(lambda: jp.L1Unstructured("x"), TypeError, "'x'", id="L1Unstructured-str"),
    pytest.param(lambda: jp.RandomUnstructured(None), TypeError, "None", id="RandomUnstructured-None"),
    pytest.param(lambda: jp.RandomStructured(1.5), ValueError, "1.5", id="RandomStructured-1.5"),
    pytest.param(lambda: jp.LnStructured(-1, n=2), ValueError, "-1", id="LnStructured-negative"),
    pytest.param(lambda: jp.LnStructured(0.3, n="abc"), jp.NormOrderError, "'abc'", id="LnStructured-n-abc"),
    pytest.param(lambda: jp.LnStructured(0.3, n=float("nan")), jp.NormOrderError, "nan", id="LnStructured-n-nan"),
    pytest.param(lambda: jp.RandomStructured(0.3, dim=1.5), TypeError, "1.5", id="RandomStructured-dim-1.5"),
    pytest.param(lambda: jp.LnStructured(0.3, n=2, dim=1.5), TypeError, "1.5", id="LnStructured-dim-1.5"),
    pytest.param(lambda: jp.RandomStructured(0.3, dim="0"), TypeError, "'0'", id="RandomStructured-dim-str"),
]


@pytest.mark.parametrize("make, error, pattern", SPEC_CONSTRUCTORS)
def test_spec_validates_at_construction(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


# --------------------------------------------------------------------------
# Errors raise at the call, also when traced under jit
# --------------------------------------------------------------------------

JIT_AMOUNTS = [
    pytest.param("x", id="str"),
    pytest.param(True, id="True"),
    pytest.param(math.nan, id="nan"),
    pytest.param(1.1, id="1.1"),
    pytest.param(-1, id="negative"),
    pytest.param(9, id="count-above-units"),
    pytest.param(jnp.array(1.5), id="jax-array-1.5"),
]

JIT_CALLS = {
    "l1_unstructured": lambda t, a: jp.l1_unstructured(t, a),
    "random_unstructured": lambda t, a: jp.random_unstructured(KEY, t, a),
    "random_structured": lambda t, a: jp.random_structured(KEY, t, a, dim=1),
    "ln_structured": lambda t, a: jp.ln_structured(t, a, n=2, dim=1),
    "global_l1": lambda t, a: jp.global_unstructured({"a": t}, a),
    "L1Unstructured": lambda t, a: jp.L1Unstructured(a).compute_mask(None, t),
    "LnStructured": lambda t, a: jp.LnStructured(a, n=2, dim=1).compute_mask(None, t),
}


def _error_of(fn, *args) -> BaseException:
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("call", list(JIT_CALLS), ids=list(JIT_CALLS))
@pytest.mark.parametrize("amount", JIT_AMOUNTS)
def test_bad_amount_raises_at_trace_time(call, amount):
    """A function that closes over a bad Python amount raises, when jitted, the
    same error as the eager call, and already while tracing (``.lower``)."""
    fn = JIT_CALLS[call]
    eager = _error_of(fn, T24, amount)
    assert isinstance(eager, (TypeError, ValueError))
    jitted = jax.jit(lambda t: fn(t, amount))
    traced = _error_of(jitted.lower, T24)
    assert type(traced) is type(eager)
    assert str(traced) == str(eager)
    called = _error_of(jitted, T24)
    assert type(called) is type(eager) and str(called) == str(eager)


@pytest.mark.parametrize(
    "fn, error",
    [
        (lambda t: jp.ln_structured(t, 1, n="abc", dim=1), jp.NormOrderError),
        (lambda t: jp.ln_structured(t, 1, n=2, dim=3), IndexError),
        (lambda t: jp.random_structured(KEY, t, 1, dim=-4), IndexError),
        (lambda t: jp.random_structured(KEY, t[0], 1, dim=0), ValueError),
        (lambda t: jp.l1_unstructured(t, 1, importance_scores=jnp.ones((4, 2))), jp.PruningShapeError),
        (lambda t: jp.random_unstructured(0, t, 1), TypeError),
    ],
    ids=["n", "dim-3", "dim-minus-4", "1-d", "shape", "key"],
)
def test_other_bad_inputs_raise_at_trace_time(fn, error):
    eager = _error_of(fn, T24)
    assert isinstance(eager, error)
    traced = _error_of(jax.jit(fn).lower, T24)
    assert type(traced) is type(eager) and str(traced) == str(eager)


# --------------------------------------------------------------------------
# Values that were ranked wrongly
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int16, jnp.int32])
def test_most_negative_integer_has_the_largest_magnitude(dtype):
    """|x| of the most negative integer wrapped to itself and ranked smallest."""
    low = int(jnp.iinfo(dtype).min)
    t = jnp.array([low, 5, -7, 3], dtype)
    assert jp.l1_unstructured(t, 3).tolist() == [True, False, False, False]
    tree = {"a": t, "b": jnp.array([-1, 4], jnp.int8)}
    assert jax.tree.map(lambda m: m.tolist(), jp.global_unstructured(tree, 4)) == {
        "a": [True, False, True, False], "b": [False, False]}


@pytest.mark.parametrize(
    ("values", "dtype_name", "shown"),
    [([2**32 + 1, 5], "int64", "4294967297"), ([-(2**31) - 1, 5], "int64", "-2147483649"),
     ([2**32, 5], "uint64", "4294967296"), ([1e40, 1e39], "float64", "1e+40")],
)
def test_64_bit_values_jax_would_narrow_are_refused(values, dtype_name, shown):
    """Without x64, jax narrowed them: 2**32 + 1 ranked below 5, 1e40 equalled 1e39."""
    t = np.array(values, dtype_name)
    for fn in (lambda x: jp.l1_unstructured(x, 1), lambda x: jp.unstructured_mask(x, 1),
               lambda x: jp.global_unstructured({"w": x}, 1),
               lambda x: jp.l1_unstructured(np.ones(2, np.float32), 1, importance_scores=x)):
        with pytest.raises(TypeError, match=rf"{dtype_name}.*{re.escape(shown)}.*jax_enable_x64"):
            fn(t)


def test_64_bit_values_that_fit_rank_exactly():
    assert jp.l1_unstructured(np.array([2**31 - 1, -5, 7], np.int64), 1).tolist() == [True, False, True]
    assert jp.l1_unstructured(np.array([3.0e38, 1.0, np.inf]), 1).tolist() == [True, False, True]


def test_mixed_dtype_trees_rank_on_one_exact_scale():
    """float16 + int8 + bfloat16 + float32 leaves rank on float32's scale (exact for each)."""
    tree = {"a": jnp.array([7, -128], jnp.int8), "b": jnp.array([1.5, 300.0], jnp.bfloat16),
            "c": jnp.array([2.0, 65504.0], jnp.float16), "d": jnp.array([2.5], jnp.float32)}
    masks = jp.global_unstructured(tree, 4)  # |.|: 1.5, 2.0, 2.5, 7 are the lowest
    assert jax.tree.map(lambda m: m.tolist(), masks) == {
        "a": [False, True], "b": [False, True], "c": [False, True], "d": [False]}
    masks = jp.global_unstructured({"a": jnp.array([70000, 3], jnp.int32), "b": jnp.array([-128, 9], jnp.int8)}, 2)
    assert jax.tree.map(lambda m: m.tolist(), masks) == {"a": [True, False], "b": [True, False]}


def test_mixed_dtype_trees_under_strict_promotion():
    """bfloat16 + float32 raised jax's raw TypePromotionError under strict promotion."""
    tree = {"b": jnp.array([1.5, 300.0], jnp.bfloat16), "c": jnp.array([2.0], jnp.float32)}
    with jax.numpy_dtype_promotion("strict"):
        masks = jp.global_unstructured(tree, 2)
    assert jax.tree.map(lambda m: m.tolist(), masks) == {"b": [False, True], "c": [False]}


def test_mixes_no_dtype_holds_exactly_are_refused():
    """int32 + float16 ranked 70000 below 100000 reversed (both became inf in float16)."""
    tree = {"a": jnp.array([70000, 5], jnp.int32), "b": jnp.array([1.5], jnp.float16)}
    with pytest.raises(TypeError, match="float16, int32.*one dtype.*jax_enable_x64"):
        jp.global_unstructured(tree, 1)
    with pytest.raises(TypeError, match="float16, int32"):
        scores = {"a": jnp.full((2, 4), 70000, jnp.int32), "b": jnp.ones((1, 3), jnp.float16)}
        jp.global_unstructured(TREE, 1, importance_scores=scores)


@pytest.mark.parametrize("shape", [(2, 3.5), (2.0, 3), (2, -3), (True, 3), "ab", 3])
def test_structured_mask_shape_must_be_ints(shape):
    """A float extent was truncated (3.5 -> 3) and accepted."""
    with pytest.raises(TypeError, match="shape must be a tuple of"):
        jp.structured_mask(jnp.ones(3), shape, 1, dim=1)


def test_torch_tensors_that_require_grad_get_a_clear_error():
    torch = pytest.importorskip("torch")
    w = torch.ones(2, 4, requires_grad=True)
    for fn in (lambda: jp.l1_unstructured(w, 1), lambda: jp.global_unstructured({"w": w}, 1),
               lambda: jp.l1_unstructured(T24, 1, default_mask=w), lambda: jp.l1_unstructured(T24, 1, importance_scores=w)):
        with pytest.raises(TypeError, match=r"torch\.Tensor .*requires_grad=True.*jaxprune\.interop\.to_jax.*detach"):
            fn()


def test_leaf_key_checks_its_arguments():
    with pytest.raises(TypeError, match="path must be a str.*int: 3"):
        jp.leaf_key(KEY, 3)
    with pytest.raises(TypeError, match="key must be a PRNG key.*'abc'"):
        jp.leaf_key("abc", "a.kernel")


def test_traced_dim_says_to_mark_it_static():
    with pytest.raises(TypeError, match=r"dim must be a static Python int.*static_argnames=\('dim', 'n'\)"):
        jax.jit(lambda t, d: jp.ln_structured(t, 1, 2, d))(T24, 1)
    with pytest.raises(TypeError, match="static_argnames"):
        jax.jit(lambda t, d: jp.random_structured(KEY, t, 1, d))(T24, 1)
    got = jax.jit(lambda t, d: jp.ln_structured(t, 1, 2, d), static_argnames="d")(T24, 1)
    assert got.tolist() == jp.ln_structured(T24, 1, 2, 1).tolist()
