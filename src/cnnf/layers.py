"""Feedback-capable layers: each one runs feedforward (bottom-up) and feedback (top-down).

Every layer has the same two-method contract (DESIGN.md section 2):

    out, latent = layer(f, drive)        # feedforward; `drive` is the feedback signal g that
                                          # arrived at this layer's output in the previous
                                          # feedback pass (None on the first, plain pass)
    g_below = layer.feedback(g, latent)   # feedback (the DGM generation step, eq. 2)

Latents (ReLU masks z_R, pooling choices z_P) are returned as values and passed back in;
nothing is stored on the modules, so a model is safe to share between threads, to compile,
and to call with any batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf import fused

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
    with the same weight Parameter. Stride 1, square kernel, zero padding `padding`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        return channels_last(F.conv2d(channels_last(f), self.weight, padding=self.padding)), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        if self.weight.shape[1] == 1 and g.device.type == "cpu":  # down to one channel, e.g. the pixels
            return _ConvTransposeToOneChannel.apply(g, self.weight, self.padding)
        return channels_last(F.conv_transpose2d(g, self.weight, padding=self.padding))

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, padding={self.padding}"


class _ConvTransposeToOneChannel(torch.autograd.Function):
    """F.conv_transpose2d(g, w, padding=p) for w (C, 1, k, k), stride 1, as one matmul
    (B*H*W, C) x (C, k*k) and k*k shifted adds. Same values as F.conv_transpose2d up to the
    order of the sums. On CPU oneDNN's kernel for a single output channel ran at ~10 GFLOP/s:
    this form was 3x faster forward (benchmarks/README.md). The backward is oneDNN's convolution
    from one channel, which is fast on maps with NHWC strides (`channels_last`): the input
    gradient is F.conv2d of the output gradient (the adjoint), the weight gradient conv2d's,
    with input and output swapped: half the time of matmuls on the unfolded gradient
    (benchmarks/README.md)."""

    @staticmethod
    def forward(ctx, g: Tensor, weight: Tensor, padding: int) -> Tensor:
        batch, channels, height, width = g.shape
        k = weight.shape[-1]
        taps = channels_last(g).permute(0, 2, 3, 1).reshape(-1, channels) @ weight.reshape(channels, k * k)
        taps = taps.view(batch, height, width, k, k)
        full = g.new_zeros(batch, height + k - 1, width + k - 1, 1)  # NHWC: channels-last strides
        for i in range(k):
            for j in range(k):
                full[:, i : i + height, j : j + width, 0] += taps[..., i, j]
        ctx.save_for_backward(g, weight)
        ctx.padding = p = padding
        # (B, 1, H, W) with stride 1 on C: torch then reads it as channels-last (the conv above
        # runs its fast path on it); NCHW strides are equally "contiguous" for one channel
        return channels_last(full[:, p : full.shape[1] - p, p : full.shape[2] - p].permute(0, 3, 1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        g, weight = ctx.saved_tensors
        d_out, p = channels_last(d_out), ctx.padding
        d_g = channels_last(F.conv2d(d_out, weight, padding=p)) if ctx.needs_input_grad[0] else None
        d_w = torch.nn.grad.conv2d_weight(d_out, weight.shape, g, padding=p) if ctx.needs_input_grad[1] else None
        return d_g, d_w, None


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
    (the DGM has no bias in generation; b enters through the latent prior eta, eq. 13)."""

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
        return self._normalise(f), None

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return self._normalise(g)

    def _normalise(self, t: Tensor) -> Tensor:
        if fused.accepts(t):
            return fused.norm_bias_relu(t, None, None, False, self.eps)[0]
        return _RMSNormHW.apply(t, self.eps)


