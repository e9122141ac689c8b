"""Differential tests: jaxprune against torch.nn.utils.prune itself.

Deterministic methods (L1Unstructured, LnStructured, global L1) must give the
very same mask as torch on inputs without ties (torch leaves ties
implementation-defined, jaxprune defines them, so ties are avoided here). The
random methods draw differently, so only the number of pruned units is
compared. Iterative pruning (``default_mask=``) is compared with torch's
``PruningContainer``, which is what torch's module API uses from the second
pruning of a tensor onward.

Shapes include tensors with more than 4096 values so that jaxprune's
radix-select path runs, not only its sort path.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import _selection  # noqa: E402

# --------------------------------------------------------------------------
# Input builders
# --------------------------------------------------------------------------


def distinct_values(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """float32 values whose magnitudes are all different (a shuffled 1/8, 2/8, ...), random signs."""
    n = math.prod(shape)
    mags = (rng.permutation(n) + 1).astype(np.float32) * np.float32(0.125)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=n)
    return (mags * signs).reshape(shape)


def distinct_norm_tensor(
    shape: tuple[int, ...], dim: int, rng: np.random.Generator, same_base: bool = False
) -> np.ndarray:
    """A tensor whose slices along ``dim`` have clearly different n-norms for every n != 0.

    Slice i is ``c_i * b_i`` where the factors ``c_i`` are distinct (gap >= 1/S relative) and
    each ``b_i`` is a signed permutation of one base vector without zeros, so every vector
    norm of slice i is exactly ``c_i * norm(base)``. For the nuclear norm the slices must be
    the same matrix up to scale (``same_base=True``).
    """
    dim = dim % len(shape)
    slices = shape[dim]
    rest = tuple(s for d, s in enumerate(shape) if d != dim)
    m = math.prod(rest)
    base = rng.uniform(0.5, 1.5, size=m)
    factors = 1.0 + rng.permutation(slices) / slices
    rows = []
    for c in factors:
        if same_base:
            b = base
        else:
            b = rng.permutation(base) * rng.choice([-1.0, 1.0], size=m)
        rows.append(c * b)
    arr = np.stack(rows).reshape((slices,) + rest)
    return np.moveaxis(arr, 0, dim).astype(np.float32)


def distinct_nonzero_count_tensor(shape: tuple[int, ...], dim: int, rng: np.random.Generator) -> np.ndarray:
    """A tensor whose slices along ``dim`` have pairwise different numbers of nonzeros (for n=0)."""
    dim = dim % len(shape)
    slices = shape[dim]
    rest = tuple(s for d, s in enumerate(shape) if d != dim)
    m = math.prod(rest)
    assert slices <= m + 1, "n=0 needs at most (slice size + 1) slices to make counts distinct"
    counts = rng.choice(m + 1, size=slices, replace=False)
    rows = np.zeros((slices, m), np.float32)
    for i, c in enumerate(counts):
        where = rng.choice(m, size=c, replace=False)
        rows[i, where] = rng.uniform(0.5, 2.0, size=c) * rng.choice([-1.0, 1.0], size=c)
    return np.moveaxis(rows.reshape((slices,) + rest), 0, dim).astype(np.float32)


def unstructured_default_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random keep-mask with roughly 10-60 % of the entries already pruned."""
    return rng.random(shape) >= rng.uniform(0.1, 0.6)


def structured_default_mask(shape: tuple[int, ...], dim: int, rng: np.random.Generator) -> np.ndarray:
    """Some slices along ``dim`` entirely pruned, the others partially pruned but alive."""
    dim = dim % len(shape)
    slices = shape[dim]
    mask = rng.random(shape) >= 0.3
    moved = np.moveaxis(mask, dim, 0)  # a view: writes go to ``mask``
    dead = rng.choice(slices, size=int(rng.integers(0, slices)), replace=False)
    moved[dead] = False
    for i in range(slices):
        if i not in dead and not moved[i].any():
            moved[i].flat[0] = True
    return mask


def alive_slices(mask: np.ndarray, dim: int) -> int:
    dim = dim % mask.ndim
    others = tuple(d for d in range(mask.ndim) if d != dim)
    return int(np.any(mask, axis=others).sum())


