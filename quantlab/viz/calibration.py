"""Lab 05 explorer: drag the clip threshold (or range) over a layer's P_f and watch Q_q and D(P || Q_q) move.

Top panel: the activation histogram P_f (grey), the clipped P (mass beyond the threshold folded into the
last kept bin) and Q_q = quantize_histogram (the kept bins on n_levels levels). Bottom panel: KL, symmetric
KL and JS against the threshold (NVIDIA's fractional merge rule) and KL with lab 05's integer rule
(dashed), a dot on each at the current threshold, and vertical markers at the thresholds chosen by
min/max, percentile, MSE and the KL search. Curves, dots and the KL marker are one computation: the
histogram the search uses (zero spike flattened, :func:`quantlab.calibration.flatten_zero_bin`) and the
search's own curve (:func:`quantlab.calibration.kl_threshold`), so the marker sits at the KL curve's minimum.
Everything is computed once per (layer, bits, mode) and cached; a slider move only re-slices.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.ticker import LogLocator, NullLocator

from ..calibration import (
    calibrate_range,
    divergence_curve,
    flatten_zero_bin,
    histogram,
    kl_range,
    kl_threshold,
    n_levels_for,
    quantize_histogram,
)
from ..calibration.vectorised import START_BIN
from ..granularity import qparams_from_range
from ._base import Explorer, new_figure

__all__ = ["CalibrationExplorer", "demo_activations", "BENCHMARK_CASES"]

FLOOR = 1e-7  # probabilities below this are drawn at the floor of the log axis
MARKERS = {"minmax": "0.35", "percentile": "C4", "mse": "C2", "kl": "C3"}
CURVES = {  # name -> (metric, merge rule, colour, line style)
    "KL": ("kl", "fractional", "C3", "-"), "sym. KL": ("symmetric_kl", "fractional", "C1", "-"),
    "JS": ("js", "fractional", "C0", "-"), "KL, integer rule": ("kl", "integer", "C3", ":"),
}


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


def _finite(y):
    return np.where(np.isfinite(y), np.maximum(y, 1e-12), np.nan)  # +inf (reference KL) -> a gap


def _fmt(v: float) -> str:
    if np.isnan(v):
        return "n/a (fewer kept bins than levels)"
    return f"{v:.4g}" if np.isfinite(v) else "∞"


class CalibrationExplorer(Explorer):
    """P_f, P, Q_q and the divergence curves of one layer's activations; threshold / range sliders.

    ``acts``: {name: activation tensor} (e.g. from :func:`quantlab.models.collect_activations`), or one
    tensor (any device: copied to the CPU once).
    Controls: layer, bits (2-8), mode (symmetric: threshold T on |x|; asymmetric: range [r_min, r_max] on x),
    threshold (T as a fraction of max|x|), range (fractions of [min x, max x]).
    Readout: T or [r_min, r_max], s, z, and KL / symmetric KL / JS at the current choice, the KL pick.

    >>> ex = CalibrationExplorer(demo_activations()); ex.controls["threshold"].value = 0.3
    """

    def __init__(self, acts, bits: int = 8, pct: float = 99.99, bins: int = 2048, n_points: int = 256):
        if isinstance(acts, (torch.Tensor, np.ndarray)):
            acts = {"x": acts}
        self.acts = {k: torch.as_tensor(v).detach().cpu().float().reshape(-1) for k, v in acts.items()}
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
                                              description="range", readout=False),  # shown in the readout
        }
        self.fig, (self.ax_p, self.ax_d) = new_figure(1, 2, width=9.2, height=5.6)  # fits a notebook output
        self.ax_p.set_title("P_f (grey), clipped P and Q_q (zero spike flattened)", fontsize=10)
        self.ax_d.set_title("D(P || Q_q) against the clip threshold", fontsize=10)
        one, edges = np.ones(1), np.array([0.0, 1.0])
        self.h_f = self.ax_p.stairs(one, edges, fill=True, color="0.8", baseline=FLOOR, label="P_f")
        self.h_p = self.ax_p.stairs(one, edges, color="C0", lw=1.0, baseline=FLOOR, label="P (clipped)")
        self.h_q = self.ax_p.stairs(one, edges, color="C3", lw=1.0, baseline=FLOOR, label="Q_q")
        for ax in (self.ax_p, self.ax_d):  # few log ticks: tick labels are most of the draw time
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
            ax.yaxis.set_minor_locator(NullLocator())
        self.ax_p.set_xlabel("activation value r")
        self.ax_p.set_ylabel("probability")
        self.ax_d.set_xlabel("clip threshold (r_max)")
        self.ax_d.set_ylabel("divergence (nats)")
        self.curves, self.dots = {}, {}
        for name, (_, _, color, ls) in CURVES.items():
            (self.curves[name],) = self.ax_d.plot([], [], color=color, ls=ls, lw=1.2, label=name)
            (self.dots[name],) = self.ax_d.plot([], [], "o", color=color, ms=5, mfc="none" if ls == ":" else color)
        self.vlines = {}
        for name, color in MARKERS.items():
            self.vlines[name] = (self.ax_p.axvline(0, color=color, ls="--", lw=1),
                                 self.ax_d.axvline(0, color=color, ls="--", lw=1, label=f"{name} T"))
        self.cur = (self.ax_p.axvline(0, color="k", lw=1.2, label="current"), self.ax_d.axvline(0, color="k", lw=1.2))
        for ax in (self.ax_p, self.ax_d):  # legends outside the data, static (not blitted)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        # artists that update() moves: redrawn by blitting while the axis limits stay put (see _base)
        self.animated = [self.h_f, self.h_p, self.h_q, *self.curves.values(), *self.dots.values(),
                         *(ln for pair in self.vlines.values() for ln in pair), *self.cur]
        self._wire()

    # ----------------------------------------------------------------------------------------- cache
    def _setup(self, layer: str, bits: int, mode: str) -> dict:
        """Search histogram, method markers and (symmetric) curves, once per (layer, bits, mode)."""
        key = (layer, bits, mode)
        if key not in self._cache:
            hist_x, (ha, ea), signed = self._hists[layer]
            sym = mode == "symmetric"
            grid_signed = signed and sym
            h_raw, e = (ha, ea) if sym else hist_x
            n = n_levels_for(bits, grid_signed) if sym else 2**bits
            h = flatten_zero_bin(h_raw, e)  # the histogram every search of calibrate() uses
            marks = {m: calibrate_range(hist_x, m, bits, symmetric=sym, signed=grid_signed, pct=self.pct,
                                        bins=self.bins)[1] for m in ("minmax", "percentile", "mse")}
            if sym:
                res = kl_threshold(h, e, bits, grid_signed, "kl")
                marks["kl"] = res.threshold
            else:
                marks["kl"] = kl_range(h, e, bits).r_max
            self._cache[key] = {"h": h, "h_raw": h_raw, "e": e, "n": n, "marks": marks, "signed": grid_signed,
                                "sym": sym, "first": min(START_BIN, h.size), "kl": res if sym else None, "curves": {}}
        return self._cache[key]

    def _curves(self, d: dict, a: int) -> dict:
        """{curve name: (r_max, D)} for ranges [e[a], e[b]] (cached per start a); KL = the search's curve."""
        if a not in d["curves"]:
            h, e, n = d["h"], d["e"], d["n"]
            out = {}
            for name, (metric, merge, _, _) in CURVES.items():
                if name == "KL" and d["kl"] is not None and a == 0:
                    out[name] = (d["kl"].thresholds, d["kl"].divergences)  # the search's own curve
                    continue
                r, D = divergence_curve(h, e, n, metric, start=a, merge=merge)
                if metric == "js" and r.size > self.n_points:  # JS costs a pass over every bin: subsample
                    ends = np.unique(np.linspace(np.searchsorted(e, r[0]), h.size, self.n_points).round())
                    r, D = divergence_curve(h, e, n, metric, start=a, ends=ends.astype(np.int64), merge=merge)
                out[name] = (r, D)
            d["curves"][a] = out
        return d["curves"][a]

    # ---------------------------------------------------------------------------------------- update
    def update(self):
        c = self.controls
        d = self._setup(c["layer"].value, c["bits"].value, c["mode"].value)
        h, e, n, N, sym = d["h"], d["e"], d["n"], d["h"].size, d["sym"]
        c["threshold"].disabled, c["range"].disabled = not sym, sym
        if sym:
            a, b = 0, int(np.clip(round(c["threshold"].value * N), d["first"], N))
        else:
            z0 = int(np.clip(np.searchsorted(e, 0.0, side="right") - 1, 0, N - 1)) if e[0] <= 0 else 0
            lo_f, hi_f = c["range"].value
            a = int(np.clip(round(lo_f * N), 0, min(z0, N - d["first"])))
            b = int(np.clip(round(hi_f * N), max(a + d["first"], z0 + 1), N))
        P = h[a:b].copy()
        P[0] += h[:a].sum()
        P[-1] += h[b:].sum()
        kept = h[a:b]
        Q = quantize_histogram(kept, n, "fractional") if kept.sum() > 0 else np.zeros_like(kept)
        self.h_f.set_data(np.maximum(d["h_raw"] / d["h_raw"].sum(), FLOOR), e)
        self.h_p.set_data(np.maximum(P / P.sum(), FLOOR), e[a:b + 1])
        self.h_q.set_data(np.maximum(Q / max(Q.sum(), 1e-300), FLOOR), e[a:b + 1])
        self.ax_p.set_xlim(e[0], e[-1])
        self.ax_p.set_ylim(FLOOR * 0.5, 2.0)  # fixed: a threshold drag never changes the limits (blit path)
        vals = {}
        for name, (r, D) in self._curves(d, a).items():
            self.curves[name].set_data(r, _finite(D))
            k = np.flatnonzero(r == e[b])
            metric, merge = CURVES[name][:2]
            if k.size:
                vals[name] = float(D[k[0]])
            elif merge == "integer" and b < a + n:  # the integer rule needs >= n_levels kept bins
                vals[name] = float("nan")
            else:
                vals[name] = float(divergence_curve(h, e, n, metric, start=a, ends=[b], merge=merge)[1][0])
            self.dots[name].set_data([e[b]], _finite(np.array([vals[name]])))
        self.ax_d.set_xlim(e[0] if not sym else 0.0, e[-1])
        self.ax_d.set_ylim(1e-6, 20.0)  # fixed decades: changing bits or threshold keeps the blit path
        for name, (l1, l2) in self.vlines.items():
            t = d["marks"][name]
            l1.set_xdata([t, t])
            l2.set_xdata([t, t])
        for ln in self.cur:
            ln.set_xdata([e[b], e[b]])
        r_min = e[a] if not sym else (-e[b] if d["signed"] else 0.0)
        p = qparams_from_range(float(r_min), float(e[b]), c["bits"].value, symmetric=sym, signed=d["signed"])
        rng = f"T = {e[b]:.4g}" if sym else f"[{e[a]:.4g}, {e[b]:.4g}]"
        self.readout_table({
            "range": rng, "s": f"{float(p.s):.4g}", "z": int(p.z), "q": f"[{p.q_min}, {p.q_max}]",
            "KL": _fmt(vals["KL"]), "sym. KL": _fmt(vals["sym. KL"]), "JS": _fmt(vals["JS"]),
            "KL (integer rule)": _fmt(vals["KL, integer rule"]), "KL pick": f"{d['marks']['kl']:.4g}",
        })


BENCHMARK_CASES = [
    ("05 calibration", "CalibrationExplorer(demo_activations())",
     {"threshold": [0.1, 0.2, 0.35, 0.5, 0.8, 0.05], "bits": [8, 6, 4, 8],
      "mode": ["asymmetric", "symmetric"], "range": [(0.1, 0.5), (0.0, 0.3), (0.2, 0.9)],
      "layer": ["signed, with outliers", "post-ReLU mixture"]}),
]
