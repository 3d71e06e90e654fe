"""Attacks (docs/DESIGN.md section 6): threat model, sanity orderings, gradient sources, registry,
and cross-checks against torchattacks and AutoAttack. Everything runs on a few images or on a
tiny CNN-F trained for a few steps here on a synthetic task (one CPU thread)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnf
from cnnf.attacks import (
    ATTACKS,
    AttackSpec,
    TARGETS,
    autoattack,
    default_step_size,
    fgsm,
    gradient_source,
    parse_attacks,
    pgd,
    project,
    spsa,
)
from cnnf.attacks import auto_attack, fast_gradient, projected_gradient, simultaneous_perturbation
from cnnf.attacks.simultaneous_perturbation import _estimate_gradient, _margin
from cnnf.model import CNNF

TINY = {
    "input_shape": [1, 12, 12],
    "blocks": [
        ["conv 8 3", "norm", "bias", "relu"],
        ["conv 16 3", "norm", "bias", "pool 2"],
        ["flatten", "linear 32", "bias", "relu"],
        ["linear 10", "bias"],
    ],
}
"""paper_mnist's structure (conv IN AdaReLU, conv IN AdaPool, FC AdaReLU, FC) at 1/100 the cost."""

CHEAP = {
    "fgsm": lambda f, x, y, eps: fgsm(f, x, y, eps),
    "pgd": lambda f, x, y, eps: pgd(f, x, y, eps, steps=3, restarts=2, generator=torch.Generator().manual_seed(0)),
    "spsa": lambda f, x, y, eps: spsa(
        f, x, y, eps, steps=2, samples=4, max_batch=4, generator=torch.Generator().manual_seed(0)
    ),
    "autoattack": lambda f, x, y, eps: autoattack(f, x, y, eps, version="custom", attacks=["apgd-ce"], n_iter=3),
}
"""Every attack with a budget small enough for a unit test."""