def pruned_slices(mask: np.ndarray, dim: int) -> int:
    return mask.shape[dim % mask.ndim] - alive_slices(mask, dim)


# --------------------------------------------------------------------------
# torch side
# --------------------------------------------------------------------------


def torch_mask(method, t: np.ndarray, default_mask: np.ndarray | None = None) -> np.ndarray:
    """torch's keep-mask as a bool array.

    Without a default mask: the method alone on an all-ones mask (torch's first pruning).
    With one: a PruningContainer holding the method, torch's iterative rule.
    """
    tt = torch.from_numpy(np.array(t, copy=True))
    if default_mask is None:
        out = method.compute_mask(tt, default_mask=torch.ones_like(tt))
    else:
        container = prune.PruningContainer()
        container._tensor_name = "w"
        method._tensor_name = "w"
        container.add_pruning_method(method)
        dm = torch.from_numpy(np.asarray(default_mask, np.float32).copy())
        out = container.compute_mask(tt, dm)
    return out.detach().numpy() != 0


def jp_dm(default_mask: np.ndarray | None):
    return None if default_mask is None else jnp.asarray(default_mask)


# --------------------------------------------------------------------------
# Case tables (fixed seeds, readable ids)
# --------------------------------------------------------------------------

UNSTRUCTURED_SHAPES = [
    (7,),
    (13,),
    (4, 5),
    (3, 1, 6),
    (2, 3, 4, 5),
    (5000,),  # > 4096 values: radix path
    (70, 80),  # radix path
    (3, 50, 40),  # radix path
    (2, 3, 30, 30),  # radix path
]


def _amounts_for(units: int, rng: np.random.Generator) -> list:
    """Two fractions (one random, one exact-half-prone) and two counts (random, all)."""
    fractions = [float(np.round(rng.uniform(0.0, 1.0), 3)), 0.5]
    counts = [int(rng.integers(0, units + 1)), units]
    return fractions + counts


