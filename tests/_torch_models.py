"""Small torch models shared by the torch-bridge tests."""

import torch


def small_cnn(seed: int = 0) -> torch.nn.Sequential:
    """Conv2d-BatchNorm-ReLU-Flatten-Linear on (N, 3, 6, 6) inputs, with
    non-trivial BatchNorm state and no tied values (train mode)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


# --------------------------------------------------------------------------
# Real architectures, in plain torch.nn (torchvision and timm are not importable
# beside the CPU torch pin): the same module types and parameter shapes as the
# originals, so a wrong layout or a missed layer type shows here. Every builder
# takes a seed and gives the same weights for it; the norms get random scales and
# shifts (not torch's ones and zeros) so magnitudes seldom tie.
# --------------------------------------------------------------------------

from collections import OrderedDict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

nn = torch.nn


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Random affine parameters and running statistics for every norm layer
    (BatchNorm, LayerNorm, GroupNorm, RMSNorm), in module order."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or \
                    type(layer).__name__.endswith("RMSNorm"):
                if getattr(layer, "weight", None) is not None:
                    layer.weight.uniform_(0.5, 1.5)
                if getattr(layer, "bias", None) is not None:
                    layer.bias.uniform_(-0.2, 0.2)
                if getattr(layer, "running_mean", None) is not None:
                    layer.running_mean.uniform_(-0.5, 0.5)
                    layer.running_var.uniform_(0.5, 2.0)
    return model


# -- resnet18 (torchvision.models.resnet18: 11,689,512 parameters) ----------


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(seed: int = 0) -> nn.Module:
    """torchvision's resnet18 (BasicBlock x (2, 2, 2, 2), 1000 classes), eval mode."""
    torch.manual_seed(seed)
    return _randomize_norms(ResNet()).eval()


# -- mobilenet_v3_small (torchvision: 2,542,856 parameters) -----------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 act: Callable[[], nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias), BatchNorm(eps=1e-3), activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.Hardswish) else act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        activation = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_conv_bn_act(cin, expanded, 1, act=activation))
        layers.append(_conv_bn_act(expanded, expanded, k, stride, groups=expanded, act=activation))  # depthwise
        if se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(_conv_bn_act(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride)
_MOBILENET_V3_SMALL = [
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
]


class MobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [_conv_bn_act(3, 16, 3, 2)]
        layers += [InvertedResidual(*row) for row in _MOBILENET_V3_SMALL]
        layers.append(_conv_bn_act(96, 576, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_small(seed: int = 0) -> nn.Module:
    """torchvision's mobilenet_v3_small: depthwise convs, squeeze-excitation, Hardswish; eval mode."""
    torch.manual_seed(seed)
    return _randomize_norms(MobileNetV3()).eval()


# -- vit_tiny_patch16_224 (timm layout: 5,717,416 parameters) ---------------


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """timm's Block, its qkv/proj pair as one nn.MultiheadAttention (the same tensors, fused as torch fuses them)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, dim: int = 192, depth: int = 12, heads: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 197, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_tiny(seed: int = 0) -> nn.Module:
    """timm's vit_tiny_patch16_224 (192 wide, 12 blocks, 3 heads); attention is nn.MultiheadAttention."""
    torch.manual_seed(seed)
    model = VisionTransformer()
    with torch.no_grad():
        model.cls_token.normal_(std=0.02)
        model.pos_embed.normal_(std=0.02)
        for block in model.blocks:
            block.attn.in_proj_bias.uniform_(-0.1, 0.1)
    return _randomize_norms(model).eval()


# -- convnext_atto (timm: depths (2, 2, 6, 2), dims (40, 80, 160, 320)) -------


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + y * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.downsample = nn.Identity() if cin == cout else nn.Sequential(LayerNorm2d(cin, eps=1e-6),
                                                                           nn.Conv2d(cin, cout, 2, 2))
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...] = (2, 2, 6, 2), dims: tuple[int, ...] = (40, 80, 160, 320),
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.Sequential(*[ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i]) for i in range(4)])
        self.head = nn.Sequential(OrderedDict([("global_pool", nn.AdaptiveAvgPool2d(1)),
                                               ("norm", LayerNorm2d(dims[-1], eps=1e-6)),
                                               ("flatten", nn.Flatten(1)), ("fc", nn.Linear(dims[-1], num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def convnext_atto(seed: int = 0) -> nn.Module:
    """timm's convnext_atto with the Linear MLP (conv_mlp=False: the same tensors as timm's 1x1 conv MLP,
    but Linear weights): depthwise 7x7 convs, LayerNorm, layer-scale gamma."""
    torch.manual_seed(seed)
    model = ConvNeXt()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, ConvNeXtBlock):
                layer.gamma.uniform_(0.5, 1.5)  # 1e-6 everywhere would tie every gamma entry
    return _randomize_norms(model).eval()


# -- transformers models, tiny configs (random init) ---------------------------


def _tiny_transformer(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_norms(make()).eval()


def gpt2_tiny(seed: int = 0) -> nn.Module:
    """transformers' GPT2LMHeadModel (Conv1D layers), 2 layers, hidden 64, vocab 1000, untied head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64, bos_token_id=0,
                        eos_token_id=0, tie_word_embeddings=False)
    return _tiny_transformer(lambda: GPT2LMHeadModel(config), seed)


def bert_tiny(seed: int = 0) -> nn.Module:
    """transformers' BertModel (position_ids / token_type_ids index buffers), 2 layers, hidden 64, vocab 1000."""
    from transformers import BertConfig, BertModel

    config = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                        vocab_size=1000, max_position_embeddings=64)
    return _tiny_transformer(lambda: BertModel(config), seed)


def llama_tiny(seed: int = 0) -> nn.Module:
    """transformers' LlamaForCausalLM (LlamaRMSNorm, rotary inv_freq buffers), 2 layers, hidden 64, vocab 1000."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=1000, max_position_embeddings=64, bos_token_id=0,
                         eos_token_id=0, tie_word_embeddings=False)
    return _tiny_transformer(lambda: LlamaForCausalLM(config), seed)


ALL_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18, "mobilenet_v3_small": mobilenet_v3_small, "vit_tiny": vit_tiny,
    "convnext_atto": convnext_atto, "gpt2_tiny": gpt2_tiny, "bert_tiny": bert_tiny, "llama_tiny": llama_tiny,
}

# torchvision's and timm's own counts for the vision models (the tiny transformers: their configs').
PARAMETER_COUNTS = {"resnet18": 11_689_512, "mobilenet_v3_small": 2_542_856, "vit_tiny": 5_717_416,
                    "convnext_atto": 3_695_520}


def example_input(name: str, batch: int = 2, seed: int = 0) -> Any:
    """A forward input for ``ALL_MODELS[name]``: images (batch, 3, 224, 224) or token ids (batch, 16)."""
    if name not in ALL_MODELS:
        raise KeyError(f"example_input: unknown model {name!r}; known: {sorted(ALL_MODELS)}")
    generator = torch.Generator().manual_seed(seed)
    if name in ("gpt2_tiny", "bert_tiny", "llama_tiny"):
        return torch.randint(0, 1000, (batch, 16), generator=generator)
    return torch.randn(batch, 3, 224, 224, generator=generator)
