"""The torch <-> Flax layouts of the layers real architectures use: numerics against
the Flax layer each maps to, round trips, masks, flax_dim, flax_rules, and the
inputs the bridge refuses (a state_dict, layers Flax cannot express)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import flax.linen as nn  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import interop  # noqa: E402


def flat(tree: Any) -> dict[str, Any]:
    return {jp.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree) if v is not None}


def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in flat(tree).items()}


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_round_trip(make: Callable[[], torch.nn.Module]) -> None:
    """flax_to_torch(torch_to_flax(m)) into a differently initialized twin reproduces every state_dict tensor."""
    torch.manual_seed(0)
    source = make()
    torch.manual_seed(1)
    target = make()
    interop.flax_to_torch(interop.torch_to_flax(source), target)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def random_affine(layer: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.uniform_(0.5, 1.5) if name.endswith("weight") and param.ndim == 1 else param.uniform_(-0.5, 0.5)
    return layer.eval()


# --------------------------------------------------------------------------
# nn.MultiheadAttention <-> flax.linen.MultiHeadDotProductAttention
# --------------------------------------------------------------------------

# (name, constructor kwargs, query/key/value feature sizes)
ATTENTION = {
    "batch-first": ({"embed_dim": 12, "num_heads": 3, "batch_first": True}, (12, 12, 12)),
    "sequence-first": ({"embed_dim": 12, "num_heads": 2, "batch_first": False}, (12, 12, 12)),
    "no-bias": ({"embed_dim": 8, "num_heads": 2, "bias": False, "batch_first": True}, (8, 8, 8)),
    "kdim-vdim": ({"embed_dim": 8, "num_heads": 2, "kdim": 5, "vdim": 6, "batch_first": True}, (8, 5, 6)),
}


def attention(kwargs: dict) -> torch.nn.Module:
    layer = torch.nn.MultiheadAttention(**kwargs)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if "bias" in name:
                param.uniform_(-0.5, 0.5)  # torch initializes them to zeros, which would hide a bias mix-up
    return layer.eval()


@pytest.mark.parametrize("case", list(ATTENTION), ids=list(ATTENTION))
def test_multihead_attention_converts_to_flax_attention_with_equal_outputs(case):
    kwargs, (eq, ek, ev) = ATTENTION[case]
    torch.manual_seed(0)
    layer = attention(kwargs)
    e, heads = kwargs["embed_dim"], kwargs["num_heads"]
    variables = interop.torch_to_flax(layer)
    bias = {} if kwargs.get("bias", True) is False else {
        f"params.{p}.bias": (heads, e // heads) for p in ("query", "key", "value")} | {"params.out.bias": (e,)}
    assert shapes(variables) == {"params.query.kernel": (eq, heads, e // heads),
                                 "params.key.kernel": (ek, heads, e // heads),
                                 "params.value.kernel": (ev, heads, e // heads),
                                 "params.out.kernel": (heads, e // heads, e)} | bias
    q, k, v = randn(2, 5, eq, seed=1), randn(2, 7, ek, seed=2), randn(2, 7, ev, seed=3)  # (batch, length, features)
    first = (lambda x: torch.from_numpy(x)) if kwargs["batch_first"] else (
        lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))))
    with torch.no_grad():
        expected = layer(first(q), first(k), first(v), need_weights=False)[0].numpy()
    if not kwargs["batch_first"]:
        expected = expected.transpose(1, 0, 2)
    flax_layer = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=e, out_features=e,
                                                 use_bias=kwargs.get("bias", True))
    out = flax_layer.apply(variables, jnp.asarray(q), inputs_k=jnp.asarray(k), inputs_v=jnp.asarray(v))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)
    assert_round_trip(lambda: attention(kwargs))


def test_multihead_attention_placements_split_in_proj_and_reshape_the_heads():
    layer = torch.nn.MultiheadAttention(8, 2)
    place = interop.placements(layer, {"": "attn"})
    assert [(p.path, p.rows) for p in place["in_proj_weight"]] == [
        (("attn", "query", "kernel"), (0, 8)), (("attn", "key", "kernel"), (8, 16)),
        (("attn", "value", "kernel"), (16, 24))]
    assert place["out_proj.weight"].path == ("attn", "out", "kernel")
    assert place["out_proj.weight"].flax_shape == (2, 4, 8)
    # Nested in a model: the out projection stays under its attention layer's Flax path.
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.MultiheadAttention(8, 2))
    assert sorted(flat(interop.torch_to_flax(net, names={"1": "blocks.attn"})["params"])) == [
        "0.bias", "0.kernel", "blocks.attn.key.bias", "blocks.attn.key.kernel", "blocks.attn.out.bias",
        "blocks.attn.out.kernel", "blocks.attn.query.bias", "blocks.attn.query.kernel", "blocks.attn.value.bias",
        "blocks.attn.value.kernel"]


def test_multihead_attention_flax_dim_where_a_dim_has_one_flax_axis_and_errors_elsewhere():
    layer = torch.nn.MultiheadAttention(8, 2)
    assert interop.flax_dim(layer, "out_proj.weight", 0) == 2  # output features: the kernel's last axis
    assert interop.flax_dim(layer, "out_proj.bias", 0) == 0
    with pytest.raises(ValueError, match=r"'out_proj.weight'.*torch dim 1 \(size 8\) is spread over several axes "
                                         r"of the Flax leaf out.kernel \(2, 4, 8\)"):
        interop.flax_dim(layer, "out_proj.weight", 1)
    with pytest.raises(ValueError, match=r"'in_proj_weight' is split over the Flax leaves query.kernel, key.kernel, "
                                         r"value.kernel"):
        interop.flax_dim(layer, "in_proj_weight", 1)


def test_multihead_attention_masks_travel_both_ways_and_l1_flax_rules_give_torch_masks():
    torch.manual_seed(0)
    net = torch.nn.Sequential(attention({"embed_dim": 8, "num_heads": 2}))
    rules = {"0.in_proj_weight": jp.L1Unstructured(0.3), "0.in_proj_bias": jp.L1Unstructured(5),
             "0.out_proj.weight": jp.LnStructured(0.25, n=2, dim=0), "0.out_proj.bias": jp.RandomUnstructured(3)}
    key = jax.random.key(0)
    params = interop.torch_to_flax(net)["params"]
    tree_masks = jp.prune_tree(key, params, interop.flax_rules(rules, net))
    interop.prune_module(key, net, rules)
    _, torch_masks = interop.read_pruned(net)
    flax_masks = interop.masks_to_flax(torch_masks, net)
    assert sorted(flat(tree_masks)) == sorted(flat(flax_masks))
    for path, mask in flat(flax_masks).items():
        np.testing.assert_array_equal(np.asarray(flat(tree_masks)[path]), np.asarray(mask), err_msg=path)
    assert int((~flat(flax_masks)["0.query.kernel"]).sum() + (~flat(flax_masks)["0.key.kernel"]).sum()
               + (~flat(flax_masks)["0.value.kernel"]).sum()) == round(0.3 * 3 * 64)
    back = interop.masks_to_torch(flax_masks, net)
    assert sorted(back) == sorted(torch_masks)
    for name, mask in torch_masks.items():
        np.testing.assert_array_equal(back[name].numpy(), np.asarray(mask), err_msg=name)
    # A leaf of the split tensor without a mask counts as unpruned.
    partial = {"0": {"query": {"kernel": flax_masks["0"]["query"]["kernel"]}}}
    expected = np.ones((24, 8), bool)
    expected[:8] = np.asarray(torch_masks["0.in_proj_weight"])[:8]
    np.testing.assert_array_equal(interop.masks_to_torch(partial, net)["0.in_proj_weight"].numpy(), expected)
    # The pruned module converts to the Flax attention computing the pruned outputs.
    x = randn(5, 2, 8)
    with torch.no_grad():
        expected_out = net[0](*(torch.from_numpy(x),) * 3, need_weights=False)[0].numpy().transpose(1, 0, 2)
    xf = jnp.asarray(x.transpose(1, 0, 2))
    out = nn.MultiHeadDotProductAttention(num_heads=2).apply({"params": interop.torch_to_flax(net)["params"]["0"]},
                                                             xf, xf, xf)
    np.testing.assert_allclose(np.asarray(out), expected_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", [jp.RandomUnstructured(0.3), jp.LnStructured(0.3, n=2, dim=0)],
                         ids=["random", "ln-structured"])
def test_flax_rules_refuse_a_non_l1_rule_on_the_split_in_proj_weight(spec):
    with pytest.raises(ValueError, match=r"'in_proj_weight' is split over the Flax leaves query\.kernel, "
                                         r"key\.kernel, value\.kernel; only L1 rules carry over"):
        interop.flax_rules({"in_proj_weight": spec}, torch.nn.MultiheadAttention(8, 2))


def test_multihead_attention_global_l1_flax_rules_give_torch_global_masks():
    torch.manual_seed(0)
    net = torch.nn.Sequential(attention({"embed_dim": 8, "num_heads": 2}), torch.nn.Linear(8, 4))
    twin = torch.nn.Sequential(attention({"embed_dim": 8, "num_heads": 2}), torch.nn.Linear(8, 4))
    twin.load_state_dict(net.state_dict())
    rules = {"*weight": jp.GlobalUnstructured(0.5)}
    tree_masks = jp.prune_tree(None, interop.torch_to_flax(net)["params"], interop.flax_rules(rules, net))
    torch.nn.utils.prune.global_unstructured([(twin[0], "in_proj_weight"), (twin[0].out_proj, "weight"),
                                              (twin[1], "weight")], torch.nn.utils.prune.L1Unstructured, amount=0.5)
    expected = interop.masks_to_torch(tree_masks, net)
    assert torch.equal(expected["0.in_proj_weight"], twin[0].in_proj_weight_mask.bool())
    assert torch.equal(expected["0.out_proj.weight"], twin[0].out_proj.weight_mask.bool())
    assert torch.equal(expected["1.weight"], twin[1].weight_mask.bool())


# --------------------------------------------------------------------------
# Convolutions: transposed, grouped, depthwise
# --------------------------------------------------------------------------


def _transpose_padding(kernel: tuple[int, ...], padding: int, output_padding: int) -> list[tuple[int, int]]:
    """Flax ConvTranspose's explicit padding for torch's padding / output_padding."""
    return [(k - 1 - padding, k - 1 - padding + output_padding) for k in kernel]


# (torch layer, input shape NC..., kernel, stride, padding, output_padding)
CONV_TRANSPOSE = {
    "1d": (lambda: torch.nn.ConvTranspose1d(3, 4, 3), (2, 3, 6), (3,), 1, 0, 0),
    "2d-stride-padding": (lambda: torch.nn.ConvTranspose2d(3, 5, (3, 2), stride=2, padding=1, output_padding=1),
                          (2, 3, 5, 6), (3, 2), 2, 1, 1),
    "2d-no-bias": (lambda: torch.nn.ConvTranspose2d(2, 3, 4, stride=3, bias=False), (1, 2, 4, 3), (4, 4), 3, 0, 0),
    "3d": (lambda: torch.nn.ConvTranspose3d(2, 3, (2, 3, 2), stride=2), (2, 2, 3, 4, 3), (2, 3, 2), 2, 0, 0),
}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE), ids=list(CONV_TRANSPOSE))
def test_conv_transpose_converts_to_flax_conv_transpose_with_equal_outputs(case):
    make, shape, kernel, stride, padding, output_padding = CONV_TRANSPOSE[case]
    torch.manual_seed(0)
    layer = make()
    variables = interop.torch_to_flax(layer)
    c_in, c_out = layer.in_channels, layer.out_channels
    assert shapes(variables)["params.kernel"] == kernel + (c_out, c_in)
    x = randn(*shape)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    flax_layer = nn.ConvTranspose(c_out, kernel, strides=(stride,) * len(kernel), transpose_kernel=True,
                                  padding=_transpose_padding(kernel, padding, output_padding),
                                  use_bias=layer.bias is not None)
    out = flax_layer.apply(variables, jnp.asarray(np.moveaxis(x, 1, -1)))
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), expected, atol=1e-5, rtol=1e-5)
    assert_round_trip(make)
    # torch's dim 0 (input channels) is the Flax kernel's last axis, dim 1 (output channels) the one before.
    ndim = len(kernel) + 2
    assert interop.flax_dim(layer, "weight", 0) == ndim - 1
    assert interop.flax_dim(layer, "weight", 1) == ndim - 2
    assert interop.flax_dim(layer, "weight", 2) == 0


def test_grouped_conv_transpose_is_refused_naming_the_layer():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ConvTranspose1d(4, 6, 3, groups=2))
    with pytest.raises(ValueError, match=r"layer '1' of type ConvTranspose1d: groups=2: Flax's ConvTranspose has no "
                                         r"feature groups"):
        interop.torch_to_flax(net)


# (torch conv, Flax conv, input shape)
GROUPED = {
    "depthwise": (lambda: torch.nn.Conv2d(6, 6, 3, padding=1, groups=6),
                  lambda: nn.Conv(6, (3, 3), padding=1, feature_group_count=6), (2, 6, 5, 5)),
    "depthwise-multiplier": (lambda: torch.nn.Conv2d(4, 8, 5, padding=2, stride=2, groups=4),
                             lambda: nn.Conv(8, (5, 5), padding=2, strides=2, feature_group_count=4), (2, 4, 7, 6)),
    "grouped-1d": (lambda: torch.nn.Conv1d(6, 9, 3, groups=3),
                   lambda: nn.Conv(9, (3,), padding="VALID", feature_group_count=3), (2, 6, 8)),
}


@pytest.mark.parametrize("case", list(GROUPED), ids=list(GROUPED))
def test_depthwise_and_grouped_convs_compute_as_flax_feature_groups(case):
    make, make_flax, shape = GROUPED[case]
    torch.manual_seed(0)
    layer = make()
    variables = interop.torch_to_flax(layer)
    assert shapes(variables)["params.kernel"] == tuple(layer.kernel_size) + (
        layer.in_channels // layer.groups, layer.out_channels)
    x = randn(*shape)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    out = make_flax().apply(variables, jnp.asarray(np.moveaxis(x, 1, -1)))
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), expected, atol=1e-5, rtol=1e-5)
    assert_round_trip(make)


# --------------------------------------------------------------------------
# Norms, and transformers' own layers
# --------------------------------------------------------------------------


def test_group_norm_converts_to_flax_group_norm():
    torch.manual_seed(0)
    layer = random_affine(torch.nn.GroupNorm(3, 6, eps=1e-5))
    variables = interop.torch_to_flax(layer)
    assert shapes(variables) == {"params.scale": (6,), "params.bias": (6,)}
    x = randn(2, 6, 4, 3)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    out = nn.GroupNorm(num_groups=3, epsilon=1e-5).apply(variables, jnp.asarray(np.moveaxis(x, 1, -1)))
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), expected, atol=1e-5, rtol=1e-5)
    assert_round_trip(lambda: random_affine(torch.nn.GroupNorm(3, 6)))


def test_rms_norm_converts_to_flax_rms_norm():
    torch.manual_seed(0)
    layer = random_affine(torch.nn.RMSNorm(6, eps=1e-6))
    variables = interop.torch_to_flax(layer)
    assert shapes(variables) == {"params.scale": (6,)}
    x = randn(3, 4, 6)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    out = nn.RMSNorm(epsilon=1e-6).apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)
    assert_round_trip(lambda: random_affine(torch.nn.RMSNorm(6)))


def test_transformers_conv1d_is_a_flax_dense_kernel_as_it_is():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    layer = pytorch_utils.Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs: weight (3, 5)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    variables = interop.torch_to_flax(layer)
    np.testing.assert_array_equal(np.asarray(variables["params"]["kernel"]), layer.weight.detach().numpy())
    x = randn(2, 4, 3)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(nn.Dense(5).apply(variables, jnp.asarray(x))), expected, atol=1e-5)
    assert interop.flax_dim(layer, "weight", 0) == 0  # no transpose: torch's dims are Flax's
    assert_round_trip(lambda: pytorch_utils.Conv1D(5, 3))


def test_llama_rms_norm_converts_to_flax_rms_norm():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    layer = random_affine(llama.LlamaRMSNorm(6, eps=1e-6))
    variables = interop.torch_to_flax(layer)
    assert shapes(variables) == {"params.scale": (6,)}
    x = randn(2, 3, 6)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(nn.RMSNorm(epsilon=1e-6).apply(variables, jnp.asarray(x))), expected,
                               atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# Buffers that are not weights
# --------------------------------------------------------------------------


class WithIndexBuffers(torch.nn.Module):
    """BERT's embeddings in small: a module with no parameters of its own, only index
    buffers (one persistent, one not), and a Linear carrying an extra buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.word = torch.nn.Embedding(10, 4)
        self.register_buffer("position_ids", torch.arange(8).expand(1, -1), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, 8, dtype=torch.long))
        self.fc = torch.nn.Linear(4, 2)
        self.fc.register_buffer("scale_hint", torch.ones(2))