def _unstructured_cases():
    rng = np.random.default_rng(1234)
    cases = []
    for shape in UNSTRUCTURED_SHAPES:
        n = math.prod(shape)
        for with_dm in (False, True):
            for amount in _amounts_for(n if not with_dm else n // 3, rng):
                seed = int(rng.integers(1 << 30))
                cid = f"{shape}-amount={amount!r}-{'dm' if with_dm else 'nodm'}"
                cases.append(pytest.param(shape, amount, with_dm, seed, id=cid))
    return cases


NORMS_2D = [1, 2, 3, math.inf, -math.inf, 0.5, -1, "fro"]
NORMS_3D = [1, 2, 3, math.inf, -math.inf, 0.5, -1, "fro", "nuc"]
NORMS_4D = [1, 2, 3, math.inf, -math.inf, 0.5, -1]

STRUCTURED_SHAPES = [
    (6, 5),
    (9, 4),
    (3, 7, 5),
    (4, 3, 5, 2),
    (70, 80),  # > 4096 values
    (3, 50, 40),  # > 4096 values
    (4500, 2),  # > 4096 slices along dim 0: the slice selection takes the radix path
]


def _norms_for(shape):
    return {2: NORMS_2D, 3: NORMS_3D, 4: NORMS_4D}[len(shape)]


def _ln_cases():
    rng = np.random.default_rng(99)
    cases = []
    for shape in STRUCTURED_SHAPES:
        big = math.prod(shape) > 4096
        norms = _norms_for(shape)
        if big:  # keep the run time moderate on the big shapes
            norms = [n for n in norms if n in (1, 2, math.inf, -1, "nuc")]
        for n in norms:
            for with_dm in (False, True):
                dim = int(rng.integers(-len(shape), len(shape)))
                if shape == (4500, 2):
                    dim = int(rng.choice([0, -2]))
                if rng.random() < 0.5:
                    amount = float(np.round(rng.uniform(0.0, 1.0), 2))
                else:
                    amount = -1  # placeholder: an int count drawn when the mask is known
                seed = int(rng.integers(1 << 30))
                cid = f"{shape}-n={n}-dim={dim}-{'frac' if amount != -1 else 'count'}-{'dm' if with_dm else 'nodm'}"
                cases.append(pytest.param(shape, n, dim, amount, with_dm, seed, id=cid))
    return cases


def _ln_zero_cases():
    rng = np.random.default_rng(7)
    cases = []
    for shape in [(6, 5), (5, 6), (3, 7, 5), (4, 3, 5, 2), (8, 70)]:
        for dim in range(-len(shape), len(shape)):
            slices = shape[dim]
            if slices > math.prod(shape) // slices + 1:
                continue
            for with_dm in (False, True):
                amount = float(np.round(rng.uniform(0, 1), 2)) if rng.random() < 0.5 else -1
                seed = int(rng.integers(1 << 30))
                cid = f"{shape}-dim={dim}-{'frac' if amount != -1 else 'count'}-{'dm' if with_dm else 'nodm'}"
                cases.append(pytest.param(shape, dim, amount, with_dm, seed, id=cid))
    return cases


def _draw_count(amount, units: int, rng: np.random.Generator):
    return int(rng.integers(0, units + 1)) if amount == -1 else amount


# --------------------------------------------------------------------------
# L1Unstructured: exact masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, amount, with_dm, seed", _unstructured_cases())
def test_l1_unstructured_mask_equals_torch(shape, amount, with_dm, seed):
    rng = np.random.default_rng(seed)
    t = distinct_values(shape, rng)
    dm = unstructured_default_mask(shape, rng) if with_dm else None
    if with_dm and isinstance(amount, int):
        amount = min(amount, int(dm.sum()))
    expected = torch_mask(prune.L1Unstructured(amount), t, dm)
    got = np.asarray(jp.l1_unstructured(jnp.asarray(t), amount, default_mask=jp_dm(dm)))
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(5, 6), (70, 80)], ids=str)
@pytest.mark.parametrize("with_dm", [False, True], ids=["nodm", "dm"])
def test_l1_unstructured_importance_scores_equal_torch(shape, with_dm):
    rng = np.random.default_rng(5)
    t = rng.standard_normal(shape).astype(np.float32)  # ties here would not matter: scores rank
    scores = distinct_values(shape, rng)
    dm = unstructured_default_mask(shape, rng) if with_dm else None
    for amount in (0.3, 0.5, 7):
        expected = torch_mask(prune.L1Unstructured(amount), scores, dm)
        got = jp.l1_unstructured(jnp.asarray(t), amount, importance_scores=jnp.asarray(scores), default_mask=jp_dm(dm))
        np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"amount={amount}")


def test_l1_unstructured_integer_tensor_equals_torch():
    rng = np.random.default_rng(11)
    t = (distinct_values((6, 7), rng) * 8).astype(np.int32)  # distinct integer magnitudes
    for amount in (0.4, 0.5, 13):
        expected = torch_mask(prune.L1Unstructured(amount), t)
        got = jp.l1_unstructured(jnp.asarray(t), amount)
        np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"amount={amount}")


def test_l1_unstructured_two_container_rounds_equal_torch():
    """Three successive L1 prunings, each on top of the last mask, as torch's module API does."""
    rng = np.random.default_rng(3)
    t = distinct_values((9, 11), rng)
    torch_keep = np.ones(t.shape, bool)
    jp_keep = jnp.ones(t.shape, bool)
    for amount in (0.3, 0.5, 10):
        torch_keep = torch_mask(prune.L1Unstructured(amount), t, torch_keep)
        jp_keep = jp.l1_unstructured(jnp.asarray(t), amount, default_mask=jp_keep)
        np.testing.assert_array_equal(np.asarray(jp_keep), torch_keep, err_msg=f"amount={amount}")


