r"""Lab 06 explorer: what bias and weight correction do to each channel's output mean, and to accuracy.

Widgets: weight bits (4, 3, 2), granularity, bias correction (none / empirical / data-free), weight
correction (none / the text's rule / mean-and-norm), and the layer. The plot shows, per output channel of
that layer, the output mean error a_i - a_q on the 1,000 test digits without correction (grey) and with
the chosen corrections (colour); the readout gives the accuracy, the FP32 accuracy, the share of the
quantization drop the corrections recover and the mean |a_i - a_q| before and after. Everything comes
precomputed from ``data/correction_table.json`` (``benchmarks/correction_table.py``). The y-axis is a
symmetric log scale with limits fixed per layer (the largest error of that layer over every setting), so a
change of bits, granularity or correction only moves the two lines (blit); only a change of layer redraws
the axes. Texts and the legend never change on an update: what changes is written in the readout.
"""

from __future__ import annotations

import json

import ipywidgets as widgets
import numpy as np

from ..data import data_dir
from ._base import Explorer, new_figure

__all__ = ["load_correction_table", "lookup", "recovered_share", "CorrectionExplorer"]

LABELS = {"none": "none", "empirical": "empirical", "data_free": "data-free", "text": "text rule",
          "mean_norm": "mean & norm"}


def load_correction_table(path=None) -> dict:
    """The precomputed table (``data/correction_table.json``), rows indexed by their setting in ``index``."""
    path = path or data_dir() / "correction_table.json"
    with open(path) as f:
        table = json.load(f)
    table["index"] = {(r["mode"], r["w_bits"], r["a_bits"], r["granularity"], r["bias"], r["weight"]): r
                      for r in table["rows"]}
    return table


def lookup(table, w_bits, granularity, bias="none", weight="none", mode="weight-only", a_bits=None) -> dict:
    """One row of the table: accuracy and per-layer errors of one setting."""
    return table["index"][(mode, w_bits, a_bits, granularity, bias, weight)]


def recovered_share(fp32: float, none: float, corrected: float):
    """(corrected - none) / (fp32 - none): the share of the quantization drop recovered; None when the
    drop is under 0.005 (5 of 1,000 digits: within evaluation noise, a share would mean nothing)."""
    drop = fp32 - none
    return None if drop < 0.005 else (corrected - none) / drop


class CorrectionExplorer(Explorer):
    """Per-channel output mean error a_i - a_q before/after correction, and the accuracy; see module docstring."""

    def __init__(self, table: dict | None = None, layer: str = "conv2"):
        self.table = table if table is not None else load_correction_table()
        self.layers = list(self.table["layers"])
        self.fig, self.ax = new_figure(width=8.5, height=3.0)
        ax = self.ax
        (self.l_none,) = ax.plot([0], [0], "o-", color="0.6", ms=3, lw=1, label="no correction")
        (self.l_cur,) = ax.plot([0], [0], "o-", color="C3", ms=3, lw=1.2, label="chosen corrections")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="output channel c", ylabel="a_i − a_q (symmetric log)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        rows = [r for r in self.table["rows"] if r["mode"] == "weight-only"]
        self.w_bits = sorted({r["w_bits"] for r in rows}, reverse=True)
        self.controls = {
            "bits": widgets.SelectionSlider(options=self.w_bits, value=self.w_bits[-1], description="weight bits",
                                            continuous_update=True),
            "granularity": _toggle(["per-tensor", "per-channel"], "per-channel", "granularity"),
            "bias": _toggle(["none", "empirical", "data_free"], "empirical", "bias corr."),
            "weight": _toggle(["none", "text", "mean_norm"], "none", "weight corr."),
            "layer": widgets.Dropdown(options=self.layers, value=layer, description="layer"),
        }
        # One y-range per layer, over every setting: changing anything but the layer keeps the axes (blit).
        self._ylim = {name: 1.1 * max(max(float(np.abs(r["errors"][name]).max()) for r in rows), 1e-6)
                      for name in self.layers}
        self._shown_layer = None
        self.animated = [self.l_none, self.l_cur]
        self._wire()

    def _set_layer_axes(self, layer: str, n_channels: int) -> None:
        """Limits and scale of one layer: symmetric log, linear within a tenth of the layer's largest error."""
        lim = self._ylim[layer]
        self.ax.set_yscale("symlog", linthresh=lim / 10, linscale=1.0)
        self.ax.set_ylim(-lim, lim)
        self.ax.set_xlim(-0.5, n_channels - 0.5)
        self._shown_layer = layer

    def update(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        base = lookup(self.table, c["bits"], c["granularity"])
        cur = lookup(self.table, c["bits"], c["granularity"], c["bias"], c["weight"])
        e0, e1 = np.asarray(base["errors"][c["layer"]]), np.asarray(cur["errors"][c["layer"]])
        ch = np.arange(len(e0))
        if c["layer"] != self._shown_layer:
            self._set_layer_axes(c["layer"], len(ch))
        self.l_none.set_data(ch, e0)
        self.l_cur.set_data(ch, e1)
        fp = self.table["fp32_accuracy"]
        share = recovered_share(fp, base["accuracy"], cur["accuracy"])
        self.readout_table({
            "bias / weight corr.": f"{LABELS[c['bias']]} / {LABELS[c['weight']]}",
            "accuracy": f"{cur['accuracy']:.3f}",
            "no correction": f"{base['accuracy']:.3f}",
            "FP32": f"{fp:.3f}",
            "drop recovered": "— (drop within noise)" if share is None else f"{100 * share:.0f} %",
            "mean |a_i − a_q|": f"{np.abs(e0).mean():.4f} → {np.abs(e1).mean():.4f}",
        })


def _toggle(options, value, description):
    return widgets.ToggleButtons(options=options, value=value, description=description,
                                 style={"button_width": "90px"})


BENCHMARK_CASES = [
    ("06 correction", "CorrectionExplorer()",
     {"bias": ["none", "data_free", "empirical"], "weight": ["text", "mean_norm", "none"], "bits": [4, 3, 2],
      "granularity": ["per-tensor", "per-channel"], "layer": ["conv1", "fc1", "fc2", "conv2"]}),
]
