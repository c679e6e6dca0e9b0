"""Lab 03 explorer: linear vs power-of-two vs k-means vs NormalFloat levels over the histogram of r.

Drag the bit-width, pick a method, and see the non-uniform levels (lines), the region of r that each
level collects (alternating shading), the staircase r -> r_hat, and the MSE/SQNR/bytes readout. For
k-means, "k-means step" runs one Lloyd iteration (assign, then update) and moves the centroids.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from ..granularity import fake_quantize_tensor
from ..metrics import mse, sqnr_db, tensor_size_bytes
from ..nonlinear import (
    Codebook,
    codebook_size_bytes,
    fake_nf,
    fake_pow2,
    kmeans_init,
    lloyd_step,
    nearest_index,
    nf_size_bytes,
    pow2_size_bytes,
)
from ._base import Explorer, new_figure

__all__ = ["NonlinearExplorer", "demo_data", "EXPLORER_METHODS", "BENCHMARK_CASES"]

EXPLORER_METHODS = ("linear", "log (linear rounding)", "log (log rounding)", "k-means", "NF (quantile)")


def demo_data(n: int = 20_000, seed: int = 0) -> dict:
    """N(0, 1) and Laplace(0, 1) samples (seeded) and the trained CNN's conv2 and fc1 weights (flat)."""
    from ..models import load_trained

    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g) - 0.5
    m = load_trained()
    return {"gaussian": torch.randn(n, generator=g), "laplace": -torch.sign(u) * torch.log1p(-2 * u.abs()),
            "conv2 weights": m.conv2.weight.detach().flatten().clone(),
            "fc1 weights": m.fc1.weight.detach().flatten().clone()}


