"""jaxprune.interop.prune_module and friends: torch's reparametrization, torch's masks, all or nothing.

The reference for every claim is torch's own ``torch.nn.utils.prune`` run on a
twin module (same seed, same weights).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.utils.prune as prune  # noqa: E402
from _torch_models import small_cnn  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import interop  # noqa: E402
from jaxprune.interop import _modules as interop_modules  # noqa: E402

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def cnn(seed: int = 0) -> torch.nn.Sequential:
    """The shared small CNN."""
    return small_cnn(seed)


def cnn_input(seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, 6, 6)).astype(np.float32))


LAYERS: dict[str, Callable[[], torch.nn.Module]] = {
    "conv1d": lambda: torch.nn.Conv1d(3, 6, 3),
    "conv2d": lambda: torch.nn.Conv2d(3, 8, 3),
    "conv3d": lambda: torch.nn.Conv3d(2, 4, 2),
    "linear": lambda: torch.nn.Linear(12, 7),
}


def layer(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LAYERS[kind]()


def twins(make: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two modules with identical weights: one for jaxprune, one for torch."""
    ours = make()
    theirs = copy.deepcopy(ours)
    return ours, theirs


def assert_state_dicts_equal(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def assert_masks_equal(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    a = {k: v for k, v in ours.state_dict().items() if k.endswith("_mask")}
    b = {k: v for k, v in theirs.state_dict().items() if k.endswith("_mask")}
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def snapshot(module: torch.nn.Module) -> dict[str, Any]:
    """Everything prune_module may touch: state_dict (keys, values), hooks, plain attributes."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    subs = {}
    for name, sub in module.named_modules():
        subs[name] = {
            "params": {k: (id(v), None if v is None else v.detach().clone()) for k, v in sub._parameters.items()},
            "buffers": {k: None if v is None else v.detach().clone() for k, v in sub._buffers.items()},
            "hooks": [(k, id(h), type(h).__name__, len(h) if isinstance(h, prune.PruningContainer) else None)
                      for k, h in sub._forward_pre_hooks.items()],
            "plain": {k: v.detach().clone() for k, v in vars(sub).items() if isinstance(v, torch.Tensor)},
        }
    return {"state": state, "subs": subs, "is_pruned": prune.is_pruned(module),
            "names": [n for n, _ in module.named_parameters()]}


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["is_pruned"] == after["is_pruned"]
    assert before["names"] == after["names"]
    assert list(before["state"]) == list(after["state"])
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    assert list(before["subs"]) == list(after["subs"])
    for name, sub in before["subs"].items():
        other = after["subs"][name]
        assert sub["hooks"] == other["hooks"], name
        assert list(sub["params"]) == list(other["params"]), name
        for k, (ident, value) in sub["params"].items():
            assert other["params"][k][0] == ident, (name, k)  # the same Parameter object
            assert (value is None and other["params"][k][1] is None) or torch.equal(value, other["params"][k][1])
        assert list(sub["buffers"]) == list(other["buffers"]), name
        for k, value in sub["buffers"].items():
            assert (value is None and other["buffers"][k] is None) or torch.equal(value, other["buffers"][k])
        assert list(sub["plain"]) == list(other["plain"]), name
        for k, value in sub["plain"].items():
            assert torch.equal(value, other["plain"][k]), (name, k)


def pruning_hooks(sub: torch.nn.Module) -> list[Any]:
    return [h for h in sub._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


# --------------------------------------------------------------------------
# Deterministic methods: torch's masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(LAYERS), ids=list(LAYERS))
def test_l1_unstructured_equals_torch_first_and_second_round(kind):
    ours, theirs = twins(lambda: layer(kind))
    interop.prune_module(None, ours, {"weight": jp.L1Unstructured(0.3), "bias": jp.L1Unstructured(2)})
    prune.l1_unstructured(theirs, "weight", 0.3)
    prune.l1_unstructured(theirs, "bias", 2)
    assert_state_dicts_equal(ours, theirs)
    # Second round: the amount applies to what remains (PruningContainer), scores are orig * mask.
    interop.prune_module(None, ours, {"weight": jp.L1Unstructured(0.4), "bias": jp.L1Unstructured(1)})
    prune.l1_unstructured(theirs, "weight", 0.4)
    prune.l1_unstructured(theirs, "bias", 1)
    assert_state_dicts_equal(ours, theirs)
    n = ours.weight.numel()
    k1 = round(0.3 * n)
    assert int((ours.weight_mask == 0).sum()) == k1 + round(0.4 * (n - k1))
    assert isinstance(pruning_hooks(ours)[0], prune.PruningContainer)


LN_CASES = [
    ("conv1d", 2, 0, 1, 1),
    ("conv1d", math.inf, -1, 1, 0),
    ("conv2d", 2, 0, 1, 1),
    ("conv2d", 1, 1, -math.inf, 0),
    ("conv2d", math.inf, -1, 2, 2),
    ("conv3d", 2, 0, 2, 1),
    ("conv3d", 1, 2, 1, 0),
    ("linear", 2, 0, 1, 1),
    ("linear", -math.inf, 1, 2, 0),
]


@pytest.mark.parametrize("kind,n1,dim1,n2,dim2", LN_CASES,
                         ids=[f"{k}-n{n1}-dim{d1}-then-n{n2}-dim{d2}" for k, n1, d1, n2, d2 in LN_CASES])
def test_ln_structured_equals_torch_first_and_second_round(kind, n1, dim1, n2, dim2):
    ours, theirs = twins(lambda: layer(kind))
    interop.prune_module(None, ours, {"weight": jp.LnStructured(0.3, n=n1, dim=dim1)})
    prune.ln_structured(theirs, "weight", 0.3, n=n1, dim=dim1)
    assert_state_dicts_equal(ours, theirs)
    interop.prune_module(None, ours, {"weight": jp.LnStructured(0.5, n=n2, dim=dim2)})
    prune.ln_structured(theirs, "weight", 0.5, n=n2, dim=dim2)
    assert_state_dicts_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["conv2d", "linear"], ids=["conv2d", "linear"])
def test_unstructured_then_structured_uses_orig_times_mask_as_torch(kind):
    """torch ranks the second round's slices by the norms of orig * mask (not the dense orig)."""
    ours, theirs = twins(lambda: layer(kind))
    interop.prune_module(None, ours, {"weight": jp.L1Unstructured(0.5)})
    prune.l1_unstructured(theirs, "weight", 0.5)
    interop.prune_module(None, ours, {"weight": jp.LnStructured(0.4, n=1, dim=0)})
    prune.ln_structured(theirs, "weight", 0.4, n=1, dim=0)
    assert_state_dicts_equal(ours, theirs)


@pytest.mark.parametrize("method", ["l1", "ln"], ids=["l1-unstructured", "ln-structured"])
def test_importance_scores_equal_torch_first_and_second_round(method):
    ours, theirs = twins(lambda: layer("conv2d"))
    for round_, seed in enumerate((5, 6)):
        scores = torch.from_numpy(np.random.default_rng(seed).standard_normal((8, 3, 3, 3)).astype(np.float32))
        if method == "l1":
            spec = jp.L1Unstructured(0.3)
            prune.l1_unstructured(theirs, "weight", 0.3, importance_scores=scores)
        else:
            spec = jp.LnStructured(0.25, n=2, dim=0)
            prune.ln_structured(theirs, "weight", 0.25, n=2, dim=0, importance_scores=scores)
        interop.prune_module(None, ours, {"weight": spec}, importance_scores={"weight": scores})
        assert_state_dicts_equal(ours, theirs)
        # The scores decide, not the weights: the result differs from pruning by magnitude.
        plain = interop.compute_module_masks(None, layer("conv2d"), {"weight": spec})["weight"]
        if round_ == 0:
            assert not np.array_equal(np.asarray(plain), ours.weight_mask.numpy() != 0)


def test_mixing_with_torch_rounds_in_either_order():
    ours, theirs = twins(cnn)
    prune.l1_unstructured(ours[0], "weight", 0.2)  # torch first, then jaxprune
    prune.l1_unstructured(theirs[0], "weight", 0.2)
    interop.prune_module(None, ours, {"0.weight": jp.LnStructured(0.25, n=2, dim=0),
                                      "4.weight": jp.L1Unstructured(0.3)})
    prune.ln_structured(theirs[0], "weight", 0.25, n=2, dim=0)
    prune.l1_unstructured(theirs[4], "weight", 0.3)
    assert_masks_equal(ours, theirs)
    prune.l1_unstructured(ours[4], "weight", 0.5)  # jaxprune first, then torch
    prune.l1_unstructured(theirs[4], "weight", 0.5)
    assert_state_dicts_equal(ours, theirs)


def test_rules_use_glob_patterns_over_dotted_names_and_first_match_wins():
    net = cnn()
    masks = interop.compute_module_masks(None, net, {"4.*": jp.L1Unstructured(0.5), "*.weight": jp.L1Unstructured(0.1),
                                                     "1.bias": None})
    assert sorted(masks) == ["0.weight", "1.weight", "4.bias", "4.weight"]
    assert int((~masks["4.weight"]).sum()) == round(0.5 * 1280)
    assert int((~masks["0.weight"]).sum()) == round(0.1 * 216)


def test_callable_rules_see_names_and_tensors():
    seen: dict[str, tuple[int, ...]] = {}

    def rule(name: str, tensor: torch.Tensor) -> Any:
        seen[name] = tuple(tensor.shape)
        return jp.L1Unstructured(0.25) if tensor.ndim > 1 else None

    ours, theirs = twins(cnn)
    interop.prune_module(None, ours, rule)
    assert seen == {"0.weight": (8, 3, 3, 3), "0.bias": (8,), "1.weight": (8,), "1.bias": (8,),
                    "4.weight": (10, 128), "4.bias": (10,)}
    prune.l1_unstructured(theirs[0], "weight", 0.25)
    prune.l1_unstructured(theirs[4], "weight", 0.25)
    assert_state_dicts_equal(ours, theirs)
    # Names stay the pre-pruning names on the second call (never "0.weight_orig").
    seen.clear()
    interop.prune_module(None, ours, rule)
    assert sorted(seen) == ["0.bias", "0.weight", "1.bias", "1.weight", "4.bias", "4.weight"]


# --------------------------------------------------------------------------
# torch's reparametrization: is_pruned, remove, state_dict, training, deepcopy
# --------------------------------------------------------------------------


def test_installs_torchs_reparametrization():
    net = cnn()
    weight = net[4].weight
    assert not prune.is_pruned(net)
    returned = interop.prune_module(jax.random.key(0), net, {"4.weight": jp.RandomUnstructured(0.5),
                                                             "0.bias": jp.L1Unstructured(3)})
    assert returned is net and prune.is_pruned(net)
    assert net[4].weight_orig is weight  # the same Parameter, re-registered (as torch)
    assert "weight" not in dict(net[4].named_parameters())
    assert dict(net[4].named_buffers())["weight_mask"].dtype == torch.float32
    assert sorted(net[4].state_dict()) == ["bias", "weight_mask", "weight_orig"]
    assert torch.equal(net[4].weight, weight.detach() * net[4].weight_mask)
    hooks = pruning_hooks(net[4])
    assert len(hooks) == 1 and hooks[0]._tensor_name == "weight"
    # torch's remove: the same Parameter, permanently pruned, no reparametrization left.
    prune.remove(net[4], "weight")
    prune.remove(net[0], "bias")
    assert not prune.is_pruned(net)
    assert net[4].weight is weight
    assert sorted(net.state_dict()) == sorted(cnn().state_dict())
    assert int((net[4].weight == 0).sum()) == 640
    assert int((net[0].bias == 0).sum()) == 3


def test_state_dict_loads_into_a_torch_pruned_module_and_not_into_a_plain_one():
    ours, theirs = twins(cnn)
    interop.prune_module(None, ours, {"0.weight": jp.LnStructured(0.25, n=2, dim=0)})
    prune.ln_structured(theirs[0], "weight", 0.25, n=2, dim=0)
    fresh = cnn(seed=9)
    prune.identity(fresh[0], "weight")
    fresh.load_state_dict(ours.state_dict())
    assert_state_dicts_equal(fresh, theirs)
    with pytest.raises(RuntimeError):
        cnn().load_state_dict(ours.state_dict())


def test_training_step_matches_torch():
    ours, theirs = twins(cnn)
    rules = {"0.weight": jp.LnStructured(0.25, n=2, dim=0), "4.weight": jp.L1Unstructured(0.6)}
    interop.prune_module(None, ours, rules)
    prune.ln_structured(theirs[0], "weight", 0.25, n=2, dim=0)
    prune.l1_unstructured(theirs[4], "weight", 0.6)
    x, target = cnn_input(), torch.tensor([3, 7])
    for net in (ours, theirs):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), target).backward()
            opt.step()
    assert_state_dicts_equal(ours, theirs)
    for i in (0, 4):
        # the gradient reaches the dense orig only through the mask
        assert torch.equal(ours[i].weight_orig.grad, theirs[i].weight_orig.grad)
        assert torch.all(ours[i].weight_orig.grad[ours[i].weight_mask == 0] == 0)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def deepcopy_outcome(net: torch.nn.Module) -> str:
    try:
        copy.deepcopy(net)
    except RuntimeError as err:
        return f"RuntimeError: {str(err).splitlines()[0]}"
    return "ok"


