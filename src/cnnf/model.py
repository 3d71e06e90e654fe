"""CNN-F: a CNN whose generative feedback (the DGM) drives iterative inference (Algorithm 1).

Notation (paper section 2, docs/DESIGN.md section 3):
    x     images (B, C, H, W) in [-1, 1]
    k     `reconstruct_to`, the layer the feedback generates down to (0 = pixels)
    h_t   features at layer k fed to the feedforward pathway at step t (h_0 = encode(x))
    y_t   logits of step t; step 0 is the plain feedforward CNN
    z_t   latents of step t: one mask / index tensor per AdaReLU / AdaPool layer
    g_t   feedback features at layer k generated from (y_t, z_t)

    h_{t+1} = h_t + r (g_t - h_t)       (r = 1 is the paper's h <- g)
    y_{t+1}, z_{t+1} = feedforward(h_{t+1}), nonlinearities driven by the signals of g_t's pass

`_up` and `_down` are the two pathways as plain loops over the layers (the reference); with the
fast backend (`cnnf.backend`) `cnnf.fast` runs them instead, side by side, as nanoGPT does
with its attention.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnf import architecture, backend, fast, scoring
from cnnf.inputs import check_features, check_feedback_inputs, check_images, check_model_settings, check_shape
from cnnf.layers import Bias, Branches, feedback_pass, forward_pass, leaves

Latents = tuple[Tensor | tuple | None, ...]
"""One entry per layer: the ReLU mask (bool) or pooling choice (flat index), None elsewhere; a
residual block's is (its branch's latents, its shortcut's latents)."""

Signals = tuple[Tensor | Branches | None, ...]
"""One entry per layer: the feedback signal arriving at that layer's output (before its mask),
None below the layer the feedback stopped at; at a residual block, `Branches` with the signals
of its inner layers. The signals at AdaReLU / AdaPool layers and residual blocks are the drives
of the next feedforward pass."""


@dataclass(frozen=True)
class Feedback:
    """One feedback (generation) pass: `features` g at the target layer, e.g. (B, 1, 28, 28)
    for layer 0, and the `signals` at every layer (what eta and the norm-matching loss read;
    None in an `Inference` that did not keep activations)."""

    features: Tensor
    signals: Signals | None


@dataclass
class Inference:
    """The trajectory of iterative inference; lists are indexed by step t.

    logits:          N + 1 tensors (B, classes); logits[0] is the plain feedforward pass.
    features:        h_0 .. h_N at layer k.
    feedbacks:       N feedback passes (g_t = feedbacks[t].features).
    latents:         z_0 .. z_N.
    iterations_used: (B,) int64, feedback iterations each sample ran (< N if it stopped early).
    activations:     per step, every layer's output (only with keep_activations=True).
    """

    logits: list[Tensor]
    features: list[Tensor]
    feedbacks: list[Feedback]
    latents: list[Latents]
    iterations_used: Tensor
    activations: list[tuple[Tensor | None, ...]] | None = None

    @property
    def reconstructions(self) -> list[Tensor]:
        """g_0 .. g_{N-1}: the generated features at layer k."""
        return [fb.features for fb in self.feedbacks]

    def output(self, mode: str = "last") -> Tensor:
        """Scored logits (B, classes): the last step, or the mean over steps 0..N (`cnnf.scoring`)."""
        return scoring.score(self.logits, mode)


