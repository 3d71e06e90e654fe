"""The layer twins of CNN-F (docs/DESIGN.md section 2): each layer runs feedforward (bottom-up)
and feedback (top-down, the DGM's generation step, eq. 2) with the same weights.

    out, latent = layer(f, drive)        # feedforward; `drive` is the feedback signal g that
                                          # arrived at this layer's output in the previous
                                          # feedback pass (None on the first, plain pass)
    g_below = layer.feedback(g, latent)   # feedback

Latents (ReLU masks z_R, pooling choices z_P) are returned as values and passed back in;
nothing is stored on the modules. A `Residual` block is one such layer holding its inner
layers: its latent, drive, signal and output hold one entry per inner layer
(docs/DESIGN.md section 2, "Residual blocks"). This is the reference implementation: plain torch ops on
(B, C, H, W) maps. `cnnf.fast` computes the same faster (tests/test_backends.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Latent = Tensor | tuple | None
"""A mask or pooling index, None for layers without latents; a residual block's is a pair of
tuples, one entry per inner layer."""


class FeedbackLayer(nn.Module):
    """Base class. `adaptive` layers switch their nonlinearity by the sign of `drive`.

    `trace_forward` and `trace_feedback` are what the pathway loops call: the contract above,
    plus what a pass records at the layer (its output; the signal arriving at its output). A
    plain layer records the tensors themselves; a composite layer also its inner layers'."""

    adaptive = False

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        raise NotImplementedError

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        raise NotImplementedError

    def trace_forward(self, f: Tensor, drive: object, keep: bool) -> tuple[Tensor, Latent, object]:
        """(out, latent, the output to record: out if keep, else None)."""
        out, latent = self(f, drive)
        return out, latent, (out if keep else None)

    def trace_feedback(self, g: Tensor, latent: Latent) -> tuple[Tensor, object]:
        """(g_below, the signal to record here: g, which drives this layer in the next pass)."""
        return self.feedback(g, latent), g


class Conv2d(FeedbackLayer):
    """Convolution W * f (no bias; see `Bias`); feedback is the transposed convolution W^T * g
    with the same weight Parameter (the adjoint). Square kernel, zero padding, stride s.

    A strided convolution maps several input sizes to one output size; `output_padding`, the
    input rows (and columns) beyond (H_out - 1) s - 2 p + k, makes the transposed convolution
    return the input's size, so that it is the adjoint (`output_padding` in `cnnf.architecture`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 stride: int = 1, output_padding: int = 0):
        super().__init__()
        self.padding = padding
        self.stride = stride
        self.output_padding = output_padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return F.conv2d(f, self.weight, stride=self.stride, padding=self.padding), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return F.conv_transpose2d(g, self.weight, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        stride = f", stride={self.stride}, output_padding={self.output_padding}" if self.stride != 1 else ""
        return f"{i}, {o}, kernel_size={k}, padding={self.padding}{stride}"


class Linear(FeedbackLayer):
    """Matrix product W f (no bias; see `Bias`); feedback is W^T g with the same Parameter."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return F.linear(f, self.weight), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return g @ self.weight

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}"


