"""Architectures as data: a list of blocks, each a list of layer tokens.

A spec is plain data (so configs and checkpoints can hold it), for example the paper's
network (appendix B.1):

    {"input_shape": [1, 28, 28],
     "blocks": [["conv 32 3", "norm", "bias", "relu"],
                ["conv 64 3", "norm", "bias", "pool 2"],
                ["flatten", "linear 128", "bias", "relu"],
                ["linear 10", "bias"]]}

Tokens: `conv OUT KERNEL [PADDING]`, `linear OUT`, `norm`, `bias`, `relu` (AdaReLU),
`pool SIZE` (AdaPool), `flatten`. Block boundaries are the layer indices a CNN-F can
reconstruct to: layer k = the output of block k, layer 0 = the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnf import layers

Shape = tuple[int, ...]

TOKENS = ("conv", "linear", "norm", "bias", "relu", "pool", "flatten")


class ArchitectureError(ValueError):
    """A spec that cannot be built; the message names the block, the token and the fix."""


def build(spec: dict, relu_mixing: float = 0.0) -> tuple[list[layers.FeedbackLayer], list[int], list[Shape]]:
    """Build the layers of `spec`; every AdaReLU gets `relu_mixing` (see `layers.AdaReLU`).

    Returns (layers, block_ends, shapes): `block_ends[k]` is the index of the first layer above
    layer k (block_ends[0] = 0), and `shapes[i]` is the per-sample shape of the input of layer i
    (shapes[-1] is the logits shape).
    """
    shape: Shape = tuple(spec["input_shape"])
    built: list[layers.FeedbackLayer] = []
    shapes: list[Shape] = []
    block_ends = [0]
    for b, block in enumerate(spec["blocks"], start=1):
        for token in block:
            try:
                layer, out_shape = _layer(token, shape, relu_mixing)
            except (ValueError, IndexError) as error:
                raise ArchitectureError(f"block {b}, layer {token!r}: {error}") from None
            built.append(layer)
            shapes.append(shape)
            shape = out_shape
        block_ends.append(len(built))
    shapes.append(shape)
    if len(shape) != 1:
        raise ArchitectureError(f"the last block must end in logits (B, classes), got per-sample shape {shape}")
    return built, block_ends, shapes


def _layer(token: str, shape: Shape, relu_mixing: float) -> tuple[layers.FeedbackLayer, Shape]:
    name, *args = token.split()
    numbers = [int(a) for a in args]
    if name not in TOKENS:
        raise ValueError(f"unknown layer {name!r}; known layers: {', '.join(TOKENS)}")
    if name == "linear":
        _need(shape, 1, name)
        return layers.Linear(shape[0], numbers[0]), (numbers[0],)
    if name == "bias":
        return layers.Bias(shape[0], spatial=len(shape) == 3), shape
    if name == "relu":
        return layers.AdaReLU(relu_mixing), shape
    _need(shape, 3, name)
    c, h, w = shape
    if name == "conv":
        out, k, pad = numbers[0], numbers[1], (numbers[2] if len(numbers) > 2 else 0)
        return layers.Conv2d(c, out, k, pad), (out, h + 2 * pad - k + 1, w + 2 * pad - k + 1)
    if name == "norm":
        return layers.InstanceNorm(), shape
    if name == "pool":
        r = numbers[0]
        if h % r or w % r:
            raise ValueError(f"pool size {r} must divide the feature map {h}x{w}")
        return layers.AdaPool(r, (h, w)), (c, h // r, w // r)
    return layers.Flatten(shape), (c * h * w,)


def _need(shape: Shape, rank: int, name: str) -> None:
    if len(shape) != rank:
        kind = "(C, H, W) feature maps" if rank == 3 else "flat features (add 'flatten' first)"
        raise ValueError(f"{name!r} needs {kind}, got per-sample shape {shape}")


def without_norm(blocks: Sequence[Sequence[str]]) -> list[list[str]]:
    """The same blocks with every instance-normalisation layer removed."""
    return [[t for t in block if t != "norm"] for block in blocks]
