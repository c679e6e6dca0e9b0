"""Lab 09 explorers: built on shipped data, callbacks move artists and read the precomputed numbers."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from quantlab.metrics import sqnr_db  # noqa: E402
from quantlab.smoothquant import w8a8_linear_output  # noqa: E402
from quantlab.transformer_quant import fake_quantize_weight, load_captured, load_table  # noqa: E402
from quantlab.viz import transformer as vt  # noqa: E402


@pytest.fixture(scope="module")
def cap():
    return load_captured()


def test_outlier_explorer_shows_the_chosen_layer(cap):
    ex = vt.OutlierExplorer(cap)
    name = "model.layers.11.mlp.down_proj"
    ex.controls["layer"].value = name
    x, y = ex.line.get_data()
    assert np.array_equal(y, cap[f"smol_absmax/{name}"].numpy()) and len(x) == 1536
    assert "max/median" in ex.readout.value and ex.n_updates >= 2


def test_smoothquant_explorer_matches_library(cap):
    ex = vt.SmoothQuantExplorer(cap)
    name = ex.controls["layer"].value
    ex.controls["alpha"].value = 0.5
    x, w = cap[f"smol_x/{name}"], cap[f"smol_w/{name}"]
    assert ex.mark.get_data()[1][0] == pytest.approx(sqnr_db(x @ w.T, w8a8_linear_output(x, w, 0.5)))
    xs = ex.lx.get_data()[1]
    s = (x.abs().amax(0) ** 0.5 / cap[f"smol_wabsmax/{name}"] ** 0.5).numpy()
    assert np.allclose(xs, x.abs().amax(0).numpy() / s, rtol=1e-5)


def test_granularity_explorer_reads_table(cap):
    ex = vt.WeightGranularityExplorer(cap)
    ex.controls["bits"].value = 4
    ex.controls["scheme"].value = "group-32"
    assert ex.bars[0].get_height() == load_table()["minilm"]["int4 group-32"]["cosine"]
    w = cap["minilm_w"]
    assert ex.total[4, "group-32"] == pytest.approx(sqnr_db(w, fake_quantize_weight(w, 4, vt.SCHEMES["group-32"])))
    assert ex.total[4, "group-32"] > ex.total[4, "per-channel"] > ex.total[4, "per-tensor"]
    w_hat = fake_quantize_weight(w, 4, vt.SCHEMES["group-32"])
    assert ex.pts.get_ydata()[7] == pytest.approx(sqnr_db(w[7], w_hat[7]), abs=1e-3)
