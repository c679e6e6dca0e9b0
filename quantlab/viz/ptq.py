r"""Lab 04 explorer: weight quantization vs full quantization of the trained CNN, side by side.

Widgets: mode (weight-only / full), weight bits, activation bits, granularity (per-tensor /
per-channel) and calibration-set size (1 ... 1,000 training images). The figure shows

* accuracy vs weight bits: FP32, weight-only, and full quantization at the chosen activation bits,
  granularity and calibration size (a marker shows the current setting);
* one layer's integer pipeline under full quantization: the int8 input q_x, the int32 accumulator
  acc = sum (q_w - z_w)(q_x - z_x) + q_b, and the requantized int8 output q_y = clip(z_y + M acc).

Everything expensive (calibration, convert, the integer engine on the evaluation images, latency) is
computed once in the constructor for every setting of the grid (:meth:`PTQExplorer.precompute`) and
cached; an update only looks results up and moves artists (``set_data``), so it takes a few ms.
Calibration sizes share one forward pass: min/max of the first n images is a running min/max.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..data import calibration_batch, load_mnist  # noqa: F401 - used by BENCHMARK_CASES
from ..engine import run_int
from ..granularity import PerChannel, PerTensor
from ..models import evaluate, fold_batchnorm, load_trained  # noqa: F401
from ..ptq import convert, median_time, prefix_minmax_ranges, quantize_weights, state_size_bytes
from ._base import Explorer, new_figure

__all__ = ["PTQExplorer"]

GRANULARITIES = {"per-tensor": PerTensor(), "per-channel": PerChannel(0)}
FLOOR = 1e-5  # histogram bars relative to the peak, on a log axis from here to 1


def _int_hist(q: torch.Tensor, q_min: int, q_max: int):
    """Fraction of values at each integer of [q_min, q_max]; edges at half-integers."""
    counts = torch.bincount((q.flatten() - q_min).clamp(0, q_max - q_min), minlength=q_max - q_min + 1)
    return (counts / counts.sum()).numpy(), np.arange(q_min, q_max + 2) - 0.5


def _acc_hist(acc: torch.Tensor, bins: int = 80):
    a = acc.flatten().double()
    lo, hi = float(a.min()), float(a.max())
    hi = hi if hi > lo else lo + 1
    counts = torch.histc(a, bins, lo, hi)
    return (counts / counts.sum()).numpy(), np.linspace(lo, hi, bins + 1)


class PTQExplorer(Explorer):
    """Weight-only vs full quantization of ``model``; see the module docstring.

    Args: model (FP32, e.g. ``load_trained()``), x_test/y_test (evaluation images, the first ``n_eval``
    are used), x_calib (training images for calibration, at least max(calib_sizes)), the grids of
    weight bits, activation bits and calibration sizes, and ``layer`` (whose pipeline is drawn).
    Attributes: ``results[(mode, w_bits, a_bits, granularity, n)]`` dicts with accuracy, size, latency.
    """

    def __init__(self, model, x_test, y_test, x_calib, weight_bits=(2, 4, 8), act_bits=(4, 8),
                 calib_sizes=(1, 10, 100, 1000), n_eval: int = 200, layer: str = "conv2",
                 progress: bool = True):
        self.model = model.eval()
        self.x, self.y = x_test[:n_eval], y_test[:n_eval]
        self.weight_bits, self.act_bits = tuple(weight_bits), tuple(act_bits)
        self.calib_sizes, self.layer = tuple(calib_sizes), layer
        self.results: dict = {}
        self.precompute(x_calib, progress)

        self.fig, axes = new_figure(ncols=4, width=9.5, height=3.3)
        self.ax_acc, self.ax_in, self.ax_accum, self.ax_out = axes
        wb = list(self.weight_bits)
        ax = self.ax_acc
        (self.l_fp32,) = ax.plot(wb, [self.fp32["accuracy"]] * len(wb), "k:", lw=1, label="FP32")
        # weight-only often lies exactly under full: a wide solid line with hollow circles beneath a thin
        # dashed one with small squares keeps both visible
        (self.l_wo,) = ax.plot(wb, wb, "o-", color="C0", lw=3, ms=9, mfc="none", mew=1.5, alpha=0.8,
                               label="weight-only")
        (self.l_full,) = ax.plot(wb, wb, "s--", color="C1", lw=1.2, ms=4, label="full (act. bits, calib. n)")
        (self.l_cur,) = ax.plot([wb[-1]], [1.0], "o", ms=14, mfc="none", mec="red", mew=2, label="current")
        ax.set(xlabel="weight bits", ylabel="test accuracy", xticks=wb, ylim=(0, 1.02))
        # static labels, outside the data, never blitted (a blitted legend redrew forever: issue 15)
        self.legend = ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                                frameon=False)
        self.steps = {}
        panels = (("in", self.ax_in, f"{layer} input q_x", "q_x (int)"),
                  ("acc", self.ax_accum, "int32 accumulator", "acc"),
                  ("out", self.ax_out, "requantized output q_y", "q_y (int)"))
        for key, a, title, xlabel in panels:
            self.steps[key] = a.stairs([1.0], [0.0, 1.0], fill=True, alpha=0.7, baseline=FLOOR)
            a.set_title(title, fontsize=9)
            a.set_xlabel(xlabel, fontsize=8)
            a.set_ylabel("count / peak (log)", fontsize=8)
            # log scale: the post-ReLU spike at q = z would flatten everything else on a linear axis.
            # Histograms are drawn relative to their peak: fixed limits, blit path.
            a.set_yscale("log")
            a.set_ylim(FLOOR, 1.5)
            a.xaxis.set_major_locator(MaxNLocator(4))
            a.tick_params(labelsize=7)
        self.ax_accum.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        self.ax_accum.xaxis.get_offset_text().set_fontsize(7)

        self.controls = {
            "mode": _toggle(["weight-only", "full"], "full", "mode"),
            "weight_bits": _sel(self.weight_bits, self.weight_bits[-1], "weight bits"),
            "act_bits": _sel(self.act_bits, self.act_bits[-1], "act. bits"),
            "granularity": _toggle(list(GRANULARITIES), "per-channel", "granularity"),
            "calib": _sel(self.calib_sizes, self.calib_sizes[min(2, len(self.calib_sizes) - 1)], "calib. n"),
        }
        self._acc_lims = {}
        for (mode, wb, *_), res in self.results.items():
            if mode == "full":
                lo, hi = self._acc_lims.get(wb, (np.inf, -np.inf))
                e = res["hist_acc"][1]
                self._acc_lims[wb] = (min(lo, float(e[0])), max(hi, float(e[-1])))
        self.animated = [self.l_wo, self.l_full, self.l_cur, *self.steps.values()]
        self._wire()

    # -- the expensive part, once -----------------------------------------------------------------

    def precompute(self, x_calib, progress: bool = True) -> None:
        """Fill ``self.results`` for every setting of the grid (and measure latencies)."""
        from tqdm.auto import tqdm

        x, y = self.x, self.y
        self.fp32 = {"accuracy": evaluate(self.model, x, y), "size": state_size_bytes(self.model),
                     "latency": median_time(self.model, x, repeats=5)}
        ranges = prefix_minmax_ranges(self.model, x_calib, self.calib_sizes)
        folded = fold_batchnorm(self.model)
        grid = list(itertools.product(self.weight_bits, self.act_bits, GRANULARITIES, self.calib_sizes))
        engine_latency = None
        for wb, gname in itertools.product(self.weight_bits, GRANULARITIES):
            wq = quantize_weights(self.model, wb, GRANULARITIES[gname])
            self.results[("weight-only", wb, None, gname, None)] = {
                "accuracy": evaluate(wq, x, y), "size": wq.size_bytes(),
                "latency": median_time(wq, x, repeats=3)}
        for wb, ab, gname, n in tqdm(grid, desc="full quantization grid", disable=not progress, leave=False):
            qm = convert(folded, ranges[n], wb, ab, GRANULARITIES[gname])
            with torch.inference_mode():
                logits, rec = run_int(qm, x, intermediates=True)
            r = next(r for r in rec if r["name"] == self.layer)
            layer = next(m for m in qm.layers if m.name == self.layer)
            q_in_min, q_in_max = qm.input_qparams[2:] if rec[0] is r else (0, 2**ab - 1)
            if engine_latency is None:
                engine_latency = median_time(run_int, qm, x, repeats=3)
            self.results[("full", wb, ab, gname, n)] = {
                "accuracy": float((logits.argmax(1) == y).float().mean()),
                "size": qm.size_bytes(packed=True), "latency": engine_latency,
                "hist_in": _int_hist(r["q_in"], q_in_min, q_in_max),
                "hist_acc": _acc_hist(r["acc"]),
                "hist_out": _int_hist(r["q_out"], layer.q_min, layer.q_max),
            }
            del rec, r

    # -- the cheap part, per widget change --------------------------------------------------------

    def key(self, mode=None, wb=None):
        c = {k: w.value for k, w in self.controls.items()}
        mode = mode or c["mode"]
        wb = wb or c["weight_bits"]
        if mode == "weight-only":
            return ("weight-only", wb, None, c["granularity"], None)
        return ("full", wb, c["act_bits"], c["granularity"], c["calib"])

    def update(self) -> None:
        wb_all = self.weight_bits
        self.l_wo.set_ydata([self.results[self.key("weight-only", b)]["accuracy"] for b in wb_all])
        self.l_full.set_ydata([self.results[self.key("full", b)]["accuracy"] for b in wb_all])
        c = {k: w.value for k, w in self.controls.items()}
        res = self.results[self.key()]
        self.l_cur.set_data([c["weight_bits"]], [res["accuracy"]])
        full = self.results[self.key("full")]
        for key, ax, name in (("in", self.ax_in, "hist_in"), ("acc", self.ax_accum, "hist_acc"),
                              ("out", self.ax_out, "hist_out")):
            values, edges = full[name]
            self.steps[key].set_data(np.maximum(values / max(float(values.max()), 1e-12), FLOOR), edges)
            if key == "acc":  # one x-range per weight bit-width: a full redraw only when that changes
                lims = self._acc_lims[c["weight_bits"]]
            else:
                lims = (float(edges[0]), float(edges[-1]))
            if ax.get_xlim() != lims:
                ax.set_xlim(*lims)
        fp = self.fp32
        self.readout_table({
            "mode": c["mode"],
            "accuracy": f"{res['accuracy']:.3f} (FP32 {fp['accuracy']:.3f})",
            "size": f"{res['size'] / 1024:.1f} KiB ({fp['size'] / res['size']:.1f}x smaller)",
            "latency": f"{res['latency'] * 1e3:.1f} ms (FP32 {fp['latency'] * 1e3:.1f}), {len(self.x)} imgs",
        })


def _toggle(options, value, description):
    import ipywidgets as widgets

    return widgets.ToggleButtons(options=options, value=value, description=description,
                                 style={"button_width": "105px"})


def _sel(options, value, description):
    import ipywidgets as widgets

    return widgets.SelectionSlider(options=list(options), value=value, description=description,
                                   continuous_update=True)


BENCHMARK_CASES = [
    ("04 ptq",
     "PTQExplorer(load_trained(), *load_mnist('test', n=100), calibration_batch(1000), n_eval=100, progress=False)",
     {"mode": ["weight-only", "full"], "weight_bits": [4, 2, 8], "act_bits": [4, 8],
      "granularity": ["per-tensor", "per-channel"], "calib": [1, 10, 1000, 100]}),
]
