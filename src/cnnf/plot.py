"""Plots read from results files (never from a live model): accuracy vs eps, in the style of the
paper's figures 6 and 11, one panel per (attack, target), one line per model and iteration count.

A line keeps its colour in every panel. End-to-end rows scored at another iteration count or
output than the attacked one are transfers; they are drawn dashed and labelled so."""

from __future__ import annotations

from pathlib import Path

from cnnf.results import Row, read_results
from cnnf.scoring import check_output


def plot_results(result_files: list[Path], out: Path, output: str = "last", iterations: list[int] | None = None) -> Path:
    """Draw every results file into one figure; `iterations` limits the lines per model."""
    check_output(output)
    results = [(Path(f).stem, read_results(f)) for f in result_files]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.attack, r.target) for _, res in results for r in res.rows})
    if not panels:
        raise ValueError(f"no rows to plot in {', '.join(map(str, result_files))}; run cnnf evaluate first")
    lines = sorted({(label, r.iterations) for label, res in results for r in res.rows
                    if iterations is None or r.iterations in iterations})
    colours = {line: f"C{i % 10}" for i, line in enumerate(lines)}
    cols = min(3, len(panels))
    grid_rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(4.6 * cols, 3.6 * grid_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (attack, target) in zip(axes.flat, panels):
        for label, res in results:
            rows = [r for r in res.rows if (r.attack, r.target, r.output) == (attack, target, output)]
            for t in sorted({r.iterations for r in rows}):
                if (label, t) in colours:
                    _draw_curve(ax, [r for r in rows if r.iterations == t], f"{label}, N={t}", colours[(label, t)])
        ax.set_title(f"{attack}, target {target}", fontsize=10)
        ax.set_xlabel("ε ([0, 1] units)")
        ax.set_ylabel(f"accuracy (%), {output} output")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _draw_curve(ax, rows: list[Row], label: str, colour: str) -> None:
    curve = sorted(rows, key=lambda r: r.eps)
    transfer = any(r.attacked_output is False for r in curve)
    ax.errorbar([r.eps for r in curve], [100 * r.accuracy_mean for r in curve],
                yerr=[100 * r.accuracy_std for r in curve], marker="o", ms=3, capsize=2, color=colour,
                linestyle="--" if transfer else "-", label=label + (" (transfer)" if transfer else ""))
