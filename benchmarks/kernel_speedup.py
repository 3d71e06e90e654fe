"""What the fused C++ kernels (`cnnf.fused`) buy: images/s with and without them, measured
interleaved in one process (kernels, torch layers, kernels, ...), so a shared host's drift
between two separate `run.py` reports does not enter the ratio.

    python benchmarks/kernel_speedup.py                      # both models, N = 1 and 5, batch 128
    python benchmarks/kernel_speedup.py --models conv4_mnist --iterations 1 --rounds 5

Writes benchmarks/results/kernels-<date>-<time>.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import cnnf
from cnnf import fused
from cnnf.allocator import keep_freed_memory
from run import inference_step, training_step

RESULTS = Path(__file__).with_name("results")


def images_per_s(step, batch: int, steps: int) -> float:
    """Median images/s of `steps` timed calls after one untimed call."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def compare(name: str, mode: str, iterations: int, batch: int, rounds: int, steps: int) -> dict:
    """Median images/s with the kernels and with the torch layers over interleaved rounds."""
    model = cnnf.create_model(name, iterations=iterations)
    step = (training_step if mode == "train" else inference_step)(model, batch)
    with_kernels = fused.accepts
    rates = {"kernels": [], "torch": []}
    try:
        for _ in range(rounds):
            for path in rates:
                fused.accepts = with_kernels if path == "kernels" else (lambda *maps: False)
                rates[path].append(images_per_s(step, batch, steps))
    finally:
        fused.accepts = with_kernels
    kernels, plain = statistics.median(rates["kernels"]), statistics.median(rates["torch"])
    return {"model": name, "mode": mode, "iterations": iterations, "kernels": kernels, "torch": plain,
            "speedup": kernels / plain, "runs": rates}


def markdown(report: dict) -> str:
    lines = [f"# Fused kernels against torch layers, batch {report['batch']}, {report['threads']} threads", "",
             f"{report['date']}; torch {torch.__version__}; load average at start "
             f"{', '.join(f'{v:.2f}' for v in report['load_average_start'])}; "
             f"median of {report['rounds']} interleaved rounds of {report['steps']} steps; "
             "`python benchmarks/kernel_speedup.py`", "",
             "| model | mode | N | kernels img/s | torch layers img/s | speed-up |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['iterations']} | {r['kernels']:.1f} | {r['torch']:.1f} "
                     f"| {r['speedup']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="conv4_mnist,paper_mnist")
    parser.add_argument("--iterations", default="1,5", help="comma-separated N (default 1,5)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not fused.available():
        raise SystemExit("the fused kernels are not built (run `make setup`, and unset CNNF_FUSED=0)")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "batch": args.batch, "threads": args.threads,
              "rounds": args.rounds, "steps": args.steps, "load_average_start": list(os.getloadavg()), "rows": []}
    for name in args.models.split(","):
        for mode in ("train", "inference"):
            for n in map(int, args.iterations.split(",")):
                report["rows"].append(compare(name, mode, n, args.batch, args.rounds, args.steps))
    stem = RESULTS / f"kernels-{time.strftime('%Y-%m-%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report) + f"\nwrote {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
