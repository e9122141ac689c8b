"""The torch bridge and the CLI on real architectures (tests/_torch_models.py):
resnet18, mobilenet_v3_small, a ViT, convnext_atto, and GPT-2 / BERT / Llama configs.

``prune_module`` gives torch's own masks for L1, Ln (n=2, dim=0) and global L1,
torch's counts for the random methods; the pruned model runs, ``prune.remove``
works, ``torch_to_flax`` round trips, and ``jaxprune prune`` on the model's
safetensors checkpoint writes what loads back into the model.

The vision models compile a kernel per distinct tensor shape (tens of seconds
each on one core): they are marked slow; the tiny transformers run in the
quick subset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
import jax  # noqa: E402
from _torch_models import ALL_MODELS, PARAMETER_COUNTS, ConvNeXtBlock, VisionTransformer, example_input  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import jaxprune as jp  # noqa: E402
from jaxprune import interop  # noqa: E402

QUICK = ("gpt2_tiny", "bert_tiny", "llama_tiny")  # few shapes, compiled in seconds
COUNTS = {**PARAMETER_COUNTS, "gpt2_tiny": 232_192, "bert_tiny": 139_456, "llama_tiny": 202_048}


def models(quick: tuple[str, ...] = QUICK) -> list[Any]:
    return [pytest.param(name, marks=() if name in quick else pytest.mark.slow, id=name) for name in ALL_MODELS]


def forward(model: torch.nn.Module, name: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(example_input(name))
    return out if isinstance(out, torch.Tensor) else out[0]  # transformers: logits / last hidden state


def weights(model: torch.nn.Module, *, min_ndim: int = 1) -> dict[str, tuple[torch.nn.Module, str]]:
    """The ``*weight`` parameters (every norm, conv, Linear, embedding and attention weight), by dotted name."""
    return {name: owner for name, owner in interop.prunable_parameters(model).items()
            if name.endswith("weight") and getattr(*owner).ndim >= min_ndim}


def installed_masks(model: torch.nn.Module, names: Any) -> dict[str, np.ndarray]:
    params = dict(model.named_buffers())
    return {name: params[name + "_mask"].numpy().astype(bool) for name in names}


def assert_masks_equal(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray],
                       scores: dict[str, np.ndarray] | None = None) -> None:
    """Equal masks; with ``scores`` (what was ranked), entries may differ only inside one tie of
    magnitudes, with the same number pruned: torch breaks ties its own way (topk's order), jaxprune
    by index. Such ties are real: resnet18's layer3.0.conv2.weight has two equal |w| at the L1 threshold."""
    assert sorted(ours) == sorted(theirs)
    tied = []
    for name in theirs:
        differ = ours[name] != theirs[name]
        if scores is None or not differ.any():
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        else:
            tied.append(np.abs(scores[name][differ]))
    if tied:
        values = np.concatenate(tied)
        assert (values == values[0]).all(), f"the masks differ beyond a tie of magnitudes: {np.unique(values)}"
        assert sum(int((~m).sum()) for m in ours.values()) == sum(int((~m).sum()) for m in theirs.values())


def check_prunes_like_torch(name: str, rules: dict[str, Any], torch_prune: Any, *,
                            unstructured: bool = True) -> torch.nn.Module:
    """prune_module(rules) installs the masks that ``torch_prune(twin)`` installs on a twin; returns ours."""
    ours, twin = ALL_MODELS[name](), ALL_MODELS[name]()
    scores = {n: p.detach().numpy() for n, p in ours.named_parameters()}
    interop.prune_module(jax.random.key(0), ours, rules)
    torch_prune(twin)
    ours_masks, torch_masks = installed_masks(ours, rules), installed_masks(twin, rules)
    assert_masks_equal(ours_masks, torch_masks, scores if unstructured else None)
    for n in rules:  # the same count in every tensor, ties or not
        assert int((~ours_masks[n]).sum()) == int((~torch_masks[n]).sum()), n
    if all(np.array_equal(ours_masks[n], torch_masks[n]) for n in rules):
        torch.testing.assert_close(forward(ours, name), forward(twin, name), rtol=0, atol=0)
    return ours


def check_forward_and_remove(model: torch.nn.Module, name: str) -> None:
    """The pruned model runs; prune.remove makes its weights plain again with the same outputs and keys."""
    out = forward(model, name)
    assert torch.isfinite(out).all()
    pruned = [(sub, attr) for sub, attr in interop.prunable_parameters(model).values() if prune.is_pruned(sub)
              and hasattr(sub, attr + "_mask")]
    keys = set(ALL_MODELS[name]().state_dict())
    for sub, attr in pruned:
        prune.remove(sub, attr)
    assert not any(prune.is_pruned(m) for m in model.modules())
    assert set(model.state_dict()) == keys
    # Not bit for bit: without the pruning hooks MultiheadAttention takes torch's fused fast path.
    torch.testing.assert_close(forward(model, name), out, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# The models are the architectures they claim to be
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_parameter_counts_and_layer_types_are_the_real_architectures(name):
    model = ALL_MODELS[name]()
    assert sum(p.numel() for p in model.parameters()) == COUNTS[name]
    types = {type(m).__name__ for m in model.modules()}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    expected = {"resnet18": {"Conv2d", "BatchNorm2d", "Linear", "MaxPool2d"},
                "mobilenet_v3_small": {"Conv2d", "BatchNorm2d", "Hardswish", "Hardsigmoid", "SqueezeExcitation"},
                "vit_tiny": {"MultiheadAttention", "NonDynamicallyQuantizableLinear", "LayerNorm", "Conv2d"},
                "convnext_atto": {"Conv2d", "LayerNorm", "LayerNorm2d", "Linear", "ConvNeXtBlock"},
                "gpt2_tiny": {"Conv1D", "LayerNorm", "Embedding"},
                "bert_tiny": {"BertEmbeddings", "Linear", "LayerNorm", "Embedding"},
                "llama_tiny": {"LlamaRMSNorm", "Linear", "Embedding"}}[name]
    assert expected <= types
    depthwise = [m for m in convs if m.groups > 1 and m.groups == m.in_channels]
    assert len(depthwise) == {"mobilenet_v3_small": 11, "convnext_atto": 12}.get(name, 0)
    assert tuple(forward(model, name).shape) == {"bert_tiny": (2, 16, 64), "gpt2_tiny": (2, 16, 1000),
                                                 "llama_tiny": (2, 16, 1000)}.get(name, (2, 1000))


def test_the_same_seed_builds_the_same_model_and_another_seed_another():
    a, b, c = ALL_MODELS["llama_tiny"](), ALL_MODELS["llama_tiny"](), ALL_MODELS["llama_tiny"](seed=1)
    for key, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[key]), key
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


# --------------------------------------------------------------------------
# prune_module against torch.nn.utils.prune
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", models())
def test_l1_unstructured_gives_torchs_masks_and_the_model_runs_and_unprunes(name):
    names = weights(ALL_MODELS[name]())
    rules = {n: jp.L1Unstructured(0.3) for n in names}

    def torch_l1(twin: torch.nn.Module) -> None:
        for sub, attr in weights(twin).values():
            prune.l1_unstructured(sub, attr, amount=0.3)

    check_forward_and_remove(check_prunes_like_torch(name, rules, torch_l1), name)


@pytest.mark.parametrize("name", models(quick=()))
def test_ln_structured_on_conv_and_linear_weights_gives_torchs_masks(name):
    names = weights(ALL_MODELS[name](), min_ndim=2)  # convs, Linear/Conv1D, attention projections, embeddings
    rules = {n: jp.LnStructured(0.25, n=2, dim=0) for n in names}

    def torch_ln(twin: torch.nn.Module) -> None:
        for sub, attr in weights(twin, min_ndim=2).values():
            prune.ln_structured(sub, attr, amount=0.25, n=2, dim=0)

    check_forward_and_remove(check_prunes_like_torch(name, rules, torch_ln, unstructured=False), name)


@pytest.mark.parametrize("name", models(quick=()))
def test_global_unstructured_gives_torchs_global_masks(name):
    names = weights(ALL_MODELS[name]())
    rules = {"*weight": jp.GlobalUnstructured(0.4)}

    def torch_global(twin: torch.nn.Module) -> None:
        prune.global_unstructured(list(weights(twin).values()), prune.L1Unstructured, amount=0.4)

    ours = ALL_MODELS[name]()
    scores = {n: p.detach().numpy() for n, p in ours.named_parameters()}
    interop.prune_module(None, ours, rules)
    twin = ALL_MODELS[name]()
    torch_global(twin)
    assert_masks_equal(installed_masks(ours, names), installed_masks(twin, names), scores)
    check_forward_and_remove(ours, name)


@pytest.mark.parametrize("name", models(quick=("llama_tiny",)))
def test_random_methods_prune_torchs_counts_reproducibly(name):
    model = ALL_MODELS[name]()
    matrices = weights(model, min_ndim=2)
    vectors = {n: o for n, o in weights(model).items() if n not in matrices}
    rules = {**{n: jp.RandomStructured(0.25, dim=0) for n in matrices},
             **{n: jp.RandomUnstructured(0.3) for n in vectors}}
    interop.prune_module(jax.random.key(7), model, rules)
    masks = installed_masks(model, rules)
    for n, mask in masks.items():
        if n in matrices:  # whole slices along dim 0, round(0.25 * rows) of them (torch's count)
            rows = mask.reshape(mask.shape[0], -1)
            assert (rows.all(axis=1) | ~rows.any(axis=1)).all(), n
            assert int((~rows.any(axis=1)).sum()) == round(0.25 * mask.shape[0]), n
        else:
            assert int((~mask).sum()) == round(0.3 * mask.size), n
    again = ALL_MODELS[name]()
    interop.prune_module(jax.random.key(7), again, rules)
    assert_masks_equal(installed_masks(again, rules), masks)
    check_forward_and_remove(model, name)


# --------------------------------------------------------------------------
# torch <-> Flax
# --------------------------------------------------------------------------


@pytest.fixture
def custom_layouts(monkeypatch):
    """Layouts for the models' own parameters (the ViT's cls_token / pos_embed, ConvNeXt's gamma), as users add them."""
    from jaxprune.interop import _layouts

    monkeypatch.setattr(_layouts, "_REGISTERED", {})
    interop.register_layout(VisionTransformer, lambda layer, name, ndim: ("params", name, ()))
    interop.register_layout(ConvNeXtBlock, lambda layer, name, ndim: ("params", name, ()))


@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_torch_to_flax_round_trips_every_state_dict_tensor(name, custom_layouts):
    source, target = ALL_MODELS[name](), ALL_MODELS[name](seed=1)
    variables = interop.torch_to_flax(source)
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == COUNTS[name]
    assert interop.flax_to_torch(variables, target) is target
    for key, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], tensor), key


