"""Named architectures and the model registry: `create_model(name, **overrides)`."""

from __future__ import annotations

from collections.abc import Sequence

from cnnf.architecture import without_norm
from cnnf.model import CNNF

PAPER_MNIST = {
    "input_shape": [1, 28, 28],
    "blocks": [
        ["conv 32 3", "norm", "bias", "relu"],
        ["conv 64 3", "norm", "bias", "pool 2"],
        ["flatten", "linear 128", "bias", "relu"],
        ["linear 10", "bias"],
    ],
}
"""The paper's network (appendix B.1): Conv(1->32, 3x3) IN AdaReLU Conv(32->64, 3x3) IN AdaPool(2)
Flatten FC(9216->128) AdaReLU FC(128->10); reconstructs to the pixels."""

CONV4_MNIST = {
    "input_shape": [1, 28, 28],
    "blocks": [
        ["conv 16 3 1", "norm", "bias", "relu"],
        ["conv 32 3 1", "norm", "bias", "relu"],
        ["conv 32 3 1", "norm", "bias", "relu", "pool 2"],
        ["conv 64 3 1", "norm", "bias", "relu", "pool 2"],
        ["flatten", "linear 1000", "bias", "relu"],
        ["linear 128", "bias", "relu"],
        ["linear 10", "bias"],
    ],
}
"""The released code's larger network: 3x3 convs 1->16->32->32->64 (padding 1) each with IN and
AdaReLU, AdaPool(2) after the third and fourth, FC 3136->1000->128->10; reconstructs to the
output of the second conv block."""



def wide_resnet(depth: int = 40, widen: int = 2, classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> dict:
    """The spec of a pre-activation Wide ResNet WRN-depth-widen (Zagoruyko and Komodakis), as the
    released code's CIFAR-10 model builds it, with instance norm + bias in place of batch norm.

    Blocks: [stem conv 16, 3x3] | (depth - 4) / 6 basic blocks in each of three groups of
    16 w, 32 w, 64 w channels, the second and third starting with stride 2 | [norm, bias, relu,
    global average pooling, linear `classes`, bias]. A basic block is [norm, bias, relu,
    conv 3x3 (stride s), norm, bias, relu, conv 3x3] plus a shortcut: the identity of its input
    where the width stays, else a 1x1 strided convolution of the pre-activated input (the
    pre-activation [norm, bias, relu] then precedes the residual block, shared by both paths)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a Wide ResNet's depth must be 6 n + 4 with n >= 1 (e.g. 40), got {depth}")
    blocks: list[list] = [["conv 16 3 1"]]
    channels = 16
    for width, stride in ((16 * widen, 1), (32 * widen, 2), (64 * widen, 2)):
        for i in range((depth - 4) // 6):
            blocks.append(_basic_block(channels, width, stride if i == 0 else 1))
            channels = width
    blocks.append(["norm", "bias", "relu", "avgpool", f"linear {classes}", "bias"])
    return {"input_shape": list(input_shape), "blocks": blocks}


def _basic_block(channels: int, width: int, stride: int) -> list:
    """One WRN basic block (see `wide_resnet`): its pre-activation and residual block tokens."""
    pre_activation = ["norm", "bias", "relu"]
    branch = [f"conv {width} 3 1 {stride}", "norm", "bias", "relu", f"conv {width} 3 1"]
    if channels == width and stride == 1:
        return [{"residual": pre_activation + branch}]
    return pre_activation + [{"residual": branch, "shortcut": [f"conv {width} 1 0 {stride}"]}]


VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""VGG configuration D: the 3x3 convolutions' widths, stage by stage; each stage ends in a 2x2 pool."""


def vgg(stages: Sequence[Sequence[int]] = VGG16_STAGES, hidden: int = 4096, classes: int = 1000,
        input_shape: Sequence[int] = (3, 224, 224)) -> dict:
    """The spec of a VGG network (Simonyan and Zisserman; VGG-16 is configuration D) with the
    paper's layers: every 3x3 convolution (padding 1) is followed by instance norm, bias and
    AdaReLU, every stage by AdaPool(2); then FC `hidden`, FC `hidden`, FC `classes`, with bias
    and AdaReLU between them. One block per convolution (the pool joins its stage's last)
    and per FC layer. The head has no normalisation (instance norm is over H x W, and flat
    features have none), no dropout and no adaptive average pooling (at 224 x 224 its 7 x 7
    output is the identity; on smaller inputs the first FC layer takes the smaller map)."""
    blocks: list[list] = []
    for stage in stages:
        for width in stage:
            blocks.append([f"conv {width} 3 1", "norm", "bias", "relu"])
        blocks[-1].append("pool 2")
    blocks += [["flatten", f"linear {hidden}", "bias", "relu"], [f"linear {hidden}", "bias", "relu"],
               [f"linear {classes}", "bias"]]
    return {"input_shape": list(input_shape), "blocks": blocks}


WRN40_2_CIFAR = wide_resnet(40, 2)
"""The released code's CIFAR-10 network, WRN-40-2 (2.2 M parameters); reconstructs to the
output of the fifth basic block (its `ind = 5`), block 6 here (block 1 is the stem)."""

VGG16 = vgg()
"""VGG-16 for ImageNet (appendix B.5), 224 x 224 x 3 inputs, 1000 classes (138.4 M parameters,
as torchvision's vgg16); reconstructs to the pixels, so that every block is recomputed."""

_MODELS = {
    "paper_mnist": (PAPER_MNIST, {"reconstruct_to": 0}),
    "conv4_mnist": (CONV4_MNIST, {"reconstruct_to": 2}),
    "wrn40_2_cifar": (WRN40_2_CIFAR, {"reconstruct_to": 6}),
    "vgg16": (VGG16, {"reconstruct_to": 0}),
}

OVERRIDES = ("iterations", "reconstruct_to", "output", "residual", "relu_mixing", "norm", "input_shape")


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_MODELS)


def create_model(name: str, **overrides) -> CNNF:
    """Build a registered architecture.

    Overrides: iterations, reconstruct_to, output ("last" | "average"), residual (r in (0, 1]),
    relu_mixing (the released code's AdaReLU, m in [0, 1); 0 is the paper), norm ("instance" or None: None removes every instance-normalisation layer),
    input_shape ([C, H, W]: the same layers on other image sizes, e.g. vgg16 on 32 x 32 images).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(unknown)} for {name!r}; allowed: {', '.join(OVERRIDES)}")
    spec, defaults = _MODELS[name]
    settings = {**defaults, **overrides}
    norm = settings.pop("norm", "instance")
    if norm not in ("instance", None):
        raise ValueError(f"norm must be 'instance' or None, got {norm!r}")
    if norm is None:
        spec = {**spec, "blocks": without_norm(spec["blocks"])}
    if "input_shape" in settings:
        spec = {**spec, "input_shape": list(settings.pop("input_shape"))}
    return CNNF(spec, **settings)
