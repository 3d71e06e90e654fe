"""What one optimisation buys: images/s with it and without it, measured interleaved in one
process (on, off, off, on, ...), so that a shared host's drift between two separate `run.py`
reports does not enter the ratio.

    python benchmarks/speedup.py                             # the fused kernels; both models, N = 1 and 5
    python benchmarks/speedup.py --switch feedback --rounds 8
    python benchmarks/speedup.py --switch one-channel-conv --models paper_mnist
    python benchmarks/speedup.py --switch reconstruction-loss --modes train

Switches, and what runs when one is off:
    kernels            every `cnnf.fused` kernel off: the layers' torch code
    norm-pool          [norm, bias, AdaReLU?, AdaPool] in one kernel off: the norm kernel, then the
                       pool kernel (the map between them written and read again)
    feedback           the fused feedback through [norm, bias, AdaReLU?, AdaPool?] off: layer by layer
    one-channel-conv   Conv2d's matmul form of the transposed convolution to one channel off:
                       F.conv_transpose2d (oneDNN)
    one-channel-backward  the backward of the transposed convolution to one channel through
                       oneDNN's convolution from one channel off: matmuls on the unfolded gradient
    image-strides      one-channel maps (the images) viewed with NHWC strides off: `contiguous`
                       keeps their NCHW strides, and oneDNN runs the first convolution as NCHW
    drives-only        the fused feedback writes every signal map (u and m) even where only the
                       drives are kept (`infer(..., drives_only=True)`, as inference and training
                       without the norm-matching loss run)
    reconstruction-loss  the fused reconstruction loss (one sweep over all g_t and the target)
                       off: F.mse_loss per step on (B, H, W, C) views, summed by autograd
                       (training only)
    pooled-drive       the drive of an AdaReLU that an AdaPool follows kept at the pooled
                       resolution (`fused.PooledDrive`) off: the feedback writes it as a map
                       and the next pass reads that map
    fixed-channels     the kernels' channel count as a compile-time constant (16, 32, 64) off:
                       every count at run time
    fused-adam         Adam's update as one fused kernel (`cnnf.train.adam`) off: torch's default
                       foreach form (training only)

Writes benchmarks/results/speedup-<switch>-<date>-<time>.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import cnnf
from cnnf import fused, layers
from cnnf.allocator import keep_freed_memory
from run import cpu_counters, fmt_share, inference_step, steal_fraction, training_step

RESULTS = Path(__file__).with_name("results")


def _onednn_to_one_channel(g, weight, padding):
    return layers.channels_last(F.conv_transpose2d(g, weight, padding=padding))


_feedback_norm = fused.feedback_norm  # the kernel's wrapper, before a switch replaces it


def _every_signal_written(g, index, mask, size, eps, drives_only=False):
    return _feedback_norm(g, index, mask, size, eps)


def _relu_drive_written(g, index, mask, size, eps, drives_only=False):
    """The drives-only feedback before `fused.PooledDrive`: where a ReLU and a pool meet, it
    writes the unpooled map u as the ReLU's drive (and the next pass reads it)."""
    if not (drives_only and index is not None and mask is not None):
        return _feedback_norm(g, index, mask, size, eps, drives_only)
    unpooled, out = fused._FeedbackNorm.apply(g, index, mask, size, eps, True, False)
    return unpooled, None, out


@torch.autograd.function.once_differentiable
def _matmul_backward_to_one_channel(ctx, d_out):
    """The previous backward of `_ConvTransposeToOneChannel`: the matmuls on the unfolded gradient."""
    g, weight = ctx.saved_tensors
    batch, channels, height, width = g.shape
    k, p = weight.shape[-1], ctx.padding
    windows = F.pad(d_out[:, 0], (p, p, p, p)).unfold(1, height, 1).unfold(2, width, 1)
    d_taps = windows.permute(0, 3, 4, 1, 2).reshape(-1, k * k)  # the gradient of each tap
    d_g = (d_taps @ weight.reshape(channels, k * k).t()).view(batch, height, width, channels).permute(0, 3, 1, 2)
    d_w = (layers.channels_last(g).permute(0, 2, 3, 1).reshape(-1, channels).t() @ d_taps).view_as(weight)
    return d_g, d_w, None


def _norm_then_pool(f, bias, relu_drive, pool_drive, relu, size, eps):
    out, mask = fused.norm_bias_relu(f, bias, fused.as_map(relu_drive), relu, eps)
    pooled, index = fused.adaptive_pool(out, pool_drive, size)
    return pooled, mask, index


