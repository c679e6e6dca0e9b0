"""Lab 08 explorers: the bits of packed ±1 words, the XNOR-popcount identity, and α on a real filter.

* :class:`PackingExplorer` — two random ±1 vectors a, w of length K (slider): their bits packed 64 to a word
  (bit = 1 for -1), a XOR w, the padding of the last word, the running dot product and a . w = K - 2 popcount,
  the XNOR truth table, and the bytes of float32 vs packed storage (compression ratio).
* :class:`AlphaExplorer` — one output channel of a trained conv weight, its binarization α sign(W_c), and the
  reconstruction error ||W_c - α sign W_c||² as α moves (minimum at α = mean |W_c|).

Everything is precomputed in ``__init__`` (library calls); a callback slices and moves artists (blit).
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch

from ..binary import binarize, binary_weight_scale
from ..packing import WORD_BITS, n_words, pack_signs
from ._base import Explorer, new_figure

__all__ = ["PackingExplorer", "AlphaExplorer", "BENCHMARK_CASES"]

K_MAX = 3 * WORD_BITS


class PackingExplorer(Explorer):
    """Bits of two packed ±1 vectors, their XOR, and a . w = K - 2 popcount(a XOR w), for K = 1 ... 192.

    >>> ex = PackingExplorer(); ex.controls["K"].value = 70; ex.dot == ex.K_minus_2_popcount
    True
    """

    def __init__(self, K: int = 70, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a_all = np.where(rng.random(K_MAX) < 0.5, -1.0, 1.0)
        self.w_all = np.where(rng.random(K_MAX) < 0.5, -1.0, 1.0)
        self.controls = {"K": widgets.IntSlider(value=K, min=1, max=K_MAX, description="K")}
        self.fig, axes = new_figure(2, 2, width=9.5, height=4.6, gridspec_kw={"width_ratios": [4, 1.3]})
        (self.ax_bits, self.ax_tab), (self.ax_dot, self.ax_mem) = axes
        cmap = __import__("matplotlib").colors.ListedColormap(["#f4f4f4", "#1f4e8c", "#bbbbbb"])
        self.img = self.ax_bits.imshow(np.zeros((3, K_MAX)), cmap=cmap, vmin=0, vmax=2, aspect="auto",
                                       interpolation="nearest", extent=(-0.5, K_MAX - 0.5, 2.5, -0.5))
        self.bounds = [self.ax_bits.axvline(j * WORD_BITS - 0.5, color="C3", lw=1.5) for j in (1, 2)]
        self.ax_bits.set_yticks([0, 1, 2], ["bits of a", "bits of w", "a XOR w"])
        self.ax_bits.set_xlabel("bit position k (word k // 64, bit k % 64; red lines: word boundaries)")
        self.ax_bits.set_title("packed words: dark = 1 (value -1), light = 0 (+1), grey = padding", fontsize=9)
        self._truth_table()
        self.cum, = self.ax_dot.step(np.arange(K_MAX), np.zeros(K_MAX), where="post", lw=1.2, label="Σ a_k w_k")
        self.end, = self.ax_dot.plot([0], [0], "o", color="C3", label="K - 2 popcount")
        self.ax_dot.set_xlim(-0.5, K_MAX - 0.5)
        self.ax_dot.set_ylim(-40, 40)
        self.ax_dot.axhline(0, color="0.6", lw=0.6)
        self.ax_dot.set_xlabel("k")
        self.ax_dot.set_ylabel("running dot product")
        self.ax_dot.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        self.bars = self.ax_mem.bar([0, 1], [1, 1], color=["0.5", "C0"])
        self.ax_mem.set_xticks([0, 1], ["float32", "packed"])
        self.ax_mem.set_yscale("log")
        self.ax_mem.set_ylim(1, 4 * K_MAX * 2)
        self.ax_mem.set_ylabel("bytes per row")
        self.ax_mem.set_title("storage", fontsize=9)
        self.animated = [self.img, *self.bounds, self.cum, self.end, *self.bars]   # lines drawn over the image
        self._wire()

    def _truth_table(self):
        ax = self.ax_tab
        ax.axis("off")
        rows = [["a", "w", "bits", "XOR", "a·w"], ["+1", "+1", "0 0", "0", "+1"], ["+1", "-1", "0 1", "1", "-1"],
                ["-1", "+1", "1 0", "1", "-1"], ["-1", "-1", "1 1", "0", "+1"]]
        table = ax.table(cellText=rows[1:], colLabels=rows[0], loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        ax.set_title("XNOR truth table\n(a·w = +1 iff XOR = 0)", fontsize=9)

    def update(self):
        K = self.controls["K"].value
        a, w = self.a_all[:K], self.w_all[:K]
        pa, pw = pack_signs(a), pack_signs(w)
        bits = np.full((3, K_MAX), 2.0)                              # 2 = padding / unused
        n_bits = n_words(K) * WORD_BITS
        for row, words in enumerate((pa, pw, pa ^ pw)):
            b = np.unpackbits(words.view(np.uint8), bitorder="little").astype(float)
            if row == 2:
                b[K:] = 0.0                                          # padding: 0 XOR 0
            bits[row, :n_bits] = b
            bits[row, K:n_bits] = 2.0 if row < 2 else 0.0
        self.img.set_data(bits)
        products = a * w
        cum = np.full(K_MAX, np.nan)
        cum[:K] = np.cumsum(products)
        self.cum.set_ydata(cum)
        popcount = int(sum(bin(int(v)).count("1") for v in (pa ^ pw)))
        self.dot, self.K_minus_2_popcount = int(products.sum()), K - 2 * popcount
        self.end.set_data([K - 1], [self.K_minus_2_popcount])
        float_bytes, packed_bytes = 4 * K, int(pa.nbytes)
        self.bars[0].set_height(float_bytes)
        self.bars[1].set_height(packed_bytes)
        words = " ".join(f"0x{int(v):016x}" for v in pa)
        self.readout_table({
            "a packed": words, "popcount(a XOR w)": popcount,
            "a·w": f"{self.dot} = K - 2·popcount = {K} - 2·{popcount}",
            "storage": f"{float_bytes} B → {packed_bytes} B ({float_bytes / packed_bytes:.1f}× smaller)",
        })


class AlphaExplorer(Explorer):
    """One output channel W_c of a conv weight vs α sign(W_c); the error ||W_c - α sign W_c||² as α moves.

    >>> from quantlab.models import load_trained
    >>> ex = AlphaExplorer(load_trained().conv2.weight); ex.controls["alpha ×"].value = 1.5
    >>> ex.controls["alpha ×"].value
    1.5
    """

    def __init__(self, w: torch.Tensor, channel: int = 0):
        w = w.detach().cpu().float()
        self.W = w.reshape(w.shape[0], -1).numpy()                    # (C, n)
        self.signs = binarize(self.W)
        self.alpha = binary_weight_scale(self.W)[:, 0]                 # mean |W_c|, shape (C,)
        C, n = self.W.shape
        self.grid = np.linspace(0, 2.5, 251)                          # α / mean|W_c|
        sq, ab = (self.W ** 2).sum(1), np.abs(self.W).sum(1)
        a = self.grid[None, :] * self.alpha[:, None]
        self.err = (sq[:, None] - 2 * a * ab[:, None] + a ** 2 * n) / sq[:, None]   # relative error, (C, G)
        self.controls = {
            "channel": widgets.IntSlider(value=channel, min=0, max=C - 1, description="channel c"),
            "alpha ×": widgets.FloatSlider(value=1.0, min=0.0, max=2.5, step=0.05, description="α × mean|W|"),
        }
        self.fig, (self.ax_w, self.ax_e) = new_figure(2, 1, width=9.5, height=3.2,
                                                      gridspec_kw={"width_ratios": [2.2, 1]})
        k = np.arange(n)
        self.pts, = self.ax_w.plot(k, self.W[0], ".", ms=4, color="0.3", label="W_c (trained)")
        self.rec, = self.ax_w.step(k, self.W[0], where="mid", color="C3", lw=1, label="α sign(W_c)")
        lim = float(np.abs(self.W).max()) * 1.05
        self.ax_w.set_xlim(-1, n)
        self.ax_w.set_ylim(-lim, lim)
        self.ax_w.set_xlabel("weight index within the filter (C_in · k_h · k_w)")
        self.ax_w.set_ylabel("weight value")
        self.ax_w.legend(loc="upper left", bbox_to_anchor=(0.0, -0.25), ncol=2, fontsize=8)
        self.curve, = self.ax_e.plot(self.grid, self.err[0], color="C0")
        self.mark, = self.ax_e.plot([1.0], [0.0], "o", color="C3")
        self.ax_e.axvline(1.0, color="0.5", ls="--", lw=0.8)
        self.ax_e.set_xlim(0, 2.5)
        self.ax_e.set_ylim(0, float(self.err.max()) * 1.02)
        self.ax_e.set_xlabel("α / mean|W_c|")
        self.ax_e.set_ylabel("||W_c - α sign W_c||² / ||W_c||²")
        self.animated = [self.pts, self.rec, self.curve, self.mark]
        self._wire()

    def update(self):
        c, m = self.controls["channel"].value, self.controls["alpha ×"].value
        alpha = m * self.alpha[c]
        self.pts.set_ydata(self.W[c])
        self.rec.set_ydata(alpha * self.signs[c])
        self.curve.set_ydata(self.err[c])
        i = int(round(m / (self.grid[1] - self.grid[0])))
        self.mark.set_data([m], [self.err[c, i]])
        self.readout_table({"channel": c, "mean|W_c|": f"{self.alpha[c]:.4f}", "α": f"{alpha:.4f}",
                            "relative error": f"{self.err[c, i]:.3f} (best {self.err[c].min():.3f} at α = mean|W_c|)"})


BENCHMARK_CASES = [
    ("08 packing", "PackingExplorer()", {"K": [1, 64, 65, 100, 128, 150, 192, 30]}),
    ("08 alpha", "AlphaExplorer(__import__('quantlab.models').models.load_trained().conv2.weight)",
     {"channel": [1, 5, 9, 0], "alpha ×": [0.5, 1.5, 2.0, 1.0]}),
]
