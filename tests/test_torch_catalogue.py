"""torch's own ``test/nn/test_pruning.py``, ported to jaxprune's functional API.

Each test names the torch test it ports (catalogue numbers from section 4 of
``shared/TORCH_PRUNE_SEMANTICS.md``) and keeps its fixed inputs and expected
values. Masks here are bool keep-masks (True = keep); torch's 0/1 masks are
compared as ``torch_mask != 0``. ``default_mask=`` follows torch's
``PruningContainer`` rule (the amount applies to the units still unpruned), so
torch's second module-level prune is our call with ``default_mask`` set.

Where torch has no ties on the input, the test also runs torch's own
``torch.nn.utils.prune`` on the same values and checks the masks agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from helpers import n_pruned

KEY = jax.random.key(0)

# Fixtures shared by several torch tests.
W24 = np.array([[1, 2, 3, 4], [-4, -3, -2, -1]], np.float32)
T24 = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
DM24 = np.array([[1, 1, 1, 0], [1, 1, 0, 1]], np.int64)  # torch's int64 default mask
W13 = np.array([[0, 0.1, -2]], np.float32)
# Conv2d(3, 1, 2) weight of tests 21 and 22.
CONV_W = np.array(
    [[[[1, 2], [1, 2.5]], [[0.5, 1], [0.1, 0.1]], [[-3, -5], [0.1, -1]]]], np.float32
)
CONV_SCORES = np.array(
    [[[[10, 1], [10, 1]], [[30, 3], [30, 3]], [[-20, -2], [-20, -2]]]], np.float32
)
# The parameter shapes of torch's MODS fixture: Linear(5, 7) and Conv3d(2, 2, 2).
MOD_SHAPES = {
    "linear.weight": (7, 5),
    "linear.bias": (7,),
    "conv3d.weight": (2, 2, 2, 2, 2),
    "conv3d.bias": (2,),
}


def as_bool(torch_mask) -> np.ndarray:
    return torch_mask.detach().numpy() != 0


def assert_mask(mask, expected) -> None:
    mask = np.asarray(mask)
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, np.asarray(expected, bool))


# --------------------------------------------------------------------------
# 1-3: amount validation and counting
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount, expected_pruned",
    [(0.34, 510), (1500, 1500), (0, 0), (0.0, 0), (1, 1), (1.0, 1500)],
    ids=["0.34", "1500", "0", "0.0", "1", "1.0"],
)
def test_validate_pruning_amount_init_accepts(amount, expected_pruned):
    """Port of #1 test_validate_pruning_amount_init (accepted amounts).

    Every spec takes the amount; on a tensor of 1500 entries the functions
    prune round(amount * 1500) entries for a float and ``amount`` for an int.
    """
    for spec in (jp.L1Unstructured(amount), jp.RandomUnstructured(amount)):
        assert spec.amount == amount
    assert jp.RandomStructured(amount, dim=0).amount == amount
    assert jp.LnStructured(amount, n=2, dim=0).amount == amount

    t = jnp.arange(1.0, 1501.0)
    assert n_pruned(jp.l1_unstructured(t, amount)) == expected_pruned
    assert n_pruned(jp.random_unstructured(KEY, t, amount)) == expected_pruned
    assert n_pruned(jp.L1Unstructured(amount).compute_mask(None, t)) == expected_pruned


@pytest.mark.parametrize(
    "amount, error",
    [("I'm a string", TypeError), (1.1, ValueError), (20.0, ValueError), (-10, ValueError)],
    ids=["string", "1.1", "20.0", "-10"],
)
def test_validate_pruning_amount_init_rejects(amount, error):
    """Port of #1 test_validate_pruning_amount_init (rejected amounts)."""
    for make in (jp.L1Unstructured, jp.RandomUnstructured, jp.RandomStructured):
        with pytest.raises(error):
            make(amount)
    with pytest.raises(error):
        jp.LnStructured(amount, n=2)
    with pytest.raises(error):
        jp.l1_unstructured(jnp.ones(30), amount)
    with pytest.raises(error):
        jp.random_unstructured(KEY, jnp.ones(30), amount)