def test_deepcopy_behaves_as_after_torchs_own_pruning():
    ours, theirs = twins(lambda: cnn().eval())
    interop.prune_module(None, ours, {"4.weight": jp.L1Unstructured(0.5)})
    prune.l1_unstructured(theirs[4], "weight", 0.5)
    x = cnn_input()
    # Right after pruning and after a grad-mode forward, torch 2.13 itself cannot
    # deepcopy (module.weight is a non-leaf tensor); ours fails the same way.
    assert deepcopy_outcome(ours) == deepcopy_outcome(theirs)
    ours(x), theirs(x)
    assert deepcopy_outcome(ours) == deepcopy_outcome(theirs)
    assert deepcopy_outcome(theirs).startswith("RuntimeError")
    # After a forward under no_grad both copy, and the copies compute the same.
    with torch.no_grad():
        ours(x), theirs(x)
    copies = copy.deepcopy(ours), copy.deepcopy(theirs)
    assert prune.is_pruned(copies[0]) and prune.is_pruned(copies[1])
    with torch.no_grad():
        assert torch.equal(copies[0](x), ours(x))
        assert torch.equal(copies[0](x), copies[1](x))
    assert_state_dicts_equal(copies[0], copies[1])


# --------------------------------------------------------------------------
# Random methods: reproducible, keyed by name
# --------------------------------------------------------------------------

