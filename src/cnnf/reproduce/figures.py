"""A figure drawn from its record only (never from models or evaluations): one panel per
panel of the paper's figure, same axes and series, mean ± std over training seeds as error
bars, and the profile named in the title."""

from __future__ import annotations

from pathlib import Path

from cnnf.reproduce.results import Panel, read_figure


def draw_figure(record: Path, out: Path) -> Path:
    """Draw the figure record `record` to the image file `out`."""
    result = read_figure(record)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(result.panels))
    rows = -(-len(result.panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(result.panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, result.panels):
        _draw_panel(ax, panel)
    seeds = len(result.models[0].seeds) if result.models else 0
    fig.suptitle(f"Figure {result.figure}: {result.title}\nprofile {result.profile}, mean ± std over {seeds} "
                 f"training seed(s)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _draw_panel(ax, panel: Panel) -> None:
    for i, series in enumerate(panel.series):
        ax.errorbar(series.x, series.mean, yerr=series.std, marker="o", ms=3, capsize=2, color=f"C{i % 10}",
                    label=series.label)
    ax.set_title(f"({panel.id}) {panel.title}", fontsize=8)
    ax.set_xlabel(panel.x_label)
    ax.set_ylabel(panel.y_label)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