def test_validate_pruning_amount_count_above_size():
    """Port of #2 test_validate_pruning_amount: amount=20 on 19 units raises."""
    with pytest.raises(ValueError):
        jp.l1_unstructured(jnp.ones(19), 20)
    with pytest.raises(ValueError):
        jp.random_unstructured(KEY, jnp.ones(19), 20)
    with pytest.raises(ValueError):
        jp.random_structured(KEY, jnp.ones((2, 19)), 20, dim=1)
    with pytest.raises(ValueError):
        jp.ln_structured(jnp.ones((2, 19)), 20, n=2, dim=1)


@pytest.mark.parametrize(
    "amount, size, expected_pruned",
    [(0.3, 0, 0), (19, 20, 19), (0, 0, 0), (1, 1, 1)],
    ids=["0.3-of-0", "19-of-20", "0-of-0", "1-of-1"],
)
def test_validate_pruning_amount_accepts(amount, size, expected_pruned):
    """Port of #2 test_validate_pruning_amount (accepted pairs), unstructured and structured."""
    t = jnp.arange(1.0, size + 1.0)
    assert n_pruned(jp.l1_unstructured(t, amount)) == expected_pruned
    assert n_pruned(jp.random_unstructured(KEY, t, amount)) == expected_pruned

    rows = jnp.ones((3, size))
    mask = jp.random_structured(KEY, rows, amount, dim=1)
    assert mask.shape == (3, size)
    assert jp.pruned_indices(mask, 1).size == expected_pruned


@pytest.mark.parametrize(
    "amount, size, expected",
    [(0, 15, 0), (10, 15, 10), (1, 15, 1), (1.0, 15, 15), (0.4, 17, 7)],
    ids=["0", "10", "int-1", "float-1.0", "0.4-of-17"],
)
def test_compute_nparams_to_prune(amount, size, expected):
    """Port of #3 test_compute_nparams_to_prune: the count every method prunes."""
    t = jnp.arange(1.0, size + 1.0)
    assert n_pruned(jp.l1_unstructured(t, amount)) == expected
    assert n_pruned(jp.random_unstructured(KEY, t, amount)) == expected

    rows = jnp.stack([t, -t])  # (2, size): `size` slices along dim 1
    assert jp.pruned_indices(jp.random_structured(KEY, rows, amount, dim=1), 1).size == expected
    assert jp.pruned_indices(jp.ln_structured(rows, amount, n=1, dim=1), 1).size == expected
    assert jp.pruned_indices(jp.compute_mask(KEY, rows, amount, 1), 1).size == expected


# --------------------------------------------------------------------------
# 4, 6: random pruning: mask sizes, pruned tensor = p * mask
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MOD_SHAPES), ids=list(MOD_SHAPES))
def test_random_pruning_sizes(name):
    """Port of #4 test_random_pruning_sizes: the mask has the parameter's shape.

    random_unstructured(amount=0.1) on each MODS parameter: a bool mask of the
    parameter's shape pruning round(0.1 * size) entries.
    """
    shape = MOD_SHAPES[name]
    param = jax.random.normal(jax.random.key(1), shape)
    mask = jp.random_unstructured(KEY, param, 0.1)
    assert mask.shape == param.shape
    assert mask.dtype == jnp.bool_
    assert n_pruned(mask) == round(0.1 * param.size)
    assert jp.apply_masks(param, mask).shape == param.shape


def test_random_pruning_new_weight():
    """Port of #6 test_random_pruning_new_weight: the pruned tensor is ``orig * mask``.

    Also #5 test_random_pruning_orig in functional form: the parameters are
    left untouched by pruning.
    """
    keys = jax.random.split(jax.random.key(2), len(MOD_SHAPES))
    params = {name: jax.random.normal(k, shape) for k, (name, shape) in zip(keys, MOD_SHAPES.items())}
    before = jax.tree.map(np.array, params)
    masks = {name: jp.random_unstructured(jax.random.fold_in(KEY, i), p, 0.1)
             for i, (name, p) in enumerate(params.items())}
    pruned = jp.apply_masks(params, masks)
    for name in params:
        expected = params[name] * masks[name].astype(params[name].dtype)
        np.testing.assert_array_equal(pruned[name], expected)
        np.testing.assert_array_equal(params[name], before[name])


