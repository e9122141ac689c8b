"""Wanda and SparseGPT on one layer, against NumPy float64 ports of the official algorithms."""

from __future__ import annotations

import _calibration_reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune import _calibration, _selection
from jaxprune._amounts import count_int


def _layer(seed: int, n_out: int, n_in: int, tokens: int, outliers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ``(out, in)`` weight and ``(tokens, in)`` inputs (float32), some input features scaled up."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((tokens, n_in)).astype(np.float32)
    if outliers:
        x[:, rng.choice(n_in, outliers, replace=False)] *= 20
    return w, x


def _kernel(w: np.ndarray, in_axis: int) -> np.ndarray:
    return w if in_axis == 1 else w.T


def _rows(kernel: jax.Array, in_axis: int) -> np.ndarray:
    return np.asarray(kernel if in_axis == 1 else kernel.T)


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def test_input_stats_batches_equal_one_batch() -> None:
    _, x = _layer(0, 1, 24, 60)
    whole = jp.input_stats(x)
    parts = None
    for start in range(0, 60, 12):
        parts = jp.input_stats(x[start : start + 12].reshape(3, 4, 24), parts)
    assert parts is not None
    assert count_int(parts.count) == count_int(whole.count) == 60
    np.testing.assert_allclose(parts.sum_sq, np.sum(x.astype(np.float64) ** 2, axis=0), rtol=1e-5)
    np.testing.assert_allclose(parts.hessian, x.T.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(parts.sum_sq, whole.sum_sq, rtol=1e-5)
    np.testing.assert_allclose(parts.hessian, whole.hessian, rtol=1e-5, atol=1e-4)


def test_input_stats_count_is_exact_beyond_32_bits() -> None:
    big = jp.InputStats(jp._calibration._as_device_count(jp._calibration.host_count(2**32 - 3)),
                        jnp.zeros(2), None)
    s = jp.input_stats(jnp.ones((5, 2)), big, hessian=False)
    assert count_int(s.count) == 2**32 + 2
    assert s.hessian is None


def test_input_stats_jits_with_a_traced_running_value() -> None:
    _, x = _layer(1, 1, 8, 20)
    step = jax.jit(lambda s, b: jp.input_stats(b, s))
    s = jp.input_stats(x[:10])
    s = step(s, x[10:])
    np.testing.assert_allclose(s.hessian, jp.input_stats(x).hessian, rtol=1e-5, atol=1e-5)
    assert count_int(s.count) == 20


def test_input_stats_agrees_with_official_running_means() -> None:
    """The official scaled statistics are ours divided by N (and 2/N): rankings and SparseGPT agree."""
    _, x = _layer(2, 1, 6, 9)
    scaler, hessian = ref.stats(x)
    s = jp.input_stats(x)
    np.testing.assert_allclose(np.asarray(s.sum_sq) / 9, scaler, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.hessian) * 2 / 9, hessian, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Wanda
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("in_axis", "amount", "nm"), [
    (0, 0.5, None), (1, 0.3, None), (-1, 37, None), (0, None, (2, 4)), (1, None, (1, 8)), (-2, None, (3, 32)),
])
def test_wanda_matches_the_official_algorithm(in_axis: int, amount: float | None, nm: tuple[int, int] | None) -> None:
    w, x = _layer(3, 48, 128, 40)
    scaler, _ = ref.stats(x)
    expected = ref.wanda_prune(w, scaler, amount, nm)
    keep = jp.wanda_mask(_kernel(w, in_axis % 2), x, amount, in_axis=in_axis, nm=nm)
    assert keep.shape == _kernel(w, in_axis % 2).shape
    np.testing.assert_array_equal(~_rows(keep, in_axis % 2), expected)


def test_wanda_counts_and_nm_validity() -> None:
    w, x = _layer(4, 16, 64, 10)
    keep = np.asarray(jp.wanda_mask(w, x, 0.34, in_axis=1))
    assert (np.sum(~keep, axis=1) == 22).all()  # round(21.76); the official int(21.76) prunes 21
    keep = np.asarray(jp.wanda_mask(w, x, 0.3, in_axis=1))
    assert (np.sum(~keep, axis=1) == 19).all()  # round(19.2); the official int(19.2) is also 19
    keep = np.asarray(jp.wanda_mask(w, x, 0.5078125, in_axis=1))
    assert (np.sum(~keep, axis=1) == 32).all()  # round(32.5) = 32 (half to even), as torch counts
    keep = np.asarray(jp.wanda_mask(w, x, nm=(3, 8), in_axis=1)).reshape(16, 8, 8)
    assert (keep.sum(axis=-1) == 3).all()


def test_wanda_ties_prune_the_lower_index_first_and_nan_last() -> None:
    kernel = jnp.array([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0], [jnp.nan, 3.0, jnp.nan, 3.0, 3.0, 0.5]])
    stats = jp.input_stats(jnp.ones((2, 6)))
    keep = jp.wanda_mask(kernel, stats, 3, in_axis=1)
    assert keep.tolist() == [[False, False, False, True, True, True], [True, False, True, False, True, False]]
    keep = jp.wanda_mask(kernel, stats, nm=(1, 3), in_axis=1)
    assert keep.tolist() == [[False, False, True, False, False, True], [False, False, True, False, True, False]]