@pytest.mark.parametrize("name,layer,kind,tensors", [
    ("vit_tiny", "(root)", "VisionTransformer", r"\['cls_token', 'pos_embed'\]"),
    ("convnext_atto", "stages.0.blocks.0", "ConvNeXtBlock", r"\['gamma'\]")])
def test_the_models_own_parameters_are_refused_naming_the_layer_until_registered(name, layer, kind, tensors):
    with pytest.raises(ValueError, match=rf"layer '{re_escape(layer)}' of type {kind} has parameters {tensors} and no "
                                         r"known Flax layout"):
        interop.torch_to_flax(ALL_MODELS[name]())


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_a_pruned_transformer_converts_to_its_effective_weights(custom_layouts):
    model = ALL_MODELS["gpt2_tiny"]()
    interop.prune_module(None, model, {"*.c_attn.weight": jp.L1Unstructured(0.5)})
    variables = interop.torch_to_flax(model)
    kernel = np.asarray(variables["params"]["transformer"]["h"]["0"]["attn"]["c_attn"]["kernel"])
    block = model.transformer.h[0].attn.c_attn
    np.testing.assert_array_equal(kernel, (block.weight_orig * block.weight_mask).detach().numpy())  # Conv1D: as is
    assert int((kernel == 0).sum()) == 64 * 192 // 2