RANDOM_RULES = {
    "0.weight": jp.RandomStructured(0.25, dim=0),
    "0.bias": jp.RandomUnstructured(0.5),
    "4.weight": jp.RandomUnstructured(0.3),
    "4.bias": jp.RandomUnstructured(2),
}


def masks_of(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k[: -len("_mask")]: v.numpy().copy() for k, v in net.state_dict().items() if k.endswith("_mask")}


def test_random_methods_reproducible_and_keyed_by_parameter_name():
    key = jax.random.key(11)
    a, b = cnn(), cnn()
    interop.prune_module(key, a, RANDOM_RULES)
    interop.prune_module(key, b, RANDOM_RULES)
    ma, mb = masks_of(a), masks_of(b)
    assert sorted(ma) == sorted(RANDOM_RULES)
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name])
    # Each mask is the spec's own mask drawn from leaf_key(key, name).
    for name, spec in RANDOM_RULES.items():
        tensor = dict(cnn().named_parameters())[name]
        expected = spec.compute_mask(jp.leaf_key(key, name), interop.to_jax(tensor))
        np.testing.assert_array_equal(ma[name] != 0, np.asarray(expected))
    # Counts: 2 of 8 filters, 4 of 8 biases, 384 of 1280 weights, 2 biases.
    assert int((ma["0.weight"].reshape(8, -1).sum(1) == 0).sum()) == 2
    assert [int((ma[n] == 0).sum()) for n in ("0.bias", "4.weight", "4.bias")] == [4, 384, 2]
    # Another key, other masks.
    c = cnn()
    interop.prune_module(jax.random.key(12), c, RANDOM_RULES)
    assert not all(np.array_equal(masks_of(c)[n], ma[n]) for n in ma)
    # The key's words as a NumPy key (the README's way to start nothing in jax): the same masks.
    d = cnn()
    interop.prune_module(np.array([0, 11], np.uint32), d, RANDOM_RULES)
    for name in ma:
        np.testing.assert_array_equal(masks_of(d)[name], ma[name])


def test_random_masks_do_not_depend_on_the_weights():
    key = jax.random.key(3)
    a, b = cnn(seed=0), cnn(seed=1)
    interop.prune_module(key, a, {"4.weight": jp.RandomUnstructured(0.3)})
    interop.prune_module(key, b, {"4.weight": jp.RandomUnstructured(0.3)})
    np.testing.assert_array_equal(masks_of(a)["4.weight"], masks_of(b)["4.weight"])


