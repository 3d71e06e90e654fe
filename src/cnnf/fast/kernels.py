"""Fused CPU kernels for the memory-bound layers, with autograd (C++ in `csrc/fused.cpp`).

Instance norm, bias and AdaReLU each pass over the whole batch's feature map when run layer by
layer; the kernels do the three in one sweep per sample, whose map stays in cache, with AdaPool
as well where it follows (its signed max / min and indices; the map before the pool is never
written), the feedback through the same layers in one more, and the reconstruction loss over
all steps in one sweep forward and backward. The extension is compiled on first use with
torch's JIT builder (gcc and ninja; `make setup` builds it) and cached under
~/.cache/torch_extensions. Where it cannot be built, or inside `use_kernels(False)`,
`available()` is False and the fast backend runs its torch code instead
(tests/test_backends.py compares both with the reference layers in float64).

Kernels take channels-last float32 / float64 maps on the CPU (the layout the fast backend keeps).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("csrc") / "fused.cpp"

# gcc vector flags per torch's detected CPU capability; the capability is in the extension's
# name, so a build cached in a shared home directory is never loaded on a CPU that lacks it
_VECTOR_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}

_enabled = True


@functools.cache
def _extension():
    """The compiled module, or None (with one warning) where it cannot be built."""
    capability = torch.backends.cpu.get_cpu_capability()
    version = torch.__version__.split("+")[0].replace(".", "")
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name=f"cnnf_fused_{capability.lower()}_torch{version}",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp", *_VECTOR_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # no compiler, no ninja, a failed build: the torch code runs
        warnings.warn(f"cnnf: fused CPU kernels unavailable, the fast backend runs torch code ({error})", stacklevel=2)
        return None


def available() -> bool:
    """True if the kernels are switched on and compiled (builds them on the first call)."""
    return _enabled and _extension() is not None


def build() -> None:
    """Compile the kernels now (`make setup` does); raises if that fails."""
    _extension.cache_clear()
    if _extension() is None:
        raise RuntimeError("building the fused kernels failed; see the warning above (gcc and ninja are needed)")


@contextlib.contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Within this context the fast backend uses its kernels (True) or its torch code only
    (False): the same values to rounding (for tests and `benchmarks/speedup.py`)."""
    global _enabled
    previous, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = previous


@contextlib.contextmanager
def runtime_channel_counts():
    """Within this context the kernels take every channel count at run time, instead of as the
    compile-time constant they use for 16, 32 and 64 channels: the same values, slower (for the
    tests that compare both and benchmarks)."""
    extension = _extension()
    extension.set_fixed_channels(False)
    try:
        yield
    finally:
        extension.set_fixed_channels(True)


@dataclass(frozen=True)
class PooledDrive:
    """The drive of an AdaReLU that an AdaPool follows, kept at the pooled resolution: the map
    u = unpool(pooled, index) (each size x size window's `pooled` value at the pixel `index`
    chose, zeros elsewhere), never written. The fused feedback returns it with drives_only
    (`run_feedback_segment`); the fused forward reads u through the index (`norm_bias_relu_pool`),
    and `unpooled()` writes the map for the layer-by-layer path (`as_map`)."""

    pooled: Tensor
    index: Tensor
    size: int

    def unpooled(self) -> Tensor:
        return unpool(self.pooled, self.index, self.size)


def as_map(drive: Tensor | PooledDrive | None) -> Tensor | None:
    """A drive as the map the layers read: a PooledDrive unpooled, anything else as it is."""
    return drive.unpooled() if isinstance(drive, PooledDrive) else drive


def accepts(*maps: Tensor | PooledDrive | None) -> bool:
    """Whether the kernels take these maps: available, channels-last, float32 / float64, on CPU
    (a PooledDrive by its pooled map; its index comes from the kernels)."""
    return available() and all(m is None or _kernel_map(m.pooled if isinstance(m, PooledDrive) else m) for m in maps)


