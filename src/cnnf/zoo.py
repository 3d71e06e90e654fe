"""Named architectures and the model registry: `create_model(name, **overrides)`."""

from __future__ import annotations

from cnnf.architecture import without_norm
from cnnf.model import CNNF

PAPER_MNIST = {
    "input_shape": [1, 28, 28],
    "blocks": [
        ["conv 32 3", "norm", "bias", "relu"],
        ["conv 64 3", "norm", "bias", "pool 2"],
        ["flatten", "linear 128", "bias", "relu"],
        ["linear 10", "bias"],
    ],
}
"""The paper's network (appendix B.1): Conv(1->32, 3x3) IN AdaReLU Conv(32->64, 3x3) IN AdaPool(2)
Flatten FC(9216->128) AdaReLU FC(128->10); reconstructs to the pixels."""

CONV4_MNIST = {
    "input_shape": [1, 28, 28],
    "blocks": [
        ["conv 16 3 1", "norm", "bias", "relu"],
        ["conv 32 3 1", "norm", "bias", "relu"],
        ["conv 32 3 1", "norm", "bias", "relu", "pool 2"],
        ["conv 64 3 1", "norm", "bias", "relu", "pool 2"],
        ["flatten", "linear 1000", "bias", "relu"],
        ["linear 128", "bias", "relu"],
        ["linear 10", "bias"],
    ],
}
"""The released code's larger network: 3x3 convs 1->16->32->32->64 (padding 1) each with IN and
AdaReLU, AdaPool(2) after the third and fourth, FC 3136->1000->128->10; reconstructs to the
output of the second conv block."""

_MODELS = {
    "paper_mnist": (PAPER_MNIST, {"reconstruct_to": 0}),
    "conv4_mnist": (CONV4_MNIST, {"reconstruct_to": 2}),
}

OVERRIDES = ("iterations", "reconstruct_to", "output", "residual", "relu_mixing", "norm")


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_MODELS)


def create_model(name: str, **overrides) -> CNNF:
    """Build a registered architecture.

    Overrides: iterations, reconstruct_to, output ("last" | "average"), residual (r in (0, 1]),
    relu_mixing (the released code's AdaReLU, m in [0, 1); 0 is the paper), norm ("instance" or None: None removes every instance-normalisation layer).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown override(s) {', '.join(unknown)} for {name!r}; allowed: {', '.join(OVERRIDES)}")
    spec, defaults = _MODELS[name]
    settings = {**defaults, **overrides}
    norm = settings.pop("norm", "instance")
    if norm not in ("instance", None):
        raise ValueError(f"norm must be 'instance' or None, got {norm!r}")
    if norm is None:
        spec = {**spec, "blocks": without_norm(spec["blocks"])}
    return CNNF(spec, **settings)