class NonlinearExplorer(Explorer):
    """Histogram of r with the levels of the chosen grid, each level's assignment region, and r -> r_hat.

    Controls: data, method, bits (2–5), init (k-means), and the "k-means step" button. Readout: levels,
    MSE, SQNR, stored bits per value (codes + scale/codebook), lookups per weight, k-means iteration.
    The library computes every r_hat (linear: fake_quantize_tensor; log: fake_pow2; k-means: lloyd_step;
    NF: fake_nf with one absmax for the whole tensor so that a single grid can be drawn).

    >>> ex = NonlinearExplorer(); ex.controls["method"].value = "k-means"; ex.kmeans_step()
    """

    def __init__(self, data: dict | None = None, method: str = "log (linear rounding)", bits: int = 3):
        self.data = data if data is not None else demo_data()
        self._hist: dict = {}
        self._km: dict = {}
        self.controls = {
            "data": widgets.Dropdown(options=list(self.data), description="data"),
            "method": widgets.Dropdown(options=EXPLORER_METHODS, value=method, description="method"),
            "bits": widgets.IntSlider(value=bits, min=2, max=5, description="bits"),
            "init": widgets.ToggleButtons(options=["linear", "k-means++"], description="k-means init",
                                          style={"button_width": "95px"}),
        }
        self.step_button = widgets.Button(description="k-means step", icon="forward",
                                          tooltip="one Lloyd iteration: assign each r to its nearest centroid, "
                                                  "then move each centroid to the mean of its values")
        self.step_button.on_click(lambda _: self.kmeans_step())
        self.fig, (self.ax_h, self.ax_s) = new_figure(2, 1, width=9.5, height=3.2)
        tr = blended_transform_factory(self.ax_h.transData, self.ax_h.transAxes)
        self.regions = PolyCollection([], transform=tr, alpha=0.18, lw=0)
        self.ax_h.add_collection(self.regions)
        self.hist = self.ax_h.stairs(np.ones(1), np.array([0.0, 1.0]), fill=True, color="C0", alpha=0.6)
        self.levels = LineCollection([], transform=tr, colors="C3", linewidths=1.2)
        self.ax_h.add_collection(self.levels)
        self.note = self.ax_h.text(0.02, 0.96, "", transform=self.ax_h.transAxes, fontsize=8, va="top")
        (self.stair,) = self.ax_s.plot([], [], color="C3", lw=1.2)
        (self.ident,) = self.ax_s.plot([], [], color="0.6", lw=0.8, ls=":")
        self.ax_h.set_xlabel("r")
        self.ax_h.set_ylabel("count")
        self.ax_h.set_title("histogram of r, levels and their regions", fontsize=9)
        self.ax_s.set_xlabel("r")
        self.ax_s.set_ylabel("r_hat")
        self.ax_s.set_title("r -> r_hat", fontsize=9)
        handles = [Patch(color="C0", alpha=0.6, label="r"), Line2D([], [], color="C3", label="levels"),
                   Patch(color="C1", alpha=0.3, label="region of a level"),
                   Line2D([], [], color="0.6", ls=":", label="r_hat = r")]
        self.ax_s.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
        for ax in (self.ax_h, self.ax_s):
            ax.tick_params(labelsize=8)
        self.animated = [self.regions, self.levels, self.note, self.stair]
        self._wire()

    @property
    def ui(self) -> widgets.Widget:
        """Controls (with the k-means step button), figure and readout."""
        box = super().ui
        box.children[0].children = (*box.children[0].children, self.step_button)
        return box

    # ---------------------------------------------------------------------------------------- state
    def _r(self):
        """(r, x grid, histogram edges, counts) for the current data, computed once."""
        name = self.controls["data"].value
        if name not in self._hist:
            r = self.data[name].float()
            lo, hi = float(r.min()), float(r.max())
            pad = 0.03 * (hi - lo)
            edges = np.linspace(lo - pad, hi + pad, 121)
            counts, _ = np.histogram(r.numpy(), edges)
            self._hist[name] = (r, torch.linspace(lo, hi, 3001), edges, counts)
        return self._hist[name]

    def _km_state(self):
        """[centroids (1, k), iteration] of k-means for (data, bits, init); starts at the initialisation."""
        c = self.controls
        key = (c["data"].value, c["bits"].value, c["init"].value)
        if key not in self._km:
            r = self._r()[0]
            self._km[key] = [kmeans_init(r[None], 2 ** c["bits"].value, c["init"].value, seed=0), 0]
        return self._km[key]

    def kmeans_step(self) -> None:
        """One Lloyd iteration on the current data (switches the method to k-means), then redraw."""
        if self.controls["method"].value != "k-means":
            self.controls["method"].value = "k-means"  # observer redraws at iteration 0 first
        state = self._km_state()
        state[0], _ = lloyd_step(self._r()[0][None], state[0])
        state[1] += 1
        self._refresh()

    def quantized(self, r: torch.Tensor):
        """(r_hat, stored bytes, lookups per weight) for the current method and bits; r is (N,)."""
        c = self.controls
        b, m, n = c["bits"].value, c["method"].value, r.numel()
        if m == "linear":
            return fake_quantize_tensor(r, b, symmetric=True, narrow=True), tensor_size_bytes(n, b, 1), 0
        if m.startswith("log"):
            rounding = "log" if "log rounding" in m else "linear"
            return fake_pow2(r, b, rounding=rounding), pow2_size_bytes(n, b), 0
        if m == "k-means":
            cents = torch.sort(self._km_state()[0], 1).values
            cb = Codebook(nearest_index(r[None], cents)[0], cents, b)
            return cb.dequantize(), codebook_size_bytes(n, b), 1
        return fake_nf(r, b, block_size=n), nf_size_bytes(n, b, n), 1

    # --------------------------------------------------------------------------------------- update
    def update(self):
        c = self.controls
        r, xs, edges, counts = self._r()
        if getattr(self, "_shown", None) != c["data"].value:
            self._shown = c["data"].value
            self.hist.set_data(counts, edges)
            self.ax_h.set_xlim(edges[0], edges[-1])
            self.ax_h.set_ylim(0, 1.1 * counts.max())
            self.ax_s.set_xlim(edges[0], edges[-1])
            self.ax_s.set_ylim(edges[0], edges[-1])
            self.ident.set_data(edges[[0, -1]], edges[[0, -1]])
        r_hat, n_bytes, lookups = self.quantized(r)
        ys = self.quantized(xs)[0].numpy()
        x = xs.numpy()
        self.stair.set_data(x, ys)
        lv = np.unique(r_hat.numpy())
        self.levels.set_segments([[(v, 0.0), (v, 1.0)] for v in lv])
        cuts = np.concatenate([[edges[0]], (x[1:][ys[1:] != ys[:-1]] + x[:-1][ys[1:] != ys[:-1]]) / 2, [edges[-1]]])
        self.regions.set_verts([[(a, 0), (a, 1), (b_, 1), (b_, 0)] for a, b_ in zip(cuts[:-1], cuts[1:])])
        self.regions.set_facecolors(["C1" if i % 2 else "C2" for i in range(len(cuts) - 1)])
        is_km = c["method"].value == "k-means"
        self.note.set_text(f"{len(lv)} levels used of {2 ** c['bits'].value}"
                           + (f" · k-means iteration {self._km_state()[1]}" if is_km else ""))
        self.readout_table({
            "MSE": f"{mse(r, r_hat):.3g}", "SQNR": f"{sqnr_db(r, r_hat):.2f} dB",
            "stored": f"{8 * n_bytes / r.numel():.3f} bits/value", "lookups/weight": lookups,
            **({"k-means iteration": self._km_state()[1]} if is_km else {}),
        })


BENCHMARK_CASES = [
    ("03 nonlinear", "NonlinearExplorer()",
     {"bits": [2, 3, 4, 5, 3], "method": list(EXPLORER_METHODS), "init": ["k-means++", "linear"],
      "data": ["laplace", "fc1 weights", "gaussian"]}),
]
