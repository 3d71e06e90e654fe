"""The layer twins of CNN-F (docs/DESIGN.md section 2): each layer runs feedforward (bottom-up)
and feedback (top-down, the DGM's generation step, eq. 2) with the same weights.

    out, latent = layer(f, drive)        # feedforward; `drive` is the feedback signal g that
                                          # arrived at this layer's output in the previous
                                          # feedback pass (None on the first, plain pass)
    g_below = layer.feedback(g, latent)   # feedback

Latents (ReLU masks z_R, pooling choices z_P) are returned as values and passed back in;
nothing is stored on the modules. This is the reference implementation: plain torch ops on
(B, C, H, W) maps. `cnnf.fast` computes the same faster (tests/test_backends.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Latent = Tensor | None


class FeedbackLayer(nn.Module):
    """Base class. `adaptive` layers switch their nonlinearity by the sign of `drive`."""

    adaptive = False

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        raise NotImplementedError

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        raise NotImplementedError


class Conv2d(FeedbackLayer):
    """Convolution W * f (no bias; see `Bias`); feedback is the transposed convolution W^T * g
    with the same weight Parameter (the adjoint). Stride 1, square kernel, zero padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return F.conv2d(f, self.weight, padding=self.padding), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return F.conv_transpose2d(g, self.weight, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, padding={self.padding}"


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


class Flatten(FeedbackLayer):
    """(B, C, H, W) -> (B, C*H*W); feedback reshapes back to `shape` = (C, H, W)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return f.flatten(1), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return g.reshape(g.shape[0], *self.shape)