def test_buffers_without_a_layout_are_skipped_not_refused():
    torch.manual_seed(0)
    net = WithIndexBuffers()
    variables = interop.torch_to_flax(net)
    assert shapes(variables) == {"params.word.embedding": (10, 4), "params.fc.kernel": (4, 2),
                                 "params.fc.bias": (2,)}
    assert sorted(interop.placements(net)) == ["fc.bias", "fc.weight", "word.weight"]
    twin = WithIndexBuffers()
    with torch.no_grad():
        twin.token_type_ids.fill_(3)
    interop.flax_to_torch(variables, twin)
    assert torch.equal(twin.word.weight, net.word.weight) and torch.equal(twin.fc.weight, net.fc.weight)
    assert twin.token_type_ids.unique().tolist() == [3]  # left as it was


def test_bert_converts_and_round_trips_with_its_index_buffers():
    """Reproduces the issue's report: torch_to_flax(bert) raised on BertEmbeddings' buffers."""
    pytest.importorskip("transformers")
    from _torch_models import bert_tiny

    bert = bert_tiny()
    assert {"embeddings.position_ids", "embeddings.token_type_ids"} <= {n for n, _ in bert.named_buffers()}
    variables = interop.torch_to_flax(bert)
    assert sum(int(np.prod(s)) for s in shapes(variables["params"]).values()) == sum(
        p.numel() for p in bert.parameters())
    twin = bert_tiny(seed=1)
    interop.flax_to_torch(variables, twin)
    for name, tensor in bert.state_dict().items():
        assert torch.equal(twin.state_dict()[name], tensor), name


