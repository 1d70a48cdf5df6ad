"""Pictures for reports: colourised labels, class legends, overlays, scale-coefficient heat maps, figure grids."""

from sacseg.viz.figures import save_report_grid, save_scale_map
from sacseg.viz.labels import add_legend, colorize, denormalize, heatmap, overlay

__all__ = [
    "add_legend",
    "colorize",
    "denormalize",
    "heatmap",
    "overlay",
    "save_report_grid",
    "save_scale_map",
]
