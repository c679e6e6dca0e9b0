"""The one pattern every explorer follows: widgets -> update() changes artists in place -> draw_idle().

An explorer owns one figure (created once, under ``plt.ioff()`` so it is not displayed twice) and a row
of ipywidgets. Any widget change calls :meth:`Explorer.update`, which recomputes the numbers and moves
existing artists (``set_data``, ``StepPatch.set_data``, ``set_text``) — it never creates a figure.
Under ipympl (``%matplotlib widget``) ``fig.canvas`` is itself a widget and redraws in place; under
any other backend the figure is shown through an ``Output`` widget that is refreshed on change.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

__all__ = ["Explorer", "new_figure", "one_thread", "static_figure"]


@contextmanager
def one_thread():
    """Run torch on one thread inside the block. An explorer update touches <= 1e5 values: one thread is
    faster than waking a pool, and never stalls when the machine is busy (measured here under load:
    fake_quantize of 1e5 values took 1.7 ms on one thread, 194 ms on two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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


def static_figure(ncols: int = 1, nrows: int = 1, width: float = 6.0, height: float = 3.2, **kw):
    """A plain plot for a lab cell: ``plt.subplots`` (constrained layout) shown as usual at the end of the
    cell, without ipympl's meaningless "Figure N" header and footer. Returns (fig, axes) like plt.subplots.

    >>> fig, ax = static_figure(); _ = ax.plot([0, 1]); fig.get_size_inches().tolist()
    [6.0, 3.2]
    """
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kw)
    for attr in ("header_visible", "footer_visible"):
        if hasattr(fig.canvas, attr):
            setattr(fig.canvas, attr, False)
    return fig, axes


def _check_blit_set(artists) -> None:
    """ValueError for artists that may not be blitted: legends and other composite artists (offset boxes,
    tables) re-lay-out their children on every draw, which marks the figure stale and, under ipympl,
    requests the next draw — an endless redraw loop that keeps the kernel busy. Keep such artists static
    (fixed labels) and show changing numbers in the readout or in an animated ``Text``."""
    from matplotlib.legend import Legend
    from matplotlib.offsetbox import OffsetBox
    from matplotlib.table import Table

    for a in artists:
        if isinstance(a, (Legend, OffsetBox, Table)):
            raise ValueError(
                f"{type(a).__name__} may not be in Explorer.animated: drawing it marks the figure stale and "
                "makes ipympl redraw forever. Give it fixed labels and leave it out of the blit set; put "
                "changing values in the readout or an animated Text.")


def _is_widget_canvas(fig) -> bool:
    return isinstance(fig.canvas, widgets.DOMWidget)