class CNNF(nn.Module):
    """CNN with recurrent generative feedback, built from an architecture spec
    (see `cnnf.architecture`). With iterations = 0 it is the plain CNN.

    Args:
        spec: {"input_shape": [C, H, W], "blocks": [[token, ...], ...]}.
        iterations: N, feedback iterations used by `forward` and `infer`.
        reconstruct_to: k, the block output the feedback generates (0 = pixels).
        output: "last" or "average" logits, scored by `forward`.
        residual: r in (0, 1], the step h <- h + r (g - h); 1 is the paper.
        relu_mixing: m in [0, 1), the released code's AdaReLU variant (see `layers.AdaReLU`);
            0 is the paper.
    """

    def __init__(self, spec: dict, *, iterations: int = 0, reconstruct_to: int = 0, output: str = "last",
                 residual: float = 1.0, relu_mixing: float = 0.0):
        super().__init__()
        check_model_settings(iterations, residual, relu_mixing)
        scoring.check_output(output)
        built, self.block_ends, self.shapes = architecture.build(spec, relu_mixing)
        self.layers = nn.ModuleList(built)
        self.spec = {"input_shape": list(spec["input_shape"]), "blocks": copy.deepcopy([list(b) for b in spec["blocks"]])}
        if not isinstance(reconstruct_to, int) or not 0 <= reconstruct_to < len(self.block_ends) - 1:
            raise ValueError(f"reconstruct_to must be a block index in 0..{len(self.block_ends) - 2}, got {reconstruct_to!r}")
        self.iterations = iterations
        self.reconstruct_to = reconstruct_to
        self.output = output
        self.residual = residual
        self.relu_mixing = relu_mixing

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["input_shape"])

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    def settings(self) -> dict:
        """The constructor arguments besides the spec (stored in checkpoints)."""
        return {"iterations": self.iterations, "reconstruct_to": self.reconstruct_to, "output": self.output,
                "residual": self.residual, "relu_mixing": self.relu_mixing}

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, classes) after `iterations` feedback steps, `output` mode."""
        return self.infer(x).output(self.output)

    def encode(self, x: Tensor, to_layer: int | None = None) -> Tensor:
        """Plain feedforward features of images x at layer `to_layer` (default k)."""
        check_images(x, self.input_shape)
        return self._up(x, 0, self._position(to_layer), None, keep=False, use_fast=backend.is_fast())[0]

    def feedforward(self, h: Tensor, from_layer: int | None = None,
                    drive: Signals | None = None) -> tuple[Tensor, Latents]:
        """Feedforward pathway from layer `from_layer` (default 0, the pixels) to the logits.

        drive: the `signals` of a feedback pass; they set AdaReLU / AdaPool. None gives plain
        ReLU / max-pooling. At layer 0, h may be images or a reconstruction, so only its shape
        and finiteness are checked. Returns (logits (B, classes), latents).
        """
        start = self._position(from_layer or 0)
        check_shape(h, self.shapes[start], "features" if start else "images")
        check_features(h)
        if drive is not None and len(drive) != len(self.layers):
            raise ValueError(f"drive must have one entry per layer ({len(self.layers)}), got {len(drive)}")
        logits, latents, _ = self._up(h, start, len(self.layers), drive, keep=False, use_fast=backend.is_fast())
        return logits, latents

    def feedback(self, logits: Tensor, latents: Latents, to_layer: int | None = None) -> Feedback:
        """Feedback pathway (the DGM, eq. 2): generate from the logits-space vector `logits`
        (B, classes) with `latents` down to layer `to_layer` (default k), with every signal."""
        stop = self._position(to_layer)
        features, signals = self._down(logits, latents, stop, drives_only=False, use_fast=backend.is_fast())
        return Feedback(features, signals)

    def generate(self, logits: Tensor, latents: Latents, to_layer: int | None = None) -> Tensor:
        """Generated features g at layer `to_layer` (default k); see `feedback`."""
        return self.feedback(logits, latents, to_layer).features

    def eta(self, feedback: Feedback) -> Tensor:
        """eta(u, z) = sum over bias layers (inside residual blocks too) of <b, signal at that
        layer> (eq. 13, Lemma A.1), (B,)."""
        if feedback.signals is None:
            raise ValueError("eta needs the feedback signals; use model.feedback or infer(..., keep_activations=True)")
        total = torch.zeros((), dtype=feedback.features.dtype, device=feedback.features.device)
        for layer, signal in leaves(self.layers, feedback.signals):
            if isinstance(layer, Bias) and signal is not None:
                total = total + (signal * layer.broadcast()).flatten(1).sum(1)
        return total

    def infer(self, x: Tensor, iterations: int | None = None, tol: float | None = None,
              keep_activations: bool = False) -> Inference:
        """Iterative inference (Algorithm 1) on images x (B, C, H, W) in [-1, 1].

        iterations: N (default: the model's). tol: adaptive stopping; a sample stops once its
        prediction is unchanged and ||h_{t+1} - h_t|| / ||h_t|| < tol. keep_activations: keep
        every layer's output and every feedback signal (for eta and the norm-matching loss);
        without it the feedbacks hold only their features.
        """
        n = self.iterations if iterations is None else iterations
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"iterations must be an integer >= 0, got {n!r}")
        use_fast, k, top = backend.is_fast(), self._position(None), len(self.layers)
        h = self.encode(x)
        logits, latents, acts = self._up(h, k, top, None, keep_activations, use_fast)
        run = Inference([logits], [h], [], [latents], torch.zeros(len(x), dtype=torch.long, device=x.device),
                        [acts] if keep_activations else None)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(n):
            g, signals = self._down(logits, latents, k, drives_only=not keep_activations, use_fast=use_fast)
            h_next = g if self.residual == 1 else h + self.residual * (g - h)
            logits_next, latents_next, acts = self._up(h_next, k, top, signals, keep_activations, use_fast)
            run.iterations_used += active
            if tol is not None:
                settled = (logits_next.argmax(1) == logits.argmax(1)) & (_relative_change(h_next, h) < tol)
                h_next, logits_next, latents_next = _keep_where(active, (h_next, logits_next, latents_next),
                                                                (h, logits, latents))
                active = active & ~settled
            h, logits, latents = h_next, logits_next, latents_next
            run.feedbacks.append(Feedback(g, signals if keep_activations else None))
            run.logits.append(logits)
            run.features.append(h)
            run.latents.append(latents)
            if keep_activations:
                run.activations.append(acts)
            if not active.any():
                break
        return run

    def _up(self, h: Tensor, start: int, stop: int, drive: Signals | None, keep: bool, use_fast: bool):
        """Layers start..stop-1 on h (the feedforward pathway), each driven by its entry of
        `drive`. Returns (their output, latents, every layer's output if keep, else None)."""
        if use_fast:
            return fast.feedforward(self.layers, h, start, stop, drive, keep)
        h, latents, outputs = forward_pass(self.layers[start:stop], h, None if drive is None else drive[start:stop], keep)
        below, above = (None,) * start, (None,) * (len(self.layers) - stop)
        return h, below + latents + above, (below + outputs + above if keep else None)

    def _down(self, g: Tensor, latents: Latents, stop: int, drives_only: bool, use_fast: bool) -> tuple[Tensor, Signals]:
        """The feedback pathway from the logits-space g down to layer `stop`. Returns (g there,
        the signal arriving at each layer's output); drives_only lets the fast backend keep
        only the drives."""
        check_feedback_inputs(g, latents, self.layers, stop, self.num_classes)
        if use_fast:
            return fast.feedback(self.layers, g, latents, stop, drives_only)
        g, signals = feedback_pass(self.layers[stop:], g, latents[stop:])
        return g, (None,) * stop + signals

    def _position(self, layer: int | None) -> int:
        k = self.reconstruct_to if layer is None else layer
        if not isinstance(k, int) or not 0 <= k < len(self.block_ends) - 1:
            raise ValueError(f"layer index must be in 0..{len(self.block_ends) - 2} (block outputs), got {k!r}")
        return self.block_ends[k]


def _relative_change(new: Tensor, old: Tensor) -> Tensor:
    """||new - old|| / ||old|| per sample, (B,)."""
    return (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp_min(1e-12)


def _keep_where(active: Tensor, new, old):
    """Per sample: `new` where active, else `old`; recurses through tuples, keeps None."""
    if isinstance(new, tuple):
        return tuple(_keep_where(active, n, o) for n, o in zip(new, old))
    if new is None:
        return None
    return torch.where(active.view(-1, *[1] * (new.dim() - 1)), new, old)
