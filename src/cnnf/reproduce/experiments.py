"""The paper's robustness figures as data: per figure its claim, its panels and the models
they need (a base config in configs/ plus overrides). Models shared between figures are one
entry here, so they are trained once per seed.

Choices where the paper is ambiguous are listed in docs/RESULTS.md ("Choices").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cnnf.corruptions import CORRUPTIONS

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
X_AXES = ("eps", "iterations", "severity")
MEAN_CORRUPTION = "mean"  # the measure of a series averaged over all corruptions


@dataclass(frozen=True)
class ModelSpec:
    """A model to train: `config` in configs/ with `overrides`. An adversarial model names
    the standard model it is fine-tuned from (`finetune_from`) in profiles that fine-tune."""

    label: str
    config: str
    overrides: Mapping[str, object] = field(default_factory=dict)
    finetune_from: str | None = None


@dataclass(frozen=True)
class SeriesSpec:
    """A line of a panel: `model` under `measure` (an attack name, a corruption name or
    MEAN_CORRUPTION) from gradient source `target`, scored after `iterations` (None: the
    model's own N), last output."""

    label: str
    model: str
    measure: str
    target: str = "first"
    iterations: int | None = None


@dataclass(frozen=True)
class PanelSpec:
    """A panel: accuracy against `x` ("eps", "iterations" or "severity"). On an "iterations"
    axis every series is drawn once per nonzero eps of the profile's `grid` ("eps" or "eps_wide");
    on an "eps" axis, `grid` is the x values."""

    id: str
    title: str
    x: str
    series: tuple[SeriesSpec, ...]
    grid: str = "eps"


@dataclass(frozen=True)
class Experiment:
    """A figure: its `claim` in one sentence, its panels, and the (model, eps) pairs whose
    strongest evaluation (worst case over first-pass and end-to-end PGD, plus AutoAttack) is
    reported beside the paper's protocol."""

    figure: str
    title: str
    claim: str
    panels: tuple[PanelSpec, ...]
    strongest: tuple[tuple[str, float], ...] = ()

    def models(self) -> list[str]:
        """Every model the figure shows, in order of first use."""
        names = [s.model for panel in self.panels for s in panel.series] + [m for m, _ in self.strongest]
        return list(dict.fromkeys(names))


def _standard(kind: str) -> dict[str, ModelSpec]:
    """CNN and CNN-F-1..5 trained on clean images of `kind` ("fmnist" or "mnist")."""
    models = {f"cnn_{kind}": ModelSpec("CNN", f"cnn_{kind}.yaml")}
    models |= {f"cnnf{k}_{kind}": ModelSpec(f"CNN-F-{k}", f"cnnf{k}_{kind}.yaml") for k in range(1, 6)}
    return models


def _adversarial(kind: str) -> dict[str, ModelSpec]:
    """CNN and CNN-F-5 trained with FGSM and PGD-40 at eps 0.3 (augmentation mode)."""
    dataset = {} if kind == "fmnist" else {"dataset": "mnist"}
    return {f"adv_{attack}_{net}_{kind}": ModelSpec(label, f"adv_{attack}_{net}_fmnist.yaml", dataset, f"{net}_{kind}")
            for attack in ("fgsm", "pgd40") for net, label in (("cnn", "CNN"), ("cnnf5", "CNN-F-5"))}


_LOSS_WEIGHTS = {  # figure 10: (alpha_rec, alpha_cll, alpha_norm) of CNN-F-5; the first is the paper's
    "cnnf5_fmnist": (0.1, 0.0, 0.0),
    "cnnf5_fmnist_rec1": (1.0, 0.0, 0.0),
    "cnnf5_fmnist_cll": (0.1, 0.1, 0.0),
    "cnnf5_fmnist_norm": (0.1, 0.0, 0.1),
    "cnnf5_fmnist_all05": (0.5, 0.5, 0.5),  # figure 11's caption
}


def _weights_label(name: str) -> str:
    rec, cll, norm = _LOSS_WEIGHTS[name]
    return f"α_rec {rec:g}, α_cll {cll:g}, α_norm {norm:g}"


MODELS: Mapping[str, ModelSpec] = MappingProxyType({
    **_standard("fmnist"), **_standard("mnist"), **_adversarial("fmnist"), **_adversarial("mnist"),
    **{name: ModelSpec(f"CNN-F-5, {_weights_label(name)}", "cnnf5_fmnist.yaml",
                       {"alpha_rec": rec, "alpha_cll": cll, "alpha_norm": norm})
       for name, (rec, cll, norm) in _LOSS_WEIGHTS.items() if name != "cnnf5_fmnist"},
})


def _pair(models: tuple[str, ...], attack: str, target: str = "first") -> tuple[SeriesSpec, ...]:
    return tuple(SeriesSpec(MODELS[m].label, m, attack, target) for m in models)


_FM = ("cnn_fmnist", "cnnf5_fmnist")
_ADV_FGSM = ("adv_fgsm_cnn_fmnist", "adv_fgsm_cnnf5_fmnist")
_ADV_PGD = ("adv_pgd40_cnn_fmnist", "adv_pgd40_cnnf5_fmnist")
_MNIST = ("cnn_mnist", "cnnf5_mnist")

EXPERIMENTS: Mapping[str, Experiment] = MappingProxyType({
    "6": Experiment(
        "6", "Adversarial robustness of CNN-F with standard training (Fashion-MNIST)",
        "Under standard training CNN-F is more robust than CNN to attacks transferred from its first "
        "feedforward pass, and training and evaluating with more iterations both help, more so at larger eps.",
        (PanelSpec("a", "Standard training. Testing w/ FGSM", "eps", _pair(_FM, "fgsm")),
         PanelSpec("b", "Standard training. Testing w/ PGD-40", "eps", _pair(_FM, "pgd40")),
         PanelSpec("c", "Train CNN-F with different number of iterations. Testing w/ PGD-40", "eps",
                   _pair(("cnn_fmnist",) + tuple(f"cnnf{k}_fmnist" for k in range(1, 6)), "pgd40")),
         PanelSpec("d", "Evaluate a CNN-F-5 model with various number of iterations against PGD-40", "eps",
                   tuple(SeriesSpec(f"N = {t}", "cnnf5_fmnist", "pgd40", iterations=t) for t in range(6)))),
        strongest=(("cnn_fmnist", 0.1), ("cnnf5_fmnist", 0.1)),
    ),
    "7": Experiment(
        "7", "Adversarial robustness of CNN-F with adversarial training (Fashion-MNIST)",
        "Trained on clean and adversarial images (eps 0.3), CNN-F-5 reaches higher adversarial and clean "
        "accuracy than CNN.",
        (PanelSpec("a", "Adv. training w/ FGSM (ε = 0.3). Testing w/ FGSM", "eps", _pair(_ADV_FGSM, "fgsm")),
         PanelSpec("b", "Adv. training w/ PGD-40 (ε = 0.3). Testing w/ PGD-40", "eps", _pair(_ADV_PGD, "pgd40"))),
        strongest=tuple((m, 0.3) for m in _ADV_FGSM + _ADV_PGD),
    ),
    "8": Experiment(
        "8", "CNN-F generalizes better to unseen attacks than CNN (Fashion-MNIST)",
        "Trained with FGSM, CNN-F resists PGD-40 better than CNN; trained with PGD-40 at eps 0.3, CNN-F "
        "loses less accuracy than CNN as eps grows.",
        (PanelSpec("a", "Adv. training w/ FGSM (ε = 0.3). Testing w/ PGD-40", "eps", _pair(_ADV_FGSM, "pgd40")),
         PanelSpec("b", "Adv. training w/ PGD-40 (ε = 0.3). Testing w/ PGD-40", "eps", _pair(_ADV_PGD, "pgd40"),
                   grid="eps_wide")),
        strongest=tuple((m, 0.3) for m in _ADV_FGSM + _ADV_PGD),
    ),
    "10": Experiment(
        "10", "Effect of hyper-parameters on adversarial robustness (CNN-F-5, Fashion-MNIST)",
        "The loss weights alpha_rec, alpha_cll and alpha_norm of CNN-F-5 have no large influence on its "
        "adversarial accuracy under standard training.",
        (PanelSpec("a", "Standard training. Testing w/ FGSM", "eps", _pair(tuple(_LOSS_WEIGHTS), "fgsm")),
         PanelSpec("b", "Standard training. Testing w/ PGD-40", "eps", _pair(tuple(_LOSS_WEIGHTS), "pgd40"))),
        strongest=(("cnnf5_fmnist", 0.1), ("cnnf5_fmnist_all05", 0.1)),
    ),
    "11": Experiment(
        "11", "Adversarial robustness against the end-to-end BPDA attack (Fashion-MNIST)",
        "Against end-to-end BPDA attacks through the unrolled iterations, CNN-F-5 is much more robust "
        "than CNN (attacks the paper finds weaker than the transfer attack).",
        (PanelSpec("a", "Standard training. Testing w/ FGSM, end to end", "eps",
                   _pair(("cnn_fmnist", "cnnf5_fmnist_all05"), "fgsm", "e2e")),
         PanelSpec("b", "Standard training. Testing w/ PGD-40, end to end", "eps",
                   _pair(("cnn_fmnist", "cnnf5_fmnist_all05"), "pgd40", "e2e"))),
        strongest=(("cnn_fmnist", 0.1), ("cnnf5_fmnist_all05", 0.1)),
    ),
    "12": Experiment(
        "12", "Adversarial robustness of CNN-F on MNIST",
        "On MNIST too, CNN-F-5 is more robust than CNN under standard and adversarial training, and "
        "adversarially trained it generalizes better to PGD-40.",
        (PanelSpec("a", "Standard training. Testing w/ FGSM", "eps", _pair(_MNIST, "fgsm")),
         PanelSpec("b", "Standard training. Testing w/ PGD-40", "eps", _pair(_MNIST, "pgd40")),
         PanelSpec("c", "Adv. training w/ FGSM (ε = 0.3). Testing w/ FGSM", "eps",
                   _pair(("adv_fgsm_cnn_mnist", "adv_fgsm_cnnf5_mnist"), "fgsm")),
         PanelSpec("d", "Adv. training w/ PGD-40 (ε = 0.3). Testing w/ PGD-40", "eps",
                   _pair(("adv_pgd40_cnn_mnist", "adv_pgd40_cnnf5_mnist"), "pgd40"))),
        strongest=(("cnn_mnist", 0.1), ("cnnf5_mnist", 0.1), ("adv_pgd40_cnn_mnist", 0.3),
                   ("adv_pgd40_cnnf5_mnist", 0.3)),
    ),
    "13": Experiment(
        "13", "Effect of number of iterations on adversarial robustness (Fashion-MNIST)",
        "More iterations are needed for harder attacks with larger perturbation: the PGD-40-trained "
        "CNN-F-5 gains more from iterations at larger eps.",
        (PanelSpec("a", "Training w/ PGD-40. Testing w/ PGD-40", "iterations",
                   (SeriesSpec("", "adv_pgd40_cnnf5_fmnist", "pgd40"),)),
         PanelSpec("b", "Training w/ PGD-40. Testing w/ FGSM", "iterations",
                   (SeriesSpec("", "adv_pgd40_cnnf5_fmnist", "fgsm"),))),
        strongest=(("adv_pgd40_cnnf5_fmnist", 0.3),),
    ),
    "corruptions": Experiment(
        "corruptions", "Common corruptions, CNN vs CNN-F-k, standard training (Fashion-MNIST; beyond the paper)",
        "Beyond the paper: whether CNN-F's feedback, which the paper shows restoring blurred and noisy "
        "images (figure 9d), raises accuracy under common corruptions.",
        tuple(PanelSpec(name, name.replace("_", " "), "severity",
                        tuple(SeriesSpec(MODELS[m].label, m, name) for m in _standard("fmnist"))
                        + (SeriesSpec("CNN-F-5, N = 0", "cnnf5_fmnist", name, iterations=0),))
              for name in CORRUPTIONS + (MEAN_CORRUPTION,)),
    ),
})


def get_experiment(name: str) -> Experiment:
    """The experiment of figure `name`, or a ValueError listing them."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown figure {name!r}; choose from {', '.join(EXPERIMENTS)}, all")
    return EXPERIMENTS[name]