# --------------------------------------------------------------------------
# LnStructured: exact masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, n, dim, amount, with_dm, seed", _ln_cases())
def test_ln_structured_mask_equals_torch(shape, n, dim, amount, with_dm, seed):
    rng = np.random.default_rng(seed)
    t = distinct_norm_tensor(shape, dim, rng, same_base=(n == "nuc"))
    dm = structured_default_mask(shape, dim, rng) if with_dm else None
    units = shape[dim] if dm is None else alive_slices(dm, dim)
    amount = _draw_count(amount, units, rng)
    expected = torch_mask(prune.LnStructured(amount, n, dim=dim), t, dm)
    got = np.asarray(jp.ln_structured(jnp.asarray(t), amount, n, dim, default_mask=jp_dm(dm)))
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape, dim, amount, with_dm, seed", _ln_zero_cases())
def test_ln_structured_n0_mask_equals_torch(shape, dim, amount, with_dm, seed):
    rng = np.random.default_rng(seed)
    t = distinct_nonzero_count_tensor(shape, dim, rng)
    dm = structured_default_mask(shape, dim, rng) if with_dm else None
    units = shape[dim] if dm is None else alive_slices(dm, dim)
    amount = _draw_count(amount, units, rng)
    expected = torch_mask(prune.LnStructured(amount, 0, dim=dim), t, dm)
    got = jp.ln_structured(jnp.asarray(t), amount, 0, dim, default_mask=jp_dm(dm))
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("n", [1, 2, math.inf], ids=str)
def test_ln_structured_importance_scores_equal_torch(n):
    rng = np.random.default_rng(17)
    shape, dim = (8, 5, 3), 1
    t = rng.standard_normal(shape).astype(np.float32)
    scores = distinct_norm_tensor(shape, dim, rng)
    for amount in (0.4, 2):
        expected = torch_mask(prune.LnStructured(amount, n, dim=dim), scores)
        got = jp.ln_structured(jnp.asarray(t), amount, n, dim, importance_scores=jnp.asarray(scores))
        np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"amount={amount}")


def test_ln_structured_the_documented_4x4_table():
    """torch's experiment table: 4x4, dim=1, amount=1 prunes col 3 for n in 1,2,3,inf,fro and col 0 otherwise."""
    t = np.array(
        [[1.0, 0.0, 1.0, 0.5], [1.0, 2.0, 1.0, 0.5], [1.0, 2.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.5]], np.float32
    )
    for n in (1, 2, 3, math.inf, "fro", 0, -math.inf, -1, 0.5):
        expected = torch_mask(prune.LnStructured(1, n, dim=1), t)
        got = np.asarray(jp.ln_structured(jnp.asarray(t), 1, n, 1))
        np.testing.assert_array_equal(got, expected, err_msg=f"n={n}")


# --------------------------------------------------------------------------
# Random methods: the same counts as torch
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape, amount, with_dm, seed", _unstructured_cases())
def test_random_unstructured_count_equals_torch(shape, amount, with_dm, seed):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal(shape).astype(np.float32)
    dm = unstructured_default_mask(shape, rng) if with_dm else None
    if with_dm and isinstance(amount, int):
        amount = min(amount, int(dm.sum()))
    torch.manual_seed(seed)
    expected = torch_mask(prune.RandomUnstructured(amount), t, dm)
    got = np.asarray(jp.random_unstructured(jax.random.key(seed), jnp.asarray(t), amount, default_mask=jp_dm(dm)))
    assert int((~got).sum()) == int((~expected).sum())
    if dm is not None:
        assert not np.any(got & ~dm), "the result must stay within the default mask"


def _random_structured_cases():
    rng = np.random.default_rng(4321)
    cases = []
    for shape in [(6, 5), (9, 4), (3, 7, 5), (4, 3, 5, 2), (70, 80), (4500, 2)]:
        for with_dm in (False, True):
            for kind in ("frac", "half", "count"):
                dim = int(rng.integers(-len(shape), len(shape)))
                seed = int(rng.integers(1 << 30))
                cid = f"{shape}-dim={dim}-{kind}-{'dm' if with_dm else 'nodm'}"
                cases.append(pytest.param(shape, dim, kind, with_dm, seed, id=cid))
    return cases