class Explorer:
    """Base class: subclasses build ``self.fig``, ``self.controls`` (and ``self.animated``) then call ``_wire()``.

    Attributes: ``fig`` (matplotlib Figure), ``controls`` (name -> widget), ``readout`` (HTML widget),
    ``animated`` (artists that :meth:`update` changes), ``n_updates`` (how many updates ran),
    ``n_full_draws`` and ``last_update_s`` (Python time of the last update, seconds).

    Redraws use blitting (the matplotlib "BlitManager" pattern): a full draw caches the background —
    axes, ticks, labels — without the animated artists; an update whose axis limits did not change
    restores that background and redraws only the animated artists, then ``canvas.blit()`` (ipympl sends
    just the changed pixels). A change of axis limits falls back to one full draw (``draw_idle``). Never
    ``canvas.draw()`` before the figure is displayed: under ipympl that breaks the canvas in the browser.
    Tests and benchmarks drive it headlessly: ``ex.controls["bits"].value = 4`` runs one update.

    Idle after render (the rule that keeps the kernel quiet): under ipympl a *stale* figure asks the
    browser for another full draw. So (1) ``animated`` may not hold legends or other composite artists
    (drawing them re-lays-out their non-animated children and marks the figure stale: every draw would
    ask for the next one, an endless redraw loop) — :meth:`_wire` raises ValueError; (2) after a full
    draw and after a blit the figure is marked up to date, whatever drawing the animated artists did; (3)
    the draw callback ignores re-entry; (4) an update blits when the axis limits did not change (setting the
    same limits again is fine), otherwise it asks for one full draw.
    """

    fig = None
    controls: dict = {}
    animated: list = []

    def _wire(self, readout: bool = True):
        self.readout = widgets.HTML() if readout else None
        self.n_updates = 0
        self.n_full_draws = 0
        self.last_update_s = 0.0
        self._output = None
        self._bg = None
        self._bg_limits = None
        self._in_draw = False
        _check_blit_set(self.animated)
        for a in self.animated:
            a.set_animated(True)
        self.fig.canvas.mpl_connect("draw_event", self._on_draw)
        for w in self.controls.values():
            w.observe(self._on_change, names="value")
        with one_thread():
            self.update()
        # Lay the figure out once, then freeze it: constrained layout on every redraw costs ~10x the plot.
        # draw_without_rendering, not canvas.draw(): an ipympl canvas drawn before it is displayed stays
        # broken in the browser ("drawImage ... HTMLImageElement ... broken", found by tests/test_browser.py).
        self._laying_out = True  # draw_without_rendering fires draw_event too: not a real draw
        self.fig.draw_without_rendering()
        self._laying_out = False
        self.fig.set_layout_engine("none")
        self._refresh()

    def update(self) -> None:  # pragma: no cover - abstract
        """Recompute and move artists in place. Must not create figures."""
        raise NotImplementedError

    def _limits(self):
        return tuple((ax.get_xlim(), ax.get_ylim()) for ax in self.fig.axes)

    def _draw_animated(self):
        """Draw the animated artists on the canvas. Whatever their drawing marks stale is drawn already:
        the figure's stale callback (pyplot's auto-draw, which under ipympl asks the browser for a full
        draw) is switched off meanwhile, and the figure is left up to date."""
        fig = self.fig
        callback, fig.stale_callback = fig.stale_callback, None
        try:
            for a in self.animated:
                if a.get_visible():
                    fig.draw_artist(a)
        finally:
            fig.stale_callback = callback
            fig.stale = False

    def _on_draw(self, event):
        """After every full draw (ours, a resize, the browser's first paint): cache the background.

        Guarded against re-entry, and leaves the figure marked up to date: drawing the animated artists
        must never make the figure ask for another draw (the lab 04 redraw loop, issue 15).
        """
        canvas = self.fig.canvas
        if getattr(self, "_laying_out", False) or getattr(self, "_in_draw", False):
            return
        self.n_full_draws += 1
        if not self.animated or not hasattr(canvas, "copy_from_bbox"):
            return
        self._in_draw = True
        try:
            self._bg = canvas.copy_from_bbox(self.fig.bbox)
            self._bg_limits = self._limits()
            self._draw_animated()
        finally:
            self._in_draw = False

    def _refresh(self):
        t0 = time.perf_counter()
        with one_thread():
            self.update()
        canvas = self.fig.canvas
        if self._output is not None:  # non-widget backend: re-display the whole figure
            self._output.clear_output(wait=True)
            with self._output:
                from IPython.display import display

                display(self.fig)
        elif self._bg is not None and self._limits() == self._bg_limits:
            # same axis limits: restore the background and blit the animated artists. (A non-animated
            # artist changed in update() shows at the next full draw: change only animated ones.)
            canvas.restore_region(self._bg)
            self._draw_animated()
            canvas.blit(self.fig.bbox)
        else:
            # A full redraw when the browser asks for it (ipympl), or at once (Agg); _on_draw then caches
            # the new background. The background only exists after a real draw, i.e. once displayed.
            canvas.draw_idle()
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
            f"<td style='padding:2px 10px; white-space:nowrap'><b>{k}</b> {v}</td>" for k, v in items.items()
        )
        self.readout.value = f"<table style='display:block; overflow-x:auto'><tr>{cells}</tr></table>"
