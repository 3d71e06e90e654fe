"""The compiled kernels of `cnnf.fast` against the reference layers, one kernel at a time
(tests/test_backends.py compares whole models)."""

import pytest
import torch

from cnnf import layers
from cnnf.fast import kernels, ops, passes

pytestmark = [
    pytest.mark.usefixtures("float64"),
    pytest.mark.skipif(not kernels.available(), reason="fused kernels not built (no compiler)"),
]


def _map(*shape, zeros=0.0):
    """A channels-last float64 map with a fraction `zeros` of exact zeros (ties for pooling)."""
    t = torch.randn(*shape, dtype=torch.float64)
    t[torch.rand(*shape) < zeros] = 0.0
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("relu", ["none", "plain", "driven"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_norm_bias_relu_gradient(relu, with_bias):
    torch.manual_seed(0)
    f = _map(2, 3, 4, 5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    drive = _map(2, 3, 4, 5) if relu == "driven" else None

    def run(f, *b):
        return kernels.norm_bias_relu(f, b[0] if b else None, drive, relu != "none", 1e-8)[0]

    assert torch.autograd.gradcheck(run, (f, bias) if with_bias else (f,))


# 5 and 8 channels run the kernels' loops with a runtime count; 16, 32 and 64 their
# compile-time instances (`with_channels` in csrc/kernels.cpp)
CHANNELS = [5, 16, 32, 64]


@pytest.mark.parametrize("channels", [8, 16, 32, 64])
@pytest.mark.parametrize("driven", [False, True])
def test_norm_bias_relu_equals_the_layers(driven, channels):
    torch.manual_seed(1)
    norm, bias, relu = layers.InstanceNorm(), layers.Bias(channels, spatial=True).double(), layers.AdaReLU()
    torch.nn.init.normal_(bias.bias)
    f = _map(3, channels, 6, 6).requires_grad_()
    drive = _map(3, channels, 6, 6, zeros=0.2) if driven else None
    if driven:
        drive[0, 0, 0, :3] = torch.tensor([0.0, -0.0, -1.0])
    weights = _map(3, channels, 6, 6)
    out, (_, _, mask) = passes.run_norm_segment([norm, bias, relu], f, (None, None, drive))
    grads = torch.autograd.grad((out * weights).sum(), [f, bias.bias])
    expected, expected_mask = relu(bias(norm(f)[0])[0], drive)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [f, bias.bias])
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(mask, expected_mask)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(grads, expected_grads))
    assert out.is_contiguous(memory_format=torch.channels_last)


_POOLED_RUNS = {  # [norm, bias, relu?, pool]: (relu, ReLU driven, pool driven)
    "pool": (False, False, False), "driven-pool": (False, False, True), "relu+pool": (True, False, False),
    "driven-relu+pool": (True, True, True), "driven-relu+plain-pool": (True, True, False),
}


def _pooled_run(variant: str, channels: int = 5):
    """Layers [norm, bias, relu?, pool] on 6x8 maps, their input and drives."""
    relu, relu_driven, pool_driven = _POOLED_RUNS[variant]
    run = [layers.InstanceNorm(), layers.Bias(channels, spatial=True).double()]
    torch.nn.init.normal_(run[1].bias)
    run += [layers.AdaReLU()] if relu else []
    run.append(layers.AdaPool(2, (6, 8)))
    drives = [None] * len(run)
    if relu_driven:
        drives[2] = _map(2, channels, 6, 8, zeros=0.3)
    if pool_driven:
        drives[-1] = _map(2, channels, 3, 4, zeros=0.3)
        drives[-1][0, 0, 0, :2] = torch.tensor([0.0, -0.0])  # signed zeros pick max
    return run, _map(2, channels, 6, 8, zeros=0.1), drives


@pytest.mark.parametrize("variant", _POOLED_RUNS)
def test_norm_bias_relu_pool_gradient(variant):
    torch.manual_seed(5)
    run, f, drives = _pooled_run(variant)
    relu = isinstance(run[2], layers.AdaReLU)
    bias = run[1].bias.detach().clone().requires_grad_()
    f = (f + 0.01 * torch.randn_like(f)).requires_grad_()  # no exact ties: the pool's choice is smooth
    assert torch.autograd.gradcheck(
        lambda f, b: kernels.norm_bias_relu_pool(f, b, drives[2] if relu else None, drives[-1], relu, 2, 1e-8)[0],
        (f, bias))


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("variant", _POOLED_RUNS)
def test_norm_bias_relu_pool_equals_the_layers(variant, channels):
    torch.manual_seed(6)
    run, f, drives = _pooled_run(variant, channels)
    f.requires_grad_()
    weights = _map(2, channels, 3, 4)
    out, latents = passes.run_norm_segment(run, f, drives)
    fused_grads = torch.autograd.grad((out * weights).sum(), [f, run[1].bias])
    expected, expected_latents = f, []
    for layer, drive in zip(run, drives):
        expected, latent = layer(expected, drive)
        expected_latents.append(latent)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [f, run[1].bias])
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-14)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(latents, expected_latents))
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(fused_grads, expected_grads))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", CHANNELS)
def test_a_pooled_relu_drive_gives_what_its_map_gives(channels):
    """[norm, bias, relu, pool] with the ReLU's drive as a PooledDrive of the pool's drive (read
    through its index): the same output, latents and gradients as with the drive's map."""
    torch.manual_seed(7)
    run, f, drives = _pooled_run("driven-relu+pool", channels)
    _, index = kernels.adaptive_pool(_map(2, channels, 6, 8, zeros=0.2), None, 2)
    pooled_drive = kernels.PooledDrive(drives[-1], index, 2)
    f.requires_grad_()
    weights = _map(2, channels, 3, 4)
    results = []
    for relu_drive in (pooled_drive, pooled_drive.unpooled()):
        out, latents = passes.run_norm_segment(run, f, (None, None, relu_drive, drives[-1]))
        results.append([out, latents[2], latents[3], *torch.autograd.grad((out * weights).sum(), [f, run[1].bias])])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert results[0][1].any() and not results[0][1].all()  # the drive's zeros (unchosen pixels) masked some


