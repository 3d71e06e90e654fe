"""Where the time of one CNN-F step goes: torch.profiler's per-op table (self CPU time per
batch, by op and input shape) for a training step or inference, as `run.py` times them.

    python benchmarks/profile_step.py paper_mnist inference --iterations 5
    python benchmarks/profile_step.py conv4_mnist train --iterations 1 --rows 40
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import cnnf
from cnnf.fast.allocator import keep_freed_memory
from run import inference_step, training_step


DENSE_OPS = {"aten::mkldnn_convolution", "aten::_convolution", "aten::convolution_backward", "aten::mm",
             "aten::addmm", "aten::bmm"}
"""The ops whose time the MAC count describes; the rest is memory-bound work and overhead."""


def profile_table(name: str, mode: str, iterations: int, batch: int, steps: int, rows: int) -> str:
    """The `rows` ops with the most self CPU time, in ms per step, with their input shapes."""
    model = cnnf.create_model(name, iterations=iterations)
    step = (training_step if mode == "train" else inference_step)(model, batch)
    step()  # warm-up: kernels, Adam state, allocator
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    dense = sum(e.self_cpu_time_total for e in events if e.key in DENSE_OPS)
    lines = [f"{name} {mode} N={iterations} batch {batch}: {total / steps / 1e3:.0f} ms of op time per step, "
             f"{100 * dense / total:.0f} % of it in convolutions and matmuls",
             f"{'ms/step':>8} {'share':>6} {'calls':>5}  op  input shapes"]
    for e in events[:rows]:
        lines.append(f"{e.self_cpu_time_total / steps / 1e3:8.1f} {100 * e.self_cpu_time_total / total:5.1f}% "
                     f"{e.count // steps:5d}  {e.key}  {e.input_shapes}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=cnnf.list_models())
    parser.add_argument("mode", choices=("train", "inference"))
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(profile_table(args.model, args.mode, args.iterations, args.batch, args.steps, args.rows))


if __name__ == "__main__":
    main()
