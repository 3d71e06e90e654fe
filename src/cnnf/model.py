"""CNN-F: a CNN whose generative feedback (the DGM) drives iterative inference (Algorithm 1).

Notation (paper section 2, DESIGN.md section 3):
    x     images (B, C, H, W) in [-1, 1]
    k     `reconstruct_to`, the layer the feedback generates down to (0 = pixels)
    h_t   features at layer k fed to the feedforward pathway at step t (h_0 = encode(x))
    y_t   logits of step t; step 0 is the plain feedforward CNN
    z_t   latents of step t: one mask / index tensor per AdaReLU / AdaPool layer
    g_t   feedback features at layer k generated from (y_t, z_t)

    h_{t+1} = h_t + r (g_t - h_t)       (r = 1 is the paper's h <- g)
    y_{t+1}, z_{t+1} = feedforward(h_{t+1}), nonlinearities driven by the signals of g_t's pass
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnf import architecture, fused
from cnnf.inputs import check_features, check_images
from cnnf.layers import Bias

Latents = tuple[Tensor | None, ...]
"""One entry per layer: the ReLU mask (bool) or pooling choice (flat index, int32), None elsewhere."""

Drive = tuple[Tensor | fused.PooledDrive | None, ...]
"""One entry per layer: the feedback signal that arrived at that layer's output; from a drives-only
fused feedback, the one at an AdaReLU that an AdaPool follows is a `fused.PooledDrive` (the map
kept at the pooled resolution; `fused.as_map` writes it)."""

OUTPUTS = ("last", "average")


@dataclass(frozen=True)
class Feedback:
    """One feedback (generation) pass.

    features:    g at the target layer, e.g. (B, 1, 28, 28) for layer 0.
    signals:     per layer, the signal arriving at its output (before its mask); None below the
                 target layer. Used as the `drive` of the next feedforward pass and for eta.
    drives_only: the signals are kept only at AdaReLU / AdaPool layers (the drives), None
                 elsewhere, and may be `fused.PooledDrive`s (see `Drive`); enough for
                 inference, not for eta or the norm-matching loss.
    """

    features: Tensor
    signals: Drive
    drives_only: bool = False


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
        """Scored logits (B, classes): the last step, or the mean over steps 0..N."""
        if mode == "last":
            return self.logits[-1]
        if mode == "average":
            return torch.stack(self.logits).mean(0)
        raise ValueError(f"unknown output mode {mode!r}; choose one of {OUTPUTS}")


class CNNF(nn.Module):
    """CNN with recurrent generative feedback, built from an architecture spec
    (see `cnnf.architecture`). With iterations = 0 it is exactly the plain CNN.

    Args:
        spec: {"input_shape": [C, H, W], "blocks": [[token, ...], ...]}.
        iterations: N, feedback iterations used by `forward` and `infer`.
        reconstruct_to: k, the block output the feedback generates (0 = pixels).
        output: "last" or "average" logits, scored by `forward`.
        residual: r in (0, 1], the step h <- h + r (g - h); 1 is the paper.
    """

    def __init__(
        self,
        spec: dict,
        *,
        iterations: int = 0,
        reconstruct_to: int = 0,
        output: str = "last",
        residual: float = 1.0,
    ):
        super().__init__()
        built, self.block_ends, self.shapes = architecture.build(spec)
        self.layers = nn.ModuleList(built)
        self._norm_segments = fused.norm_segments(self.layers)  # layer runs one fused kernel computes
        self._feedback_segments = fused.feedback_segments(self.layers)  # the same for the feedback
        self.spec = {"input_shape": list(spec["input_shape"]), "blocks": [list(b) for b in spec["blocks"]]}
        _check_settings(iterations, reconstruct_to, output, residual, len(self.block_ends) - 1)
        self.iterations = iterations
        self.reconstruct_to = reconstruct_to
        self.output = output
        self.residual = residual

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["input_shape"])

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    def settings(self) -> dict:
        """The constructor arguments besides the spec (stored in checkpoints)."""
        return {
            "iterations": self.iterations,
            "reconstruct_to": self.reconstruct_to,
            "output": self.output,
            "residual": self.residual,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, classes) after `iterations` feedback steps, `output` mode."""
        return self.infer(x, drives_only=True).output(self.output)

    def encode(self, x: Tensor, to_layer: int | None = None) -> Tensor:
        """Plain feedforward features of images x at layer `to_layer` (default k)."""
        check_images(x, self.input_shape)
        return self._run(x, 0, self._position(to_layer), None, keep=False)[0]

    def feedforward(
        self, h: Tensor, from_layer: int | None = None, drive: Drive | None = None
    ) -> tuple[Tensor, Latents]:
        """Feedforward pathway from layer `from_layer` (default 0, the pixels) to the logits.

        drive: the `signals` of a feedback pass; they set AdaReLU / AdaPool. None gives plain
        ReLU / max-pooling. At layer 0, h may be images or a reconstruction, so only its shape
        and finiteness are checked (use `infer` or `forward` for images). Returns
        (logits (B, classes), latents).
        """
        start = self._position(from_layer or 0)
        _check_shape(h, self.shapes[start], "features" if start else "images")
        check_features(h)
        if drive is not None and len(drive) != len(self.layers):
            raise ValueError(f"drive must have one entry per layer ({len(self.layers)}), got {len(drive)}")
        logits, latents, _ = self._run(h, start, len(self.layers), drive, keep=False)
        return logits, latents

    def feedback(
        self, logits: Tensor, latents: Latents, to_layer: int | None = None, drives_only: bool = False
    ) -> Feedback:
        """Feedback pathway (the DGM, eq. 2): generate from logits-space `logits` (B, classes)
        with `latents` down to layer `to_layer` (default k). drives_only: keep the signals only
        where the next feedforward pass reads them (see `Feedback`), and skip writing the rest."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}")
        stop = self._position(to_layer)
        layers = tuple(self.layers)  # a tuple: ModuleList indexing and slicing cost ~15 us each
        signals: list[Tensor | None] = [None] * len(layers)
        g = logits
        i = len(layers) - 1
        while i >= stop:
            norm = self._feedback_segments.get(i)  # fused: [norm, bias, relu?, pool?] in one kernel
            if norm is not None and norm >= stop:
                run = slice(norm, i + 1)
                if fused.accepts_feedback(layers[run], g, latents[run]):
                    signals[run], g = fused.run_feedback_segment(layers[run], g, latents[run], drives_only)
                    i = norm - 1
                    continue
            if layers[i].adaptive and latents[i] is None:
                raise ValueError(f"no latent for layer {i}; the latents come from a pass that started above it")
            if layers[i].adaptive or not drives_only:
                signals[i] = g
            g = layers[i].feedback(g, latents[i])
            i -= 1
        return Feedback(g, tuple(signals), drives_only)

    def generate(self, logits: Tensor, latents: Latents, to_layer: int | None = None) -> Tensor:
        """Generated features g at layer `to_layer` (default k); see `feedback`."""
        return self.feedback(logits, latents, to_layer).features

    def eta(self, feedback: Feedback) -> Tensor:
        """eta(u, z) = sum over bias layers of <b, signal at that layer> (eq. 13, Lemma A.1), (B,)."""
        if feedback.drives_only:
            raise ValueError("eta needs the signals at the bias layers; generate with drives_only=False")
        total = torch.zeros((), dtype=feedback.features.dtype)
        for layer, signal in zip(self.layers, feedback.signals):
            if isinstance(layer, Bias) and signal is not None:
                total = total + (signal * layer.broadcast()).flatten(1).sum(1)
        return total

    def infer(
        self,
        x: Tensor,
        iterations: int | None = None,
        tol: float | None = None,
        keep_activations: bool = False,
        drives_only: bool = False,
    ) -> Inference:
        """Iterative inference (Algorithm 1) on images x (B, C, H, W) in [-1, 1].

        iterations: N (default: the model's). tol: adaptive stopping; a sample stops once its
        prediction is unchanged and ||h_{t+1} - h_t|| / ||h_t|| < tol. drives_only: the
        feedbacks keep only the signals that drive the next pass (see `Feedback`); faster,
        and all that logits, reconstructions and the ce / rec / cll losses need.
        """
        n = self.iterations if iterations is None else iterations
        if n < 0:
            raise ValueError(f"iterations must be >= 0, got {n}")
        start = self._position(None)
        h = self.encode(x)
        logits, latents, acts = self._run(h, start, len(self.layers), None, keep_activations)
        run = Inference([logits], [h], [], [latents], torch.zeros(len(x), dtype=torch.long), None)
        run.activations = [acts] if keep_activations else None
        active = torch.ones(len(x), dtype=torch.bool)
        for _ in range(n):
            fb = self.feedback(logits, latents, drives_only=drives_only)
            h_next = fb.features if self.residual == 1 else h + self.residual * (fb.features - h)
            logits_next, latents_next, acts = self._run(h_next, start, len(self.layers), fb.signals, keep_activations)
            run.iterations_used += active
            if tol is not None:
                settled = (logits_next.argmax(1) == logits.argmax(1)) & (_relative_change(h_next, h) < tol)
                h_next, logits_next, latents_next = _keep_where(active, (h_next, logits_next, latents_next), (h, logits, latents))
                active = active & ~settled
            h, logits, latents = h_next, logits_next, latents_next
            run.feedbacks.append(fb)
            run.logits.append(logits)
            run.features.append(h)
            run.latents.append(latents)
            if keep_activations:
                run.activations.append(acts)
            if not active.any():
                break
        return run

    def _run(self, h: Tensor, start: int, stop: int, drive: Drive | None, keep: bool):
        """Layers start..stop-1 on h; returns (their output, latents, every layer's output if keep)."""
        layers = tuple(self.layers)  # see `feedback`
        latents: list[Tensor | None] = [None] * len(layers)
        outputs: list[Tensor | None] = [None] * len(layers)
        i = start
        while i < stop:
            end = None if keep else self._norm_segments.get(i)  # fused: no per-layer outputs
            if end is not None and end <= stop:
                drives = (None,) * (end - i) if drive is None else drive[i:end]
                if fused.accepts(h, *drives):
                    h, latents[i:end] = fused.run_norm_segment(layers[i:end], h, drives)
                    i = end
                    continue
            h, latents[i] = layers[i](h, None if drive is None else fused.as_map(drive[i]))
            if keep:
                outputs[i] = h
            i += 1
        return h, tuple(latents), (tuple(outputs) if keep else None)

    def _position(self, layer: int | None) -> int:
        k = self.reconstruct_to if layer is None else layer
        if not 0 <= k < len(self.block_ends) - 1:
            raise ValueError(f"layer index must be in 0..{len(self.block_ends) - 2} (block outputs), got {k}")
        return self.block_ends[k]


def _check_settings(iterations: int, reconstruct_to: int, output: str, residual: float, blocks: int) -> None:
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not isinstance(reconstruct_to, int) or not 0 <= reconstruct_to < blocks:
        raise ValueError(f"reconstruct_to must be a block index in 0..{blocks - 1}, got {reconstruct_to!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not 0 < residual <= 1:
        raise ValueError(f"residual must be in (0, 1], got {residual!r}")


def _check_shape(h: Tensor, shape: Sequence[int], what: str) -> None:
    if tuple(h.shape[1:]) != tuple(shape):
        raise ValueError(f"expected {what} of shape (B, {', '.join(map(str, shape))}), got {tuple(h.shape)}")


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
