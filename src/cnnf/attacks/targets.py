"""Gradient sources: which network an attack differentiates (docs/DESIGN.md section 6).

The paper (section 4.1, appendix B.2) attacks CNN-F in two ways:

- "first": the first feedforward pass of the CNN-F, i.e. the plain CNN with the same weights;
  adversarial images made on it are then scored by the full CNN-F (the paper's *transfer*
  attack, the one its main-text numbers use).
- "e2e": end to end through the unrolled feedback iterations (BPDA: the backward pass holds
  the AdaReLU / AdaPool masks constant, which the model does by construction), on the
  *scored* logits ("last" or "average").

and "cnn" transfers from a separately trained CNN. Robust accuracy worth quoting is the
minimum over sources and attacks, including a gradient-free one (SPSA, Square).

With precision "bf16" a source runs the model under bfloat16 autocast and returns float32
logits, so the attacks' losses, gradient steps and projections stay in float32.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from cnnf.attacks.threat import eval_mode
from cnnf.model import CNNF
from cnnf.precision import autocast, check_precision, full
from cnnf.scoring import check_output

TARGETS = ("first", "cnn", "e2e")


class GradientSource:
    """A model_fn (images (B, C, H, W) in [-1, 1] -> logits (B, classes)) for the attacks.

    Each call runs the underlying module in eval mode and restores its previous mode, so an
    attack never changes a model's train/eval state, at `precision` (logits in float32 at least).
    Attributes: target, module, output, precision.
    """

    def __init__(self, target: str, module: nn.Module, forward: Callable[[Tensor], Tensor], output: str | None,
                 precision: str = "fp32"):
        self.target = target
        self.module = module
        self.output = output
        self.precision = check_precision(precision)
        self._forward = forward

    def __call__(self, x: Tensor) -> Tensor:
        with eval_mode(self.module), autocast(self.precision, x.device):
            logits = self._forward(x)
        return full(logits)

    def __repr__(self) -> str:
        extra = f", output={self.output!r}" if self.output else ""
        return f"GradientSource(target={self.target!r}{extra})"


def gradient_source(
    model: CNNF, target: str, cnn: nn.Module | None = None, output: str | None = None, precision: str = "fp32"
) -> GradientSource:
    """The function an attack differentiates, for the CNN-F `model`.

    Args:
        model: the CNN-F under attack (scored separately by the caller).
        target: "first" (first feedforward pass = the CNN with the same weights, the paper's
            transfer attack), "cnn" (the separately trained CNN `cnn`, transfer), or "e2e"
            (end to end through `model.iterations` feedback steps, BPDA).
        cnn: required for target "cnn": any module images -> logits.
        output: for "e2e", the logits scored: "last" or "average" (default `model.output`).
        precision: "fp32" or "bf16" (the model under bfloat16 autocast; `cnnf.precision`).
    Returns:
        A callable images (B, C, H, W) in [-1, 1] -> logits (B, classes).

    Example:
        >>> model = cnnf.create_model("paper_mnist", iterations=5)
        >>> x_adv = pgd(gradient_source(model, "e2e"), x, y, eps=0.1, steps=40)
        >>> robust = (model(x_adv).argmax(1) == y).float().mean()
    """
    if target not in TARGETS:
        raise ValueError(f"unknown gradient target {target!r}; choose one of {', '.join(TARGETS)}")
    if target != "e2e" and output is not None:
        raise ValueError(f"output applies to target 'e2e' only, got output={output!r} with target {target!r}")
    if target == "cnn":
        if cnn is None:
            raise ValueError("target 'cnn' needs the separately trained CNN: gradient_source(model, 'cnn', cnn=...)")
        if not callable(cnn):
            raise ValueError(f"cnn must be a callable module images -> logits, got {type(cnn).__name__}")
        return GradientSource("cnn", cnn, cnn, None, precision)
    if not isinstance(model, CNNF):
        raise ValueError(f"target {target!r} needs a CNNF model, got {type(model).__name__}")
    if target == "first":
        return GradientSource("first", model, lambda x: model.feedforward(x)[0], None, precision)
    mode = check_output(model.output if output is None else output)
    return GradientSource("e2e", model, lambda x: model.infer(x).output(mode), mode, precision)