class Bias(FeedbackLayer):
    """Adds b (one value per channel or feature) in the feedforward; identity in the feedback
    (the DGM generates without biases; b enters through the latent prior eta, eq. 13)."""

    def __init__(self, channels: int, spatial: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.spatial = spatial

    def broadcast(self) -> Tensor:
        """b shaped to add onto (B, C, H, W) or (B, C) tensors."""
        return self.bias.view(-1, 1, 1) if self.spatial else self.bias

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return f + self.broadcast(), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return g


class InstanceNorm(FeedbackLayer):
    """The paper's instance normalisation (appendix A.4): f / sqrt(mean_{H,W} f^2 + eps) per
    sample and channel; no mean subtraction, no affine. Feedback applies the same
    normalisation to g."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return self.normalise(f), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return self.normalise(g)

    def normalise(self, t: Tensor) -> Tensor:
        return t * torch.rsqrt(t.square().mean((-2, -1), keepdim=True) + self.eps)


class AdaReLU(FeedbackLayer):
    """AdaReLU (eq. 3 read through Theorem 2.1.C): out = z * f with the latent z_R = 1(f > 0) on
    the first pass and z_R = 1(f * g > 0) when driven by the feedback g. Feedback: z * g.

    Eq. 3 prints ReLU(-f) for g < 0; the MAP derivation (eq. 18, Lemma A.1) passes z * f,
    which is what the generative-classifier identity test pins down. z_R is a bool map; it
    carries no gradient (it is piecewise constant).

    mixing m in [0, 1): the released code's variant (its `resReLU`, m = 0.1), not the paper's
    text: a driven pass first mixes the activation with its drive, f <- f + m (g - f), then
    masks that. m = 0 is the paper's AdaReLU."""

    adaptive = True

    def __init__(self, mixing: float = 0.0):
        super().__init__()
        self.mixing = mixing

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        if drive is None:
            z = f > 0
        else:
            f = f + self.mixing * (drive - f) if self.mixing else f
            z = f * drive > 0
        return f * z, z

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return g * latent

    def extra_repr(self) -> str:
        return f"mixing={self.mixing}" if self.mixing else ""


class AdaPool(FeedbackLayer):
    """AdaPool (eq. 3, 19) over non-overlapping r x r windows. First pass: max-pool. Driven by
    the pooled-resolution feedback g: the max of the window where g >= 0 (-0.0 included), the
    min where g < 0, computed as s * maxpool(s * f) with s = +1 or -1 per window. Latent z_P:
    the flat index h * W + w of the chosen position in each window (as F.max_pool2d returns
    it). Feedback: unpool g to the chosen positions."""

    adaptive = True

    def __init__(self, size: int, input_size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.input_size = input_size

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        if drive is None:
            return F.max_pool2d(f, self.size, return_indices=True)
        sign = torch.where(drive >= 0, 1.0, -1.0).to(f.dtype)  # (B, C, H / r, W / r)
        window_sign = sign.repeat_interleave(self.size, 2).repeat_interleave(self.size, 3)
        pooled, index = F.max_pool2d(f * window_sign, self.size, return_indices=True)
        return pooled * sign, index

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return F.max_unpool2d(g, latent.long(), self.size, output_size=self.input_size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class GlobalAvgPool(FeedbackLayer):
    """Global average pooling (B, C, H, W) -> (B, C), the mean over H x W; feedback is its
    adjoint, g / (H W) at every position. (The released code upsamples g without the 1 / (H W)
    and normalises next; the adjoint keeps Lemma A.1 exact without the normalisation.)"""

    def __init__(self, input_size: tuple[int, int]):
        super().__init__()
        self.input_size = tuple(input_size)

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return f.mean((-2, -1)), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        height, width = self.input_size
        return (g / (height * width))[:, :, None, None].expand(*g.shape, height, width)


class Flatten(FeedbackLayer):
    """(B, C, H, W) -> (B, C*H*W); feedback reshapes back to `shape` = (C, H, W)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return f.flatten(1), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return g.reshape(g.shape[0], *self.shape)


@dataclass(frozen=True)
class Branches:
    """What one pass records at a residual block: `value` at the block's output (its output,
    or the signal arriving there) and one entry per inner layer of `branch` and `shortcut`.
    A feedback pass's record is the next feedforward pass's drive of the block."""

    value: Tensor
    branch: tuple
    shortcut: tuple


class Residual(FeedbackLayer):
    """A residual block, out = F(f) + S(f): F the `branch` layers, S the `shortcut` layers (the
    identity when there are none, else e.g. a 1x1 strided convolution).

    At fixed latents F and S are linear (bias layers aside), and the feedback is the adjoint of
    their sum, g_below = F^T(g) + S^T(g): each path's feedback of the same g, added at the fork
    (docs/DESIGN.md section 2, "Residual blocks"). Drive, latent, signal and output hold one
    entry per inner layer (`Branches`; the latent is (branch latents, shortcut latents)), so
    the inner AdaReLUs are driven by the signals that reached them."""

    def __init__(self, branch: Sequence[FeedbackLayer], shortcut: Sequence[FeedbackLayer] = ()):
        super().__init__()
        self.branch = nn.ModuleList(branch)
        self.shortcut = nn.ModuleList(shortcut)
        self.adaptive = any(layer.adaptive for layer in (*branch, *shortcut))

    def forward(self, f: Tensor, drive: Branches | None = None) -> tuple[Tensor, Latent]:
        out, latent, _ = self.trace_forward(f, drive, keep=False)
        return out, latent

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return self.trace_feedback(g, latent)[0]

    def trace_forward(self, f: Tensor, drive: Branches | None, keep: bool) -> tuple[Tensor, Latent, Branches | None]:
        branch_drives, shortcut_drives = (None, None) if drive is None else (drive.branch, drive.shortcut)
        fx, branch_latents, branch_outputs = forward_pass(self.branch, f, branch_drives, keep)
        sx, shortcut_latents, shortcut_outputs = forward_pass(self.shortcut, f, shortcut_drives, keep)
        out = fx + sx
        return out, (branch_latents, shortcut_latents), (Branches(out, branch_outputs, shortcut_outputs) if keep else None)

    def trace_feedback(self, g: Tensor, latent: Latent) -> tuple[Tensor, Branches]:
        branch_latents, shortcut_latents = latent
        branch_g, branch_signals = feedback_pass(self.branch, g, branch_latents)
        shortcut_g, shortcut_signals = feedback_pass(self.shortcut, g, shortcut_latents)
        return branch_g + shortcut_g, Branches(g, branch_signals, shortcut_signals)


def forward_pass(layers: Sequence[FeedbackLayer], f: Tensor, drives: Sequence | None,
                 keep: bool) -> tuple[Tensor, tuple, tuple | None]:
    """The layers in order on f, each driven by its entry of `drives` (None: the first, plain
    pass). Returns (output, one latent per layer, one output per layer if keep, else None)."""
    latents, outputs = [], []
    for i, layer in enumerate(layers):
        f, latent, output = layer.trace_forward(f, None if drives is None else drives[i], keep)
        latents.append(latent)
        outputs.append(output)
    return f, tuple(latents), (tuple(outputs) if keep else None)


def feedback_pass(layers: Sequence[FeedbackLayer], g: Tensor, latents: Sequence[Latent]) -> tuple[Tensor, tuple]:
    """The layers' feedback from the top down (eq. 2). Returns (g below the first layer, the
    signal arriving at each layer's output)."""
    signals: list[object] = [None] * len(layers)
    for i in reversed(range(len(layers))):
        g, signals[i] = layers[i].trace_feedback(g, latents[i])
    return g, tuple(signals)


def leaves(layers: Sequence[FeedbackLayer], *records: Sequence | None) -> Iterator[tuple]:
    """(layer, its entry of each record) for every layer that holds no others, residual
    blocks' inner layers included. Records are per-layer tuples (signals, outputs); a missing
    record or entry gives None."""
    for i, layer in enumerate(layers):
        entries = [None if record is None else record[i] for record in records]
        if isinstance(layer, Residual):
            for part in ("branch", "shortcut"):
                inner = [None if entry is None else getattr(entry, part) for entry in entries]
                yield from leaves(getattr(layer, part), *inner)
        else:
            yield layer, *entries


def tensor_of(record: object) -> Tensor | None:
    """The tensor a pass recorded at a layer's output (a residual block's: `Branches.value`)."""
    return record.value if isinstance(record, Branches) else record
