# ruff: noqa: E501
"""quantlab.correction against hand computations (the text's formulas written out as slow loops here)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from torch import nn

import quantlab.correction as qc
from quantlab.correction.weights import _op, _sum_x
from quantlab.granularity import PerChannel, PerTensor, fake_quantize_tensor
from quantlab.models import SmallCNN, load_trained


def _hand_factors(wc, hc):
    """u_c, zeta_c of one channel, with Python floats: the text's formulas."""
    n = len(wc)
    e_w, e_h = sum(wc) / n, sum(hc) / n
    n_w = math.sqrt(sum((v - e_w) ** 2 for v in wc))
    n_h = math.sqrt(sum((v - e_h) ** 2 for v in hc))
    return e_w - e_h, n_w / n_h, e_w, e_h


W = torch.tensor([[0.30, -0.12, 0.05, 0.41], [-0.2, -0.25, 0.11, 0.02], [0.7, 0.7, 0.7, 0.7]])
W_HAT = torch.tensor([[0.25, -0.125, 0.0, 0.375], [-0.25, -0.25, 0.125, 0.0], [0.75, 0.75, 0.75, 0.75]])


def test_bias_term_is_channel_mean_over_batch_and_space():
    g = torch.Generator().manual_seed(0)
    a_fp, a_q = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    got = qc.bias_correction_term(a_fp, a_q)
    for c in range(2):
        vals_i = [float(a_fp[n, c, i, j]) for n in range(3) for i in range(2) for j in range(2)]
        vals_q = [float(a_q[n, c, i, j]) for n in range(3) for i in range(2) for j in range(2)]
        assert float(got[c]) == pytest.approx(sum(vals_i) / 12 - sum(vals_q) / 12, abs=1e-6)
    lin = qc.bias_correction_term(torch.tensor([[1.0, 5.0], [3.0, 1.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    assert lin.tolist() == [2.0, 2.0]  # (1+3)/2 - 0, (5+1)/2 - 1


def test_weight_correction_text_rule_by_hand():
    got = qc.weight_correction(W, W_HAT, "text")
    for c in range(2):
        u, zeta, _, _ = _hand_factors(W[c].tolist(), W_HAT[c].tolist())
        expected = [zeta * (h + u) for h in W_HAT[c].tolist()]
        assert got[c].tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(got[2], W_HAT[2])  # zero-variance channel: left as it is, no NaN


def test_weight_correction_mean_norm_rule_by_hand_and_its_moments():
    got = qc.weight_correction(W, W_HAT, "mean_norm")
    text = qc.weight_correction(W, W_HAT, "text")
    for c in range(2):
        u, zeta, e_w, e_h = _hand_factors(W[c].tolist(), W_HAT[c].tolist())
        assert got[c].tolist() == pytest.approx([(h - e_h) * zeta + e_w for h in W_HAT[c].tolist()], rel=1e-6)
        # mean_norm restores mean and norm; the text rule restores the norm, its mean becomes zeta * E(w)
        n_w = float((W[c] - W[c].mean()).norm())
        assert float(got[c].mean()) == pytest.approx(e_w, abs=1e-6)
        assert float((got[c] - got[c].mean()).norm()) == pytest.approx(n_w, rel=1e-5)
        assert float((text[c] - text[c].mean()).norm()) == pytest.approx(n_w, rel=1e-5)
        assert float(text[c].mean()) == pytest.approx(zeta * e_w, abs=1e-6)
    assert torch.equal(got[2], W_HAT[2])


def test_weight_correction_other_axis_and_factors():
    w, h = W.T.contiguous(), W_HAT.T.contiguous()
    assert torch.allclose(qc.weight_correction(w, h, "text", axis=1), qc.weight_correction(W, W_HAT).T)
    u, zeta = qc.correction_factors(W, W_HAT)
    hu, hz, _, _ = _hand_factors(W[0].tolist(), W_HAT[0].tolist())
    assert u.shape == (3, 1) and float(u[0]) == pytest.approx(hu) and float(zeta[0]) == pytest.approx(hz)
    assert float(u[2]) == 0.0 and float(zeta[2]) == 1.0


def test_weight_correction_on_a_real_layer_per_tensor_and_per_channel():
    w = load_trained().conv2.weight.detach()
    for g in (PerTensor(), PerChannel(0)):
        for bits in (2, 3, 4, 8):
            h = fake_quantize_tensor(w, bits, g, symmetric=True, narrow=True)
            out = qc.weight_correction(w, h, "mean_norm")
            live = (h - h.mean((1, 2, 3), keepdim=True)).flatten(1).norm(dim=1) > 0
            assert torch.isfinite(out).all()
            assert torch.allclose(out.mean((1, 2, 3))[live], w.mean((1, 2, 3))[live], atol=1e-6)
            assert torch.equal(out[~live], h[~live])


@pytest.mark.parametrize("bad, err", [
    (lambda: qc.weight_correction(W, W_HAT[:2]), "same shape"),
    (lambda: qc.weight_correction(W, W_HAT, axis=2), "axis"),
    (lambda: qc.weight_correction(W, W_HAT, "variance"), "rule"),
    (lambda: qc.weight_correction(W * float("nan"), W_HAT), "NaN"),
    (lambda: qc.bias_correction_term(torch.zeros(2, 3), torch.zeros(2, 4)), "a_fp and a_q"),
    (lambda: qc.bias_correction_term(torch.tensor([[float("inf")]]), torch.zeros(1, 1)), "a_fp"),
    (lambda: qc.clipped_gaussian_mean(0.0, -1.0), "sigma"),
])
def test_bad_tensors_raise_naming_the_argument(bad, err):
    with pytest.raises((ValueError, TypeError), match=err):
        bad()


def test_fold_zeta_into_scale_is_exact_and_u_is_a_float_zero_point():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    s = w.abs().amax(1, keepdim=True) / 7
    q = torch.clamp(torch.round(w / s), -7, 7)
    w_hat = s * q
    zeta, v = qc.scale_shift(w, w_hat, "text")
    u, zeta2 = qc.correction_factors(w, w_hat)
    s_new, z_new = qc.fold_weight_correction(s, torch.zeros_like(s), zeta, v)
    assert torch.allclose(s_new, zeta2 * s, rtol=0, atol=0)                    # s_c <- zeta_c s_c
    assert torch.allclose(z_new, -u / s, rtol=1e-12)                             # z_c <- z_c - u_c / s_c
    assert torch.allclose(s_new * (q - z_new), qc.weight_correction(w, w_hat, "text"), atol=1e-12)
    assert not torch.equal(z_new, torch.round(z_new))                            # not an integer
    zm, vm = qc.scale_shift(w, w_hat, "mean_norm")
    sm, zmn = qc.fold_weight_correction(s, 0, zm, vm)
    assert torch.allclose(sm * (q - zmn), qc.weight_correction(w, w_hat, "mean_norm"), atol=1e-12)


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3, padding=1), nn.Linear(6, 4)])
def test_zero_point_output_exact_with_the_sum_x_term_not_when_rounded(layer):
    g = torch.Generator().manual_seed(2)
    x = torch.rand((2, 3, 5, 5) if isinstance(layer, nn.Conv2d) else (2, 6), generator=g, dtype=torch.float64)
    layer = layer.double()
    q = torch.randint(-7, 8, layer.weight.shape, generator=g).double()
    s, z = torch.rand(4, generator=g, dtype=torch.float64) / 10, torch.tensor([0.3, -0.45, 0.2, 0.0]).double()
    shape = (-1,) + (1,) * (q.ndim - 1)
    direct = _op(layer, x, s.view(shape) * (q - z.view(shape)), layer.bias)
    assert torch.allclose(qc.zero_point_output(layer, x, q, s, z), direct, atol=1e-12)
    rounded = qc.zero_point_output(layer, x, q, s, torch.round(z))
    diff = (rounded - direct).abs().amax(dim=tuple(d for d in range(direct.ndim) if d != 1))
    assert (diff[:3] > 1e-3).all() and diff[3] < 1e-12  # only the channel with an integer z is exact
    # the missing part is exactly s (z - round z) * sum(x): a per-input term, not a constant bias
    assert torch.allclose(direct - rounded, -(s * (z - torch.round(z))).view((1, -1) + (1,) * (x.ndim - 2))
                          * _sum_x(layer, x), atol=1e-12)
    with pytest.raises(TypeError, match="Conv2d or nn.Linear"):
        qc.zero_point_output(nn.ReLU(), x, q, s, z)


def test_clipped_gaussian_mean_against_numerical_integral():
    for mu, sigma in ((0.0, 1.0), (1.3, 0.5), (-2.0, 0.7), (0.4, 0.0), (-0.4, 0.0)):
        if sigma == 0:
            expected = max(0.0, mu)
        else:
            t = torch.linspace(0, mu + 12 * sigma + 12, 400001, dtype=torch.float64)
            pdf = torch.exp(-0.5 * ((t - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
            expected = float(torch.trapezoid(t * pdf, t))
        assert float(qc.clipped_gaussian_mean(mu, sigma)) == pytest.approx(expected, abs=1e-7)


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()


def test_empirical_bias_correction_layer_by_layer_by_hand():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(3))
    quant = qc.weight_quantizer(2, PerTensor())
    fixed, terms = qc.empirical_bias_correction(model, quant, x)
    W1, b1, W2, b2 = (model.state_dict()[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    W1h = fake_quantize_tensor(W1, 2, PerTensor(), symmetric=True, narrow=True)
    W2h = fake_quantize_tensor(W2, 2, PerTensor(), symmetric=True, narrow=True)
    a1_fp, a1_q = x @ W1.T + b1, x @ W1h.T + b1
    t1 = a1_fp.mean(0) - a1_q.mean(0)                                     # layer 1: a_i - a_q
    h_fp, h_q = torch.relu(a1_fp), torch.relu(x @ W1h.T + b1 + t1)        # layer 2 sees corrected layer 1
    t2 = (h_fp @ W2.T + b2).mean(0) - (h_q @ W2h.T + b2).mean(0)
    assert torch.allclose(terms["0"], t1, atol=1e-5) and torch.allclose(terms["2"], t2, atol=1e-5)
    assert torch.allclose(fixed[0].bias, b1 + t1, atol=1e-5) and torch.allclose(fixed[2].bias, b2 + t2, atol=1e-5)
    q = quant(fixed)
    assert torch.allclose(q(x).mean(0), (h_fp @ W2.T + b2).mean(0), atol=1e-5)  # output mean = FP32's
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input model untouched


def test_bias_correction_gives_a_layer_without_bias_one():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    x = torch.rand(10, 3, generator=torch.Generator().manual_seed(0)) + 1
    fixed, terms = qc.empirical_bias_correction(model, qc.weight_quantizer(2), x)
    assert model[0].bias is None and fixed[0].bias is not None
    assert torch.allclose(fixed[0].bias, terms["0"])


def test_data_free_bias_correction_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -1.2, 2.0]))
        model[1].bias.copy_(torch.tensor([0.3, -0.1, -1.0]))
    quant = qc.weight_quantizer(3, PerChannel(0))
    fixed, terms = qc.data_free_bias_correction(model, quant)
    assert sorted(terms) == ["3"]                      # only the layer whose input follows BN -> ReLU
    e_x = []
    for beta, gamma in ((0.3, 0.5), (-0.1, 1.2), (-1.0, 2.0)):
        t = beta / gamma
        e_x.append(beta * 0.5 * (1 + math.erf(t / math.sqrt(2))) + gamma * math.exp(-t * t / 2) / math.sqrt(2 * math.pi))
    w = model[3].weight.detach()
    w_hat = fake_quantize_tensor(w, 3, PerChannel(0), symmetric=True, narrow=True)
    for c in range(2):
        eps = sum(float(w_hat[c, k, i, j] - w[c, k, i, j]) * e_x[k] for k in range(3) for i in range(3) for j in range(3))
        assert float(terms["3"][c]) == pytest.approx(-eps, abs=1e-6)
        assert float(fixed[3].bias.detach()[c]) == pytest.approx(float(model[3].bias.detach()[c]) - eps, abs=1e-6)


def test_lab_cnn_full_quantization_bias_is_requantized_and_corrects_the_mean():
    from quantlab.data import calibration_batch
    from quantlab.engine import quantize_bias
    from quantlab.ptq import calibrate_activations

    model, x = load_trained(), calibration_batch(200)
    quant = qc.int_quantizer(calibrate_activations(model, x), 3, 8, PerTensor())
    fixed, terms = qc.empirical_bias_correction(model, quant, x)
    qm = quant(fixed)
    layer = next(ly for ly in qm.layers if ly.name == "conv1")
    assert torch.equal(layer.q_b, quantize_bias(fixed.conv1.bias.detach(), layer.s_w, layer.s_x))
    names = list(terms)
    a_i = qc.channel_means(fixed, x, ["conv1"])["conv1"] - terms["conv1"]  # FP32 mean before correction
    before = qc.channel_means(quant(load_trained()), x, ["conv1"])["conv1"]
    after = qc.channel_means(qm, x, ["conv1"])["conv1"]
    assert (after - a_i).abs().max() < 0.25 * (before - a_i).abs().max()
    assert names == ["conv1", "conv2", "fc1", "fc2"]
    wc = qc.int_quantizer(calibrate_activations(model, x), 3, 8, PerTensor(), rule="text")(model)
    ly = next(ly for ly in wc.layers if ly.name == "conv2")
    assert len(set(ly.s_w.tolist())) > 1   # zeta_c folded into per-channel scales


def test_int_quantizer_widens_the_output_grid_when_zeta_makes_M_at_least_1():
    from quantlab.data import calibration_batch
    from quantlab.engine import run_int
    from quantlab.models import find_layers, fold_batchnorm
    from quantlab.ptq import calibrate_activations, convert

    model, x = load_trained(), calibration_batch(500)                      # as the lab's table
    ranges = calibrate_activations(model, x)
    plain = [ly for ly in convert(model, ranges, 2, 8, PerTensor()).layers if hasattr(ly, "q_w")]
    qm = qc.int_quantizer(ranges, 2, 8, PerTensor(), rule="text")(model)   # W2A8 per-tensor: zeta_c up to ~1.8
    layers = [ly for ly in qm.layers if hasattr(ly, "q_w")]
    fp = dict(find_layers(fold_batchnorm(model)))
    widened = 0
    for prev, ly, p in zip([None] + layers[:-1], layers, plain):
        assert torch.equal(ly.q_w, p.q_w)                                     # the same integers
        w = fp[ly.name].weight.detach().double().flatten(1)
        wh = p.s_w.double()[:, None] * p.q_w.double().flatten(1)
        n_h = (wh - wh.mean(1, keepdim=True)).norm(dim=1)
        live = n_h > 0
        zeta = (w - w.mean(1, keepdim=True)).norm(dim=1)[live] / n_h[live]  # the text's zeta_c, by hand
        assert torch.allclose(ly.s_w.double()[live], zeta * p.s_w.double()[live], rtol=1e-6)
        assert torch.equal(ly.s_w[~live], p.s_w[~live])                      # flat channels left alone
        M = float(ly.s_w.double().max()) * ly.s_x / ly.s_y
        assert M < 1
        if prev is not None:                                                  # the next layer reads the wider grid
            assert (ly.s_x, ly.z_x) == (prev.s_y, prev.z_y)
        if ly.s_y > 1.001 * p.s_y:
            widened += 1
            assert M > 1 - 1e-5                                               # widened just enough
        else:
            assert ly.s_y == p.s_y
    assert widened >= 1
    assert run_int(qm, x[:10]).shape == (10, 10)


def test_model_level_bad_input_names_argument_and_layer():
    model = SmallCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quant = qc.weight_quantizer(4)
    with pytest.raises(ValueError, match="calib_x is None"):
        qc.empirical_bias_correction(model, quant, None)
    with pytest.raises(ValueError, match="calib_x has shape"):
        qc.empirical_bias_correction(model, quant, torch.zeros(4, 3, 28, 28))
    with pytest.raises(ValueError, match="calib_x contains"):
        qc.empirical_bias_correction(model, quant, torch.full((2, 1, 28, 28), float("nan")))
    with pytest.raises(TypeError, match="calib_x must be a torch.Tensor"):
        qc.empirical_bias_correction(model, quant, [[0.0]])
    with pytest.raises(ValueError, match="'relu1' \\(ReLU\\) cannot be bias-corrected"):
        qc.empirical_bias_correction(model, quant, torch.zeros(2, 1, 28, 28), layers=["relu1"])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        qc.empirical_bias_correction(None, quant, torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="'fc2'.*shape \\(10,\\)"):
        qc.apply_bias_terms(model, {"fc2": torch.zeros(3)})
    broken = SmallCNN().eval()
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="layer 'fc1' produced NaN/inf"):
        qc.empirical_bias_correction(broken, lambda m: m, torch.ones(2, 1, 28, 28))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_doctests():
    import quantlab.correction.bias as bias
    import quantlab.correction.quantizers as quantizers
    import quantlab.correction.weights as weights

    attempted = 0
    for mod in (qc, bias, quantizers, weights):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0, mod.__name__
        attempted += res.attempted
    assert attempted > 25


def test_every_public_name_importable_from_the_package():
    for name in qc.__all__:
        assert name == "RULES" or getattr(qc, name).__module__.startswith("quantlab.correction.")
    assert qc.RULES == ("text", "mean_norm")


def _synthetic_table():
    rows = []
    for wb in (4, 3, 2):
        for g in ("per-tensor", "per-channel"):
            for b in ("none", "empirical", "data_free"):
                for wt in ("none", "text", "mean_norm"):
                    k = len(rows)
                    rows.append({"mode": "weight-only", "w_bits": wb, "a_bits": None, "granularity": g, "bias": b,
                                 "weight": wt, "accuracy": 0.5 + k / 200,
                                 "errors": {"conv1": [k * 0.01, -k * 0.01], "fc2": [0.1, 0.2, k * 0.001]}})
    return {"fp32_accuracy": 0.98, "layers": ["conv1", "fc2"], "rows": rows}


def test_explorer_moves_lines_and_readout():
    import matplotlib

    matplotlib.use("Agg")
    from quantlab.viz.correction import CorrectionExplorer, recovered_share

    t = _synthetic_table()
    t["index"] = {(r["mode"], r["w_bits"], r["a_bits"], r["granularity"], r["bias"], r["weight"]): r for r in t["rows"]}
    ex = CorrectionExplorer(t, layer="conv1")
    y0 = ex.l_cur.get_ydata().copy()
    ex.controls["weight"].value = "text"
    assert not np.array_equal(y0, ex.l_cur.get_ydata()) and ex.n_updates == 2
    ex.controls["layer"].value = "fc2"
    assert len(ex.l_cur.get_xdata()) == 3 and "accuracy" in ex.readout.value
    assert recovered_share(0.98, 0.5, 0.74) == pytest.approx(0.5) and recovered_share(0.98, 0.978, 0.99) is None

