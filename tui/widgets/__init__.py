"""Render widgets for mirante's screens: sparkline, line chart, heatmap and map grid, all NaN/Inf-safe."""

from tui.widgets.base import literal
from tui.widgets.chart import Chart, Line, render_chart
from tui.widgets.heatmap import Heatmap, MapGrid, Picture, render_heatmap, render_image, render_maps
from tui.widgets.sparkline import Sparkline, sparkline

__all__ = [
    "Chart",
    "Heatmap",
    "Line",
    "MapGrid",
    "Picture",
    "Sparkline",
    "literal",
    "render_chart",
    "render_heatmap",
    "render_image",
    "render_maps",
    "sparkline",
]
