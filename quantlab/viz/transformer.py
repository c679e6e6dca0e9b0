"""Lab 09 explorers, on shipped captured data (data/transformer_layers.npz, data/transformer_table.json).

* :class:`OutlierExplorer` — a SmolLM2 layer chooser: per-channel absmax of the layer's inputs (log scale).
* :class:`SmoothQuantExplorer` — α slider: per-channel ranges of X·diag(s)⁻¹ and W·diag(s), and the layer's
  W8A8 output SQNR (per-tensor int8 activations, per-channel int8 weights) against α.
* :class:`WeightGranularityExplorer` — bits × granularity on MiniLM's ``encoder.layer.0.attention.output.dense``:
  per-row SQNR of the weight, and the model-level embedding cosine read from the precomputed table.

All numbers are computed in ``__init__`` by the library; a callback only slices and moves artists (blit).
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from ..granularity import PerChannel, PerGroup, PerTensor
from ..metrics import sqnr_db
from ..smoothquant import smooth_scales, w8a8_linear_output
from ..transformer_quant import fake_quantize_weight, load_captured, load_table
from ._base import Explorer, new_figure

__all__ = ["OutlierExplorer", "SmoothQuantExplorer", "WeightGranularityExplorer", "BENCHMARK_CASES"]

ALPHAS = np.round(np.arange(0, 1.0001, 0.05), 2)
SCHEMES = {"per-tensor": PerTensor(), "per-channel": PerChannel(0), "group-32": PerGroup(32),
           "group-64": PerGroup(64), "group-128": PerGroup(128)}


def _short(name: str) -> str:
    return name.replace("model.layers.", "layer ").replace("self_attn.", "").replace("mlp.", "")


class OutlierExplorer(Explorer):
    """Per-input-channel absmax max_t |X_tj| of one SmolLM2 Linear's inputs (captured on our sentences).

    >>> ex = OutlierExplorer(); ex.controls["layer"].value = "model.layers.11.mlp.down_proj"
    """

    def __init__(self, captured: dict | None = None):
        cap = captured if captured is not None else load_captured()
        self.stats = {k.split("/", 1)[1]: v.numpy() for k, v in cap.items() if k.startswith("smol_absmax/")}
        names = sorted(self.stats, key=lambda n: (int(n.split(".")[2]), n))
        self.ratio = {n: float(v.max() / np.median(v)) for n, v in self.stats.items()}
        self.controls = {"layer": widgets.SelectionSlider(options=[(_short(n), n) for n in names], value=names[0],
                                                          description="layer", continuous_update=False,
                                                          layout=widgets.Layout(width="420px"))}
        self.fig, self.ax = new_figure(1, 1, width=9.0, height=3.0)
        self.line, = self.ax.plot([], [], lw=0.8, color="C0", label="max |X_j|")
        self.med = self.ax.axhline(1, color="C3", ls="--", lw=0.8, label="median over channels")
        self.ax.set_yscale("log")
        self.ax.set_xlim(0, max(len(v) for v in self.stats.values()))
        self.ax.set_ylim(1e-2, 1e4)
        self.ax.set_xlabel("input channel j")
        self.ax.set_ylabel("max_t |X_tj| (log)")
        self.ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        self.animated = [self.line, self.med]
        self._wire()

    def update(self):
        n = self.controls["layer"].value
        v = self.stats[n]
        self.line.set_data(np.arange(len(v)), v)
        self.med.set_ydata([np.median(v)] * 2)
        j = int(v.argmax())
        self.readout_table({"layer": n, "channels": len(v), "max/median": f"{self.ratio[n]:.1f}",
                            "largest": f"|X| = {v[j]:.1f} in channel {j}"})


class SmoothQuantExplorer(Explorer):
    """α slider for SmoothQuant on a shipped SmolLM2 layer: ranges after smoothing and W8A8 output SQNR.

    >>> ex = SmoothQuantExplorer(); ex.controls["alpha"].value = 0.5; bool(ex.sqnr[ex.layer][10] > ex.sqnr[ex.layer][0])
    True
    """

    def __init__(self, captured: dict | None = None, layer: str = "model.layers.11.mlp.down_proj"):
        cap = captured if captured is not None else load_captured()
        names = [k.split("/", 1)[1] for k in cap if k.startswith("smol_x/")]
        self.xr, self.wr, self.sqnr, self.plain = {}, {}, {}, {}
        for n in names:
            x, w, w_abs = cap[f"smol_x/{n}"], cap[f"smol_w/{n}"], cap[f"smol_wabsmax/{n}"]
            x_abs, y = x.abs().amax(0), x @ w.T
            s = torch.stack([smooth_scales(x_abs, w_abs, float(a)) for a in ALPHAS])      # (A, C_in)
            self.xr[n], self.wr[n] = (x_abs / s).numpy(), (w_abs * s).numpy()
            self.sqnr[n] = np.array([sqnr_db(y, w8a8_linear_output(x, w, float(a))) for a in ALPHAS])
            self.plain[n] = sqnr_db(y, w8a8_linear_output(x, w, None))
        self.layer = layer
        self.controls = {
            "layer": widgets.Dropdown(options=[(_short(n), n) for n in names], value=layer, description="layer"),
            "alpha": widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="α"),
        }
        self.fig, (self.ax_r, self.ax_s) = new_figure(2, 1, width=9.5, height=3.2,
                                                      gridspec_kw={"width_ratios": [2.2, 1]})
        self.lx, = self.ax_r.plot([], [], lw=0.8, color="C0", label="max|X_j| / s_j")
        self.lw, = self.ax_r.plot([], [], lw=0.8, color="C1", label="max|W_j| · s_j")
        self.ax_r.set_yscale("log")
        self.ax_r.set_xlim(0, max(len(v[0]) for v in self.xr.values()))
        self.ax_r.set_ylim(1e-3, 1e4)
        self.ax_r.set_xlabel("input channel j")
        self.ax_r.set_ylabel("per-channel absmax (log)")
        self.ax_r.legend(loc="upper left", bbox_to_anchor=(0.0, -0.22), ncol=2, fontsize=8)
        self.curve, = self.ax_s.plot(ALPHAS, self.sqnr[layer], color="C2", label="SmoothQuant")
        self.base = self.ax_s.axhline(self.plain[layer], color="0.5", ls="--", lw=0.8, label="no smoothing")
        self.mark, = self.ax_s.plot([0], [self.sqnr[layer][0]], "o", color="C3")
        self.ax_s.set_xlim(0, 1)
        lo = min(min(v.min(), self.plain[n]) for n, v in self.sqnr.items())
        hi = max(v.max() for v in self.sqnr.values())
        self.ax_s.set_ylim(lo - 2, hi + 2)
        self.ax_s.set_xlabel("α")
        self.ax_s.set_ylabel("W8A8 output SQNR (dB)")
        self.ax_s.legend(loc="upper left", bbox_to_anchor=(0.0, -0.22), fontsize=8)
        self.animated = [self.lx, self.lw, self.curve, self.base, self.mark]
        self._wire()

    def update(self):
        n, a = self.controls["layer"].value, self.controls["alpha"].value
        self.layer = n
        i = int(round(a / 0.05))
        xr, wr = self.xr[n][i], self.wr[n][i]
        k = np.arange(len(xr))
        self.lx.set_data(k, xr)
        self.lw.set_data(k, wr)
        self.curve.set_ydata(self.sqnr[n])
        self.base.set_ydata([self.plain[n]] * 2)
        self.mark.set_data([ALPHAS[i]], [self.sqnr[n][i]])
        self.readout_table({"α": f"{ALPHAS[i]:.2f}", "X max/median": f"{xr.max() / np.median(xr):.1f}",
                            "W max/median": f"{wr.max() / np.median(wr):.1f}",
                            "W8A8 SQNR": f"{self.sqnr[n][i]:.1f} dB (no smoothing {self.plain[n]:.1f} dB)"})


class WeightGranularityExplorer(Explorer):
    """Bits × granularity on a MiniLM weight: per-row SQNR and the model-level cosine from the table.

    >>> ex = WeightGranularityExplorer(); ex.controls["scheme"].value = "group-32"; ex.controls["bits"].value = 4
    """

    def __init__(self, captured: dict | None = None, table: dict | None = None):
        cap = captured if captured is not None else load_captured()
        self.table = (table if table is not None else load_table())["minilm"]
        w = cap["minilm_w"]
        self.row_sqnr, self.total = {}, {}
        for bits in (8, 4, 3):
            for name, g in SCHEMES.items():
                w_hat = fake_quantize_weight(w, bits, g)
                # sqnr_db row by row, vectorised (384 calls took seconds): 10 log10(Σ w² / Σ (w - ŵ)²) per row
                noise = ((w - w_hat) ** 2).sum(1).double().clamp_min(1e-30)
                self.row_sqnr[bits, name] = (10 * torch.log10((w ** 2).sum(1).double() / noise)).numpy()
                self.total[bits, name] = sqnr_db(w, w_hat)
        self.controls = {
            "bits": widgets.SelectionSlider(options=[8, 4, 3], value=8, description="bits"),
            "scheme": widgets.Dropdown(options=list(SCHEMES), value="per-tensor", description="granularity"),
        }
        self.fig, (self.ax_r, self.ax_m) = new_figure(2, 1, width=9.5, height=3.0,
                                                      gridspec_kw={"width_ratios": [2.2, 1]})
        self.pts, = self.ax_r.plot(np.arange(w.shape[0]), np.zeros(w.shape[0]), ".", ms=3, color="C0")
        self.ax_r.set_xlim(0, w.shape[0])
        self.ax_r.set_ylim(-5, 60)
        self.ax_r.set_xlabel("output row i of W (384 × 384)")
        self.ax_r.set_ylabel("SQNR of row i (dB)")
        self.bars = self.ax_m.bar([0, 1], [0, 0], color=["C0", "C2"])
        self.ax_m.set_xticks([0, 1], ["cosine", "NN agr."])
        self.ax_m.set_ylim(0, 1.05)
        self.ax_m.set_ylabel("MiniLM vs FP32 (table)")
        self.animated = [self.pts, *self.bars]
        self._wire()

    def update(self):
        key = (self.controls["bits"].value, self.controls["scheme"].value)
        self.pts.set_ydata(np.clip(self.row_sqnr[key], -5, 60))
        row = self.table[f"int{key[0]} {key[1]}"]
        self.bars[0].set_height(row["cosine"])
        self.bars[1].set_height(row["nn_agreement"])
        self.readout_table({"weight SQNR": f"{self.total[key]:.1f} dB",
                            "model cosine": f"{row['cosine']:.3f}", "NN agreement": f"{row['nn_agreement']:.3f}"})


BENCHMARK_CASES = [
    ("09 outliers", "OutlierExplorer()",
     {"layer": ["model.layers.11.mlp.down_proj", "model.layers.3.self_attn.q_proj", "model.layers.0.mlp.gate_proj"]}),
    ("09 smoothquant", "SmoothQuantExplorer()",
     {"alpha": [0.25, 0.5, 0.75, 1.0, 0.0], "layer": ["model.layers.0.self_attn.q_proj",
                                                       "model.layers.11.mlp.down_proj"]}),
    ("09 granularity", "WeightGranularityExplorer()",
     {"bits": [4, 3, 8], "scheme": ["per-channel", "group-32", "group-128", "per-tensor"]}),
]
