"""The reproducibility matrix: one key and one input give one mask, bit for bit.

Axes checked here:
* eager vs ``jit``, and ``vmap`` vs a Python loop;
* any device count and sharding: ``GOLDEN`` holds the SHA-256 of every case's
  masks, checked in this one-device session, in the 8-device session under six
  mesh layouts (tests/test_multidevice.py runs this file there too), and on a
  GPU when one is lent (the same test, run there);
* a torch module vs its Flax port (the bridge).

Inputs come from NumPy's generator (not jax.random.normal, whose floats may
differ across backends); only the pruning draws come from jax keys (threefry
bits are integers, the same on every backend). The Ln case uses dyadic values,
whose norms are exact whatever the summation order (see the README's limits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune as jp
from jaxprune import _selection as jp_selection

from conftest import torch_available


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    w = rng.standard_normal((256, 384)).astype(np.float32)
    return {
        "w": w,
        "q": (np.round(w * 2) / 2).astype(np.float32),  # dyadic, many ties
        "conv": rng.standard_normal((64, 32, 3, 3)).astype(np.float32),
        "bias": rng.standard_normal((384,)).astype(np.float32),
        # subnormals (which XLA:CPU's float compares flush to 0), zeros of both signs, normals
        "tiny": (rng.standard_normal((48, 40)) * np.where(rng.random((48, 40)) < 0.7, 1e-39, 1.0)
                 * (rng.random((48, 40)) > 0.2)).astype(np.float32) * np.where(rng.random((48, 40)) < 0.5, -1, 1),
        "tiny-nonzero": (rng.standard_normal((40, 48)) * 1e-39).astype(np.float32),
    }


def _key(i: int) -> jax.Array:
    return jax.random.key(i)


CASES: dict[str, Callable[[dict], object]] = {
    "l1": lambda x: jp.l1_unstructured(x["w"], 0.37),
    "l1-ties": lambda x: jp.l1_unstructured(x["q"], 0.5),
    "l1-iterative": lambda x: jp.l1_unstructured(x["w"], 0.5, default_mask=jp.l1_unstructured(x["w"], 0.2)),
    "l1-bfloat16": lambda x: jp.l1_unstructured(x["w"].astype(jnp.bfloat16), 0.3),
    "random-unstructured": lambda x: jp.random_unstructured(_key(0), x["w"], 0.3),
    "random-structured-0": lambda x: jp.random_structured(_key(0), x["conv"], 0.25, dim=0),
    "compute-mask-1": lambda x: jp.compute_mask(_key(1), x["conv"], 0.3, dim=1),
    "ln-structured-1": lambda x: jp.ln_structured(x["q"], 0.3, 1, dim=1),
    "ln-structured-inf": lambda x: jp.ln_structured(x["conv"], 20, float("inf"), dim=0),
    "global-l1": lambda x: jp.global_unstructured({"w": x["w"], "conv": x["conv"], "b": x["bias"]}, 0.4),
    "global-random": lambda x: jp.global_unstructured(
        {"w": x["w"], "conv": x["conv"]}, 0.4, method="random", key=_key(2)),
    "l1-subnormal": lambda x: jp.l1_unstructured(x["tiny"], 0.4),
    "ln-inf-subnormal": lambda x: jp.ln_structured(x["tiny"], 0.5, float("inf"), dim=0),
    "ln-ninf-subnormal": lambda x: jp.ln_structured(x["tiny-nonzero"], 0.5, -float("inf"), dim=1),
    "global-subnormal": lambda x: jp.global_unstructured({"tiny": x["tiny"], "b": x["bias"]}, 0.3),
    "prune-tree": lambda x: jp.prune_tree(
        _key(3),
        {"dense": {"kernel": x["w"], "bias": x["bias"]}, "conv": {"kernel": x["conv"]}, "tied": x["q"]},
        {"dense.kernel": jp.RandomUnstructured(0.5), "conv.*": jp.RandomStructured(0.5, dim=1),
         "tied": jp.L1Unstructured(0.25), "dense.bias": jp.Identity()},
    ),
}

GOLDEN = {
    "l1": "8f7d4167b702eb149b7077a31ead998c2e9e3c481d02bbc7bce5809aea1feef8",
    "l1-ties": "595b0edc65389b38f4e0c719a967c6a2c2270bb556993ad720201962bf8b3c35",
    "l1-iterative": "2c4ec6ca22dd582e994746ece72f2a3aed6fcac24a89b31de13d1a7e435e3f4c",
    "l1-bfloat16": "c7f9591d038c77f5926fbd1bc5086c344cb196f00f8d5bc48b9da2ccac5eab19",
    "random-unstructured": "7142591b5dd8157203ffc6969924965645aa2431ae97cdfb2376858c605c6d4a",
    "random-structured-0": "2500e155363cfc0cb62c7e6159c7b6f24828a3342ab854c034ca42716dd2c833",
    "compute-mask-1": "ea972c9274f3853e50c7ef61ba232f54658307cf33bcfe6a1d7b72909d55acdf",
    "ln-structured-1": "f4b6dac0dce28ec3831e2d3afc1f733d8bff142d2a8bd98e9aeca0594fe657eb",
    "ln-structured-inf": "24bf3c115cc26b124f1fdab0c5d526a0f5b2393d6b00e5270a226e56ff0f5ad5",
    "global-l1": "302fb1039f4b4eed59be5e29fa7148f3c12141e740d3557cd33eae8093c3b682",
    "global-random": "d3f12d751aa8bd6784faaa6a7594d968e7d2283cb944570b1b5cd9079ed047fd",
    "l1-subnormal": "f1bb47ae2840a0c429dfc6b5b4f950e3af89d4d54da181d45134bbb0e9f99af2",
    "ln-inf-subnormal": "8b1f867fd7f955524dd9cf4491a568a251e46d1379c9524ed05ef18fa511e8d8",
    "ln-ninf-subnormal": "9ce92b5e8b75bed37c9cb49dcfd02b43a5e51f887f6d8493fa744bb3d3de9e6e",
    "global-subnormal": "8397ab598375126ea8a369d285b83c58f850d036e77f61477f52ded8725de29c",
    "prune-tree": "cfd28b56099d94ae37301c69c594b1221847105c91e8c096b5b1595e4738a42d",
}


def digest(masks: object) -> str:
    """SHA-256 of a mask tree: each leaf's path, shape and packed bits."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(masks):
        arr = np.asarray(leaf)
        assert arr.dtype == np.bool_, (path, arr.dtype)
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape};".encode())
        h.update(np.packbits(arr).tobytes())
    return h.hexdigest()