@pytest.mark.parametrize("dropped", sorted(RANDOM_RULES), ids=sorted(RANDOM_RULES))
def test_adding_or_removing_a_rule_never_changes_another_mask(dropped):
    key = jax.random.key(5)
    full = interop.compute_module_masks(key, cnn(), RANDOM_RULES)
    fewer = {k: v for k, v in RANDOM_RULES.items() if k != dropped}
    partial = interop.compute_module_masks(key, cnn(), fewer)
    assert sorted(partial) == sorted(fewer)
    for name in fewer:
        np.testing.assert_array_equal(np.asarray(partial[name]), np.asarray(full[name]))
    # Adding a rule for a parameter nobody pruned (and a deterministic one) changes nothing either.
    more = {**RANDOM_RULES, "1.weight": jp.RandomUnstructured(0.5), "1.bias": jp.L1Unstructured(1)}
    extended = interop.compute_module_masks(key, cnn(), more)
    for name in RANDOM_RULES:
        np.testing.assert_array_equal(np.asarray(extended[name]), np.asarray(full[name]))


def test_random_second_round_prunes_from_what_remains():
    net = cnn()
    interop.prune_module(jax.random.key(0), net, {"4.weight": jp.RandomUnstructured(0.3)})
    first = masks_of(net)["4.weight"]
    interop.prune_module(jax.random.key(1), net, {"4.weight": jp.RandomUnstructured(0.3)})
    second = masks_of(net)["4.weight"]
    assert np.all(second <= first)  # nothing revived
    assert int((second == 0).sum()) == 384 + round(0.3 * (1280 - 384))
    assert isinstance(pruning_hooks(net[4])[0], prune.PruningContainer)


# --------------------------------------------------------------------------
# Global pruning
# --------------------------------------------------------------------------


@pytest.mark.parametrize("amounts", [(0.5, 0.5), (300, 0.2), (0.1, 100)], ids=["frac-frac", "count-frac", "frac-count"])
def test_global_l1_equals_torch_global_unstructured_iteratively(amounts):
    ours, theirs = twins(cnn)
    targets = [(theirs[0], "weight"), (theirs[0], "bias"), (theirs[4], "weight")]
    for amount in amounts:
        # Two patterns, one global group: the shared group name joins them.
        interop.prune_module(None, ours, {"0.*": jp.GlobalUnstructured(amount, group="all"),
                                          "4.weight": jp.GlobalUnstructured(amount, group="all")})
        prune.global_unstructured(targets, prune.L1Unstructured, amount=amount)
        assert_masks_equal(ours, theirs)
    remaining = 216 + 8 + 1280
    a, b = amounts
    ka = round(a * remaining) if isinstance(a, float) else a
    kb = round(b * (remaining - ka)) if isinstance(b, float) else b
    assert sum(int((m == 0).sum()) for m in masks_of(ours).values()) == ka + kb


def test_global_rule_beside_per_tensor_rules_equals_torch():
    ours, theirs = twins(cnn)
    interop.prune_module(None, ours, {"*.weight": jp.GlobalUnstructured(0.4), "*.bias": jp.L1Unstructured(2)})
    prune.global_unstructured([(theirs[0], "weight"), (theirs[1], "weight"), (theirs[4], "weight")],
                              prune.L1Unstructured, amount=0.4)
    for i in (0, 1, 4):
        prune.l1_unstructured(theirs[i], "bias", 2)
    assert_masks_equal(ours, theirs)


def test_global_after_per_tensor_pruning_equals_torch():
    ours, theirs = twins(cnn)
    interop.prune_module(None, ours, {"0.weight": jp.LnStructured(0.25, n=1, dim=0)})
    prune.ln_structured(theirs[0], "weight", 0.25, n=1, dim=0)
    interop.prune_module(None, ours, {"*.weight": jp.GlobalUnstructured(0.5)})
    prune.global_unstructured([(theirs[i], "weight") for i in (0, 1, 4)], prune.L1Unstructured, amount=0.5)
    assert_masks_equal(ours, theirs)


def test_global_random_is_reproducible_and_counts_globally():
    rules = {"*.weight": jp.GlobalUnstructured(0.5, method="random")}
    a, b = cnn(), cnn()
    interop.prune_module(jax.random.key(4), a, rules)
    interop.prune_module(jax.random.key(4), b, rules)
    ma, mb = masks_of(a), masks_of(b)
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name])
    assert sum(int((m == 0).sum()) for m in ma.values()) == round(0.5 * (216 + 8 + 1280))


# --------------------------------------------------------------------------
# All or nothing
# --------------------------------------------------------------------------


