"""The fast backend's feedforward and feedback passes: the reference loops of `cnnf.model`,
with each run [InstanceNorm, Bias, AdaReLU?, AdaPool?] computed by one fused kernel (forward
and feedback) and every other layer by `cnnf.fast.ops`.

With `drives_only`, a feedback pass keeps only the signals the next feedforward pass reads (at
AdaReLU and AdaPool layers; None elsewhere), and the kernels never write the others. The drive
of an AdaReLU that an AdaPool follows is then a `kernels.PooledDrive`: the pooled map and the
pool's index, never unpooled.

A residual block runs its branch and its shortcut through these same two passes (so the
kernels fuse the runs inside its branch) and adds their results, as `layers.Residual` does.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from cnnf.fast import kernels, ops
from cnnf.layers import AdaPool, AdaReLU, Bias, Branches, FeedbackLayer, InstanceNorm, Residual

Signals = tuple[Tensor | kernels.PooledDrive | None, ...]


@dataclass(frozen=True)
class _Plan:
    """A model's layers and the runs the kernels compute in one call."""

    layers: tuple[FeedbackLayer, ...]  # a tuple: ModuleList indexing and slicing cost ~15 us each
    forward_runs: dict[int, int]       # index of the norm: index after the run's last layer
    feedback_runs: dict[int, int]      # index of the run's top layer: index of its norm


_plans: weakref.WeakKeyDictionary[nn.ModuleList, _Plan] = weakref.WeakKeyDictionary()


def _plan(layers: nn.ModuleList) -> _Plan:
    if layers not in _plans:
        _plans[layers] = _Plan(tuple(layers), norm_segments(layers), feedback_segments(layers))
    return _plans[layers]


def feedforward(layers: nn.ModuleList, h: Tensor, start: int, stop: int, drive: Signals | None, keep: bool):
    """Layers start..stop-1 on h, as `CNNF._up` runs them. Returns (output, latents, every
    layer's output if keep, else None); with keep, every layer runs on its own."""
    plan = _plan(layers)
    latents: list[Tensor | None] = [None] * len(plan.layers)
    outputs: list[Tensor | None] = [None] * len(plan.layers)
    i = start
    while i < stop:
        end = None if keep else plan.forward_runs.get(i)
        if end is not None and end <= stop:
            drives = (None,) * (end - i) if drive is None else drive[i:end]
            if kernels.accepts(h, *drives):
                h, latents[i:end] = run_norm_segment(plan.layers[i:end], h, drives)
                i = end
                continue
        layer, layer_drive = plan.layers[i], None if drive is None else drive[i]
        if isinstance(layer, Residual):
            h, latents[i], outputs[i] = residual_forward(layer, h, layer_drive, keep)
        else:
            h, latents[i] = ops.forward(layer, h, layer_drive)
            outputs[i] = h if keep else None
        i += 1
    return h, tuple(latents), (tuple(outputs) if keep else None)


def feedback(layers: nn.ModuleList, g: Tensor, latents: Sequence[Tensor | None], stop: int, drives_only: bool):
    """The feedback from the logits-space g down to layer `stop`, as `CNNF._down` runs it.
    Returns (features at `stop`, the signal arriving at each layer's output)."""
    plan = _plan(layers)
    signals: list[Tensor | kernels.PooledDrive | None] = [None] * len(plan.layers)
    i = len(plan.layers) - 1
    while i >= stop:
        norm = plan.feedback_runs.get(i)
        if norm is not None and norm >= stop:
            run = slice(norm, i + 1)
            if kernels.accepts(g) and kernels.accepts_latents(*latents[run]):
                signals[run], g = run_feedback_segment(plan.layers[run], g, latents[run], drives_only)
                i = norm - 1
                continue
        layer = plan.layers[i]
        if isinstance(layer, Residual):
            g, signals[i] = residual_feedback(layer, g, latents[i], drives_only)
        else:
            if layer.adaptive or not drives_only:
                signals[i] = g
            g = ops.feedback(layer, g, latents[i])
        i -= 1
    return g, tuple(signals)


def residual_forward(block: Residual, h: Tensor, drive: Branches | None,
                     keep: bool) -> tuple[Tensor, tuple, Branches | None]:
    """out = F(h) + S(h), each path by `feedforward`. Returns (out, latent, output if keep)."""
    branch_drive, shortcut_drive = (None, None) if drive is None else (drive.branch, drive.shortcut)
    fx, branch_latents, branch_outputs = feedforward(block.branch, h, 0, len(block.branch), branch_drive, keep)
    sx, shortcut_latents, shortcut_outputs = feedforward(block.shortcut, h, 0, len(block.shortcut), shortcut_drive, keep)
    out = fx + sx
    return out, (branch_latents, shortcut_latents), (Branches(out, branch_outputs, shortcut_outputs) if keep else None)


