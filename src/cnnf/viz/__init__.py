"""What the feedback does: figure 9 of the paper, and a browsable report (`cnnf viz`, `cnnf report`).

Each figure is computed once into a record (`common.Record`, an .npz file beside the figure) and
drawn from that record only, so it can be redrawn without the model (`cnnf viz plot`):

    restoration  figure 9d: clean / corrupted inputs and the images g_t the feedback generates,
                 with their distance to the clean image per iteration (models with k = 0)
    gradcam      figures 9b, 9c: Grad-CAM of the predicted class at every iteration on clean,
                 blurred, noisy and PGD images, with the predictions that flip
    cells        figure 9a: classes on a plane of images through a test image, and where one
                 feedback iteration moves each point (models with k = 0)
    report       a static HTML page with all of it, per model

Example:
    >>> import cnnf
    >>> from cnnf.data import load_dataset
    >>> from cnnf.viz import Corruptions, compute_gradcam, draw
    >>> model = cnnf.load_pretrained("cnnf5_fmnist")
    >>> test = load_dataset("fashion-mnist")["test"]
    >>> draw(compute_gradcam(model, test, "fashion-mnist", pool=100, show=2, corruptions=Corruptions()), "gradcam.png")
"""

from cnnf.viz.cells import compute_cells, plot_cells
from cnnf.viz.common import Record, RecordError
from cnnf.viz.corruptions import KINDS, Corruptions, gaussian_blur
from cnnf.viz.figures import PLOTS, draw, redraw
from cnnf.viz.gradcam import StepScores, compute_gradcam, grad_cam, plot_gradcam
from cnnf.viz.report import Entry, Sizes, write_report
from cnnf.viz.restoration import compute_restoration, plot_restoration

__all__ = [
    "KINDS",
    "PLOTS",
    "Corruptions",
    "Entry",
    "Record",
    "RecordError",
    "Sizes",
    "StepScores",
    "compute_cells",
    "compute_gradcam",
    "compute_restoration",
    "draw",
    "gaussian_blur",
    "grad_cam",
    "plot_cells",
    "plot_gradcam",
    "plot_restoration",
    "redraw",
    "write_report",
]
