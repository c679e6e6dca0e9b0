r"""Lab 07 explorers: quantization-aware training.

* :class:`FakeQuantExplorer` — the fake-quant node r -> r_hat (a staircase), its straight-through gradient
  dr_hat/dr (1 inside the range, 0 outside) and LSQ's step-size gradient dr_hat/ds, for a chosen bit-width
  and range [r_min, r_max].
* :class:`TrainingExplorer` — a QAT run: loss and test accuracy against the step, and the latent weights
  of one layer (w / s, so every channel's grid is the integers) snapping onto the grid as training
  proceeds; a step slider walks through the shipped run (``data/qat_trace.npz``), and a button starts a
  short live run whose curves grow while it trains.
* :class:`ExportExplorer` — the exported integer weights of one layer (one output channel as an image,
  the histogram of the layer's integers) with their s and z.

The library computes (quantlab.qat); an update only slices precomputed arrays and moves artists.
"""

from __future__ import annotations

import threading

import ipywidgets as widgets
import numpy as np
import torch

from ..granularity import qparams_from_range
from ..qat import LSQ, fake_quant, lsq_grad_scale
from ._base import Explorer, new_figure

__all__ = ["FakeQuantExplorer", "TrainingExplorer", "ExportExplorer", "load_trace", "snap_fraction"]

LEGEND = dict(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=7, frameon=False)


# ------------------------------------------------------------------------------- the node and its gradients


def node_curves(bits: int, r_min: float, r_max: float, n: int = 801):
    """r, r_hat, dr_hat/dr (clipped STE) and LSQ's dr_hat/ds (before g) on a grid of r, for the explorer.

    The node is asymmetric on [0, 2^b - 1] with (s, z) from [r_min, r_max]. LSQ's gradient is taken for the same
    node: s (clip(round(r/s + z)) - z) = s clip(round(r/s), q_min - z, q_max - z), the LSQ Function on the shifted
    integer bounds. Returns NumPy float arrays of length n and the QParams.
    """
    p = qparams_from_range(r_min, r_max, bits)
    span = r_max - r_min
    r = torch.linspace(r_min - 0.3 * span, r_max + 0.3 * span, n, requires_grad=True)
    r_hat = fake_quant(r, p)
    (g_r,) = torch.autograd.grad(r_hat.sum(), r)
    q_lo, q_hi = p.q_min - int(p.z), p.q_max - int(p.z)
    s_each = p.s.detach().expand(n).clone().requires_grad_(True)  # one s per value: its gradient is per value
    (g_s,) = torch.autograd.grad(LSQ.apply(r.detach(), s_each, q_lo, q_hi, 1.0).sum(), s_each)
    return r.detach().numpy(), r_hat.detach().numpy(), g_r.numpy(), g_s.numpy(), p