def _kernel_map(m: Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> bool:
    """A (B, C, H, W) channels-last map on CPU of one of `dtypes` (the kernels' feature maps by default)."""
    return (m.dim() == 4 and m.device.type == "cpu" and m.dtype in dtypes
            and m.is_contiguous(memory_format=torch.channels_last))


def accepts_latents(*latents: Tensor | None) -> bool:
    """Whether the kernels take these latents (None skipped): their own bool masks and int32
    pooling indices, channels-last, on CPU."""
    return all(z is None or _kernel_map(z, (torch.bool, torch.int32)) for z in latents)


def norm_bias_relu(f: Tensor, bias: Tensor | None, drive: Tensor | None, relu: bool, eps: float):
    """InstanceNorm, then + bias (C,) if given, then AdaReLU if `relu` (driven by `drive`, the
    feedback at the ReLU's output, or plain on the first pass). f: (B, C, H, W) channels-last.
    Returns (out like f, bool mask like f or None without relu)."""
    out, mask = _NormBiasReLU.apply(f, bias, _detached(drive), relu, eps)
    return out, (mask if relu else None)


class _NormBiasReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, bias, drive, relu, eps):
        out, mask, r = _extension().norm_bias_relu_forward(f, _or_empty(bias), _or_empty(drive), relu, eps)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(f, r, mask if relu else None)
        ctx.mark_non_differentiable(mask)
        ctx.set_materialize_grads(False)  # d_mask stays None instead of a map of zeros
        return out, mask

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_mask):
        if d_out is None:  # only the (non-differentiable) mask was used
            return None, None, None, None, None
        f, r, mask = ctx.saved_tensors
        d_f, d_b = _extension().norm_bias_relu_backward(d_out, f, r, _or_empty(mask))
        return d_f, (d_b.sum(0) if ctx.has_bias else None), None, None, None


def norm_bias_relu_pool(f: Tensor, bias: Tensor | None, relu_drive: Tensor | PooledDrive | None,
                        pool_drive: Tensor | None, relu: bool, size: int, eps: float):
    """`norm_bias_relu`, then `adaptive_pool` (size x size windows, driven by `pool_drive`) in
    one sweep per sample, without writing the map in between. f: (B, C, H, W) channels-last.
    relu_drive: a map like f, or a PooledDrive of pool_drive (read through its index).
    Returns (pooled (B, C, H/size, W/size), the ReLU's mask like f or None, the pool's index)."""
    relu_drive_index = None
    if isinstance(relu_drive, PooledDrive):
        if relu_drive.pooled is pool_drive and relu_drive.size == size:
            relu_drive, relu_drive_index = None, relu_drive.index
        else:
            relu_drive = relu_drive.unpooled()
    pooled, mask, index = _NormBiasReLUPool.apply(f, bias, _detached(relu_drive), relu_drive_index,
                                                  _detached(pool_drive), relu, size, eps)
    return pooled, (mask if relu else None), index


class _NormBiasReLUPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, bias, relu_drive, relu_drive_index, pool_drive, relu, size, eps):
        pooled, index, mask, r = _extension().norm_bias_relu_pool_forward(
            f, _or_empty(bias), _or_empty(relu_drive), _or_empty(relu_drive_index), _or_empty(pool_drive), relu, size,
            eps)
        ctx.has_bias, ctx.size = bias is not None, size
        ctx.save_for_backward(f, r, mask if relu else None, index)
        ctx.mark_non_differentiable(mask, index)
        ctx.set_materialize_grads(False)  # the mask's and index's gradients stay None
        return pooled, mask, index

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_pooled, d_mask, d_index):
        if d_pooled is None:  # only the (non-differentiable) latents were used
            return None, None, None, None, None, None, None, None
        f, r, mask, index = ctx.saved_tensors
        d_f, d_b = _extension().norm_bias_relu_pool_backward(d_pooled, f, r, _or_empty(mask), index, ctx.size)
        return d_f, (d_b.sum(0) if ctx.has_bias else None), None, None, None, None, None, None


def adaptive_pool(f: Tensor, drive: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
    """AdaPool over size x size windows: max where drive >= 0 (or without drive), min where
    drive < 0. f: (B, C, H, W) channels-last; drive: (B, C, H/size, W/size) or None.
    Returns (pooled, flat index (int32) of the chosen pixel per (sample, channel) plane)."""
    return _AdaptivePool.apply(f, _detached(drive), size)


class _AdaptivePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, drive, size):
        pooled, index = _extension().adaptive_pool_forward(f, _or_empty(drive), size)
        ctx.size = size
        ctx.save_for_backward(index)
        ctx.mark_non_differentiable(index)
        ctx.set_materialize_grads(False)  # d_index stays None instead of a map of zeros
        return pooled, index

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_pooled, d_index):
        if d_pooled is None:  # only the (non-differentiable) index was used
            return None, None, None
        (index,) = ctx.saved_tensors
        d_pooled = d_pooled.contiguous(memory_format=torch.channels_last)
        return _extension().unpool_forward(d_pooled, index, ctx.size), None, None  # d_f: d_pooled at the chosen pixels


def unpool(g: Tensor, index: Tensor, size: int) -> Tensor:
    """AdaPool's feedback: g (B, C, h, w) at the pixels `index` chose (from `adaptive_pool`),
    zeros elsewhere; (B, C, h * size, w * size), channels-last."""
    return _Unpool.apply(g, index, size)