# --------------------------------------------------------------------------
# 7-11: forward and backward through a masked Linear(5, 2)
# --------------------------------------------------------------------------

LIN_PARAMS = {
    "weight": jnp.array([[0.1, -0.2, 0.3, -0.4, 0.5], [0.6, -0.7, 0.8, -0.9, 1.0]]),
    "bias": jnp.array([0.25, -0.5]),
}
X_ONES = jnp.ones((1, 5))


def linear(params, x):
    return x @ params["weight"].T + params["bias"].reshape(1, -1)


def masked_loss(params, masks, x):
    return jnp.sum(linear(jp.apply_masks(params, masks), x))


def mask_with(shape, fill, flips):
    mask = np.full(shape, fill)
    for idx in flips:
        mask[idx] = not fill
    return jnp.asarray(mask)


@pytest.mark.parametrize(
    "make_mask",
    [lambda w: jp.identity(w), lambda w: jp.random_unstructured(KEY, w, 0)],
    ids=["identity-#7", "zero-amount-#8"],
)
def test_identity_pruning(make_mask):
    """Port of #7 test_identity_pruning (and the property of #8 test_random_pruning_0perc).

    An all-keep mask changes neither the forward pass nor the gradients:
    weight grad = ones(2, 5), bias grad = ones(2) for loss = sum(linear(ones)).
    """
    masks = {"weight": make_mask(LIN_PARAMS["weight"]), "bias": None}
    assert bool(jnp.all(masks["weight"]))

    y_before = linear(LIN_PARAMS, X_ONES)
    grads_before = jax.grad(lambda p: jnp.sum(linear(p, X_ONES)))(LIN_PARAMS)
    np.testing.assert_array_equal(grads_before["weight"], np.ones((2, 5)))

    y_after = linear(jp.apply_masks(LIN_PARAMS, masks), X_ONES)
    grads_after = jax.jit(jax.grad(masked_loss))(LIN_PARAMS, masks, X_ONES)
    np.testing.assert_array_equal(y_after, y_before)
    np.testing.assert_array_equal(linear(jp.apply_masks(LIN_PARAMS, masks), X_ONES), y_after)
    np.testing.assert_array_equal(grads_after["weight"], grads_before["weight"])
    np.testing.assert_array_equal(grads_after["bias"], np.ones(2))


def test_random_pruning():
    """Port of #9 test_random_pruning: pruned entries get zero gradient; SGD keeps them.

    Mask = ones with [1, 0] and [0, 3] pruned; expect weight grad == mask,
    bias grad == ones(2), and after ``p -= 1.0 * grad`` the pruned entries unchanged.
    """
    mask = mask_with((2, 5), True, [(1, 0), (0, 3)])
    masks = {"weight": mask, "bias": None}
    grads = jax.jit(jax.grad(masked_loss))(LIN_PARAMS, masks, X_ONES)
    np.testing.assert_array_equal(grads["weight"], np.asarray(mask, np.float32))
    np.testing.assert_array_equal(grads["bias"], np.ones(2))

    stepped = jax.tree.map(lambda p, g: p - 1.0 * g, LIN_PARAMS, grads)
    w, w_new = np.asarray(LIN_PARAMS["weight"]), np.asarray(stepped["weight"])
    assert w_new[1, 0] == w[1, 0]
    assert w_new[0, 3] == w[0, 3]
    np.testing.assert_allclose(w_new[np.asarray(mask)], w[np.asarray(mask)] - 1.0)


