"""CNN-F benchmark suite: throughput, efficiency against the machine's ceiling, and memory.

One command measures everything and writes `bench-<date>-<time>.json` and `.md` (plus
`latest.json` / `latest.md`) into the output folder:

    python benchmarks/run.py [--threads 2] [--repeats 5] [--out benchmarks/results]
    python benchmarks/run.py --quick        # smoke run: batch 8, 1 repeat, N in {0, 1};
                                            # writes bench-...-quick.*, leaves latest.* alone

What is measured (see benchmarks/README.md for how to read the results):
    machine     CPU model, torch version, threads, load average at start and end
    ceilings    GFLOP/s of a large float32 matmul and of each network's largest convolution,
                forward and forward + backward, with the same thread count
    throughput  training-step and inference images/s for N feedback iterations, per model
    attacks     PGD-7 images/s, end to end through the N-iteration model and from the first pass
    memory      peak RSS of a training step, in a fresh subprocess per (model, N)
    allocator   inference images/s in fresh processes with glibc's malloc defaults and with
                cnnf.fast.allocator.keep_freed_memory() (which the rest of the run uses, as `cnnf` does)

Each throughput is turned into achieved GFLOP/s with an analytic multiply-accumulate (MAC)
count, compared with the matching ceiling, and the cost of N iterations is compared with what
the MAC count predicts (the project's target: within 1.2x).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

import cnnf
from cnnf import steps
from cnnf.device import device_of
from cnnf.fast import kernels
from cnnf.fast.allocator import keep_freed_memory
from cnnf.layers import Conv2d, Linear
from cnnf.losses import LossWeights
from cnnf.model import CNNF
from cnnf.precision import autocast
from cnnf.train import adam

SCHEMA_VERSION = 6
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_OVERHEAD = 1.2
"""The project's target: N iterations cost at most 1.2x what their MAC count predicts."""
ATTACK_STEPS = 7
ATTACK_EPS = 0.3
"""L-infinity radius in [0, 1] pixel units (the usual MNIST budget)."""
ATTACK_SOURCES = ("e2e", "first")
MALLOC_MODES = ("default", "kept")
"""glibc's malloc as it starts, and after cnnf.fast.allocator.keep_freed_memory()."""
MEMORY_PROBE_STEPS = 2
"""Training steps a memory probe runs (see `memory_probe`)."""
MEMORY_METHOD = (
    "a fresh process per (model, N) reads VmRSS and the peak VmHWM from /proc/self/status; "
    "the peak is reset with /proc/self/clear_refs before the second step to get that step's transient. "
    "Not ru_maxrss: Linux carries the parent's peak over fork + exec, "
    "so a child's ru_maxrss starts at the parent's size"
)
BUSY_LOAD = 0.5
"""A 1-minute load average above this at the start means other work shared the CPUs."""
BUSY_STEAL = 0.05
"""A share of steal time above this during the run means other virtual machines shared the cores."""

FULL_DEFAULTS = {"batch": 128, "repeats": 5, "iterations": (0, 1, 2, 5), "matmul_size": 2048}
QUICK_DEFAULTS = {"batch": 8, "repeats": 1, "iterations": (0, 1), "matmul_size": 512}

