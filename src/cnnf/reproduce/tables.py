"""Markdown tables from a figure record (for docs/RESULTS.md): each panel's series against x,
the strongest evaluation of the headline models, and what the figure cost."""

from __future__ import annotations

from cnnf.reproduce.results import FigureResult, Panel


def figure_tables(result: FigureResult) -> str:
    """Every table of `result`, with a line naming its profile, seeds and images."""
    seeds = len(result.models[0].seeds) if result.models else 0
    lines = [f"Figure {result.figure}, profile `{result.profile}`: mean ± std over {seeds} training seed(s), "
             f"accuracy (%), git {result.meta.get('git_revision', 'unknown')[:10]}.", ""]
    for panel in result.panels:
        lines += panel_table(panel) + [""]
    if result.strongest:
        lines += strongest_table(result) + [""]
    lines += [cost_line(result)]
    return "\n".join(lines)


def panel_table(panel: Panel) -> list[str]:
    """Rows: series; columns: the x values; cells: mean ± std."""
    xs = panel.series[0].x if panel.series else []
    lines = [f"({panel.id}) {panel.title}", "", f"| series | " + " | ".join(f"{panel.x_label.split(' ')[0]} = {x:g}" for x in xs) + " |",
             "|---|" + "---|" * len(xs)]
    for s in panel.series:
        lines.append(f"| {s.label} | " + " | ".join(f"{m:.1f} ± {d:.1f}" for m, d in zip(s.mean, s.std)) + " |")
    return lines


def strongest_table(result: FigureResult) -> list[str]:
    """Rows: (model, eps); columns: clean, each attack and target, worst case."""
    names = list(dict.fromkeys(row.evaluation for row in result.strongest))
    columns = sorted(names, key=lambda name: (name != "clean", name == "worst case"))
    cells = {(row.model, row.eps, row.evaluation): row for row in result.strongest}
    keys = list(dict.fromkeys((row.model, row.label, row.eps) for row in result.strongest))
    images = sorted({row.images for row in result.strongest})
    lines = [f"Strongest evaluation (first {', '.join(map(str, images))} test images; attacks on the scored output "
             "N, last logits; worst case: robust only against every attack and target)", "",
             "| model | ε | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for model, label, eps in keys:
        row = [cells.get((model, eps, c)) for c in columns]
        lines.append(f"| {label} (`{model}`) | {eps:g} | "
                     + " | ".join("" if r is None else f"{r.mean:.1f} ± {r.std:.1f}" for r in row) + " |")
    return lines


def cost_line(result: FigureResult) -> str:
    """Compute seconds of the figure's training and evaluation, and this run's wall time."""
    compute = result.meta.get("compute_seconds", {})
    wall = sum(result.meta.get("wall_seconds", {}).values())
    host = result.meta.get("host", {})
    return (f"Cost: training {compute.get('train', 0) / 60:.1f} min, evaluation {compute.get('evaluate', 0) / 60:.1f} min "
            f"(this run's wall time {wall / 60:.1f} min) on {host.get('cpu', 'unknown')} with {host.get('threads')} thread(s).")