def test_random_pruning_forward():
    """Port of #10 test_random_pruning_forward: the forward pass by hand.

    Mask = zeros with [1, 0] and [0, 3] kept; input ones(1, 5):
    yhat[0, 0] == w[0, 3] + b[0] and yhat[0, 1] == w[1, 0] + b[1].
    """
    masks = {"weight": mask_with((2, 5), False, [(1, 0), (0, 3)]), "bias": None}
    yhat = np.asarray(linear(jp.apply_masks(LIN_PARAMS, masks), X_ONES))
    w, b = np.asarray(LIN_PARAMS["weight"]), np.asarray(LIN_PARAMS["bias"])
    np.testing.assert_allclose(yhat[0, 0], w[0, 3] + b[0], rtol=1e-6)
    np.testing.assert_allclose(yhat[0, 1], w[1, 0] + b[1], rtol=1e-6)


def test_remove_pruning_forward():
    """Port of #11 test_remove_pruning_forward: materializing ``p * mask`` ("remove")
    gives the same output as the masked forward."""
    masks = {"weight": mask_with((2, 5), True, [(1, 0), (0, 3)]), "bias": None}
    y_masked = linear(jp.apply_masks(LIN_PARAMS, masks), X_ONES)
    removed = jax.tree.map(np.array, jp.apply_masks(LIN_PARAMS, masks))  # plain arrays now
    assert removed["weight"][1, 0] == 0 and removed["weight"][0, 3] == 0
    np.testing.assert_array_equal(linear(removed, X_ONES), y_masked)


# --------------------------------------------------------------------------
# 14, 16: iterative pruning (PruningContainer semantics)
# --------------------------------------------------------------------------