Stats = dict[str, float | list[float]]
"""{"median", "min", "max", "runs"}: one value per timed run."""


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures and how often."""

    threads: int
    repeats: int
    steps: int
    warmup: int
    batch: int
    iterations: tuple[int, ...]
    models: tuple[str, ...]
    matmul_size: int
    quick: bool
    keep_freed_memory: bool = False  # cnnf.fast.allocator.keep_freed_memory() was applied (as `cnnf` does)

    @property
    def calls(self) -> int:
        """Calls of a measured step per measurement, warm-up included."""
        return self.warmup + self.repeats * self.steps


# --- Analytic multiply-accumulate counts -------------------------------------------------------


def layer_macs(model: CNNF, index: int) -> int:
    """MACs per image of layer `index` in the feedforward pass; its feedback twin (transposed
    conv, W^T) costs the same. Layers without weights count 0."""
    layer = model.layers[index]
    if isinstance(layer, Conv2d):
        _, in_channels, kernel, _ = layer.weight.shape
        return math.prod(model.shapes[index + 1]) * in_channels * kernel * kernel
    if isinstance(layer, Linear):
        return layer.weight.numel()
    return 0


def pass_macs(model: CNNF, start: int) -> int:
    """MACs per image of a feedforward pass from layer index `start` to the logits, which is
    also the cost of a feedback pass from the logits down to layer `start`."""
    return sum(layer_macs(model, i) for i in range(start, len(model.layers)))


def inference_macs(model: CNNF, iterations: int) -> int:
    """MACs per image of inference with N iterations: the first pass over all layers, then per
    iteration one feedback pass down to layer k and one feedforward pass up from it."""
    start = model.block_ends[model.reconstruct_to]
    feedback, feedforward = pass_macs(model, start), pass_macs(model, start)
    return pass_macs(model, 0) + iterations * (feedback + feedforward)


def training_macs(model: CNNF, iterations: int) -> int:
    """MACs per image of a training step: forward plus backward (grad wrt inputs and weights)."""
    return 3 * inference_macs(model, iterations)


def attack_macs(model: CNNF, iterations: int) -> int:
    """MACs per image of PGD-7 whose gradients come from inference with N iterations: per step
    a forward and a backward wrt the input only (weight gradients are not needed)."""
    return ATTACK_STEPS * 2 * inference_macs(model, iterations)


def largest_conv(model: CNNF) -> int:
    """Index of the Conv2d layer with the most MACs per image."""
    convs = [i for i, layer in enumerate(model.layers) if isinstance(layer, Conv2d)]
    return max(convs, key=lambda i: layer_macs(model, i))


# --- Timing ------------------------------------------------------------------------------------


def seconds_per_call(fn: Callable[[], object], warmup: int, repeats: int, calls: int) -> list[float]:
    """Wall seconds per call of `fn`, one value per run: `warmup` untimed calls, then `repeats`
    runs of `calls` calls each."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls)
    return runs


def summarize(values: Sequence[float]) -> Stats:
    """Median and spread of per-run values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def rate(work: float, seconds: Sequence[float]) -> Stats:
    """`work` per second for each run (e.g. images/s or FLOP/s), summarized."""
    return summarize([work / s for s in seconds])


def time_rate(fn: Callable[[], object], work: float, s: Settings) -> Stats:
    """Work per second of `fn` under the run's warm-up, repeats and steps."""
    return rate(work, seconds_per_call(fn, s.warmup, s.repeats, s.steps))


Ceiling = tuple[Callable[[], object], float]
"""A ceiling kernel and its GFLOP per call."""


def time_paired(fn: Callable[[], object], work: float, ceiling: Ceiling, s: Settings,
                calls: int) -> tuple[Stats, Stats, float | None]:
    """Work per second of `fn` and GFLOP/s of the ceiling kernel, timed in turns: every timed
    run of `calls` calls of fn is followed by a run of the ceiling kernel, so both see the
    same moment of a shared host, whose speed drifts from minute to minute (measured: the
    same convolution at 161 and 228 GFLOP/s five minutes apart). Returns (fn's rates, the
    ceiling's rates, run by run; the share of steal time while they ran)."""
    kernel, gflop = ceiling
    start = cpu_counters()
    for _ in range(s.warmup):
        fn()
        kernel()
    rates, ceilings = [], []
    for _ in range(s.repeats):
        rates.append(work / seconds_per_call(fn, 0, 1, calls)[0])
        ceilings.append(gflop / seconds_per_call(kernel, 0, 1, s.steps)[0])
    return summarize(rates), summarize(ceilings), steal_fraction(start, cpu_counters())


# --- Ceilings ----------------------------------------------------------------------------------


def matmul_ceiling(s: Settings) -> dict:
    """GFLOP/s of a square float32 matmul of size `matmul_size`."""
    n = s.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    return {"size": n, "gflops": time_rate(lambda: a @ b, 2 * n**3 / 1e9, s)}


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def conv_ceiling(model: CNNF, s: Settings) -> dict:
    """GFLOP/s of F.conv2d with the shape of the network's largest convolution at the run's
    batch, in each memory layout: forward, and forward + backward (grad wrt input and weight,
    counted as 3x the forward FLOPs). The ceiling is the faster layout of each."""
    index = largest_conv(model)
    layer = model.layers[index]
    by_layout = {
        name: {kind: time_rate(kernel, gflop, s) for kind, (kernel, gflop) in conv_kernels(model, layout, s.batch).items()}
        for name, layout in LAYOUTS.items()
    }
    # the faster layout by its fastest run: a slow moment of the host during one layout's runs
    # lowers their median, and would pick the slower layout as the ceiling of every row
    faster = {kind: max(by_layout, key=lambda name: by_layout[name][kind]["max"]) for kind in CEILING_KINDS}
    return {
        "layer": index,
        "input_shape": [s.batch, *model.shapes[index]],
        "weight_shape": list(layer.weight.shape),
        "padding": layer.padding,
        "macs_per_image": layer_macs(model, index),
        "by_layout": by_layout,
        "faster_layout": faster,
        **{kind: by_layout[faster[kind]][kind] for kind in CEILING_KINDS},
    }


