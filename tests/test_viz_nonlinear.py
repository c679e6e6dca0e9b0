"""Lab 03 explorer: levels and readouts come from the library; the k-means step is one Lloyd iteration; blits."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import quantlab as ql  # noqa: E402
from quantlab.nonlinear import fake_pow2, kmeans_init, lloyd_step  # noqa: E402
from quantlab.viz.nonlinear import EXPLORER_METHODS, NonlinearExplorer  # noqa: E402


def _data():
    g = torch.Generator().manual_seed(0)
    return {"gaussian": torch.randn(4000, generator=g), "wide": torch.randn(4000, generator=g) * 3}


def test_levels_and_readout_match_the_library():
    ex = NonlinearExplorer(_data(), method="log (log rounding)", bits=3)
    r = ex.data["gaussian"]
    r_hat = fake_pow2(r, 3, rounding="log")
    drawn = sorted(seg[0][0] for seg in ex.levels.get_segments())
    np.testing.assert_allclose(drawn, np.unique(r_hat.numpy()), rtol=1e-6)
    assert f"{ql.sqnr_db(r, r_hat):.2f} dB" in ex.readout.value
    assert len(ex.regions.get_paths()) == len(drawn)  # one region per level


def test_kmeans_step_is_one_lloyd_iteration_and_sqnr_improves():
    ex = NonlinearExplorer(_data(), method="k-means", bits=2)
    r = ex.data["gaussian"]
    c = kmeans_init(r[None], 4, "linear")
    sq0 = ql.sqnr_db(r, ex.quantized(r)[0])
    for _ in range(3):
        ex.kmeans_step()
        c, _ = lloyd_step(r[None], c)
    torch.testing.assert_close(ex._km_state()[0], c)
    assert ql.sqnr_db(r, ex.quantized(r)[0]) > sq0 and "iteration 3" in ex.note.get_text()


def test_every_method_and_bits_updates_in_place_and_blits():
    ex = NonlinearExplorer(_data())
    n_figs, full = len(plt.get_fignums()), ex.n_full_draws
    for m in EXPLORER_METHODS:
        ex.controls["method"].value = m
        for b in (2, 5):
            ex.controls["bits"].value = b
            assert np.isfinite(ex.stair.get_ydata()).all()
    assert len(plt.get_fignums()) == n_figs and ex.n_full_draws == full  # only animated artists redrawn
    ex.controls["data"].value = "wide"  # new axis limits: one full redraw
    assert ex.n_full_draws == full + 1
