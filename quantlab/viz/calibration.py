"""Lab 05 explorer: drag the clip threshold (or range) over a layer's P_f and watch Q_q and D(P || Q_q) move.

Top panel: the activation histogram P_f (grey), the clipped P (mass beyond the threshold folded into the
last kept bin) and Q_q = quantize_histogram (the kept bins on n_levels levels). Bottom panel: KL, symmetric
KL and JS against the threshold, with a dot at the current one, and vertical markers at the thresholds
chosen by min/max, percentile, MSE and the KL search. Everything expensive (histograms, curves, method
choices) is computed once per (layer, bits, mode) and cached; a slider move only re-slices P and Q_q.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.ticker import LogLocator, NullLocator

from ..calibration import (
    METRICS,
    calibrate_range,
    divergence_curve,
    histogram,
    kl_divergence,
    quantize_histogram,
    symmetric_kl,
)
from ..calibration import js_divergence as _js
from ..linear import qrange, scale_zero_point
from ._base import Explorer, new_figure

__all__ = ["CalibrationExplorer", "demo_activations", "BENCHMARK_CASES"]

FLOOR = 1e-7  # probabilities below this are drawn at the floor of the log axis
MARKERS = {"minmax": "0.35", "percentile": "C4", "mse": "C2", "kl": "C3"}
COLORS = {"kl": "C3", "symmetric_kl": "C1", "js": "C0"}


def demo_activations(n: int = 200_000, seed: int = 0) -> dict:
    """Synthetic stand-ins for a layer's activations (used when the trained CNN is not at hand).

    >>> sorted(demo_activations())
    ['post-ReLU mixture', 'signed, with outliers']
    """
    g = torch.Generator().manual_seed(seed)
    mix = torch.cat([torch.randn(n, generator=g), 2.0 + 0.5 * torch.randn(n // 4, generator=g)])
    mix[:3] = torch.tensor([14.0, 11.0, 9.0])
    signed = torch.cat([torch.randn(n, generator=g) * 0.8 + 0.4, torch.tensor([-9.0, 12.0])])
    return {"post-ReLU mixture": torch.relu(mix), "signed, with outliers": signed}


class CalibrationExplorer(Explorer):
    """P_f, P, Q_q and the divergence curves of one layer's activations; threshold / range sliders.

    ``acts``: {name: activation tensor} (e.g. from :func:`quantlab.calibration.collect_activations`), or one
    tensor.
    Controls: layer, bits (2-8), mode (symmetric: threshold T on |x|; asymmetric: range [r_min, r_max] on x),
    threshold (T as a fraction of max|x|), range (fractions of [min x, max x]).
    Readout: T or [r_min, r_max], s, z, and KL / symmetric KL / JS at the current choice.

    >>> ex = CalibrationExplorer(demo_activations()); ex.controls["threshold"].value = 0.3
    """

    def __init__(self, acts, bits: int = 8, pct: float = 99.99, bins: int = 2048, n_points: int = 256):
        if isinstance(acts, (torch.Tensor, np.ndarray)):
            acts = {"x": acts}
        self.acts = {k: torch.as_tensor(v).detach().float().reshape(-1) for k, v in acts.items()}
        self.pct, self.bins, self.n_points = pct, bins, n_points
        self._cache: dict = {}
        self._hists = {  # P_f of x and of |x| for every layer, computed once up front
            k: (histogram(x, bins), histogram(x, bins, absolute=True), bool((x < 0).any()))
            for k, x in self.acts.items()
        }
        names = list(self.acts)
        self.controls = {
            "layer": widgets.Dropdown(options=names, value=names[0], description="layer"),
            "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits"),
            "mode": widgets.ToggleButtons(options=["symmetric", "asymmetric"], value="symmetric",
                                          description="mode", style={"button_width": "105px"}),
            "threshold": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.002, description="T/max|x|",
                                             readout_format=".3f"),
            "range": widgets.FloatRangeSlider(value=(0.0, 0.5), min=0.0, max=1.0, step=0.002,
                                              description="range", readout_format=".3f"),
        }
        self.fig, (self.ax_p, self.ax_d) = new_figure(1, 2, width=9.5, height=5.0)
        self.ax_p.set_title("P_f (grey), clipped P and Q_q")
        self.ax_d.set_title("D(P || Q_q) against the clip threshold")
        one, edges = np.ones(1), np.array([0.0, 1.0])
        self.h_f = self.ax_p.stairs(one, edges, fill=True, color="0.8", baseline=FLOOR, label="P_f")
        self.h_p = self.ax_p.stairs(one, edges, color="C0", lw=1.0, baseline=FLOOR, label="P (clipped)")
        self.h_q = self.ax_p.stairs(one, edges, color="C3", lw=1.0, baseline=FLOOR, label="Q_q")
        for ax in (self.ax_p, self.ax_d):  # few log ticks: tick labels are most of the draw time
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
            ax.yaxis.set_minor_locator(NullLocator())
        self.ax_p.legend(loc="upper right", fontsize=8)
        self.curves, self.dots = {}, {}
        for m in METRICS:
            (self.curves[m],) = self.ax_d.plot([], [], color=COLORS[m], lw=1.2, label=m)
            (self.dots[m],) = self.ax_d.plot([], [], "o", color=COLORS[m], ms=6)
        self.ax_d.set_xlabel("clip threshold (r_max)")
        self.vlines = {}
        for name, color in MARKERS.items():
            self.vlines[name] = (self.ax_p.axvline(0, color=color, ls="--", lw=1),
                                 self.ax_d.axvline(0, color=color, ls="--", lw=1, label=name))
        self.cur = (self.ax_p.axvline(0, color="k", lw=1.2), self.ax_d.axvline(0, color="k", lw=1.2))
        self.ax_d.legend(loc="upper right", fontsize=8, ncol=2)
        # artists that update() moves: redrawn by blitting while the axis limits stay put (see _base)
        self.animated = [self.h_f, self.h_p, self.h_q, *self.curves.values(), *self.dots.values(),
                         *(ln for pair in self.vlines.values() for ln in pair), *self.cur]
        self._wire()

    # ----------------------------------------------------------------------------------------- cache
    def _setup(self, layer: str, bits: int, mode: str) -> dict:
        """Histogram, grid, method markers (and the symmetric curves), once per (layer, bits, mode)."""
        key = (layer, bits, mode)
        if key in self._cache:
            return self._cache[key]
        hist_x, hist_abs, signed = self._hists[layer]
        symmetric = mode == "symmetric"
        if symmetric:
            h, e = hist_abs
            n = 2 ** (bits - 1) if signed else 2**bits
            grid_signed = signed
        else:
            h, e = hist_x
            n = 2**bits
            grid_signed = False
        marks = {}
        for method in MARKERS:  # from the histogram of x: percentile by inverse CDF, MSE on bin centres
            lo, hi = calibrate_range(hist_x, method, bits, symmetric=symmetric, signed=grid_signed,
                                     pct=self.pct, bins=self.bins)
            marks[method] = hi
        z0 = int(np.clip(np.searchsorted(e, 0.0, side="right") - 1, 0, h.size - 1))
        d = {"h": h, "e": e, "n": n, "p_f": h / h.sum(), "marks": marks, "z0": z0, "signed": grid_signed,
             "symmetric": symmetric, "curves": {}}
        self._cache[key] = d
        return d

    def _curves(self, d: dict, a: int) -> tuple[np.ndarray, dict]:
        """Divergence curves for ranges [e[a], e[b]] at ~n_points ends b (cached per start a)."""
        if a not in d["curves"]:
            h, n = d["h"], d["n"]
            first = max(a + n, d["z0"] + 1)
            ends = np.unique(np.linspace(first, h.size, self.n_points).round().astype(np.int64))
            out = {}
            for m in METRICS:
                r_max, out[m] = divergence_curve(h, d["e"], n, m, start=a, ends=ends)
            d["curves"][a] = (r_max, out)
        return d["curves"][a]

    # ---------------------------------------------------------------------------------------- update
    def update(self):
        c = self.controls
        d = self._setup(c["layer"].value, c["bits"].value, c["mode"].value)
        h, e, n, N = d["h"], d["e"], d["n"], d["h"].size
        sym = d["symmetric"]
        c["threshold"].disabled, c["range"].disabled = not sym, sym
        if sym:
            a, b = 0, int(np.clip(round(c["threshold"].value * N), n, N))
        else:
            lo_f, hi_f = c["range"].value
            a = int(np.clip(round(lo_f * N), 0, min(d["z0"], N - n)))
            b = int(np.clip(round(hi_f * N), max(a + n, d["z0"] + 1), N))
        P = h[a:b].copy()
        P[0] += h[:a].sum()
        P[-1] += h[b:].sum()
        kept = h[a:b]
        Q = quantize_histogram(kept, n) if kept.sum() > 0 else np.zeros_like(kept)
        Pn, Qn = P / P.sum(), Q / max(Q.sum(), 1e-300)
        self.h_f.set_data(np.maximum(d["p_f"], FLOOR), e)
        self.h_p.set_data(np.maximum(Pn, FLOOR), e[a:b + 1])
        self.h_q.set_data(np.maximum(Qn, FLOOR), e[a:b + 1])
        self.ax_p.set_xlim(e[0], e[-1])
        self.ax_p.set_ylim(FLOOR * 0.5, 2.0)  # fixed: a threshold drag never changes the limits (blit path)
        r_max_grid, curves = self._curves(d, a)
        vals = {}
        for m in METRICS:
            y = np.maximum(curves[m], 1e-12)
            self.curves[m].set_data(r_max_grid, y)
            vals[m] = (kl_divergence if m == "kl" else symmetric_kl if m == "symmetric_kl" else _js)(
                P, Q if Q.sum() > 0 else np.full_like(P, FLOOR))
            self.dots[m].set_data([e[b]], [max(vals[m], 1e-12)])
        self.ax_d.set_xlim(e[0] if not sym else 0.0, e[-1])
        self.ax_d.set_ylim(1e-6, 20.0)  # fixed decades: changing bits or threshold keeps the blit path
        for name, (l1, l2) in self.vlines.items():
            t = d["marks"][name]
            l1.set_xdata([t, t])
            l2.set_xdata([t, t])
        for ln in self.cur:
            ln.set_xdata([e[b], e[b]])
        r_min = e[a] if not sym else (-e[b] if d["signed"] else 0.0)
        q_min, q_max = qrange(c["bits"].value, signed=d["signed"])
        s, z = scale_zero_point(r_min, float(e[b]), q_min, q_max, symmetric=sym)
        rng = f"T = {e[b]:.4g}" if sym else f"[{e[a]:.4g}, {e[b]:.4g}]"
        self.readout_table({
            "range": rng, "s": f"{float(s):.4g}", "z": int(z), "q": f"[{q_min}, {q_max}]",
            "KL": f"{vals['kl']:.4g}", "sym. KL": f"{vals['symmetric_kl']:.4g}", "JS": f"{vals['js']:.4g}",
            "KL pick": f"{d['marks']['kl']:.4g}",
        })


BENCHMARK_CASES = [
    ("05 calibration", "CalibrationExplorer(demo_activations())",
     {"threshold": [0.1, 0.2, 0.35, 0.5, 0.8, 0.05], "bits": [8, 6, 4, 8],
      "mode": ["asymmetric", "symmetric"], "range": [(0.1, 0.5), (0.0, 0.3), (0.2, 0.9)],
      "layer": ["signed, with outliers", "post-ReLU mixture"]}),
]