class WithCounter(torch.nn.Module):
    """A Linear beside an integer Parameter (a step counter)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 4)
        self.steps = torch.nn.Parameter(torch.arange(4), requires_grad=False)


FAILURES: list[tuple[str, Callable[[], torch.nn.Module], dict[str, Any], dict[str, Any], type]] = [
    ("amount-too-big", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.bias": jp.L1Unstructured(11)}, {}, ValueError),
    ("random-count-too-big", cnn, {"0.weight": jp.L1Unstructured(0.5), "0.bias": jp.RandomUnstructured(9)}, {},
     ValueError),
    ("dim-out-of-range", cnn, {"4.weight": jp.L1Unstructured(0.5), "0.weight": jp.LnStructured(0.5, n=2, dim=4)}, {},
     IndexError),
    ("random-dim-out-of-range", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.weight": jp.RandomStructured(0.5, dim=-3)},
     {}, IndexError),
    ("structured-1d", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.bias": jp.LnStructured(0.5, n=2, dim=0)}, {},
     ValueError),
    ("pattern-matches-nothing", cnn, {"0.weight": jp.L1Unstructured(0.5), "9.weight": jp.L1Unstructured(0.5)}, {},
     ValueError),
    ("spec-a-string", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.weight": "l1"}, {}, TypeError),
    ("spec-a-class", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.weight": jp.L1Unstructured}, {}, TypeError),
    ("spec-a-torch-method", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.weight": prune.L1Unstructured(0.3)}, {},
     TypeError),
    ("non-floating-parameter", WithCounter, {"fc.weight": jp.L1Unstructured(0.5), "steps": jp.L1Unstructured(1)}, {},
     TypeError),
    ("importance-scores-shape", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.weight": jp.L1Unstructured(0.5)},
     {"4.weight": torch.ones(128, 10)}, ValueError),
    ("importance-scores-unpruned", cnn, {"0.weight": jp.L1Unstructured(0.5)}, {"4.weight": torch.ones(10, 128)},
     ValueError),
    ("random-without-key", cnn, {"0.weight": jp.L1Unstructured(0.5), "4.weight": jp.RandomUnstructured(0.5)}, {},
     TypeError),
]


@pytest.mark.parametrize("already_pruned", [False, True], ids=["fresh", "already-pruned"])
@pytest.mark.parametrize("case", FAILURES, ids=[c[0] for c in FAILURES])
def test_a_failing_rule_leaves_the_module_exactly_as_it_was(case, already_pruned):
    _, make, rules, scores, error = case
    net = make()
    if already_pruned:
        first = {"fc.weight": jp.L1Unstructured(0.25)} if make is WithCounter else {
            "0.weight": jp.L1Unstructured(0.25), "0.bias": jp.L1Unstructured(7), "4.bias": jp.RandomUnstructured(0.5)}
        interop.prune_module(jax.random.key(0), net, first)
        if make is cnn:
            prune.l1_unstructured(net[4], "weight", 0.1)  # a torch-installed hook too
    before = snapshot(net)
    key = None if "without-key" in case[0] else jax.random.key(1)
    with pytest.raises(error):
        interop.prune_module(key, net, rules, importance_scores=scores or None)
    assert_same_snapshot(before, snapshot(net))


def test_already_pruned_module_stays_whole_where_torch_leaves_it_half_pruned():
    ours, theirs = twins(cnn)
    for net in (ours, theirs):
        prune.l1_unstructured(net[4], "bias", 5)
        prune.l1_unstructured(net[4], "bias", 1)
    before = snapshot(ours)
    with pytest.raises(ValueError):
        prune.l1_unstructured(theirs[4], "bias", 5)  # 4 remain: torch fails mid-way
    assert not prune.is_pruned(theirs) and hasattr(theirs[4], "bias_orig")  # torch: hook gone, tensors left
    with pytest.raises(ValueError):
        interop.prune_module(None, ours, {"4.weight": jp.L1Unstructured(0.5), "4.bias": jp.L1Unstructured(5)})
    assert_same_snapshot(before, snapshot(ours))
    assert prune.is_pruned(ours)


def test_error_messages_name_the_rule_and_the_value():
    net = cnn()
    with pytest.raises(ValueError, match=r"'9\.weight'.*0\.weight"):
        interop.prune_module(None, net, {"9.weight": jp.L1Unstructured(0.5)})
    with pytest.raises(TypeError, match=r"'4\.weight'.*'l1'"):
        interop.prune_module(None, net, {"4.weight": "l1"})
    with pytest.raises(TypeError, match=r"steps.*int64"):
        interop.prune_module(None, WithCounter(), {"steps": jp.L1Unstructured(1)})
    with pytest.raises(ValueError, match=r"\(128, 10\).*\(10, 128\)"):
        interop.prune_module(None, net, {"4.weight": jp.L1Unstructured(0.5)},
                             importance_scores={"4.weight": torch.ones(128, 10)})
    with pytest.raises(ValueError, match="11"):
        interop.prune_module(None, net, {"4.bias": jp.L1Unstructured(11)})
    with pytest.raises(TypeError, match="rules must be"):
        interop.prune_module(None, net, [("4.weight", jp.L1Unstructured(0.5))])
    assert not prune.is_pruned(net)


# --------------------------------------------------------------------------
# compute_module_masks, read_pruned, pruned_state_dict
# --------------------------------------------------------------------------


def test_compute_module_masks_leaves_the_module_alone_and_equals_prune_module():
    rules = {"0.weight": jp.RandomStructured(0.25, dim=1), "4.weight": jp.L1Unstructured(0.3),
             "1.*": jp.GlobalUnstructured(5)}
    key = jax.random.key(2)
    for rounds in range(2):
        net = cnn()
        for _ in range(rounds):
            interop.prune_module(jax.random.key(9), net, {"4.weight": jp.RandomUnstructured(0.2)})
        before = snapshot(net)
        masks = interop.compute_module_masks(key, net, rules)
        assert_same_snapshot(before, snapshot(net))
        assert all(m.dtype == np.bool_ for m in masks.values())
        interop.prune_module(key, net, rules)
        for name, mask in masks.items():
            np.testing.assert_array_equal(np.asarray(mask), masks_of(net)[name] != 0)


def test_masks_are_snapshots():
    net = cnn()
    masks = interop.compute_module_masks(None, net, {"4.weight": jp.L1Unstructured(0.5)})
    copy_ = np.asarray(masks["4.weight"]).copy()
    with torch.no_grad():
        net[4].weight.mul_(-1).add_(torch.randn(10, 128))
    np.testing.assert_array_equal(np.asarray(masks["4.weight"]), copy_)


@pytest.mark.parametrize("source", ["module", "state_dict"], ids=["module", "state_dict"])
def test_read_pruned_gives_dense_weights_and_bool_masks(source):
    net = cnn()
    prune.l1_unstructured(net[4], "weight", 0.5)  # torch's own pruning
    interop.prune_module(None, net, {"0.weight": jp.LnStructured(0.25, n=2, dim=0)})
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
    weights, masks = interop.read_pruned(net if source == "module" else net.state_dict())
    assert sorted(masks) == ["0.weight", "4.weight"]
    assert sorted(weights) == sorted(cnn().state_dict())  # logical names, no *_orig / *_mask
    for name in masks:
        module, attr = net.get_submodule(name.split(".")[0]), name.split(".")[1]
        assert masks[name].dtype == np.bool_
        np.testing.assert_array_equal(np.asarray(masks[name]), getattr(module, attr + "_mask").numpy() == 1)
        np.testing.assert_array_equal(np.asarray(weights[name]), getattr(module, attr + "_orig").detach().numpy())
    np.testing.assert_array_equal(np.asarray(weights["1.running_mean"]), net[1].running_mean.numpy())
    np.testing.assert_array_equal(np.asarray(weights["4.bias"]), net[4].bias.detach().numpy())


def test_read_pruned_of_an_unpruned_module_has_no_masks():
    weights, masks = interop.read_pruned(cnn())
    assert masks == {} and sorted(weights) == sorted(cnn().state_dict())


def test_pruned_state_dict_round_trip_through_prune_identity():
    source = cnn()
    interop.prune_module(jax.random.key(0), source, {"0.weight": jp.RandomStructured(0.25, dim=0),
                                                     "4.weight": jp.L1Unstructured(0.5),
                                                     "0.bias": jp.L1Unstructured(2)})
    with torch.no_grad():
        source[1].running_var.uniform_(0.5, 2.0)
    weights, masks = interop.read_pruned(source)
    state = interop.pruned_state_dict(weights, masks)
    assert sorted(state) == sorted(source.state_dict())
    target = cnn(seed=7)
    for name in masks:
        layer_name, attr = name.split(".")
        prune.identity(target.get_submodule(layer_name), attr)
    target.load_state_dict(state)
    assert prune.is_pruned(target)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v.to(target.state_dict()[k].dtype)), k
    source.eval(), target.eval()
    x = cnn_input()
    with torch.no_grad():
        assert torch.equal(source(x), target(x))
    # and back again
    weights2, masks2 = interop.read_pruned(target)
    for name in masks:
        np.testing.assert_array_equal(np.asarray(masks2[name]), np.asarray(masks[name]))
        np.testing.assert_array_equal(np.asarray(weights2[name]), np.asarray(weights[name]))


def test_pruned_state_dict_from_jax_arrays():
    import jax.numpy as jnp

    state = interop.pruned_state_dict({"weight": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(2)},
                                      {"weight": jnp.array([[True, False, True], [False, True, True]])})
    assert sorted(state) == ["bias", "weight_mask", "weight_orig"]
    assert state["weight_mask"].dtype == torch.float32
    lin = torch.nn.Linear(3, 2)
    prune.identity(lin, "weight")
    lin.load_state_dict(state)
    assert torch.equal(lin(torch.ones(1, 3)), torch.tensor([[2.0 + 1.0, 9.0 + 1.0]]))


def test_pruned_state_dict_bad_inputs():
    import jax.numpy as jnp

    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        interop.pruned_state_dict({"weight": jnp.ones((2, 3))}, {"weight": jnp.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="fc.weight"):
        interop.pruned_state_dict({"weight": jnp.ones((2, 3))}, {"fc.weight": jnp.ones((2, 3), bool)})


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------


def test_float64_module_l1_equals_torch_with_x64():
    """With JAX_ENABLE_X64 a float64 module is ranked at full precision and
    gives torch's mask. (Without x64, JAX narrows float64 to float32, so values
    equal in float32 become ties; README documents it.)"""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import copy, torch, torch.nn.utils.prune as prune, jaxprune as jp
        from jaxprune import interop
        ours = torch.nn.Linear(4, 1).double()
        with torch.no_grad():
            ours.weight.copy_(torch.tensor([[1.0 + 1e-12, 1.0, 3.0, -2.0]], dtype=torch.float64))
        theirs = copy.deepcopy(ours)
        interop.prune_module(None, ours, {"weight": jp.L1Unstructured(1)})
        prune.l1_unstructured(theirs, "weight", 1)
        assert ours.weight_mask.dtype == theirs.weight_mask.dtype == torch.float64
        assert torch.equal(ours.weight_mask, theirs.weight_mask), (ours.weight_mask, theirs.weight_mask)
        print("ok")
        """
    )
    import os

    env = dict(os.environ, JAX_ENABLE_X64="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_two_global_patterns_are_two_groups_unless_named_alike():
    weights = {"0.weight": None, "4.weight": None}
    separate, joined = cnn(), cnn()
    interop.prune_module(None, separate, {"0.weight": jp.GlobalUnstructured(0.5), "4.weight": jp.GlobalUnstructured(0.5)})
    interop.prune_module(None, joined, {"0.weight": jp.GlobalUnstructured(0.5, group="g"),
                                        "4.weight": jp.GlobalUnstructured(0.5, group="g")})
    for name in weights:
        layer = separate[int(name[0])]
        assert int((layer.weight_mask == 0).sum()) == round(0.5 * layer.weight_mask.numel())
    total = sum(int((joined[i].weight_mask == 0).sum()) for i in (0, 4))
    assert total == round(0.5 * (joined[0].weight_mask.numel() + joined[4].weight_mask.numel()))
    assert int((joined[0].weight_mask == 0).sum()) != round(0.5 * joined[0].weight_mask.numel())


@pytest.mark.parametrize("already_pruned", [False, True], ids=["fresh", "pruned-before"])
def test_a_failure_while_installing_rolls_back_what_was_installed(monkeypatch, already_pruned):
    """If torch fails half-way through installing the masks, the tensors already
    reparametrized are restored: hooks, _orig/_mask, the Parameter objects."""
    net = cnn()
    if already_pruned:
        prune.l1_unstructured(net[0], "weight", 5)
        prune.l1_unstructured(net[4], "weight", 7)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params_before = {name: p for name, p in net.named_parameters()}
    hooks_before = [dict(m._forward_pre_hooks) for m in net]
    real = interop_modules.install_mask
    calls = []

    def failing(module, name, mask):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("torch failed here")
        return real(module, name, mask)

    monkeypatch.setattr(interop_modules, "install_mask", failing)
    with pytest.raises(RuntimeError, match="torch failed here"):
        interop.prune_module(None, net, {"0.weight": jp.L1Unstructured(0.3), "4.weight": jp.L1Unstructured(0.3)})
    assert len(calls) == 2
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {name: p for name, p in net.named_parameters()} == params_before
    assert [dict(m._forward_pre_hooks) for m in net] == hooks_before
    assert prune.is_pruned(net) == already_pruned


# --------------------------------------------------------------------------
# torch's own install step failing: every step, every kind of failure
# --------------------------------------------------------------------------

# The calls installing one mask makes in turn, as (owner, attribute, which module
# states reach them): "fresh" = never pruned (jaxprune's own install),
# "single" = one torch pruning method on the tensor, "container" = a
# PruningContainer already (both through torch's custom_from_mask).
INSTALL_STEPS: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("PruningContainer.__init__", prune.PruningContainer, "__init__", ("single",)),
    ("add_pruning_method", prune.PruningContainer, "add_pruning_method", ("single", "container")),
    ("CustomFromMask.__init__", prune.CustomFromMask, "__init__", ("fresh", "single", "container")),
    ("register_parameter", torch.nn.Module, "register_parameter", ("fresh",)),
    ("compute_mask", prune.CustomFromMask, "compute_mask", ("single", "container")),
    ("register_buffer", torch.nn.Module, "register_buffer", ("fresh", "single", "container")),
    ("apply_mask", prune.BasePruningMethod, "apply_mask", ("fresh", "single", "container")),
    ("setattr-weight", torch.nn.Module, "__setattr__", ("fresh", "single", "container")),
    ("register_forward_pre_hook", torch.nn.Module, "register_forward_pre_hook", ("fresh", "single", "container")),
]
INSTALL_CASES = [(step, state) for step in INSTALL_STEPS for state in step[3]]
FAILURE_KINDS: list[Callable[[], BaseException]] = [
    lambda: RuntimeError("injected"), lambda: MemoryError("injected"), lambda: KeyboardInterrupt("injected")]