@pytest.mark.parametrize("keep_shapes", [False, True])
def test_per_row_selection_equals_a_stable_sort(keep_shapes: bool) -> None:
    """The search by counts marks the k lowest of each row exactly, ties and NaN included."""
    rng = np.random.default_rng(17)
    scores = rng.standard_normal((37, 300)).astype(np.float32)
    scores[:12] = np.round(scores[:12] * 2)  # a few distinct values: ties straddle k
    scores[12:15, ::7] = np.nan
    scores[15] = 1.5  # one value
    scores[16, :5] = [-0.0, 0.0, -0.0, np.inf, -np.inf]
    select = jax.jit(_calibration._lowest_per_row)
    with _selection.forced(keep_shapes=keep_shapes):
        for k in (0, 1, 150, 299, 300):
            expected = np.zeros(scores.shape, bool)
            for r in range(scores.shape[0]):
                key = [(np.isnan(v), 0.0 if np.isnan(v) else v, i) for i, v in enumerate(scores[r])]
                for _, _, i in sorted(key)[:k]:
                    expected[r, i] = True
            got = np.asarray(select(_selection.sort_keys(jnp.asarray(scores)), k))
            np.testing.assert_array_equal(got, expected, err_msg=f"k={k}")


def test_wanda_traced_amount_does_not_retrace() -> None:
    w, x = _layer(5, 8, 32, 10)
    stats = jp.input_stats(x, hessian=False)
    traces = []

    @jax.jit
    def f(amount: jax.Array) -> jax.Array:
        traces.append(1)
        return jp.wanda_mask(w, stats, amount, in_axis=1)

    for amount in (0.25, 0.5, 0.75):
        keep = np.asarray(f(jnp.float32(amount)))
        np.testing.assert_array_equal(keep, np.asarray(jp.wanda_mask(w, stats, amount, in_axis=1)))
    assert len(traces) == 1


def test_wanda_spec_prunes_the_kernel() -> None:
    w, x = _layer(6, 8, 16, 10)
    stats = jp.input_stats(x)
    new, keep = jp.Wanda(0.25).prune(jnp.asarray(w.T), stats)
    np.testing.assert_array_equal(keep, jp.wanda_mask(w.T, stats, 0.25))
    np.testing.assert_array_equal(new, np.where(keep, w.T, 0))
    assert jp.Wanda(nm=[2, 4]) == jp.Wanda(nm=(2, 4)) and hash(jp.Wanda(nm=[2, 4])) == hash(jp.Wanda(nm=(2, 4)))


# --------------------------------------------------------------------------
# SparseGPT
# --------------------------------------------------------------------------

SPARSEGPT_CASES = [
    # (in_axis, n_out, n_in, amount, nm, block_size)
    (1, 32, 96, 0.5, None, 32),
    (0, 32, 100, 0.4, None, 32),  # a shorter last block (100 = 3 * 32 + 4)
    (1, 24, 80, 0.6, None, 128),  # one block, shorter than block_size
    (0, 32, 96, 300, None, 16),  # an int count per slab
    (0, 32, 96, None, (2, 4), 32),
    (1, 32, 120, None, (4, 8), 48),  # last block 24 (a multiple of m)
    (0, 16, 64, None, (1, 2), 16),
]


