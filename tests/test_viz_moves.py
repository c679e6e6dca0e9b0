"""Library logic that used to sit in viz/ (issue 7): per-channel SQNR, the outlier-channel surgery, prefix
min/max ranges, and the lab 01 explorer's (s, z) — each checked against an independent reference."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import quantlab as ql  # noqa: E402
from quantlab.granularity import QParams, qparams_from_range  # noqa: E402
from quantlab.metrics import per_channel_sqnr  # noqa: E402
from quantlab.models import SmallCNN, load_trained, with_outlier_channel  # noqa: E402
from quantlab.ptq import calibrate_activations, prefix_minmax_ranges  # noqa: E402


def test_per_channel_sqnr_equals_a_literal_loop_on_any_axis():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 5, 3, generator=g)
    w_hat = w + 0.01 * torch.randn(4, 5, 3, generator=g)
    for axis in (0, 1, -1):
        wn, hn = np.moveaxis(w.numpy(), axis, 0), np.moveaxis(w_hat.numpy(), axis, 0)
        expected = [10 * math.log10(float((wn[c].astype(np.float64) ** 2).sum())
                                    / float(((wn[c].astype(np.float64) - hn[c]) ** 2).sum()))
                    for c in range(wn.shape[0])]
        np.testing.assert_allclose(per_channel_sqnr(w, w_hat, axis=axis).numpy(), expected, rtol=1e-5)


def test_per_channel_sqnr_edge_cases_and_bad_input():
    sq = per_channel_sqnr(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 2.0], [0.5, 0.0]]))
    assert sq[0] == float("inf") and sq[1] == float("-inf")
    with pytest.raises(ValueError, match="same shape"):
        per_channel_sqnr(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="axis"):
        per_channel_sqnr(torch.ones(2, 3), torch.ones(2, 3), axis=2)
    with pytest.raises(ValueError, match="scalar"):
        per_channel_sqnr(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError):
        per_channel_sqnr(torch.tensor([[float("nan")]]), torch.ones(1, 1))


def test_outlier_channel_keeps_the_function_and_the_original():
    model = load_trained()
    before = model.conv2.weight.detach().clone()
    from quantlab.data import load_mnist

    x, _ = load_mnist("test", n=32)
    m = with_outlier_channel(model, "conv2", 3, 20.0)
    torch.testing.assert_close(model.conv2.weight, before)  # original untouched
    torch.testing.assert_close(m.conv2.weight[3], 20 * before[3])
    torch.testing.assert_close(m.conv2.weight[4], before[4])
    torch.testing.assert_close(m.bn2.running_var[3], 400 * model.bn2.running_var[3])
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, match", [
    (("conv9", 0, 2.0), "conv9"), (("fc1", 0, 2.0), "fc1"), (("conv2", 32, 2.0), "channel"),
    (("conv2", 0, 0.0), "factor"), (("conv2", 0, float("nan")), "factor"),
])
def test_outlier_channel_bad_input_names_the_layer(args, match):
    with pytest.raises(ValueError, match=match):
        with_outlier_channel(SmallCNN(), *args)
    with pytest.raises(TypeError):
        with_outlier_channel(None, "conv2", 0, 2.0)


def test_prefix_minmax_ranges_equal_calibration_on_each_prefix():
    from quantlab.data import calibration_batch

    model, x = load_trained(), calibration_batch(30)
    got = prefix_minmax_ranges(model, x, (1, 7, 30))
    for n in (1, 7, 30):
        ref = calibrate_activations(model, x[:n], "minmax")
        assert got[n].n_images == n and set(got[n].ranges) == set(ref.ranges)
        for name, (lo, hi) in ref.ranges.items():
            assert got[n].ranges[name] == pytest.approx((lo, hi), rel=1e-6, abs=1e-6), name
    with pytest.raises(ValueError, match="1..30"):
        prefix_minmax_ranges(model, x, (0, 5))
    with pytest.raises(ValueError, match="1..30"):
        prefix_minmax_ranges(model, x, (31,))


def test_linear_explorer_params_come_from_the_library_path():
    from quantlab.viz.linear import LinearExplorer, sample_data

    ex = LinearExplorer(n=4000, bits=3)
    r = sample_data("gaussian", 4000)
    for mode, symmetric in (("asymmetric", False), ("symmetric", True)):
        ex.controls["mode"].value = mode
        ex.controls["clip"].value = 0.5
        p = ex.params()
        ref = qparams_from_range(0.5 * float(r.min()), 0.5 * float(r.max()), 3, symmetric=symmetric)
        assert isinstance(p, QParams)
        assert (float(p.s), int(p.z), p.q_min, p.q_max) == (float(ref.s), int(ref.z), ref.q_min, ref.q_max)
        q_min, q_max = ql.qrange(3, signed=symmetric)  # and the closed form of the text
        s, z = ql.scale_zero_point(0.5 * float(r.min()), 0.5 * float(r.max()), q_min, q_max, symmetric=symmetric)
        assert float(p.s) == pytest.approx(float(s)) and int(p.z) == int(z)