# --------------------------------------------------------------------------
# A state_dict where a module is expected
# --------------------------------------------------------------------------

MODULE_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "prune_module": lambda m: interop.prune_module(None, m, {"*": jp.L1Unstructured(0.5)}),
    "compute_module_masks": lambda m: interop.compute_module_masks(None, m, {"*": jp.L1Unstructured(0.5)}),
    "prunable_parameters": interop.prunable_parameters,
    "torch_to_flax": interop.torch_to_flax,
    "flax_to_torch": lambda m: interop.flax_to_torch({"params": {}}, m),
    "placements": interop.placements,
    "masks_to_flax": lambda m: interop.masks_to_flax({}, m),
    "masks_to_torch": lambda m: interop.masks_to_torch({}, m),
    "flax_dim": lambda m: interop.flax_dim(m, "weight", 0),
    "flax_rules": lambda m: interop.flax_rules({"*": jp.L1Unstructured(0.5)}, m),
}


@pytest.mark.parametrize("function", list(MODULE_FUNCTIONS), ids=list(MODULE_FUNCTIONS))
def test_a_state_dict_instead_of_a_module_is_a_clear_type_error(function):
    state_dict = torch.nn.Linear(3, 2).state_dict()
    with pytest.raises(TypeError, match=rf"^{function}: expected a torch\.nn\.Module, got a OrderedDict \(a "
                                        r"state_dict\?\): build the module and load the state_dict into it"):
        MODULE_FUNCTIONS[function](state_dict)
    with pytest.raises(TypeError, match=rf"^{function}: expected a torch\.nn\.Module, got str$"):
        MODULE_FUNCTIONS[function]("model.pt")


