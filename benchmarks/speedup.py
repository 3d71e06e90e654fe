"""What the fast backend buys: images/s of the fast backend against a baseline, measured
interleaved in one process (fast, baseline, baseline, fast, ...), so that a shared host's drift
between two separate `run.py` reports does not enter the ratio.

    python benchmarks/speedup.py                                  # against the reference backend
    python benchmarks/speedup.py --baseline torch-code --rounds 8 # against the fast backend without its kernels
    python benchmarks/speedup.py --models paper_mnist --modes train --iterations 5

Baselines:
    reference    `cnnf.use_backend("reference")`: the plain torch ops of cnnf.layers and cnnf.model
    torch-code   the fast backend with `cnnf.fast.use_kernels(False)`: channels-last maps and its
                 torch code, without the C++ kernels

Writes benchmarks/results/speedup-<baseline>-<date>-<time>.{json,md} and prints the table.
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
from cnnf.fast import kernels
from cnnf.fast.allocator import keep_freed_memory
from run import cpu_counters, fmt_share, inference_step, steal_fraction, training_step
from throughput import images_per_s

RESULTS = Path(__file__).with_name("results")
CPU = torch.device("cpu")

BASELINES = {
    "reference": lambda: cnnf.use_backend("reference"),
    "torch-code": lambda: kernels.use_kernels(False),
}
"""Name: a context manager under which the baseline runs instead of the fast backend."""


def compare(baseline: str, name: str, mode: str, iterations: int, batch: int, rounds: int, steps: int) -> dict:
    """Median images/s of the fast backend ("on") and the baseline ("off") over interleaved
    rounds (the order flips every round, so neither side always runs first)."""
    model = cnnf.create_model(name, iterations=iterations)
    step = (training_step if mode == "train" else inference_step)(model, batch)
    rates = {"on": [], "off": []}
    start = cpu_counters()
    for round_ in range(rounds):
        for state in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            with cnnf.use_backend("fast") if state == "on" else BASELINES[baseline]():
                rates[state].append(images_per_s(step, batch, steps, CPU))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"model": name, "mode": mode, "iterations": iterations, "on": on, "off": off, "speedup": on / off,
            "runs": rates, "steal_fraction": steal_fraction(start, cpu_counters())}


def markdown(report: dict) -> str:
    lines = [f"# Speed-up of the fast backend over `{report['baseline']}`, batch {report['batch']}, "
             f"{report['threads']} threads", "",
             f"{report['date']}; torch {torch.__version__}; fused kernels {'built' if report['kernels'] else 'absent'}; "
             f"load average at start {', '.join(f'{v:.2f}' for v in report['load_average_start'])}; "
             f"median of {report['rounds']} interleaved rounds of {report['steps']} steps; "
             f"`python benchmarks/speedup.py --baseline {report['baseline']}`", "",
             "| model | mode | N | fast img/s | baseline img/s | speed-up | steal % |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['mode']} | {r['iterations']} | {r['on']:.1f} | {r['off']:.1f} "
                     f"| {r['speedup']:.2f} | {fmt_share(r.get('steal_fraction'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", choices=BASELINES, default="reference", help="what the fast backend is compared with")
    parser.add_argument("--models", default="conv4_mnist,paper_mnist")
    parser.add_argument("--iterations", default="1,5", help="comma-separated N (default 1,5)")
    parser.add_argument("--modes", default="train,inference", help="comma-separated (default train,inference)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not kernels.available():
        raise SystemExit("the fused kernels are not built (run `make setup`)")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    report = {"baseline": args.baseline, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "batch": args.batch,
              "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "kernels": kernels.available(),
              "load_average_start": list(os.getloadavg()), "rows": []}
    for name in args.models.split(","):
        for mode in args.modes.split(","):
            for n in map(int, args.iterations.split(",")):
                report["rows"].append(compare(args.baseline, name, mode, n, args.batch, args.rounds, args.steps))
    stem = RESULTS / f"speedup-{args.baseline}-{time.strftime('%Y-%m-%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report) + f"\nwrote {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