def test_multiple_pruning_calls():
    """Port of #14 test_multiple_pruning_calls (the monotone-mask part).

    Conv3d(2, 2, 2) weight: l1_unstructured(0.1) prunes 3 of 32; then
    ln_structured(0.3, n=2, dim=0) prunes 1 of 2 channels inside the first
    mask; then ln_structured(0.1, n=inf, dim=1) is a no-op (round(0.2) = 0).
    The result matches torch's module path.
    """
    w = np.array(jax.random.normal(jax.random.key(3), (2, 2, 2, 2, 2)))
    mask0 = jp.l1_unstructured(w, 0.1)
    assert n_pruned(mask0) == 3

    mask1 = jp.ln_structured(w * np.asarray(mask0), 0.3, n=2, dim=0, default_mask=mask0)
    assert not bool(jnp.any(mask1 & ~mask0))  # mask[mask0 == 0] == 0
    assert jp.pruned_indices(mask1, 0).size == 1

    mask2 = jp.ln_structured(w * np.asarray(mask1), 0.1, n=float("inf"), dim=1, default_mask=mask1)
    assert_mask(mask2, mask1)

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    m = torch.nn.Conv3d(2, 2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
    prune.l1_unstructured(m, "weight", amount=0.1)
    assert_mask(mask0, as_bool(m.weight_mask))
    prune.ln_structured(m, "weight", amount=0.3, n=2, dim=0)
    assert_mask(mask1, as_bool(m.weight_mask))
    prune.ln_structured(m, "weight", amount=0.1, n=float("inf"), dim=1)
    assert_mask(mask2, as_bool(m.weight_mask))


CONTAINER_CASES = {
    "a-l1": (
        lambda t, dm: jp.l1_unstructured(t, 2, default_mask=dm),
        jp.L1Unstructured(2),
        [[0, 0, 1, 0], [1, 1, 0, 1]],
    ),
    "b-ln-dim0": (
        lambda t, dm: jp.ln_structured(t, 1, n=2, dim=0, default_mask=dm),
        jp.LnStructured(1, n=2, dim=0),
        [[0, 0, 0, 0], [1, 1, 0, 1]],
    ),
    "c-ln-dim1": (
        lambda t, dm: jp.ln_structured(t, 1, n=2, dim=1, default_mask=dm),
        jp.LnStructured(1, n=2, dim=1),
        [[0, 1, 1, 0], [0, 1, 0, 1]],
    ),
}


@pytest.mark.parametrize("case", list(CONTAINER_CASES), ids=list(CONTAINER_CASES))
def test_pruning_container_compute_mask(case):
    """Port of #16 test_pruning_container_compute_mask.

    t = T24, default_mask = DM24 (int64) each time: (a) L1Unstructured(2),
    (b) LnStructured(1, n=2, dim=0) (row norms of the unmasked t), (c)
    LnStructured(1, n=2, dim=1) (column 0 lowest; partially pruned columns
    still count). Functions, specs and torch's PruningContainer agree.
    """
    fn, spec, expected = CONTAINER_CASES[case]
    assert_mask(fn(T24, DM24), expected)
    assert_mask(spec.compute_mask(None, T24, default_mask=DM24), expected)
    assert_mask(spec.compute_mask(None, T24, default_mask=DM24 != 0), expected)

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    container = prune.PruningContainer()
    container._tensor_name = "test"
    methods = [prune.L1Unstructured(amount=2), prune.LnStructured(amount=1, n=2, dim=0),
               prune.LnStructured(amount=1, n=2, dim=1)]
    for method in methods[: list(CONTAINER_CASES).index(case) + 1]:
        method._tensor_name = "test"
        container.add_pruning_method(method)
    torch_mask = container.compute_mask(torch.from_numpy(T24), torch.from_numpy(DM24.copy()))
    assert torch_mask.dtype == torch.float32
    assert_mask(as_bool(torch_mask), expected)


def test_container_amount_applies_to_remaining_units():
    """Companion of #16 (section 1.7 consequences): the amount counts the units
    still unpruned. Two rounds of l1 0.5 on 100 weights prune 50 + 25; two
    rounds of random 0.3 prune 30 + 21; a structured 0.5 on 5 rows with rows 0
    and 4 already pruned counts 3 rows, so prunes round(1.5) = 2 (rows 1, 2)."""
    w = jnp.arange(1.0, 101.0)
    m1 = jp.l1_unstructured(w, 0.5)
    m2 = jp.l1_unstructured(w, 0.5, default_mask=m1)
    assert (n_pruned(m1), n_pruned(m2)) == (50, 75)

    r1 = jp.random_unstructured(jax.random.key(4), w, 0.3)
    r2 = jp.random_unstructured(jax.random.key(5), w, 0.3, default_mask=r1)
    assert (n_pruned(r1), n_pruned(r2)) == (30, 51)
    assert not bool(jnp.any(r2 & ~r1))

    rows = jnp.arange(1.0, 6.0)[:, None] * jnp.ones((5, 3))
    dm = jnp.asarray(np.array([0, 1, 1, 1, 0], bool)[:, None].repeat(3, axis=1))
    mask = jp.ln_structured(rows, 0.5, n=2, dim=0, default_mask=dm)
    np.testing.assert_array_equal(jp.pruned_indices(mask, 0), [0, 1, 2, 4])


# --------------------------------------------------------------------------
# 17, 18: L1 unstructured by hand, iterated
# --------------------------------------------------------------------------


@pytest.mark.parametrize("second_input", ["pruned", "original"])
def test_l1_unstructured_pruning(second_input):
    """Port of #17 test_l1_unstructured_pruning.

    weight = W24; amount=2 -> [[0,2,3,4],[-4,-3,-2,0]]; again amount=2 ->
    [[0,0,3,4],[-4,-3,0,0]]. torch's second call ranks ``orig * mask``; passing
    that or the original weight with ``default_mask`` gives the same mask.
    """
    mask1 = jp.l1_unstructured(W24, amount=2)
    np.testing.assert_array_equal(jp.apply_masks(W24, mask1), [[0, 2, 3, 4], [-4, -3, -2, 0]])

    scores = np.asarray(jp.apply_masks(W24, mask1)) if second_input == "pruned" else W24
    mask2 = jp.l1_unstructured(scores, amount=2, default_mask=mask1)
    np.testing.assert_array_equal(jp.apply_masks(W24, mask2), [[0, 0, 3, 4], [-4, -3, 0, 0]])
    assert_mask(jp.L1Unstructured(2).compute_mask(None, scores, default_mask=mask1), mask2)

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    m = torch.nn.Linear(4, 2)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(W24))
    prune.l1_unstructured(m, "weight", amount=2)
    assert_mask(mask1, as_bool(m.weight_mask))
    prune.l1_unstructured(m, "weight", amount=2)
    assert_mask(mask2, as_bool(m.weight_mask))