@pytest.mark.parametrize("shape, dim, kind, with_dm, seed", _random_structured_cases())
def test_random_structured_count_equals_torch(shape, dim, kind, with_dm, seed):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal(shape).astype(np.float32)
    dm = structured_default_mask(shape, dim, rng) if with_dm else None
    units = shape[dim] if dm is None else alive_slices(dm, dim)
    amount = {"frac": float(np.round(rng.uniform(0, 1), 2)), "half": 0.5, "count": int(rng.integers(0, units + 1))}[kind]
    torch.manual_seed(seed)
    expected = torch_mask(prune.RandomStructured(amount, dim=dim), t, dm)
    got = np.asarray(jp.random_structured(jax.random.key(seed), jnp.asarray(t), amount, dim, default_mask=jp_dm(dm)))
    assert pruned_slices(got, dim) == pruned_slices(expected, dim)
    if dm is not None:
        assert not np.any(got & ~dm), "the result must stay within the default mask"
    # torch and jaxprune both prune whole slices (on top of the default mask)
    keep_slices = np.any(got, axis=tuple(d for d in range(len(shape)) if d != dim % len(shape)))
    view = [1] * len(shape)
    view[dim] = shape[dim]
    base = np.ones(shape, bool) if dm is None else dm
    np.testing.assert_array_equal(got, base & keep_slices.reshape(view))


@pytest.mark.parametrize("amount", [0.3, 0.5, 2], ids=str)
def test_compute_mask_count_equals_torch_random_structured(amount):
    rng = np.random.default_rng(8)
    t = rng.standard_normal((2, 64, 3, 3)).astype(np.float32)
    torch.manual_seed(0)
    expected = torch_mask(prune.RandomStructured(amount, dim=1), t)
    got = np.asarray(jp.compute_mask(jax.random.key(0), jnp.asarray(t), amount, 1))
    assert jp.pruned_indices(got, 1).size == pruned_slices(expected, 1)


# --------------------------------------------------------------------------
# Float amounts at exact halves and float64 rounding: torch's counts
# --------------------------------------------------------------------------

HALF_CASES = [
    (0.5, 1),
    (0.5, 3),
    (0.5, 5),
    (0.5, 7),
    (0.5, 9),
    (0.5, 11),
    (0.25, 10),
    (0.15, 10),
    (0.35, 10),
    (0.45, 10),
    (0.05, 10),
    (0.051, 10),
    (0.29, 100),  # 0.29 * 100 == 28.999999999999996 -> 29
    (0.3, 64),
    (0.4, 17),
    (1.0, 15),
    (0.0, 15),
]
HALF_IDS = [f"{a}x{n}" for a, n in HALF_CASES]


@pytest.mark.parametrize("amount, units", HALF_CASES, ids=HALF_IDS)
def test_float_amount_counts_equal_torch_unstructured(amount, units):
    rng = np.random.default_rng(units)
    t = distinct_values((units,), rng)
    expected = torch_mask(prune.L1Unstructured(amount), t)
    assert int((~expected).sum()) == round(amount * units)  # the documented rule, checked on torch
    got = np.asarray(jp.l1_unstructured(jnp.asarray(t), amount))
    np.testing.assert_array_equal(got, expected)

    torch.manual_seed(0)
    torch_random = torch_mask(prune.RandomUnstructured(amount), t)
    got_random = np.asarray(jp.random_unstructured(jax.random.key(0), jnp.asarray(t), amount))
    assert int((~got_random).sum()) == int((~torch_random).sum())


@pytest.mark.parametrize("amount, units", HALF_CASES, ids=HALF_IDS)
def test_float_amount_counts_equal_torch_structured(amount, units):
    rng = np.random.default_rng(units)
    t = distinct_norm_tensor((units, 3), 0, rng)
    expected = torch_mask(prune.LnStructured(amount, 2, dim=0), t)
    got = np.asarray(jp.ln_structured(jnp.asarray(t), amount, 2, 0))
    np.testing.assert_array_equal(got, expected)

    torch.manual_seed(0)
    torch_random = torch_mask(prune.RandomStructured(amount, dim=0), t)
    got_random = np.asarray(jp.random_structured(jax.random.key(0), jnp.asarray(t), amount, 0))
    assert pruned_slices(got_random, 0) == pruned_slices(torch_random, 0)


