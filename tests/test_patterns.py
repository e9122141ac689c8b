"""N:M and block masks: brute-force optima, torch.ao's masks, exact counts, every consumer, bad input."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp
from jaxprune._patterns import n_m_violations, tile_patterns

# --------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------


def _rank_value(x: float) -> float:
    """What a group ranks: |x|, with inf above finite values and NaN above inf."""
    return 2e9 if math.isnan(x) else 1e9 if math.isinf(x) else abs(x)


def brute_n_m_group(group: np.ndarray, n: int, alive: np.ndarray | None = None) -> np.ndarray:
    """Every C(m, k) choice of kept entries among the live ones (k = min(n, live)): the largest total
    (exact: small integers), and among equal totals the largest index sum (ties prune lower indices)."""
    m = len(group)
    live = [i for i in range(m) if alive is None or alive[i]]
    values = [_rank_value(float(v)) for v in group]
    best = max(itertools.combinations(live, min(n, len(live))),
               key=lambda c: (sum(values[i] for i in c), sum(c)))
    keep = np.zeros(m, bool)
    keep[list(best)] = True
    return keep


def sorted_n_m_group(group: np.ndarray, n: int, alive: np.ndarray | None = None) -> np.ndarray:
    """The rule read literally (for groups too large to enumerate): live entries sorted by (value, index)
    descending, the first n kept."""
    live = [i for i in range(len(group)) if alive is None or alive[i]]
    order = sorted(live, key=lambda i: (_rank_value(float(group[i])), i), reverse=True)
    keep = np.zeros(len(group), bool)
    keep[order[:n]] = True
    return keep


def brute_n_m(t: np.ndarray, n: int, m: int, axis: int, alive: np.ndarray | None = None,
              group_fn=brute_n_m_group) -> np.ndarray:
    moved = np.moveaxis(t, axis, -1)
    groups = moved.reshape(-1, m)
    live = None if alive is None else np.moveaxis(alive, axis, -1).reshape(-1, m)
    keep = np.stack([group_fn(g, n, None if live is None else live[i]) for i, g in enumerate(groups)])
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def all_tiles(n: int, m: int) -> list[np.ndarray]:
    """Every m x m 0/1 tile with n ones per row and column, by brute force over all 2**(m*m) tiles."""
    out = []
    for bits in range(2 ** (m * m)):
        tile = np.array([(bits >> (m * m - 1 - i)) & 1 for i in range(m * m)], bool).reshape(m, m)
        if (tile.sum(0) == n).all() and (tile.sum(1) == n).all():
            out.append(tile)  # ascending binary value, first entry most significant
    return out


def brute_transposable(t: np.ndarray, n: int, m: int) -> np.ndarray:
    tiles = all_tiles(n, m)
    out = np.zeros(t.shape, bool)
    for r in range(0, t.shape[0], m):
        for c in range(0, t.shape[1], m):
            a = np.abs(t[r:r + m, c:c + m]).astype(np.float64)
            totals = [a[p].sum() for p in tiles]
            out[r:r + m, c:c + m] = tiles[int(np.argmax(totals))]  # the first best
    return out


# --------------------------------------------------------------------------
# N:M: exact optimum and tie rule
# --------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8])
def test_n_m_is_the_brute_force_optimum_with_the_tie_rule(m):
    rng = np.random.default_rng(m)
    t = rng.integers(-3, 4, size=(6, 5 * m)).astype(np.float32)  # many ties
    t[0, :m] = 1.0  # a group of equal values
    for n in range(m):
        np.testing.assert_array_equal(np.asarray(jp.n_m_mask(t, n, m, axis=1)), brute_n_m(t, n, m, 1))


def test_n_m_large_groups_take_the_sort_path_with_the_same_rule():
    rng = np.random.default_rng(1)
    t = rng.integers(-2, 3, size=(3, 64)).astype(np.float32)
    ref = functools.partial(brute_n_m, group_fn=sorted_n_m_group)
    small = rng.integers(-3, 4, size=(6, 20)).astype(np.float32)
    for n in range(5):  # the literal rule is the brute force where both run
        np.testing.assert_array_equal(ref(small, n, 5, 1), brute_n_m(small, n, 5, 1))
    for n in (0, 5, 17, 31):
        np.testing.assert_array_equal(np.asarray(jp.n_m_mask(t, n, 32, axis=1)), ref(t, n, 32, 1))
    alive = rng.random((3, 64)) < 0.6
    np.testing.assert_array_equal(np.asarray(jp.n_m_mask(t, 9, 32, axis=1, default_mask=alive)),
                                  ref(t, 9, 32, 1, alive))


def test_n_m_literal_ties_nan_and_inf():
    t = np.array([[1.0, 1.0, 1.0, 1.0], [np.nan, 5.0, np.inf, -7.0], [-0.0, 0.0, 0.0, -0.0]], np.float32)
    assert jp.n_m_mask(t, 2, 4, axis=1).astype(int).tolist() == [[0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1]]
    assert jp.n_m_mask(t, 1, 4, axis=1).astype(int).tolist() == [[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_n_m_along_any_axis_equals_the_last_axis_of_the_moved_tensor(axis):
    rng = np.random.default_rng(2)
    t = rng.integers(-4, 5, size=(8, 4, 12)).astype(np.float32)
    got = np.asarray(jp.n_m_mask(t, 2, 4, axis=axis))
    np.testing.assert_array_equal(got, brute_n_m(t, 2, 4, axis % 3))
    assert jp.n_m_valid(got, 2, 4, axis=axis) and got.sum() == t.size // 2


def test_n_m_default_mask_entries_stay_pruned_and_count_in_their_group():
    t = np.array([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]], np.float32)
    dm = np.array([[False, True, True, True, False, False, True, True]])
    got = jp.n_m_mask(t, 2, 4, axis=1, default_mask=dm)
    assert got.astype(int).tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]]  # the 9 stays pruned; the rest ranks
    rng = np.random.default_rng(3)
    t = rng.integers(-3, 4, size=(5, 16)).astype(np.float32)
    dm = rng.random((5, 16)) < 0.5
    for n in range(4):
        got = np.asarray(jp.n_m_mask(t, n, 4, axis=1, default_mask=dm))
        np.testing.assert_array_equal(got, brute_n_m(t, n, 4, 1, dm))
        assert not (got & ~dm).any()


def test_n_m_importance_scores_rank_instead_of_the_tensor():
    t = np.array([[4.0, 3.0, 2.0, 1.0]], np.float32)
    scores = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    assert jp.n_m_mask(t, 2, 4, axis=1, importance_scores=scores).astype(int).tolist() == [[0, 1, 1, 0]]


def test_n_m_integer_and_low_precision_dtypes():
    t = np.array([[-128, 127, 5, -6]], np.int8)  # |int8(-128)| is 128, not -128
    assert jp.n_m_mask(t, 2, 4, axis=1).astype(int).tolist() == [[1, 1, 0, 0]]
    b = jnp.array([[1.0, -3.0, 2.0, 0.5]], jnp.bfloat16)
    assert jp.n_m_mask(b, 2, 4, axis=-1).astype(int).tolist() == [[0, 1, 1, 0]]


def test_matmul_input_axis_and_layout_names():
    assert [jp.matmul_input_axis(k, "torch") for k in ("linear", "conv", "conv_transpose")] == [1, 1, 0]
    assert [jp.matmul_input_axis(k, "flax") for k in ("dense", "conv", "conv_transpose")] == [-2, -2, -2]
    conv = np.random.default_rng(4).standard_normal((3, 3, 8, 16)).astype(np.float32)  # Flax Conv (kh, kw, in, out)
    np.testing.assert_array_equal(np.asarray(jp.n_m_mask(conv, 2, 4, axis="flax")),
                                  np.asarray(jp.n_m_mask(conv, 2, 4, axis=2)))
    torch_conv = np.transpose(conv, (3, 2, 0, 1))  # torch (out, in, kh, kw)
    np.testing.assert_array_equal(np.asarray(jp.n_m_mask(torch_conv, 2, 4, axis="torch")),
                                  np.transpose(np.asarray(jp.n_m_mask(conv, 2, 4, axis="flax")), (3, 2, 0, 1)))


def test_torch_ao_weight_norm_sparsifier_on_the_torch_layout_equals_n_m_on_the_flax_kernel():
    torch = pytest.importorskip("torch")
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 24))  # tie-free random weights
    weight = model[0].weight.detach().numpy().copy()  # (out, in)
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    torch_mask = model[0].parametrizations.weight[0].mask.numpy().astype(bool)
    flax_kernel = weight.T  # (in, out)
    ours = np.asarray(jp.n_m_mask(flax_kernel, 2, 4, axis=jp.matmul_input_axis("dense", "flax")))
    np.testing.assert_array_equal(ours.T, torch_mask)
    assert jp.n_m_valid(torch_mask, 2, 4, axis=1) and not jp.n_m_valid(torch_mask, 2, 4, axis=0)


# --------------------------------------------------------------------------
# Transposable N:M
# --------------------------------------------------------------------------


def test_there_are_90_transposable_2_4_tiles_in_binary_order():
    tiles = all_tiles(2, 4)
    assert len(tiles) == 90
    np.testing.assert_array_equal(tile_patterns(2, 4), np.stack([p.reshape(-1) for p in tiles]))
    assert [len(tile_patterns(n, 4)) for n in range(4)] == [1, 24, 90, 24]


def test_transposable_is_the_best_of_the_90_tiles_with_ties_to_the_first():
    rng = np.random.default_rng(5)
    floats = rng.standard_normal((16, 24)).astype(np.float32)  # tie-free
    ints = rng.integers(-2, 3, size=(16, 24)).astype(np.float32)  # ties everywhere (exact sums)
    for t in (floats, ints, np.ones((4, 4), np.float32)):
        got = np.asarray(jp.n_m_mask(t, 2, 4, axis=1, transposable=True))
        np.testing.assert_array_equal(got, brute_transposable(t, 2, 4))
        assert jp.n_m_valid(got, 2, 4, axis=0) and jp.n_m_valid(got, 2, 4, axis=1)
    for n in (1, 3):
        np.testing.assert_array_equal(np.asarray(jp.n_m_mask(ints, n, 4, axis=0, transposable=True)),
                                      brute_transposable(ints, n, 4))


def test_transposable_keeps_nan_then_inf_first_and_respects_the_default_mask():
    t = np.zeros((4, 4), np.float32)
    t[0, 0], t[1, 1], t[2, 2] = np.nan, np.inf, 5.0
    got = np.asarray(jp.n_m_mask(t, 2, 4, axis=1, transposable=True))
    assert got[0, 0] and got[1, 1] and got[2, 2]
    rng = np.random.default_rng(6)
    t = rng.standard_normal((8, 8)).astype(np.float32)
    dm = rng.random((8, 8)) < 0.7
    got = np.asarray(jp.n_m_mask(t, 2, 4, axis=1, default_mask=dm, transposable=True))
    assert not (got & ~dm).any()
    np.testing.assert_array_equal(got, brute_transposable(np.where(dm, t, 0), 2, 4) & dm)


def test_transposable_many_tiles_take_batches_with_the_same_result():
    rng = np.random.default_rng(7)
    t = rng.standard_normal((4 * 260, 4 * 260)).astype(np.float32)  # 67,600 tiles > one batch
    for last in (0.0, np.inf):  # all finite (one matmul), or not (the lexicographic score)
        t[-1, -1] = last
        got = np.asarray(jp.n_m_mask(t, 2, 4, axis=1, transposable=True))
        np.testing.assert_array_equal(got[:16, :16], brute_transposable(t[:16, :16], 2, 4))
        assert jp.n_m_valid(got, 2, 4, axis=0) and jp.n_m_valid(got, 2, 4, axis=1) and got.sum() == t.size // 2
    assert got[-1, -1]


# --------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------


def brute_block_keep(t: np.ndarray, amount: float, block: tuple[int, ...], reduce: str) -> np.ndarray:
    grid = [-(-s // b) for s, b in zip(t.shape, block)]
    scores = []
    for index in itertools.product(*map(range, grid)):
        part = t[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block))].astype(np.float64)
        a = np.abs(part)
        scale = math.prod(block) / part.size
        s = a.sum() * scale if reduce == "l1" else math.sqrt((a * a).sum() * scale) if reduce == "l2" else a.max()
        scores.append(s)
    k = amount if isinstance(amount, int) else round(amount * len(scores))  # an int is a count
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    keep_blocks = np.ones(len(scores), bool)
    keep_blocks[order[:k]] = False
    keep = np.zeros(t.shape, bool)
    for flat, index in enumerate(itertools.product(*map(range, grid))):
        keep[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block))] = keep_blocks[flat]
    return keep


@pytest.mark.parametrize("reduce", ["l1", "l2", "max"])
@pytest.mark.parametrize(("shape", "block"), [((8, 12), (4, 4)), ((10, 7), (4, 3)), ((6, 5, 4), (2, 1, 4)),
                                             ((4, 70), (1, 32)), ((70, 4), (32, 2)), ((9,), (2,))])
def test_block_mask_prunes_exactly_the_lowest_blocks(reduce, shape, block):
    rng = np.random.default_rng(8)
    t = rng.integers(-3, 4, size=shape).astype(np.float32)  # ties between blocks
    for amount in (0.0, 0.3, 0.5, 1.0, 2):
        got = np.asarray(jp.block_mask(t, amount, block, reduce=reduce))
        np.testing.assert_array_equal(got, brute_block_keep(t, amount, block, reduce))


def test_block_edge_blocks_are_scored_by_their_mean():
    w = np.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0], [3.0, 3.0, 0.1, 0.1]], np.float32)
    # full blocks: 4 and 20; edge blocks: mean 3 -> 12 (not their sum 6), mean 0.1 -> 0.4
    assert jp.block_mask(w, 2, (2, 2)).astype(int).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]
    w[2, :2] = 1.5  # mean 1.5 -> 6: now below the full block of 4's... no: 6 > 4, still kept
    assert jp.block_mask(w, 2, (2, 2)).astype(int).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]]
    w[2, :2] = 0.9  # mean 0.9 -> 3.6 < 4: pruned before the 1s block
    assert jp.block_mask(w, 2, (2, 2)).astype(int).tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]


def test_block_nan_is_pruned_last_and_default_mask_blocks_are_not_candidates():
    w = np.array([[np.nan, 0.0, 0.0, 0.0]], np.float32)
    assert jp.block_mask(w, 1, (1, 2)).astype(int).tolist() == [[1, 1, 0, 0]]
    rng = np.random.default_rng(9)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    dm = np.ones((8, 8), bool)
    dm[:4, :4] = False  # one whole 4x4 block pruned already
    dm[5, 5] = False  # a partly pruned block is still a candidate
    got = np.asarray(jp.block_mask(w, 0.5, (4, 4), default_mask=dm))  # round(0.5 * 3 live blocks) = 2 more
    assert not (got & ~dm).any()
    assert int(jp.BlockSparse(0.5, (4, 4)).pruned_units(jnp.asarray(got))) == 3


# --------------------------------------------------------------------------
# jit, vmap, traced default masks
# --------------------------------------------------------------------------


def test_jit_and_vmap_and_traced_default_masks_equal_the_eager_masks():
    rng = np.random.default_rng(10)
    t = rng.standard_normal((3, 8, 12)).astype(np.float32)
    dm = rng.random((3, 8, 12)) < 0.8
    eager = [np.asarray(jp.n_m_mask(t[i], 2, 4, axis=0, default_mask=dm[i])) for i in range(3)]
    f = jax.jit(lambda x, d: jp.n_m_mask(x, 2, 4, axis=0, default_mask=d))
    np.testing.assert_array_equal(np.asarray(f(t[0], dm[0])), eager[0])
    np.testing.assert_array_equal(np.asarray(jax.vmap(f)(t, dm)), np.stack(eager))
    g = jax.jit(lambda x, d: jp.n_m_mask(x, 2, 4, axis=1, default_mask=d, transposable=True))
    np.testing.assert_array_equal(np.asarray(jax.vmap(g)(t, dm)),
                                  np.stack([brute_transposable(np.where(dm[i], t[i], 0), 2, 4) & dm[i]
                                            for i in range(3)]))
    blocks = [np.asarray(jp.block_mask(t[i], 0.5, (4, 4), default_mask=dm[i])) for i in range(3)]
    h = jax.jit(lambda x, d, a: jp.block_mask(x, a, (4, 4), default_mask=d))
    np.testing.assert_array_equal(np.asarray(h(t[0], dm[0], jnp.float32(0.5))), blocks[0])
    np.testing.assert_array_equal(np.asarray(jax.vmap(h, in_axes=(0, 0, None))(t, dm, jnp.float32(0.5))),
                                  np.stack(blocks))


# --------------------------------------------------------------------------
# Every consumer: prune_tree, jp.pruning, the torch bridge, the CLI
# --------------------------------------------------------------------------


def test_prune_tree_with_n_m_and_block_rules():
    rng = np.random.default_rng(11)
    params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
                        "bias": jnp.zeros(8)},
              "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 8, 4)), jnp.float32)}}
    masks = jp.prune_tree(None, params, {"dense.kernel": jp.NMSparse(2, 4, axis="flax"),
                                         "conv.kernel": jp.BlockSparse(0.25, (3, 3, 4, 4))})
    np.testing.assert_array_equal(np.asarray(masks["dense"]["kernel"]),
                                  brute_n_m(np.asarray(params["dense"]["kernel"]), 2, 4, 0))
    np.testing.assert_array_equal(np.asarray(masks["conv"]["kernel"]),
                                  brute_block_keep(np.asarray(params["conv"]["kernel"]), 0.25, (3, 3, 4, 4), "l1"))
    assert masks["dense"]["bias"] is None
    with pytest.raises(ValueError, match=r"rule 'conv.kernel'.*axis 2 has size 8.*multiple of m=3"):
        jp.prune_tree(None, params, {"conv.kernel": jp.NMSparse(1, 3, axis="flax")})
    with pytest.raises(ValueError, match=r"block \(4, 4\) has 2 extents, but the tensor has 4 dims"):
        jp.prune_tree(None, params, {"conv.kernel": jp.BlockSparse(0.5, (4, 4))})


def test_units_for_schedules_and_reports():
    nm, blocks = jp.NMSparse(2, 4, axis=1), jp.BlockSparse(0.5, (4, 4))
    assert (nm.unit, nm.units((8, 16)), nm.has_amount) == ("entries", 128, False)
    assert (blocks.unit, blocks.units((10, 16)), blocks.has_amount) == ("blocks", 12, True)
    mask = jnp.asarray(jp.block_mask(np.ones((10, 16), np.float32), 5, (4, 4)))
    assert int(blocks.pruned_units(mask)) == 5 and int(nm.pruned_units(mask)) == int((~mask).sum())


def test_pruning_turns_n_m_on_at_a_step_with_one_compile(standard_promotion):
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(12)
    params = {"kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)}
    tx = jp.pruning(optax.sgd(0.0), {"kernel": jp.NMSparse(2, 4, axis="flax")}, jp.one_shot_schedule(0.5, step=3))
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(5):
        _, state = step(params, state, params)
        mask = np.asarray(state.masks["kernel"])
        if i < 3:
            assert mask.all()
        else:
            np.testing.assert_array_equal(mask, brute_n_m(np.asarray(params["kernel"]), 2, 4, 0))
    assert step._cache_size() == 1


def test_pruning_moves_from_1_4_to_2_4_pruned_and_blocks_follow_any_schedule(standard_promotion):
    optax = pytest.importorskip("optax")
    rng = np.random.default_rng(13)
    params = {"a": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)}
    schedule = jp.polynomial_schedule(0.25, 0.5, start=0, end=4, every=2, power=1)
    rules = {"a": jp.NMSparse(None, 4, axis=0), "b": functools.partial(jp.BlockSparse, block=(4, 4))}
    tx = jp.pruning(optax.sgd(0.0), rules, schedule)
    state = tx.init(params)
    step = jax.jit(tx.update)
    seen = {}
    for i in range(6):
        _, state = step(params, state, params)
        seen[i] = (np.asarray(state.masks["a"]), np.asarray(state.masks["b"]))
    a = np.asarray(params["a"])
    np.testing.assert_array_equal(seen[0][0], brute_n_m(a, 3, 4, 0))  # 1 of 4 pruned
    np.testing.assert_array_equal(seen[4][0], brute_n_m(a, 2, 4, 0))  # 2 of 4 pruned
    for i in range(6):
        target = float(schedule.target(i - i % 2 if i <= 4 else 4))
        assert int(jp.BlockSparse(0, (4, 4)).pruned_units(jnp.asarray(seen[i][1]))) == round(target * 16)
    assert [(~seen[i][0]).sum() for i in range(6)] == [32, 32, 32, 32, 64, 64]  # 1.5 per group rounds down
    assert step._cache_size() == 1


def test_torch_bridge_prunes_modules_with_n_m_and_block_rules():
    torch = pytest.importorskip("torch")
    from jaxprune import interop

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Conv2d(4, 8, 3))
    w0 = net[0].weight.detach().numpy().copy()
    w1 = net[1].weight.detach().numpy().copy()
    interop.prune_module(None, net, {"0.weight": jp.NMSparse(2, 4, axis="torch"),
                                     "1.weight": jp.BlockSparse(0.5, (4, 4, 1, 1))})
    np.testing.assert_array_equal(net[0].weight_mask.numpy().astype(bool), brute_n_m(w0, 2, 4, 1))
    np.testing.assert_array_equal(net[1].weight_mask.numpy().astype(bool),
                                  brute_block_keep(w1, 0.5, (4, 4, 1, 1), "l1"))
    assert torch.nn.utils.prune.is_pruned(net)
    with pytest.raises(ValueError, match=r"axis 1 has size 4, which is not a multiple of m=8"):
        interop.prune_module(None, net, {"1.weight": jp.NMSparse(2, 8, axis="torch")})


def test_cli_prunes_with_n_m_and_block_specs_and_reports_validity(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.numpy import load_file, save_file

    from jaxprune.cli import main

    rng = np.random.default_rng(14)
    weights = {"fc.weight": rng.standard_normal((8, 16)).astype(np.float32),
               "conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32)}
    save_file(weights, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    assert main(["prune", str(tmp_path / "in.safetensors"), "-o", str(out), "--rule", "fc.weight=nm:2:4",
                 "--rule", "conv.weight=block:0.5:block=4x4x1x1:reduce=max"]) == 0
    text = capsys.readouterr().out
    assert "nm:2:4 (2:4 along axis 1: valid)" in text and "9/18 4x4x1x1 blocks" in text
    pruned = load_file(out)
    np.testing.assert_array_equal(pruned["fc.weight"] != 0, brute_n_m(weights["fc.weight"], 2, 4, 1))
    np.testing.assert_array_equal(pruned["conv.weight"] != 0,
                                  brute_block_keep(weights["conv.weight"], 0.5, (4, 4, 1, 1), "max"))
    assert main(["prune", str(tmp_path / "in.safetensors"), "-o", str(out), "--rule", "fc.weight=nm:1:4:axis=0",
                 "--json"]) == 0
    assert '"pattern": "1:4 along axis 0: valid"' in capsys.readouterr().out
    assert main(["report", str(out), "--nm", "1:4:axis=0", "--block", "4x4x1x1"]) == 0
    text = capsys.readouterr().out
    assert "1:4 along axis 0: valid" in text and "0/18 4x4x1x1 blocks zero" in text  # fc: 1:4; conv untouched
    assert main(["report", str(tmp_path / "in.safetensors"), "--nm", "2:4", "--json"]) == 0
    assert '"nm": "2:4 along axis 1: 32 groups keep more than 2"' in capsys.readouterr().out  # 8 x 4 dense groups
    assert main(["report", str(out), "--nm", "4:4"]) != 0
    assert "--nm '4:4': n must be in [0, m)" in capsys.readouterr().err
    for args, message in [(["--rule", "*.weight=nm:2:4", "--global", "0.5"], "--global ranks entries"),
                          (["--rule", "*=nm:2"], "nm needs N:M"),
                          (["--rule", "*=nm:2:x"], "M='x' is not an integer"),
                          (["--rule", "*=nm:2:4:axis=up"], "axis='up' is not an integer, torch or flax"),
                          (["--rule", "*=block:0.5"], "block needs block="),
                          (["--rule", "*=block:0.5:block=4by4"], "not a block shape such as 4x4"),
                          (["--rule", "*=block:0.5:block=4x4:reduce=mean"], "reduce must be one of")]:
        assert main(["prune", str(tmp_path / "in.safetensors"), "-o", str(out), *args]) != 0
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

_T = np.ones((4, 8), np.float32)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: jp.n_m_mask(_T, 4, 4, axis=1), ValueError, r"n must be in \[0, m\) = \[0, 4\).*n=4, m=4"),
    (lambda: jp.n_m_mask(_T, -1, 4, axis=1), ValueError, r"n must be in \[0, m\).*n=-1"),
    (lambda: jp.n_m_mask(_T, 0, 0, axis=1), ValueError, r"m must be >= 1.*m=0"),
    (lambda: jp.n_m_mask(_T, 2.0, 4, axis=1), TypeError, r"n must be an int, got float: 2.0"),
    (lambda: jp.n_m_mask(_T, 2, True, axis=1), TypeError, r"m must be an int, got bool"),
    (lambda: jp.n_m_mask(_T, 2, 4, axis=2), IndexError, r"axis 2 is out of range for a tensor of shape \(4, 8\)"),
    (lambda: jp.n_m_mask(_T, 2, 4, axis=1.0), TypeError, r"axis must be an int.*float"),
    (lambda: jp.n_m_mask(_T, 2, 4, axis="tf"), ValueError, r"axis must be an int or one of 'torch', 'flax'.*'tf'"),
    (lambda: jp.n_m_mask(np.ones(8), 2, 4, axis="flax"), ValueError, r"axis='flax'.*shape \(8,\)"),
    (lambda: jp.n_m_mask(np.ones(()), 2, 4, axis=0), IndexError, r"0-d tensor"),
    (lambda: jp.n_m_mask(np.ones((4, 6)), 2, 4, axis=1), ValueError,
     r"axis 1 has size 6, which is not a multiple of m=4"),
    (lambda: jp.n_m_mask(np.ones((4, 4, 4)), 2, 4, axis=1, transposable=True), ValueError,
     r"transposable N:M mask needs a 2-D tensor.*\(4, 4, 4\)"),
    (lambda: jp.n_m_mask(np.ones((4, 8)), 2, 4, axis=1, transposable=True, default_mask=np.ones((4, 4))),
     jp.PruningShapeError, r"default_mask must have the tensor's shape \(4, 8\)"),
    (lambda: jp.n_m_mask(np.ones((6, 8)), 2, 4, axis=1, transposable=True), ValueError,
     r"both sides are multiples of m=4.*\(6, 8\)"),
    (lambda: jp.n_m_mask(np.ones((16, 16)), 4, 8, axis=1, transposable=True), ValueError,
     r"transposable 4:8 has more than 4096 valid 8x8 tiles"),
    (lambda: jp.n_m_mask(_T, 2, 4, axis=1, importance_scores=np.ones((4, 4))), jp.PruningShapeError,
     r"importance_scores should have the same shape"),
    (lambda: jp.block_mask(_T, 0.5, (4,)), ValueError, r"block \(4,\) has 1 extents, but the tensor has 2 dims"),
    (lambda: jp.block_mask(_T, 0.5, (4, 0)), ValueError, r"block extents must be >= 1, got \(4, 0\)"),
    (lambda: jp.block_mask(_T, 0.5, (4, 2.5)), TypeError, r"block must be a tuple of ints.*extent 2.5"),
    (lambda: jp.block_mask(_T, 0.5, 4), TypeError, r"block must be a tuple of ints.*got 4"),
    (lambda: jp.block_mask(_T, 0.5, (2, 2), reduce="mean"), ValueError, r"reduce must be one of.*'mean'"),
    (lambda: jp.block_mask(_T, 1.5, (2, 2)), ValueError, r"amount=1.5 should either be a float in the range"),
    (lambda: jp.block_mask(_T, 9, (2, 2)), ValueError, r"9"),
    (lambda: jp.NMSparse(2, 4, axis=None), TypeError, r"axis must be an int.*NoneType"),
    (lambda: jp.NMSparse(2, 4, axis=1, amount=0.5), ValueError, r"takes an amount only with n=None"),
    (lambda: jp.NMSparse(None, 4, axis=1, transposable=True), ValueError, r"transposable NMSparse needs a fixed n"),
    (lambda: jp.BlockSparse(0.5, (2, -1)), ValueError, r"block extents must be >= 1"),
    (lambda: jp.GlobalUnstructured(0.5, method=jp.NMSparse(2, 4, axis=1)), TypeError,
     r"GlobalUnstructured ranks entries across leaves.*NMSparse\(n=2, m=4.*give it as the leaves' rule"),
    (lambda: jp.matmul_input_axis("embedding", "torch"), ValueError, r"kind must be one of.*'embedding'"),
    (lambda: jp.matmul_input_axis("linear", "tf"), ValueError, r"layout must be one of 'torch', 'flax', got 'tf'"),
    (lambda: jp.n_m_valid(np.ones((2, 6)), 2, 4, axis=1), ValueError, r"axis 1 has size 6"),
])
def test_bad_input_is_refused_with_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_traced_n_is_refused():
    with pytest.raises(TypeError, match=r"n must be a static Python int"):
        jax.jit(lambda x, n: jp.n_m_mask(x, n, 4, axis=1))(_T, 2)


def test_n_m_violations_counts_the_bad_groups():
    mask = np.array([[1, 1, 1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]], bool)
    assert n_m_violations(mask, 2, 4, axis=1) == 2
    assert not jp.n_m_valid(mask, 3, 4, axis=1) and n_m_violations(mask, 3, 4, axis=1) == 1


def test_n_m_with_an_amount_prunes_that_share_of_every_group():
    rng = np.random.default_rng(15)
    t = rng.integers(-3, 4, size=(4, 16)).astype(np.float32)
    for amount, n in [(0.25, 3), (0.5, 2), (0.6, 2), (0.75, 1), (1.0, 0), (0.0, 4), (32, 2)]:
        spec = jp.NMSparse(None, 4, axis=1, amount=amount)
        expect = np.ones(t.shape, bool) if n == 4 else brute_n_m(t, n, 4, 1)
        np.testing.assert_array_equal(np.asarray(spec.compute_mask(None, t)), expect)
    dm = np.ones(t.shape, bool)
    dm[:, ::4] = False  # 1 of 4 pruned already (16 entries)
    got = jp.NMSparse(None, 4, axis=1, amount=16).compute_mask(None, t, dm)  # 32 of 64 in all: 2 of 4
    np.testing.assert_array_equal(np.asarray(got), brute_n_m(t, 2, 4, 1, dm))
    got = jp.NMSparse(None, 4, axis=1, amount=0.25).compute_mask(None, t, dm)  # 16 + 12 = 28: 1.75, rounds down
    np.testing.assert_array_equal(np.asarray(got), dm)
