"""The app's six views, one pane each; every pane draws itself from a RunState and the view options."""

from tui.screens.activations import ActivationsPane
from tui.screens.diagnostics import DiagnosticsPane
from tui.screens.gradients import GradientsPane
from tui.screens.model import ModelPane
from tui.screens.overview import OverviewPane
from tui.screens.system import SystemPane

PANES = (OverviewPane, GradientsPane, ModelPane, ActivationsPane, DiagnosticsPane, SystemPane)

__all__ = [
    "PANES",
    "ActivationsPane",
    "DiagnosticsPane",
    "GradientsPane",
    "ModelPane",
    "OverviewPane",
    "SystemPane",
]