def _as_jax(x: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in x.items()}


@pytest.mark.parametrize("name", CASES)
def test_golden_digest_on_this_backend(name):
    """Same bits on every machine, backend and jax version this has run on."""
    assert digest(CASES[name](_as_jax(_inputs()))) == GOLDEN[name], jax.default_backend()


@pytest.mark.parametrize("name", CASES)
def test_golden_digest_of_the_compiled_path(name):
    """Eager calls on CPU arrays run in NumPy (jaxprune/_host.py); the
    compiled kernels, which accelerators and sharded arrays use, give the same bits."""
    with jp_selection.forced(host=False):
        assert digest(CASES[name](_as_jax(_inputs()))) == GOLDEN[name]


@pytest.mark.parametrize("name", CASES)
def test_eager_equals_jit(name):
    x = _as_jax(_inputs())
    eager = CASES[name](x)
    jitted = jax.jit(CASES[name])(x)
    assert digest(jitted) == digest(eager)


def test_vmap_equals_loop():
    x = _as_jax(_inputs())
    keys = jax.random.split(_key(5), 4)
    stacked = jnp.stack([x["w"], -x["w"], x["q"], x["w"] * 0])
    amounts = jnp.array([0.1, 0.3, 0.5, 0.7], jnp.float32)

    batched = {
        "random-unstructured": jax.vmap(lambda k: jp.random_unstructured(k, x["w"], 0.3))(keys),
        "random-structured": jax.vmap(lambda k: jp.random_structured(k, x["conv"], 0.4, dim=1))(keys),
        "l1": jax.vmap(lambda t: jp.l1_unstructured(t, 0.4))(stacked),
        "l1-amounts": jax.vmap(lambda a: jp.l1_unstructured(x["w"], a))(amounts),
        "global": jax.vmap(lambda k: jp.global_unstructured(
            {"w": x["w"], "c": x["conv"]}, 0.3, method="random", key=k))(keys),
    }
    looped = {
        "random-unstructured": [jp.random_unstructured(k, x["w"], 0.3) for k in keys],
        "random-structured": [jp.random_structured(k, x["conv"], 0.4, dim=1) for k in keys],
        "l1": [jp.l1_unstructured(t, 0.4) for t in stacked],
        "l1-amounts": [jax.jit(jp.l1_unstructured)(x["w"], a) for a in amounts],
        "global": [jp.global_unstructured({"w": x["w"], "c": x["conv"]}, 0.3, method="random", key=k)
                   for k in keys],
    }
    for name, batch in batched.items():
        for i, one in enumerate(looped[name]):
            assert digest(jax.tree.map(lambda m, i=i: m[i], batch)) == digest(one), (name, i)