def deep_snapshot(module: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """``snapshot`` plus the forward output and what the hooks hold: the
    PruningContainer's methods, the hook dicts' keys, the non-persistent buffers."""
    out = snapshot(module)
    with torch.no_grad():
        out["forward"] = module(x).clone()
    out["hook_state"] = {
        name: ([(k, id(h), tuple(map(id, h._pruning_methods)) if isinstance(h, prune.PruningContainer) else None)
                for k, h in sub._forward_pre_hooks.items()],
               sorted(sub._forward_pre_hooks_with_kwargs), sorted(sub._non_persistent_buffers_set),
               sorted(k for k in vars(sub) if not k.startswith("_")))
        for name, sub in module.named_modules()}
    return out


def assert_same_deep_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert_same_snapshot(before, after)
    assert before["hook_state"] == after["hook_state"]
    assert torch.equal(before["forward"], after["forward"])


@pytest.mark.parametrize("fail_at", ["first", "second"])
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("make_error", FAILURE_KINDS, ids=["Exception", "MemoryError", "KeyboardInterrupt"])
@pytest.mark.parametrize("step,state", INSTALL_CASES, ids=[f"{s[0]}-{state}" for s, state in INSTALL_CASES])
def test_torch_failing_at_any_install_step_leaves_the_module_exactly_as_it_was(
        monkeypatch, step, state, make_error, when, fail_at):
    """A failure inside torch's custom_from_mask (an exception, MemoryError,
    Ctrl-C), before or after each call it makes, on the first tensor installed
    or the second: the module equals its snapshot (the failing submodule
    included) and the very same exception comes out."""
    net = cnn().eval()
    for sub in (net[0], net[4]):
        if state in ("single", "container"):
            prune.l1_unstructured(sub, "weight", 3)
        if state == "container":
            prune.random_unstructured(sub, "weight", 2)
    x = cnn_input()
    before = deep_snapshot(net, x)
    name, owner, attr, _ = step
    error = make_error()
    real = getattr(owner, attr)
    armed = {"install": 0, "inside": False, "fired": False}

    def injected(*args, **kwargs):
        target = armed["inside"] and armed["install"] == (1 if fail_at == "first" else 2) and not armed["fired"]
        if target and attr == "__setattr__":
            target = args[1] == "weight"
        if target and when == "before":
            armed["fired"] = True
            raise error
        result = real(*args, **kwargs)
        if target:
            armed["fired"] = True
            raise error
        return result

    real_install = interop_modules.install_mask

    def install(module, name, mask):
        armed["install"] += 1
        armed["inside"] = True
        try:
            return real_install(module, name, mask)
        finally:
            armed["inside"] = False

    monkeypatch.setattr(owner, attr, injected)
    monkeypatch.setattr(interop_modules, "install_mask", install)
    with pytest.raises(type(error)) as caught:
        interop.prune_module(None, net, {"0.weight": jp.L1Unstructured(0.3), "4.weight": jp.L1Unstructured(0.3)})
    monkeypatch.undo()
    assert armed["fired"], f"{name} was never called"
    assert caught.value is error
    assert_same_deep_snapshot(before, deep_snapshot(net, x))
    assert prune.is_pruned(net) == (state != "fresh")


# --------------------------------------------------------------------------
# jaxprune's own install of a first mask leaves torch's state
# --------------------------------------------------------------------------


def _state_of(net: torch.nn.Module) -> list[Any]:
    """Everything a pruned module exposes, in order, with tensors as lists."""
    out: list[Any] = []
    for name, sub in net.named_modules():
        out.append((name, list(sub._parameters), list(sub._buffers), sorted(sub._non_persistent_buffers_set),
                    [(type(h).__name__, getattr(h, "_tensor_name", None)) for h in sub._forward_pre_hooks.values()],
                    sorted(k for k in vars(sub) if not k.startswith("_"))))
        for key in ("weight", "weight_orig", "weight_mask"):
            value = getattr(sub, key, None)
            if isinstance(value, torch.Tensor):
                out.append((name, key, type(value).__name__, type(value.grad_fn).__name__, value.dtype,
                            value.requires_grad,
                            value.is_contiguous(memory_format=torch.channels_last) if value.dim() == 4 else None,
                            value.detach().tolist()))
    out.append([(k, v.dtype, v.tolist()) for k, v in net.state_dict().items()])
    return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_first_install_leaves_the_state_torchs_custom_from_mask_leaves(channels_last):
    """Parameters, buffers (order, dtype, memory format), hooks, plain
    attributes, state_dict, forward and backward, prune.remove, deepcopy: the
    same as torch's custom_from_mask with the same mask."""
    ours, theirs = small_cnn(), small_cnn()
    if channels_last:
        ours, theirs = ours.to(memory_format=torch.channels_last), theirs.to(memory_format=torch.channels_last)
    masks = interop.compute_module_masks(None, ours, {"0.weight": jp.L1Unstructured(0.5),
                                                      "4.weight": jp.LnStructured(0.5, 2, 0)})
    interop.prune_module(None, ours, {"0.weight": jp.L1Unstructured(0.5), "4.weight": jp.LnStructured(0.5, 2, 0)})
    for name, mask in masks.items():
        prune.custom_from_mask(theirs.get_submodule(name.rsplit(".", 1)[0]), "weight",
                               torch.from_numpy(np.array(mask)))
    assert _state_of(ours) == _state_of(theirs)
    x = torch.randn(2, 3, 6, 6)
    for net in (ours, theirs):
        net(x).square().sum().backward()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a.grad, b.grad)
    with pytest.raises(RuntimeError, match="deepcopy"):  # torch's own behaviour right after pruning
        copy.deepcopy(theirs)
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(ours)
    for net in (ours, theirs):
        for sub in (net[0], net[4]):
            prune.remove(sub, "weight")
    assert _state_of(ours) == _state_of(theirs)