@pytest.mark.parametrize("second_scores", ["raw", "masked"])
def test_l1_unstructured_pruning_with_importance_scores(second_scores):
    """Port of #18 test_l1_unstructured_pruning_with_importance_scores.

    weight = W24, scores [[4,2,1,3],[-3,-1,-2,-4]]; amount=2 ->
    [[1,2,0,4],[-4,0,-2,-1]]; again -> [[1,0,0,4],[-4,0,0,-1]].
    """
    scores = np.array([[4, 2, 1, 3], [-3, -1, -2, -4]], np.float32)
    mask1 = jp.l1_unstructured(W24, amount=2, importance_scores=scores)
    np.testing.assert_array_equal(jp.apply_masks(W24, mask1), [[1, 2, 0, 4], [-4, 0, -2, -1]])

    again = scores if second_scores == "raw" else np.asarray(jp.apply_masks(scores, mask1))
    mask2 = jp.l1_unstructured(W24, amount=2, importance_scores=again, default_mask=mask1)
    np.testing.assert_array_equal(jp.apply_masks(W24, mask2), [[1, 0, 0, 4], [-4, 0, 0, -1]])

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    m = torch.nn.Linear(4, 2)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(W24))
    prune.l1_unstructured(m, "weight", amount=2, importance_scores=torch.from_numpy(scores))
    assert_mask(mask1, as_bool(m.weight_mask))
    prune.l1_unstructured(m, "weight", amount=2, importance_scores=torch.from_numpy(scores))
    assert_mask(mask2, as_bool(m.weight_mask))


# --------------------------------------------------------------------------
# 19, 20: exact counts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unstructured_pruning_same_magnitude(seed):
    """Port of #19 test_unstructured_pruning_same_magnitude: by count, not threshold.

    t = 2 * randint(-1, 2, (10, 7)) (integers in {-2, 0, 2}, many ties),
    L1Unstructured(0.2) with default_mask = ones_like(t): exactly 14 pruned.
    DESIGN's tie rule: the pruned ones are the lowest |t|, lower flat index first.
    """
    t = 2 * np.random.default_rng(seed).integers(-1, 2, (10, 7))
    mask = jp.L1Unstructured(0.2).compute_mask(None, t, default_mask=np.ones_like(t))
    assert n_pruned(mask) == round(0.2 * 70) == 14
    assert n_pruned(jp.l1_unstructured(t, 0.2)) == 14

    expected_pruned = np.argsort(np.abs(t).reshape(-1), kind="stable")[:14]
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(mask)), np.sort(expected_pruned))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_structured_pruning_amount(seed):
    """Port of #20 test_random_structured_pruning_amount.

    RandomStructured(0.6, dim=2) on a (5, 4, 2) tensor prunes round(1.2) = 1
    whole column: sorted(zeros per column) == [0, 20].
    """
    t = 2.0 * np.random.default_rng(seed).integers(-1, 2, (5, 4, 2)).astype(np.float32)
    key = jax.random.key(seed)
    for mask in (
        jp.RandomStructured(0.6, dim=2).compute_mask(key, t, default_mask=np.ones_like(t)),
        jp.random_structured(key, t, 0.6, dim=2),
        jp.random_structured(key, t, 0.6, dim=-1),
        jp.compute_mask(key, t, 0.6, 2),
    ):
        zeros_per_column = np.sum(~np.asarray(mask), axis=(0, 1))
        assert sorted(zeros_per_column.tolist()) == [0, 20]
    np.testing.assert_array_equal(jp.random_structured(key, t, 0.6, dim=2),
                                  jp.random_structured(key, t, 0.6, dim=-1))


# --------------------------------------------------------------------------
# 21, 22: Ln structured by hand, iterated
# --------------------------------------------------------------------------