class FakeQuantExplorer(Explorer):
    """Staircase r -> r_hat, the STE gradient dr_hat/dr and LSQ's dr_hat/ds side by side.

    Controls: bits (2–8), r_min, r_max. Readout: s, z, q_min, q_max and LSQ's g = 1/sqrt(N Q_P) for a
    3x3x16 conv weight (N = 144).
    """

    def __init__(self, bits: int = 3, r_min: float = -1.0, r_max: float = 2.0):
        self.controls = {
            "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits"),
            "r_min": widgets.FloatSlider(value=r_min, min=-2.0, max=-0.1, step=0.05, description="r_min"),
            "r_max": widgets.FloatSlider(value=r_max, min=0.1, max=3.0, step=0.05, description="r_max"),
        }
        self.fig, (self.ax_f, self.ax_g, self.ax_s) = new_figure(3, 1, width=9.5, height=3.0)
        for ax in (self.ax_f, self.ax_g, self.ax_s):
            ax.set_xlim(-3.5, 4.5)
            ax.set_xlabel("r")
        self.ax_f.set(ylim=(-2.2, 3.2), ylabel="r_hat", title="forward: fake-quant node")
        self.ax_g.set(ylim=(-0.1, 1.15), ylabel="dr_hat / dr", title="backward: clipped STE")
        self.ax_s.set(ylim=(-130, 130), ylabel="dr_hat / ds (per value)", title="LSQ: step-size gradient")
        self.ax_f.plot([-3.5, 4.5], [-3.5, 4.5], color="0.7", lw=1, label="r (no quantization)")
        (self.l_f,) = self.ax_f.plot([], [], color="C0", lw=1.5, label="r_hat = s(q - z)")
        (self.l_g,) = self.ax_g.plot([], [], color="C1", lw=1.5, label="1 inside [q_min, q_max], else 0")
        (self.l_s,) = self.ax_s.plot([], [], color="C2", lw=1.2,
                                     label="round(v) - v inside, q_min - z / q_max - z outside")
        self.span_g = self.ax_g.axvspan(0, 1, color="C1", alpha=0.1, lw=0)
        for ax in (self.ax_f, self.ax_g, self.ax_s):
            ax.legend(**LEGEND)
        self.ax_s.set_yscale("symlog", linthresh=1.0)
        self.animated = [self.l_f, self.l_g, self.l_s, self.span_g]
        self._wire()

    def update(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r, r_hat, g_r, g_s, p = node_curves(c["bits"], c["r_min"], c["r_max"])
        self.l_f.set_data(r, r_hat)
        self.l_g.set_data(r, g_r)
        self.l_s.set_data(r, g_s)
        lo, hi = float(p.s * (p.q_min - p.z)), float(p.s * (p.q_max - p.z))
        self.span_g.set_x(lo)
        self.span_g.set_width(hi - lo)
        self.readout_table({"s": f"{float(p.s):.4f}", "z": int(p.z), "[q_min, q_max]": f"[{p.q_min}, {p.q_max}]",
                            "LSQ g (N=144)": f"{lsq_grad_scale(144, 2 ** (c['bits'] - 1) - 1):.4f}"})


# ------------------------------------------------------------------------------- a training run


def load_trace(path=None) -> dict:
    """The shipped trace of the W2A2 LSQ run (``data/qat_trace.npz``) as a dict of NumPy arrays."""
    from ..data import data_dir

    with np.load(path or data_dir() / "qat_trace.npz") as f:
        return {k: f[k] for k in f.files}


def snap_fraction(v: np.ndarray, tol: float = 0.1) -> float:
    """Fraction of values within ``tol`` of an integer (of a grid level, for v = w / s)."""
    return float(np.mean(np.abs(v - np.round(v)) <= tol))


class TrainingExplorer(Explorer):
    """Loss / accuracy curves and the weight histogram (w / s) of one layer across a QAT run.

    ``trace`` from :func:`load_trace`. The step slider walks through the recorded snapshots. ``live``
    (optional) = (model_factory, train_data, eval_data): the "run" button fine-tunes a fresh model for
    ``live_steps`` steps in a background thread and draws its curves as they come.
    """

    def __init__(self, trace: dict, live=None, live_steps: int = 200, bins: int = 120):
        self.trace, self.live, self.live_steps = trace, live, live_steps
        steps = trace["trace_steps"]
        w, s = trace["conv2_weights"], trace["conv2_s"]
        c_out = s.shape[1]
        self.v = w.reshape(len(steps), c_out, -1) / s[:, :, None]  # w / s per channel: the grid is the integers
        q_hi = 2 ** (int(trace["weight_bits"]) - 1) - 1
        self.edges = np.linspace(-q_hi - 1.5, q_hi + 1.5, bins + 1)
        self.hists = np.stack([np.histogram(v.ravel(), self.edges)[0] for v in self.v]).astype(float)
        self.hists /= self.hists.max()
        self.snap = np.array([snap_fraction(v) for v in self.v])
        self.levels = np.arange(-q_hi, q_hi + 1)
        q = np.clip(np.round(self.v), -q_hi, q_hi)  # the level each weight rounds to (what the node outputs)
        self.level_share = np.stack([[np.mean(qi == k) for k in self.levels] for qi in q])
        self.nonzero = 1.0 - self.level_share[:, q_hi]
        self.controls = {"step": widgets.SelectionSlider(options=[int(t) for t in steps], value=int(steps[0]),
                                                         description="step", continuous_update=True)}
        self.fig, (self.ax_c, self.ax_h) = new_figure(2, 1, width=9.5, height=3.2)
        ax = self.ax_c
        ax.plot(trace["curve_steps"], trace["curve_test_acc"], "o-", ms=3, color="C0",
                label="test accuracy (shipped run)")
        ax.plot(steps, self.nonzero, "s-", ms=3, color="C2", label="conv2 weights on a non-zero level")
        (self.l_live_acc,) = ax.plot([], [], "o-", ms=3, color="C3", label="test accuracy (your live run)")
        (self.l_cur,) = ax.plot([], [], "o", ms=12, mfc="none", mec="k", mew=1.5, label="current step")
        ax.set(xlim=(0, max(int(steps[-1]), live_steps) * 1.02), ylim=(0, 1.02), xlabel="training step",
               ylabel="fraction", title="W2A2 QAT (LSQ) from the FP32 CNN")
        ax.legend(**LEGEND)
        self.h = self.ax_h.stairs(self.hists[0], self.edges, fill=True, alpha=0.5, label="latent weights w / s")
        self.bars = self.ax_h.bar(self.levels, self.level_share[0], width=0.12, color="C3",
                                  label="share on each level (fake-quant output)")
        for k in range(-q_hi, q_hi + 1):
            self.ax_h.axvline(k, color="k", lw=0.8, ls=":")
        self.ax_h.set(xlim=(self.edges[0], self.edges[-1]), ylim=(0, 1.05), xlabel="w / s (grid levels are integers)",
                      ylabel="relative count / share", title="conv2 weights and the grid")
        self.ax_h.plot([], [], color="k", lw=0.8, ls=":", label="grid levels q")
        self.ax_h.legend(**LEGEND)
        self.live_records: list = []
        self._stop = threading.Event()
        self.button = widgets.Button(description=f"run {live_steps} live steps", disabled=live is None)
        self.stop_button = widgets.Button(description="stop", disabled=True)
        self.button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.animated = [self.h, *self.bars, self.l_cur, self.l_live_acc]
        self._wire()

    @property
    def ui(self):
        return widgets.VBox([widgets.HBox([self.button, self.stop_button]), super().ui])

    def update(self) -> None:
        steps = list(self.trace["trace_steps"])
        i = steps.index(self.controls["step"].value)
        self.h.set_data(self.hists[i], self.edges)
        self.l_cur.set_data([steps[i]], [self.nonzero[i]])
        for b, v in zip(self.bars, self.level_share[i], strict=True):
            b.set_height(v)
        if self.live_records:
            self.l_live_acc.set_data([r["step"] for r in self.live_records],
                                     [r["test_acc"] for r in self.live_records])
        self.readout_table({"step": steps[i], "on a non-zero level": f"{self.nonzero[i]:.3f}",
                            "latent within 0.1 s of a level": f"{self.snap[i]:.3f}",
                            "live run": f"{len(self.live_records)} records" if self.live_records else "not started"})

    # -- the live run ----------------------------------------------------------------------------------
    def _on_record(self, rec, model) -> bool:
        self.live_records.append(rec)
        self._refresh()
        return not self._stop.is_set()

    def run_live(self) -> None:
        """Fine-tune a fresh simulated network for ``live_steps`` steps, redrawing after every record."""
        from ..qat import qat_train

        make, train, test = self.live
        self.live_records.clear()
        self._stop.clear()
        self.button.disabled, self.stop_button.disabled = True, False
        try:
            qat_train(make(), train, steps=self.live_steps, lr=1e-3, eval_data=test,
                      eval_every=max(self.live_steps // 20, 1), progress=False, callback=self._on_record)
        finally:
            self.button.disabled, self.stop_button.disabled = False, True

    def start(self) -> threading.Thread:
        """Run :meth:`run_live` in a background thread (the kernel stays free to draw); returns it."""
        t = threading.Thread(target=self.run_live, daemon=True)
        t.start()
        return t


# ------------------------------------------------------------------------------- the exported integers


class ExportExplorer(Explorer):
    """One layer of an exported :class:`quantlab.engine.IntModel`: q_w of one output channel and the histogram.

    Controls: layer, channel. Readout: dtype, shape, s_w of the channel, z_w, the integer range used.
    """

    def __init__(self, qmodel, layer: str = "conv2"):
        self.layers = {m.name: m for m in qmodel.layers if hasattr(m, "q_w")}
        self.rows = {n: self._rows(n, m) for n, m in self.layers.items()}
        q_hi = 2 ** (qmodel.weight_bits - 1) - 1
        self.levels = np.arange(-q_hi, q_hi + 1)
        self.hists = {n: np.array([(m.q_w == k).sum().item() for k in self.levels], float) / m.q_w.numel()
                      for n, m in self.layers.items()}
        self.controls = {
            "layer": widgets.Dropdown(options=list(self.layers), value=layer, description="layer"),
            "channel": widgets.IntSlider(value=0, min=0, max=63, description="channel"),
        }
        self.fig, (self.ax_i, self.ax_h) = new_figure(2, 1, width=9.5, height=3.0)
        # one fixed extent for every layer: switching layers moves no axis limit, so every update is a blit
        self.img = self.ax_i.imshow(np.zeros((16, 9)), cmap="RdBu_r", vmin=-q_hi, vmax=q_hi, aspect="auto",
                                    interpolation="nearest", extent=(0, 1, 1, 0))
        self.fig.colorbar(self.img, ax=self.ax_i, label="q_w (integer)")
        self.ax_i.set(xlabel="position (kernel tap / pixel / unit)", ylabel="input channel", xticks=[], yticks=[],
                      title="q_w of one output channel")
        self.shape_text = self.ax_i.text(0.02, 0.97, "", transform=self.ax_i.transAxes, va="top", fontsize=8,
                                         bbox=dict(facecolor="white", alpha=0.8, lw=0))
        self.bars = self.ax_h.bar(self.levels, np.zeros(len(self.levels)), color="C0", label="share of the layer's q_w")
        self.ax_h.set(xlabel="integer level q_w", ylabel="share of weights", ylim=(0, 1.02),
                      xticks=self.levels if len(self.levels) <= 15 else self.levels[::2], title="all q_w of the layer")
        self.ax_h.legend(**LEGEND)
        self.animated = [self.img, self.shape_text, *self.bars]
        self._wire()

    @staticmethod
    def _rows(name, m) -> np.ndarray:
        """q_w as (C_out, inputs, positions): conv (C_out, C_in, kh*kw); fc1 after 32 maps of 7x7: (C_out, 32, 49)."""
        q = m.q_w.numpy()
        if q.ndim == 4:
            return q.reshape(q.shape[0], q.shape[1], -1)
        if name == "fc1" and q.shape[1] == 32 * 49:
            return q.reshape(q.shape[0], 32, 49)
        return q.reshape(q.shape[0], 1, -1)

    def update(self) -> None:
        name = self.controls["layer"].value
        m, rows = self.layers[name], self.rows[name]
        ch = self.controls["channel"]
        if ch.max != rows.shape[0] - 1:
            ch.max = rows.shape[0] - 1
        c = min(ch.value, rows.shape[0] - 1)
        img = rows[c]
        self.img.set_data(img)
        self.shape_text.set_text(f"{name}[{c}]: {img.shape[0]} input channel(s) x {img.shape[1]} positions")
        for b, v in zip(self.bars, self.hists[name], strict=True):
            b.set_height(v)
        self.readout_table({"layer": f"{name} {str(m.q_w.dtype).replace('torch.', '')} {tuple(m.q_w.shape)}",
                            f"s_w[{c}]": f"{float(m.s_w[c]):.5f}", "z_w": int(m.z_w[c]),
                            "q_w range": f"[{int(m.q_w.min())}, {int(m.q_w.max())}]"})


def _shipped_export():
    """The exported shipped W4A4 checkpoint (for the latency benchmark)."""
    from ..data import data_dir
    from ..qat import export, load_qat

    return export(load_qat(data_dir() / "qat_w4a4.pt"))


BENCHMARK_CASES = [
    ("07 qat node", "FakeQuantExplorer()",
     {"bits": [4, 2, 8, 3], "r_min": [-0.5, -1.5, -1.0], "r_max": [1.0, 2.5, 2.0]}),
    ("07 qat training", "TrainingExplorer(load_trace())", {"step": [90, 300, 600, 180, 0, 30]}),
    ("07 qat export", "ExportExplorer(_shipped_export())",
     {"layer": ["conv1", "fc1", "conv2", "fc2"], "channel": [3, 7, 0, 5]}),
]