def test_plan_module_refuses_a_state_dict_too():
    from jaxprune.interop._modules import plan_module

    with pytest.raises(TypeError, match=r"^plan_module: expected a torch\.nn\.Module, got a dict"):
        plan_module({"weight": torch.ones(2)}, {"*": jp.L1Unstructured(0.5)})


def test_a_pruned_out_proj_goes_stale_in_torch_and_torch_to_flax_converts_the_current_product():
    """As the README says: MultiheadAttention never calls out_proj, so its pruning hook never reruns."""
    torch.manual_seed(0)
    layer = attention({"embed_dim": 8, "num_heads": 2})
    interop.prune_module(None, layer, {"out_proj.weight": jp.L1Unstructured(0.5)})
    x = torch.from_numpy(randn(3, 1, 8))
    with torch.no_grad():
        before = layer(x, x, x, need_weights=False)[0]
        layer.out_proj.weight_orig.mul_(2)  # as an optimizer step or load_state_dict would
        assert torch.equal(layer(x, x, x, need_weights=False)[0], before)  # stale
    kernel = interop.torch_to_flax(layer)["params"]["out"]["kernel"]
    current = (layer.out_proj.weight_orig * layer.out_proj.weight_mask).detach().numpy()
    np.testing.assert_array_equal(np.asarray(kernel).reshape(8, 8), current.T)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_conversion_keeps_the_dtype_and_the_values_both_ways(dtype):
    """The layouts move on the host (NumPy, ml_dtypes for bfloat16): every dtype comes back bit for bit."""
    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MultiheadAttention(4, 2)).to(  # noqa: E731
        getattr(torch, dtype))
    source = make()
    variables = interop.torch_to_flax(source)
    assert {leaf.dtype.name for leaf in jax.tree.leaves(variables)} == {dtype}
    kernel = np.asarray(variables["params"]["0"]["kernel"]).astype(np.float32)
    np.testing.assert_array_equal(kernel, source[0].weight.detach().float().permute(2, 3, 1, 0).numpy())
    assert_round_trip(make)
    # A snapshot: changing the module afterwards leaves the converted leaves as they were.
    with torch.no_grad():
        source[0].weight.zero_()
    assert (np.asarray(variables["params"]["0"]["kernel"]).astype(np.float32) == kernel).all()