@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("driven", [False, True])
def test_adaptive_pool_equals_the_layer_on_ties_and_signed_zeros(driven, channels):
    torch.manual_seed(2)
    pool = layers.AdaPool(2, (8, 8))
    f = _map(2, channels, 8, 8, zeros=0.5)  # windows with several equal zeros: the first must win
    drive = _map(2, channels, 4, 4, zeros=0.3) if driven else None
    if driven:
        drive[0, 0, 0, :2] = torch.tensor([-0.0, 0.0])  # both take the max
    x = f.clone().requires_grad_()
    pooled, index = kernels.adaptive_pool(x, drive, 2)
    (pooled * torch.arange(pooled.numel()).view_as(pooled)).sum().backward()
    y = f.clone().requires_grad_()
    expected, expected_index = pool(y, drive)
    (expected * torch.arange(expected.numel()).view_as(expected)).sum().backward()
    assert torch.equal(pooled, expected) and torch.equal(index.long(), expected_index)
    assert index.dtype == torch.int32  # half the bytes of torch's int64 indices
    assert torch.equal(x.grad, y.grad)


@pytest.mark.parametrize("channels", [5, 16])
def test_unpool_equals_the_layer_feedback_and_its_gradient(channels):
    torch.manual_seed(3)
    pool = layers.AdaPool(2, (6, 8))
    _, index = kernels.adaptive_pool(_map(2, channels, 6, 8, zeros=0.3), _map(2, channels, 3, 4), 2)
    g = _map(2, channels, 3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: kernels.unpool(t, index, 2), (g,))
    weights = torch.randn(2, channels, 6, 8, dtype=torch.float64)
    full = kernels.unpool(g, index, 2)
    (d_g,) = torch.autograd.grad((full * weights).sum(), g)
    expected = pool.feedback(g, index)
    (expected_d_g,) = torch.autograd.grad((expected * weights).sum(), g)
    assert torch.equal(full, expected) and torch.equal(d_g, expected_d_g)