_adam_step = torch.optim.Adam.step


def _foreach_adam_step(optimizer, *args, **kwargs):
    """Adam.step in torch's default (foreach) form, whatever the optimiser was built with."""
    settings = [(group["fused"], group["foreach"]) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = False, True
    try:
        return _adam_step(optimizer, *args, **kwargs)
    finally:
        for group, (fused_, foreach) in zip(optimizer.param_groups, settings):
            group["fused"], group["foreach"] = fused_, foreach


SWITCHES = {
    "kernels": lambda: mock.patch.object(fused, "accepts", lambda *maps: False),
    "norm-pool": lambda: mock.patch.object(fused, "norm_bias_relu_pool", _norm_then_pool),
    "feedback": lambda: mock.patch.object(fused, "accepts_feedback", lambda *args: False),
    "one-channel-conv": lambda: mock.patch.object(layers._ConvTransposeToOneChannel, "apply", _onednn_to_one_channel),
    "one-channel-backward": lambda: mock.patch.object(layers._ConvTransposeToOneChannel, "backward",
                                                      staticmethod(_matmul_backward_to_one_channel)),
    "image-strides": lambda: mock.patch.object(layers, "channels_last",
                                               lambda t: t.contiguous(memory_format=torch.channels_last)),
    "drives-only": lambda: mock.patch.object(fused, "feedback_norm", _every_signal_written),
    "pooled-drive": lambda: mock.patch.object(fused, "feedback_norm", _relu_drive_written),
    "reconstruction-loss": lambda: mock.patch.object(fused, "accepts_squared_errors", lambda *args: False),
    "fixed-channels": fused.runtime_channel_counts,
    "fused-adam": lambda: mock.patch.object(torch.optim.Adam, "step", _foreach_adam_step),
}
"""Name: a context manager under which the optimisation is off."""


def images_per_s(step, batch: int, steps: int) -> float:
    """Median images/s of `steps` timed calls after one untimed call."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def compare(switch: str, name: str, mode: str, iterations: int, batch: int, rounds: int, steps: int) -> dict:
    """Median images/s with the optimisation on and off over interleaved rounds (the order
    flips every round, so neither side always runs first)."""
    model = cnnf.create_model(name, iterations=iterations)
    step = (training_step if mode == "train" else inference_step)(model, batch)
    rates = {"on": [], "off": []}
    start = cpu_counters()
    for round_ in range(rounds):
        for state in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            with contextlib.nullcontext() if state == "on" else SWITCHES[switch]():
                rates[state].append(images_per_s(step, batch, steps))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"model": name, "mode": mode, "iterations": iterations, "on": on, "off": off, "speedup": on / off,
            "runs": rates, "steal_fraction": steal_fraction(start, cpu_counters())}


def markdown(report: dict) -> str:
    lines = [f"# Speed-up of `{report['switch']}`, batch {report['batch']}, {report['threads']} threads", "",
             f"{report['date']}; torch {torch.__version__}; fused kernels {'built' if report['kernels'] else 'absent'}; "
             f"load average at start {', '.join(f'{v:.2f}' for v in report['load_average_start'])}; "
             f"median of {report['rounds']} interleaved rounds of {report['steps']} steps; "
             f"`python benchmarks/speedup.py --switch {report['switch']}`", "",
             "| model | mode | N | on img/s | off img/s | speed-up | steal % |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['iterations']} | {r['on']:.1f} | {r['off']:.1f} "
                     f"| {r['speedup']:.2f} | {fmt_share(r.get('steal_fraction'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switch", choices=SWITCHES, default="kernels", help="the optimisation to measure")
    parser.add_argument("--models", default="conv4_mnist,paper_mnist")
    parser.add_argument("--iterations", default="1,5", help="comma-separated N (default 1,5)")
    parser.add_argument("--modes", default="train,inference", help="comma-separated (default train,inference)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.switch in ("kernels", "feedback") and not fused.available():
        raise SystemExit("the fused kernels are not built (run `make setup`, and unset CNNF_FUSED=0)")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    report = {"switch": args.switch, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "batch": args.batch,
              "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "kernels": fused.available(),
              "load_average_start": list(os.getloadavg()), "rows": []}
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            for n in map(int, args.iterations.split(",")):
                report["rows"].append(compare(args.switch, name, mode, n, args.batch, args.rounds, args.steps))
    stem = RESULTS / f"speedup-{args.switch}-{time.strftime('%Y-%m-%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report) + f"\nwrote {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