@pytest.mark.parametrize("fail_at", ["first", "second"])
@pytest.mark.parametrize("make_error", FAILURE_KINDS, ids=["Exception", "MemoryError", "KeyboardInterrupt"])
def test_a_failure_in_jaxprunes_own_install_leaves_the_module_exactly_as_it_was(monkeypatch, make_error, fail_at):
    """The direct install of a first mask (no torch registration calls) failing
    at its last step, the hook's handle, after every dict was written: the
    module equals its snapshot and the very same exception comes out."""
    net = cnn().eval()
    x = cnn_input()
    before = deep_snapshot(net, x)
    error = make_error()
    handle_init = torch.utils.hooks.RemovableHandle.__init__
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == (1 if fail_at == "first" else 2):
            raise error
        handle_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.hooks.RemovableHandle, "__init__", failing)
    with pytest.raises(type(error)) as caught:
        interop.prune_module(None, net, {"0.weight": jp.L1Unstructured(0.5), "4.weight": jp.LnStructured(0.5, 2, 0)})
    assert caught.value is error
    assert calls["n"] == (1 if fail_at == "first" else 2)
    monkeypatch.undo()
    assert_same_deep_snapshot(before, deep_snapshot(net, x))


class _TracedSetattr(torch.nn.Linear):
    """A Linear whose attribute writes are recorded (a subclass overriding __setattr__)."""

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.setdefault("seen", []).append(name)
        super().__setattr__(name, value)