@pytest.mark.parametrize(("in_axis", "n_out", "n_in", "amount", "nm", "block"), SPARSEGPT_CASES)
def test_sparsegpt_matches_the_official_algorithm(
    in_axis: int, n_out: int, n_in: int, amount: float | None, nm: tuple[int, int] | None, block: int
) -> None:
    w, x = _layer(7, n_out, n_in, 4 * n_in)
    x[:, [5, n_in - 2]] = 0  # dead inputs: their weights become 0
    stats = jp.input_stats(x)
    expected_w, expected_prune = ref.sparsegpt(
        w, np.asarray(stats.hessian, np.float64), amount, nm, block, 0.01, flat_ties=in_axis == 0
    )
    new, keep = jp.sparsegpt(_kernel(w, in_axis), stats, amount, in_axis=in_axis, nm=nm, block_size=block)
    assert new.dtype == jnp.float32 and keep.shape == new.shape == _kernel(w, in_axis).shape
    prune, new_rows = ~_rows(keep, in_axis), _rows(new, in_axis)
    np.testing.assert_array_equal(prune, expected_prune)
    assert (new_rows[prune] == 0).all() and (new_rows[:, [5, n_in - 2]] == 0).all()
    assert np.linalg.norm(new_rows - expected_w) <= 1e-4 * np.linalg.norm(expected_w)
    if nm is not None:  # exactly n kept of every m
        assert (np.sum(~prune.reshape(n_out, -1, nm[1]), axis=-1) == nm[0]).all()
    else:  # exactly round(amount * slab) per block (torch's count), the last block on its own size
        starts = range(0, n_in, block)
        counts = [int(prune[:, s : s + block].sum()) for s in starts]
        sizes = [n_out * min(block, n_in - s) for s in starts]
        assert counts == [amount if isinstance(amount, int) else round(amount * size) for size in sizes]


def test_sparsegpt_slab_selection_by_radix_matches_the_reference() -> None:
    """Slabs above the sort path's size (4096 entries: real layers) take the radix select."""
    w, x = _layer(18, 32, 100, 400)
    stats = jp.input_stats(x)
    expected_w, expected_prune = ref.sparsegpt(w, np.asarray(stats.hessian, np.float64), 0.45, None, 32)
    with _selection.forced(sort_max=0):
        new, keep = jp.sparsegpt(w, stats, 0.45, in_axis=1, block_size=32)
    np.testing.assert_array_equal(~np.asarray(keep), expected_prune)
    assert np.linalg.norm(np.asarray(new) - expected_w) <= 1e-4 * np.linalg.norm(expected_w)


def test_factor_by_halves_is_the_upper_cholesky_factor_of_the_inverse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above _FACTOR_BASE the factor is computed by halves (odd sizes too): torch's factor, to float32 precision."""
    _, x = _layer(19, 1, 101, 400)
    h = x.T.astype(np.float64) @ x + np.eye(101)
    expected = np.linalg.cholesky(np.linalg.inv(h)).T
    monkeypatch.setattr(_calibration, "_FACTOR_BASE", 30)  # 101 -> 50 + 51 -> 25 + 25 + 25 + 26
    u = np.asarray(jax.jit(_calibration._upper_inverse_factor)(jnp.asarray(h, jnp.float32)), np.float64)
    assert (np.tril(u, -1) == 0).all()
    np.testing.assert_allclose(u, expected, atol=1e-5 * np.abs(expected).max())
    not_positive = jnp.asarray(h, jnp.float32).at[60, 60].set(-1.0)
    assert bool(jnp.isnan(jax.jit(_calibration._upper_inverse_factor)(not_positive)).any())


def test_sparsegpt_official_stats_give_the_same_result() -> None:
    """H = 2/N X^T X (the official scale) or X^T X: the same masks and weights."""
    w, x = _layer(8, 32, 96, 200)  # the shapes of the first case above: compiled once
    _, official = ref.stats(x)
    a_new, a_keep = jp.sparsegpt(w, x, 0.5, in_axis=1, block_size=32)
    stats = jp.InputStats(jp.input_stats(x).count, jnp.zeros(96), jnp.asarray(official, jnp.float32))
    b_new, b_keep = jp.sparsegpt(w, stats, 0.5, in_axis=1, block_size=32)
    np.testing.assert_array_equal(a_keep, b_keep)
    np.testing.assert_allclose(a_new, b_new, rtol=1e-4, atol=1e-5)


def test_sparsegpt_slab_ties_follow_the_kernel_flat_order() -> None:
    # Identity Hessian (orthonormal inputs): scores are w**2 up to one scale, all tied.
    w = np.ones((4, 8), np.float32)
    x = np.eye(8, dtype=np.float32)
    _, keep = jp.sparsegpt(w, x, 5, in_axis=1, block_size=8, damp=0.0)
    assert (~np.asarray(keep)).ravel().tolist() == [True] * 5 + [False] * 27  # row-major in (out, in)
    _, keep = jp.sparsegpt(w.T, x, 5, in_axis=0, block_size=8, damp=0.0)
    assert (~np.asarray(keep)).ravel().tolist() == [True] * 5 + [False] * 27  # row-major in (in, out)