class _Unpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, index, size):
        ctx.size = size
        ctx.save_for_backward(index)
        return _extension().unpool_forward(g, index, size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_full):
        (index,) = ctx.saved_tensors
        return _extension().unpool_backward(d_full, index, ctx.size), None, None


def feedback_norm(g: Tensor, index: Tensor | None, mask: Tensor | None, size: int, eps: float,
                  drives_only: bool = False):
    """The feedback (eq. 2) through [InstanceNorm, Bias, AdaReLU?, AdaPool?] in one kernel, g at
    the run's output: u = unpool(g) with AdaPool's `index` (g pooled), m = mask * u with
    AdaReLU's mask, out = InstanceNorm(m). At least one of index and mask. Returns
    (u or None, m or None, out); u and m are the signals arriving at the ReLU and the bias.
    drives_only: return neither (the ReLU's drive u is then a `PooledDrive` of g); the maps not
    returned are never written, which saves a pass over memory per map."""
    keep_unpooled = index is not None and not drives_only
    keep_masked = mask is not None and not drives_only
    outputs = list(_FeedbackNorm.apply(g, index, mask, size, eps, keep_unpooled, keep_masked))
    unpooled = outputs.pop(0) if keep_unpooled else None
    masked_map = outputs.pop(0) if keep_masked else None
    return unpooled, masked_map, outputs[0]


class _FeedbackNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, index, mask, size, eps, keep_unpooled, keep_masked):
        unpooled, masked, out, r = _extension().feedback_norm_forward(g, _or_empty(index), _or_empty(mask), size, eps,
                                                                      keep_unpooled, keep_masked)
        ctx.size, ctx.keep_unpooled, ctx.keep_masked, ctx.masked = size, keep_unpooled, keep_masked, mask is not None
        ctx.save_for_backward(out, r, index, mask)
        ctx.set_materialize_grads(False)  # unused outputs' gradients stay None
        return (*((unpooled,) if keep_unpooled else ()), *((masked,) if keep_masked else ()), out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        out, r, index, mask = ctx.saved_tensors
        grads = list(grads)
        d_unpooled = grads.pop(0) if ctx.keep_unpooled else None
        d_masked = grads.pop(0) if ctx.keep_masked else None
        d_out = torch.zeros_like(out) if grads[0] is None else grads[0]  # only the signals were used
        # the gradient of the map the norm read adds before the mask; u's (if masked) after it
        d_normed, d_after_mask = (d_masked, d_unpooled) if ctx.masked else (d_unpooled, None)
        d_g = _extension().feedback_norm_backward(d_out, out, r, _or_empty(index), _or_empty(mask),
                                                  _or_empty(d_normed), _or_empty(d_after_mask), ctx.size)
        return d_g, None, None, None, None, None, None


def accepts_squared_errors(reconstructions: Sequence[Tensor], target: Tensor) -> bool:
    """Whether `mean_squared_errors` takes these: maps as `accepts` wants, every reconstruction
    with the target's shape and strides."""
    return bool(reconstructions) and accepts(target, *reconstructions) and all(
        g.shape == target.shape and g.stride() == target.stride() and g.dtype == target.dtype for g in reconstructions
    )


def mean_squared_errors(reconstructions: Sequence[Tensor], target: Tensor) -> Tensor:
    """mean_t mean((g_t - target)^2) over the reconstructions g_t: the mean of F.mse_loss(g_t,
    target), in one sweep forward and one backward (the target's gradient summed over t there,
    not by autograd adding T maps). A 0-dim tensor of the target's dtype."""
    return _MeanSquaredErrors.apply(target, *reconstructions)


class _MeanSquaredErrors(torch.autograd.Function):
    @staticmethod
    def forward(ctx, target, *reconstructions):
        sums = _extension().squared_error_sums(list(reconstructions), target)
        ctx.save_for_backward(target, *reconstructions)
        return (sums.sum() / (target.numel() * len(reconstructions))).to(target.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_loss):
        target, *reconstructions = ctx.saved_tensors
        scale = 2 * d_loss.item() / (target.numel() * len(reconstructions))
        wanted = [*ctx.needs_input_grad[1:], ctx.needs_input_grad[0]]
        *d_reconstructions, d_target = _extension().squared_errors_backward(reconstructions, target, scale, wanted)
        return d_target, *d_reconstructions


def _detached(t: Tensor | None) -> Tensor | None:
    """A drive without its graph: the kernels treat drives as constants (the latents' sign)."""
    return None if t is None else t.detach()


def _or_empty(t: Tensor | None) -> Tensor:
    return torch.empty(0) if t is None else t