def test_overridden_module_methods_and_global_registration_hooks_go_through_torchs_own_calls():
    """Where the direct install could differ from torch's calls (a subclass's
    __setattr__, a global parameter or buffer registration hook), torch's
    calls run: the hooks and the override see what they see under torch's
    own custom_from_mask."""
    def pruned(net: torch.nn.Module, ours: bool) -> torch.nn.Module:
        if ours:
            return interop.prune_module(None, net, {"weight": jp.L1Unstructured(0.5)})
        mask = interop.compute_module_masks(None, net, {"weight": jp.L1Unstructured(0.5)})["weight"]
        prune.custom_from_mask(net, "weight", torch.from_numpy(np.array(mask)))
        return net

    torch.manual_seed(0)
    made = [_TracedSetattr(4, 3) for _ in range(2)]
    made[1].load_state_dict(made[0].state_dict())
    for net in made:
        net.__dict__["seen"] = []
    ours, theirs = pruned(made[0], True), pruned(made[1], False)
    assert ours.seen == theirs.seen and "weight" in ours.seen
    assert _state_of(ours) == _state_of(theirs)

    registered: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    for ours_side in (True, False):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 3)

        def hook(module, name, value, side=ours_side):
            registered[side].append((type(module).__name__, name))
        handles = [torch.nn.modules.module.register_module_parameter_registration_hook(hook),
                   torch.nn.modules.module.register_module_buffer_registration_hook(hook)]
        try:
            pruned(net, ours_side)
        finally:
            for h in handles:
                h.remove()
    assert registered[True] == registered[False] == [("Linear", "weight_orig"), ("Linear", "weight_mask")]