def test_sparsegpt_traced_amount_and_jit() -> None:
    w, x = _layer(11, 32, 96, 200)
    stats = jp.input_stats(x)
    f = jax.jit(lambda a: jp.sparsegpt(w, stats, a, in_axis=1, block_size=32))
    for amount in (0.25, 0.5):
        new, keep = f(jnp.float32(amount))
        e_new, e_keep = jp.sparsegpt(w, stats, amount, in_axis=1, block_size=32)
        np.testing.assert_array_equal(keep, e_keep)
        np.testing.assert_allclose(new, e_new, rtol=1e-6, atol=1e-6)
    assert f._cache_size() == 1


def test_sparsegpt_keeps_the_kernel_dtype() -> None:
    w, x = _layer(12, 8, 16, 64)
    new, keep = jp.sparsegpt(jnp.asarray(w, jnp.bfloat16), x, 0.5, in_axis=1, block_size=8)
    assert new.dtype.name == "bfloat16"
    assert bool(jnp.all(new[~keep] == 0))


def test_errors_order_sparsegpt_wanda_magnitude_on_outlier_features() -> None:
    w, x = _layer(13, 32, 96, 384, outliers=5)
    stats = jp.input_stats(x)
    # The layouts of the reference cases (0.5 on (out, in), 2:4 on (in, out)): their compilations are reused.
    for amount, nm, in_axis in ((0.5, None, 1), (None, (2, 4), 0)):
        kernel = jnp.asarray(_kernel(w, in_axis))
        gpt, _ = jp.sparsegpt(kernel, stats, amount, nm=nm, in_axis=in_axis, block_size=32)
        wanda = jnp.where(jp.wanda_mask(kernel, stats, amount, nm=nm, in_axis=in_axis), kernel, 0)
        if nm is None:
            magnitude = jnp.where(jp.l1_unstructured(kernel, amount), kernel, 0)
        else:  # magnitude N:M: Wanda's rule with equal input norms
            flat = jp.input_stats(np.ones((1, 96)), hessian=False)
            magnitude = jnp.where(jp.wanda_mask(kernel, flat, nm=nm, in_axis=in_axis), kernel, 0)
        errors = [float(jp.relative_error(kernel, new, stats, in_axis=in_axis)) for new in (gpt, wanda, magnitude)]
        assert errors[0] < errors[1] < errors[2], errors
        assert errors[2] > 2 * errors[1]  # the outliers make magnitude clearly worst


def test_relative_error_is_zero_without_output_and_exact_for_a_known_case() -> None:
    stats = jp.input_stats(np.eye(2, dtype=np.float32))
    assert float(jp.relative_error(jnp.zeros((2, 3)), jnp.ones((2, 3)), stats)) == 0.0
    w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    x = np.array([[1.0, 2.0]], np.float32)
    assert float(jp.relative_error(w, jnp.zeros((2, 2)), jp.input_stats(x), in_axis=1)) == pytest.approx(1.0)
    assert float(jp.relative_error(w, w.at[1, 1].set(0.0), jp.input_stats(x), in_axis=1)) == pytest.approx(
        2 / np.sqrt(5), rel=1e-6)


