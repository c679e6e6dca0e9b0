"""Explorers update artists in place: values change, no figure is created, every widget change redraws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import quantlab as ql  # noqa: E402
from quantlab.metrics import per_channel_sqnr  # noqa: E402
from quantlab.models import with_outlier_channel  # noqa: E402
from quantlab.viz.granularity import GranularityExplorer  # noqa: E402
from quantlab.viz.linear import DATASETS, LinearExplorer, sample_data  # noqa: E402


def _n_figures():
    return len(plt.get_fignums())


def test_linear_explorer_moves_artists_without_new_figures():
    ex = LinearExplorer(n=5000)
    before = _n_figures()
    stair0 = ex.stair.get_ydata().copy()
    ex.controls["bits"].value = 2
    assert ex.n_updates == 2  # the initial draw + this change
    stair2 = ex.stair.get_ydata()
    assert len(np.unique(stair2)) <= 4 < len(np.unique(stair0))  # 2 bits -> at most 4 levels
    assert _n_figures() == before
    assert "<b>q_max</b> 3" in ex.readout.value  # asymmetric 2-bit grid is [0, 3]


def test_linear_explorer_readout_matches_library():
    ex = LinearExplorer(n=5000, bits=4, symmetric=True)
    r = sample_data("gaussian", 5000)
    s, z = ql.scale_zero_point(r.min(), r.max(), *ql.qrange(4), symmetric=True)
    assert f"{float(s):.4g}" in ex.readout.value
    r_hat = ql.fake_quantize(r, s, z, *ql.qrange(4))
    assert f"{ql.sqnr_db(r, r_hat):.1f} dB" in ex.readout.value


def test_linear_explorer_clip_saturates_and_every_dataset_runs():
    ex = LinearExplorer(n=5000, bits=4)
    ex.controls["data"].value = "outlier"
    s_full = float(ex.params()[0])
    ex.controls["clip"].value = 0.2
    assert float(ex.params()[0]) == pytest.approx(0.2 * s_full, rel=1e-5)
    for name in DATASETS:
        ex.controls["data"].value = name
        for b in (1, 16):
            ex.controls["bits"].value = b
            assert np.isfinite(ex.err.get_ydata()).all()


def test_granularity_explorer_outlier_hurts_per_tensor_only():
    w = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    ex = GranularityExplorer(w, bits=4)
    pt0 = ex.lines["per-tensor"].get_ydata().copy()
    pc0 = ex.lines["per-channel"].get_ydata().copy()
    ex.controls["factor"].value = 30.0
    pt1, pc1 = ex.lines["per-tensor"].get_ydata(), ex.lines["per-channel"].get_ydata()
    others = np.arange(8) != ex.controls["channel"].value
    assert (pt1[others] < pt0[others] - 10).all()  # other channels lose > 10 dB under per-tensor
    np.testing.assert_allclose(pc1, pc0, atol=1e-3)  # per-channel SQNR is scale invariant


def test_per_channel_sqnr_against_closed_form():
    w = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    w_hat = torch.tensor([[0.9, -1.1], [2.0, 0.0]])
    sq = per_channel_sqnr(w, w_hat)
    assert sq[0] == pytest.approx(10 * np.log10(2 / 0.02), rel=1e-5)
    assert sq[1] == float("inf")


def test_outlier_channel_keeps_the_fp32_function():
    from quantlab.data import load_mnist
    from quantlab.models import load_trained

    model = load_trained()
    x, _ = load_mnist("test", n=64)
    m = with_outlier_channel(model, "conv2", 3, 20.0)
    assert torch.allclose(model.conv2.weight[3] * 20, m.conv2.weight[3])
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), rtol=1e-4, atol=1e-4)


def test_linear_explorer_blits_unless_the_axes_change():
    ex = LinearExplorer(n=5000)
    full = ex.n_full_draws
    for b in (2, 3, 4):
        ex.controls["bits"].value = b
    ex.controls["clip"].value = 0.5
    assert ex.n_full_draws == full  # only the moving artists were redrawn
    ex.controls["data"].value = "outlier"  # new x-range: one full redraw
    assert ex.n_full_draws == full + 1


# -- idle after render: no explorer may keep asking for draws (issue 15: lab 04 redrew forever) ----------

def _small_ptq():
    from quantlab.data import calibration_batch, load_mnist
    from quantlab.models import load_trained
    from quantlab.viz.ptq import PTQExplorer

    x, y = load_mnist("test", n=40)
    return PTQExplorer(load_trained(), x, y, calibration_batch(20), weight_bits=(2, 8), act_bits=(8,),
                       calib_sizes=(1, 20), n_eval=40, progress=False)


EXPLORERS = {
    "linear": (lambda: LinearExplorer(n=3000), "bits", 3),
    "granularity": (lambda: GranularityExplorer(torch.randn(8, 16, 3, 3), bits=4), "bits", 3),
    "ptq": (_small_ptq, "calib", 1),
}


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_explorer_goes_idle_after_a_draw_and_blits_data_changes(name, monkeypatch):
    make, control, value = EXPLORERS[name]
    ex = make()
    canvas = ex.fig.canvas
    requests = []
    monkeypatch.setattr(canvas, "draw_idle", lambda *a, **k: requests.append(1))
    canvas.draw()  # the browser's first paint: draw_event -> the explorer caches its background
    assert not ex.fig.stale, "a full draw left the figure stale: under ipympl it would ask for another draw"
    assert requests == []
    n_full = ex.n_full_draws
    ex.controls[control].value = value
    assert requests == [] and ex.n_full_draws == n_full, "a data-only change must blit, not redraw"
    assert not ex.fig.stale


def test_legends_may_not_be_blitted():
    from quantlab.viz._base import Explorer, new_figure

    class Bad(Explorer):
        def __init__(self):
            self.fig, ax = new_figure()
            (line,) = ax.plot([0, 1], label="x")
            self.controls = {}
            self.animated = [line, ax.legend()]
            self._wire()

        def update(self):
            pass

    with pytest.raises(ValueError, match="Legend may not be in Explorer.animated"):
        Bad()
