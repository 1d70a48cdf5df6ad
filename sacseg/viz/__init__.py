"""Pictures for reports: colourised labels, overlays, scale-coefficient heat maps, figure grids."""

from sacseg.viz.figures import save_report_grid, save_scale_map
from sacseg.viz.labels import colorize, denormalize, heatmap, overlay

__all__ = [
    "colorize",
    "denormalize",
    "heatmap",
    "overlay",
    "save_report_grid",
    "save_scale_map",
]
