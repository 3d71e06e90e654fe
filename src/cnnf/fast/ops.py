"""The fast backend's per-layer operations: what each reference layer of `cnnf.layers` computes,
with CPU-friendly layouts, hand-written backwards and the fused kernels where they apply.

Every (B, C, H, W) feature map is kept channels-last (NHWC strides): torch's CPU convolutions
and pooling are faster in that layout, and elementwise ops on operands of mixed layouts are
slow. Pooling choices are int32 flat indices (half the bytes of torch's int64 ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf import layers
from cnnf.fast import kernels


def forward(layer: layers.FeedbackLayer, f: Tensor, drive: Tensor | kernels.PooledDrive | None):
    """(out, latent): what `layer(f, drive)` returns, computed the fast way."""
    if isinstance(layer, layers.Conv2d):
        return channels_last(F.conv2d(channels_last(f), layer.weight, stride=layer.stride, padding=layer.padding)), None
    if isinstance(layer, layers.InstanceNorm):
        return normalise(f, layer.eps), None
    if isinstance(layer, layers.AdaPool):
        if kernels.accepts(f, drive):
            return kernels.adaptive_pool(f, drive, layer.size)
        pooled, index = layer(f, drive)
        return pooled, index.int()
    return layer(f, kernels.as_map(drive))


def feedback(layer: layers.FeedbackLayer, g: Tensor, latent: Tensor | None) -> Tensor:
    """What `layer.feedback(g, latent)` returns, computed the fast way."""
    if isinstance(layer, layers.Conv2d):
        if layer.weight.shape[1] == 1 and layer.stride == 1 and g.device.type == "cpu":  # to one channel, e.g. the pixels
            return _ConvTransposeToOneChannel.apply(g, layer.weight, layer.padding)
        return channels_last(F.conv_transpose2d(g, layer.weight, stride=layer.stride, padding=layer.padding,
                                                output_padding=layer.output_padding))
    if isinstance(layer, layers.InstanceNorm):
        return normalise(g, layer.eps)
    if isinstance(layer, layers.AdaPool):
        if kernels.accepts(g) and kernels.accepts_latents(latent):
            return kernels.unpool(g, latent, layer.size)
        return channels_last(layer.feedback(g, latent))
    if isinstance(layer, layers.Flatten):
        return channels_last(layer.feedback(g, latent))
    return layer.feedback(g, latent)


def normalise(t: Tensor, eps: float) -> Tensor:
    """The paper's instance norm t / sqrt(mean_{H,W} t^2 + eps), by a kernel or `_RMSNormHW`."""
    if kernels.accepts(t):
        return kernels.norm_bias_relu(t, None, None, False, eps)[0]
    return _RMSNormHW.apply(t, eps)


def reconstruction_error(reconstructions: Sequence[Tensor], target: Tensor) -> Tensor:
    """mean_t F.mse_loss(g_t, target): one kernel sweep over all steps forward and backward, or
    per step on (B, H, W, C) views. The value is the same; a view's gradient keeps the maps'
    channels-last layout, where F.mse_loss on the (B, C, H, W) map would return an NCHW one that
    the layers below copy back (one channel, the pixels, is the same memory in both orders)."""
    if kernels.accepts_squared_errors(reconstructions, target):
        return kernels.mean_squared_errors(reconstructions, target)
    if target.dim() == 4 and target.shape[1] > 1:
        reconstructions = [g.permute(0, 2, 3, 1) for g in reconstructions]
        target = target.permute(0, 2, 3, 1)
    return torch.stack([F.mse_loss(g, target) for g in reconstructions]).mean()


def channels_last(t: Tensor) -> Tensor:
    """t in channels-last memory (NHWC strides; same shape and values); other ranks unchanged.

    One-channel maps (images) are the same bytes in either layout, and `contiguous` leaves
    their NCHW strides; they get the NHWC strides (C stride 1) as a view instead, without
    which oneDNN took them for NCHW and ran the first convolution 3.7x slower with its output
    copied to channels-last (benchmarks/README.md)."""
    if t.dim() != 4:
        return t
    if t.shape[1] == 1 and t.is_contiguous():
        batch, _, height, width = t.shape
        return t.view(batch, height, width, 1).permute(0, 3, 1, 2)
    return t.contiguous(memory_format=torch.channels_last)


class _ConvTransposeToOneChannel(torch.autograd.Function):
    """F.conv_transpose2d(g, w, padding=p) for w (C, 1, k, k), stride 1, as one matmul
    (B*H*W, C) x (C, k*k) and k*k shifted adds. Same values as F.conv_transpose2d up to the
    order of the sums. On CPU oneDNN's kernel for a single output channel ran at ~10 GFLOP/s:
    this form was 3x faster forward. The backward is oneDNN's convolution from one channel,
    which is fast on maps with NHWC strides: the input gradient is F.conv2d of the output
    gradient (the adjoint), the weight gradient conv2d's, with input and output swapped: half
    the time of matmuls on the unfolded gradient (benchmarks/README.md)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
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
    @torch.amp.custom_bwd(device_type="cpu")  # under autocast (bf16), as the forward ran
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        g, weight = ctx.saved_tensors
        d_out, p = channels_last(d_out), ctx.padding
        d_g = channels_last(F.conv2d(d_out, weight, padding=p)) if ctx.needs_input_grad[0] else None
        d_w = torch.nn.grad.conv2d_weight(d_out, weight.shape, g, padding=p) if ctx.needs_input_grad[1] else None
        return d_g, d_w, None


class _RMSNormHW(torch.autograd.Function):
    """y = f * r with r = (mean_{H,W} f^2 + eps)^(-1/2), per sample and channel, with the
    analytic gradient df = r * (dy - y * mean_{H,W}(dy * y)): one fused expression instead of
    autograd's chain of pow / mean / rsqrt / mul nodes, which made normalisation the slowest
    part of a training step. First-order only (training and attacks need no more)."""

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
        # the map instead of four
        return torch.addcmul(dy, y, dot, value=-1).mul_(r), None
