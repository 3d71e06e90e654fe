"""Residual blocks and the larger architectures (docs/DESIGN.md section 2, "Residual blocks").

A residual block's feedback is the adjoint of its feedforward map at fixed latents; the drives
reach its inner layers; WRN-40-2 and VGG-16 keep the generative-classifier identity (Lemma A.1,
without instance norm) and the feedback equals autograd's vector-Jacobian product, on both
backends, which agree on every loss term and gradient. The small variants come from the same
spec builders as the registered networks (`cnnf.zoo.wide_resnet`, `cnnf.zoo.vgg`).
"""

import pytest
import torch

import cnnf
from cnnf import architecture, checkpoint, layers, neuro
from cnnf.fast import kernels
from cnnf.layers import AdaReLU, Branches, Conv2d, GlobalAvgPool, Residual
from cnnf.zoo import vgg, wide_resnet
from test_backends import CLOSE, _everything
from test_model import assert_model_contract

pytestmark = pytest.mark.usefixtures("float64")

SMALL = {
    # depth 10: one basic block per group, so both kinds of residual block (identity and
    # 1x1-convolution shortcut) and both strided groups; 16 x 16 maps down to 4 x 4
    "wrn10_1": wide_resnet(depth=10, widen=1, input_shape=(3, 16, 16)),
    "vgg_small": vgg(stages=((4, 4), (8,), (8,)), hidden=16, classes=10, input_shape=(3, 16, 16)),
}


@pytest.fixture(params=cnnf.backend.BACKENDS)
def each_backend(request):
    with cnnf.use_backend(request.param):
        yield request.param


def _with_biases(model):
    """float64, with random non-zero biases everywhere (residual blocks included), so eta counts."""
    model = model.double()
    with torch.no_grad():
        for layer, in layers.leaves(model.layers):
            if isinstance(layer, layers.Bias):
                layer.bias.normal_(0, 0.5)
    return model


def _small(name, norm=True, **settings):
    spec = SMALL[name]
    if not norm:
        spec = {**spec, "blocks": architecture.without_norm(spec["blocks"])}
    return _with_biases(cnnf.CNNF(spec, **settings))


def _images(model, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.input_shape, generator=gen, dtype=torch.float64) * 2 - 1


def _identity_gaps(model, x):
    """|<u, v(x)> - <g(0), x> - eta(u, z)| relative to |<u, v(x)>|, for the first pass and for a
    pass driven by the first pass's feedback; zero by Lemma A.1."""
    gaps, drive = [], None
    for _ in range(2):
        logits, latents = model.feedforward(x, drive=drive)
        u = torch.randn_like(logits)
        fb = model.feedback(u, latents, to_layer=0)
        lhs = (u * logits).sum(1)
        rhs = (fb.features * x).flatten(1).sum(1) + model.eta(fb)
        gaps.append(((lhs - rhs).abs() / lhs.abs()).max().item())
        drive = model.feedback(logits, latents, to_layer=0).signals
    return gaps


# --- The residual block alone ------------------------------------------------------------------


def _conv(c_in, c_out, k, pad, stride, size):
    """The Conv2d `cnnf.architecture` builds from `conv c_out k pad stride` for a size x size input."""
    spec = {"input_shape": [c_in, size, size], "blocks": [[f"conv {c_out} {k} {pad} {stride}", "avgpool"]]}
    return cnnf.CNNF(spec).layers[0]


@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
@pytest.mark.parametrize("k, pad", [(3, 1), (1, 0)])
def test_strided_convolution_feedback_is_its_adjoint(size, k, pad):
    """<W *_s f, g> = <f, W^T *_s g>: the output padding gives back the input's size, and its
    rows hold the adjoint's values (the 3x3 convolution reads the last row; the 1x1 does not)."""
    conv = _conv(3, 4, k, pad, 2, size)
    f = torch.randn(2, 3, size, size)
    out, _ = conv(f)
    g = torch.randn_like(out)
    back = conv.feedback(g, None)
    assert back.shape == f.shape
    assert conv.output_padding == (1 if size == 8 else 0)
    assert torch.allclose((out * g).sum(), (f * back).sum(), rtol=1e-12)