def residual_feedback(block: Residual, g: Tensor, latent: tuple, drives_only: bool) -> tuple[Tensor, Branches]:
    """F^T(g) + S^T(g), each path by `feedback`, and the signals of the inner layers."""
    branch_latents, shortcut_latents = latent
    branch_g, branch_signals = feedback(block.branch, g, branch_latents, 0, drives_only)
    shortcut_g, shortcut_signals = feedback(block.shortcut, g, shortcut_latents, 0, drives_only)
    return branch_g + shortcut_g, Branches(g, branch_signals, shortcut_signals)


def norm_segments(layers: Sequence[nn.Module]) -> dict[int, int]:
    """Runs of InstanceNorm, spatial Bias, optionally AdaReLU (the paper's, without mixing) and
    optionally AdaPool that `run_norm_segment` computes in one kernel: {index of the norm: index
    after the run's last layer}."""
    runs = {}
    for i in range(len(layers) - 1):
        if isinstance(layers[i], InstanceNorm) and isinstance(layers[i + 1], Bias) and layers[i + 1].spatial:
            end = i + 2
            if end < len(layers) and isinstance(layers[end], AdaReLU):
                if layers[end].mixing:  # the kernels implement the paper's AdaReLU only
                    runs[i] = end
                    continue
                end += 1
            if end < len(layers) and isinstance(layers[end], AdaPool):
                end += 1
            runs[i] = end
    return runs


def feedback_segments(layers: Sequence[nn.Module]) -> dict[int, int]:
    """Runs [InstanceNorm, spatial Bias, AdaReLU?, AdaPool?] with a ReLU or a pool, whose
    feedback `run_feedback_segment` computes in one kernel: {index of the run's top layer
    (where the feedback enters): index of the norm}."""
    return {stop - 1: norm for norm, stop in norm_segments(layers).items() if stop - 1 > norm + 1}


def run_norm_segment(layers: Sequence[nn.Module], h: Tensor, drives: Sequence[Tensor | kernels.PooledDrive | None]):
    """The layers of one `norm_segments` run on h, AdaReLU and AdaPool (if in the run) driven
    by their entries of `drives` (one per layer). Returns (output, latents, one per layer):
    what the layers one by one return."""
    norm, bias, *rest = layers
    relu = bool(rest) and isinstance(rest[0], AdaReLU)
    pool = rest[-1] if rest and isinstance(rest[-1], AdaPool) else None
    relu_drive = drives[2] if relu else None
    latents: list[Tensor | None] = [None] * len(layers)
    if pool is None:
        h, latents[-1] = kernels.norm_bias_relu(h, bias.bias, kernels.as_map(relu_drive), relu, norm.eps)
        return h, tuple(latents)
    h, mask, latents[-1] = kernels.norm_bias_relu_pool(h, bias.bias, relu_drive, drives[-1], relu, pool.size, norm.eps)
    if relu:
        latents[2] = mask
    return h, tuple(latents)


def run_feedback_segment(layers: Sequence[nn.Module], g: Tensor, latents: Sequence[Tensor | None],
                         drives_only: bool = False):
    """The feedback of one run [InstanceNorm, Bias, AdaReLU?, AdaPool?] with a ReLU or a pool, g
    at its top layer's output, latents one per layer of the run. Returns (signals arriving at
    each layer's output, features below the norm): what the layers' `feedback` one by one
    give; with drives_only, the signals only at the adaptive layers (None at the norm and the
    bias), which the kernel then never writes, and the ReLU's drive below a pool as a
    `PooledDrive` of g."""
    norm, *_ = layers
    pool = layers[-1] if isinstance(layers[-1], AdaPool) else None
    relu_at = next((i for i, layer in enumerate(layers) if isinstance(layer, AdaReLU)), None)
    index = latents[-1] if pool else None
    mask = None if relu_at is None else latents[relu_at]
    unpooled, masked, features = kernels.feedback_norm(g, index, mask, pool.size if pool else 1, norm.eps, drives_only)
    if pool is None:
        above_relu = g  # the signal at the ReLU's output
    else:
        above_relu = unpooled if unpooled is not None else kernels.PooledDrive(g, index, pool.size)
    below_relu = above_relu if mask is None else masked  # at the bias and the norm
    signals = [None, None] if drives_only else [below_relu, below_relu]
    if relu_at is not None:
        signals.append(above_relu)
    if pool is not None:
        signals.append(g)
    return tuple(signals), features
