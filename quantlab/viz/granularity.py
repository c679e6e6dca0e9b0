"""Lab 02 explorer: one (s, z) per layer vs per channel vs per group, on a real conv weight.

Inject an outlier channel (one output channel scaled by a factor, its BatchNorm statistics scaled to
match so the network computes the same function) and watch per-tensor SQNR collapse for every *other*
channel while per-channel quantization does not move.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.collections import LineCollection

from ..granularity import PerChannel, PerGroup, PerTensor, choose_qparams
from ..linear import fake_quantize
from ..metrics import per_channel_sqnr
from ..models import with_outlier_channel  # noqa: F401 - re-exported for older notebooks
from ._base import Explorer, new_figure

__all__ = ["GranularityExplorer"]

GRANULARITIES = {"per-tensor": PerTensor(), "per-channel": PerChannel(0), "per-group (16)": PerGroup(16)}


class GranularityExplorer(Explorer):
    """Per-channel ranges of a weight and the SQNR of each channel under three granularities.

    Controls: bits (2–8), outlier factor (1 = none), outlier channel. Readout: mean SQNR per
    granularity and how many (s, z) pairs each stores.

    >>> ex = GranularityExplorer(torch.randn(8, 16, 3, 3)); ex.controls["factor"].value = 20.0
    """

    def __init__(self, w: torch.Tensor, bits: int = 4):
        self.w = w.detach().float().clone()
        C = self.w.shape[0]
        self.controls = {
            "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits"),
            "factor": widgets.FloatLogSlider(value=1.0, base=10, min=0, max=1.7, step=0.05, description="outlier ×"),
            "channel": widgets.IntSlider(value=0, min=0, max=C - 1, description="channel"),
        }
        self.fig, (self.ax_r, self.ax_q) = new_figure(2, 1, width=9.0, height=3.4)
        ch = np.arange(C)
        self.ranges = LineCollection([], colors="C0", linewidths=3, alpha=0.7)
        self.ax_r.add_collection(self.ranges)
        self.t_lo = self.ax_r.axhline(0, color="C3", ls="--", lw=1, label="per-tensor range")
        self.t_hi = self.ax_r.axhline(0, color="C3", ls="--", lw=1)
        self.ax_r.set_xlim(-1, C)
        self.ranges.set_label("range of channel c")
        self.ax_r.set_xlabel("output channel c", fontsize=8)
        self.ax_r.set_ylabel("weight value w", fontsize=8)
        self.ax_r.set_title("range [min w_c, max w_c] of each channel", fontsize=10)
        self.ax_r.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False)
        self.lines = {
            name: self.ax_q.plot(ch, np.zeros(C), marker=m, ms=3, lw=1, label=name)[0]
            for name, m in zip(GRANULARITIES, "os^")
        }
        self.ax_q.set_xlim(-1, C)
        self.ax_q.set_xlabel("output channel c", fontsize=8)
        self.ax_q.set_ylabel("SQNR (dB)", fontsize=8)
        self.ax_q.set_title("SQNR of each channel", fontsize=10)
        self.ax_q.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7, frameon=False)
        self.ax_q.set_ylim(-3, 60)  # fixed: a bits/channel change only blits the lines
        for ax in (self.ax_r, self.ax_q):
            ax.tick_params(labelsize=7)
        self.animated = [self.ranges, self.t_lo, self.t_hi, *self.lines.values()]
        self._wire()

    def weight(self) -> torch.Tensor:
        """The weight with the outlier channel applied (factor 1 = the original)."""
        w = self.w.clone()
        w[self.controls["channel"].value] *= self.controls["factor"].value
        return w

    def update(self):
        w = self.weight()
        bits = self.controls["bits"].value
        flat = w.reshape(w.shape[0], -1)
        lo, hi = flat.min(1).values.numpy(), flat.max(1).values.numpy()
        self.ranges.set_segments([[(c, a), (c, b)] for c, (a, b) in enumerate(zip(lo, hi))])
        self.t_lo.set_ydata([lo.min()] * 2)
        self.t_hi.set_ydata([hi.max()] * 2)
        pad = 0.05 * (hi.max() - lo.min())
        ylim = (float(lo.min() - pad), float(hi.max() + pad))
        if self.ax_r.get_ylim() != ylim:  # only an outlier change moves the limits: then one full draw
            self.ax_r.set_ylim(*ylim)
        summary = {}
        for name, g in GRANULARITIES.items():
            p = choose_qparams(w, bits, g, symmetric=True, narrow=True)
            sq = per_channel_sqnr(w, fake_quantize(w, p.s, p.z, p.q_min, p.q_max)).clamp(max=99.0).numpy()
            self.lines[name].set_ydata(sq)
            summary[name] = f"{sq.mean():.1f} dB ({p.n_params} × (s,z))"
        self.readout_table(summary)