# Each mesh with shardings along either axis (1-D leaves are split along "a").
LAYOUTS = [
    ((8, 1), P("a", None)), ((8, 1), P(None, "a")),
    ((4, 2), P("a", "b")), ((4, 2), P(None, "b")),
    ((2, 4), P("b", "a")), ((2, 4), P()),
]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices: tests/test_multidevice.py runs it in a session of 8")
# Three of the layouts (rows, 2-D, 2-D transposed), each case under two of them
# (case i skips layout i mod 3: a third of the compilations saved);
# tests/multidevice/test_sharded_masks.py checks every layout's masks equal one device's.
@pytest.mark.parametrize(("layout", "mesh_shape", "spec"), [(i, *lay) for i, lay in enumerate(LAYOUTS[::2])],
                         ids=lambda x: str(x).replace(" ", ""))
def test_golden_digest_under_sharding(layout, mesh_shape, spec):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(mesh_shape), ("a", "b"))

    def place(v: np.ndarray) -> jax.Array:
        s = spec if v.ndim >= 2 else P(*spec[:1]) if spec and spec[0] else P("a")
        return jax.device_put(v, NamedSharding(mesh, s))

    x = {k: place(v) for k, v in _inputs().items()}
    for name, case in [(name, case) for i, (name, case) in enumerate(CASES.items()) if i % 3 != layout]:
        masks = jax.jit(case)(x)
        assert digest(masks) == GOLDEN[name], (name, mesh_shape, spec)
        for leaf in jax.tree.leaves(masks):
            assert len(leaf.sharding.device_set) == 8, (name, leaf.sharding)


@pytest.mark.skipif(not torch_available(), reason="needs torch")
def test_torch_module_and_its_flax_port_get_the_same_masks():
    from jaxprune import interop

    from _torch_models import small_cnn

    module = small_cnn()
    rules = {"0.weight": jp.RandomStructured(0.5, dim=1), "4.weight": jp.RandomUnstructured(0.3),
             "4.bias": jp.L1Unstructured(0.3)}
    params = interop.torch_to_flax(module)["params"]
    flax_masks = jp.prune_tree(_key(9), params, interop.flax_rules(rules, module))
    interop.prune_module(_key(9), module, rules)
    _, installed = interop.read_pruned(module)
    assert sorted(installed) == ["0.weight", "4.bias", "4.weight"]
    assert digest(flax_masks) == digest(interop.masks_to_flax(installed, module))