@pytest.mark.parametrize("amount, units", HALF_CASES, ids=HALF_IDS)
def test_float_amount_counts_equal_torch_in_container(amount, units):
    """The amount applies to the ``units`` entries still unpruned (4 more are already pruned)."""
    rng = np.random.default_rng(units + 1)
    t = distinct_values((units + 4,), rng)
    dm = np.ones(units + 4, bool)
    dm[rng.choice(units + 4, size=4, replace=False)] = False
    expected = torch_mask(prune.L1Unstructured(amount), t, dm)
    assert int((~expected).sum()) == 4 + round(amount * units)
    got = np.asarray(jp.l1_unstructured(jnp.asarray(t), amount, default_mask=jnp.asarray(dm)))
    np.testing.assert_array_equal(got, expected)

    # structured: rows 0 and 1 of units + 2 are entirely pruned
    t2 = distinct_norm_tensor((units + 2, 3), 0, rng)
    dm2 = np.ones((units + 2, 3), bool)
    dm2[:2] = False
    dm2[2, 0] = False  # partially pruned: still a candidate
    expected2 = torch_mask(prune.LnStructured(amount, 1, dim=0), t2, dm2)
    got2 = np.asarray(jp.ln_structured(jnp.asarray(t2), amount, 1, 0, default_mask=jnp.asarray(dm2)))
    np.testing.assert_array_equal(got2, expected2)


# --------------------------------------------------------------------------
# global_unstructured
# --------------------------------------------------------------------------


def _build_modules(big: bool) -> list[nn.Module]:
    if big:
        return [nn.Linear(80, 70), nn.Linear(30, 20), nn.Conv2d(3, 4, 3)]
    return [nn.Linear(6, 4), nn.Linear(4, 3), nn.Conv2d(2, 3, 3)]


def _set_distinct_weights(modules, rng) -> list[np.ndarray]:
    """Give every weight and bias values whose magnitudes are distinct across all of them."""
    params = [p for m in modules for p in (m.weight, m.bias)]
    total = sum(p.numel() for p in params)
    flat = distinct_values((total,), rng)
    arrays, start = [], 0
    with torch.no_grad():
        for p in params:
            values = flat[start : start + p.numel()].reshape(tuple(p.shape))
            p.copy_(torch.from_numpy(values))
            arrays.append(values)
            start += p.numel()
    return arrays


GLOBAL_CASES = [
    pytest.param(False, 0.3, 0.5, id="small-0.3-then-0.5"),
    pytest.param(False, 0.5, 0.5, id="small-0.5-then-0.5"),
    pytest.param(False, 17, 9, id="small-17-then-9"),
    pytest.param(False, 0.25, 5, id="small-0.25-then-5"),
    pytest.param(True, 0.4, 0.35, id="big-0.4-then-0.35"),
    pytest.param(True, 2001, 0.5, id="big-2001-then-0.5"),
]


@pytest.mark.parametrize("tree_kind", ["list", "dict"])
@pytest.mark.parametrize("big, amount1, amount2", GLOBAL_CASES)
def test_global_unstructured_two_rounds_equal_torch(tree_kind, big, amount1, amount2):
    rng = np.random.default_rng(2024 if big else 7)
    modules = _build_modules(big)
    arrays = _set_distinct_weights(modules, rng)
    names = [f"{i}.{name}" for i in range(len(modules)) for name in ("weight", "bias")]
    torch_params = [(m, name) for m in modules for name in ("weight", "bias")]

    def as_tree(values):
        values = [jnp.asarray(v) for v in values]
        return dict(zip(names, values)) if tree_kind == "dict" else values

    def as_list(tree):
        return [np.asarray(tree[k]) for k in names] if tree_kind == "dict" else [np.asarray(m) for m in tree]

    # Round 1
    prune.global_unstructured(torch_params, pruning_method=prune.L1Unstructured, amount=amount1)
    torch_masks1 = [getattr(m, name + "_mask").numpy() != 0 for m, name in torch_params]
    masks1 = jp.global_unstructured(as_tree(arrays), amount1)
    for name, got, expected in zip(names, as_list(masks1), torch_masks1):
        np.testing.assert_array_equal(got, expected, err_msg=f"round 1, {name}")

    # Round 2: torch ranks the current (pruned) weights and restricts to its existing masks.
    prune.global_unstructured(torch_params, pruning_method=prune.L1Unstructured, amount=amount2)
    torch_masks2 = [getattr(m, name + "_mask").numpy() != 0 for m, name in torch_params]
    total_alive = sum(int(m.sum()) for m in torch_masks1)
    k2 = amount2 if isinstance(amount2, int) else round(amount2 * total_alive)
    assert sum(int((~m).sum()) for m in torch_masks2) == sum(int((~m).sum()) for m in torch_masks1) + k2

    pruned_weights = jp.apply_masks(as_tree(arrays), masks1)
    for weights in (pruned_weights, as_tree(arrays)):  # the candidates are the same either way
        masks2 = jp.global_unstructured(weights, amount2, default_masks=masks1)
        for name, got, expected in zip(names, as_list(masks2), torch_masks2):
            np.testing.assert_array_equal(got, expected, err_msg=f"round 2, {name}")


