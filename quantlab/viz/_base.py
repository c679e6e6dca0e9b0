"""The one pattern every explorer follows: widgets -> update() changes artists in place -> draw_idle().

An explorer owns one figure (created once, under ``plt.ioff()`` so it is not displayed twice) and a row
of ipywidgets. Any widget change calls :meth:`Explorer.update`, which recomputes the numbers and moves
existing artists (``set_data``, ``StepPatch.set_data``, ``set_text``) — it never creates a figure.
Under ipympl (``%matplotlib widget``) ``fig.canvas`` is itself a widget and redraws in place; under
any other backend the figure is shown through an ``Output`` widget that is refreshed on change.
"""

from __future__ import annotations

import time

import ipywidgets as widgets
import matplotlib.pyplot as plt

__all__ = ["Explorer", "new_figure"]


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 9.0, height: float = 3.0, **kw):
    """Create a figure for an explorer without displaying it (no duplicate under ipympl)."""
    with plt.ioff():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kw)
    canvas = fig.canvas
    for attr, value in (("header_visible", False), ("footer_visible", False), ("toolbar_visible", False)):
        if hasattr(canvas, attr):
            setattr(canvas, attr, value)
    if hasattr(canvas, "resizable"):
        canvas.resizable = False
    return fig, axes


def _is_widget_canvas(fig) -> bool:
    return isinstance(fig.canvas, widgets.DOMWidget)


class Explorer:
    """Base class: subclasses build ``self.fig`` and ``self.controls`` then call ``self._wire()``.

    Attributes: ``fig`` (matplotlib Figure), ``controls`` (name -> widget), ``readout`` (HTML widget),
    ``n_updates`` (how many updates ran), ``last_update_s`` (Python time of the last update, seconds).
    Tests and benchmarks drive it headlessly: ``ex.controls["bits"].value = 4`` runs one update.
    """

    fig = None
    controls: dict = {}

    def _wire(self, readout: bool = True):
        self.readout = widgets.HTML() if readout else None
        self.n_updates = 0
        self.last_update_s = 0.0
        self._output = None
        for w in self.controls.values():
            w.observe(self._on_change, names="value")
        self._refresh()
        # Lay the figure out once, then freeze it: constrained layout on every redraw costs ~10x the plot.
        self.fig.canvas.draw()
        self.fig.set_layout_engine("none")

    def update(self) -> None:  # pragma: no cover - abstract
        """Recompute and move artists in place. Must not create figures."""
        raise NotImplementedError

    def _refresh(self):
        t0 = time.perf_counter()
        self.update()
        self.fig.canvas.draw_idle()
        if self._output is not None:
            self._output.clear_output(wait=True)
            with self._output:
                from IPython.display import display

                display(self.fig)
        self.last_update_s = time.perf_counter() - t0
        self.n_updates += 1

    def _on_change(self, change):
        self._refresh()

    @property
    def ui(self) -> widgets.Widget:
        """The widget tree to display: controls on top, the figure, then the readout."""
        if _is_widget_canvas(self.fig):
            view = self.fig.canvas
        else:
            if self._output is None:
                self._output = widgets.Output()
                with self._output:
                    from IPython.display import display

                    display(self.fig)
            view = self._output
        rows = [widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap"))]
        rows.append(view)
        if self.readout is not None:
            rows.append(self.readout)
        return widgets.VBox(rows)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.ui)

    def readout_table(self, items: dict) -> None:
        """Write name -> value pairs into the readout as one compact HTML row."""
        if self.readout is None:
            return
        cells = "".join(
            f"<td style='padding:2px 10px'><b>{k}</b> {v}</td>" for k, v in items.items()
        )
        self.readout.value = f"<table><tr>{cells}</tr></table>"
