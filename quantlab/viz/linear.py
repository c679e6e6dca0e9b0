"""Lab 01 explorer: drag the bit-width, symmetric/asymmetric and the clip range; watch r -> q -> r_hat."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.ticker import MaxNLocator, NullLocator

from ..granularity import qparams_from_range
from ..linear import fake_quantize
from ..metrics import compression_ratio
from ._base import Explorer, new_figure

__all__ = ["sample_data", "LinearExplorer", "DATASETS"]

DATASETS = ("gaussian", "laplace", "post-relu", "outlier", "conv2 weights")


def sample_data(name: str, n: int = 100_000, seed: int = 0) -> torch.Tensor:
    """Example values r for the explorer (float32, shape (n,) — a real layer's weights keep their count).

    gaussian: N(0, 1); laplace: Laplace(0, 1); post-relu: max(0, N(0.3, 1)) (half the mass at exactly 0);
    outlier: N(0, 1) with one value at 20; "conv2 weights": the trained CNN's second conv layer.

    >>> sample_data("outlier").max()
    tensor(20.)
    """
    g = torch.Generator().manual_seed(seed)
    if name == "gaussian":
        return torch.randn(n, generator=g)
    if name == "laplace":
        u = torch.rand(n, generator=g) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    if name == "post-relu":
        return torch.relu(torch.randn(n, generator=g) + 0.3)
    if name == "outlier":
        r = torch.randn(n, generator=g)
        r[0] = 20.0
        return r
    if name == "conv2 weights":
        from ..models import load_trained

        return load_trained().conv2.weight.detach().flatten().clone()
    raise ValueError(f"unknown data {name!r}; choose one of {DATASETS}.")


class LinearExplorer(Explorer):
    """Histogram of r with the quantization grid, the staircase r -> r_hat, and the error r_hat - r.

    Controls: data, bits (1–16), mode (asymmetric/symmetric), clip (fraction of the range kept).
    Readout: s, z, q_min, q_max, MSE, SQNR (dB), compression ratio.

    >>> ex = LinearExplorer(); ex.controls["bits"].value = 4   # one update, artists moved in place
    """

    def __init__(self, data: str = "gaussian", bits: int = 8, symmetric: bool = False, n: int = 100_000):
        self.n = n
        self._cache: dict[str, tuple] = {}
        self.controls = {
            "data": widgets.Dropdown(options=DATASETS, value=data, description="data"),
            "bits": widgets.IntSlider(value=bits, min=1, max=16, description="bits", continuous_update=True),
            "mode": widgets.ToggleButtons(
                options=["asymmetric", "symmetric"], value="symmetric" if symmetric else "asymmetric",
                description="mode", style={"button_width": "105px"},
            ),
            "clip": widgets.FloatSlider(
                value=1.0, min=0.05, max=1.0, step=0.01, description="clip", readout_format=".2f",
                tooltip="fraction of [r_min, r_max] kept before computing s and z",
            ),
        }
        self.fig, (self.ax_h, self.ax_s, self.ax_e) = new_figure(3, 1, width=9.0, height=3.4)
        self.ax_h.set_title("histogram of r and the grid", fontsize=10)
        self.ax_s.set_title("r  ->  r_hat = s(q - z)", fontsize=10)
        self.ax_e.set_title("error (r_hat - r) / s", fontsize=10)
        self.ax_e.axhspan(-0.5, 0.5, color="C2", alpha=0.12, lw=0)
        self.ax_e.text(0.03, 0.97, "green: rounding, |error| <= s/2\nbeyond the grid: clipping",
                       transform=self.ax_e.transAxes, fontsize=7, va="top")
        self.ax_e.set_ylim(-2.0, 2.0)
        self.h_r = self.ax_h.stairs(np.ones(1), np.array([0.0, 1.0]), fill=True, alpha=0.45, label="r")
        self.h_q = self.ax_h.stairs(np.ones(1), np.array([0.0, 1.0]), color="C3", lw=1.2, label="r_hat")
        self.grid = LineCollection([], colors="0.3", linewidths=0.5, alpha=0.5, label="grid levels")
        self.ax_h.add_collection(self.grid)
        self.clip_lo = self.ax_h.axvline(0, color="C2", ls="--", lw=1, label="grid ends")
        self.clip_hi = self.ax_h.axvline(0, color="C2", ls="--", lw=1)
        self.ax_h.set_yscale("log")
        self.ax_h.yaxis.set_minor_locator(NullLocator())
        # static legend below the plot, outside the data (never blitted)
        self.ax_h.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False)
        (self.stair,) = self.ax_s.plot([], [], color="C3", lw=1.2, drawstyle="steps-mid")
        (self.ident,) = self.ax_s.plot([], [], color="0.6", lw=0.8, ls=":")
        (self.err,) = self.ax_e.plot([], [], color="C1", lw=0.9)
        # level count: inside the histogram's axes, top left (the log y-range leaves room above the data)
        self.note = self.ax_h.text(0.03, 0.97, "", transform=self.ax_h.transAxes, fontsize=7, va="top")
        labels = ((self.ax_h, "r", "count (log)"), (self.ax_s, "r", "r_hat"), (self.ax_e, "r", "error / s"))
        for ax, xlabel, ylabel in labels:
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.tick_params(labelsize=7)
        self.animated = [self.h_q, self.grid, self.clip_lo, self.clip_hi, self.stair, self.err, self.note]
        self._wire()

    def _data(self, name: str):
        """(r, sorted x-grid, histogram bins, counts of r) for a dataset, computed once."""
        if name not in self._cache:
            r = sample_data(name, self.n)
            lo, hi = float(r.min()), float(r.max())
            pad = 0.02 * (hi - lo)
            edges = np.linspace(lo - pad, hi + pad, 257)
            counts, _ = np.histogram(r.numpy(), edges)
            xs = torch.linspace(lo - pad, hi + pad, 1500)
            self._cache[name] = (r, xs, edges, counts)
        return self._cache[name]

    def params(self):
        """QParams (s, z, q_min, q_max) for the current controls: the range [c·r_min, c·r_max] through
        :func:`quantlab.granularity.qparams_from_range`, the library's one range -> (s, z) path.

        Symmetric uses the signed grid qrange(b) (z = 0); asymmetric the unsigned grid qrange(b, signed=False).
        """
        c = self.controls
        r, *_ = self._data(c["data"].value)
        symmetric = c["mode"].value == "symmetric"
        r_min, r_max = float(r.min()) * c["clip"].value, float(r.max()) * c["clip"].value
        return qparams_from_range(r_min, r_max, c["bits"].value, symmetric=symmetric)

    def update(self):
        c = self.controls
        r, xs, edges, counts = self._data(c["data"].value)
        r_np = r.numpy()
        signal = float(np.dot(r_np, r_np))  # sum r^2; SQNR = 10 log10(sum r^2 / sum (r_hat - r)^2)
        s, z, q_min, q_max = self.params()
        r_hat = fake_quantize(r, s, z, q_min, q_max)
        counts_hat, _ = np.histogram(r_hat.numpy(), edges)
        ymax = 2.0 * len(r_np)  # fixed per dataset, so most updates only blit the moving artists
        if getattr(self, "_shown", None) != c["data"].value:
            self._shown = c["data"].value
            self.h_r.set_data(np.maximum(counts, 0.5), edges)
            self.ax_h.set_xlim(edges[0], edges[-1])
            self.ax_h.set_ylim(0.7, ymax * 30)  # headroom above the data for the level count
            self.ax_s.set_xlim(edges[0], edges[-1])
            self.ax_s.set_ylim(edges[0], edges[-1])
            self.ax_e.set_xlim(edges[0], edges[-1])
            self.ident.set_data(xs.numpy(), xs.numpy())
        self.h_q.set_data(np.maximum(counts_hat, 0.5), edges)
        sf, zi = float(s), int(z)
        levels = sf * (np.arange(q_min, q_max + 1) - zi)
        if len(levels) <= 64:
            self.grid.set_segments([[(v, 0.7), (v, ymax)] for v in levels])
            self.note.set_text(f"{len(levels)} levels")
        else:
            self.grid.set_segments([])
            self.note.set_text(f"{len(levels)} levels (too dense to draw)")
        self.clip_lo.set_xdata([sf * (q_min - zi)] * 2)
        self.clip_hi.set_xdata([sf * (q_max - zi)] * 2)
        ys = fake_quantize(xs, s, z, q_min, q_max)
        x = xs.numpy()
        self.stair.set_data(x, ys.numpy())
        self.err.set_data(x, (ys - xs).numpy() / sf)
        err = r_hat.numpy() - r_np
        noise = float(np.dot(err, err))
        sq = "∞ dB" if noise == 0 else f"{10 * np.log10(signal / noise):.1f} dB"
        self.readout_table({
            "s": f"{sf:.4g}", "z": zi, "q_min": q_min, "q_max": q_max,
            "MSE": f"{noise / len(err):.3g}", "SQNR": sq,
            "compression": f"{compression_ratio(c['bits'].value):.1f}×",
        })
