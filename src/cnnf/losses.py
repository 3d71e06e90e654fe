"""Training losses of CNN-F (paper Table 1, appendix B.1; docs/DESIGN.md section 4).

Each term is computed at every step and averaged over steps (as the released code does, so
the loss scale does not grow with N):
    ce    cross entropy of y_t, t = 0..N                                       (coefficient 1)
    rec   mean squared error between g_t and the target features h, t = 0..N-1  (alpha_rec)
    cll   conditional latent likelihood: cross entropy of the class energies
          eta(c, z_t) = sum_l <b(l), z_t(l) * g_c(l)>, g_c generated from the one-hot of
          class c (our reading of the paper's log Softmax(eta)), t = 0..N-1      (alpha_cll)
    norm  norm matching sum_l | ||f(l)|| - ||g(l)|| | over bias layers above k (those inside
          residual blocks included; f: the bias output, g: the feedback signal arriving
          there), mean over samples                                             (alpha_norm)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf import backend, fast
from cnnf.layers import Bias, leaves
from cnnf.model import CNNF, Inference, Latents
from cnnf.precision import full


@dataclass(frozen=True)
class LossWeights:
    """Coefficients; the defaults are the paper's (alpha_rec 0.1, alpha_cll 0, alpha_norm 0)."""

    ce: float = 1.0
    rec: float = 0.1
    cll: float = 0.0
    norm: float = 0.0


def cnnf_loss(
    model: CNNF,
    run: Inference,
    labels: Tensor,
    target: Tensor | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its detached per-term breakdown {"ce", "rec", "cll", "norm", "total"}.

    target: features the reconstructions should match (default: h_0 of `run`; for adversarial
    inputs pass the clean image's features). The norm term needs `keep_activations=True`.
    Every term is computed from logits and maps in float32 (`full`), also under bf16 autocast.
    """
    terms = {"ce": _mean(F.cross_entropy(full(y), labels) for y in run.logits)}
    zero = full(run.logits[0]).new_zeros(())
    target = full(run.features[0] if target is None else target)
    terms["rec"] = reconstruction_error([full(g) for g in run.reconstructions], target) if run.feedbacks else zero
    terms["cll"] = zero
    if weights.cll and run.feedbacks:
        terms["cll"] = _mean(F.cross_entropy(full(class_energies(model, z)), labels) for z in run.latents[:-1])
    terms["norm"] = zero
    if weights.norm and run.feedbacks:
        if run.activations is None:
            raise ValueError("the norm-matching loss needs model.infer(x, keep_activations=True)")
        terms["norm"] = _mean(_norm_gap(model, a, fb.signals) for a, fb in zip(run.activations, run.feedbacks))
    coefficients = asdict(weights)
    total = sum(coefficients[name] * value for name, value in terms.items())
    breakdown = {name: value.detach() for name, value in terms.items()}
    breakdown["total"] = total.detach()
    return total, breakdown


def class_energies(model: CNNF, latents: Latents) -> Tensor:
    """eta(c, z) for every class c, (B, classes): feedback from each one-hot with the same z."""
    batch = next(_tensors(latents)).shape[0]
    k = model.num_classes
    weight = model.layers[0].weight
    one_hots = torch.eye(k, dtype=weight.dtype, device=weight.device).repeat(batch, 1)
    return model.eta(model.feedback(one_hots, _repeat_samples(latents, k))).view(batch, k)


def _tensors(latents):
    """The latent tensors, residual blocks' inner ones included."""
    for z in latents:
        if isinstance(z, tuple):
            yield from _tensors(z)
        elif z is not None:
            yield z


def _repeat_samples(latents, k: int):
    """Every latent tensor with each sample repeated k times (through residual blocks' tuples)."""
    if isinstance(latents, tuple):
        return tuple(_repeat_samples(z, k) for z in latents)
    return None if latents is None else latents.repeat_interleave(k, 0)


def _norm_gap(model: CNNF, activations: tuple, signals: tuple) -> Tensor:
    gaps = [
        (full(f).flatten(1).norm(dim=1) - full(g).flatten(1).norm(dim=1)).abs().mean()
        for layer, f, g in leaves(model.layers, activations, signals)
        if isinstance(layer, Bias) and f is not None and g is not None
    ]
    return torch.stack(gaps).sum()


def reconstruction_error(reconstructions: list[Tensor], target: Tensor) -> Tensor:
    """The rec term: mean over steps of F.mse_loss(g_t, target), a scalar."""
    if backend.is_fast():
        return fast.reconstruction_error(reconstructions, target)
    return _mean(F.mse_loss(g, target) for g in reconstructions)


def _mean(values) -> Tensor:
    values = list(values)
    return torch.stack(values).mean()