def _needs(name):
    if name == "autoattack":
        pytest.importorskip("pyautoattack", reason="pyautoattack not installed: pip install pyautoattack==0.2.0")


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n, shape=(1, 28, 28), seed=0):
    """Random images in [-1, 1] with saturated pixels at both ends (so clipping matters)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=gen) * 2 - 1
    x[..., :3, :] = 1.0
    x[..., -3:, :] = -1.0
    return x, torch.randint(0, 10, (n,), generator=gen)


def _synthetic(n, seed):
    """10 classes: a fixed random prototype per class (40%) plus uniform noise (60%), 12x12."""
    prototypes = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(123)) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = (0.4 * prototypes[y] + 0.6 * (torch.rand(n, 1, 12, 12, generator=gen) * 2 - 1)).clamp(-1, 1)
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN-F-1 trained for 60 Adam steps on the synthetic task (about 2 s), and 200
    held-out images. Clean accuracy is high but far from robust at eps ~ 0.02-0.05."""
    torch.manual_seed(0)
    model = CNNF(TINY, iterations=1)
    x, y = _synthetic(1024, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return model, *_synthetic(200, seed=2)


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# --------------------------------------------------------------------------- threat model


@pytest.mark.parametrize("name", list(CHEAP))
def test_every_attack_stays_in_the_threat_model(name):
    _needs(name)
    model = cnnf.create_model("paper_mnist", iterations=1).train()
    x, _ = _images(3)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified, so every attack has work to do
    eps = 0.1
    x_adv = CHEAP[name](model, x, y, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 2 * eps + 1e-6
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x), "the attack did not move any pixel"
    # Attacks leave the model as they found it: train mode (every submodule), no parameter grads.
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


class _ModeRecorder(nn.Module):
    """A linear classifier on 4x4 images that records (training?) for itself and its layer at
    every call."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 10)
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, self.linear.training))
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("name", list(CHEAP))
def test_modules_are_attacked_in_eval_mode_and_restored(name):
    _needs(name)
    torch.manual_seed(0)
    model = _ModeRecorder().train()
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)
    model.modes.clear()
    CHEAP[name](model, x, y, 0.1)
    assert model.modes and all(mode == (False, False) for mode in model.modes)
    assert model.training and model.linear.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["fgsm", "pgd7"])
def test_registry_specs_stay_in_the_threat_model(name):
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(2)
    x_adv = ATTACKS[name].run(gradient_source(model, "first"), x, y, 0.05, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.abs().max() <= 1
    # FGSM moves every unsaturated pixel by the full radius.
    if name == "fgsm":
        moved = (x_adv - x).abs()
        assert moved.max() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize("name", list(CHEAP))
def test_eps_zero_returns_the_images_unchanged(name):
    _needs(name)
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(2)
    assert torch.equal(CHEAP[name](model, x, y, 0.0), x)


def test_project_clips_to_the_ball_and_the_pixel_range():
    x = torch.tensor([[[[0.0, 0.95, -0.95, 0.5]]]])
    far = torch.tensor([[[[0.9, 2.0, -2.0, 0.55]]]])
    assert torch.allclose(project(far, x, 0.1), torch.tensor([[[[0.2, 1.0, -1.0, 0.55]]]]))
    assert torch.equal(project(far, x, 0.0), x)


def test_attacks_work_inside_no_grad():
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(2)
    with torch.no_grad():
        x_adv = pgd(model, x, y, 0.05, steps=2)
    assert not torch.equal(x_adv, x)


# --------------------------------------------------------------------------- sanity orderings


def test_pgd_is_no_weaker_than_fgsm(trained):
    model, x, y = trained
    source = gradient_source(model, "first")
    eps = 0.05
    x_fgsm = fgsm(source, x, y, eps)
    x_pgd = pgd(source, x, y, eps, steps=20, random_start=False)  # 20 * 0.02 covers the 0.1 radius
    with torch.no_grad():
        loss_fgsm = F.cross_entropy(source(x_fgsm), y).item()
        loss_pgd = F.cross_entropy(source(x_pgd), y).item()
    assert loss_pgd >= loss_fgsm
    assert _accuracy(source, x_pgd, y) <= _accuracy(source, x_fgsm, y)


def test_accuracy_falls_as_eps_grows(trained):
    model, x, y = trained
    source = gradient_source(model, "e2e")
    x, y = x[:64], y[:64]
    accuracies = [_accuracy(model, pgd(source, x, y, eps, steps=5, random_start=False), y) for eps in (0.0, 0.02, 0.05)]
    assert accuracies[0] == _accuracy(model, x, y)
    assert accuracies[0] > accuracies[1] > accuracies[2]


def test_restarts_never_lower_the_success_rate(trained):
    model, x, y = trained
    source = gradient_source(model, "e2e")
    x, y = x[:100], y[:100]
    runs = {r: pgd(source, x, y, 0.03, steps=2, restarts=r, generator=torch.Generator().manual_seed(7)) for r in (1, 3)}
    with torch.no_grad():
        fooled = {r: model(xa).argmax(1) != y for r, xa in runs.items()}
    # Same seed: restart 1 is identical, so every sample fooled by it stays fooled.
    assert not (fooled[1] & ~fooled[3]).any()
    assert fooled[3].sum() > fooled[1].sum(), "restarts should fool some more samples here"


class _Scripted:
    """A model whose gradient is zero and whose prediction is class 1 (wrong for y = 0) for its
    first `wrong_calls` calls, class 0 after; it records the batch size of every call."""

    def __init__(self, wrong_calls):
        self.wrong_calls = wrong_calls
        self.calls = []

    def __call__(self, x):
        self.calls.append(len(x))
        logits = torch.zeros(len(x), 10) + 0 * x.flatten(1).sum(1, keepdim=True)
        return logits + F.one_hot(torch.tensor(1 if len(self.calls) <= self.wrong_calls else 0), 10)


def _random_starts(x, eps, count, seed):
    gen = torch.Generator().manual_seed(seed)
    return [project(x + torch.empty_like(x).uniform_(-2 * eps, 2 * eps, generator=gen), x, eps) for _ in range(count)]


def test_pgd_keeps_the_first_fooling_restart_else_the_last():
    x, y = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    starts = _random_starts(x, 0.1, 3, seed=0)
    # Fooled during restart 1 (1 gradient call + 1 check): kept, and never attacked again.
    fooled_first = _Scripted(wrong_calls=2)
    x_adv = pgd(fooled_first, x, y, 0.1, steps=1, restarts=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, starts[0])
    assert fooled_first.calls == [2, 2]
    # Never fooled: the last restart's result.
    never = _Scripted(wrong_calls=0)
    x_adv = pgd(never, x, y, 0.1, steps=1, restarts=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, starts[2])


# --------------------------------------------------------------------------- gradient sources


def test_first_source_is_the_cnn_with_the_same_weights():
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=3)
    cnn = cnnf.create_model("paper_mnist", iterations=0)
    cnn.load_state_dict(model.state_dict())
    x, _ = _images(2)
    with torch.no_grad():
        assert torch.allclose(gradient_source(model, "first")(x), cnn(x), atol=1e-6)
        assert torch.equal(gradient_source(model, "cnn", cnn=cnn)(x), cnn(x))
        assert not torch.allclose(gradient_source(model, "e2e")(x), cnn(x), atol=1e-4)


def _input_grad(source, x, y):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(source(x), y, reduction="sum"), [x])
    return grad


@pytest.mark.parametrize("output", ["last", "average"])
def test_e2e_gradients_are_nonzero_and_differ_from_first(output):
    torch.manual_seed(0)
    model = cnnf.create_model("paper_mnist", iterations=2)
    x, y = _images(2)
    g_first = _input_grad(gradient_source(model, "first"), x, y)
    g_e2e = _input_grad(gradient_source(model, "e2e", output=output), x, y)
    assert g_e2e.abs().sum() > 0
    assert not torch.allclose(g_e2e, g_first, rtol=1e-3, atol=1e-6)
    with torch.no_grad():
        expected = model.infer(x).output(output)
        assert torch.allclose(gradient_source(model, "e2e", output=output)(x), expected)


def test_gradient_source_errors_and_mode():
    model = cnnf.create_model("paper_mnist", iterations=1).train()
    assert TARGETS == ("first", "cnn", "e2e")
    with pytest.raises(ValueError, match="first, cnn, e2e"):
        gradient_source(model, "bogus")
    with pytest.raises(ValueError, match="cnn="):
        gradient_source(model, "cnn")
    with pytest.raises(ValueError, match="output"):
        gradient_source(model, "e2e", output="mean")
    x, _ = _images(1)
    source = gradient_source(model, "e2e")
    assert source.output == model.output
    source(x)
    assert model.training, "the source must restore train mode"


# --------------------------------------------------------------------------- SPSA


def test_spsa_estimate_points_along_the_true_gradient():
    torch.manual_seed(0)
    weight = torch.randn(10, 64)

    def linear(x):
        return x.flatten(1) @ weight.T

    x = torch.rand(3, 1, 8, 8) * 0.5 - 0.25  # away from the clipping bounds
    y = torch.tensor([0, 1, 2])
    estimate = _estimate_gradient(linear, x, y, _margin, 256, 0.01, torch.Generator().manual_seed(0), 64)
    x_grad = x.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(_margin(linear(x_grad), y).sum(), [x_grad])
    cosine = F.cosine_similarity(estimate.flatten(1), exact.flatten(1))
    assert (cosine > 0.8).all(), cosine


def test_spsa_finds_adversarial_examples(trained):
    model, x, y = trained
    x, y = x[:16], y[:16]
    x_adv = spsa(model, x, y, 0.05, steps=10, samples=16, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y)


# --------------------------------------------------------------------------- cross-checks


class _OnUnitInterval(nn.Module):
    """torchattacks' view of a model: u in [0, 1] -> source(2u - 1); holds the model so
    torchattacks finds its device and parameters."""

    def __init__(self, model, source):
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, u):
        return self.source(2 * u - 1)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_torchattacks(trained, random_start):
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks not installed: pip install scipy && pip install --no-deps torchattacks==3.5.1"
    )
    model, x, y = trained
    source = gradient_source(model, "e2e")
    eps, steps, step = 0.02, 10, 0.02  # step in [-1, 1] units
    torch.manual_seed(5)
    ours = pgd(source, x, y, eps, steps=steps, step_size=step, random_start=random_start)
    torch.manual_seed(5)  # same uniform draws for both random starts
    wrapped = _OnUnitInterval(model, source)
    reference = torchattacks.PGD(wrapped, eps=eps, alpha=step / 2, steps=steps, random_start=random_start)
    theirs = 2 * reference((x + 1) / 2, y) - 1
    acc_ours, acc_theirs = _accuracy(model, ours, y), _accuracy(model, theirs, y)
    assert 0.1 < acc_ours < 0.9, f"pick an eps where the model is partly robust (got {acc_ours:.3f})"
    assert abs(acc_ours - acc_theirs) <= 0.01, (acc_ours, acc_theirs)


def test_autoattack_smoke(trained):
    pytest.importorskip("pyautoattack", reason="pyautoattack not installed: pip install pyautoattack==0.2.0")
    model, x, y = trained
    x, y = x[:8], y[:8]
    state = torch.get_rng_state()
    x_adv = autoattack(gradient_source(model, "e2e"), x, y, 0.05, version="custom", attacks=["apgd-ce"], n_iter=5)
    assert torch.equal(torch.get_rng_state(), state), "AutoAttack's seeding must not leak into the global RNG"
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.abs().max() <= 1
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y)


def test_autoattack_standard_runs_every_component(trained):
    pytest.importorskip("pyautoattack", reason="pyautoattack not installed: pip install pyautoattack==0.2.0")
    model, x, y = trained
    x, y = x[:4], y[:4]
    x_adv = autoattack(model, x, y, 0.01, n_iter=2, n_queries=10)  # APGD-CE, APGD-T, FAB-T, Square
    assert (x_adv - x).abs().max() <= 0.02 + 1e-6 and x_adv.abs().max() <= 1


def test_autoattack_names_the_pip_command_when_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyautoattack", None)
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(1)
    with pytest.raises(ImportError, match=r"pip install pyautoattack==0\.2\.0"):
        autoattack(model, x, y, 0.1)


# --------------------------------------------------------------------------- registry and errors


def test_parse_attacks_and_spec_descriptions():
    specs = parse_attacks("fgsm, pgd40,fgsm")
    assert [s.name for s in specs] == ["fgsm", "pgd40"]
    names = ["pgd7", "pgd20", "spsa", "autoattack", "pgd100"]
    assert [s.name for s in parse_attacks(",".join(names))] == names
    for spec in ATTACKS.values():
        info = spec.describe(0.1)
        assert set(info) >= {"name", "steps", "restarts", "step_size", "gradient_free"}
    assert ATTACKS["pgd40"].describe(0.3)["step_size"] == 0.02
    assert ATTACKS["pgd40"].describe(0.4)["step_size"] == 0.03
    assert ATTACKS["pgd7"].steps == 7 and ATTACKS["pgd40"].restarts == 1
    assert ATTACKS["fgsm"].step_size(0.1) == pytest.approx(0.2)
    assert ATTACKS["spsa"].gradient_free and not ATTACKS["pgd40"].gradient_free
    assert ATTACKS["autoattack"].step_size(0.1) is None


DISPATCH = [
    ("fgsm", fast_gradient, "fgsm", (), {}),
    ("pgd7", projected_gradient, "pgd", (7,), {"restarts": 1, "early_stop": True}),
    ("pgd40", projected_gradient, "pgd", (40,), {"restarts": 1, "early_stop": True}),
    ("spsa", simultaneous_perturbation, "spsa", (), {"steps": 100, "samples": 128, "lr": 0.02}),
    ("autoattack", auto_attack, "autoattack", (), {"version": "standard"}),
]


@pytest.mark.parametrize("name, module, function, args, kwargs", DISPATCH)
def test_each_registered_attack_runs_its_own_function(monkeypatch, name, module, function, args, kwargs):
    """A registry entry runs its attack with its settings and the run's generator; no other
    attack function is called, and only PGD is handed early_stop."""
    calls = []
    for _, other_module, other, _, _ in DISPATCH:
        recorder = lambda f, x, y, eps, *a, _name=other, **k: calls.append((_name, a, k)) or x  # noqa: E731
        monkeypatch.setattr(other_module, other, recorder)
    x, y = _images(2)
    generator = torch.Generator().manual_seed(0)
    assert ATTACKS[name].run(lambda images: images.flatten(1)[:, :10], x, y, 0.1, generator, early_stop=True) is x
    ((called, called_args, called_kwargs),) = calls
    assert called == function and called_args == args
    assert kwargs.items() <= called_kwargs.items()
    assert ("early_stop" in called_kwargs) == ATTACKS[name].stops_early == (function == "pgd")
    if function in ("pgd", "spsa"):
        assert called_kwargs["generator"] is generator


def test_a_new_attack_spec_needs_no_registry_change():
    """Any AttackSpec subclass runs where a registered one does: callers only call `run`."""

    class Nudge(AttackSpec):
        def run(self, model_fn, x, y, eps, generator=None, early_stop=False):
            return project(x + 1.0, x, eps)

    x, y = _images(2)
    spec = Nudge("nudge", 1, 1)
    assert (spec.run(None, x, y, 0.1) - x).abs().max() <= 0.2 + 1e-6
    assert spec.describe(0.1)["step_size"] is None and not spec.stops_early
    with pytest.raises(TypeError, match="abstract"):
        AttackSpec("bare", 1, 1)


@pytest.mark.parametrize("text", ["fgsm,cw", "", " , "])
def test_parse_attacks_errors_list_known_names(text):
    with pytest.raises(ValueError, match="fgsm, pgd7, pgd20, pgd40, spsa, autoattack"):
        parse_attacks(text)


def test_default_step_size_follows_the_paper():
    assert default_step_size(0.0) == 0.02
    assert default_step_size(0.3) == 0.02
    assert default_step_size(0.31) == 0.03
    with pytest.raises(ValueError):
        default_step_size(2.0)


@pytest.mark.parametrize("name", list(CHEAP))
@pytest.mark.parametrize("eps", [-0.1, 1.5, math.nan, "0.1"])
def test_bad_eps_raises(name, eps):
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(1)
    with pytest.raises(ValueError, match="eps"):
        CHEAP[name](model, x, y, eps)


@pytest.mark.parametrize("name", list(CHEAP))
def test_bad_images_and_labels_raise(name):
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(2)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        CHEAP[name](model, x * 3, y, 0.1)
    with pytest.raises(ValueError, match="unsqueeze"):
        CHEAP[name](model, x[0], y, 0.1)
    with pytest.raises(ValueError, match="labels"):
        CHEAP[name](model, x, y[:1], 0.1)
    with pytest.raises(ValueError, match=r"empty batch \(0 images\)"):
        CHEAP[name](model, x[:0], y[:0], 0.1)


def test_bad_counts_raise():
    model = cnnf.create_model("paper_mnist", iterations=0)
    x, y = _images(1)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="restarts"):
        pgd(model, x, y, 0.1, steps=1, restarts=0)
    with pytest.raises(ValueError, match="random_start"):
        pgd(model, x, y, 0.1, steps=1, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="step_size"):
        pgd(model, x, y, 0.1, steps=1, step_size=-0.01)
    with pytest.raises(ValueError, match="steps"):
        spsa(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="samples"):
        spsa(model, x, y, 0.1, samples=0)
    with pytest.raises(ValueError, match="loss"):
        spsa(model, x, y, 0.1, loss="hinge")


def test_pgd_early_stop_is_no_weaker_and_does_less_work(trained):
    """Per image, early-stopped PGD either stopped at a misclassified iterate or ran the same
    trajectory as plain PGD; so no image survives it that plain PGD fools."""
    model, x, y = trained
    calls = []

    def counted(images):
        calls.append(len(images))
        return model(images)

    runs = {}
    for early in (False, True):
        calls.clear()
        x_adv = pgd(counted, x, y, 0.05, steps=10, generator=torch.Generator().manual_seed(3), early_stop=early)
        with torch.no_grad():
            runs[early] = (model(x_adv).argmax(1) == y, sum(calls))
    (plain, plain_work), (early, early_work) = runs[False], runs[True]
    assert (early <= plain).all() and early.sum() < len(y)
    assert early_work < plain_work