def test_sparsegpt_spec() -> None:
    w, x = _layer(14, 32, 96, 200)
    stats = jp.input_stats(x)
    new, keep = jp.SparseGPT(0.5, block_size=32).prune(jnp.asarray(w), stats, in_axis=1)
    e_new, e_keep = jp.sparsegpt(w, stats, 0.5, in_axis=1, block_size=32)
    np.testing.assert_array_equal(keep, e_keep)
    np.testing.assert_array_equal(new, e_new)
    assert {jp.SparseGPT(0.5), jp.SparseGPT(0.5)} == {jp.SparseGPT(amount=0.5)}


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_bad_inputs() -> None:
    w, x = _layer(15, 8, 16, 32)
    stats = jp.input_stats(x)
    with pytest.raises(ValueError, match=r"inputs have 12 features .* kernel's input axis has 16"):
        jp.wanda_mask(w, x[:, :12], 0.5, in_axis=1)
    with pytest.raises(ValueError, match=r"inputs have 12 features"):
        jp.sparsegpt(w, x[:, :12], 0.5, in_axis=1)
    with pytest.raises(ValueError, match=r"inputs has 16 input features .* but 8 were expected"):
        jp.wanda_mask(w, stats, 0.5, in_axis=0)
    with pytest.raises(ValueError, match=r"m=3 must divide the kernel's 16 input features"):
        jp.wanda_mask(w, x, nm=(1, 3), in_axis=1)
    with pytest.raises(ValueError, match=r"nm=\(4, 4\): expected 0 <= n < m"):
        jp.sparsegpt(w, x, nm=(4, 4), in_axis=1)
    with pytest.raises(TypeError, match=r"nm must be a pair of ints"):
        jp.wanda_mask(w, x, nm=(2.0, 4), in_axis=1)
    with pytest.raises(ValueError, match=r"amount=1.5 should either be a float in the range \[0, 1\]"):
        jp.wanda_mask(w, x, 1.5, in_axis=1)
    with pytest.raises(ValueError, match=r"amount=-1 should either"):
        jp.sparsegpt(w, x, -1, in_axis=1)
    with pytest.raises(ValueError, match=r"amount=17 should be smaller than the number of parameters to prune=16"):
        jp.wanda_mask(w, x, 17, in_axis=1)
    with pytest.raises(ValueError, match=r"give exactly one of amount and nm, got amount=0.5 and nm=\(2, 4\)"):
        jp.wanda_mask(w, x, 0.5, in_axis=1, nm=(2, 4))
    with pytest.raises(ValueError, match=r"give exactly one of amount and nm, got amount=None and nm=None"):
        jp.sparsegpt(w, x, in_axis=1)
    with pytest.raises(ValueError, match=r"kernel must be a 2-D matmul weight, got shape \(2, 8, 16\)"):
        jp.wanda_mask(np.stack([w, w]), x, 0.5)
    with pytest.raises(ValueError, match=r"in_axis must be 0, 1, -1 or -2 .* got 2"):
        jp.sparsegpt(w, x, 0.5, in_axis=2)
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"inputs of shape \(32, 16\) contain NaN"):
        jp.wanda_mask(w, bad, 0.5, in_axis=1)
    with pytest.raises(ValueError, match=r"inputs of shape \(32, 16\) contain NaN"):
        jp.input_stats(bad)
    nan_stats = jp.InputStats(stats.count, stats.sum_sq, stats.hessian.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"Hessian entries contain NaN"):
        jp.sparsegpt(w, nan_stats, 0.5, in_axis=1)
    with pytest.raises(ValueError, match=r"SparseGPT needs the inputs' Hessian"):
        jp.sparsegpt(w, jp.input_stats(x, hessian=False), 0.5, in_axis=1)
    with pytest.raises(ValueError, match=r"stats has no hessian but hessian=True"):
        jp.input_stats(x, jp.input_stats(x, hessian=False))
    with pytest.raises(ValueError, match=r"block_size=6 must be a multiple of m=4"):
        jp.sparsegpt(w, x, nm=(2, 4), in_axis=1, block_size=6)
    with pytest.raises(ValueError, match=r"amount=40 entries per block is more than the 32 entries of the last block"):
        jp.sparsegpt(w, x, 40, in_axis=1, block_size=6)  # blocks of 6, 6 and 4 inputs (8 outputs)
    with pytest.raises(ValueError, match=r"block_size must be a positive int, got 0"):
        jp.SparseGPT(0.5, block_size=0)
    with pytest.raises(ValueError, match=r"damp must be a finite real >= 0 .* got -0.1"):
        jp.SparseGPT(0.5, damp=-0.1)
    with pytest.raises(ValueError, match=r"give exactly one of amount and nm"):
        jp.Wanda()
    with pytest.raises(ValueError, match=r"amount=2.0 should either"):
        jp.Wanda(2.0)


def test_not_positive_definite_hessian_names_damp() -> None:
    w, x = _layer(16, 4, 8, 32)
    h = 2 * np.ones((8, 8), np.float32) - np.eye(8, dtype=np.float32)  # eigenvalues 15 and -1: indefinite
    stats = jp.InputStats(jp.input_stats(x).count, jnp.ones(8), jnp.asarray(h))
    with pytest.raises(ValueError, match=r"not positive definite after damping with damp=0.01: raise damp"):
        jp.sparsegpt(w, stats, 0.5, in_axis=1)
    new, _ = jax.jit(lambda s: jp.sparsegpt(w, s, 0.5, in_axis=1))(stats)  # under jit: documented NaN
    assert bool(jnp.isnan(new).any())