@pytest.mark.parametrize("second_input", ["pruned", "original"])
def test_ln_structured_pruning(second_input):
    """Port of #21 test_ln_structured_pruning.

    Conv2d(3, 1, 2) weight; ln_structured(1, n=2, dim=1) prunes channel 1
    (L2 norms 3.5, 1.127, 5.917); then ln_structured(1, n=1, dim=-1) also
    prunes kernel column 0 (L1 of the masked weight 5.1 < 10.5).
    """
    expected1 = np.ones_like(CONV_W, bool)
    expected1[:, 1] = False
    mask1 = jp.ln_structured(CONV_W, 1, n=2, dim=1)
    assert_mask(mask1, expected1)

    t = np.asarray(jp.apply_masks(CONV_W, mask1)) if second_input == "pruned" else CONV_W
    expected2 = expected1.copy()
    expected2[:, :, :, 0] = False
    mask2 = jp.ln_structured(t, 1, n=1, dim=-1, default_mask=mask1)
    assert_mask(mask2, expected2)
    assert_mask(jp.LnStructured(1, n=1, dim=-1).compute_mask(None, t, default_mask=mask1), expected2)

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    m = torch.nn.Conv2d(3, 1, 2)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(CONV_W))
    prune.ln_structured(m, "weight", amount=1, n=2, dim=1)
    assert_mask(mask1, as_bool(m.weight_mask))
    prune.ln_structured(m, "weight", amount=1, n=1, dim=-1)
    assert_mask(mask2, as_bool(m.weight_mask))


def test_ln_structured_pruning_importance_scores():
    """Port of #22 test_ln_structured_pruning_importance_scores.

    Same weight, scores [[[[10,1],[10,1]],[[30,3],[30,3]],[[-20,-2],[-20,-2]]]]:
    n=2, dim=1 prunes channel 0 (sqrt(202) < sqrt(808) < sqrt(1818));
    then n=1, dim=-1 with the same raw scores prunes column 1 (120 vs 12).
    """
    expected1 = np.ones_like(CONV_W, bool)
    expected1[:, 0] = False
    mask1 = jp.ln_structured(CONV_W, 1, n=2, dim=1, importance_scores=CONV_SCORES)
    assert_mask(mask1, expected1)
    assert_mask(jp.LnStructured(1, n=2, dim=1).compute_mask(None, CONV_SCORES), expected1)

    expected2 = expected1.copy()
    expected2[:, :, :, 1] = False
    mask2 = jp.ln_structured(CONV_W, 1, n=1, dim=-1, importance_scores=CONV_SCORES, default_mask=mask1)
    assert_mask(mask2, expected2)

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    m = torch.nn.Conv2d(3, 1, 2)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(CONV_W))
    scores = torch.from_numpy(CONV_SCORES)
    prune.ln_structured(m, "weight", amount=1, n=2, dim=1, importance_scores=scores)
    assert_mask(mask1, as_bool(m.weight_mask))
    prune.ln_structured(m, "weight", amount=1, n=1, dim=-1, importance_scores=scores)
    assert_mask(mask2, as_bool(m.weight_mask))


# --------------------------------------------------------------------------
# 25, 26: global pruning on a two-leaf pytree
# --------------------------------------------------------------------------


def _torch_global(scores=None):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    m, n = torch.nn.Linear(4, 2), torch.nn.Linear(3, 1)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(W24))
        n.weight.copy_(torch.from_numpy(W13))
    importance = None
    if scores is not None:
        importance = {(m, "weight"): torch.from_numpy(scores["m"]), (n, "weight"): torch.from_numpy(scores["n"])}
    prune.global_unstructured(((m, "weight"), (n, "weight")), pruning_method=prune.L1Unstructured,
                              importance_scores=importance, amount=4)
    return {"m": as_bool(m.weight_mask), "n": as_bool(n.weight_mask)}


@pytest.mark.parametrize("container", ["dict", "tuple"])
def test_global_pruning(container):
    """Port of #25 test_global_pruning: global L1 over two weights, amount=4.

    m = W24, n = [[0, 0.1, -2]] -> m [[0,2,3,4],[-4,-3,-2,0]], n [[0,0,-2]].
    """
    params = {"m": W24, "n": W13} if container == "dict" else (W24, W13)
    masks = jp.global_unstructured(params, amount=4)
    m_mask, n_mask = (masks["m"], masks["n"]) if container == "dict" else masks
    pruned = jp.apply_masks(params, masks)
    m_pruned, n_pruned_w = (pruned["m"], pruned["n"]) if container == "dict" else pruned
    np.testing.assert_array_equal(m_pruned, [[0, 2, 3, 4], [-4, -3, -2, 0]])
    np.testing.assert_array_equal(n_pruned_w, [[0, 0, -2]])

    expected = _torch_global()
    assert_mask(m_mask, expected["m"])
    assert_mask(n_mask, expected["n"])