GLOBAL_HALF_CASES = [pytest.param(a, n, id=f"{a}x{n}") for a, n in HALF_CASES if n >= 2]


@pytest.mark.parametrize("amount, units", GLOBAL_HALF_CASES)
def test_global_unstructured_float_amount_counts_equal_torch(amount, units):
    """A global amount over two tensors of ``units`` entries in total."""
    rng = np.random.default_rng(units)
    a = nn.Linear(units // 2, 1, bias=False)
    b = nn.Linear(units - units // 2, 1, bias=False)
    arrays = _set_distinct_weights_no_bias([a, b], rng)
    prune.global_unstructured([(a, "weight"), (b, "weight")], pruning_method=prune.L1Unstructured, amount=amount)
    expected = [a.weight_mask.numpy() != 0, b.weight_mask.numpy() != 0]
    assert sum(int((~m).sum()) for m in expected) == round(amount * units)
    got = jp.global_unstructured([jnp.asarray(x) for x in arrays], amount)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(g), e)


def _set_distinct_weights_no_bias(modules, rng) -> list[np.ndarray]:
    total = sum(m.weight.numel() for m in modules)
    flat = distinct_values((total,), rng)
    arrays, start = [], 0
    with torch.no_grad():
        for m in modules:
            values = flat[start : start + m.weight.numel()].reshape(tuple(m.weight.shape))
            m.weight.copy_(torch.from_numpy(values))
            arrays.append(values)
            start += m.weight.numel()
    return arrays


def test_global_unstructured_random_count_equals_torch():
    modules = _build_modules(big=False)
    rng = np.random.default_rng(0)
    arrays = _set_distinct_weights(modules, rng)
    params = [(m, name) for m in modules for name in ("weight", "bias")]
    torch.manual_seed(0)
    prune.global_unstructured(params, pruning_method=prune.RandomUnstructured, amount=0.45)
    torch_pruned = sum(int((getattr(m, n + "_mask") == 0).sum()) for m, n in params)
    masks = jp.global_unstructured([jnp.asarray(x) for x in arrays], 0.45, method="random", key=jax.random.key(0))
    assert sum(int((~np.asarray(m)).sum()) for m in masks) == torch_pruned


# --------------------------------------------------------------------------
# Both selection paths against torch
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sort_max", [0, 1 << 40], ids=["radix", "sort"])
def test_both_selection_paths_equal_torch(sort_max):
    """Small inputs forced through the radix path (and big ones through the sort path)."""
    rng = np.random.default_rng(31)
    # chunk=1024: several histogram chunks on (70, 80)
    with _selection.forced(sort_max=sort_max, chunk=1024):
        for shape in [(9, 11), (70, 80)]:
            t = distinct_values(shape, rng)
            dm = unstructured_default_mask(shape, rng)
            for amount in (0.3, 0.5, 17):
                for mask in (None, dm):
                    expected = torch_mask(prune.L1Unstructured(amount), t, mask)
                    got = jp.l1_unstructured(jnp.asarray(t), amount, default_mask=jp_dm(mask))
                    np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"{shape} amount={amount}")
            tn = distinct_norm_tensor(shape, 1, rng)
            dms = structured_default_mask(shape, 1, rng)
            for mask in (None, dms):
                expected = torch_mask(prune.LnStructured(0.4, 2, dim=1), tn, mask)
                got = jp.ln_structured(jnp.asarray(tn), 0.4, 2, 1, default_mask=jp_dm(mask))
                np.testing.assert_array_equal(np.asarray(got), expected, err_msg=f"ln {shape}")