def test_maps_the_kernels_do_not_take_use_the_torch_layers():
    nchw = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert kernels.accepts(nchw.contiguous(memory_format=torch.channels_last))
    assert not kernels.accepts(nchw)
    assert not kernels.accepts(nchw.to(torch.float16).contiguous(memory_format=torch.channels_last))
    out = ops.normalise(nchw, 1e-8)  # the fast backend's torch code instead of failing
    assert torch.allclose(out, torch.nn.functional.rms_norm(nchw, (4, 4), eps=1e-8))


def test_a_kernel_called_wrongly_names_the_problem():
    with pytest.raises(RuntimeError, match="channels-last"):
        kernels.norm_bias_relu(torch.randn(2, 3, 4, 4, dtype=torch.float64), None, None, True, 1e-8)
    with pytest.raises(RuntimeError, match="multiples of 2"):
        kernels.adaptive_pool(_map(1, 3, 5, 5), None, 2)


_FEEDBACK_RUNS = {"relu+pool": (True, True), "pool": (False, True), "relu": (True, False)}


def _feedback_run(relu: bool, pool: bool, channels: int = 5):
    """Layers [norm, bias, relu?, pool?] on 6x8 maps, with the latents of a driven forward
    pass (the kernels' own: bool masks, int32 indices), and g at the run's output."""
    run = [layers.InstanceNorm(), layers.Bias(channels, spatial=True).double()]
    run += [layers.AdaReLU()] if relu else []
    run += [layers.AdaPool(2, (6, 8))] if pool else []
    h, latents = _map(2, channels, 6, 8, zeros=0.2), []
    for layer in run:
        h, latent = ops.forward(layer, h, _map(*h.shape[:2], 3, 4) if isinstance(layer, layers.AdaPool) else _map(*h.shape))
        latents.append(latent)
    return run, latents, _map(*h.shape)


@pytest.mark.parametrize("variant", _FEEDBACK_RUNS)
def test_feedback_norm_gradient(variant):
    relu, pool = _FEEDBACK_RUNS[variant]
    run, latents, g = _feedback_run(relu, pool)
    index, mask = (latents[-1] if pool else None), (latents[2] if relu else None)

    def every_output(t):
        return tuple(out for out in kernels.feedback_norm(t, index, mask, 2, 1e-8) if out is not None)

    assert torch.autograd.gradcheck(every_output, (g.requires_grad_(),))


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("drives_only", [False, True], ids=["all-signals", "drives-only"])
@pytest.mark.parametrize("variant", _FEEDBACK_RUNS)
def test_feedback_segment_equals_the_layers(variant, drives_only, channels):
    """Signals, features and the gradient through all of them (eta and the norm loss use the
    signals) equal the layers' feedback one by one; with drives_only, the signals at the
    adaptive layers only, the others None, and the ReLU's below a pool a PooledDrive whose map
    is the layers' signal."""
    torch.manual_seed(4)
    relu, pool = _FEEDBACK_RUNS[variant]
    run, latents, g = _feedback_run(relu, pool, channels)
    assert kernels.accepts(g) and kernels.accepts_latents(*latents)
    g.requires_grad_()
    signals, features = passes.run_feedback_segment(run, g, latents, drives_only)
    if relu:
        assert isinstance(signals[2], kernels.PooledDrive) == (pool and drives_only)
    signals = [kernels.as_map(s) for s in signals]
    expected_signals, below = [None] * len(run), g
    for i in reversed(range(len(run))):
        if run[i].adaptive or not drives_only:
            expected_signals[i] = below
        below = run[i].feedback(below, latents[i])
    assert [s is None for s in signals] == [s is None for s in expected_signals]
    outputs = [t for t in (*signals, features) if t is not None]
    expected = [t for t in (*expected_signals, below) if t is not None]
    assert len(outputs) == len(expected) == 1 + sum(layer.adaptive or not drives_only for layer in run)
    weights = [torch.randn_like(t) for t in expected]
    (d_g,) = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, outputs)), g)
    (expected_d_g,) = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, expected)), g)
    for a, b in zip(outputs, expected):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert torch.allclose(d_g, expected_d_g, rtol=1e-10, atol=1e-12)
    assert features.is_contiguous(memory_format=torch.channels_last)