CEILING_KINDS = ("forward", "forward_backward")
"""The ceiling of inference and of training (and attacks, which also run backward)."""


PLACEMENTS = 4
"""Input buffers each ceiling call convolves, at different addresses: one convolution's speed
moves with where its input lies (measured: 155-225 GFLOP/s over ten 64-byte-aligned offsets
on this machine's paper_mnist and conv4_mnist shapes), and one buffer made the ceiling of a
whole table block 30 % fast or slow by chance."""


def placed_copies(t: torch.Tensor, copies: int) -> list[torch.Tensor]:
    """`copies` copies of t (same strides), each starting at a seeded random 64-byte-aligned
    offset within 64 KB of a fresh buffer."""
    offsets = torch.randint(0, 1024, (copies,), generator=torch.Generator().manual_seed(0)) * 16
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))  # t's dims, outermost in memory first
    placed = []
    for offset in offsets.tolist():
        dense = torch.empty(t.numel() + offset)[offset:].view([t.shape[d] for d in order])
        placed.append(dense.permute([order.index(d) for d in range(t.dim())]).copy_(t))
    return placed


def conv_kernels(model: CNNF, layout: torch.memory_format, batch: int) -> dict[str, Ceiling]:
    """The network's largest convolution as ceiling kernels in `layout`: {"forward",
    "forward_backward"} -> (kernel, GFLOP per call). A call runs the convolution on each of
    `PLACEMENTS` copies of its input."""
    index = largest_conv(model)
    layer = model.layers[index]
    gflop = PLACEMENTS * 2 * layer_macs(model, index) * batch / 1e9
    xs = placed_copies(torch.randn(batch, *model.shapes[index]).contiguous(memory_format=layout), PLACEMENTS)
    weight = torch.randn(layer.weight.shape)
    grad_out = torch.randn(batch, *model.shapes[index + 1]).contiguous(memory_format=layout)
    x_grads, weight_grad = [x.clone().requires_grad_() for x in xs], weight.clone().requires_grad_()

    def forward() -> None:
        for x in xs:
            F.conv2d(x, weight, padding=layer.padding)

    def forward_backward() -> None:
        for x_grad in x_grads:
            out = F.conv2d(x_grad, weight_grad, padding=layer.padding)
            torch.autograd.grad(out, (x_grad, weight_grad), grad_out)

    return {"forward": (forward, gflop), "forward_backward": (forward_backward, 3 * gflop)}


# --- Model throughput --------------------------------------------------------------------------


