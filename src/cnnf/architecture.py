"""Architectures as data: a list of blocks, each a list of layer tokens.

A spec is plain data (so configs and checkpoints can hold it), for example the paper's
network (appendix B.1):

    {"input_shape": [1, 28, 28],
     "blocks": [["conv 32 3", "norm", "bias", "relu"],
                ["conv 64 3", "norm", "bias", "pool 2"],
                ["flatten", "linear 128", "bias", "relu"],
                ["linear 10", "bias"]]}

Tokens: `conv OUT KERNEL [PADDING [STRIDE]]`, `linear OUT`, `norm`, `bias`, `relu` (AdaReLU),
`pool SIZE` (AdaPool), `avgpool` (global average pooling to flat features), `flatten`, and a
residual block as a mapping {"residual": [tokens of the branch F], "shortcut": [tokens of S]}
(out = F(f) + S(f); no "shortcut" key, or an empty list, is the identity). Block boundaries
are the layer indices a CNN-F can reconstruct to: layer k = the output of block k, layer 0 =
the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnf import layers

Shape = tuple[int, ...]

TOKENS = ("conv", "linear", "norm", "bias", "relu", "pool", "avgpool", "flatten")
RESIDUAL_KEYS = ("residual", "shortcut")


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
                raise ArchitectureError(f"block {b}, layer {describe(token)!r}: {error}") from None
            built.append(layer)
            shapes.append(shape)
            shape = out_shape
        block_ends.append(len(built))
    shapes.append(shape)
    if len(shape) != 1:
        raise ArchitectureError(f"the last block must end in logits (B, classes), got per-sample shape {shape}")
    return built, block_ends, shapes


def _layer(token: str | dict, shape: Shape, relu_mixing: float) -> tuple[layers.FeedbackLayer, Shape]:
    if isinstance(token, dict):
        return _residual(token, shape, relu_mixing)
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
        return _conv(numbers, shape)
    if name == "norm":
        return layers.InstanceNorm(), shape
    if name == "avgpool":
        return layers.GlobalAvgPool((h, w)), (c,)
    if name == "pool":
        r = numbers[0]
        if h % r or w % r:
            raise ValueError(f"pool size {r} must divide the feature map {h}x{w}")
        return layers.AdaPool(r, (h, w)), (c, h // r, w // r)
    return layers.Flatten(shape), (c * h * w,)


def _conv(numbers: list[int], shape: Shape) -> tuple[layers.Conv2d, Shape]:
    """`conv OUT K [PAD [STRIDE]]` on (C, H, W) inputs; a strided one gets the output padding
    that makes its feedback return the input's size (see `layers.Conv2d`)."""
    out, k = numbers[0], numbers[1]
    pad = numbers[2] if len(numbers) > 2 else 0
    stride = numbers[3] if len(numbers) > 3 else 1
    c, h, w = shape
    if stride < 1 or h + 2 * pad < k or w + 2 * pad < k:
        raise ValueError(f"kernel {k} with padding {pad} and stride {stride} does not fit the feature map {h}x{w}")
    out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    padding_h, padding_w = h + 2 * pad - k - (out_h - 1) * stride, w + 2 * pad - k - (out_w - 1) * stride
    if padding_h != padding_w:
        raise ValueError(f"stride {stride} leaves {padding_h} rows but {padding_w} columns over on the map {h}x{w}; use a square map")
    return layers.Conv2d(c, out, k, pad, stride, padding_h), (out, out_h, out_w)


def _residual(token: dict, shape: Shape, relu_mixing: float) -> tuple[layers.Residual, Shape]:
    """{"residual": [branch tokens], "shortcut": [shortcut tokens]} -> Residual, output shape."""
    unknown = sorted(set(token) - set(RESIDUAL_KEYS))
    if unknown or "residual" not in token:
        raise ValueError(f"a residual block is a mapping with the keys {RESIDUAL_KEYS} ('shortcut' optional), got keys {sorted(token)}")
    branch, branch_shape = _sequence(token["residual"], shape, relu_mixing)
    shortcut, shortcut_shape = _sequence(token.get("shortcut", []), shape, relu_mixing)
    if branch_shape != shortcut_shape:
        raise ValueError(f"the branch gives per-sample shape {branch_shape} but the shortcut {shortcut_shape}; "
                         "give the shortcut a convolution to the branch's channels and stride")
    return layers.Residual(branch, shortcut), branch_shape


def _sequence(tokens: Sequence[str | dict], shape: Shape, relu_mixing: float) -> tuple[list[layers.FeedbackLayer], Shape]:
    built = []
    for token in tokens:
        layer, shape = _layer(token, shape, relu_mixing)
        built.append(layer)
    return built, shape


def _need(shape: Shape, rank: int, name: str) -> None:
    if len(shape) != rank:
        kind = "(C, H, W) feature maps" if rank == 3 else "flat features (add 'flatten' first)"
        raise ValueError(f"{name!r} needs {kind}, got per-sample shape {shape}")


def without_norm(blocks: Sequence[Sequence[str | dict]]) -> list[list[str | dict]]:
    """The same blocks with every instance-normalisation layer removed (inside residual blocks too)."""
    return [_drop_norm(block) for block in blocks]


def _drop_norm(tokens: Sequence[str | dict]) -> list[str | dict]:
    return [{key: _drop_norm(inner) for key, inner in t.items()} if isinstance(t, dict) else t
            for t in tokens if t != "norm"]


def describe(token: str | dict) -> str:
    """A token as one line of text: a residual block as `residual[...] + shortcut[...]`."""
    if not isinstance(token, dict):
        return str(token)
    return " + ".join(f"{key}[{', '.join(map(describe, token.get(key, [])))}]" for key in RESIDUAL_KEYS)
