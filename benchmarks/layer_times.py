"""Where one feedback iteration of CNN-F inference spends its time, layer by layer, timed
directly (no profiler: torch.profiler's per-op bookkeeping inflates small elementwise ops, so
its table overstates them), and how close to the conv ceiling the iteration could get.

    python benchmarks/layer_times.py paper_mnist [--batch 128] [--threads 2] [--repeats 15]

One iteration = the feedback pass from the logits down to layer k, then the feedforward pass
back up driven by its signals (the steady-state cost of every N >= 1). Each layer is timed
alone on the activations of a real iteration under inference mode. Layers with weights
(convolutions, matrix products) are "MAC" time, everything else (instance norm, bias, masks,
pooling, unpooling, reshapes) "elementwise" time. The report gives the iteration's fraction of
the largest convolution's forward GFLOP/s (the ceiling of `run.py`), the fraction it would reach
if elementwise work cost nothing, and the elementwise time that 70 % of the ceiling allows.
Writes `layers-<model>-<date>-<time>.md` to benchmarks/results.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
from collections.abc import Callable

import torch

import cnnf
from cnnf.fast import ops
from cnnf.fast.allocator import keep_freed_memory
from cnnf.model import CNNF
from run import RESULTS_DIR, Settings, conv_ceiling, layer_macs, random_batch, seconds_per_call

TARGET = 0.70
"""The project's target: 70 % of the ceiling."""


def iteration_calls(model: CNNF, batch: int) -> list[tuple[str, int, Callable[[], object]]]:
    """(direction, layer index, call) for each layer of one iteration, on a real iteration's
    inputs: the feedback pass top-down, then the driven feedforward pass up from layer k, each
    layer as the fast backend runs it on its own (`cnnf.fast.ops`, outside the fused runs)."""
    x, _ = random_batch(model, batch)
    with torch.inference_mode():
        run = model.infer(x, iterations=1, keep_activations=True)
    feedback, latents = run.feedbacks[0], run.latents[0]
    start = model.block_ends[model.reconstruct_to]
    calls = []
    g = run.logits[0]
    for i in range(len(model.layers) - 1, start - 1, -1):
        calls.append(("feedback", i, lambda i=i, g=g: ops.feedback(model.layers[i], g, latents[i])))
        with torch.inference_mode():
            g = ops.feedback(model.layers[i], g, latents[i])
    h = feedback.features
    for i in range(start, len(model.layers)):
        calls.append(("forward", i, lambda i=i, h=h: ops.forward(model.layers[i], h, feedback.signals[i])))
        with torch.inference_mode():
            h, _ = ops.forward(model.layers[i], h, feedback.signals[i])
    return calls


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of one call under inference mode."""
    with torch.inference_mode():
        return 1e3 * statistics.median(seconds_per_call(call, warmup=2, repeats=repeats, calls=1))


def report(name: str, batch: int, threads: int, repeats: int) -> str:
    model = cnnf.create_model(name).eval()
    settings = Settings(threads=threads, repeats=repeats, steps=1, warmup=2, batch=batch, iterations=(1,),
                        models=(name,), matmul_size=0, quick=False)
    ceiling = conv_ceiling(model, settings)["forward"]["median"]  # GFLOP/s
    rows, mac_ms, other_ms, gflop = [], 0.0, 0.0, 0.0
    for direction, i, call in iteration_calls(model, batch):
        ms = median_ms(call, repeats)
        layer_gflop = 2 * layer_macs(model, i) * batch / 1e9
        gflop += layer_gflop
        if layer_gflop:
            mac_ms += ms
        else:
            other_ms += ms
        rate = f"{layer_gflop / ms * 1e3:.1f}" if layer_gflop else ""
        rows.append(f"| {direction} | {i} {model.layers[i]!r} | {ms:.2f} | {rate} |")
    ideal_ms = gflop / ceiling * 1e3
    allowed = ideal_ms / TARGET - mac_ms
    lines = [
        f"# Layer times: {name}, one inference iteration, batch {batch}, {threads} threads",
        "",
        f"{datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"ceiling (largest conv, forward) {ceiling:.1f} GFLOP/s; `python benchmarks/layer_times.py {name} "
        f"--batch {batch} --threads {threads} --repeats {repeats}`",
        "",
        "| pass | layer | ms | GFLOP/s |",
        "|---|---|---|---|",
        *rows,
        "",
        f"- MAC layers: {mac_ms:.1f} ms; elementwise layers: {other_ms:.1f} ms "
        f"({100 * other_ms / (mac_ms + other_ms):.0f} % of {mac_ms + other_ms:.1f} ms).",
        f"- Fraction of the ceiling: {100 * ideal_ms / (mac_ms + other_ms):.0f} % as measured; "
        f"{100 * ideal_ms / mac_ms:.0f} % if elementwise work took no time.",
        f"- {100 * TARGET:.0f} % of the ceiling needs the iteration in {ideal_ms / TARGET:.1f} ms, leaving "
        + (f"{allowed:.1f} ms for elementwise work ({100 * allowed / other_ms:.0f} % of today's)."
           if allowed > 0 else "no time for elementwise work: the MAC layers alone are too slow."),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=cnnf.list_models())
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    text = report(args.model, args.batch, args.threads, args.repeats)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    path = RESULTS_DIR / f"layers-{args.model}-{stamp}.md"
    path.write_text(text)
    print(text + f"wrote {path}")


if __name__ == "__main__":
    main()