def random_batch(model: CNNF, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uniform in [-1, 1] and random labels (throughput does not depend on the data), on
    the model's device."""
    device = device_of(model)
    images = torch.rand(batch, *model.input_shape, device=device) * 2 - 1
    return images, torch.randint(model.num_classes, (batch,), device=device)


def training_step(model: CNNF, batch: int, precision: str = "fp32") -> Callable[[], None]:
    """One standard CNN-F training step, as `cnnf train` takes it (`cnnf.steps.make_step`; the
    paper's losses and optimiser: Adam, lr 1e-3, weight decay 5e-4), at `precision`."""
    x, y = random_batch(model, batch)
    optimizer = adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    train_step = steps.make_step(model, optimizer, LossWeights(), adversarial=None, precision=precision)
    return lambda: train_step(x, y)


def inference_step(model: CNNF, batch: int, precision: str = "fp32") -> Callable[[], None]:
    """Scored logits of one batch under inference mode, at `precision`."""
    x, _ = random_batch(model, batch)

    def step() -> None:
        with torch.inference_mode(), autocast(precision, x.device):
            model(x)

    return step


def throughput_row(iterations: int, macs: int, images_per_s: Stats, ceiling: Stats, steal: float | None,
                   base: dict | None) -> dict:
    """A measurement with its achieved GFLOP/s, fraction of the ceiling measured run by run next
    to it (the median of the per-run fractions), its steal time and, against the N = 0 row
    `base`, the measured time ratio over the MAC ratio (1.0 = exactly as the MACs predict)."""
    gflops = 2 * macs * images_per_s["median"] / 1e9
    fractions = [2 * macs * r / 1e9 / c for r, c in zip(images_per_s["runs"], ceiling["runs"])]
    row = {
        "iterations": iterations,
        "macs_per_image": macs,
        "images_per_s": images_per_s,
        "gflops": gflops,
        "ceiling_gflops": ceiling,
        "ceiling_fraction": statistics.median(fractions),
        "ceiling_fractions": summarize(fractions),
        "time_ratio": None,
        "mac_ratio": None,
        "overhead": None,
        "steal_fraction": steal,
    }
    if base is not None:
        row["time_ratio"] = base["images_per_s"]["median"] / images_per_s["median"]
        row["mac_ratio"] = macs / base["macs_per_image"]
        row["overhead"] = row["time_ratio"] / row["mac_ratio"]
    return row


def measure_throughput(name: str, mode: str, ceiling: Ceiling, s: Settings) -> list[dict]:
    """Training-step ("train") or inference ("inference") images/s for every N of the run, each
    timed in turns with the ceiling kernel."""
    make_step, count = (training_step, training_macs) if mode == "train" else (inference_step, inference_macs)
    rows: list[dict] = []
    base = None
    for n in s.iterations:
        torch.manual_seed(0)
        model = cnnf.create_model(name, iterations=n)
        timed = time_paired(make_step(model, s.batch), s.batch, ceiling, s, s.steps)
        row = throughput_row(n, count(model, n), *timed, base)
        base = row if n == 0 else base
        rows.append(row)
    return rows


def measure_attacks(name: str, ceiling: Ceiling, s: Settings) -> dict:
    """PGD-7 images/s on one batch against the model with the run's largest N, with gradients
    end to end ("e2e") and from the first feedforward pass ("first"). One attack per timed
    run; skipped with a note when cnnf.attacks is missing or its API does not fit."""
    iterations = max(s.iterations)
    result: dict = {"iterations": iterations, "eps": ATTACK_EPS, "steps": ATTACK_STEPS, "rows": [], "note": None}
    try:
        from cnnf.attacks import gradient_source, pgd
    except ImportError as error:
        result["note"] = f"skipped: cnnf.attacks is not importable ({error})"
        return result
    torch.manual_seed(0)
    model = cnnf.create_model(name, iterations=iterations)
    x, y = random_batch(model, s.batch)
    for source in ATTACK_SOURCES:
        try:
            model_fn = gradient_source(model, source)
            attack = replace(s, warmup=1)  # one untimed attack, then one attack per timed run
            timed = time_paired(lambda: pgd(model_fn, x, y, ATTACK_EPS, ATTACK_STEPS), s.batch, ceiling, attack, 1)
        except Exception as error:  # the attack API is still settling; keep the rest of the run
            result["note"] = f"stopped at source {source!r}: {type(error).__name__}: {error}"
            return result
        macs = attack_macs(model, iterations if source == "e2e" else 0)
        result["rows"].append({"source": source, **throughput_row(iterations, macs, *timed, None)})
    return result


# --- Memory ------------------------------------------------------------------------------------


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: VmRSS (resident now) or VmHWM (peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_probe(name: str, iterations: int, batch: int, threads: int) -> dict:
    """Run inside a fresh process: resident memory after building the model and the batch, the
    process's peak over two training steps, and the transient of the second step alone (the
    first also loads kernels and allocates Adam's state, which then stay resident)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    step = training_step(cnnf.create_model(name, iterations=iterations), batch)
    setup = status_mb("VmRSS")
    step()
    first_peak, before = status_mb("VmHWM"), status_mb("VmRSS")
    reset = reset_peak_rss()
    step()
    second_peak = status_mb("VmHWM")
    return {
        "iterations": iterations,
        "setup_mb": setup,
        "peak_mb": max(first_peak, second_peak),
        "step_mb": second_peak - before if reset else None,
    }


def run_probe(probe: Sequence[str], s: Settings) -> dict:
    """This script's JSON answer to `--<probe>` in a fresh subprocess, or {"error": last stderr line}."""
    command = [sys.executable, str(Path(__file__).resolve()), *probe, "--batch", str(s.batch), "--threads", str(s.threads)]
    command += ["--warmup", str(s.warmup), "--repeats", str(s.repeats), "--steps", str(s.steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(name: str, s: Settings) -> dict:
    """One fresh subprocess per N running `memory_probe` (this script's --memory-probe)."""
    started = time.perf_counter()
    rows = [{"iterations": n, **run_probe(["--memory-probe", name, str(n)], s)} for n in s.iterations]
    return {"method": MEMORY_METHOD, "steps": MEMORY_PROBE_STEPS, "rows": rows, "wall_s": time.perf_counter() - started}


def allocator_probe(name: str, iterations: int, malloc: str, s: Settings) -> dict:
    """Run inside a fresh process, whose malloc no large block has tuned yet (as in a `cnnf`
    command): inference images/s with glibc's defaults or with `keep_freed_memory()`."""
    applied = keep_freed_memory() if malloc == "kept" else False
    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    seconds = seconds_per_call(inference_step(cnnf.create_model(name, iterations=iterations), s.batch),
                               s.warmup, s.repeats, s.steps)
    return {"malloc": malloc, "applied": applied, "images_per_s": rate(s.batch, seconds)}


def measure_allocator(name: str, s: Settings) -> dict:
    """Inference at the largest N in two fresh processes: glibc's malloc defaults, then
    cnnf.fast.allocator.keep_freed_memory(). This process cannot show the difference: the
    ceilings' large blocks have already raised glibc's adaptive mmap threshold here."""
    n = max(s.iterations)
    rows = [{"malloc": m, **run_probe(["--allocator-probe", name, str(n), m], s)} for m in MALLOC_MODES]
    return {"iterations": n, "rows": rows}


# --- Machine -----------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(threads: int) -> dict:
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "backend": cnnf.get_backend(),
        "fused_kernels": kernels.available(),
    }


CpuCounters = tuple[int, int]
"""(steal, total) time of all CPUs since boot, in clock ticks (/proc/stat)."""


def cpu_counters() -> CpuCounters | None:
    """The CPUs' steal and total time from /proc/stat's first line, None where it is missing.
    Steal time is time a virtual CPU was ready to run but the hypervisor ran another machine."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    return (ticks[7] if len(ticks) == 8 else 0), sum(ticks)


def steal_fraction(start: CpuCounters | None, end: CpuCounters | None) -> float | None:
    """The share of the CPUs' time stolen by the hypervisor between two `cpu_counters` readings."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def load_warnings(machine: dict) -> list[str]:
    """Reasons not to trust the numbers: a busy machine, a busy host, more threads than CPUs."""
    warnings = []
    load = machine["load_average_start"][0]
    if load > BUSY_LOAD:
        warnings.append(f"1-minute load average {load:.2f} at the start: other work was using the CPUs")
    steal = machine.get("steal_fraction")
    if steal is not None and steal > BUSY_STEAL:
        warnings.append(f"{steal:.0%} of the CPUs' time was steal time (/proc/stat): the hypervisor ran other "
                        "virtual machines on these cores, and rows with a high steal % ran slower than the machine can")
    if machine["threads"] > machine["cpus_available"]:
        warnings.append(f"{machine['threads']} threads on {machine['cpus_available']} available CPUs")
    return warnings


SLOW_CEILING = 0.8
"""A row's ceiling, timed in turns with it, below this fraction of the same kernel's up-front
median means the convolution itself ran slow during the row, which inflates the row's fraction."""


def slow_ceiling_warnings(report: dict) -> list[str]:
    """Rows whose paired ceiling ran well below the up-front median of the same kernel."""
    warnings = []
    for name, result in report["models"].items():
        conv = report["ceilings"]["conv"][name]
        rows = [("train", "forward_backward", r) for r in result["train"]]
        rows += [("inference", "forward", r) for r in result["inference"]]
        rows += [(f"PGD-7 {r['source']}", "forward_backward", r) for r in result["attacks"]["rows"]]
        for mode, kind, row in rows:
            paired, upfront = row["ceiling_gflops"]["median"], conv[kind]["median"]
            if paired < SLOW_CEILING * upfront:
                warnings.append(f"{name} {mode} N={row['iterations']}: its ceiling ran at {paired:.0f} GFLOP/s, "
                                f"{paired / upfront:.0%} of the {upfront:.0f} measured up front; its % ceiling is inflated")
    return warnings


# --- The run -----------------------------------------------------------------------------------


def run_benchmarks(s: Settings) -> dict:
    """Every measurement of the suite, as one JSON-ready report."""
    torch.set_num_threads(s.threads)
    started, counters = time.perf_counter(), cpu_counters()
    report = {
        "schema_version": SCHEMA_VERSION,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {**asdict(s), "attack_eps": ATTACK_EPS, "attack_steps": ATTACK_STEPS},
        "machine": machine_facts(s.threads),
        "ceilings": {"matmul": matmul_ceiling(s), "conv": {}},
        "models": {},
    }
    for name in s.models:
        model = cnnf.create_model(name)
        conv = conv_ceiling(model, s)
        report["ceilings"]["conv"][name] = conv
        kernels = {kind: conv_kernels(model, LAYOUTS[conv["faster_layout"][kind]], s.batch)[kind] for kind in CEILING_KINDS}
        forward_ceiling, backward_ceiling = kernels["forward"], kernels["forward_backward"]
        report["models"][name] = {
            "reconstruct_to": model.reconstruct_to,
            "first_pass_macs": pass_macs(model, 0),
            "iteration_macs": 2 * pass_macs(model, model.block_ends[model.reconstruct_to]),
            "train": measure_throughput(name, "train", backward_ceiling, s),
            "inference": measure_throughput(name, "inference", forward_ceiling, s),
            "attacks": measure_attacks(name, backward_ceiling, s),
            "memory": measure_memory(name, s),
            "allocator": measure_allocator(name, s),
        }
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["machine"]["steal_fraction"] = steal_fraction(counters, cpu_counters())
    report["warnings"] = load_warnings(report["machine"]) + slow_ceiling_warnings(report)
    report["elapsed_s"] = time.perf_counter() - started
    if s.quick:
        report["full_run_estimate_s"] = estimate_full_run(report, s)
    return report


def estimate_full_run(report: dict, s: Settings) -> float:
    """Seconds the default full run would take, scaled from this (quick) run. Small batches
    run fewer FLOP/s, so this tends to overestimate."""
    full = Settings(**{**asdict(s), **FULL_DEFAULTS, "quick": False})
    total = sum(scaled_ceiling_seconds(report, full))
    for name, result in report["models"].items():
        total += scaled_model_seconds(cnnf.create_model(name), result, s, full)
    return total


def scaled_model_seconds(model: CNNF, result: dict, done: Settings, full: Settings) -> float:
    """Seconds of one model's measurements under `full`, from the seconds per image-MAC of the
    run `done`; memory probes as their start-up time plus their training steps."""
    train = seconds_per_image_mac(result["train"])
    infer = seconds_per_image_mac(result["inference"])
    attack = seconds_per_image_mac(result["attacks"]["rows"])  # 0 when the attacks were skipped

    def probe_steps(s: Settings) -> float:
        return MEMORY_PROBE_STEPS * s.batch * train * sum(training_macs(model, n) for n in s.iterations)

    startup = max(result["memory"]["wall_s"] - probe_steps(done), 0.0) / len(done.iterations)
    per_n = sum(train * training_macs(model, n) + infer * inference_macs(model, n) for n in full.iterations)
    throughput = full.calls * full.batch * per_n
    attack_per_image = attack_macs(model, max(full.iterations)) + attack_macs(model, 0)
    attacks = (1 + full.repeats) * full.batch * attack * attack_per_image
    return throughput + attacks + len(full.iterations) * startup + probe_steps(full)


def seconds_per_image_mac(rows: Sequence[dict]) -> float:
    """Seconds per image-MAC of the most expensive measured row (0 for no rows)."""
    if not rows:
        return 0.0
    row = max(rows, key=lambda r: r["macs_per_image"])
    return 1 / (row["images_per_s"]["median"] * row["macs_per_image"])


def scaled_ceiling_seconds(report: dict, full: Settings) -> list[float]:
    """Seconds of each ceiling measurement in the full run, from this run's GFLOP/s."""
    size = full.matmul_size
    out = [full.calls * 2 * size**3 / 1e9 / report["ceilings"]["matmul"]["gflops"]["median"]]
    for conv in report["ceilings"]["conv"].values():
        gflop = 2 * conv["macs_per_image"] * full.batch / 1e9
        out.append(full.calls * gflop / conv["forward"]["median"])
        out.append(full.calls * 3 * gflop / conv["forward_backward"]["median"])
    return out


# --- Markdown ----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def fmt_stats(stats: Stats, digits: int = 1) -> str:
    """median [min–max]"""
    return f"{fmt(stats['median'], digits)} [{fmt(stats['min'], digits)}–{fmt(stats['max'], digits)}]"


def fmt_percent(fractions: Stats) -> str:
    """Per-run fractions as percent: median [min–max]."""
    return fmt_stats({k: 100 * v for k, v in fractions.items() if k != "runs"}, 0)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def machine_markdown(report: dict) -> list[str]:
    m, s = report["machine"], report["settings"]
    rows = [
        ("date", report["date"]),
        ("CPU", f"{m['cpu_model']} ({m['cpus_available']} of {m['logical_cpus']} logical CPUs available)"),
        ("torch / python", f"{m['torch_version']} / {m['python_version']}"),
        ("threads", str(m["threads"])),
        ("load average (1, 5, 15 min)",
         f"start {fmt_load(m['load_average_start'])}, end {fmt_load(m['load_average_end'])}"),
        ("steal time, % of CPU time (the hypervisor running other machines)", fmt_share(m.get("steal_fraction"))),
        ("settings", f"batch {s['batch']}, {s['repeats']} runs x {s['steps']} steps after {s['warmup']} warm-up"
                     + (" (quick smoke run)" if s["quick"] else "")),
        ("backend", f"{m.get('backend', 'fast')}" + (", fused C++ kernels (cnnf.fast)" if m.get("fused_kernels") else ", no fused kernels")),
        ("malloc", "freed memory kept (cnnf.fast.allocator)" if s.get("keep_freed_memory", False) else "allocator defaults"),
        ("elapsed", f"{report['elapsed_s']:.0f} s"),
    ]
    lines = ["## Machine", "", *table(("", ""), rows), ""]
    lines += [f"**Warning:** {w}" for w in report["warnings"]]
    return lines + ([""] if report["warnings"] else [])


def fmt_share(fraction: float | None) -> str:
    """A fraction in percent (the column or row says %), "–" where unknown (reports before schema 6)."""
    return "–" if fraction is None else f"{100 * fraction:.0f}"


def fmt_load(load: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


def ceilings_markdown(report: dict) -> list[str]:
    mm = report["ceilings"]["matmul"]
    rows = [(f"matmul {mm['size']}x{mm['size']} float32", "", "", fmt_stats(mm["gflops"]))]
    for name, conv in report["ceilings"]["conv"].items():
        shape = f"x {tuple(conv['input_shape'])} w {tuple(conv['weight_shape'])} pad {conv['padding']}"
        for layout, rates in conv["by_layout"].items():
            rows.append((f"{name} layer {conv['layer']} conv forward", shape, layout, fmt_stats(rates["forward"])))
            rows.append((f"{name} layer {conv['layer']} conv forward + backward", shape, layout,
                         fmt_stats(rates["forward_backward"])))
    note = ("The ceiling of each row below is this convolution in the faster layout (the model keeps feature "
            "maps channels-last), forward for inference, forward + backward for training and attacks, timed "
            "in turns with the row: each timed run of the model is followed by one of the ceiling, and "
            "% ceiling is the median of the per-run ratios.")
    return ["## Ceilings (GFLOP/s, median [min–max])", "",
            *table(("kernel", "shape", "layout", "GFLOP/s"), rows), "", note, ""]


def throughput_markdown(report: dict) -> list[str]:
    header = ("model", "mode", "N", "MMAC/img", "images/s", "GFLOP/s", "ceiling GFLOP/s", "% ceiling",
              "time / N=0", "MAC / N=0", f"overhead (target ≤ {TARGET_OVERHEAD})", "steal %")
    rows = []
    for name, result in report["models"].items():
        for mode in ("train", "inference"):
            for row in result[mode]:
                rows.append((name, mode, str(row["iterations"]), fmt(row["macs_per_image"] / 1e6),
                             fmt_stats(row["images_per_s"]), fmt(row["gflops"]), fmt_stats(row["ceiling_gflops"], 0),
                             fmt_percent(row["ceiling_fractions"]),
                             fmt(row["time_ratio"], 2), fmt(row["mac_ratio"], 2), fmt(row["overhead"], 2),
                             fmt_share(row.get("steal_fraction"))))
    title = f"## Throughput, batch {report['settings']['batch']} (images/s median [min–max])"
    return [title, "", *table(header, rows), ""]


def attacks_markdown(report: dict) -> list[str]:
    header = ("model", "gradients", "N", "MMAC/img", "images/s", "GFLOP/s", "ceiling GFLOP/s", "% ceiling", "steal %")
    rows, notes = [], []
    for name, result in report["models"].items():
        attacks = result["attacks"]
        for row in attacks["rows"]:
            rows.append((name, row["source"], str(attacks["iterations"]), fmt(row["macs_per_image"] / 1e6),
                         fmt_stats(row["images_per_s"]), fmt(row["gflops"]), fmt_stats(row["ceiling_gflops"], 0),
                         fmt_percent(row["ceiling_fractions"]), fmt_share(row.get("steal_fraction"))))
        if attacks["note"]:
            notes.append(f"- {name}: {attacks['note']}")
    title = f"## PGD-{ATTACK_STEPS} attack, eps {ATTACK_EPS} (images/s median [min–max])"
    return [title, "", *(table(header, rows) if rows else []), *notes, ""]


def memory_markdown(report: dict) -> list[str]:
    header = ("model", "N", "peak RSS MB", "after setup MB", "one step's transient MB")
    rows = []
    for name, result in report["models"].items():
        for row in result["memory"]["rows"]:
            if "error" in row:
                rows.append((name, str(row["iterations"]), f"failed: {row['error']}", "", ""))
            else:
                rows.append((name, str(row["iterations"]), fmt(row["peak_mb"], 0), fmt(row["setup_mb"], 0),
                             fmt(row["step_mb"], 0)))
    method = (f"{MEMORY_PROBE_STEPS} training steps at batch {report['settings']['batch']}; "
              f"setup = Python, torch, the model and the batch. Method: {MEMORY_METHOD}.")
    return ["## Peak memory of a training step", "", *table(header, rows), "", method, ""]


def allocator_markdown(report: dict) -> list[str]:
    header = ("model", "N", "glibc defaults img/s", "freed memory kept img/s", "speed-up")
    rows = []
    for name, result in report["models"].items():
        default, kept = (row.get("images_per_s") for row in result["allocator"]["rows"])
        speedup = fmt(kept["median"] / default["median"], 2) if default and kept else "failed"
        rows.append((name, str(result["allocator"]["iterations"]), fmt_stats(default) if default else "failed",
                     fmt_stats(kept) if kept else "failed", speedup))
    note = ("Inference, each in a fresh process (as a `cnnf` command runs); `cnnf` and this benchmark "
            "call `cnnf.fast.allocator.keep_freed_memory()`.")
    return ["## Allocator: inference in a fresh process", "", *table(header, rows), "", note, ""]


def to_markdown(report: dict) -> str:
    lines = [f"# cnnf benchmark {report['date']}", ""]
    lines += machine_markdown(report) + ceilings_markdown(report) + throughput_markdown(report)
    lines += attacks_markdown(report) + memory_markdown(report) + allocator_markdown(report)
    if "full_run_estimate_s" in report:
        lines.append(f"Estimated time of the full default run: {report['full_run_estimate_s'] / 60:.0f} min "
                     "(scaled from this run; small batches and a busy machine make it an overestimate).")
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: dict, out: Path) -> list[Path]:
    """bench-<date>.json / .md in `out`; a full run also refreshes latest.json / latest.md."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.fromisoformat(report["date"]).strftime("%Y-%m-%d-%H%M%S")
    stem = f"bench-{stamp}" + ("-quick" if report["settings"]["quick"] else "")
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(to_markdown(report))
    written = [json_path, md_path]
    if not report["settings"]["quick"]:
        for path, name in ((json_path, "latest.json"), (md_path, "latest.md")):
            shutil.copyfile(path, out / name)
            written.append(out / name)
    return written


# --- Command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="What is measured and how to read it: benchmarks/README.md"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement; medians are over these (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the runs (default 1)")
    parser.add_argument("--batch", type=int, help="batch size (default 128)")
    parser.add_argument("--iterations", type=int, nargs="+", help="feedback iterations N to measure (default 0 1 2 5)")
    parser.add_argument("--models", nargs="+", choices=["conv4_mnist", "paper_mnist", "vgg16"],
                        default=["conv4_mnist", "paper_mnist"],
                        help="default: the two 28 x 28 networks (the MAC counts read no residual blocks: "
                             "time wrn40_2_cifar with benchmarks/throughput.py)")
    parser.add_argument("--matmul-size", type=int, help="size of the square matmul ceiling (default 2048)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder (default benchmarks/results)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, 1 repeat, N in {0, 1}, matmul 512")
    parser.add_argument("--allocator-probe", nargs=3, metavar=("MODEL", "N", "MALLOC"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the command line; unset options take the full or the quick defaults."""
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    iterations = tuple(sorted(set(chosen.pop("iterations"))))
    return Settings(threads=args.threads, steps=args.steps, warmup=args.warmup, iterations=iterations,
                    models=tuple(args.models), quick=args.quick, **chosen)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.allocator_probe:
        name, n, malloc = args.allocator_probe
        print(json.dumps(allocator_probe(name, int(n), malloc, settings_from(args))))
        return
    malloc_tuned = keep_freed_memory()
    if args.memory_probe:
        name, n = args.memory_probe
        print(json.dumps(memory_probe(name, int(n), args.batch or FULL_DEFAULTS["batch"], args.threads)))
        return
    report = run_benchmarks(replace(settings_from(args), keep_freed_memory=malloc_tuned))
    paths = write_report(report, args.out)
    print(to_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
