"""Training and inference images/s on any device (a CUDA GPU included), with `run.py`'s steps,
and how long a full training run of each model would take there.

    python benchmarks/throughput.py --device cuda           # on a GPU
    python benchmarks/throughput.py --device cpu --threads 2 --models paper_mnist
    python benchmarks/throughput.py --device cpu --threads 2 --models wrn40_2_cifar vgg16 --batch 8 --iterations 0 1 2
    python benchmarks/throughput.py --device cuda --precision bf16   # under bfloat16 autocast

Writes benchmarks/results/throughput-<device>-<date>-<time>.{json,md} and prints the table.
The CPU's full report (ceilings, efficiency, memory) is `run.py`; this one is for devices it
does not cover.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import cnnf
from cnnf.device import resolve_device
from cnnf.precision import PRECISIONS
from run import inference_step, training_step

RESULTS = Path(__file__).with_name("results")
TRAIN_IMAGES, PAPER_EPOCHS = 55_000, 30
"""Fashion-MNIST's training images less the 5,000 held out, and the paper's standard epochs."""
BUDGET_IMAGES = {
    "paper_mnist": TRAIN_IMAGES * PAPER_EPOCHS,
    "conv4_mnist": TRAIN_IMAGES * PAPER_EPOCHS,
    "wrn40_2_cifar": 45_000 * 500,  # CIFAR-10 less 5,000 held out, the released code's 500 epochs
    "vgg16": 128 * 200_000,         # appendix B.5.1: 200,000 steps of 128 ImageNet images
}
"""Training images a full run of each model sees (configs/ holds the runs)."""
DEFAULT_MODELS = ("conv4_mnist", "paper_mnist")
"""The 28 x 28 networks; name the others with --models (one VGG-16 step on a CPU takes seconds)."""


def images_per_s(step: Callable[[], None], batch: int, steps: int, device: torch.device) -> float:
    """Median images/s of `steps` timed calls after two untimed ones (the device synchronised
    around each call, so a GPU's queued work is counted)."""
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for call in range(steps + 2):
        synchronise()
        start = time.perf_counter()
        step()
        synchronise()
        if call >= 2:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def measure(name: str, iterations: int, device: torch.device, batch: int, steps: int, precision: str = "fp32") -> dict:
    model = cnnf.create_model(name, iterations=iterations).to(device)
    train = images_per_s(training_step(model, batch, precision), batch, steps, device)
    infer = images_per_s(inference_step(model, batch, precision), batch, steps, device)
    return {"model": name, "iterations": iterations, "train_images_per_s": train, "inference_images_per_s": infer,
            "paper_budget_hours": BUDGET_IMAGES[name] / train / 3600}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def markdown(report: dict) -> str:
    lines = [f"# Throughput on {report['device_name']} ({report['device']}), batch {report['batch']}, {report['precision']}",
             "", f"{report['date']}; torch {report['torch']}; backend {report['backend']}; median of {report['steps']} "
             f"steps; `python benchmarks/throughput.py --device {report['device']} --precision {report['precision']}`", "",
             "| model | N | train img/s | inference img/s | full training run (h) |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['iterations']} | {r['train_images_per_s']:.1f} | "
                     f"{r['inference_images_per_s']:.1f} | {r['paper_budget_hours']:.2f} |")
    lines += ["", "Full run: " + "; ".join(f"{name} {images:,} images" for name, images in BUDGET_IMAGES.items())
              + " (30 epochs of Fashion-MNIST; the released code's 500 CIFAR-10 epochs; appendix B.5's 200,000 steps)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--models", nargs="+", choices=cnnf.list_models(), default=list(DEFAULT_MODELS))
    parser.add_argument("--iterations", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: under bfloat16 autocast")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = [measure(name, n, device, args.batch, args.steps, args.precision) for name in args.models for n in args.iterations]
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "backend": cnnf.get_backend(), "precision": args.precision, "batch": args.batch,
              "steps": args.steps, "rows": rows}
    stem = args.out / f"throughput-{device.type}-{args.precision}-{time.strftime('%Y-%m-%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report) + f"\nwrote {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