class _RMSNormHW(torch.autograd.Function):
    """y = f * r with r = (mean_{H,W} f^2 + eps)^(-1/2), per sample and channel, with the
    analytic gradient df = r * (dy - y * mean_{H,W}(dy * y)). Same values as
    F.rms_norm(f, f.shape[-2:]); its backward is one fused expression instead of autograd's
    chain of pow / mean / rsqrt / mul nodes, which made normalisation the slowest part of a
    training step. First-order only (training and attacks need no more)."""

    @staticmethod
    def forward(ctx, f: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(f.square().mean((-2, -1), keepdim=True) + eps)
        y = f * r
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        y, r = ctx.saved_tensors
        dot = (dy * y).mean((-2, -1), keepdim=True)
        # r * (dy - dot * y) as one fused multiply-add and an in-place scaling: two passes over
        # the map instead of four (half the time of the training step's slowest elementwise op)
        return torch.addcmul(dy, y, dot, value=-1).mul_(r), None


class AdaReLU(FeedbackLayer):
    """AdaReLU (eq. 3 read through Theorem 2.1.C): out = z * f with latent z_R = 1(f > 0) on the
    first pass and z_R = 1(f * g > 0) when driven by feedback g. Feedback: z * g.

    Eq. 3 prints ReLU(-f) for g < 0; the MAP derivation (eq. 18, Lemma A.1) passes z * f,
    which is what the generative-classifier identity test pins down.

    z_R is a bool map: the fused kernels (`cnnf.fused`) write and read one byte per value
    instead of four, and training keeps a quarter of the memory for the latents of every step
    (benchmarks/README.md). It carries no gradient (it is piecewise constant)."""

    adaptive = True

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        if drive is None:
            return F.relu(f), f.detach() > 0
        mask = f.detach() * drive.detach() > 0
        return f * mask, mask  # -0.0 where a negative f is masked, as the fused kernels give

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        return g * latent


class AdaPool(FeedbackLayer):
    """AdaPool (eq. 3, 19) over non-overlapping r x r windows. First pass: max-pool. Driven by
    the pooled-resolution feedback g: max where g >= 0, min where g < 0, in one pooling pass
    as s * maxpool(s * f) with s = sign(g) in {+1, -1}. Latent z_P: the flat index h * W + w of
    the chosen position in each window, as F.max_pool2d returns it but in int32: half the bytes,
    which the fused kernels write and read at every pass (benchmarks/README.md). Feedback:
    unpool g to the chosen positions."""

    adaptive = True

    def __init__(self, size: int, input_size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.input_size = input_size

    def forward(self, f: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Latent]:
        if fused.accepts(f, drive):  # the spec ensures r divides H and W
            return fused.adaptive_pool(f, drive, self.size)
        if drive is None:
            pooled, index = F.max_pool2d(f, self.size, return_indices=True)
            return pooled, index.int()
        # +1 where g >= 0 (-0.0 included), else -1: sign(g) + 0.5 has the wanted sign. Four
        # times faster than ge(0).to(dtype) * 2 - 1 (bool -> float casts are slow on CPU).
        sign = drive.detach().sign().add_(0.5).sign_()
        b, c, h, w = sign.shape
        r = self.size
        # every r x r window times its sign, by broadcasting (B, C, h, r, w, r) * (B, C, h, 1, w, 1)
        signed = (f.view(b, c, h, r, w, r) * sign.view(b, c, h, 1, w, 1)).view_as(f)
        pooled, index = F.max_pool2d(signed, r, return_indices=True)
        return pooled * sign, index.int()

    def feedback(self, g: Tensor, latent: Latent) -> Tensor:
        if fused.accepts(g) and fused.accepts_latents(latent):
            return fused.unpool(g, latent, self.size)
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
        return channels_last(g.view(g.shape[0], *self.shape))


def channels_last(t: Tensor) -> Tensor:
    """t in channels-last memory (NHWC strides; same shape and values). Every (B, C, H, W)
    feature map of the network is kept in this one layout: torch's CPU convolutions and
    pooling run faster in it, and elementwise ops on operands of mixed layouts are slow.

    One-channel maps (images) are the same bytes in either layout, and `contiguous` leaves
    their NCHW strides; they get the NHWC strides (C stride 1) as a view instead, without
    which oneDNN took them for NCHW and ran the first convolution 3.7x slower with its output
    copied to channels-last (benchmarks/README.md)."""
    if t.dim() == 4 and t.shape[1] == 1 and t.is_contiguous():
        batch, _, height, width = t.shape
        return t.view(batch, height, width, 1).permute(0, 3, 1, 2)
    return t.contiguous(memory_format=torch.channels_last)