def test_feedback_segments_cover_norm_runs_with_a_relu_or_a_pool():
    import cnnf

    conv4 = cnnf.create_model("conv4_mnist").layers
    paper = cnnf.create_model("paper_mnist").layers
    assert passes.feedback_segments(paper) == {3: 1, 7: 5}  # [norm bias relu], [norm bias pool]
    assert passes.feedback_segments(conv4) == {3: 1, 7: 5, 12: 9, 17: 14}


@pytest.mark.parametrize("target_grad", [True, False], ids=["target-with-gradient", "fixed-target"])
def test_mean_squared_errors_gradient(target_grad):
    torch.manual_seed(0)
    target = _map(2, 3, 4, 5).requires_grad_(target_grad)
    reconstructions = [_map(2, 3, 4, 5).requires_grad_() for _ in range(3)]
    assert torch.autograd.gradcheck(lambda h, *gs: kernels.mean_squared_errors(gs, h), (target, *reconstructions))


def test_mean_squared_errors_equal_the_mean_of_mse_losses():
    torch.manual_seed(0)
    target = _map(3, 4, 9, 9).requires_grad_()  # 972 values: the kernel's vector loop and its tail
    reconstructions = [_map(3, 4, 9, 9).requires_grad_() for _ in range(2)]
    fast = kernels.mean_squared_errors(reconstructions, target)
    plain = torch.stack([torch.nn.functional.mse_loss(g, target) for g in reconstructions]).mean()
    assert torch.allclose(fast, plain, rtol=1e-12, atol=0)
    weights = torch.rand(())  # an upstream gradient other than 1
    for a, b in zip(torch.autograd.grad(fast * weights, [target, *reconstructions]),
                    torch.autograd.grad(plain * weights, [target, *reconstructions])):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
        assert a.is_contiguous(memory_format=torch.channels_last)


def test_mean_squared_errors_take_only_maps_laid_out_like_the_target():
    target = _map(2, 3, 4, 5)
    assert kernels.accepts_squared_errors([_map(2, 3, 4, 5)], target)
    assert not kernels.accepts_squared_errors([_map(2, 3, 4, 5).contiguous()], target)  # NCHW strides
    assert not kernels.accepts_squared_errors([_map(2, 3, 5, 4)], _map(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="target's shape, strides and dtype"):
        kernels.mean_squared_errors([_map(2, 3, 4, 5).contiguous()], target)


def test_compile_time_channel_counts_change_no_float32_value():
    """The kernels' instances for 16, 32 and 64 channels give float32 models (the dtype they
    run in) exactly the values of the runtime-count loops: logits and gradients."""
    import cnnf

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = cnnf.create_model("conv4_mnist", iterations=2)
    x = torch.rand(4, 1, 28, 28) * 2 - 1

    def logits_and_gradients():
        logits = model(x)
        return [logits, *torch.autograd.grad(logits.square().sum(), list(model.parameters()))]

    fixed = logits_and_gradients()
    with kernels.runtime_channel_counts():
        runtime = logits_and_gradients()
    assert all(torch.equal(a, b) for a, b in zip(fixed, runtime))