# --------------------------------------------------------------------------
# The CLI on the model's safetensors checkpoint
# --------------------------------------------------------------------------


def run_cli(args: list[Any], capsys: pytest.CaptureFixture) -> None:
    from jaxprune.cli import main

    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""


@pytest.mark.parametrize("name", models(quick=("llama_tiny",)))
def test_cli_prunes_the_checkpoint_into_weights_that_load_back(name, tmp_path, capsys):
    model = ALL_MODELS[name]()
    checkpoint, out, pairs = (tmp_path / f"{stem}.safetensors" for stem in ("model", "pruned", "pairs"))
    safetensors_torch.save_file(model.state_dict(), str(checkpoint))
    run_cli(["prune", checkpoint, "-o", out, "--rule", "*weight=l1:0.3"], capsys)
    run_cli(["prune", checkpoint, "-o", pairs, "--rule", "*weight=l1:0.3", "--torch-reparam"], capsys)
    names = weights(model)
    # torch's *_orig / *_mask pairs: they load after prune.identity on those parameters, with torch's L1 masks.
    reparam = ALL_MODELS[name](seed=1)
    for sub, attr in weights(reparam).values():
        prune.identity(sub, attr)
    result = reparam.load_state_dict(safetensors_torch.load_file(str(pairs)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    twin = ALL_MODELS[name]()
    for sub, attr in weights(twin).values():
        prune.l1_unstructured(sub, attr, amount=0.3)
    scores = {n: p.detach().numpy() for n, p in model.named_parameters()}
    assert_masks_equal(installed_masks(reparam, names), installed_masks(twin, names), scores)
    # The plain pruned weights load with every key matched and equal those pairs' orig * mask.
    plain = ALL_MODELS[name](seed=1)
    result = plain.load_state_dict(safetensors_torch.load_file(str(out)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for sub, attr in weights(reparam).values():
        prune.remove(sub, attr)
    for key, tensor in reparam.state_dict().items():
        assert torch.equal(plain.state_dict()[key], tensor), key
    torch.testing.assert_close(forward(plain, name), forward(reparam, name), rtol=0, atol=0)
