"""The `cnnf reproduce` command: run figures, or redraw / tabulate them from their records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnf.reproduce.experiments import EXPERIMENTS, get_experiment
from cnnf.reproduce.figures import draw_figure
from cnnf.reproduce.profiles import get_profile
from cnnf.reproduce.results import figure_path, read_figure
from cnnf.reproduce.runner import reproduce
from cnnf.reproduce.tables import figure_tables
from cnnf.reproduce.training import ReproduceError


def figures_named(text: str) -> list[str]:
    """The figures `text` names: one of EXPERIMENTS, or "all" (every one, in order)."""
    if text == "all":
        return list(EXPERIMENTS)
    return [get_experiment(text).figure]


def run_reproduce(args: argparse.Namespace) -> int:
    """Handle `cnnf reproduce` (arguments already checked by the parser)."""
    profile = get_profile(args.profile)
    out = args.out or Path("results") / "reproduce" / profile.name
    if out.exists() and not out.is_dir():
        raise ReproduceError(f"--out {out} is a file; give a folder, e.g. results/reproduce/{profile.name}")
    for figure in args.figure:
        record = figure_path(out, figure)
        if args.plot_only or args.table:
            if not record.is_file():
                raise ReproduceError(f"no record {record}; run `cnnf reproduce {figure} --profile {profile.name} --out {out}` first")
            print(figure_tables(read_figure(record)) if args.table else f"wrote {draw_figure(record, record.with_suffix('.png'))}")
            continue
        seeds = list(range(args.seeds or profile.training_seeds))
        command = f"cnnf reproduce {figure} --profile {profile.name} --seeds {len(seeds)} --out {out}" + (
            f" --device {args.device}" if args.device else "")
        reproduce(get_experiment(figure), profile, seeds, out, args.device, command,
                  report=lambda line: print(line, file=sys.stderr, flush=True))
        print(f"figure {figure}: {record} and {record.with_suffix('.png')}")
    return 0