def test_global_pruning_importance_scores():
    """Port of #26 test_global_pruning_importance_scores.

    m scores [[4,2,1,3],[-3,-1,-2,-4]], n scores [[0,10,-0.2]], amount=4 ->
    m [[1,2,0,4],[-4,0,-2,-1]], n [[0,0.1,0]].
    """
    params = {"m": W24, "n": W13}
    scores = {"m": np.array([[4, 2, 1, 3], [-3, -1, -2, -4]], np.float32),
              "n": np.array([[0, 10.0, -0.2]], np.float32)}
    masks = jp.global_unstructured(params, amount=4, importance_scores=scores)
    pruned = jp.apply_masks(params, masks)
    np.testing.assert_array_equal(pruned["m"], [[1, 2, 0, 4], [-4, 0, -2, -1]])
    np.testing.assert_allclose(pruned["n"], [[0, 0.1, 0]])

    expected = _torch_global(scores)
    assert_mask(masks["m"], expected["m"])
    assert_mask(masks["n"], expected["n"])


# --------------------------------------------------------------------------
# 27, 31-33: custom_from_mask and standalone prune
# --------------------------------------------------------------------------


def test_custom_from_mask_pruning():
    """Port of #27 test_custom_from_mask_pruning: new mask AND old mask.

    mask [[0,1,1,0],[0,0,1,1]], default [[0,0,0,0],[1,1,1,1]] (int64)
    -> [[0,0,0,0],[0,0,1,1]].
    """
    mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], np.int64)
    default = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.int64)
    t = jax.random.uniform(KEY, (2, 4))
    expected = [[0, 0, 0, 0], [0, 0, 1, 1]]
    assert_mask(jp.CustomFromMask(mask).compute_mask(None, t, default_mask=default), expected)
    assert_mask(jp.CustomFromMask(mask).compute_mask(None, t), mask)

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    torch_mask = prune.CustomFromMask(torch.from_numpy(mask)).compute_mask(
        torch.from_numpy(np.array(t)), torch.from_numpy(default))
    assert_mask(as_bool(torch_mask), expected)


PRUNE_CASES = {
    "#31-no-scores": (None, [[0, 0, 1, 0], [1, 1, 0, 1]]),
    "#32-scores": (np.array([[1, 2, 3, 4], [1.5, 1.6, 1.7, 1.8]], np.float32), [[0, 1, 1, 0], [0, 1, 0, 1]]),
    "#33-scores-equal-t": (T24, [[0, 0, 1, 0], [1, 1, 0, 1]]),
}


@pytest.mark.parametrize("case", list(PRUNE_CASES), ids=list(PRUNE_CASES))
def test_prune(case):
    """Port of #31 test_prune, #32 test_prune_importance_scores and
    #33 test_prune_importance_scores_mimic_default.

    ``L1Unstructured(2).prune(T24, DM24, importance_scores)`` == T24 * expected.
    These tests use torch's standalone semantics; for DM24 they coincide with
    the container semantics of ``default_mask=``: checked against torch.
    """
    scores, expected = PRUNE_CASES[case]
    mask = jp.l1_unstructured(T24, 2, importance_scores=scores, default_mask=DM24)
    assert_mask(mask, expected)
    np.testing.assert_array_equal(jp.apply_masks(T24, mask), T24 * np.array(expected, np.float32))

    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    t = torch.from_numpy(T24)
    standalone = prune.L1Unstructured(amount=2).prune(
        t, default_mask=torch.from_numpy(DM24.copy()),
        importance_scores=None if scores is None else torch.from_numpy(scores))
    np.testing.assert_array_equal(jp.apply_masks(T24, mask), standalone.numpy())
