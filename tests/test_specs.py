"""Method specs: torch's names, validated at construction, static under jit,
and custom strategies that behave like the built-ins."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

W = jnp.array([[1.0, 2.0, 3.0, 4.0], [-4.0, -3.0, -2.0, -1.0]])


@pytest.mark.parametrize(
    "spec",
    [jp.Identity(), jp.L1Unstructured(0.5), jp.RandomUnstructured(3), jp.RandomStructured(0.5, dim=0),
     jp.LnStructured(1, n=2, dim=1)],
    ids=lambda s: type(s).__name__,
)
def test_specs_are_hashable_and_static_under_jit(spec):
    assert hash(spec) == hash(dataclasses.replace(spec))
    key = jax.random.key(0)
    eager = spec.compute_mask(key, W)
    jitted = jax.jit(lambda s, k, t: s.compute_mask(k, t), static_argnums=0)(spec, key, W)
    np.testing.assert_array_equal(eager, jitted)
    assert eager.dtype == jnp.bool_ and eager.shape == W.shape


def test_specs_equal_their_functions():
    key = jax.random.key(1)
    dm = jp.l1_unstructured(W, 1)
    np.testing.assert_array_equal(jp.L1Unstructured(2).compute_mask(None, W, dm),
                                  jp.l1_unstructured(W, 2, default_mask=dm))
    np.testing.assert_array_equal(jp.RandomUnstructured(0.5).compute_mask(key, W, dm),
                                  jp.random_unstructured(key, W, 0.5, default_mask=dm))
    np.testing.assert_array_equal(jp.RandomStructured(1, dim=1).compute_mask(key, W),
                                  jp.random_structured(key, W, 1, dim=1))
    np.testing.assert_array_equal(jp.LnStructured(0.5, n=np.inf, dim=1).compute_mask(None, W, dm),
                                  jp.ln_structured(W, 0.5, np.inf, 1, default_mask=dm))
    np.testing.assert_array_equal(jp.Identity().compute_mask(None, W, dm), dm)


@dataclasses.dataclass(frozen=True)
class AbsScores(jp.UnstructuredMethod):
    amount: float

    def scores(self, key, t):
        return jnp.abs(t)


@dataclasses.dataclass(frozen=True)
class NormSlices(jp.StructuredMethod):
    amount: float
    dim: int = 0

    def slice_scores(self, key, t):
        return jp.slice_norms(t, 1, self.dim)


def test_custom_methods_give_the_built_in_masks():
    """What a custom method inherits (scores -> building block) is the
    machinery of the built-ins, which are their functions."""
    x = jax.random.normal(jax.random.key(3), (30, 40))
    dm = jp.l1_unstructured(x, 0.2)
    np.testing.assert_array_equal(AbsScores(0.3).compute_mask(None, x, dm), jp.L1Unstructured(0.3).compute_mask(None, x, dm))
    np.testing.assert_array_equal(jp.L1Unstructured(0.3).compute_mask(None, x, dm), jp.l1_unstructured(x, 0.3, default_mask=dm))
    dm = jp.ln_structured(x, 0.2, 1, dim=0)
    np.testing.assert_array_equal(NormSlices(0.3).compute_mask(None, x, dm),
                                  jp.LnStructured(0.3, n=1, dim=0).compute_mask(None, x, dm))
    key = jax.random.key(2)
    np.testing.assert_array_equal(jp.RandomUnstructured(0.3).compute_mask(key, x, dm),
                                  jp.random_unstructured(key, x, 0.3, default_mask=dm))
    np.testing.assert_array_equal(jp.RandomStructured(0.3, dim=0).compute_mask(key, x, dm),
                                  jp.random_structured(key, x, 0.3, 0, default_mask=dm))


@dataclasses.dataclass(frozen=True)
class Taylor(jp.UnstructuredMethod):
    """|w * g| importance: the gradient is part of the spec's input tensor."""

    amount: float

    def scores(self, key, t):
        return jnp.abs(t[0] * t[1])

    def compute_mask(self, key, t, default_mask=None):
        return jp.unstructured_mask(self.scores(key, t), self.amount, default_mask=default_mask)


@dataclasses.dataclass(frozen=True)
class RowMax(jp.StructuredMethod):
    amount: float
    dim: int = 0

    def slice_scores(self, key, t):
        return jnp.max(jnp.abs(jnp.moveaxis(t, self.dim, 0)).reshape(t.shape[self.dim], -1), axis=1)


def test_custom_structured_method_counts_iterates_and_jits():
    x = jnp.array([[1.0, -7.0], [0.5, 0.2], [3.0, 0.0], [-2.0, 2.0]])
    spec = RowMax(0.5)
    mask = spec.compute_mask(None, x)
    np.testing.assert_array_equal(jp.pruned_indices(mask, 0), [1, 3])
    again = spec.compute_mask(None, x, default_mask=mask)  # round(0.5 * 2) = 1 of the 2 left
    np.testing.assert_array_equal(jp.pruned_indices(again, 0), [1, 2, 3])
    jitted = jax.jit(lambda t, d: spec.compute_mask(None, t, d))(x, mask)
    np.testing.assert_array_equal(jitted, again)
    batched = jax.vmap(lambda t: spec.compute_mask(None, t))(jnp.stack([x, -x[::-1]]))
    np.testing.assert_array_equal(jp.pruned_indices(batched[1], 0), [0, 2])


def test_custom_unstructured_method_with_extra_inputs_and_vmap():
    w = jnp.array([1.0, 2.0, 3.0, 4.0])
    g = jnp.array([4.0, 0.1, 1.0, 1.0])
    np.testing.assert_array_equal(Taylor(2).compute_mask(None, (w, g)), [True, False, False, True])  # |w*g| = 4, .2, 3, 4
    masks = jax.vmap(lambda a: Taylor(a).compute_mask(None, (w, g)))(jnp.array([0, 1, 2, 4], jnp.int32))
    np.testing.assert_array_equal((~masks).sum(axis=1), [0, 1, 2, 4])


def test_custom_scores_of_wrong_shape_are_rejected():
    @dataclasses.dataclass(frozen=True)
    class Bad(jp.UnstructuredMethod):
        amount: float

        def scores(self, key, t):
            return jnp.ones(3)

    with pytest.raises(jp.PruningShapeError, match=r"\(3,\)"):
        Bad(0.5).compute_mask(None, jnp.ones((2, 2)))


def test_custom_from_mask_combines_and_hashes_by_identity():
    spec = jp.CustomFromMask(np.array([[0, 1, 1, 0], [0, 0, 1, 1]]))
    default = jnp.array([[0, 0, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(spec.compute_mask(None, W, default), [[0, 0, 0, 0], [0, 0, 1, 1]])
    assert spec == spec and spec != jp.CustomFromMask(spec.mask)
    assert spec.PRUNING_TYPE == "global"