def test_global_average_pooling_feedback_is_its_adjoint():
    pool = GlobalAvgPool((5, 4))
    f, g = torch.randn(2, 3, 5, 4), torch.randn(2, 3)
    out, _ = pool(f)
    assert torch.allclose(out, f.mean((2, 3)))
    assert torch.allclose((out * g).sum(), (f * pool.feedback(g, None)).sum(), rtol=1e-12)


def _blocks(size):
    """An identity-shortcut block (ReLUs inside) and a strided one with a 1x1-conv shortcut."""
    same = Residual([AdaReLU(), _conv(3, 3, 3, 1, 1, size), AdaReLU(), _conv(3, 3, 3, 1, 1, size)])
    strided = Residual([_conv(3, 4, 3, 1, 2, size), AdaReLU(), _conv(4, 4, 3, 1, 1, (size + 1) // 2)],
                       [_conv(3, 4, 1, 0, 2, size)])
    return {"identity": same, "conv-shortcut": strided}


def _drive(block, f):
    """A random drive for every AdaReLU of the block, shaped as its output in a plain pass."""
    _, _, outputs = block.trace_forward(f, None, keep=True)

    def drives(path, recorded):
        return tuple(torch.randn_like(o) if isinstance(l, AdaReLU) else None for l, o in zip(path, recorded))

    return Branches(outputs.value, drives(block.branch, outputs.branch), drives(block.shortcut, outputs.shortcut))


@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
@pytest.mark.parametrize("kind", ["identity", "conv-shortcut"])
@pytest.mark.parametrize("driven", [False, True], ids=["first-pass", "driven"])
def test_residual_feedback_is_the_adjoint_at_fixed_latents(kind, size, driven):
    """<F x + S x, g> = <x, F^T g + S^T g> with F's masks those of x's pass (the map is linear
    in x at its own latents); without the shortcut's share the feedback is not the adjoint."""
    block = _blocks(size)[kind].double()
    x = torch.randn(2, 3, size, size)
    out, latent = block(x, _drive(block, x) if driven else None)
    g = torch.randn_like(out)
    back = block.feedback(g, latent)
    assert torch.allclose((out * g).sum(), (x * back).sum(), rtol=1e-12)
    branch_only, _ = layers.feedback_pass(block.branch, g, latent[0])
    assert not torch.allclose((out * g).sum(), (x * branch_only).sum(), rtol=1e-6)


def test_residual_latents_and_signals_hold_one_entry_per_inner_layer():
    block = _blocks(8)["conv-shortcut"].double()
    x = torch.randn(2, 3, 8, 8)
    out, (branch_latents, shortcut_latents) = block(x)
    assert len(branch_latents) == 3 and len(shortcut_latents) == 1
    assert torch.equal(branch_latents[1], layers.AdaReLU()(block.branch[0](x)[0])[1])
    _, signal = block.trace_feedback(torch.randn_like(out), (branch_latents, shortcut_latents))
    assert isinstance(signal, Branches) and len(signal.branch) == 3 and len(signal.shortcut) == 1


# --- Whole networks ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_generative_classifier_identity(name, each_backend):
    model = _small(name, norm=False)
    assert max(_identity_gaps(model, _images(model))) < 1e-10


@pytest.mark.parametrize("name", SMALL)
def test_feedback_is_the_vector_jacobian_product(name, each_backend):
    model = _small(name, norm=False)
    x = _images(model)
    logits, latents = model.feedforward(x)
    drive = model.feedback(logits, latents, to_layer=0).signals
    x.requires_grad_(True)
    logits, latents = model.feedforward(x, drive=drive)
    u = torch.randn_like(logits)
    (grad,) = torch.autograd.grad((u * logits).sum(), x)
    assert torch.allclose(model.generate(u.detach(), latents, to_layer=0), grad, rtol=1e-10, atol=1e-12)


def test_wrn40_2_keeps_the_identity():
    """The registered WRN-40-2 itself, on two 32 x 32 images (reference backend)."""
    with cnnf.use_backend("reference"):
        model = _with_biases(cnnf.create_model("wrn40_2_cifar", norm=None))
        assert max(_identity_gaps(model, _images(model))) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("backend", cnnf.backend.BACKENDS)
def test_vgg16_keeps_the_identity(backend):
    """The registered VGG-16 on 32 x 32 images (its layers, a 512-feature first FC layer)."""
    with cnnf.use_backend(backend):
        model = _with_biases(cnnf.create_model("vgg16", norm=None, input_shape=[3, 32, 32]))
        assert max(_identity_gaps(model, _images(model))) < 1e-10


def test_drives_reach_the_layers_inside_residual_blocks(each_backend):
    """A driven pass changes the AdaReLU masks inside the residual blocks, and the feedback's
    signal at a block holds the signal at each inner layer (the drive of its AdaReLUs)."""
    model = _small("wrn10_1", iterations=1)
    x = _images(model)
    logits, plain = model.feedforward(x)
    signals = model.feedback(logits, plain, to_layer=0).signals
    _, driven = model.feedforward(x, drive=signals)
    blocks = [i for i, layer in enumerate(model.layers) if isinstance(layer, Residual)]
    assert len(blocks) == 3
    for i in blocks:
        relus = [j for j, layer in enumerate(model.layers[i].branch) if isinstance(layer, AdaReLU)]
        assert relus and all(signals[i].branch[j] is not None for j in relus)
        assert any(not torch.equal(plain[i][0][j], driven[i][0][j]) for j in relus)


@pytest.mark.parametrize("settings", [{}, {"relu_mixing": 0.1, "residual": 0.1}], ids=["paper", "released"])
@pytest.mark.parametrize("use_kernels", [True, False], ids=["kernels", "torch-code"])
@pytest.mark.parametrize("iterations", [0, 2])
@pytest.mark.parametrize("name", SMALL)
def test_fast_backend_matches_the_reference(name, iterations, use_kernels, settings):
    """Logits, every loss term (the norm-matching term reads the bias layers inside the
    residual blocks) and every gradient; the kernels fuse the runs inside the branches. Also
    with the released code's AdaReLU mixing and state step (the WRN config's settings)."""
    model = _small(name, iterations=iterations, **settings)
    x, y = _images(model, 3), torch.tensor([0, 3, 9])
    with cnnf.use_backend("fast"), kernels.use_kernels(use_kernels):
        fast = _everything(model, x, y, "all")
    with cnnf.use_backend("reference"):
        reference = _everything(model, x, y, "all")
    assert fast.keys() == reference.keys() and (iterations == 0 or reference["loss norm"] > 0)
    for key in reference:
        assert torch.allclose(fast[key], reference[key], **CLOSE), key


def test_class_energies_through_residual_blocks():
    model = _small("wrn10_1", reconstruct_to=2)
    _, latents = model.feedforward(model.encode(_images(model)), from_layer=2)
    energies = cnnf.losses.class_energies(model, latents)
    one_hot = torch.nn.functional.one_hot(torch.full((2,), 7), 10).double()
    assert torch.allclose(energies[:, 7], model.eta(model.feedback(one_hot, latents)))


# --- The registered networks -------------------------------------------------------------------


def _count(model, kind, kernel=None):
    return sum(isinstance(l, kind) and (kernel is None or l.weight.shape[-1] == kernel)
               for l, in layers.leaves(model.layers))


def test_wrn40_2_is_the_released_network():
    """6 basic blocks per group; widths 32, 64, 128 at 32, 16, 8 pixels; 37 3x3 convolutions
    (stem and 2 per block), 3 1x1 shortcuts; k = 6 is the fifth basic block's output."""
    model = cnnf.create_model("wrn40_2_cifar")
    assert _count(model, Conv2d, 3) == 37 and _count(model, Conv2d, 1) == 3
    assert len(model.block_ends) - 1 == 1 + 18 + 1
    outputs = [model.shapes[model.block_ends[b]] for b in (1, 7, 13, 19)]
    assert outputs == [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert model.reconstruct_to == 6 and model.shapes[model.block_ends[6]] == (32, 32, 32)
    assert model.num_classes == 10 and sum(p.numel() for p in model.parameters()) == 2_240_842


def test_vgg16_is_configuration_d():
    """13 convolutions, 3 FC layers, 5 pools; torchvision's vgg16 has the same 138,357,544
    parameters (its biases are the Bias layers here). Built without memory on the meta device."""
    with torch.device("meta"):
        model = cnnf.create_model("vgg16")
    assert _count(model, Conv2d, 3) == 13 and _count(model, layers.Linear) == 3 and _count(model, layers.AdaPool) == 5
    assert model.input_shape == (3, 224, 224) and model.shapes[model.block_ends[13]] == (512, 7, 7)
    assert model.num_classes == 1000 and sum(p.numel() for p in model.parameters()) == 138_357_544


def test_registered_model_contract_wrn():
    model = cnnf.create_model("wrn40_2_cifar", iterations=1).float()
    assert_model_contract(model)


@pytest.mark.slow
def test_registered_model_contract_vgg16():
    assert_model_contract(cnnf.create_model("vgg16", iterations=1, input_shape=[3, 32, 32]).float())


def test_norm_override_removes_instance_norm_inside_residual_blocks():
    model = cnnf.create_model("wrn40_2_cifar", norm=None)
    assert _count(model, layers.InstanceNorm) == 0 and _count(model, layers.Bias) > 0


# --- Specs, checkpoints, features --------------------------------------------------------------


@pytest.mark.parametrize("token, message", [
    ({"residual": ["conv 8 3 1"]}, "give the shortcut a convolution"),
    ({"residual": ["conv 3 3 1 2"], "shortcut": ["conv 3 1"]}, "shape"),
    ({"branch": ["relu"]}, "keys"),
    ({"residual": ["conv 3 3 1 2"], "shortcut": ["conv 3 1 0 2", "relu", "nonsense"]}, "unknown layer"),
])
def test_bad_residual_specs_name_the_fix(token, message):
    spec = {"input_shape": [3, 8, 8], "blocks": [[token], ["avgpool", "linear 2"]]}
    with pytest.raises(architecture.ArchitectureError, match=message) as error:
        cnnf.CNNF(spec)
    assert "block 1" in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_round_trip_of_a_residual_network(tmp_path):
    model = _small("wrn10_1", iterations=1)
    checkpoint.save_atomic(checkpoint.model_state(model), tmp_path / "m.pt")
    loaded = checkpoint.load_model(tmp_path / "m.pt")
    x = _images(model)
    assert loaded.spec == model.spec and torch.equal(loaded(x), model(x))
    with pytest.raises(checkpoint.CheckpointError, match=r"residual\[norm, bias, relu, conv 16 3 1 1"):
        checkpoint.load_into(cnnf.create_model("paper_mnist"), checkpoint.read(tmp_path / "m.pt"), "m.pt")


def test_block_features_of_a_residual_network():
    """Neural predictivity reads a residual block's output as the block's features."""
    model = _small("wrn10_1", iterations=1, reconstruct_to=1)
    x = _images(model, 3)
    features = neuro.model_features(model, x, layers=["block2"])
    assert features[("block2", 0)].shape == (3, 16 * 16 * 16)
    assert torch.allclose(torch.from_numpy(features[("block2", 0)]), model.encode(x, 2).flatten(1))
